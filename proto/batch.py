"""Record batch codec, shared by the node (which only checks headers) and the client.

Byte layout of a batch, format v2, big-endian (full description and rationale:
docs/batch-format.md)::

    off len field              type   notes
    0   8   base_offset        int64  set by the leader on append
    8   4   batch_length       int32  bytes after this field (so total size = 12 + batch_length)
    12  8   term               int64  Raft term, set by the leader on append
    20  1   magic              int8   format version = 2 (same place in every version)
    21  2   attributes         int16  bits 0-2 codec (0 none, 1 lz4); bit 4 control batch;
                                      bits 8-11 control type
    23  4   last_offset_delta  int32  last offset - base offset (stays after compaction)
    27  4   record_count       int32  >= 1
    31  8   first_timestamp    int64  ms since epoch (timestamp of the first record)
    39  8   max_timestamp      int64  ms; NO_TIMESTAMP in Raft control batches
    47  8   producer_id        int64  -1 = not idempotent
    55  2   producer_epoch     int16  -1
    57  4   base_sequence      int32  -1
    61  8   records_checksum   uint64 xxh3_64 of the records area [77, end)
    69  8   header_checksum    uint64 xxh3_64 of bytes [0, 69): every header field above
    77  ..  records            lz4.block with store_size=True when codec lz4, else raw

Each record, uncompressed, fixed-width (cheaper to parse in Python than varints)::

    int32 length of the rest | int8 attributes | int32 offset_delta | int32 timestamp_delta
    int32 key_length (-1 = null) + key | int32 value_length (-1 = null: a tombstone) + value
    uint16 header_count, then per header: uint16 key_length + utf-8 key,
                                          int32 value_length (-1 = null) + value

Two checksums, so that every byte is covered and the leader still never rehashes records: the
producer computes `records_checksum` once (it travels unchanged to every replica and consumer),
and the leader's `stamp` sets base_offset and term and recomputes only `header_checksum`, a hash
of 69 bytes. Format v1 (magic 1) left base_offset and term outside its only checksum, yet Raft
trusts the term; a v1 batch is refused with `UnsupportedFormatError` (`upgrade_v1_batch` converts
one, for `tidelog storage migrate`). This module imports no grpc.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NewType, TypeVar

import lz4.block
import xxhash

__all__ = [
    "DECOMPRESSED_BYTES_MAX",
    "HEADER_SIZE",
    "LENGTH_PREFIX_SIZE",
    "MAGIC",
    "NO_TIMESTAMP",
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
    "UnsupportedFormatError",
    "assemble_batch",
    "decode_header",
    "decode_records",
    "decode_records_with",
    "decode_verified_header",
    "encode_batch",
    "encode_control_batch",
    "first_record_timestamp",
    "format_version",
    "iter_batches",
    "stamp",
    "upgrade_v1_batch",
    "validate_batch",
]

Offset = NewType("Offset", int)
"""A record's position in a partition log (Kafka's offset), counted in records from 0."""

MAGIC = 2
MAGIC_POSITION = 20  # where every format version keeps its magic byte
HEADER_SIZE = 77
LENGTH_PREFIX_SIZE = 12  # base_offset + batch_length: the bytes batch_length does not count
RECORDS_CHECKSUM_POSITION = 61
HEADER_CHECKSUM_POSITION = 69  # header_checksum covers [0, HEADER_CHECKSUM_POSITION)
DECOMPRESSED_BYTES_MAX = 64 * 1024 * 1024
"""Default bound on a batch's declared decompressed size: refuse it rather than allocate it."""
NO_TIMESTAMP = -(2**63)
"""first_timestamp and max_timestamp of a Raft control batch (NOOP, CONFIG): its bytes must be a
pure function of the Raft entry, so no replica may put its own clock in it. It is below every
real timestamp, so time indexes, time retention and offset-for-timestamp lookups pass over it."""

_COVERED = struct.Struct(">qiqbhiiqqqhiQ")  # [0, 69): what header_checksum covers
_HEADER = struct.Struct(">qiqbhiiqqqhiQQ")
_UINT64 = struct.Struct(">Q")
_RECORD_FIXED = struct.Struct(">ibiii")  # length, attributes, offset_delta, ts_delta, key_length
#: the same, then the value length, for a record with no key (one pack instead of two)
_RECORD_FIXED_NO_KEY = struct.Struct(">ibiiii")
#: a record's tail when it has no headers: the header count 0
_NO_HEADERS = b"\x00\x00"
_INT32 = struct.Struct(">i")
_UINT16 = struct.Struct(">H")
_LZ4_SIZE = struct.Struct("<I")  # lz4.block store_size prefix is little-endian
assert _HEADER.size == HEADER_SIZE and _COVERED.size == HEADER_CHECKSUM_POSITION

# Format v1 (magic 1), only to recognise and convert old logs: base_offset, batch_length, term,
# magic, checksum (xxh3_64 of [29, end)), then the same fields as v2 up to base_sequence.
_V1_MAGIC = 1
_V1_HEADER = struct.Struct(">qiqbQhiiqqqhi")
_V1_CHECKSUM_START = 29

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


class UnsupportedFormatError(InvalidBatchError):
    """An intact batch of another format version (v1: its term is outside the checksum).

    Not damage: storage refuses to open a log holding one (`tidelog storage migrate` converts
    it), and the broker refuses one from an old producer."""

    def __init__(self, message: str, *, format_version: int) -> None:
        super().__init__(message)
        self.format_version = format_version


class BatchTooLargeError(BatchError):
    """The batch (or its declared decompressed records) exceeds a configured limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    term: int
    magic: int
    attributes: int
    last_offset_delta: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_checksum: int
    header_checksum: int

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
    """Encode records into one batch; offsets are assigned 0..n-1 relative to base_offset.

    A producer leaves base_offset and term at 0: the leader stamps them (`stamp`)."""
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
        if key is None and value is not None and not headers:  # the common case, fast
            append(_RECORD_FIXED_NO_KEY.pack(19 + len(value), 0, offset_delta, timestamp_delta,
                                             -1, len(value)))
            append(value)
            append(_NO_HEADERS)
            continue
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
    return assemble_batch(
        base_offset=base_offset, term=term, attributes=attributes,
        last_offset_delta=count - 1, record_count=count, first_timestamp=first_timestamp,
        max_timestamp=max_timestamp, producer_id=producer_id, producer_epoch=producer_epoch,
        base_sequence=base_sequence, records=payload,
    )


def assemble_batch(
    *,
    base_offset: int,
    term: int,
    attributes: int,
    last_offset_delta: int,
    record_count: int,
    first_timestamp: int,
    max_timestamp: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    records: bytes | memoryview,
) -> bytes:
    """A batch from header fields and an already encoded (and compressed) records area: both
    checksums computed here. For encode_batch, compaction's rewrites and format migration."""
    covered = _COVERED.pack(
        base_offset, HEADER_SIZE - LENGTH_PREFIX_SIZE + len(records), term, MAGIC, attributes,
        last_offset_delta, record_count, first_timestamp, max_timestamp, producer_id,
        producer_epoch, base_sequence, xxhash.xxh3_64_intdigest(records),
    )
    return b"".join((covered, _UINT64.pack(xxhash.xxh3_64_intdigest(covered)), records))


def encode_control_batch(
    control_type: ControlType,
    body: bytes,
    *,
    timestamp_ms: int = NO_TIMESTAMP,
    base_offset: int = 0,
    term: int = 0,
) -> bytes:
    """A control batch of one record whose value is `body` (uncompressed: bodies are small).

    Raft control batches keep the default timestamp, NO_TIMESTAMP: every replica encodes the
    entry itself, and must produce the same bytes as every other (see raft_log.to_batch)."""
    if ControlType(control_type) is ControlType.NONE:
        raise InvalidBatchError("a control batch needs a control type other than NONE")
    return encode_batch(
        [(None, body, (), timestamp_ms)], codec=Codec.NONE, control_type=control_type,
        base_offset=base_offset, term=term,
    )


def decode_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the 77-byte header at `pos` without any validation beyond its presence.

    base_offset, batch_length, term and magic sit at the same places in every format version,
    so walking batches by their lengths works over any version; other fields need magic 2."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptBatchError(
            f"truncated batch header at position {pos}: {len(buf) - pos} of {HEADER_SIZE} bytes"
        )
    (base_offset, batch_length, term, magic, attributes, last_offset_delta, record_count,
     first_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence,
     records_checksum, header_checksum) = _HEADER.unpack_from(buf, pos)
    return BatchHeader(
        base_offset=base_offset, batch_length=batch_length, term=term, magic=magic,
        attributes=attributes, last_offset_delta=last_offset_delta,
        record_count=record_count, first_timestamp=first_timestamp,
        max_timestamp=max_timestamp, producer_id=producer_id, producer_epoch=producer_epoch,
        base_sequence=base_sequence, records_checksum=records_checksum,
        header_checksum=header_checksum,
    )


def decode_verified_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """The header at `pos`, its header checksum checked: every field, the term included, can be
    trusted without reading the records (which the records checksum covers separately). For
    walks over stored batches, e.g. Raft's term_at: about one 69-byte hash per header."""
    view = memoryview(buf)
    header = decode_header(view, pos)
    _check_header_checksum(view, header, pos)
    if header.magic != MAGIC:  # intact, yet another version: the sender's, not damage
        raise InvalidBatchError(f"unsupported magic {header.magic}, expected {MAGIC}")
    return header


def format_version(buf: bytes | bytearray | memoryview, pos: int = 0) -> int | None:
    """The magic byte of the batch at `pos` (every version keeps it at byte 20); None if the
    buffer ends before it."""
    if len(buf) - pos <= MAGIC_POSITION:
        return None
    return buf[pos + MAGIC_POSITION]


def validate_batch(buf: bytes | bytearray | memoryview, *, max_bytes: int) -> BatchHeader:
    """Check that `buf` is exactly one intact, well-formed batch of at most `max_bytes`.

    The header checksum is checked first, so a flipped bit anywhere in the header (the length,
    the term, the counts) reports as corruption rather than as a sender's mistake or a size;
    then the records checksum. Records are not decompressed.
    """
    view = memoryview(buf)
    header = decode_header(view)
    if header.magic != MAGIC:
        _refuse_other_format(view, 0, header)
    _check_header_checksum(view, header, 0)
    if header.size != len(view):
        if header.size > max_bytes:
            raise BatchTooLargeError(f"batch declares {header.size} bytes, limit {max_bytes}")
        raise CorruptBatchError(
            f"batch_length says {header.size} bytes but the buffer holds {len(view)}"
        )
    if header.size > max_bytes:
        raise BatchTooLargeError(f"batch of {header.size} bytes exceeds the limit {max_bytes}")
    _check_records_checksum(view, header, 0)
    _check_semantics(header)
    return header


def stamp(batch: bytes | bytearray | memoryview, *, base_offset: int, term: int) -> bytes:
    """The batch with base_offset and term set: only the 69-byte header is rehashed.

    The old header checksum is checked first, so stamping never launders a damaged header into
    a valid one; the records and their checksum are copied as they are (one copy). Returns the
    input itself when it already carries these values."""
    view = memoryview(batch)
    if len(view) < HEADER_SIZE:
        raise CorruptBatchError(f"batch of {len(view)} bytes is shorter than its header")
    fields = _COVERED.unpack_from(view, 0)
    (stored,) = _UINT64.unpack_from(view, HEADER_CHECKSUM_POSITION)
    if fields[3] != MAGIC or xxhash.xxh3_64_intdigest(view[:HEADER_CHECKSUM_POSITION]) != stored:
        header = decode_header(view)  # slow path: say exactly what is wrong
        if header.magic != MAGIC:
            _refuse_other_format(view, 0, header)
        _check_header_checksum(view, header, 0)
    if fields[0] == base_offset and fields[2] == term and isinstance(batch, bytes):
        return batch
    covered = _COVERED.pack(base_offset, fields[1], term, *fields[3:])
    return b"".join((covered, _UINT64.pack(xxhash.xxh3_64_intdigest(covered)),
                     view[HEADER_SIZE:]))


def iter_batches(
    buf: bytes | bytearray | memoryview, *, verify: bool = True
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (position, header) of each batch in a concatenation of whole batches.

    With `verify`, each batch's checksums and header are checked (CorruptBatchError otherwise);
    a truncated last batch raises CorruptBatchError either way.
    """
    view = memoryview(buf)
    pos = 0
    end = len(view)
    while pos < end:
        header = decode_header(view, pos)
        if verify:
            if header.magic != MAGIC:
                _refuse_other_format(view, pos, header)
            _check_header_checksum(view, header, pos)
        if header.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE or pos + header.size > end:
            raise CorruptBatchError(
                f"batch at position {pos} declares {header.size} bytes, {end - pos} remain"
            )
        if verify:
            _check_records_checksum(view, header, pos)
            _check_semantics(header)
        yield pos, header
        pos += header.size


def decode_records(
    batch: bytes | bytearray | memoryview, *, decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX
) -> list[Record]:
    """Decode one batch's records with absolute offsets. Validates both checksums first."""
    header, raw = _checked_record_area(batch, decompressed_bytes_max)
    return _decode_record_area(raw, header)


def _checked_record_area(batch: bytes | bytearray | memoryview, decompressed_bytes_max: int
                         ) -> tuple[BatchHeader, bytes | memoryview]:
    """One whole batch's header and decompressed record area, after every check: format,
    both checksums, length, header semantics, the decompressed size bound."""
    view = memoryview(batch)
    header = decode_header(view)
    if header.magic != MAGIC:
        _refuse_other_format(view, 0, header)
    _check_header_checksum(view, header, 0)
    if header.size != len(view):
        raise CorruptBatchError(f"batch_length says {header.size} bytes, buffer has {len(view)}")
    _check_records_checksum(view, header, 0)
    _check_semantics(header)
    return header, _decompress(view[HEADER_SIZE:], header.codec, decompressed_bytes_max)


_R = TypeVar("_R")
MakeRecord = Callable[[int, int, "bytes | None", "bytes | None",
                       "tuple[tuple[str, bytes | None], ...]"], _R]
"""make(offset, timestamp, key, value, headers) -> a caller's own record object."""


def decode_records_with(
    batch: bytes | bytearray | memoryview, make: MakeRecord[_R], *,
    decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX,
) -> tuple[BatchHeader, list[_R]]:
    """decode_records (same checks), each record built by `make` instead of as a Record: a
    caller with its own record type (the consumer's ConsumerRecord) builds one object per
    record, not two (a frozen dataclass costs about half the decode). Returns the header too."""
    header, raw = _checked_record_area(batch, decompressed_bytes_max)
    return header, _decode_record_area(raw, header, make)


def first_record_timestamp(data: bytes | bytearray | memoryview, offset: int
                           ) -> tuple[int | None, int]:
    """(timestamp of the first data record at or after `offset` in these whole batches, or
    None; the offset after the last batch looked at). Only the batch holding that record is
    decoded: its timestamp is the batch's first timestamp plus the record's delta, never the
    batch's first or max timestamp. Control batches and gaps are passed over. Group lag in
    seconds, on the node (node/groups/lag.py) and in the client (client/group_lag.py)."""
    view = memoryview(data)
    position = offset
    for pos, header in iter_batches(view):
        if header.last_offset < offset:
            continue
        if not header.is_control:
            for record in decode_records(view[pos:pos + header.size]):
                if record.offset >= offset:
                    return record.timestamp, record.offset
        position = max(position, header.last_offset + 1)
    return None, position


def upgrade_v1_batch(batch: bytes | bytearray | memoryview) -> bytes:
    """Convert one intact format-v1 batch to v2, keeping every field and the records as they are.

    The v1 checksum is verified first (CorruptBatchError otherwise). v1 never checksummed
    base_offset and term; the caller checks them as v1 recovery did (contiguous offsets,
    non-decreasing terms) before trusting them into a v2 header checksum."""
    view = memoryview(batch)
    if format_version(view) != _V1_MAGIC:
        raise InvalidBatchError(f"not a format v1 batch (magic {format_version(view)})")
    if len(view) < _V1_HEADER.size:
        raise CorruptBatchError(f"v1 batch of {len(view)} bytes is shorter than its header")
    (base_offset, batch_length, term, _magic, checksum, attributes, last_offset_delta,
     record_count, first_timestamp, max_timestamp, producer_id, producer_epoch,
     base_sequence) = _V1_HEADER.unpack_from(view, 0)
    if LENGTH_PREFIX_SIZE + batch_length != len(view):
        raise CorruptBatchError(
            f"v1 batch_length says {LENGTH_PREFIX_SIZE + batch_length} bytes, "
            f"buffer has {len(view)}")
    if xxhash.xxh3_64_intdigest(view[_V1_CHECKSUM_START:]) != checksum:
        raise CorruptBatchError(f"v1 checksum mismatch in batch at base offset {base_offset}")
    upgraded = assemble_batch(
        base_offset=base_offset, term=term, attributes=attributes,
        last_offset_delta=last_offset_delta, record_count=record_count,
        first_timestamp=first_timestamp, max_timestamp=max_timestamp, producer_id=producer_id,
        producer_epoch=producer_epoch, base_sequence=base_sequence,
        records=view[_V1_HEADER.size:],
    )
    validate_batch(upgraded, max_bytes=len(upgraded))  # check in pairs: fields were sane in v1
    return upgraded


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


def _refuse_other_format(view: memoryview, pos: int, header: BatchHeader) -> None:
    """magic is not 2: an intact v1 batch (UnsupportedFormatError), else damage or a sender's
    unknown version, told apart by whether the v2 header checksum holds."""
    if header.magic == _V1_MAGIC and _is_intact_v1(view, pos):
        raise UnsupportedFormatError(
            f"batch at base offset {header.base_offset} was written by batch format v1 (its "
            f"term is not checksummed); this version reads only format v{MAGIC}",
            format_version=_V1_MAGIC)
    _check_header_checksum(view, header, pos)
    raise InvalidBatchError(f"unsupported magic {header.magic}, expected {MAGIC}")


def _is_intact_v1(view: memoryview, pos: int) -> bool:
    (batch_length,) = _INT32.unpack_from(view, pos + 8)
    end = pos + LENGTH_PREFIX_SIZE + batch_length
    if batch_length < _V1_HEADER.size - LENGTH_PREFIX_SIZE or end > len(view):
        return False
    (checksum,) = _UINT64.unpack_from(view, pos + 21)
    return xxhash.xxh3_64_intdigest(view[pos + _V1_CHECKSUM_START: end]) == checksum


def _check_header_checksum(view: memoryview, header: BatchHeader, pos: int) -> None:
    actual = xxhash.xxh3_64_intdigest(view[pos: pos + HEADER_CHECKSUM_POSITION])
    if actual != header.header_checksum:
        raise CorruptBatchError(
            f"header checksum mismatch in batch at position {pos} (base offset "
            f"{header.base_offset}, unverified): stored {header.header_checksum:#018x}, "
            f"computed {actual:#018x}"
        )


def _check_records_checksum(view: memoryview, header: BatchHeader, pos: int) -> None:
    actual = xxhash.xxh3_64_intdigest(view[pos + HEADER_SIZE: pos + header.size])
    if actual != header.records_checksum:
        raise CorruptBatchError(
            f"records checksum mismatch in batch at base offset {header.base_offset}: "
            f"stored {header.records_checksum:#018x}, computed {actual:#018x}"
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


def _decode_record_area(raw: bytes | memoryview, header: BatchHeader,
                        make: MakeRecord[_R] | None = None) -> list[Record] | list[_R]:
    records: list = []
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
            headers: tuple[tuple[str, bytes | None], ...] = ()
            if header_count:
                pairs: list[tuple[str, bytes | None]] = []
                for _ in range(header_count):
                    (name_length,) = _UINT16.unpack_from(raw, pos)
                    name, pos = _take(raw, pos + 2, name_length, record_end)
                    (hvalue_length,) = _INT32.unpack_from(raw, pos)
                    hvalue, pos = _take(raw, pos + 4, hvalue_length, record_end)
                    pairs.append((bytes(name or b"").decode("utf-8"), hvalue))
                headers = tuple(pairs)
            if pos != record_end:
                raise InvalidBatchError(f"record ends at {pos}, its length says {record_end}")
            if not 0 <= offset_delta <= header.last_offset_delta:
                raise InvalidBatchError(f"offset_delta {offset_delta} outside the batch")
            if make is not None:
                records.append(make(header.base_offset + offset_delta,
                                    header.first_timestamp + ts_delta, key, value, headers))
                continue
            records.append(Record(
                offset=header.base_offset + offset_delta,
                timestamp=header.first_timestamp + ts_delta,
                key=key, value=value, headers=headers,
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
