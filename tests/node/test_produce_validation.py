"""Produce requests are checked against their record areas, not trusted by header (defect 14).

The lying batches are built the way a faulty or hostile producer would: encode honestly, rewrite
a header field at its documented position (docs/batch-format.md), and re-seal the header checksum
with the codec's own `stamp`, so every checksum is valid and only the claim is false.
"""

from __future__ import annotations

import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.node import errors as E
from tidelog.node.produce_validation import ProduceLimits, validate_produce
from tidelog.node.producer_state import ProducerStateTable
from tidelog.proto.batch import (
    BatchError,
    Codec,
    ControlType,
    decode_header,
    decode_records,
    encode_batch,
    encode_control_batch,
    validate_batch,
)

LAST_OFFSET_DELTA_AT = 23
MAX_TIMESTAMP_AT = 39
RECORDS_CHECKSUM_AT = 61
HEADER_CHECKSUM_AT = 69
RECORDS_AT = 77
NOW_MS = 1_750_000_000_000
LIMITS = ProduceLimits(request_bytes_max=8 << 20, batch_bytes_max=1 << 20,
                       timestamp_difference_ms_max=3_600_000)


def honest(count: int = 3, ts: int = NOW_MS, **kwargs: int) -> bytes:
    return encode_batch([(None, f"v{i}".encode(), (), ts + i) for i in range(count)], **kwargs)


def reseal(batch: bytearray) -> bytes:
    """Recompute both checksums as an honest encoder would."""
    struct.pack_into(">Q", batch, RECORDS_CHECKSUM_AT,
                     xxhash.xxh3_64_intdigest(bytes(batch[RECORDS_AT:])))
    struct.pack_into(">Q", batch, HEADER_CHECKSUM_AT,
                     xxhash.xxh3_64_intdigest(bytes(batch[:HEADER_CHECKSUM_AT])))
    sealed = bytes(batch)
    validate_batch(sealed, max_bytes=1 << 30)  # every checksum holds: only the claim is false
    return sealed


def lie(batch: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(batch)
    struct.pack_into(fmt, out, at, value)
    return reseal(out)


def test_a_batch_claiming_two_billion_offsets_for_1000_records_is_refused() -> None:
    """The defect as reported: checksum-valid, 1000 records, last_offset_delta 2^31-1."""
    batch = lie(honest(1000), LAST_OFFSET_DELTA_AT, ">i", 2**31 - 1)
    with pytest.raises(E.InvalidBatchRequestError, match="last_offset_delta 2147483647"):
        validate_produce(batch, LIMITS, NOW_MS)


def test_a_header_max_timestamp_that_no_record_has_is_refused() -> None:
    batch = lie(honest(3), MAX_TIMESTAMP_AT, ">q", NOW_MS + 50)
    with pytest.raises(E.InvalidBatchRequestError, match="disagree with its records"):
        validate_produce(batch, LIMITS, NOW_MS)


@pytest.mark.parametrize("ts", [0, -1, NOW_MS - 3_600_001, NOW_MS + 3_600_001, 2**62])
def test_timestamps_beyond_the_allowed_difference_are_refused(ts: int) -> None:
    with pytest.raises(E.InvalidTimestampError, match="message.timestamp.difference.max.ms"):
        validate_produce(honest(1, ts=ts), LIMITS, NOW_MS)


def test_lz4_that_does_not_decompress_is_refused() -> None:
    """Both checksums valid, the size prefix plausible, the lz4 block garbage."""
    batch = bytearray(honest(50, codec=Codec.LZ4))
    garbage = bytes([0xFF]) * (len(batch) - RECORDS_AT - 4)
    batch[RECORDS_AT + 4:] = garbage
    sealed = reseal(batch)  # the header-only check lets it through
    with pytest.raises(E.InvalidBatchRequestError, match="lz4"):
        validate_produce(sealed, LIMITS, NOW_MS)


def test_producer_fields_must_be_coherent_and_control_batches_are_refused() -> None:
    with pytest.raises(E.InvalidBatchRequestError, match="both must be -1"):
        validate_produce(honest(1, producer_epoch=3), LIMITS, NOW_MS)
    with pytest.raises(E.InvalidBatchRequestError, match="must be >= 0"):
        validate_produce(honest(1, producer_id=5, producer_epoch=0), LIMITS, NOW_MS)
    control = encode_control_batch(ControlType.RAFT_NOOP, b"", timestamp_ms=NOW_MS)
    with pytest.raises(E.InvalidBatchRequestError, match="control batches"):
        validate_produce(control, LIMITS, NOW_MS)


def test_one_bad_batch_refuses_the_whole_request() -> None:
    good = honest(2)
    bad = lie(honest(2), LAST_OFFSET_DELTA_AT, ">i", 9)
    assert len(validate_produce(good + good, LIMITS, NOW_MS)) == 2
    with pytest.raises(E.InvalidBatchRequestError, match="batch 1 of the request"):
        validate_produce(good + bad, LIMITS, NOW_MS)


def test_sequences_are_planned_for_the_whole_request_before_anything_is_proposed() -> None:
    table = ProducerStateTable()
    a = decode_header(honest(2, producer_id=7, producer_epoch=0, base_sequence=0))
    b = decode_header(honest(2, producer_id=7, producer_epoch=0, base_sequence=2))
    gap = decode_header(honest(2, producer_id=7, producer_epoch=0, base_sequence=5))
    assert table.check_request([a, b], lambda pid: 0) == [None, None]
    with pytest.raises(E.OutOfOrderSequenceError, match="same request"):
        table.check_request([a, gap], lambda pid: 0)
    assert len(table) == 0  # planning records nothing


def oracle_accepts(batch: bytes) -> bool:
    """The dumb oracle: the codec's full decoder, then the same claims checked record by record."""
    try:
        records = decode_records(batch)
    except BatchError:
        return False
    header = decode_header(batch)
    return (header.last_offset_delta == len(records) - 1
            and [r.offset - header.base_offset for r in records] == list(range(len(records)))
            and records[0].timestamp == header.first_timestamp
            and max(r.timestamp for r in records) == header.max_timestamp)


@st.composite
def mutated_batches(draw: st.DrawFn) -> bytes:
    """Honest uncompressed batches whose records area is then damaged in place, inserted into
    or cut, with batch_length and both checksums made valid again."""
    records = [(draw(st.none() | st.binary(max_size=6)), draw(st.none() | st.binary(max_size=6)),
                draw(st.lists(st.tuples(st.text(max_size=3), st.none() | st.binary(max_size=3)),
                              max_size=2)), NOW_MS + draw(st.integers(-5, 5)))
               for _ in range(draw(st.integers(1, 4)))]
    out = bytearray(encode_batch(records, codec=Codec.NONE))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(RECORDS_AT, len(out)))
        match draw(st.sampled_from(["set", "insert", "cut"])):
            case "set" if at < len(out):
                out[at] = draw(st.integers(0, 255))
            case "insert":
                out[at:at] = draw(st.binary(min_size=1, max_size=4))
            case "cut" if at < len(out):
                del out[at:at + draw(st.integers(1, 4))]
    struct.pack_into(">i", out, 8, len(out) - 12)  # batch_length
    return reseal(out)


@settings(max_examples=400, deadline=None)
@given(mutated_batches())
def test_the_fast_record_walk_agrees_with_the_full_decoder(batch: bytes) -> None:
    """STYLE habit 14: the framing walk used on the produce path against decode_records."""
    limits = ProduceLimits(request_bytes_max=1 << 20, batch_bytes_max=1 << 20,
                           timestamp_difference_ms_max=10**15)
    try:
        validate_produce(batch, limits, NOW_MS)
        fast = True
    except E.BrokerError:
        fast = False
    assert fast == oracle_accepts(batch)
