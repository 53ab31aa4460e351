"""Decoding fetched batches: skip below the fetch offset, control batches, partial tails."""

from __future__ import annotations

import pytest
from tidelog.client import errors
from tidelog.client.fetcher import complete_batches, decode_fetched
from tidelog.proto import batch as codec


def make_batch(base_offset: int, count: int, *, ts: int = 1000) -> bytes:
    records = [(f"k{base_offset + i}".encode(), f"v{base_offset + i}".encode(),
                [("h", b"1")], ts + i) for i in range(count)]
    return codec.encode_batch(records, base_offset=base_offset)


def records_of(buf: bytes, fetch_offset: int) -> tuple[list[int], int]:
    spans, next_offset = complete_batches(buf, fetch_offset)
    out = []
    for pos, size in spans:
        out.extend(r.offset for r in decode_fetched("t", 0, buf[pos:pos + size], fetch_offset))
    return out, next_offset


def test_records_below_the_fetch_offset_in_the_first_batch_are_skipped() -> None:
    buf = make_batch(0, 10) + make_batch(10, 5)
    offsets, next_offset = records_of(buf, 7)
    assert offsets == [7, 8, 9, 10, 11, 12, 13, 14]
    assert next_offset == 15


def test_whole_batches_below_the_fetch_offset_are_dropped_undecoded() -> None:
    buf = make_batch(0, 10) + make_batch(10, 5)
    spans, next_offset = complete_batches(buf, 12)
    assert len(spans) == 1 and next_offset == 15


def test_a_trailing_partial_batch_is_left_for_the_next_fetch() -> None:
    first, second = make_batch(0, 3), make_batch(3, 3)
    buf = first + second[: len(second) // 2]
    offsets, next_offset = records_of(buf, 0)
    assert offsets == [0, 1, 2] and next_offset == 3


def test_only_a_partial_batch_makes_no_progress() -> None:
    second = make_batch(3, 3)
    assert complete_batches(second[:40], 3) == ([], 3)


def test_control_batches_are_skipped_but_advance_the_offset() -> None:
    control = codec.encode_control_batch(codec.ControlType(1), b"x", timestamp_ms=5,
                                         base_offset=3)
    buf = make_batch(0, 3) + control + make_batch(4, 2)
    offsets, next_offset = records_of(buf, 0)
    assert offsets == [0, 1, 2, 4, 5] and next_offset == 6


def test_decoded_records_carry_topic_partition_and_fields() -> None:
    buf = make_batch(20, 2, ts=5000)
    (r0, r1) = decode_fetched("events", 4, buf, 20)
    assert (r0.topic, r0.partition, r0.offset, r0.timestamp) == ("events", 4, 20, 5000)
    assert (r1.key, r1.value, r1.headers) == (b"k21", b"v21", (("h", b"1"),))


def test_a_damaged_batch_raises_corrupt_batch() -> None:
    buf = bytearray(make_batch(0, 3))
    buf[-1] ^= 0xFF
    with pytest.raises(errors.CorruptBatch, match="t/0"):
        decode_fetched("t", 0, bytes(buf), 0)


def test_decoded_records_equal_the_codecs_records_field_for_field() -> None:
    """The one-object decode (ConsumerRecord built by the codec) against decode_records as the
    oracle: same offsets, timestamps, keys, values and headers, none and several, null values."""
    records = [(None if i % 3 == 0 else f"k{i}".encode(), None if i % 4 == 0 else b"v" * i,
                [(f"h{j}", None if j == 1 else bytes([j])) for j in range(i % 3)], 7000 + i)
               for i in range(40)]
    for compression in (codec.Codec.NONE, codec.Codec.LZ4):
        buf = codec.encode_batch(records, base_offset=100, codec=compression)
        oracle = [(r.offset, r.timestamp, r.key, r.value, r.headers)
                  for r in codec.decode_records(buf) if r.offset >= 110]
        got = decode_fetched("t", 2, buf, 110)
        assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in got] == oracle
        assert {(r.topic, r.partition) for r in got} == {("t", 2)} and len(got) == 30


def test_a_malformed_record_area_raises_invalid_batch_naming_the_partition() -> None:
    buf = make_batch(0, 3)
    header = codec.decode_header(buf)
    # record_count says 4 but the batch holds 3: re-checksummed, so only the walk catches it
    forged = codec.assemble_batch(
        base_offset=0, term=header.term, attributes=header.attributes,
        last_offset_delta=header.last_offset_delta, record_count=4,
        first_timestamp=header.first_timestamp, max_timestamp=header.max_timestamp,
        producer_id=header.producer_id, producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence, records=buf[codec.HEADER_SIZE:])
    with pytest.raises(errors.InvalidBatch, match="t/5"):
        decode_fetched("t", 5, forged, 0)
