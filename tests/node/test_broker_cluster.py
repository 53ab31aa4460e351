"""Issue 4 against real node processes on 127.0.0.1: balance, failover, catch-up, bad requests.

One 3-node cluster serves the module (six clusters cost ~27 s of starts and stops). Each test
has its own topic; a test that kills or stops a node starts it again before it ends, and the
64-partition topic is deleted once its balance is checked, so it loads no later test.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from tidelog.client import Admin
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.proto import broker_pb2 as pb
from tidelog.proto.batch import decode_records, iter_batches

from tests.clusters import running_cluster

from .wire import batch_of, create_topic, error_detail, produce, stub

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("broker"), env={}) as running:
        yield running


def whole_again(cluster: LocalCluster) -> None:
    """Every node started and healthy again, for the module's next test."""
    cluster.start()
    cluster.wait_healthy(timeout_s=60)


def leader_counts(cluster: LocalCluster, topic: str) -> Counter[int]:
    answer = metadata(cluster.nodes[0].address, [topic])
    return Counter(p.leader_id for p in answer.topics[0].partitions)


def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def test_leaders_of_64_partitions_are_balanced(cluster: LocalCluster) -> None:
    result = create_topic(cluster.nodes[0].address, "balanced", partitions=64, rf=3)
    assert result.results[0].error == pb.NONE, result
    limit = math.ceil(64 / 3) + 1

    def balanced() -> bool:
        counts = leader_counts(cluster, "balanced")
        return -1 not in counts and max(counts.values()) <= limit

    try:
        wait_until(balanced, 60, f"every partition led and no node leading more than {limit}")
        counts = leader_counts(cluster, "balanced")
        assert sum(counts.values()) == 64 and set(counts) == {1, 2, 3}
    finally:
        with Admin(cluster.bootstrap) as admin:
            admin.delete_topic("balanced")


def read_partition(address: str, topic: str, partition: int) -> dict[int, bytes]:
    """offset → value of every committed data record, read from the leader at address."""
    records: dict[int, bytes] = {}
    offset = 0
    broker = stub(address)
    while True:
        reply = broker.Fetch(pb.FetchRequest(
            partitions=[pb.FetchPartition(topic=topic, partition=partition, offset=offset,
                                          max_bytes=1 << 20)], max_wait_ms=0), timeout=10)
        part = reply.partitions[0]
        assert part.error == pb.NONE, part.error_message
        if not part.batches:
            return records
        for pos, header in iter_batches(part.batches):
            if not header.is_control:
                for record in decode_records(part.batches[pos:pos + header.size]):
                    records[record.offset] = record.value or b""
            offset = header.last_offset + 1


def produce_with_retry(cluster: LocalCluster, topic: str, partition: int, batch: bytes,
                       deadline_s: float = 30.0) -> pb.ProduceResponse | None:
    """Follow the leader; None only if the write stayed unacknowledged until the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            leader = cluster.leader_of(topic, partition, timeout_s=deadline_s)
            return produce(cluster.node(leader).address, topic, partition, batch, timeout_s=5)
        except (grpc.RpcError, TimeoutError):
            time.sleep(0.2)
    return None


def test_acknowledged_batches_survive_killing_the_leader(cluster: LocalCluster) -> None:
    create_topic(cluster.nodes[0].address, "failover", partitions=1, rf=3)
    try:
        _survive_killing_the_leader(cluster)
    finally:
        whole_again(cluster)


def _survive_killing_the_leader(cluster: LocalCluster) -> None:
    acked: dict[int, bytes] = {}  # offset → value, for every acknowledged record
    victim = None
    for i in range(120):
        values = [f"batch-{i}-record-{j}".encode() for j in range(10)]
        reply = produce_with_retry(cluster, "failover", 0, batch_of(values))
        assert reply is not None, f"batch {i} never acknowledged"
        for j, value in enumerate(values):
            acked[reply.base_offset + j] = value
        if i == 40:
            victim = cluster.leader_of("failover", 0)
            cluster.kill(victim)
    assert victim is not None
    new_leader = cluster.leader_of("failover", 0)
    assert new_leader != victim
    stored = read_partition(cluster.node(new_leader).address, "failover", 0)
    missing = [o for o in acked if stored.get(o) != acked[o]]
    assert not missing, f"{len(missing)} acknowledged records lost or changed, e.g. {missing[:5]}"
    # Order: offsets of acknowledged records increase with the order they were sent.
    sent_order = sorted(acked, key=lambda o: (int(acked[o].split(b"-")[1]),
                                              int(acked[o].split(b"-")[3])))
    assert sent_order == sorted(acked)


def test_restarted_node_catches_up_and_preferred_leaders_return(cluster: LocalCluster) -> None:
    create_topic(cluster.nodes[0].address, "returning", partitions=6, rf=3)
    wait_until(lambda: -1 not in leader_counts(cluster, "returning"), 30, "leaders")
    cluster.kill(1)
    try:
        _catch_up_and_return(cluster)
    finally:
        whole_again(cluster)


def _catch_up_and_return(cluster: LocalCluster) -> None:
    for i in range(30):
        for partition in range(6):
            reply = produce_with_retry(cluster, "returning", partition,
                                       batch_of([f"{partition}-{i}".encode()]))
            assert reply is not None
    cluster.start(1)
    cluster.wait_healthy(node_ids=[1])
    topic = metadata(cluster.nodes[1].address, ["returning"]).topics[0]
    preferred = {p.partition: p.replicas[0] for p in topic.partitions}

    def preferred_lead() -> bool:
        answer = metadata(cluster.nodes[1].address, ["returning"]).topics[0]
        return all(p.leader_id == preferred[p.partition] for p in answer.partitions)

    # The balancer only hands leadership to a replica whose log has caught up.
    wait_until(preferred_lead, 60, "leadership back on the preferred leaders")
    for partition, node_id in preferred.items():
        if node_id == 1:
            stored = read_partition(cluster.node(1).address, "returning", partition)
            assert sorted(stored.values()) == sorted(f"{partition}-{i}".encode()
                                                     for i in range(30))


def settled_leader(cluster: LocalCluster, topic: str, partition: int) -> int:
    """Wait until the preferred leader (first replica) leads, so the balancer moves nothing more."""
    return cluster.settled_leader_of(topic, partition)


def expect_error(call, code: grpc.StatusCode, error: int) -> pb.ErrorDetail:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    detail = error_detail(info.value)
    assert detail.code == error, (detail, info.value.details())
    return detail


def test_bad_requests_get_precise_errors_and_the_node_keeps_serving(
        cluster: LocalCluster) -> None:
    address = cluster.nodes[0].address
    create_topic(address, "good", partitions=1, rf=3)
    leader = cluster.node(settled_leader(cluster, "good", 0)).address
    follower = next(n.address for n in cluster.nodes if n.address != leader)

    expect_error(lambda: produce(leader, "nope", 0, batch_of([b"x"])),
                 grpc.StatusCode.NOT_FOUND, pb.UNKNOWN_TOPIC_OR_PARTITION)
    expect_error(lambda: produce(leader, "good", 7, batch_of([b"x"])),
                 grpc.StatusCode.NOT_FOUND, pb.UNKNOWN_TOPIC_OR_PARTITION)
    corrupt = bytearray(batch_of([b"some value"] * 5))
    corrupt[-3] ^= 0xFF
    expect_error(lambda: produce(leader, "good", 0, bytes(corrupt)),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.CORRUPT_BATCH)
    expect_error(lambda: produce(leader, "good", 0, b"\x00" * 40),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.CORRUPT_BATCH)
    huge = batch_of([bytes(1024 * 1024)] * 9, codec=0)
    expect_error(lambda: produce(leader, "good", 0, huge),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.MESSAGE_TOO_LARGE)
    detail = expect_error(lambda: produce(follower, "good", 0, batch_of([b"x"])),
                          grpc.StatusCode.UNAVAILABLE, pb.NOT_LEADER)
    assert detail.leader_address == leader

    replies = stub(address).CreateTopics(pb.CreateTopicsRequest(topics=[
        pb.TopicSpec(name="too-many-replicas", partitions=1, replication_factor=4),
        pb.TopicSpec(name="bad/name", partitions=1, replication_factor=1),
        pb.TopicSpec(name="zero", partitions=0, replication_factor=1),
        pb.TopicSpec(name="badconf", partitions=1, replication_factor=1,
                     configs={"retention.ms": "soon"}),
        pb.TopicSpec(name="good", partitions=1, replication_factor=1),
    ]), timeout=30).results
    assert [r.error for r in replies] == [
        pb.INVALID_REPLICATION_FACTOR, pb.INVALID_TOPIC_NAME, pb.INVALID_PARTITIONS,
        pb.INVALID_CONFIG, pb.TOPIC_ALREADY_EXISTS]
    assert "larger than the 3 nodes" in replies[0].error_message

    # Nothing of the above reached the log, and the node still serves.
    reply = produce(leader, "good", 0, batch_of([b"still", b"serving"]))
    assert read_partition(leader, "good", 0)[reply.base_offset] == b"still"


def test_acks_leader_answers_after_the_local_append(cluster: LocalCluster) -> None:
    create_topic(cluster.nodes[0].address, "quick", partitions=1, rf=3)
    leader = cluster.node(settled_leader(cluster, "quick", 0)).address
    reply = stub(leader).Produce(pb.ProduceRequest(
        topic="quick", partition=0, acks=pb.ACKS_LEADER, batches=batch_of([b"a", b"b"]),
        timeout_ms=5000), timeout=10)
    assert reply.last_offset == reply.base_offset + 1
    wait_until(lambda: read_partition(leader, "quick", 0).get(reply.base_offset) == b"a", 10,
               "the acks=leader write to commit")


def test_graceful_shutdown_hands_leadership_over(cluster: LocalCluster) -> None:
    create_topic(cluster.nodes[0].address, "handover", partitions=3, rf=3)
    wait_until(lambda: -1 not in leader_counts(cluster, "handover"), 30, "leaders")
    victim = cluster.leader_of("handover", 0)
    started = time.monotonic()
    cluster.terminate(victim)
    try:
        _hand_over(cluster, victim, started)
    finally:
        whole_again(cluster)


def _hand_over(cluster: LocalCluster, victim: int, started: float) -> None:
    survivor = next(n for n in cluster.nodes if n.id != victim)

    def moved() -> bool:
        answer = metadata(survivor.address, ["handover"]).topics[0]
        return all(p.leader_id not in (-1, victim) for p in answer.partitions)

    wait_until(moved, 10, "leadership to leave the stopped node")
    # A handover is faster than an election after a crash (>= one election timeout of 1 s).
    log_text = cluster.node(victim).log_path.read_text()
    assert "handing over leadership first" in log_text
    assert time.monotonic() - started < 15
