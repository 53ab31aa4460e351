"""Adding partitions to a topic (issue 15: there was no way to).

The metadata command first (grow only, placement like create, the same on every replica), then a
real 3-node cluster: `Admin.create_partitions` grows a topic 2 -> 4 while a producer and a group
consumer run; keyed records reach all four partitions, each is readable, and the group's member
is assigned the new partitions after the coordinator sees the new count (it re-reads the topics
every 2 s) and the consumer refreshes its metadata.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition, errors
from tidelog.node.errors import InvalidPartitionsError
from tidelog.node.groups.assignors import TopicPartition as GroupTopicPartition
from tidelog.node.groups.state import GroupCoordinatorCore, Heartbeat
from tidelog.node.local_cluster import LocalCluster
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    CreatePartitions,
    CreateTopic,
    RegisterNode,
    decode_command,
    encode_command,
)
from tidelog.node.topics import assign_replicas
from tidelog.proto import broker_pb2 as pb

from tests.clusters import running_cluster


def _state(nodes: int = 3) -> MetadataState:
    state = MetadataState()
    for node_id in range(1, nodes + 1):
        state.apply(node_id - 1, RegisterNode(node_id=node_id, address=f"a:{node_id}"))
    return state


def test_create_partitions_grows_like_create_would_have_placed_them() -> None:
    state = _state()
    state.apply(10, CreateTopic(name="t", partitions=2, replication_factor=2))
    assert state.apply(11, CreatePartitions(name="t", total=5)) == {"partitions": 5,
                                                                     "previous": 2}
    topic = state.topics["t"]
    assert topic.replicas == assign_replicas(5, 2, [1, 2, 3], topic.topic_id)
    twin = _state()
    twin.apply(10, CreateTopic(name="t", partitions=2, replication_factor=2))
    twin.apply_encoded(11, encode_command(CreatePartitions(name="t", total=5)))
    assert twin == state  # through its wire form, every replica reaches the same layout


@pytest.mark.parametrize(("total", "reason"), [(3, "can only grow"), (2, "can only grow"),
                                               (0, "can only grow"), (5000, "between 1 and")])
def test_create_partitions_refuses_shrinking_and_too_many(total: int, reason: str) -> None:
    state = _state()
    state.apply(10, CreateTopic(name="t", partitions=3, replication_factor=1))
    before = [list(r) for r in state.topics["t"].replicas]
    result = state.apply(11, CreatePartitions(name="t", total=total))
    assert result["code"] == InvalidPartitionsError.code and reason in result["message"]
    assert state.topics["t"].replicas == before


def test_create_partitions_of_a_missing_topic_and_validate_only() -> None:
    state = _state()
    assert state.apply(10, CreatePartitions(name="nope", total=2))["code"] == \
        pb.UNKNOWN_TOPIC_OR_PARTITION
    state.apply(11, CreateTopic(name="t", partitions=1, replication_factor=1))
    assert state.apply(12, CreatePartitions(name="t", total=4, validate_only=True)) == \
        {"partitions": 1}
    assert state.topics["t"].partitions == 1
    command = CreatePartitions(name="t", total=4, node_ids=(1, 2), validate_only=True)
    assert decode_command(encode_command(command)) == command



@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("grow")),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "4"}) as running:
        yield running


def test_a_coordinator_loaded_after_the_topic_grew_still_reassigns() -> None:
    """The bug the cluster test below found: the group's coordinator moved (preferred-leader
    balancing) just after the topic grew; the new one was built with the new counts, so the
    counts never "changed" for it and the member kept 2 of 4 partitions forever."""
    tp = GroupTopicPartition
    first = GroupCoordinatorCore(partition_counts={"t": 2})
    _, records = first.heartbeat(Heartbeat(group_id="g", member_id="m", member_epoch=0,
                                           subscribed_topics=("t",)), 1000)
    assert first.groups["g"].target["m"] == {tp("t", 0), tp("t", 1)}
    loaded = GroupCoordinatorCore(partition_counts={"t": 4})  # built after the growth
    for record in records:
        loaded.replay(record.key, record.value, 2000)
    assert loaded.set_partition_counts({"t": 4}, 2000), "no new assignment written"
    assert loaded.groups["g"].target["m"] == {tp("t", p) for p in range(4)}
    assert loaded.groups["g"].epoch == first.groups["g"].epoch + 1
    assert not loaded.set_partition_counts({"t": 4}, 3000)  # and only once


def _poll_until(consumer: Consumer, done, timeout_s: float = 30.0) -> list:  # noqa: ANN001
    got: list = []
    deadline = time.monotonic() + timeout_s
    while not done(got) and time.monotonic() < deadline:
        got += consumer.poll(timeout_s=0.5)
    return got


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_grow_2_to_4_producer_and_group_consumer_see_the_new_partitions(
        cluster: LocalCluster) -> None:
    topic = "grown"
    with Admin(cluster.bootstrap, request_timeout_ms=15_000) as admin, \
            Producer(cluster.bootstrap, metadata_max_age_ms=500, linger_ms=1) as producer, \
            Consumer(cluster.bootstrap, group_id="g-grow", auto_offset_reset="earliest",
                     metadata_max_age_ms=500, session_timeout_ms=6000) as consumer:
        admin.create_topic(topic, partitions=2, replication_factor=3)
        consumer.subscribe([topic])
        for i in range(20):
            producer.send(topic, f"before-{i}".encode(), key=f"k{i}".encode())
        producer.flush(30)
        before = _poll_until(consumer, lambda got: len(got) >= 20)
        assert {r.partition for r in before} == {0, 1}

        with pytest.raises(errors.InvalidPartitions, match="can only grow"):
            admin.create_partitions(topic, 2)
        with pytest.raises(errors.PolicyViolation):
            admin.create_partitions("__consumer_offsets", 8)
        admin.create_partitions(topic, 4)
        (described,) = admin.describe_topics([topic])
        assert [p.partition for p in described.partitions] == [0, 1, 2, 3]
        assert all(p.leader_id > 0 and len(p.replicas) == 3 for p in described.partitions)

        # The same producer, its metadata refreshed: keyed records now spread over all four.
        time.sleep(0.6)  # past metadata_max_age_ms, so the next send refreshes
        futures = [producer.send(topic, f"after-{i}".encode(), key=f"k{i}".encode())
                   for i in range(64)]
        producer.flush(30)
        landed = {f.result(0).partition for f in futures}
        assert landed == {0, 1, 2, 3}, landed
        # Each new partition is readable from its start.
        with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as reader:
            reader.assign([TopicPartition(topic, 2), TopicPartition(topic, 3)])
            fresh = _poll_until(reader, lambda got: len(got) >= sum(
                1 for f in futures if f.result(0).partition >= 2))
            assert {r.partition for r in fresh} == {2, 3}
            assert all(r.value.startswith(b"after-") for r in fresh)

        # The group member is assigned the new partitions and reads all 64.
        after = _poll_until(consumer, lambda got: len(got) >= 64)
        assert sorted(r.value for r in after) == sorted(f"after-{i}".encode()
                                                         for i in range(64))
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(4)}
