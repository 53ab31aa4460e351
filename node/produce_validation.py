"""Check a produce request's batches completely before any of them is proposed.

A checksum proves the bytes were not damaged, not that the header tells the truth (issue 11,
defect 14: a checksum-valid batch claiming 1000 records with last_offset_delta 2^31-1 burned 2^31
offsets and planted a batch no consumer could read). So each batch is decompressed and its record
framing parsed once, here, with the codec's public decoder, and the header must agree with what
the record area holds:

- record_count = the records present, and their offset deltas are exactly 0, 1, ..., count - 1
  (= last_offset_delta): a producer's batch has no holes (only compaction makes them, later);
- first_timestamp is the first record's, max_timestamp the largest; every timestamp lies within
  message.timestamp.difference.max.ms of the broker's clock (Kafka's name and meaning);
- the producer fields are coherent (no id: no epoch, no sequence; an id: both set);
- no control batches (those are the leader's own).

Cost: one lz4 decompression and one pass over the record framing per produced batch, bounded by
max.message.bytes (compressed) and DECOMPRESSED_BYTES_MAX (decompressed). The pass (`_walk`) checks
exactly the framing the codec's `decode_records` checks, without building Record objects: 0.9-1.4
us per record against 2-3.5 us for decode_records and < 0.06 us for the header-only check
(benchmarks/produce_validation_bench.py; 2 shared cores, load average 6); a leader's whole share
of a replicated write at 500k records/s is ~2 us. tests/node/test_produce_validation.py checks
the walk against decode_records as its oracle. It belongs in the codec module (its owner may move it
there); it lives here until then.

The request is all-or-nothing: `validate_produce` raises before returning if any batch is bad,
so the caller proposes either every batch or none.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import lz4.block
from tidelog.node import errors as E
from tidelog.node.storage.encryption import ENCRYPTED_ATTRIBUTE
from tidelog.proto.batch import (
    DECOMPRESSED_BYTES_MAX,
    HEADER_SIZE,
    BatchHeader,
    BatchTooLargeError,
    Codec,
    CorruptBatchError,
    InvalidBatchError,
    iter_batches,
    validate_batch,
)

INT16_MAX = 2**15 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ProduceLimits:
    """What one topic allows; from its effective configs and the node's config."""

    request_bytes_max: int  # the node's limit on a whole produce request
    batch_bytes_max: int  # the topic's max.message.bytes
    timestamp_difference_ms_max: int  # message.timestamp.difference.max.ms
    decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidBatch:
    data: bytes
    header: BatchHeader


def validate_produce(data: bytes, limits: ProduceLimits, now_ms: int) -> list[ValidBatch]:
    """Every batch of a produce request, checked; raises a BrokerError naming the first fault."""
    if not data:
        raise E.InvalidBatchRequestError("the produce request carries no batch")
    if len(data) > limits.request_bytes_max:
        raise E.MessageTooLargeError(
            f"produce request of {len(data)} bytes is over the node's limit of "
            f"{limits.request_bytes_max} bytes")
    out = []
    try:
        for index, (pos, header) in enumerate(iter_batches(data, verify=False)):
            batch = data[pos:pos + header.size]
            out.append(ValidBatch(data=batch, header=_validate_one(index, batch, limits, now_ms)))
    except BatchTooLargeError as exc:
        raise E.MessageTooLargeError(str(exc)) from None
    except CorruptBatchError as exc:
        raise E.CorruptBatchRequestError(f"corrupt batch: {exc}") from None
    except InvalidBatchError as exc:
        raise E.InvalidBatchRequestError(f"invalid batch: {exc}") from None
    return out


def _validate_one(index: int, batch: bytes, limits: ProduceLimits, now_ms: int) -> BatchHeader:
    header = validate_batch(batch, max_bytes=limits.batch_bytes_max)
    where = f"batch {index} of the request"
    if header.is_control:
        raise E.InvalidBatchRequestError(f"{where}: producers may not send control batches")
    if header.attributes & ENCRYPTED_ATTRIBUTE:
        raise E.InvalidBatchRequestError(
            f"{where}: attribute bit 5 is reserved (storage marks batches encrypted at rest)")
    _check_producer_fields(where, header)
    if header.last_offset_delta != header.record_count - 1:
        raise E.InvalidBatchRequestError(
            f"{where}: last_offset_delta {header.last_offset_delta} but {header.record_count} "
            "records (a produced batch covers exactly its records' offsets)")
    raw = _records_area(batch, header, limits.decompressed_bytes_max)
    try:
        count, first_delta, min_delta, max_delta = _walk(raw)
    except InvalidBatchError as exc:
        raise E.InvalidBatchRequestError(f"{where}: {exc}") from None
    if count != header.record_count:
        raise E.InvalidBatchRequestError(
            f"{where}: record_count says {header.record_count}, the batch holds {count}")
    if first_delta != 0 or header.first_timestamp + max_delta != header.max_timestamp:
        raise E.InvalidBatchRequestError(
            f"{where}: header timestamps (first {header.first_timestamp}, max "
            f"{header.max_timestamp}) disagree with its records")
    bound = limits.timestamp_difference_ms_max
    for ts in (header.first_timestamp + min_delta, header.max_timestamp):
        if abs(ts - now_ms) > bound:
            raise E.InvalidTimestampError(
                f"{where}: timestamp {ts} is {abs(ts - now_ms)} ms away from the broker's "
                f"clock; message.timestamp.difference.max.ms is {bound}")
    return header


def _check_producer_fields(where: str, header: BatchHeader) -> None:
    if header.producer_id == -1:
        if header.producer_epoch != -1 or header.base_sequence != -1:
            raise E.InvalidBatchRequestError(
                f"{where}: no producer id, yet epoch {header.producer_epoch} and sequence "
                f"{header.base_sequence} (both must be -1)")
        return
    if header.producer_id < 0:
        raise E.InvalidBatchRequestError(f"{where}: producer id {header.producer_id}")
    if not 0 <= header.producer_epoch <= INT16_MAX or header.base_sequence < 0:
        raise E.InvalidBatchRequestError(
            f"{where}: producer {header.producer_id} with epoch {header.producer_epoch} and "
            f"sequence {header.base_sequence} (both must be >= 0)")


_RECORD_FIXED = struct.Struct(">ibiii")  # length, attributes, offset_delta, ts_delta, key_length
_INT32 = struct.Struct(">i")
_UINT16 = struct.Struct(">H")
_LZ4_SIZE = struct.Struct("<I")  # lz4.block's store_size prefix


def _records_area(batch: bytes, header: BatchHeader,
                  decompressed_bytes_max: int) -> bytes | memoryview:
    area = memoryview(batch)[HEADER_SIZE:]
    if header.codec is Codec.NONE:
        return area
    (declared,) = _LZ4_SIZE.unpack_from(area, 0)
    if declared > decompressed_bytes_max:
        raise BatchTooLargeError(
            f"records declare {declared} decompressed bytes, limit {decompressed_bytes_max}")
    try:
        return lz4.block.decompress(area)
    except lz4.block.LZ4BlockError as exc:
        raise InvalidBatchError(f"lz4 records do not decompress: {exc}") from None


def _walk(raw: bytes | memoryview) -> tuple[int, int, int, int]:
    """(record count, first/min/max timestamp delta) of a records area, checking the framing
    decode_records checks (lengths within each record, UTF-8 header names, each record ending
    where its length says) and that offset deltas are 0, 1, 2, ... Raises InvalidBatchError."""
    unpack_fixed, unpack_int, unpack_short = (
        _RECORD_FIXED.unpack_from, _INT32.unpack_from, _UINT16.unpack_from)
    pos, end, count = 0, len(raw), 0
    first_delta = min_delta = max_delta = 0
    try:
        while pos < end:
            length, _attrs, offset_delta, ts_delta, key_length = unpack_fixed(raw, pos)
            record_end = pos + 4 + length
            if length < _RECORD_FIXED.size - 4 or record_end > end:
                raise InvalidBatchError(f"record at {pos} declares {length} bytes past the end")
            at = _skip(pos + _RECORD_FIXED.size, key_length, record_end)
            at = _skip(at + 4, unpack_int(raw, at)[0], record_end)
            (header_count,) = unpack_short(raw, at)
            at += 2
            for _ in range(header_count):
                (name_length,) = unpack_short(raw, at)
                bytes(raw[at + 2:at + 2 + name_length]).decode("utf-8")
                at = _skip(at + 2, name_length, record_end)
                at = _skip(at + 4, unpack_int(raw, at)[0], record_end)
            if at != record_end:
                raise InvalidBatchError(f"record ends at {at}, its length says {record_end}")
            if offset_delta != count:
                raise InvalidBatchError(f"record {count} has offset delta {offset_delta}")
            if count == 0:
                first_delta = min_delta = max_delta = ts_delta
            else:
                min_delta, max_delta = min(min_delta, ts_delta), max(max_delta, ts_delta)
            count += 1
            pos = record_end
    except (struct.error, UnicodeDecodeError) as exc:
        raise InvalidBatchError(f"malformed record area: {exc}") from None
    return count, first_delta, min_delta, max_delta


def _skip(at: int, length: int, limit: int) -> int:
    """Past a length-prefixed field (-1: null) that must end within its record."""
    if length == -1:
        return at
    if length < -1 or at + length > limit:
        raise InvalidBatchError(f"field of {length} bytes at {at} runs past its record")
    return at + length
