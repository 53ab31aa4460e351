"""Log compaction: rewrite sealed segments keeping only the latest record of each key.

Theory of operation
-------------------
A log with ``cleanup.policy=compact`` is cleaned in two passes over its sealed segments that lie
wholly below ``upto_offset`` (the caller passes the high watermark: uncommitted records, which a
new leader may still replace, never decide what is dropped):

1. **Key map.** Read every record of those segments in order and remember, per key, the offset of
   its latest record. Keys are stored as their 128-bit xxh3 digest (16 bytes), and the map holds
   at most ``key_map_entries_max`` keys (plus one segment's worth): when it is full, only the
   segments read so far are cleaned this round (bounded memory).
2. **Rewrite.** For each of those segments, write ``<segment>.log.cleaned`` batch by batch:
   * a record survives if it is the latest of its key (records without a key always survive), and
     a tombstone (null value) survives only until its timestamp is ``delete_retention_ms`` old;
   * a batch whose records all survive is copied byte for byte; one that lost some is re-encoded
     with the survivors, which keep their ``offset_delta`` (so their offsets), and the header
     keeps base offset, ``last_offset_delta``, term, timestamps and producer fields; the
     checksum is recomputed;
   * a batch that lost every record becomes a one-record control batch of type COMPACTED with
     the same base offset, ``last_offset_delta`` and term. Offsets therefore stay contiguous,
     every Raft entry keeps its index and term (followers and leader clean independently and
     still agree on the log), and consumers skip it like any control batch. Reads over
     compacted gaps just return fewer records.
   The new file is fsynced and read back (every batch validated, contiguous offsets, same end)
   before `PartitionLog.replace_segment` swaps it in crash-safely (index files dropped first,
   then an atomic rename; `open()` deletes leftover ``.cleaned`` files and rebuilds missing
   indexes). A crash at any point leaves a readable log. Segments where nothing would change
   are left alone.

Encryption at rest: batches are read through `PartitionLog.from_stored` (decrypted and
authenticated) and every batch of a rewritten segment, copied or re-encoded, is written through
`PartitionLog.to_stored`, so a rewritten segment is wholly under the current key (old-key and
plaintext batches in it are sealed anew); segments left alone keep their bytes.

I/O is bounded: segments are read sequentially one batch at a time (a batch is at most
``batch_bytes_max``), written in 1 MiB chunks through the FileSystem seam, and
``io_bytes_per_s_max`` throttles the cleaner so it cannot starve appends of the disk.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lz4.block
import xxhash
from tidelog.node.storage.encryption import ENVELOPE_OVERHEAD_BYTES
from tidelog.node.storage.fs import SequentialReader, SequentialWriter, unlink_quietly
from tidelog.node.storage.log import CLEANED_SUFFIX, PartitionLog
from tidelog.proto.batch import (
    HEADER_SIZE,
    LENGTH_PREFIX_SIZE,
    BatchHeader,
    Codec,
    ControlType,
    Record,
    assemble_batch,
    decode_header,
    decode_records,
    validate_batch,
)

__all__ = ["CleanResult", "CompactionConfig", "compact"]

log = logging.getLogger(__name__)

_RECORD_FIXED = struct.Struct(">ibiii")  # length, attributes, offset_delta, ts_delta, key_length
_INT32 = struct.Struct(">i")
_UINT16 = struct.Struct(">H")
_CONTROL_BIT = 0x10
_COMPACTED_ATTRIBUTES = int(Codec.NONE) | _CONTROL_BIT | (int(ControlType.COMPACTED) << 8)
WRITE_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactionConfig:
    delete_retention_ms: int = 86_400_000
    key_map_entries_max: int = 250_000
    io_bytes_per_s_max: int | None = None  # None: unthrottled
    batch_bytes_max: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.delete_retention_ms < 0:
            raise ValueError("delete_retention_ms must be >= 0")
        if self.key_map_entries_max < 1:
            raise ValueError("key_map_entries_max must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanResult:
    segments_scanned: int = 0
    segments_rewritten: int = 0
    records_before: int = 0
    records_after: int = 0
    tombstones_dropped: int = 0
    tombstones_kept: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    cleaned_upto_offset: int = 0  # the map covered records below this offset


def compact(plog: PartitionLog, *, upto_offset: int, now_ms: int,
            config: CompactionConfig | None = None) -> CleanResult:
    """Clean the sealed segments of `plog` below `upto_offset` (see the module doc). Safe to run
    in a thread next to appends and reads; returns what it did."""
    cfg = config or CompactionConfig()
    segments = plog.sealed_segments(upto_offset)
    throttle = _Throttle(cfg.io_bytes_per_s_max)
    latest: dict[bytes, int] = {}
    covered: list[tuple[int, int, Path, int]] = []
    for seg in segments:
        if len(latest) >= cfg.key_map_entries_max:
            break
        for batch, header in _read_batches(plog, seg[2], seg[3], cfg.batch_bytes_max,
                                           throttle):
            if header.is_control:
                continue
            for record in decode_records(batch):
                if record.key is not None:
                    latest[_digest(record.key)] = record.offset
        covered.append(seg)
    totals = dict(records_before=0, records_after=0, tombstones_dropped=0, tombstones_kept=0,
                  bytes_before=0, bytes_after=0)
    rewritten = 0
    for base, end, path, size in covered:
        stats = _rewrite(plog, base, end, path, size, latest, now_ms, cfg, throttle)
        for name in totals:
            totals[name] += stats[name]
        rewritten += stats["rewritten"]
    result = CleanResult(segments_scanned=len(covered), segments_rewritten=rewritten,
                         cleaned_upto_offset=covered[-1][1] if covered else 0, **totals)
    if rewritten:
        log.info("compacted %s: %d of %d segments rewritten, records %d -> %d, bytes %d -> %d",
                 plog.directory.name, rewritten, len(covered), result.records_before,
                 result.records_after, result.bytes_before, result.bytes_after)
    return result


# ------------------------------------------------------------------------------------ helpers


def _digest(key: bytes) -> bytes:
    return xxhash.xxh3_128_digest(key)


def _rewrite(plog: PartitionLog, base: int, end: int, path: Path, size: int,
             latest: dict[bytes, int], now_ms: int, cfg: CompactionConfig,
             throttle: _Throttle) -> dict[str, int]:
    cleaned = path.with_name(path.name + CLEANED_SUFFIX)
    stats = dict(records_before=0, records_after=0, tombstones_dropped=0, tombstones_kept=0,
                 bytes_before=size, bytes_after=0, rewritten=0)
    changed = False
    expire_before_ms = now_ms - cfg.delete_retention_ms
    fs = plog.fs
    with SequentialWriter(fs, cleaned, buffer_bytes=WRITE_BUFFER_BYTES) as out:
        for batch, header in _read_batches(plog, path, size, cfg.batch_bytes_max, throttle):
            if header.is_control:
                out.write(plog.to_stored(batch))
                continue
            records = decode_records(batch)
            kept = []
            for r in records:
                if r.key is not None and latest.get(_digest(r.key), r.offset) != r.offset:
                    continue
                if r.value is None and r.key is not None:
                    if r.timestamp <= expire_before_ms:
                        stats["tombstones_dropped"] += 1
                        continue
                    stats["tombstones_kept"] += 1
                kept.append(r)
            stats["records_before"] += len(records)
            stats["records_after"] += len(kept)
            if len(kept) == len(records):
                out.write(plog.to_stored(batch))
                continue
            changed = True
            out.write(plog.to_stored(_reencode(header, kept) if kept else _stand_in(header)))
        out.sync()
    if not changed:
        unlink_quietly(fs, cleaned)
        stats["bytes_after"] = size
        return stats
    stats["bytes_after"] = _verify(plog, cleaned, base, end, cfg.batch_bytes_max)
    if plog.replace_segment(base, cleaned, expected_size=size):
        stats["rewritten"] = 1
    else:
        stats["bytes_after"] = size
    return stats


def _read_batches(plog: PartitionLog, path: Path, size: int, batch_bytes_max: int,
                  throttle: _Throttle) -> Iterator[tuple[bytes, BatchHeader]]:
    """Every batch of a sealed segment file, validated (checksums; an encrypted one
    authenticated and decrypted), one at a time, as logical (plaintext) batches."""
    stored_bytes_max = batch_bytes_max + ENVELOPE_OVERHEAD_BYTES
    with SequentialReader(plog.fs, path, buffer_bytes=WRITE_BUFFER_BYTES) as f:
        position = 0
        while position < size:
            prefix = f.read(LENGTH_PREFIX_SIZE)
            if len(prefix) < LENGTH_PREFIX_SIZE:
                raise ValueError(f"{path.name}: torn batch prefix at {position}")
            length = _INT32.unpack_from(prefix, 8)[0]
            if not HEADER_SIZE - LENGTH_PREFIX_SIZE <= length <= stored_bytes_max:
                raise ValueError(f"{path.name}: batch at {position} declares {length} bytes")
            stored = prefix + f.read(length)
            validate_batch(stored, max_bytes=len(stored))
            batch = bytes(plog.from_stored(stored))
            header = decode_header(batch)
            throttle.spent(len(stored))
            yield batch, header
            position += len(stored)


def _verify(plog: PartitionLog, cleaned: Path, base: int, end: int, batch_bytes_max: int) -> int:
    """Check in pairs: read the rewrite back (decrypting it) before it replaces anything."""
    size = plog.fs.stat_size(cleaned)
    expected = base
    for _, header in _read_batches(plog, cleaned, size, batch_bytes_max, _Throttle(None)):
        assert header.base_offset == expected, (cleaned, header.base_offset, expected)
        expected = header.last_offset + 1
    assert expected == end, (cleaned, expected, end)
    return size


def _reencode(header: BatchHeader, kept: list[Record]) -> bytes:
    parts = []
    for r in kept:
        tail = _record_tail(r.value, r.headers)
        key_length = -1 if r.key is None else len(r.key)
        length = 1 + 4 + 4 + 4 + max(key_length, 0) + len(tail)
        parts.append(_RECORD_FIXED.pack(length, 0, r.offset - header.base_offset,
                                        r.timestamp - header.first_timestamp, key_length))
        if r.key:
            parts.append(r.key)
        parts.append(tail)
    raw = b"".join(parts)
    payload = lz4.block.compress(raw, store_size=True) if header.codec is Codec.LZ4 else raw
    return _assemble(header, header.attributes, len(kept), header.first_timestamp,
                     header.max_timestamp, (header.producer_id, header.producer_epoch,
                                            header.base_sequence), payload)


def _stand_in(header: BatchHeader) -> bytes:
    """A COMPACTED control batch covering the same offsets (one empty record at delta 0)."""
    raw = _RECORD_FIXED.pack(1 + 4 + 4 + 4 + 4 + 2, 0, 0, 0, -1) + _INT32.pack(-1) + \
        _UINT16.pack(0)
    return _assemble(header, _COMPACTED_ATTRIBUTES, 1, header.max_timestamp,
                     header.max_timestamp, (-1, -1, -1), raw)


def _assemble(header: BatchHeader, attributes: int, count: int, first_ts: int, max_ts: int,
              producer: tuple[int, int, int], payload: bytes) -> bytes:
    producer_id, producer_epoch, base_sequence = producer
    batch = assemble_batch(
        base_offset=header.base_offset, term=header.term, attributes=attributes,
        last_offset_delta=header.last_offset_delta, record_count=count, first_timestamp=first_ts,
        max_timestamp=max_ts, producer_id=producer_id, producer_epoch=producer_epoch,
        base_sequence=base_sequence, records=payload)
    assert decode_header(batch).last_offset == header.last_offset
    return batch


def _record_tail(value: bytes | None, headers: tuple[tuple[str, bytes | None], ...]) -> bytes:
    parts = [b"\xff\xff\xff\xff" if value is None else _INT32.pack(len(value)) + value,
             _UINT16.pack(len(headers))]
    for name, hvalue in headers:
        encoded = name.encode("utf-8")
        parts.append(_UINT16.pack(len(encoded)) + encoded)
        parts.append(b"\xff\xff\xff\xff" if hvalue is None else _INT32.pack(len(hvalue)) + hvalue)
    return b"".join(parts)


class _Throttle:
    """Sleeps so that at most bytes_per_s_max bytes are read per second (None: never)."""

    def __init__(self, bytes_per_s_max: int | None) -> None:
        self._rate = bytes_per_s_max
        self._start = time.monotonic()
        self._bytes = 0

    def spent(self, count: int) -> None:
        if self._rate is None:
            return
        self._bytes += count
        ahead_s = self._bytes / self._rate - (time.monotonic() - self._start)
        if ahead_s > 0:
            time.sleep(ahead_s)
