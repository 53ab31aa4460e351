"""The queue shell's pure parts, on real batches (the cluster tests cover the I/O)."""

from __future__ import annotations

import pytest
from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.dead_letters import dead_letter_headers, source_of
from tidelog.node.queues.model import DeadLetterJob
from tidelog.node.queues.reader import PartitionReader, decode_offered, find_record
from tidelog.node.queues.wire import (
    config_from_wire,
    config_to_wire,
    messages_within,
    settlement_problem,
)
from tidelog.proto import queue_pb2 as qpb
from tidelog.proto.batch import (
    Codec,
    ControlType,
    Record,
    encode_batch,
    encode_control_batch,
    stamp,
)

T0 = 1_700_000_000_000
TP = TopicPartition("t", 0)


def batch(base: int, values: list[bytes], headers: list | None = None,  # type: ignore[type-arg]
          key: bytes | None = None) -> bytes:
    raw = encode_batch([(key, v, headers or (), T0 + i) for i, v in enumerate(values)],
                       codec=Codec.LZ4)
    return stamp(raw, base_offset=base, term=1)


def control(base: int) -> bytes:
    """A Raft no-op, as every new leader writes into every partition."""
    return stamp(encode_control_batch(ControlType.RAFT_NOOP, b""), base_offset=base, term=1)


def test_decode_offered_skips_control_batches_and_records_before_the_offset() -> None:
    data = control(0) + batch(1, [b"a", b"b", b"c"]) + control(4) + batch(5, [b"d"])
    records, read_to = decode_offered(data, 2)
    assert [r.offset for r in records] == [2, 3, 5]
    assert read_to == 6
    assert records[0].timestamp_ms == T0 + 1


def test_decode_offered_reads_the_deliver_at_and_message_id_headers() -> None:
    data = (batch(0, [b"x"], [("tidelog-deliver-at-ms", b"1700000005000"),
                               ("tidelog-message-id", b"m-1")], key=b"k")
            + batch(1, [b"y"], [("tidelog-deliver-at-ms", b"soon")]))
    first, second = decode_offered(data, 0)[0]
    assert (first.key, first.deliver_at_ms, first.message_id) == (b"k", 1_700_000_005_000,
                                                                  b"m-1")
    assert second.deliver_at_ms == 0, "a header that is not decimal ms is ignored"


def test_decode_offered_takes_the_first_header_of_each_name() -> None:
    data = batch(0, [b"x"], [("other", None), ("tidelog-message-id", b"m-1"),
                             ("tidelog-deliver-at-ms", b"1700000005000"),
                             ("tidelog-message-id", b"m-2"), ("tidelog-deliver-at-ms", b"9")])
    ((record,), _) = decode_offered(data, 0)
    assert (record.message_id, record.deliver_at_ms) == (b"m-1", 1_700_000_005_000)


def test_only_control_batches_still_move_the_read_offset() -> None:
    assert decode_offered(control(7), 7) == ([], 8)


def test_find_record() -> None:
    data = batch(10, [b"a", b"b"]) + batch(12, [b"c"])
    found = find_record(data, 11)
    assert isinstance(found, Record) and found.value == b"b"
    assert find_record(data, 13) is None


def test_cache_serves_contiguous_batches_and_stays_within_its_bytes() -> None:
    reader = PartitionReader(host=None, cache_bytes_max=3 * len(batch(0, [b"v" * 100])))  # type: ignore[arg-type]
    for base in range(0, 5):
        reader._cache_put(TP, batch(base, [b"v" * 100]))
    assert reader._cache_bytes <= reader.cache_bytes_max
    assert reader.cached_from(TP, 0, 1 << 20) == b"", "the oldest were evicted"
    tail = reader.cached_from(TP, 2, 1 << 20)
    assert [r.offset for r in decode_offered(tail, 2)[0]] == [2, 3, 4]
    reader.forget_below(TP, 4)
    assert reader.cached_from(TP, 3, 1 << 20) == b""
    assert reader.cached_from(TP, 4, 1 << 20) != b""


def test_dead_letter_headers_name_their_source() -> None:
    job = DeadLetterJob(tp=TopicPartition("orders", 3), offset=42, reason="max deliveries",
                        attempts=10, first_delivery_ms=T0, last_delivery_ms=T0 + 5)
    headers = dead_letter_headers("q", job, T0 - 1)
    assert dict(headers) == {
        "tidelog-dlq-queue": b"q", "tidelog-dlq-reason": b"max deliveries",
        "tidelog-dlq-attempts": b"10", "tidelog-dlq-source-topic": b"orders",
        "tidelog-dlq-source-partition": b"3", "tidelog-dlq-source-offset": b"42",
        "tidelog-dlq-source-timestamp-ms": str(T0 - 1).encode(),
        "tidelog-dlq-first-delivery-ms": str(T0).encode(),
        "tidelog-dlq-last-delivery-ms": str(T0 + 5).encode()}
    record = Record(offset=0, timestamp=T0, key=None, value=b"", headers=tuple(headers))
    assert source_of(record, "q") == (TopicPartition("orders", 3), 42)
    assert source_of(record, "other-q") is None, "another queue's dead letter sharing the DLQ"


def test_settlement_problems_are_named() -> None:
    parts = (TP,)

    def problem(**fields: object) -> str:
        base = {"topic": "t", "partition": 0, "first_offset": 1, "last_offset": 1,
                "delivery_count": 1}
        return settlement_problem(qpb.Settlement(**{**base, **fields}), parts)  # type: ignore[arg-type]

    assert problem() == ""
    assert "not a partition" in problem(topic="u")
    assert "empty or negative" in problem(first_offset=3, last_offset=2)
    assert "empty or negative" in problem(first_offset=-1)
    assert "spans more than" in problem(last_offset=1_000_000)
    assert "counted from 1" in problem(delivery_count=0)
    assert "unknown" in problem(action=9)
    assert "delay_ms" in problem(action=qpb.NACK, delay_ms=-5)
    assert "extend_ms" in problem(action=qpb.EXTEND)
    assert "at most 1000" in problem(action=qpb.REJECT, reason="x" * 1001)


def test_config_zero_fields_take_defaults_and_describe_shows_effective_values() -> None:
    config = config_from_wire(qpb.QueueConfig(name="q", topics=["t"], lock_ms=5000))
    assert (config.lock_ms, config.max_deliveries, config.dlq_topic) == (5000, 10, "q.dlq")
    wire = config_to_wire(config)
    assert wire.dead_letter_topic == "q.dlq" and wire.backoff_multiplier == 2.0
    with pytest.raises(E.InvalidQueueConfigError, match="max_in_flight"):
        config_from_wire(qpb.QueueConfig(name="q", topics=["t"], max_in_flight=-1))


def test_max_bytes_becomes_a_record_count_of_at_least_one() -> None:
    assert messages_within(500, 4 << 20, 0.0) == 500, "size unknown yet"
    assert messages_within(500, 1000, 100.0) == 10
    assert messages_within(500, 10, 100.0) == 1
