"""PartitionLog: a partition's log as a directory of segments.

Theory of operation (the long version is docs/storage.md).

* Files. `<20-digit base offset>.log` segments, their `.index`/`.timeindex` once sealed, and
  `log.meta` (checksummed, atomically replaced): log start offset, recovery point, and a
  reset-pending flag. The last segment is the active one; all others are sealed and immutable.
* Offsets are contiguous: every batch's base offset is the previous batch's last offset + 1, and
  each segment's end offset is the next segment's base offset.
* Recovery point: an offset below which everything was fsynced and verified. It is moved forward
  when a segment is sealed (roll), at close, and by sync() at most once a second
  (RECOVERY_POINT_INTERVAL_MS); it is moved back before truncate_after cuts below it.
  On open the active segment is scanned and verified from its start: a bad batch at or after the
  recovery point is a torn/unsynced tail and is cut off (logged, reported); a bad batch below it
  is corruption of acknowledged data: open raises CorruptLogError and changes nothing.
* Durability. append() writes to the page cache (visible to readers at once). sync() fdatasyncs
  the active segment, group-committed, and publishes `durable_end_offset`; callers ack only
  below it. Sealing, segment creation and deletion fsync the directory themselves.
* Thread-safety. One `threading.RLock` guards all state; every public method takes it. sync()
  holds it only to snapshot and to publish, never across the fsync, so appends (from the asyncio
  thread) continue while executor threads wait for the disk. The fsync uses a dup()ed descriptor
  so that a concurrent roll closing the writer cannot pull it away.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tidelog.node.metrics.storage import FSYNC_BATCHES
from tidelog.node.storage import metafile
from tidelog.node.storage.config import LogConfig
from tidelog.node.storage.damage import QUARANTINE_DIR, DamagePolicy, quarantine_copy
from tidelog.node.storage.dirs import ensure_directory
from tidelog.node.storage.durability import DirtyTracker, GroupCommitter
from tidelog.node.storage.encryption import ENCRYPTED_ATTRIBUTE, is_encrypted, stored_key_id
from tidelog.node.storage.errors import (
    CorruptFileError,
    CorruptLogError,
    DiskFullError,
    EncryptionKeyError,
    InvalidBatchError,
    LogClosedError,
    LogFormatError,
    NotOnBatchBoundaryError,
    OffsetOutOfOrderError,
    OffsetOutOfRangeError,
    StorageError,
    StorageIOError,
    TermOutOfOrderError,
)
from tidelog.node.storage.fs import OS_FS, FileSystem, unlink_quietly
from tidelog.node.storage.index import NO_TIMESTAMP, SegmentIndex
from tidelog.node.storage.retention import SegmentStat, segments_to_delete
from tidelog.node.storage.segment import LOG_SUFFIX, Segment
from tidelog.proto.batch import (
    LENGTH_PREFIX_SIZE,
    MAGIC,
    BatchError,
    BatchHeader,
    UnsupportedFormatError,
    decode_header,
    format_version,
    stamp,
    validate_batch,
)

__all__ = ["AppendInfo", "PartitionLog", "RecoveryReport"]

log = logging.getLogger(__name__)

META_FILE = "log.meta"
_META = struct.Struct(">qqB")  # log_start_offset, recovery_point, reset_pending
LOADED_INDEXES_MAX = 4  # sealed segments whose index stays in memory (LRU), per log
HEADERS_PER_ITER_CHUNK_MAX = 4096
RECOVERY_POINT_INTERVAL_MS = 1000
OLD_FORMAT_BATCH_BYTES_MAX = 256 * 1024 * 1024  # a first batch declaring more is not checked
CLEANED_SUFFIX = ".cleaned"  # a compacted rewrite of a sealed segment, before its swap
"""How often sync() also moves the recovery point to what it just made durable. Damage to data
older than this is reported as corruption on open; damage after it is treated as a torn tail."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendInfo:
    base_offset: int
    last_offset: int
    term: int
    max_timestamp_ms: int
    size_bytes: int
    log_end_offset: int  # after this append


@dataclass(frozen=True, slots=True, kw_only=True)
class TruncatedTail:
    """A torn or unsynced tail cut at open (at or above the recovery point: never acked)."""

    segment: str
    position: int
    bytes_removed: int
    reason: str
    from_offset: int  # the first offset cut: the log now ends here


@dataclass(frozen=True, slots=True, kw_only=True)
class CorruptRegion:
    segment: str
    position: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuiltIndex:
    segment: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryReport:
    """What open() found and did. Empty tuples and None mean a clean open."""

    truncated: tuple[TruncatedTail, ...] = ()
    rebuilt_indexes: tuple[RebuiltIndex, ...] = ()
    corrupt: tuple[CorruptRegion, ...] = ()  # sealed segments: reads of these regions raise
    deleted_segments: tuple[str, ...] = ()  # below the log start (an interrupted deletion)
    meta_problem: str | None = None
    completed_reset: bool = False
    # The surviving log ended below its (durable) log start: only offsets below the start were
    # lost, and the log restarted empty there.
    emptied_below_start: bool = False
    # DamagePolicy.QUARANTINE: damage (or missing data) below the recovery point made open()
    # cut the log from this offset on; data there was fsynced and may have been acknowledged.
    cut_from_offset: int | None = None
    quarantined: tuple[str, ...] = ()  # copies of damaged segments, relative to the log dir

    @property
    def clean(self) -> bool:
        return self == RecoveryReport()

    @property
    def tail_cut_from_offset(self) -> int | None:
        """First offset of a torn/unsynced tail cut at open (never fsynced), or None."""
        return min((t.from_offset for t in self.truncated), default=None)

    @property
    def lost_from_offset(self) -> int | None:
        """The first offset this open removed from the log for any reason, or None: a replica
        that had acknowledged entries at or above it no longer holds them."""
        cuts = [c for c in (self.cut_from_offset, self.tail_cut_from_offset) if c is not None]
        return min(cuts, default=None)


@dataclass(slots=True)
class _Meta:
    log_start_offset: int
    recovery_point: int
    reset_pending: bool = False


@dataclass(slots=True)
class _RecoveryNotes:
    truncated: list[TruncatedTail] = field(default_factory=list)
    rebuilt: list[RebuiltIndex] = field(default_factory=list)
    corrupt: list[CorruptRegion] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    meta_problem: str | None = None
    completed_reset: bool = False
    emptied_below_start: bool = False
    cut_from_offset: int | None = None
    quarantined: list[str] = field(default_factory=list)
    cuts: int = 0  # damage cuts made by this open (bounded)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Damage:
    """The first damaged (or missing) batch below the recovery point, found by recovery."""

    segment: Segment
    position: int  # the verified prefix of the segment ends here
    offset: int  # the offset that should start at `position`
    reason: str
    damaged_bytes: bool  # False: bytes are missing (the file ends early), nothing to keep


DAMAGE_CUTS_PER_OPEN_MAX = 4


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class PartitionLog:
    """One partition's segmented log. Create with `PartitionLog.open`."""

    def __init__(self, directory: Path, config: LogConfig, now_ms: Callable[[], int],
                 fs: FileSystem = OS_FS) -> None:
        self.directory = directory
        self.config = config
        self.fs = fs  # every file operation goes through it (the simulator passes its twin)
        self._now_ms = now_ms
        self._lock = threading.RLock()
        self._committer = GroupCommitter()
        self._dirty = DirtyTracker(config.fsync)
        # Invariant: segments sorted by base offset, contiguous, non-empty; the last is active.
        self._segments: list[Segment] = []
        self._loaded_indexes: OrderedDict[int, SegmentIndex] = OrderedDict()
        self._log_start_offset = 0
        self._recovery_point = 0
        # Invariant: log_start <= durable_end <= log_end (or durable_end == log_end when empty).
        self._durable_end_offset = 0
        self._recovery_point_written_ms = 0
        self._generation = 0  # bumped by every truncation; a sync racing it publishes nothing
        self._closed = False
        self._on_damage = DamagePolicy.REFUSE
        self._verify_sealed = False
        self.recovery = RecoveryReport()

    # ===================================================================== opening and closing

    @classmethod
    def open(cls, directory: Path, config: LogConfig, *,
             now_ms: Callable[[], int] | None = None,
             fs: FileSystem = OS_FS, on_damage: DamagePolicy = DamagePolicy.REFUSE,
             verify_sealed: bool = False) -> PartitionLog:
        """Open (creating if needed, durably: see ensure_directory) and recover the log in
        `directory`, doing all file I/O through `fs`.

        Damage below the recovery point (see damage.py): with `on_damage=REFUSE` open raises
        CorruptLogError when it is in the active segment and leaves the files as they were;
        with `QUARANTINE` it cuts the log before the first damaged batch, keeps a copy of the
        damaged segment in `quarantine/`, and says so in `recovery`. Sealed segments are only
        scanned when their index is unusable, unless `verify_sealed` (every checksum read:
        for a replica that met a CorruptLogError while running).
        """
        directory = Path(directory)
        ensure_directory(directory, fs=fs)
        plog = cls(directory, config, now_ms or _wall_clock_ms, fs)
        plog._on_damage = on_damage
        plog._verify_sealed = verify_sealed
        plog._recover()
        return plog

    def close(self) -> None:
        """Fsync, seal the active segment's index to disk, record the recovery point."""
        with self._lock:
            if self._closed:
                return
            active = self._active
            try:
                active.sync()
            except OSError as exc:
                self._fence_after_failed_fsync(active, exc)
                raise StorageIOError(f"fsync of {active.path} failed at close: {exc}") from exc
            try:
                self._write_meta(recovery_point=self.log_end_offset)
            finally:
                for segment in self._segments:
                    segment.close()
                self._closed = True

    def __enter__(self) -> PartitionLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # =============================================================================== offsets

    @property
    def log_start_offset(self) -> int:
        with self._lock:
            return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        """The next offset to assign."""
        with self._lock:
            return self._segments[-1].end_offset

    @property
    def durable_end_offset(self) -> int:
        """Every offset below this is fsynced: never acknowledge beyond it."""
        with self._lock:
            return self._durable_end_offset

    @property
    def last_term(self) -> int:
        """Term of the last batch, or 0 if the log holds no batch."""
        with self._lock:
            for segment in reversed(self._segments):
                if segment.last_term >= 0:
                    return segment.last_term
            return 0

    @property
    def sync_count(self) -> int:
        """How many group-commit fsyncs sync() has run (a metric: appends / this = group size)."""
        return self._committer.flushes

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(segment.size_bytes for segment in self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        with self._lock:
            return [segment.base_offset for segment in self._segments]

    # ================================================================================ appends

    def append(self, batch: bytes, *, term: int | None = None,
               base_offset: int | None = None) -> AppendInfo:
        """Validate, stamp and write one batch to the page cache; readable at once.

        base_offset None: the leader's case, the log end is assigned. Otherwise (a follower
        appending stamped batches) it must equal the log end. term None keeps the batch's own.
        Bad input raises before anything is written; a failed write is cut back.
        """
        header = _validate_plaintext(batch, self.config.batch_bytes_max)
        with self._lock:
            self._check_open()
            return self._append_validated(batch, header, term=term, base_offset=base_offset)

    def append_many(self, batches: Sequence[bytes], *, term: int | None = None) -> list[AppendInfo]:
        """Append batches in order. All are validated first, so one bad batch writes nothing;
        a disk error midway leaves the earlier batches appended (and raises)."""
        headers = [_validate_plaintext(b, self.config.batch_bytes_max) for b in batches]
        with self._lock:
            self._check_open()
            return [self._append_validated(b, h, term=term, base_offset=None)
                    for b, h in zip(batches, headers, strict=True)]

    def _append_validated(self, batch: bytes, header: BatchHeader, *, term: int | None,
                          base_offset: int | None) -> AppendInfo:
        end = self.log_end_offset
        if base_offset is not None and base_offset != end:
            raise OffsetOutOfOrderError(base_offset, log_end_offset=end)
        new_term = header.term if term is None else term
        last_term = self._last_term_locked()
        if new_term < last_term:
            raise TermOutOfOrderError(new_term, last_term=last_term)
        if header.base_offset != end or header.term != new_term:
            batch = stamp(batch, base_offset=end, term=new_term)
            header = _restamped(batch)
        cipher = self.config.encryption
        if cipher is not None:  # stamped first: base offset and term are authenticated data
            batch = cipher.seal(batch)
            header = decode_header(batch)
        self._maybe_roll(header)
        active = self._active
        active.append(batch, header)
        if active.rolling_since_ms is None:
            active.rolling_since_ms = self._now_ms()
        self._dirty.on_append(header.size)
        return AppendInfo(base_offset=end, last_offset=header.last_offset, term=new_term,
                          max_timestamp_ms=header.max_timestamp, size_bytes=header.size,
                          log_end_offset=header.last_offset + 1)

    def _maybe_roll(self, header: BatchHeader) -> None:
        active = self._active
        if active.size_bytes == 0:
            return
        too_big = active.size_bytes + header.size > self.config.segment_bytes_max
        since = active.rolling_since_ms
        too_old = since is not None and self._now_ms() - since >= self.config.segment_ms_max
        # Index entries store offsets relative to the base as uint32.
        too_many_offsets = header.last_offset - active.base_offset > 0xFFFF_FFFF
        if too_big or too_old or too_many_offsets:
            self._roll()

    def _roll(self) -> None:
        """Seal the active segment (fsync, index files) and start a new one at the log end.

        A failed fsync fences the log (see _fence_after_failed_fsync), and so does a failed
        directory fsync (the new segment's name might never become durable). ENOSPC while
        creating the new segment or writing log.meta raises DiskFullError; the log is then
        consistent (sealed, perhaps with a new empty segment) and the append can be retried.
        """
        old = self._active
        try:
            old.sync()
        except OSError as exc:
            self._fence_after_failed_fsync(old, exc)
            raise StorageIOError(f"fsync of {old.path} failed while rolling: {exc}") from exc
        try:
            old.write_index_files()
        except OSError as exc:  # optional: the next open rebuilds them by a scan
            log.warning("index files of %s not written (%s); rebuilt on the next open",
                        old.path.name, exc)
            with contextlib.suppress(OSError):
                old.drop_index_files()
        old.close()
        try:
            new = self._create_segment(old.end_offset)
        except OSError as exc:
            raise _write_error(exc, f"creating a segment in {self.directory}") from exc
        self._segments.append(new)
        try:
            self._fsync_directory()
        except OSError as exc:
            self._fence(f"directory fsync failed at roll: {exc}")
            raise StorageIOError(f"directory fsync of {self.directory} failed: {exc}") from exc
        # A segment sealed wholly below the log start (truncate_prefix into the active
        # segment, then a roll) holds nothing of the log: delete it now, not at the next open.
        # Before log.meta is rewritten, so that a full disk failing that write cannot leave it
        # behind (the start it lies below is durable already: truncate_prefix wrote it).
        dead = sum(1 for s in self._segments[:-1] if s.end_offset <= self._log_start_offset)
        if dead:
            try:
                self._unlink_prefix(dead)
            except OSError as exc:  # best effort: open() deletes them too
                log.warning("could not delete segments below the log start of %s: %s",
                            self.directory.name, exc)
        try:
            # The sealed segment is fsynced: everything below the new base is durable.
            self._write_meta(recovery_point=new.base_offset)
        except OSError as exc:
            raise _write_error(exc, f"writing {META_FILE} in {self.directory}") from exc
        if self._durable_end_offset < new.base_offset:
            self._durable_end_offset = new.base_offset
        log.info("rolled %s: sealed %s (%d bytes), new segment at offset %d",
                 self.directory.name, old.path.name, old.size_bytes, new.base_offset)

    # ============================================================================= durability

    def sync(self) -> int:
        """Fsync everything appended so far; return the durable end offset. Thread-safe.

        Concurrent callers share one fsync (group commit, see durability.py). If the fsync
        fails the log fences itself (LogClosedError afterwards): after a failed fsync the kernel
        may have dropped the dirty pages, so retrying could report data durable that is not.
        """
        with self._lock:
            self._check_open()
            target = self.log_end_offset

        def is_done() -> bool:
            with self._lock:
                return self._closed or self._durable_end_offset >= target

        self._committer.run(is_done=is_done, flush=self._flush)
        with self._lock:
            self._check_open()
            return self._durable_end_offset

    def _flush(self) -> None:
        with self._lock:
            self._check_open()
            end = self.log_end_offset
            generation = self._generation
            unsynced = self._dirty.unsynced_bytes
            unsynced_batches = self._dirty.unsynced_batches
            segment = self._active
            size = segment.size_bytes
            fd = segment.dup_writer()
        if fd is not None:
            try:
                self.fs.fdatasync(fd)
            except OSError as exc:
                with self._lock:
                    self._fence_after_failed_fsync(segment, exc)
                raise StorageIOError(f"fsync of {self.directory} failed: {exc}") from exc
            finally:
                self.fs.close(fd)
            if unsynced_batches:
                FSYNC_BATCHES.observe(unsynced_batches)
        with self._lock:
            if generation == self._generation and segment.durable_size_bytes < size:
                segment.durable_size_bytes = size
            now_ms = self._now_ms()
            if generation == self._generation and end > self._durable_end_offset:
                self._durable_end_offset = end
            self._dirty.on_sync(synced_bytes=unsynced, now_ms=now_ms,
                                synced_batches=unsynced_batches)
            if generation == self._generation and end > self._recovery_point and \
                    now_ms - self._recovery_point_written_ms >= RECOVERY_POINT_INTERVAL_MS:
                # Under the lock so a concurrent truncate_after cannot interleave; costs one
                # metadata write (two fsyncs) at most once per interval.
                self._write_meta(recovery_point=end)
                self._recovery_point_written_ms = now_ms

    def needs_sync(self, now_ms: int) -> bool:
        """True when the fsync policy says sync() is due (always: whenever anything is dirty)."""
        with self._lock:
            return self._durable_end_offset < self.log_end_offset and \
                self._dirty.needs_sync(now_ms)

    # ================================================================================== reads

    def read(self, from_offset: int, max_bytes: int) -> bytes:
        """Whole batches starting with the one containing from_offset, from one segment.

        At least one batch if any exists at from_offset (even if larger than max_bytes); b"" at
        the log end. Every served batch's checksum is verified; a damaged first batch raises
        CorruptLogError (segment and position), a damaged later one ends the answer early.
        """
        with self._lock:
            self._check_open()
            self._check_readable(from_offset)
            if from_offset == self.log_end_offset:
                return b""
            segment = self._segment_for(from_offset)
            position, header = self._locate(segment, from_offset)
            want = min(max(max_bytes, header.size), segment.size_bytes - position)
            data = segment.pread(position, want)
            return self._verified_prefix(segment, position, data, header.base_offset)

    def iter_headers(self, from_offset: int) -> Iterator[BatchHeader]:
        """Headers of the batches from the one containing from_offset to the log end (as of
        the call), header checksums verified, records neither read nor decompressed: for Raft
        to rebuild its state. These are the stored headers: with encryption at rest their
        batch_length is the stored size, attribute bit 5 is set and records_checksum covers
        the envelope; offsets, term, counts, timestamps and producer fields are the batch's."""
        with self._lock:
            self._check_open()
            self._check_readable(from_offset)
            stop = self.log_end_offset
            bases = [s.base_offset for s in self._segments if s.end_offset > from_offset]
        offset = from_offset
        for base in bases:
            while offset < stop:
                with self._lock:
                    self._check_open()
                    chunk = self._headers_chunk(base, offset, stop)
                if not chunk:
                    break
                yield from chunk
                offset = chunk[-1].last_offset + 1

    def batch_header_at(self, offset: int) -> BatchHeader | None:
        """Header of the batch containing `offset`, or None outside [log start, log end); the
        stored header (see iter_headers)."""
        with self._lock:
            self._check_open()
            if not self._log_start_offset <= offset < self.log_end_offset:
                return None
            segment = self._segment_for(offset)
            return self._locate(segment, offset)[1]

    def term_at(self, offset: int) -> int | None:
        header = self.batch_header_at(offset)
        return None if header is None else header.term

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max_timestamp >= timestamp_ms (not below the
        log start), or None if there is none."""
        with self._lock:
            self._check_open()
            for segment in self._segments:
                if segment.end_offset <= self._log_start_offset or \
                        segment.max_timestamp_ms < timestamp_ms:
                    continue
                index = self._index_of(segment)
                _, position = index.floor_time(timestamp_ms)
                try:
                    for _, header in segment.iter_headers(position):
                        if header.max_timestamp >= timestamp_ms and \
                                header.last_offset >= self._log_start_offset:
                            return max(header.base_offset, self._log_start_offset)
                except BatchError as exc:  # a header failed its checksum
                    raise CorruptLogError(f"cannot walk batch headers by time: {exc}",
                                          segment=segment.path, position=position) from exc
            return None

    # ==================================================================== encryption at rest

    def to_stored(self, batch: bytes) -> bytes | bytearray:
        """The bytes this log stores for a validated, stamped plaintext batch: sealed under the
        current key with encryption on (encryption.py), else the batch itself. Compaction's
        rewrites use it, so a rewritten segment is wholly under the current key."""
        cipher = self.config.encryption
        return batch if cipher is None else cipher.seal(batch)

    def from_stored(self, stored: bytes | memoryview) -> bytes | bytearray | memoryview:
        """The logical batch of a stored batch whose checksums were verified: an encrypted one
        unsealed (BatchAuthenticationError, EncryptionKeyError), a plaintext one as it is."""
        if not is_encrypted(stored):
            return stored
        cipher = self.config.encryption
        if cipher is None:
            raise EncryptionKeyError(
                stored_key_id(stored), base_offset=int.from_bytes(stored[:8], "big", signed=True),
                reason="but this node runs without an at-rest keyring (--encryption-keyring)")
        return cipher.unseal(stored)

    def _authenticate(self, stored: memoryview) -> None:
        """For verifying scans: a stored batch whose GCM tag fails is damage (a BatchError);
        one whose key is missing raises EncryptionKeyError, which no scan takes for damage."""
        self.from_stored(stored)

    # ============================================================================= compaction

    def sealed_segments(self, below_offset: int) -> list[tuple[int, int, Path, int]]:
        """(base offset, end offset, path, size) of the sealed segments wholly below
        below_offset: what the cleaner (compaction.py) may rewrite. Sealed files are immutable,
        so it reads them without the lock."""
        with self._lock:
            self._check_open()
            return [(s.base_offset, s.end_offset, s.path, s.size_bytes)
                    for s in self._segments[:-1] if s.end_offset <= below_offset
                    and s.end_offset > self._log_start_offset]

    def replace_segment(self, base_offset: int, cleaned: Path, *, expected_size: int) -> bool:
        """Swap a sealed segment's file for `cleaned`, a verified rewrite holding the same
        offsets (compaction). Crash-safe: the index files go first (fsynced), then an atomic
        rename; a crash leaves the old or the new file, and open() rebuilds a missing index.
        Returns False (and deletes `cleaned`) if the segment changed or went away meanwhile."""
        with self._lock:
            self._check_open()
            segment = next((s for s in self._segments[:-1] if s.base_offset == base_offset),
                           None)
            if segment is None or segment.size_bytes != expected_size:
                unlink_quietly(self.fs, cleaned)
                return False
            end = segment.end_offset
            segment.drop_index_files()
            self._fsync_directory()
            self.fs.replace(cleaned, segment.path)
            self._fsync_directory()
            self._loaded_indexes.pop(base_offset, None)
            segment.reset_memory_state(interval_bytes=self.config.index_interval_bytes)
            result = segment.scan(authenticate=self._authenticate)
            assert result.stopped_at is None and result.end_offset == end, \
                f"cleaned segment {segment.path.name} does not verify: {result}"
            segment.write_index_files()
            segment.index = None
            return True

    # ============================================================================= truncation

    def truncate_after(self, offset: int) -> None:
        """Keep the batches whose last offset <= offset (Raft cutting a divergent suffix).

        `offset` must be the last offset of a batch, or log_start - 1 (keep nothing).
        """
        with self._lock:
            self._check_open()
            end = self.log_end_offset
            if offset >= end - 1:
                if offset == end - 1:
                    return
                raise OffsetOutOfRangeError(offset, log_start_offset=self._log_start_offset,
                                            log_end_offset=end)
            if offset < self._log_start_offset - 1:
                raise OffsetOutOfRangeError(offset, log_start_offset=self._log_start_offset,
                                            log_end_offset=end)
            if offset == self._log_start_offset - 1:
                # Nothing visible is kept; the log start may sit inside a batch, so cutting at a
                # batch boundary could leave the end below the start. An empty log at the start
                # offset is exactly the result asked for.
                self.reset(self._log_start_offset)
                return
            new_end = offset + 1
            segment = self._segment_for(offset)
            position, header = self._locate(segment, offset)
            if header.last_offset != offset:
                raise NotOnBatchBoundaryError(offset, batch_base_offset=header.base_offset,
                                              batch_last_offset=header.last_offset)
            self._generation += 1
            if new_end < self._recovery_point:
                # Lower the recovery point first, or a crash after the cut would make the new,
                # unsynced tail look like damaged acknowledged data on the next open.
                self._write_meta(recovery_point=new_end)
            self._cut_from(segment, position + header.size)
            self._durable_end_offset = min(self._durable_end_offset, new_end)
            log.info("truncated %s after offset %d (log end was %d)", self.directory.name,
                     offset, end)

    def _cut_from(self, segment: Segment, position: int) -> None:
        """Delete all segments after `segment`, cut it at `position`; it becomes active."""
        if segment is not self._active:
            segment.durable_size_bytes = segment.size_bytes  # sealed means fsynced whole
        later = [s for s in self._segments if s.base_offset > segment.base_offset]
        for victim in reversed(later):
            victim.delete()
            self._loaded_indexes.pop(victim.base_offset, None)
        self._segments = [s for s in self._segments if s.base_offset <= segment.base_offset]
        self._loaded_indexes.pop(segment.base_offset, None)
        segment.drop_index_files()
        # The deletions must be durable before the cut: otherwise a crash could bring back
        # later segments (or a stale index) next to a shortened segment.
        self._fsync_directory()
        if segment.index is None:
            segment.index = SegmentIndex(base_offset=segment.base_offset,
                                         interval_bytes=self.config.index_interval_bytes)
        segment.open_writer()
        segment.truncate(position)

    def truncate_prefix(self, new_start_offset: int) -> list[int]:
        """Advance the log start to new_start_offset (persisted) and delete the sealed segments
        that lie wholly below it. Returns their base offsets."""
        with self._lock:
            self._check_open()
            end = self.log_end_offset
            if new_start_offset > end:
                raise OffsetOutOfRangeError(new_start_offset,
                                            log_start_offset=self._log_start_offset,
                                            log_end_offset=end)
            if new_start_offset <= self._log_start_offset:
                return []
            count = sum(1 for s in self._segments[:-1] if s.end_offset <= new_start_offset)
            return self._delete_prefix(count, new_start_offset)

    def retention_start(self, now_ms: int, *, retention_ms: int | None,
                        retention_bytes: int | None) -> int:
        """The log start retention would leave (the base offset of the first segment it keeps;
        the current log start when it deletes nothing). Deletes nothing: a Raft replica cuts
        through Replica.truncate_prefix, which records the cut in raft.state first."""
        with self._lock:
            self._check_open()
            count = self._retention_count(now_ms, retention_ms, retention_bytes)
            if count == 0:
                return self._log_start_offset
            return max(self._segments[count].base_offset, self._log_start_offset)

    def _retention_count(self, now_ms: int, retention_ms: int | None,
                         retention_bytes: int | None) -> int:
        sealed = [SegmentStat(base_offset=s.base_offset, size_bytes=s.size_bytes,
                              max_timestamp_ms=s.max_timestamp_ms)
                  for s in self._segments[:-1]]
        return segments_to_delete(sealed, total_bytes=self.size_bytes, now_ms=now_ms,
                                  retention_ms=retention_ms, retention_bytes=retention_bytes)

    def apply_retention(self, now_ms: int) -> list[int]:
        """Delete whole sealed segments by age and total size; returns their base offsets."""
        cfg = self.config
        if cfg.retention_ms is None and cfg.retention_bytes is None:
            return []
        with self._lock:
            self._check_open()
            count = self._retention_count(now_ms, cfg.retention_ms, cfg.retention_bytes)
            if count == 0:
                return []
            new_start = max(self._segments[count].base_offset, self._log_start_offset)
            deleted = self._delete_prefix(count, new_start)
            log.info("retention deleted %d segment(s) of %s; log start is now %d",
                     len(deleted), self.directory.name, new_start)
            return deleted

    def _delete_prefix(self, count: int, new_start: int) -> list[int]:
        # Persist the new start first: a crash before the unlinks leaves segments below the
        # start, which open() deletes; the other order could resurrect deleted offsets.
        self._log_start_offset = new_start
        self._write_meta()
        return self._unlink_prefix(count)

    def _unlink_prefix(self, count: int) -> list[int]:
        """Delete the first `count` (sealed) segments, durably; the log start is persisted."""
        assert count < len(self._segments), "the active segment is never deleted"
        victims, self._segments = self._segments[:count], self._segments[count:]
        for victim in victims:
            victim.delete()
            self._loaded_indexes.pop(victim.base_offset, None)
        if victims:
            self._fsync_directory()
        return [v.base_offset for v in victims]

    def reset(self, start_offset: int) -> None:
        """Delete everything; the log restarts empty at start_offset (Raft installs a snapshot).

        Crash-safe: the reset is recorded as pending in log.meta first and finished by open().
        """
        if start_offset < 0:
            raise ValueError(f"start offset {start_offset} < 0")
        with self._lock:
            self._check_open()
            self._generation += 1
            self._write_meta_values(_Meta(start_offset, start_offset, reset_pending=True))
            for segment in self._segments:
                segment.delete()
            self._loaded_indexes.clear()
            self._segments = []
            self._finish_reset(start_offset)
            self._durable_end_offset = start_offset
            log.info("reset %s: empty, starting at offset %d", self.directory.name,
                     start_offset)

    def _finish_reset(self, start_offset: int) -> None:
        for base in self._segment_bases_on_disk():
            Segment(self.directory, base, batch_bytes_max=0, fs=self.fs).delete()
        self._segments = [self._create_segment(start_offset)]
        self._fsync_directory()
        self._log_start_offset = start_offset
        self._write_meta_values(_Meta(start_offset, start_offset, reset_pending=False))
        self._recovery_point = start_offset

    # =============================================================================== recovery

    def _recover(self, notes: _RecoveryNotes | None = None) -> None:
        notes = _RecoveryNotes() if notes is None else notes
        for name in self.fs.listdir(self.directory):
            # Temp files of interrupted atomic writes, and a crash mid-clean.
            if name.endswith((".tmp", CLEANED_SUFFIX)):
                unlink_quietly(self.fs, self.directory / name)
        meta = self._read_meta(notes)
        if meta is not None and meta.reset_pending:
            self._finish_reset(meta.log_start_offset)
            notes.completed_reset = True
            log.warning("finished an interrupted reset of %s at offset %d",
                        self.directory.name, meta.log_start_offset)
        else:
            bases = self._segment_bases_on_disk()
            start = meta.log_start_offset if meta is not None else (bases[0] if bases else 0)
            recovery_point = meta.recovery_point if meta is not None else start
            if not bases:
                self._segments = [self._create_segment(start)]
                self._fsync_directory()
            else:
                bases = self._prune_below_start(bases, start, notes)
                self._segments = [Segment(self.directory, b,
                                          batch_bytes_max=self.config.batch_bytes_max,
                                          fs=self.fs)
                                  for b in bases]
                for segment in self._segments:
                    _refuse_old_format(segment)
                damage = None
                for segment, next_segment in zip(self._segments, self._segments[1:],
                                                 strict=False):
                    damage = self._recover_sealed(segment, next_segment.base_offset, notes)
                    if damage is not None and self._on_damage is DamagePolicy.QUARANTINE:
                        break
                    damage = None
                if damage is None:
                    damage = self._recover_active(recovery_point, notes)
                if damage is not None:  # only under QUARANTINE
                    self._cut_for_damage(damage, start=start, recovery_point=recovery_point,
                                         notes=notes)
                    self._recover(notes)  # again, on what is left: clean up to the cut
                    return
            self._log_start_offset = max(start, self._segments[0].base_offset)
            self._recovery_point = recovery_point
            if meta is None:
                self._write_meta()
        if self._log_start_offset > self.log_end_offset:
            # A power loss took unsynced data (what lay below the recovery point was checked
            # above), all of it below the durable log start, so none of it belongs to the log
            # any more (truncate_prefix beyond the durable end, then power loss): restart empty.
            log.warning("%s: recovered log ends at %d, below the log start %d (unsynced data "
                        "lost); restarting empty at the log start", self.directory.name,
                        self.log_end_offset, self._log_start_offset)
            notes.emptied_below_start = True
            for segment in self._segments:
                segment.close()
            self._finish_reset(self._log_start_offset)
        # Whatever survived in the page cache (a process crash, not a machine crash) is made
        # durable now, so durable_end_offset can start at the log end.
        self._make_surviving_tail_durable()
        if self._active.size_bytes:
            self._active.rolling_since_ms = self._now_ms()
        self._durable_end_offset = self.log_end_offset
        self._dirty.on_sync(synced_bytes=0, now_ms=self._now_ms())
        self._recovery_point_written_ms = self._now_ms()
        self.recovery = RecoveryReport(
            truncated=tuple(notes.truncated), rebuilt_indexes=tuple(notes.rebuilt),
            corrupt=tuple(notes.corrupt), deleted_segments=tuple(notes.deleted),
            meta_problem=notes.meta_problem, completed_reset=notes.completed_reset,
            emptied_below_start=notes.emptied_below_start,
            cut_from_offset=notes.cut_from_offset, quarantined=tuple(notes.quarantined))

    def _make_surviving_tail_durable(self) -> None:
        """Rewrite what the active segment holds above the recovery point, then fdatasync it.

        After a process crash that part may be in the page cache only, and a plain fsync is
        not enough: if a write-back of those pages failed before (a failed fsync whose process
        died before fencing), Linux marked them clean, and the fsync would "succeed" without
        writing them. Rewriting dirties them again. Bounded: at most one segment, and usually
        about a second of appends (RECOVERY_POINT_INTERVAL_MS).
        """
        active = self._active
        active.open_writer()
        if self._recovery_point <= active.base_offset:
            position = 0
        elif self._recovery_point >= active.end_offset:
            position = active.size_bytes
        else:
            position, _ = self._locate(active, self._recovery_point)
        if position < active.size_bytes:
            active.rewrite_from(position)
        active.sync()

    def _prune_below_start(self, bases: list[int], start: int, notes: _RecoveryNotes) -> list[int]:
        """Delete sealed segments wholly below the log start (an interrupted prefix deletion)."""
        keep = list(bases)
        while len(keep) > 1 and keep[1] <= start:
            victim = Segment(self.directory, keep.pop(0), batch_bytes_max=0, fs=self.fs)
            victim.delete()
            notes.deleted.append(victim.path.name)
            log.warning("deleted %s: wholly below the log start %d", victim.path.name, start)
        if len(keep) != len(bases):
            self._fsync_directory()
        return keep

    def _recover_sealed(self, segment: Segment, next_base: int,
                        notes: _RecoveryNotes) -> _Damage | None:
        """Load (or rebuild) a sealed segment's summary; scan it when its index is unusable or
        verify_sealed. Returns the damage found (already noted in `corrupt`), if any."""
        loaded: str | None = None
        found = segment.try_load_index(interval_bytes=self.config.index_interval_bytes)
        if isinstance(found, str):
            loaded = found
        else:
            _, summary = found
            if summary.end_offset != next_base:
                loaded = f"index says the segment ends at {summary.end_offset}, next starts " \
                         f"at {next_base}"
            elif not self._verify_sealed:
                segment.apply_summary(summary)
                return None
        if loaded is not None:
            log.warning("rebuilding the index of %s: %s", segment.path.name, loaded)
            notes.rebuilt.append(RebuiltIndex(segment=segment.path.name, reason=loaded))
        segment.reset_memory_state(interval_bytes=self.config.index_interval_bytes)
        result = segment.scan(authenticate=self._authenticate)
        if result.stopped_at is not None or result.end_offset != next_base:
            reason = result.reason or f"segment ends at offset {result.end_offset}, the next " \
                                      f"segment starts at {next_base}"
            position = result.stopped_at if result.stopped_at is not None else \
                result.end_position
            notes.corrupt.append(CorruptRegion(segment=segment.path.name, position=position,
                                               reason=reason))
            log.error("corruption in sealed segment %s at position %d: %s", segment.path.name,
                      position, reason)
            damage = _Damage(segment=segment, position=result.end_position,
                             offset=result.end_offset, reason=reason,
                             damaged_bytes=result.stopped_at is not None)
            # Keep the file's real size and the contiguity invariant; the index covers the
            # verified prefix only, and no index files are written, so the next open checks again.
            segment.size_bytes = segment.file_size()
            segment.end_offset = next_base
            segment.index = None
            return damage
        if loaded is not None:
            segment.write_index_files()
        segment.index = None
        return None

    def _recover_active(self, recovery_point: int, notes: _RecoveryNotes) -> _Damage | None:
        """Scan the active segment; cut a torn tail at or above the recovery point. Damage
        below it raises CorruptLogError (REFUSE) or is returned (QUARANTINE)."""
        active = self._active
        active.reset_memory_state(interval_bytes=self.config.index_interval_bytes)
        active.drop_index_files()
        min_term = self._segments[-2].last_term if len(self._segments) > 1 else -1
        result = active.scan(min_term=min_term, authenticate=self._authenticate)
        file_size = active.file_size()
        if result.stopped_at is None and result.end_offset >= recovery_point:
            return None
        if result.end_offset < recovery_point:
            if result.stopped_at is None:
                reason = f"active segment ends at offset {result.end_offset} but offsets below " \
                         f"the recovery point {recovery_point} were fsynced: acknowledged " \
                         "data was lost"
            else:
                reason = f"damaged batch below the recovery point {recovery_point} (offset " \
                         f"{result.end_offset}): {result.reason}"
            if self._on_damage is DamagePolicy.REFUSE:
                raise CorruptLogError(reason, segment=active.path,
                                      position=result.stopped_at if result.stopped_at is not None
                                      else result.end_position)
            notes.corrupt.append(CorruptRegion(segment=active.path.name,
                                               position=result.end_position, reason=reason))
            return _Damage(segment=active, position=result.end_position,
                           offset=result.end_offset, reason=reason,
                           damaged_bytes=result.stopped_at is not None)
        removed = file_size - result.end_position
        log.warning("truncated torn tail of %s at position %d (%d bytes): %s",
                    active.path.name, result.end_position, removed, result.reason)
        notes.truncated.append(TruncatedTail(segment=active.path.name,
                                             position=result.end_position,
                                             bytes_removed=removed, reason=result.reason or "",
                                             from_offset=result.end_offset))
        active.open_writer()
        active.truncate(result.end_position)

    def _cut_for_damage(self, damage: _Damage, *, start: int, recovery_point: int,
                        notes: _RecoveryNotes) -> None:
        """QUARANTINE: keep a copy of the damaged segment, then cut the log before the damaged
        batch, durably, in the order damage.py explains. Leaves all segments closed."""
        notes.cuts += 1
        assert notes.cuts <= DAMAGE_CUTS_PER_OPEN_MAX, f"{self.directory}: damage cuts repeat"
        segment = damage.segment
        if damage.damaged_bytes:
            copy = quarantine_copy(self.fs, segment.path)
            if copy is None:
                log.error("%s: quarantine full, cutting %s without keeping a copy",
                          self.directory, segment.path.name)
            else:
                notes.quarantined.append(f"{QUARANTINE_DIR}/{copy.name}")
        cut = damage.offset
        notes.cut_from_offset = cut if notes.cut_from_offset is None else \
            min(cut, notes.cut_from_offset)
        self._log_start_offset = start
        self._write_meta_values(_Meta(start, min(recovery_point, cut)))
        for victim in [s for s in self._segments if s.base_offset > segment.base_offset]:
            victim.delete()
        segment.drop_index_files()
        self._fsync_directory()
        segment.close()
        fd = self.fs.open(segment.path, os.O_RDWR)
        try:
            self.fs.ftruncate(fd, damage.position)
            self.fs.fdatasync(fd)
        finally:
            self.fs.close(fd)
        for s in self._segments:
            s.close()
        log.error("%s: cut the log from offset %d (%s at position %d: %s); the damaged file "
                  "is kept as %s", self.directory, cut, segment.path.name, damage.position,
                  damage.reason, notes.quarantined[-1] if damage.damaged_bytes and
                  notes.quarantined else "nothing")

    # ================================================================================ helpers

    @property
    def _active(self) -> Segment:
        return self._segments[-1]

    def _create_segment(self, base_offset: int) -> Segment:
        """A new empty segment file; the caller fsyncs the directory before relying on it."""
        return Segment.create(self.directory, base_offset,
                              batch_bytes_max=self.config.batch_bytes_max,
                              interval_bytes=self.config.index_interval_bytes, fs=self.fs)

    def _fsync_directory(self) -> None:
        metafile.fsync_directory(self.directory, fs=self.fs)

    def _segment_bases_on_disk(self) -> list[int]:
        stems = (name[: -len(LOG_SUFFIX)] for name in self.fs.listdir(self.directory)
                 if name.endswith(LOG_SUFFIX))
        return sorted(int(stem) for stem in stems if stem.isdigit() and len(stem) == 20)

    def _last_term_locked(self) -> int:
        for segment in reversed(self._segments):
            if segment.last_term >= 0:
                return segment.last_term
        return -1

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log {self.directory} is closed")

    def _fence_after_failed_fsync(self, segment: Segment, exc: OSError) -> None:
        """A failed fsync leaves data in the page cache that may never reach the disk, and no
        later fsync will say so (see Segment.discard_unsynced): cut it, then fence."""
        removed = segment.discard_unsynced() if segment is self._active else 0
        self._fence(f"fsync of {segment.path.name} failed ({exc}); cut {removed} unsynced "
                    f"bytes from it")

    def _fence(self, reason: str) -> None:
        log.error("fencing log %s: %s; reopen it to recover", self.directory, reason)
        for segment in self._segments:
            segment.close()
        self._closed = True

    def _check_readable(self, offset: int) -> None:
        end = self.log_end_offset
        if not self._log_start_offset <= offset <= end:
            raise OffsetOutOfRangeError(offset, log_start_offset=self._log_start_offset,
                                        log_end_offset=end)

    def _segment_for(self, offset: int) -> Segment:
        lo, hi = 0, len(self._segments) - 1
        while lo < hi:  # last segment whose base <= offset
            mid = (lo + hi + 1) // 2
            if self._segments[mid].base_offset <= offset:
                lo = mid
            else:
                hi = mid - 1
        return self._segments[lo]

    def _index_of(self, segment: Segment) -> SegmentIndex:
        if segment.index is not None:
            return segment.index
        index = self._loaded_indexes.get(segment.base_offset)
        if index is not None:
            self._loaded_indexes.move_to_end(segment.base_offset)
            return index
        loaded = segment.try_load_index(interval_bytes=self.config.index_interval_bytes)
        if isinstance(loaded, str):
            log.warning("index of %s unusable (%s): walking the segment without it",
                        segment.path.name, loaded)
            index = SegmentIndex(base_offset=segment.base_offset,
                                 interval_bytes=self.config.index_interval_bytes)
        else:
            index = loaded[0]
            self._loaded_indexes[segment.base_offset] = index
            while len(self._loaded_indexes) > LOADED_INDEXES_MAX:
                self._loaded_indexes.popitem(last=False)
        return index

    def _locate(self, segment: Segment, offset: int) -> tuple[int, BatchHeader]:
        """(position, header) of the batch containing `offset` in `segment`."""
        _, position = self._index_of(segment).floor(offset)
        try:
            for pos, header in segment.iter_headers(position):
                if header.last_offset >= offset:
                    if header.base_offset > offset:
                        break
                    return pos, header
                position = pos
        except BatchError as exc:
            raise CorruptLogError(f"cannot walk batch headers to offset {offset}: {exc}",
                                  segment=segment.path, position=position) from exc
        raise CorruptLogError(f"offset {offset} not found where the index points",
                              segment=segment.path, position=position)

    def _verified_prefix(self, segment: Segment, position: int, data: bytes,
                         first_base: int) -> bytes:
        """The whole, verified batches at the start of `data`, encrypted ones unsealed (the
        answer is then a new buffer of logical batches; a plaintext-only answer is `data`)."""
        view = memoryview(data)
        pos = 0
        expected = first_base
        logical: list[bytes | bytearray | memoryview] | None = None  # from the first sealed one
        while pos < len(view):
            if len(view) - pos < 12:
                break
            header_size = 12 + int.from_bytes(view[pos + 8: pos + 12], "big", signed=True)
            if header_size > len(view) - pos:
                break
            stored = view[pos: pos + header_size]
            try:
                # No size limit here: batch_bytes_max may have been lowered since the write.
                header = validate_batch(stored, max_bytes=header_size)
                if header.base_offset != expected:
                    raise BatchError(f"base offset {header.base_offset}, expected {expected}")
                if header.attributes & ENCRYPTED_ATTRIBUTE:
                    if logical is None:
                        logical = [view[:pos]]
                    logical.append(self.from_stored(stored))
                elif logical is not None:
                    logical.append(stored)
            except BatchError as exc:
                if pos == 0:
                    raise CorruptLogError(f"refusing to serve a damaged batch: {exc}",
                                          segment=segment.path, position=position) from exc
                log.error("damaged batch in %s at position %d: %s", segment.path.name,
                          position + pos, exc)
                break
            except EncryptionKeyError:
                if pos == 0:
                    raise
                break  # served up to it; the next read starts here and raises
            expected = header.last_offset + 1
            pos += header_size
        if pos == 0:
            raise CorruptLogError("first batch is cut short", segment=segment.path,
                                  position=position)
        if logical is not None:
            return b"".join(logical)
        return data[:pos] if pos < len(data) else data

    def _headers_chunk(self, base: int, offset: int, stop: int) -> list[BatchHeader]:
        segment = next((s for s in self._segments if s.base_offset == base), None)
        if segment is None or offset >= min(stop, segment.end_offset):
            return []
        position, _ = self._locate(segment, offset)
        chunk: list[BatchHeader] = []
        try:
            for _, header in segment.iter_headers(position):
                if header.base_offset >= stop or len(chunk) >= HEADERS_PER_ITER_CHUNK_MAX:
                    break
                chunk.append(header)
        except BatchError as exc:
            raise CorruptLogError(f"cannot walk batch headers: {exc}", segment=segment.path) \
                from exc
        return chunk

    # ================================================================================== meta

    def _read_meta(self, notes: _RecoveryNotes) -> _Meta | None:
        path = self.directory / META_FILE
        try:
            payload = metafile.read_checksummed(path, fs=self.fs)
        except CorruptFileError as exc:
            notes.meta_problem = str(exc)
            log.error("%s; falling back to the segment files (log start = first segment, "
                      "whole active segment treated as recoverable tail)", exc)
            return None
        if payload is None:
            return None
        if len(payload) != _META.size:
            notes.meta_problem = f"{path}: payload of {len(payload)} bytes, expected {_META.size}"
            return None
        start, recovery_point, reset_pending = _META.unpack(payload)
        return _Meta(start, recovery_point, bool(reset_pending))

    def _write_meta(self, *, recovery_point: int | None = None) -> None:
        point = self._recovery_point if recovery_point is None else recovery_point
        self._write_meta_values(_Meta(self._log_start_offset, point))
        # Only once written: after a failed write (ENOSPC) a retried truncate_after must lower
        # the recovery point on disk again (found by the simulator: a cut below it looked like
        # lost acknowledged data on the next open).
        self._recovery_point = point

    def _write_meta_values(self, meta: _Meta) -> None:
        metafile.write_checksummed(
            self.directory / META_FILE,
            _META.pack(meta.log_start_offset, meta.recovery_point, int(meta.reset_pending)),
            fs=self.fs)


def _refuse_old_format(segment: Segment) -> None:
    """A segment whose first batch is an intact batch of an older format is refused before
    recovery could take its batches for a torn tail or for damage (every version keeps magic at
    byte 20; a segment is written by one version, as open() refuses old logs before appending).
    A first batch that only looks old (torn or garbled bytes reading 1 at byte 20) is left to
    recovery, which cuts or reports it like any damage."""
    head = segment.pread(0, 21)
    version = format_version(head)
    if version is None or not 0 < version < MAGIC:
        return
    size = LENGTH_PREFIX_SIZE + int.from_bytes(head[8:12], "big", signed=True)
    if not LENGTH_PREFIX_SIZE < size <= OLD_FORMAT_BATCH_BYTES_MAX:
        return
    first = segment.pread(0, size)
    try:
        validate_batch(first, max_bytes=size)
    except UnsupportedFormatError as exc:
        raise LogFormatError(segment=segment.path, format_version=exc.format_version) from exc
    except BatchError:
        return


def _validate_plaintext(batch: bytes, batch_bytes_max: int) -> BatchHeader:
    """validate_batch, and the attribute bit only storage may set (ENCRYPTED: the stored form's
    marker) must be clear, or the batch would be taken for sealed when read."""
    header = validate_batch(batch, max_bytes=batch_bytes_max)
    if header.attributes & ENCRYPTED_ATTRIBUTE:
        raise InvalidBatchError(f"batch at base offset {header.base_offset} sets attribute bit "
                                "5, which only storage sets (encrypted at rest)")
    return header


def _write_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return DiskFullError(f"disk full {what}; the batch was not written")
    return StorageIOError(f"{what} failed: {exc}")


def _restamped(batch: bytes) -> BatchHeader:
    """The header of a just-stamped batch: its new header checksum included, not the sender's."""
    return decode_header(batch)


# Kept for callers that want to know the sentinel of an empty segment's max timestamp.
EMPTY_TIMESTAMP_MS = NO_TIMESTAMP
