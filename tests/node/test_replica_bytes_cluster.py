"""Replicas of a committed prefix are byte-identical (issue 11, defect 10), checked on a real
3-node cluster: after produces across a leadership change (so a NOOP control batch is in the log,
encoded by every replica itself), every node's copy of the partition and of
the metadata log has the same committed_prefix_digest. With control batches stamped by each
replica's own clock (the old to_batch) the digests differ."""

from __future__ import annotations

from pathlib import Path

import pytest
from tidelog.client import Admin, Producer
from tidelog.node.local_cluster import LocalCluster
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.node.storage.digest import committed_prefix_digest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def _produce(bootstrap: str, topic: str, count: int, tag: str) -> None:
    with Producer(bootstrap, linger_ms=2) as producer:
        for i in range(count):
            producer.send(topic, f"{tag}-{i}".encode(), key=f"k{i % 7}".encode())
        producer.flush(60)


def _digests(logs: list[Path]) -> tuple[list[str], int]:
    opened = [PartitionLog.open(d, LogConfig()) for d in logs]
    try:
        upto = min(log.log_end_offset for log in opened) - 1
        return [committed_prefix_digest(log, upto) for log in opened], upto
    finally:
        for log in opened:
            log.close()


def test_every_replica_holds_the_same_bytes_after_a_leadership_change(tmp_path: Path) -> None:
    cluster = LocalCluster(3, tmp_path / "c")
    try:
        cluster.start()
        cluster.wait_healthy(timeout_s=60)
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic("orders", partitions=1, replication_factor=3)
        _produce(cluster.bootstrap, "orders", 100, "first")
        leader = cluster.settled_leader_of("orders", 0)
        _produce(cluster.bootstrap, "orders", 10, "settled")
        # SIGKILL every node: the commit index of the write just made is on no disk (the
        # balancer's election above wrote the earlier one with its vote), so the next leader
        # appends a NOOP of its new term (a leader that knows its whole log committed writes
        # none, docs/raft.md "The leader's no-op"; a graceful hand-over of an idle log is that).
        for node in cluster.nodes:
            cluster.kill(node.id)
        others = [n.id for n in cluster.nodes if n.id != leader]
        for node_id in others:
            cluster.start(node_id)
        cluster.wait_healthy(timeout_s=60, node_ids=others)
        _produce(cluster.bootstrap, "orders", 100, "second")
        cluster.start(leader)
        cluster.wait_healthy(timeout_s=60)
        _produce(cluster.bootstrap, "orders", 50, "third")
        cluster.settled_leader_of("orders", 0)  # the restarted node caught up and leads again
    finally:
        cluster.stop()
    partitions = [next((n.data_dir / "partitions").glob("orders-0.*")) for n in cluster.nodes]
    digests, upto = _digests(partitions)
    assert upto >= 260, "the compared prefix holds every record (260 offsets) and a NOOP"
    assert len(set(digests)) == 1, digests
    digests, _ = _digests([n.data_dir / "metadata" for n in cluster.nodes])
    assert len(set(digests)) == 1, digests
