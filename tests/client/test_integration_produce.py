"""Producer against a real cluster: per-key order, idempotent retries, backpressure."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition, errors

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def read_all(bootstrap: str, topic: str, partitions: int, expected: int,
             timeout_s: float = 60.0) -> list:
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            records += consumer.poll(timeout_s=1.0)
        # anything beyond `expected` would be a duplicate: give it a moment to show up
        records += consumer.poll(timeout_s=0.5)
        return records


def test_order_per_key_holds_across_12_partitions_and_4_producer_threads(
    live_cluster, topic_name
) -> None:
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=12, replication_factor=3)
    threads_n, keys_per_thread, per_key = 4, 25, 40
    sent: dict[bytes, list] = defaultdict(list)
    with Producer(live_cluster.bootstrap, linger_ms=2, batch_size=16 * 1024) as producer:

        def work(t: int) -> None:
            for i in range(per_key):
                for k in range(keys_per_thread):
                    key = f"t{t}-k{k}".encode()
                    sent[key].append(producer.send(topic_name, f"{i}".encode(), key=key))

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        producer.flush(120)
    total = threads_n * keys_per_thread * per_key
    for key, futures in sent.items():
        metas = [f.result(0) for f in futures]
        assert len({m.partition for m in metas}) == 1, key
        offsets = [m.offset for m in metas]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), key
    records = read_all(live_cluster.bootstrap, topic_name, 12, total)
    assert len(records) == total
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[r.key].append(int(r.value))
    assert all(values == list(range(per_key)) for values in by_key.values())


def test_a_dropped_produce_reply_is_retried_without_a_duplicate(
    live_cluster, topic_name, cutting_proxy
) -> None:
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=1, replication_factor=3)
    # The preferred leader: the balancer would otherwise move leadership off the proxied node.
    leader_id = live_cluster.settled_leader_of(topic_name, 0)
    leader = next(n.address for n in live_cluster.nodes if n.id == leader_id)
    proxy = cutting_proxy(leader)
    payload = b"x" * 200_000  # big enough to recognise the Produce request by its size
    with Producer(live_cluster.bootstrap, linger_ms=0, compression="none",
                  retry_backoff_ms=50) as producer:
        producer._connections.redirect(leader, proxy.address)
        first = producer.send(topic_name, b"before").result(30)
        proxy.arm(len(payload))
        future = producer.send(topic_name, payload, key=b"once")
        meta = future.result(60)
        after = producer.send(topic_name, b"after").result(30)
        assert proxy.cuts == 1
        assert producer.metrics()["retries_sent"] >= 1
    assert first.offset < meta.offset < after.offset
    records = read_all(live_cluster.bootstrap, topic_name, 1, 3)
    values = [r.value for r in records]
    assert values.count(payload) == 1, "the retried batch was written twice"
    assert values == [b"before", payload, b"after"]
    assert [r.offset for r in records if r.value == payload] == [meta.offset]


def test_send_blocks_then_raises_buffer_full_when_the_cluster_is_paused(
    live_cluster, topic_name
) -> None:
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=1, replication_factor=3)
    with Producer(live_cluster.bootstrap, buffer_memory=256 * 1024, batch_size=64 * 1024,
                  max_block_ms=500, request_timeout_ms=5_000,
                  delivery_timeout_ms=120_000) as producer:
        producer.send(topic_name, b"warm-up").result(30)
        for node in live_cluster.nodes:
            live_cluster.pause(node.id)
        try:
            futures = []
            started = time.monotonic()
            with pytest.raises(errors.BufferFull, match="max_block_ms"):
                for _ in range(10_000):
                    futures.append(producer.send(topic_name, b"v" * 1000))
            blocked_s = time.monotonic() - started
            assert len(futures) < 300  # ~256 KiB of 1 KB records fit, then send() blocked
            assert blocked_s >= 0.45
        finally:
            for node in live_cluster.nodes:
                live_cluster.resume(node.id)
        producer.flush(120)
        assert all(f.result(0).offset >= 0 for f in futures)  # nothing dropped
