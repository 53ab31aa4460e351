"""Retention on a real 3-node cluster (node/retention.py): a topic with retention.ms=1000 and
segment.ms=1000 loses its old segments on every replica, leader and followers, and
tidelog_partition_log_start_offset shows it; a consumer below the new log start follows its
auto_offset_reset; a compacted topic keeps everything; with retention.bytes, a follower that was
down while the leader's retention passed its log end is reset to the leader's log start
(INSTALL_LOG_START) and catches up, and an idempotent producer whose every batch was deleted is
still known after a restart (producers.snapshot). Before node/retention.py nothing in a node
applied retention: the log start stayed 0.

One module-scoped cluster (retention checked every 300 ms); each test has its own topic.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.client.errors import OffsetOutOfRange
from tidelog.node.local_cluster import LocalCluster, LocalNode
from tidelog.proto import broker_pb2 as pb

from tests.clusters import running_cluster

from .wire import batch_of, create_topic, error_detail, stub
from .wire import produce as produce_batch

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

AGED = {"retention.ms": "1000", "segment.ms": "1000"}
SEGMENT_AGE_S = 1.1  # > segment.ms: the next append rolls the segment
# Every sealed segment goes; segments of 1 MiB (the least), so two HALF batches roll one.
SIZED = {"retention.bytes": "1", "segment.bytes": str(1 << 20), "max.message.bytes": str(1 << 20)}
HALF = os.urandom(600_000)  # incompressible


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("retention"),
                         env={"TIDELOG_RETENTION_CHECK_MS": "300",
                              "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}) as running:
        yield running


def offsets(node: LocalNode, topic: str) -> tuple[int, int] | None:
    """(log start, log end) of partition 0 of `topic` in the node's local log, from /metrics."""
    with urllib.request.urlopen(f"http://{node.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("topic") == topic and s.labels.get("partition") == "0":
                found[s.name] = s.value
    names = ("tidelog_partition_log_start_offset", "tidelog_partition_log_end_offset")
    if not all(n in found for n in names):
        return None
    return int(found[names[0]]), int(found[names[1]])


def wait_for(what: str, timeout_s: float, check: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def produce(cluster: LocalCluster, topic: str, tag: str, count: int) -> None:
    with Producer(cluster.bootstrap, linger_ms=0) as producer:
        for i in range(count):
            producer.send(topic, f"{tag}-{i}".encode()).result(30)


def starts(cluster: LocalCluster, topic: str, nodes: list[LocalNode]) -> list[int]:
    return [(offsets(n, topic) or (-1, -1))[0] for n in nodes]


def test_every_replica_deletes_expired_segments_and_consumers_follow_their_reset(
        cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic("aged", partitions=1, replication_factor=3, configs=AGED)
        admin.create_topic("kept", partitions=1, replication_factor=3,
                           configs={**AGED, "cleanup.policy": "compact"})
    for topic in ("aged", "kept"):
        produce(cluster, topic, "old", 5)
    time.sleep(SEGMENT_AGE_S)
    for topic in ("aged", "kept"):
        produce(cluster, topic, "new", 5)  # rolls: the "old" segment is sealed, already expired
    took = wait_for("every replica's log start past the old records", 20,
                    lambda: all(s >= 5 for s in starts(cluster, "aged", cluster.nodes)))
    print(f"retention moved the log start on 3 replicas {took:.1f} s after the roll")
    aged = starts(cluster, "aged", cluster.nodes)
    assert all(s <= 6 for s in aged), aged  # the "new" segment is young: kept (a NOOP may lead)
    assert starts(cluster, "kept", cluster.nodes) == [0, 0, 0], "compact: no retention"

    tp = TopicPartition("aged", 0)
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            got += [r.value for r in consumer.poll(1.0)]
    assert got == [f"new-{i}".encode() for i in range(5)], got
    with Consumer(cluster.bootstrap, auto_offset_reset="error") as strict:
        strict.assign([tp])
        strict.seek(tp, 0)
        with pytest.raises(OffsetOutOfRange):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                strict.poll(1.0)


def test_a_follower_behind_the_leaders_log_start_is_reset_to_it_and_catches_up(
        cluster: LocalCluster) -> None:
    topic = "lagging"
    assert create_topic(cluster.nodes[0].address, topic, partitions=1, rf=3,
                        configs=SIZED).results[0].error == pb.NONE
    leader = cluster.node(cluster.settled_leader_of(topic, 0))
    follower = next(n for n in cluster.nodes if n is not leader)
    pre = produce_batch(leader.address, topic, 0, batch_of([b"pre", HALF]))
    wait_for("the follower holds the first records", 20,
             lambda: (offsets(follower, topic) or (0, 0))[1] > pre.last_offset)
    cluster.terminate(follower.id)
    try:
        big = produce_batch(leader.address, topic, 0, batch_of([HALF]))  # seals "pre"
        last = produce_batch(leader.address, topic, 0, batch_of([HALF]))  # seals "big"
        others = [n for n in cluster.nodes if n is not follower]
        wait_for("the running replicas cut past the stopped follower's log end", 20,
                 lambda: all(s > big.last_offset for s in starts(cluster, topic, others)))
    finally:
        cluster.start(follower.id)
    cluster.wait_healthy(timeout_s=60)
    took = wait_for("the restarted follower reset to the leader's start and caught up", 30,
                    lambda: (got := offsets(follower, topic)) is not None
                    and got[0] > big.last_offset and got[1] > last.last_offset)
    print(f"follower caught up {took:.1f} s after restart")
    # Its log ended at pre.last_offset and nobody holds the offsets after it any more: only
    # INSTALL_LOG_START (a log reset) gets it past them.
    assert f"reset {topic}-0." in follower.log_path.read_text(errors="replace")


def test_an_idempotent_producer_is_remembered_past_retention_and_a_restart(
        cluster: LocalCluster) -> None:
    """Producer state is rebuilt from the log at open; retention deleted every batch of this
    producer, so only the snapshot written at the cut (producers.snapshot) still knows it: its
    retry is answered as a duplicate and a gap is refused, as before the cut."""
    topic = "solo"
    assert create_topic(cluster.nodes[0].address, topic, partitions=1, rf=1,
                        configs=SIZED).results[0].error == pb.NONE
    node = cluster.node(cluster.settled_leader_of(topic, 0))
    pid = stub(node.address).InitProducerId(pb.InitProducerIdRequest(), timeout=15).producer_id

    def batch(seq: int, *values: bytes) -> bytes:
        return batch_of(list(values), producer_id=pid, producer_epoch=0, base_sequence=seq)

    first = batch(0, b"a0", b"a1")
    written = produce_batch(node.address, topic, 0, first)
    for _ in range(2):  # the second seals "a" and the first HALF: retention.bytes deletes them
        produce_batch(node.address, topic, 0, batch_of([HALF]))
    wait_for("retention deleted the producer's only batch", 20,
             lambda: (offsets(node, topic) or (0, 0))[0] > written.last_offset)
    cluster.terminate(node.id)
    cluster.start(node.id)
    cluster.wait_healthy(timeout_s=60)
    cluster.settled_leader_of(topic, 0)
    retry = produce_batch(node.address, topic, 0, first)
    assert retry.duplicate, f"the retry was written again at {retry.base_offset}"
    assert (retry.base_offset, retry.last_offset) == (written.base_offset, written.last_offset)
    with pytest.raises(grpc.RpcError) as refused:
        produce_batch(node.address, topic, 0, batch(5, b"gap"))
    assert error_detail(refused.value).code == pb.OUT_OF_ORDER_SEQUENCE
    assert not produce_batch(node.address, topic, 0, batch(2, b"a2")).duplicate
