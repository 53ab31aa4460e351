"""Leader failover (SIGKILL of the leader) during produce and during consume."""

from __future__ import annotations

import threading
import time

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def test_produce_and_consume_survive_a_leader_kill(live_cluster, topic_name) -> None:
    tp = TopicPartition(topic_name, 0)
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=1, replication_factor=3)
    leader = live_cluster.settled_leader_of(topic_name, 0)  # so the kill hits the leader
    total = 3000
    consumed: list = []
    stop = threading.Event()

    def consume() -> None:
        with Consumer(live_cluster.bootstrap, auto_offset_reset="earliest",
                      fetch_max_wait_ms=200, request_timeout_ms=5000) as consumer:
            consumer.assign([tp])
            while not stop.is_set() and len(consumed) < total:
                consumed.extend(consumer.poll(timeout_s=0.5))

    reader = threading.Thread(target=consume)
    reader.start()
    with Producer(live_cluster.bootstrap, linger_ms=1, batch_size=4096,
                  request_timeout_ms=3000, delivery_timeout_ms=60_000) as producer:
        futures = []
        for i in range(total):
            futures.append(producer.send(topic_name, f"{i}".encode(), key=b"k"))
            if i == total // 3:
                live_cluster.kill(leader)
            if i % 100 == 0:
                time.sleep(0.01)
        producer.flush(90)
    metas = [f.result(0) for f in futures]  # every record acknowledged
    offsets = [m.offset for m in metas]
    assert offsets == sorted(offsets) and len(set(offsets)) == total
    reader.join(90)
    stop.set()
    assert [int(r.value) for r in consumed[:total]] == list(range(total))
    assert len(consumed) == total
    new_leader = live_cluster.leader_of(topic_name, 0)
    assert new_leader != leader
    live_cluster.start(leader)
