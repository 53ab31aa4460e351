"""Record batch codec, shared by the node (which only checks headers) and the client.

Byte layout of a batch, big-endian (full description and rationale: docs/batch-format.md)::

    off len field              type   notes
    0   8   base_offset        int64  set by the leader on append (NOT covered by the checksum)
    8   4   batch_length       int32  bytes after this field (so total size = 12 + batch_length)
    12  8   term               int64  Raft term, set by the leader (NOT covered by the checksum)
    20  1   magic              int8   format version = 1
    21  8   checksum           uint64 xxh3_64 of bytes [29, 12 + batch_length)
    29  2   attributes         int16  bits 0-2 codec (0 none, 1 lz4); bit 4 control batch;
                                      bits 8-11 control type
    31  4   last_offset_delta  int32  last offset - base offset (stays after compaction)
    35  4   record_count       int32  >= 1
    39  8   first_timestamp    int64  ms since epoch (timestamp of the first record)
    47  8   max_timestamp      int64  ms
    55  8   producer_id        int64  -1 = not idempotent
    63  2   producer_epoch     int16  -1
    65  4   base_sequence      int32  -1
    69  ..  records            lz4.block with store_size=True when codec lz4, else raw

Each record, uncompressed, fixed-width (cheaper to parse in Python than varints)::

    int32 length of the rest | int8 attributes | int32 offset_delta | int32 timestamp_delta
    int32 key_length (-1 = null) + key | int32 value_length (-1 = null: a tombstone) + value
    uint16 header_count, then per header: uint16 key_length + utf-8 key,
                                          int32 value_length (-1 = null) + value

base_offset and term sit outside the checksum so the leader can stamp them (`stamp`) without
rehashing: the broker never unpacks records on the hot path. This module imports no grpc.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NewType

import lz4.block
import xxhash

__all__ = [
    "CHECKSUM_START",
    "DECOMPRESSED_BYTES_MAX",
    "HEADER_SIZE",
    "MAGIC",
    "BatchError",
    "BatchHeader",
    "BatchTooLargeError",
    "Codec",
    "ControlType",
    "CorruptBatchError",
    "InvalidBatchError",
    "Offset",
    "Record",
    "RecordTuple",
    "decode_header",
    "decode_records",
    "encode_batch",
    "encode_control_batch",
    "iter_batches",
    "stamp",
    "validate_batch",
]

Offset = NewType("Offset", int)
"""A record's position in a partition log (Kafka's offset), counted in records from 0."""

MAGIC = 1
HEADER_SIZE = 69
LENGTH_PREFIX_SIZE = 12  # base_offset + batch_length: the bytes batch_length does not count
CHECKSUM_START = 29  # the checksum covers [CHECKSUM_START, end of batch)
DECOMPRESSED_BYTES_MAX = 64 * 1024 * 1024
"""Default bound on a batch's declared decompressed size: refuse it rather than allocate it."""

_HEADER = struct.Struct(">qiqbQhiiqqqhi")
_STAMP = struct.Struct(">q")  # base_offset at 0 and term at 12 use the same int64 layout
_RECORD_FIXED = struct.Struct(">ibiii")  # length, attributes, offset_delta, ts_delta, key_length
_INT32 = struct.Struct(">i")
_UINT16 = struct.Struct(">H")
_LZ4_SIZE = struct.Struct("<I")  # lz4.block store_size prefix is little-endian
assert _HEADER.size == HEADER_SIZE

_CODEC_MASK = 0x07
_CONTROL_BIT = 0x10
_CONTROL_TYPE_SHIFT = 8
_CONTROL_TYPE_MASK = 0x0F00
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class Codec(IntEnum):
    NONE = 0
    LZ4 = 1


class ControlType(IntEnum):
    NONE = 0
    RAFT_NOOP = 1
    RAFT_CONFIG = 2
    TXN_MARKER = 3  # reserved
    # Compaction removed every record of a data batch; this one-record stand-in keeps its offsets
    # [base, base + last_offset_delta] and term: offsets stay contiguous (storage/compaction.py)
    COMPACTED = 4


class BatchError(ValueError):
    """A batch cannot be accepted or decoded."""


class CorruptBatchError(BatchError):
    """The bytes are damaged: checksum mismatch or a length that does not match the buffer."""


class InvalidBatchError(BatchError):
    """The batch is intact but malformed by its sender: bad magic, unknown codec, bad counts."""


class BatchTooLargeError(BatchError):
    """The batch (or its declared decompressed records) exceeds a configured limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    term: int
    magic: int
    checksum: int
    attributes: int
    last_offset_delta: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int

    @property
    def codec(self) -> Codec:
        """Raises InvalidBatchError for an unknown codec (validate_batch checks it first)."""
        return _codec_of(self.attributes)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & _CONTROL_BIT)

    @property
    def control_type(self) -> ControlType:
        if not self.is_control:
            return ControlType.NONE
        return ControlType((self.attributes & _CONTROL_TYPE_MASK) >> _CONTROL_TYPE_SHIFT)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def size(self) -> int:
        """Total bytes of the batch, header included."""
        return LENGTH_PREFIX_SIZE + self.batch_length


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


RecordTuple = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]], int]
"""(key, value, headers, timestamp_ms): plain tuples, because building objects costs time."""


def encode_batch(
    records: Sequence[RecordTuple],
    *,
    codec: Codec = Codec.LZ4,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    control_type: ControlType = ControlType.NONE,
    base_offset: int = 0,
    term: int = 0,
) -> bytes:
    """Encode records into one batch; offsets are assigned 0..n-1 relative to base_offset."""
    if not records:
        raise InvalidBatchError("a batch needs at least one record")
    codec = Codec(codec)
    first_timestamp = records[0][3]
    max_timestamp = first_timestamp
    parts: list[bytes] = []
    append = parts.append
    for offset_delta, (key, value, headers, timestamp) in enumerate(records):
        if timestamp > max_timestamp:
            max_timestamp = timestamp
        timestamp_delta = timestamp - first_timestamp
        if not _INT32_MIN <= timestamp_delta <= _INT32_MAX:
            raise InvalidBatchError(
                f"record {offset_delta}: timestamp {timestamp} is more than 2^31 ms away from "
                f"the batch's first timestamp {first_timestamp}"
            )
        body = _encode_record_tail(value, headers)
        key_length = -1 if key is None else len(key)
        length = 1 + 4 + 4 + 4 + max(key_length, 0) + len(body)
        append(_RECORD_FIXED.pack(length, 0, offset_delta, timestamp_delta, key_length))
        if key:
            append(key)
        append(body)
    raw = b"".join(parts)
    payload = lz4.block.compress(raw, store_size=True) if codec is Codec.LZ4 else raw
    attributes = int(codec)
    if control_type is not ControlType.NONE:
        attributes |= _CONTROL_BIT | (int(control_type) << _CONTROL_TYPE_SHIFT)
    count = len(records)
    tail = _HEADER.pack(
        0, 0, 0, 0, 0,  # placeholders: only the checksummed part is used from this pack
        attributes, count - 1, count, first_timestamp, max_timestamp,
        producer_id, producer_epoch, base_sequence,
    )[CHECKSUM_START:] + payload
    batch_length = HEADER_SIZE - LENGTH_PREFIX_SIZE + len(payload)
    checksum = xxhash.xxh3_64_intdigest(tail)
    head = _HEADER.pack(base_offset, batch_length, term, MAGIC, checksum,
                        0, 0, 0, 0, 0, 0, 0, 0)[:CHECKSUM_START]
    return head + tail


def encode_control_batch(
    control_type: ControlType,
    body: bytes,
    *,
    timestamp_ms: int,
    base_offset: int = 0,
    term: int = 0,
) -> bytes:
    """A control batch of one record whose value is `body` (uncompressed: bodies are small)."""
    if ControlType(control_type) is ControlType.NONE:
        raise InvalidBatchError("a control batch needs a control type other than NONE")
    return encode_batch(
        [(None, body, (), timestamp_ms)], codec=Codec.NONE, control_type=control_type,
        base_offset=base_offset, term=term,
    )


def decode_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the 69-byte header at `pos` without any validation beyond its presence."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptBatchError(
            f"truncated batch header at position {pos}: {len(buf) - pos} of {HEADER_SIZE} bytes"
        )
    (base_offset, batch_length, term, magic, checksum, attributes, last_offset_delta,
     record_count, first_timestamp, max_timestamp, producer_id, producer_epoch,
     base_sequence) = _HEADER.unpack_from(buf, pos)
    return BatchHeader(
        base_offset=base_offset, batch_length=batch_length, term=term, magic=magic,
        checksum=checksum, attributes=attributes, last_offset_delta=last_offset_delta,
        record_count=record_count, first_timestamp=first_timestamp,
        max_timestamp=max_timestamp, producer_id=producer_id, producer_epoch=producer_epoch,
        base_sequence=base_sequence,
    )


def validate_batch(buf: bytes | bytearray | memoryview, *, max_bytes: int) -> BatchHeader:
    """Check that `buf` is exactly one intact, well-formed batch of at most `max_bytes`.

    The checksum is checked before the fields it covers, so a flipped bit in attributes or counts
    reports as corruption rather than as a sender's mistake. Records are not decompressed.
    """
    header = decode_header(buf)
    if header.size != len(buf):
        if header.batch_length > max_bytes:
            raise BatchTooLargeError(f"batch declares {header.size} bytes, limit {max_bytes}")
        raise CorruptBatchError(
            f"batch_length says {header.size} bytes but the buffer holds {len(buf)}"
        )
    if header.size > max_bytes:
        raise BatchTooLargeError(f"batch of {header.size} bytes exceeds the limit {max_bytes}")
    _check_header(header)
    _check_checksum(buf, header, 0)
    _check_semantics(header)
    return header


def stamp(batch: bytes | bytearray | memoryview, *, base_offset: int, term: int) -> bytes:
    """Return a copy of `batch` with base_offset and term rewritten (no rehash needed)."""
    out = bytearray(batch)
    _STAMP.pack_into(out, 0, base_offset)
    _STAMP.pack_into(out, 12, term)
    return bytes(out)


def iter_batches(
    buf: bytes | bytearray | memoryview, *, verify: bool = True
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (position, header) of each batch in a concatenation of whole batches.

    With `verify`, each batch's checksum and header are checked (CorruptBatchError otherwise);
    a truncated last batch raises CorruptBatchError either way.
    """
    view = memoryview(buf)
    pos = 0
    end = len(view)
    while pos < end:
        header = decode_header(view, pos)
        if header.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE or pos + header.size > end:
            raise CorruptBatchError(
                f"batch at position {pos} declares {header.size} bytes, {end - pos} remain"
            )
        if verify:
            _check_header(header)
            _check_checksum(view, header, pos)
            _check_semantics(header)
        yield pos, header
        pos += header.size


def decode_records(
    batch: bytes | bytearray | memoryview, *, decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX
) -> list[Record]:
    """Decode one batch's records with absolute offsets. Validates the checksum first."""
    view = memoryview(batch)
    header = decode_header(view)
    if header.size != len(view):
        raise CorruptBatchError(f"batch_length says {header.size} bytes, buffer has {len(view)}")
    _check_header(header)
    _check_checksum(view, header, 0)
    _check_semantics(header)
    raw = _decompress(view[HEADER_SIZE:], header.codec, decompressed_bytes_max)
    return _decode_record_area(raw, header)


# ---------------------------------------------------------------------------------------- helpers


def _encode_record_tail(value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    if not headers:
        if value is None:
            return b"\xff\xff\xff\xff\x00\x00"
        return _INT32.pack(len(value)) + value + b"\x00\x00"
    parts = [b"\xff\xff\xff\xff" if value is None else _INT32.pack(len(value)) + value]
    if len(headers) > 0xFFFF:
        raise InvalidBatchError(f"{len(headers)} headers on one record, at most 65535")
    parts.append(_UINT16.pack(len(headers)))
    for name, hvalue in headers:
        encoded = name.encode("utf-8")
        if len(encoded) > 0xFFFF:
            raise InvalidBatchError(f"header key of {len(encoded)} bytes, at most 65535")
        parts.append(_UINT16.pack(len(encoded)) + encoded)
        parts.append(b"\xff\xff\xff\xff" if hvalue is None else _INT32.pack(len(hvalue)) + hvalue)
    return b"".join(parts)


def _codec_of(attributes: int) -> Codec:
    try:
        return Codec(attributes & _CODEC_MASK)
    except ValueError:
        raise InvalidBatchError(f"unknown codec {attributes & _CODEC_MASK}") from None


def _check_header(header: BatchHeader) -> None:
    """Fields outside the checksum that must hold before the checksum can even be located."""
    if header.magic != MAGIC:
        raise InvalidBatchError(f"unsupported magic {header.magic}, expected {MAGIC}")
    if header.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE:
        raise CorruptBatchError(f"batch_length {header.batch_length} is shorter than the header")


def _check_checksum(view: bytes | bytearray | memoryview, header: BatchHeader, pos: int) -> None:
    actual = xxhash.xxh3_64_intdigest(view[pos + CHECKSUM_START: pos + header.size])
    if actual != header.checksum:
        raise CorruptBatchError(
            f"checksum mismatch in batch at base offset {header.base_offset}: "
            f"stored {header.checksum:#018x}, computed {actual:#018x}"
        )


def _check_semantics(header: BatchHeader) -> None:
    """Fields covered by the checksum: if they are wrong, the sender built a bad batch."""
    codec = header.codec  # raises InvalidBatchError when unknown
    if header.record_count < 1:
        raise InvalidBatchError(f"record_count {header.record_count} < 1")
    if header.last_offset_delta < header.record_count - 1:
        raise InvalidBatchError(
            f"last_offset_delta {header.last_offset_delta} < record_count - 1 "
            f"({header.record_count - 1})"
        )
    if header.max_timestamp < header.first_timestamp:
        raise InvalidBatchError(
            f"max_timestamp {header.max_timestamp} < first_timestamp {header.first_timestamp}"
        )
    if header.is_control:
        try:
            header.control_type  # noqa: B018 - evaluated to validate the control type bits
        except ValueError:
            raise InvalidBatchError(
                f"unknown control type {(header.attributes & _CONTROL_TYPE_MASK) >> 8}"
            ) from None
    if codec is Codec.LZ4 and header.batch_length - (HEADER_SIZE - LENGTH_PREFIX_SIZE) < 4:
        raise InvalidBatchError("lz4 records area too short to hold its size prefix")


def _decompress(area: memoryview, codec: Codec, limit: int) -> bytes | memoryview:
    if codec is Codec.NONE:
        return area
    (declared,) = _LZ4_SIZE.unpack_from(area, 0)
    if declared > limit:
        raise BatchTooLargeError(
            f"records declare {declared} decompressed bytes, limit {limit}"
        )
    try:
        return lz4.block.decompress(area)
    except lz4.block.LZ4BlockError as exc:
        raise InvalidBatchError(f"lz4 records do not decompress: {exc}") from None


def _decode_record_area(raw: bytes | memoryview, header: BatchHeader) -> list[Record]:
    records: list[Record] = []
    pos = 0
    end = len(raw)
    fixed = _RECORD_FIXED.size
    unpack_fixed = _RECORD_FIXED.unpack_from
    try:
        while pos < end:
            length, _attrs, offset_delta, ts_delta, key_length = unpack_fixed(raw, pos)
            record_end = pos + 4 + length
            if length < fixed - 4 or record_end > end:
                raise InvalidBatchError(f"record at {pos} declares {length} bytes past the end")
            pos += fixed
            key, pos = _take(raw, pos, key_length, record_end)
            (value_length,) = _INT32.unpack_from(raw, pos)
            value, pos = _take(raw, pos + 4, value_length, record_end)
            (header_count,) = _UINT16.unpack_from(raw, pos)
            pos += 2
            headers: list[tuple[str, bytes | None]] = []
            for _ in range(header_count):
                (name_length,) = _UINT16.unpack_from(raw, pos)
                name, pos = _take(raw, pos + 2, name_length, record_end)
                (hvalue_length,) = _INT32.unpack_from(raw, pos)
                hvalue, pos = _take(raw, pos + 4, hvalue_length, record_end)
                headers.append((bytes(name or b"").decode("utf-8"), hvalue))
            if pos != record_end:
                raise InvalidBatchError(f"record ends at {pos}, its length says {record_end}")
            if not 0 <= offset_delta <= header.last_offset_delta:
                raise InvalidBatchError(f"offset_delta {offset_delta} outside the batch")
            records.append(Record(
                offset=header.base_offset + offset_delta,
                timestamp=header.first_timestamp + ts_delta,
                key=key, value=value, headers=tuple(headers),
            ))
    except (struct.error, UnicodeDecodeError) as exc:
        raise InvalidBatchError(f"malformed record area: {exc}") from None
    if len(records) != header.record_count:
        raise InvalidBatchError(
            f"record_count says {header.record_count}, the batch holds {len(records)}"
        )
    return records


def _take(raw: bytes | memoryview, pos: int, length: int, limit: int) -> tuple[bytes | None, int]:
    if length == -1:
        return None, pos
    if length < -1 or pos + length > limit:
        raise InvalidBatchError(f"field of {length} bytes at {pos} runs past its record")
    return bytes(raw[pos: pos + length]), pos + length
