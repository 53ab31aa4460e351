"""Consumer against a real cluster: replay by offset, from the beginning, by timestamp."""

from __future__ import annotations

import time

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition, errors

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def poll_n(consumer: Consumer, n: int, timeout_polls: int = 60) -> list:
    out: list = []
    for _ in range(timeout_polls):
        if len(out) >= n:
            break
        out += consumer.poll(timeout_s=1.0, max_records=n - len(out))
    return out


def test_replay_by_offset_beginning_and_timestamp(live_cluster, topic_name) -> None:
    tp = TopicPartition(topic_name, 0)
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=1, replication_factor=3)
    # After "now": the partition's first offsets may hold control batches stamped with the
    # broker's clock, and a timestamp lookup returns the first offset with a timestamp >= it.
    base_ts = int(time.time() * 1000) + 3_600_000
    with Producer(live_cluster.bootstrap, batch_size=2048) as producer:
        futures = [producer.send(topic_name, f"v{i}".encode(), timestamp=base_ts + i * 10,
                                 headers=[("i", str(i).encode())], partition=0)
                   for i in range(500)]
        producer.flush(60)
    offsets = [f.result(0).offset for f in futures]
    assert offsets == sorted(offsets)
    with Consumer(live_cluster.bootstrap, auto_offset_reset="error") as consumer:
        consumer.assign([tp])
        consumer.seek_to_beginning()
        records = poll_n(consumer, 500)
        assert [r.value for r in records] == [f"v{i}".encode() for i in range(500)]
        assert records[7].headers == (("i", b"7"),)
        assert records[7].timestamp == base_ts + 70
        assert consumer.position(tp) == offsets[-1] + 1

        # by offset, from the middle of a batch: records below it are skipped
        consumer.seek(tp, offsets[123])
        assert [r.offset for r in poll_n(consumer, 3)] == offsets[123:126]

        # by timestamp
        found = consumer.offsets_for_times({tp: base_ts + 2500})
        assert found[tp] is not None and found[tp] <= offsets[250]
        consumer.seek(tp, found[tp])
        replay = poll_n(consumer, offsets[250] - found[tp] + 1)
        assert all(r.timestamp < base_ts + 2500 for r in replay[:-1])
        assert replay[-1].value == b"v250"
        assert consumer.offsets_for_times({tp: base_ts + 10**9})[tp] is None

        # end offsets and seek_to_end
        # (>=: a leader change appends a control batch, which takes an offset)
        assert consumer.end_offsets([tp])[tp] >= offsets[-1] + 1
        consumer.seek_to_end()
        assert consumer.poll(timeout_s=0.5) == []

        # pause / resume
        consumer.seek(tp, offsets[0])
        consumer.pause(tp)
        assert consumer.poll(timeout_s=0.5) == []
        consumer.resume(tp)
        assert poll_n(consumer, 1)[0].value == b"v0"


def test_seek_past_the_end_raises_or_resets(live_cluster, topic_name) -> None:
    tp = TopicPartition(topic_name, 0)
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=1, replication_factor=3)
    with Producer(live_cluster.bootstrap) as producer:
        last = [producer.send(topic_name, f"{i}".encode()) for i in range(10)][-1].result(30)
    with Consumer(live_cluster.bootstrap, auto_offset_reset="error") as consumer:
        consumer.assign([tp])
        consumer.seek(tp, last.offset + 1000)
        with pytest.raises(errors.OffsetOutOfRange, match="out of range"):
            for _ in range(20):
                consumer.poll(timeout_s=0.5)
    with Consumer(live_cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        consumer.seek(tp, last.offset + 1000)
        records = poll_n(consumer, 10)
        assert [r.value for r in records] == [f"{i}".encode() for i in range(10)]


def test_iterating_yields_records(live_cluster, topic_name) -> None:
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=2, replication_factor=3)
    with Producer(live_cluster.bootstrap) as producer:
        for i in range(20):
            producer.send(topic_name, f"{i}".encode())
    with Consumer(live_cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(consumer.partitions_for(topic_name))
        seen = set()
        for record in consumer:
            seen.add(record.value)
            if len(seen) == 20:
                break
        assert seen == {f"{i}".encode() for i in range(20)}


def test_offsets_for_times_is_exact_within_a_batch(live_cluster, topic_name) -> None:
    tp = TopicPartition(topic_name, 0)
    with Admin(live_cluster.bootstrap) as admin:
        admin.create_topic(topic_name, partitions=1, replication_factor=3)
    base_ts = int(time.time() * 1000) + 3_600_000
    with Producer(live_cluster.bootstrap, linger_ms=50) as producer:
        futures = [producer.send(topic_name, b"v", timestamp=base_ts + i, partition=0)
                   for i in range(10)]
        producer.flush(30)
    with Consumer(live_cluster.bootstrap) as consumer:
        consumer.assign([tp])
        found = consumer.offsets_for_times({tp: base_ts + 5})
    assert found[tp] == futures[5].result(0).offset
