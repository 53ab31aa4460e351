"""The Producer's batching against a real 3-node cluster (RF=3, acks=all): adaptive linger and
the one-request-per-leader ProduceMany path (issue 16).

One module-scoped cluster for every test here; small record counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

#: long enough that a record held for linger_ms would blow every timeout below
LONG_LINGER_MS = 20_000


@pytest.fixture(scope="module")
def batching_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("batching")), env={}) as running:
        yield running


def new_topic(cluster: LocalCluster, partitions: int) -> str:
    topic = f"batching-{uuid.uuid4().hex[:8]}"
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(topic, partitions=partitions, replication_factor=3)
    return topic


def read_all(bootstrap: str, topic: str, partitions: int, expected: int
             ) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    """Every record of the topic, per partition in offset order."""
    out: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in range(partitions)}
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        seen = 0
        for _ in range(200):
            for record in consumer.poll(timeout_s=0.5):
                out[record.partition].append((record.key, record.value))
                seen += 1
            if seen >= expected:
                break
    return out


def test_a_lone_record_is_sent_without_waiting_linger_ms(batching_cluster: LocalCluster) -> None:
    """With linger_ms=20 s a record held for its linger could not be acknowledged within 10 s;
    adaptive linger sends it at once because nothing of its partition is in flight."""
    topic = new_topic(batching_cluster, 1)
    with Producer(batching_cluster.bootstrap, linger_ms=LONG_LINGER_MS) as producer:
        metadata = producer.send(topic, b"alone").result(timeout=10)
        assert metadata.offset >= 0
        # and again once the first is answered: the partition is quiet again
        assert producer.send(topic, b"alone again").result(timeout=10).offset > metadata.offset


def test_records_behind_an_in_flight_request_share_batches(
        batching_cluster: LocalCluster) -> None:
    """Under a burst the records sent while a request is in flight leave together when it is
    answered (not after linger_ms=20 s, not one request each)."""
    topic = new_topic(batching_cluster, 1)
    with Producer(batching_cluster.bootstrap, linger_ms=LONG_LINGER_MS) as producer:
        producer.send(topic, b"warm-up").result(timeout=10)
        before = producer.metrics()["requests_sent"]
        futures = [producer.send(topic, b"%d" % i) for i in range(500)]
        offsets = [f.result(timeout=10).offset for f in futures]
        requests = int(producer.metrics()["requests_sent"]) - int(before)  # type: ignore[call-overload]
    assert offsets == sorted(offsets) and len(set(offsets)) == 500
    assert requests <= 25, f"{requests} requests for 500 records sent in a burst"
