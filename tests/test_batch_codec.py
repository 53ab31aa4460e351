"""The record batch codec: round trips, stamping, and rejection of damaged or malformed batches."""

from __future__ import annotations

import struct

import lz4.block
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.proto.batch import (
    HEADER_SIZE,
    MAGIC,
    NO_TIMESTAMP,
    BatchTooLargeError,
    Codec,
    ControlType,
    CorruptBatchError,
    InvalidBatchError,
    UnsupportedFormatError,
    decode_header,
    decode_records,
    decode_verified_header,
    encode_batch,
    encode_control_batch,
    iter_batches,
    stamp,
    upgrade_v1_batch,
    validate_batch,
)

MAX = 1 << 24
_maybe_bytes = st.one_of(st.none(), st.binary(max_size=64))
_headers = st.lists(st.tuples(st.text(max_size=8), _maybe_bytes), max_size=3)
_records = st.lists(
    st.tuples(_maybe_bytes, _maybe_bytes, _headers,
              st.integers(min_value=1_600_000_000_000, max_value=1_600_000_100_000)),
    min_size=1, max_size=20,
)


def _recompute_checksum(batch: bytearray) -> bytearray:
    """Re-sign a batch edited on purpose, as a sender that builds bad batches would."""
    struct.pack_into(">Q", batch, 61, xxhash.xxh3_64_intdigest(bytes(batch[77:])))
    struct.pack_into(">Q", batch, 69, xxhash.xxh3_64_intdigest(bytes(batch[:69])))
    return batch


def encode_v1(records: list[tuple[bytes | None, bytes, int]], *, base_offset: int = 0,
              term: int = 0) -> bytes:
    """Format v1 bytes, written here from its documented layout (not with the codec), so the
    test holds even if the codec's own knowledge of v1 is wrong: header of 69 bytes, checksum
    xxh3_64 of [29, end) at 21, base_offset and term outside it; uncompressed records."""
    parts = []
    for delta, (key, value, ts) in enumerate(records):
        key_length = -1 if key is None else len(key)
        body = struct.pack(">i", len(value)) + value + b"\x00\x00"
        length = 1 + 4 + 4 + 4 + max(key_length, 0) + len(body)
        parts.append(struct.pack(">ibiii", length, 0, delta, ts - records[0][2], key_length)
                     + (key or b"") + body)
    raw = b"".join(parts)
    tail = struct.pack(">hiiqqqhi", 0, len(records) - 1, len(records), records[0][2],
                       max(r[2] for r in records), -1, -1, -1) + raw
    return struct.pack(">qiqbQ", base_offset, 69 - 12 + len(raw), term, 1,
                       xxhash.xxh3_64_intdigest(tail)) + tail


def test_header_layout_matches_the_documented_table() -> None:
    batch = encode_batch([(b"k", b"v", (), 1234)], codec=Codec.NONE, base_offset=7, term=3,
                         producer_id=9, producer_epoch=2, base_sequence=5)
    assert HEADER_SIZE == 77 and MAGIC == 2
    assert struct.unpack_from(">q", batch, 0)[0] == 7
    assert struct.unpack_from(">i", batch, 8)[0] == len(batch) - 12
    assert struct.unpack_from(">q", batch, 12)[0] == 3
    assert batch[20] == MAGIC
    assert struct.unpack_from(">hii", batch, 21) == (0, 0, 1)
    assert struct.unpack_from(">qqqhi", batch, 31) == (1234, 1234, 9, 2, 5)
    assert struct.unpack_from(">Q", batch, 61)[0] == xxhash.xxh3_64_intdigest(batch[77:])
    assert struct.unpack_from(">Q", batch, 69)[0] == xxhash.xxh3_64_intdigest(batch[:69])
    # the records area starts right after the header (uncompressed: the record's length first)
    assert struct.unpack_from(">i", batch, 77)[0] == len(batch) - 77 - 4


@settings(max_examples=60, deadline=None)
@given(records=_records, codec=st.sampled_from(Codec), base=st.integers(0, 2**40),
       term=st.integers(0, 2**31))
def test_round_trip_preserves_every_field(records, codec, base, term) -> None:
    batch = encode_batch(records, codec=codec, base_offset=base, term=term)
    header = validate_batch(batch, max_bytes=MAX)
    assert (header.base_offset, header.term, header.codec) == (base, term, codec)
    assert header.record_count == len(records)
    assert header.last_offset == base + len(records) - 1
    assert header.max_timestamp == max(r[3] for r in records)
    decoded = decode_records(batch)
    assert [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in decoded] == [
        (base + i, k, v, list(h), ts) for i, (k, v, h, ts) in enumerate(records)
    ]


@settings(max_examples=30, deadline=None)
@given(records=_records, base=st.integers(0, 2**50), term=st.integers(0, 2**40))
def test_stamp_rewrites_offset_and_term_and_keeps_both_checksums_valid(records, base,
                                                                      term) -> None:
    produced = encode_batch(records)
    batch = stamp(produced, base_offset=base, term=term)
    header = validate_batch(batch, max_bytes=MAX)
    assert (header.base_offset, header.term) == (base, term)
    assert decode_records(batch)[0].offset == base
    assert batch[HEADER_SIZE:] == produced[HEADER_SIZE:]  # the records travel untouched
    assert batch[61:69] == produced[61:69]  # and so does the producer's records checksum
    assert stamp(batch, base_offset=base, term=term) is batch  # already stamped: no copy


def test_the_term_is_covered_by_the_checksum() -> None:
    """Defect 9: v1 let a flipped term pass validation, yet Raft log matching reads it."""
    batch = bytearray(stamp(encode_batch([(None, b"v", (), 1)]), base_offset=3, term=5))
    for bit in range(64):
        flipped = bytearray(batch)
        struct.pack_into(">q", flipped, 12, 5 ^ (1 << bit) if bit < 63 else 5 - 2**63)
        with pytest.raises(CorruptBatchError, match="header checksum"):
            validate_batch(bytes(flipped), max_bytes=MAX)
        with pytest.raises(CorruptBatchError):
            decode_records(bytes(flipped))


def test_stamp_refuses_to_re_sign_a_damaged_header() -> None:
    batch = bytearray(encode_batch([(None, b"v", (), 1)]))
    batch[25] ^= 0x04  # record_count
    with pytest.raises(CorruptBatchError):
        stamp(bytes(batch), base_offset=1, term=1)


def test_a_v1_batch_is_recognised_not_called_corrupt() -> None:
    v1 = encode_v1([(b"k", b"value", 1000), (None, b"v2", 1005)], base_offset=40, term=3)
    for check in (lambda b: validate_batch(b, max_bytes=MAX), decode_records,
                  lambda b: list(iter_batches(b)),
                  lambda b: stamp(b, base_offset=40, term=3)):
        with pytest.raises(UnsupportedFormatError, match="format v1") as caught:
            check(v1)
        assert caught.value.format_version == 1
    damaged = bytearray(v1)
    damaged[-1] ^= 1
    with pytest.raises(CorruptBatchError):
        validate_batch(bytes(damaged), max_bytes=MAX)


def test_upgrade_v1_batch_keeps_every_field_and_record() -> None:
    v1 = encode_v1([(b"k", b"value", 1000), (None, b"v2", 1005)], base_offset=40, term=3)
    v2 = upgrade_v1_batch(v1)
    header = validate_batch(v2, max_bytes=MAX)
    assert (header.base_offset, header.term, header.last_offset, header.first_timestamp,
            header.max_timestamp, header.producer_id) == (40, 3, 41, 1000, 1005, -1)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in decode_records(v2)] == [
        (40, b"k", b"value", 1000), (41, None, b"v2", 1005)]
    damaged = bytearray(v1)
    damaged[50] ^= 1
    with pytest.raises(CorruptBatchError):
        upgrade_v1_batch(bytes(damaged))


def test_control_batch_carries_its_type_and_body() -> None:
    batch = encode_control_batch(ControlType.RAFT_CONFIG, b"cfg", term=2)
    header = validate_batch(batch, max_bytes=MAX)
    assert header.is_control and header.control_type is ControlType.RAFT_CONFIG
    assert header.first_timestamp == header.max_timestamp == NO_TIMESTAMP
    assert decode_records(batch)[0].value == b"cfg"
    assert encode_control_batch(ControlType.RAFT_CONFIG, b"cfg", term=2) == batch
    plain = validate_batch(encode_batch([(None, b"x", (), 1)]), max_bytes=MAX)
    assert not plain.is_control and plain.control_type is ControlType.NONE


def test_iter_batches_walks_a_concatenation() -> None:
    batches = [encode_batch([(None, b"x" * i, (), 1)] * i, base_offset=10 * i) for i in (1, 2, 3)]
    found = list(iter_batches(b"".join(batches)))
    assert [h.base_offset for _, h in found] == [10, 20, 30]
    assert [p for p, _ in found] == [0, len(batches[0]), len(batches[0]) + len(batches[1])]
    with pytest.raises(CorruptBatchError):
        list(iter_batches(b"".join(batches)[:-1]))


@settings(max_examples=60, deadline=None)
@given(records=_records, codec=st.sampled_from(Codec), base=st.integers(0, 2**40),
       term=st.integers(0, 2**31), data=st.data())
def test_any_flipped_bit_anywhere_is_corruption(records, codec, base, term, data) -> None:
    """Every byte of a v2 batch is covered: header fields (base offset and term included) by
    the header checksum, the records by the records checksum, the checksums by themselves."""
    batch = bytearray(encode_batch(records, codec=codec, base_offset=base, term=term))
    position = data.draw(st.integers(0, len(batch) - 1), label="byte")
    batch[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    with pytest.raises(CorruptBatchError):
        validate_batch(bytes(batch), max_bytes=MAX)


def test_wrong_length_is_corruption() -> None:
    batch = encode_batch([(None, b"value", (), 1)])
    with pytest.raises(CorruptBatchError):
        validate_batch(batch[:-1], max_bytes=MAX)
    with pytest.raises(CorruptBatchError):
        validate_batch(batch + b"\0", max_bytes=MAX)
    with pytest.raises(CorruptBatchError):
        validate_batch(batch[:40], max_bytes=MAX)


def test_unknown_codec_and_bad_counts_are_the_senders_fault() -> None:
    base = bytearray(encode_batch([(None, b"v", (), 1)], codec=Codec.NONE))
    unknown = bytearray(base)
    struct.pack_into(">h", unknown, 21, 5)
    with pytest.raises(InvalidBatchError, match="codec"):
        validate_batch(bytes(_recompute_checksum(unknown)), max_bytes=MAX)
    zero = bytearray(base)
    struct.pack_into(">ii", zero, 23, -1, 0)
    with pytest.raises(InvalidBatchError, match="record_count"):
        validate_batch(bytes(_recompute_checksum(zero)), max_bytes=MAX)
    magic = bytearray(base)
    magic[20] = 3  # a future version, signed by its sender: not damage
    with pytest.raises(InvalidBatchError, match="magic"):
        validate_batch(bytes(_recompute_checksum(magic)), max_bytes=MAX)
    with pytest.raises(InvalidBatchError):
        encode_batch([])


def test_batch_over_the_limit_is_refused() -> None:
    batch = encode_batch([(None, b"x" * 1000, (), 1)], codec=Codec.NONE)
    with pytest.raises(BatchTooLargeError):
        validate_batch(batch, max_bytes=len(batch) - 1)
    assert validate_batch(batch, max_bytes=len(batch)).size == len(batch)


def test_decompression_is_bounded_by_the_declared_size() -> None:
    batch = encode_batch([(None, b"\0" * 100_000, (), 1)], codec=Codec.LZ4)
    with pytest.raises(BatchTooLargeError):
        decode_records(batch, decompressed_bytes_max=50_000)
    assert decode_records(batch)[0].value == b"\0" * 100_000


def test_lying_lz4_size_prefix_is_rejected_not_trusted() -> None:
    batch = bytearray(encode_batch([(None, b"abc" * 50, (), 1)], codec=Codec.LZ4))
    struct.pack_into("<I", batch, HEADER_SIZE, 3)  # claims 3 decompressed bytes
    with pytest.raises(InvalidBatchError):
        decode_records(bytes(_recompute_checksum(batch)))


def test_malformed_records_are_invalid() -> None:
    raw = lz4.block.compress(b"\x00\x00\x00\x50garbage", store_size=True)
    good = bytearray(encode_batch([(None, b"v", (), 1)], codec=Codec.LZ4))
    batch = good[:HEADER_SIZE] + raw
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    with pytest.raises(InvalidBatchError):
        decode_records(bytes(_recompute_checksum(batch)))


def test_header_decodes_without_validation() -> None:
    header = decode_header(encode_batch([(None, b"v", (), 1)], base_offset=4, term=1))
    assert (header.base_offset, header.term, header.size > HEADER_SIZE) == (4, 1, True)


def test_a_header_alone_can_be_verified_term_included() -> None:
    batch = stamp(encode_batch([(None, b"v" * 500, (), 1)]), base_offset=9, term=4)
    assert decode_verified_header(b"xx" + batch + b"yy", 2).term == 4
    assert decode_verified_header(batch[:HEADER_SIZE]).last_offset == 9  # records not needed
    for position in range(HEADER_SIZE):
        flipped = bytearray(batch[:HEADER_SIZE])
        flipped[position] ^= 0x40
        with pytest.raises(CorruptBatchError):
            decode_verified_header(bytes(flipped))
