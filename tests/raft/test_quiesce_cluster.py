"""Quiescence on a real 3-node cluster (docs/raft.md, "Quiescence"): groups that went to sleep
get a leader again within a bound when the node leading them is killed, woken by the node-level
liveness beats (the survivors log how many sleeping groups they woke), and serve writes; the
killed node comes back and every partition takes writes again. Tens of partitions, not 1,000
(benchmarks/many_partitions_bench.py does that)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client.admin import Admin
from tidelog.client.producer import Producer
from tidelog.node.local_cluster import LocalCluster, metadata

from tests.clusters import running_cluster

TOPIC = "sleepy"
PARTITIONS = 24
FAILOVER_BOUND_S = 15.0  # detection (1 s) + election (1-2 s) + leader announcements, on 2 CI cores
ENV = {"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2", "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("quiesce"), env=ENV) as running:
        yield running


def leaders(cluster: LocalCluster, node_id: int) -> list[int]:
    answer = metadata(cluster.node(node_id).address, [TOPIC], timeout_s=10.0)
    return [p.leader_id for p in answer.topics[0].partitions]


def preferred(cluster: LocalCluster) -> list[int]:
    answer = metadata(cluster.node(1).address, [TOPIC], timeout_s=10.0)
    return [p.replicas[0] for p in answer.topics[0].partitions]


def produce_to_every_partition(cluster: LocalCluster, value: bytes) -> None:
    with Producer(cluster.bootstrap, linger_ms=0) as producer:
        futures = [producer.send(TOPIC, value, partition=p) for p in range(PARTITIONS)]
        producer.flush(60)
        for future in futures:
            future.result(timeout=60)


def woken_lines(log_path: Path, peer: int) -> int:
    """Sleeping groups this node woke because `peer` went silent (its log says how many)."""
    pattern = re.compile(rf"woke (\d+) quiesced groups: node {peer} ")
    return sum(int(m.group(1)) for m in pattern.finditer(log_path.read_text(errors="replace")))


def test_groups_asleep_on_a_killed_leader_get_a_new_leader_and_take_writes(
        cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    produce_to_every_partition(cluster, b"before")
    settle_by = time.monotonic() + 60  # the balancer moves every leader where it belongs
    while leaders(cluster, 1) != preferred(cluster):
        assert time.monotonic() < settle_by, "leaders never settled on the preferred replicas"
        time.sleep(0.2)
    led_by_3 = sum(1 for lead in leaders(cluster, 1) if lead == 3)
    assert led_by_3 > 0
    time.sleep(3)  # idle: every group quiesces within a few heartbeat rounds
    killed_at = time.monotonic()
    cluster.kill(3)
    deadline = killed_at + FAILOVER_BOUND_S
    while True:
        got = leaders(cluster, 1)
        if all(lead in (1, 2) for lead in got):
            break
        assert time.monotonic() < deadline, f"partitions still without a live leader: {got}"
        time.sleep(0.2)
    print(f"every partition led again {time.monotonic() - killed_at:.1f} s after the kill "
          f"({led_by_3} had been led by node 3)")
    woke = max(woken_lines(cluster.node(i).log_path, 3) for i in (1, 2))
    assert woke >= led_by_3, f"the survivors woke {woke} sleeping groups of node 3"
    produce_to_every_partition(cluster, b"during")
    cluster.start(3)
    cluster.wait_healthy(60, node_ids=[3])
    produce_to_every_partition(cluster, b"after")
