"""One segment: a file of whole record batches named after its base offset, and its index.

Theory of operation. A segment is append-only while it is the log's active segment, then sealed
(fsynced, index files written, writer descriptor closed) and immutable until deleted, except that
`truncate_after` may cut it and make it active again. Only the active segment holds a descriptor,
opened lazily on first write; reads of sealed segments open the file for the call and close it, so
a node with 1,000 partitions holds about 1,000 descriptors, not several per segment.

Writes use pwrite at the position the segment believes is its end (`size_bytes`), never O_APPEND,
so in-memory size and file size agree; a failed or partial write is cut back with ftruncate.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

from tidelog.node.storage import metafile
from tidelog.node.storage.errors import (
    CorruptFileError,
    DiskFullError,
    LogClosedError,
    LogFormatError,
    StorageIOError,
)
from tidelog.node.storage.fs import OS_FS, FileSystem, pread_all, pwrite_all, unlink_quietly
from tidelog.node.storage.index import (
    NO_TIMESTAMP,
    SegmentIndex,
    SegmentSummary,
    decode_index_files,
    encode_index_files,
)
from tidelog.proto.batch import (
    HEADER_SIZE,
    LENGTH_PREFIX_SIZE,
    BatchError,
    BatchHeader,
    UnsupportedFormatError,
    decode_header,
    decode_verified_header,
    validate_batch,
)

__all__ = ["Position", "ScanResult", "Segment", "segment_file_name"]

log = logging.getLogger(__name__)

Position = NewType("Position", int)
"""A byte position inside one segment file."""

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
SCAN_WINDOW_BYTES = 1024 * 1024
_MIN_BATCH_LENGTH = HEADER_SIZE - LENGTH_PREFIX_SIZE


def segment_file_name(base_offset: int) -> str:
    return f"{base_offset:020d}{LOG_SUFFIX}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanResult:
    """How a verifying scan ended. `stopped_at` is None when it reached the end of the file."""

    end_position: int  # byte after the last good batch
    end_offset: int  # next offset after the last good batch
    stopped_at: int | None
    reason: str | None
    batches: int


class Segment:
    """Mutable state of one segment file; owned and locked by its PartitionLog."""

    __slots__ = ("base_offset", "path", "index_path", "timeindex_path", "size_bytes",
                 "end_offset", "max_timestamp_ms", "rolling_since_ms", "last_term",
                 "index", "fs", "durable_size_bytes", "_fd", "_batch_bytes_max")

    def __init__(self, directory: Path, base_offset: int, *, batch_bytes_max: int,
                 fs: FileSystem = OS_FS) -> None:
        self.fs = fs
        self.base_offset = base_offset
        self.path = directory / segment_file_name(base_offset)
        stem = f"{base_offset:020d}"
        self.index_path = directory / (stem + INDEX_SUFFIX)
        self.timeindex_path = directory / (stem + TIMEINDEX_SUFFIX)
        # Invariant: size_bytes is the file's length and the end of the last whole batch.
        self.size_bytes = 0
        # Invariant: bytes [0, durable_size_bytes) were fdatasynced (kept up to date for the
        # active segment; what a failed fsync may have lost lies beyond it).
        self.durable_size_bytes = 0
        # Invariant: end_offset == last batch's last_offset + 1, or base_offset when empty.
        self.end_offset = base_offset
        self.max_timestamp_ms = NO_TIMESTAMP
        # Wall-clock ms of the first append in this process (or of the open that recovered a
        # non-empty segment): roll-by-age counts from here. Not the batches' own timestamps,
        # which producers set and which may lie far in the past (one roll per append) or future.
        self.rolling_since_ms: int | None = None
        self.last_term = -1  # -1: no batch in this segment
        self.index: SegmentIndex | None = None  # always set on the active segment
        self._fd: int | None = None
        self._batch_bytes_max = batch_bytes_max

    # -------------------------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, directory: Path, base_offset: int, *, batch_bytes_max: int,
               interval_bytes: int, fs: FileSystem = OS_FS) -> Segment:
        """A new, empty segment file. Its name is durable only once the caller fsyncs the
        directory (every caller does, before anything in it is reported durable)."""
        segment = cls(directory, base_offset, batch_bytes_max=batch_bytes_max, fs=fs)
        segment._fd = fs.open(segment.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        segment.index = SegmentIndex(base_offset=base_offset, interval_bytes=interval_bytes)
        for stale in (segment.index_path, segment.timeindex_path):
            unlink_quietly(fs, stale)
        return segment

    def summary(self) -> SegmentSummary:
        return SegmentSummary(base_offset=self.base_offset, end_offset=self.end_offset,
                              size_bytes=self.size_bytes, max_timestamp_ms=self.max_timestamp_ms,
                              last_term=self.last_term)

    def seal(self) -> None:
        """Make the segment durable and immutable: fsync, write index files, drop the writer."""
        self.sync()
        self.write_index_files()
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            self.fs.close(self._fd)
            self._fd = None

    def delete(self) -> None:
        self.close()
        for path in (self.path, self.index_path, self.timeindex_path):
            unlink_quietly(self.fs, path)

    def drop_index_files(self) -> None:
        """Called when a sealed segment becomes active again: its index files would go stale."""
        for path in (self.index_path, self.timeindex_path):
            unlink_quietly(self.fs, path)

    # ------------------------------------------------------------------------------------ writes

    def append(self, data: bytes, header: BatchHeader) -> int:
        """Write one stamped, validated batch at the end; return its position.

        On any OSError the file is cut back to its previous length, so it still ends on a batch
        boundary. If even that fails the segment is broken and LogClosedError fences it.
        """
        position = self.size_bytes
        fd = self._writer()
        view = memoryview(data)
        try:
            written = 0
            while written < len(view):
                written += self.fs.pwrite(fd, view[written:], position + written)
        except OSError as exc:
            self._cut_back(position, exc)
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(
                    f"disk full appending {len(data)} bytes to {self.path}; nothing was written"
                ) from exc
            raise StorageIOError(f"write to {self.path} failed: {exc}; nothing was written") \
                from exc
        self._account(position, header)
        return position

    def truncate(self, position: int) -> None:
        """Cut the file at a batch boundary and rebuild the in-memory state from what remains."""
        fd = self._writer()
        self.fs.ftruncate(fd, position)
        durable = min(self.durable_size_bytes, position)
        self.size_bytes = position
        self._rebuild_memory_state_from_headers()
        self.durable_size_bytes = durable

    def sync(self) -> None:
        # fdatasync also flushes the file size, which reading the new data needs; skip mtime.
        if self._fd is not None:
            size = self.size_bytes
            self.fs.fdatasync(self._fd)
            self.durable_size_bytes = size

    def rewrite_from(self, position: int) -> None:
        """pwrite the bytes from `position` to the end again, as they read now (see
        PartitionLog._make_surviving_tail_durable): the next fdatasync then really writes them."""
        fd = self._writer()
        chunk = SCAN_WINDOW_BYTES
        while position < self.size_bytes:
            data = pread_all(self.fs, fd, position, min(chunk, self.size_bytes - position))
            assert data, f"{self.path} is shorter than its {self.size_bytes} bytes"
            pwrite_all(self.fs, fd, data, position)
            position += len(data)

    def discard_unsynced(self) -> int:
        """Cut the file back to what was last fdatasynced; returns the bytes removed.

        After a failed fsync Linux marks the dirty pages clean although they never reached the
        disk: the page cache still serves them and a later fsync "succeeds" without writing
        them, so a reopened log would call them durable. Cutting them makes the cache agree
        with the disk. Best effort: the log is being fenced anyway.
        """
        removed = self.size_bytes - self.durable_size_bytes
        if self._fd is None or removed <= 0:
            return 0
        try:
            self.fs.ftruncate(self._fd, self.durable_size_bytes)
        except OSError as exc:
            log.error("could not cut %s back to its durable %d bytes: %s", self.path,
                      self.durable_size_bytes, exc)
            return 0
        self.size_bytes = self.durable_size_bytes
        return removed

    def dup_writer(self) -> int | None:
        """A duplicate descriptor for fsync outside the log's lock (survives a concurrent seal)."""
        return self.fs.dup(self._fd) if self._fd is not None else None

    # ------------------------------------------------------------------------------------- reads

    def pread(self, position: int, length: int) -> bytes:
        """Up to `length` bytes at `position` (fewer only at end of file)."""
        if self._fd is not None:
            return pread_all(self.fs, self._fd, position, length)
        fd = self.fs.open(self.path, os.O_RDONLY)
        try:
            return pread_all(self.fs, fd, position, length)
        finally:
            self.fs.close(fd)

    def header_at(self, position: int, *, end: int | None = None) -> BatchHeader:
        """The header at `position`, its header checksum verified (so Raft can trust the term
        it reads here); raises BatchError if it is damaged or cannot be a batch here."""
        end = self.size_bytes if end is None else end
        raw = self.pread(position, HEADER_SIZE)
        header = decode_verified_header(raw)
        if header.batch_length < _MIN_BATCH_LENGTH or position + header.size > end:
            raise BatchError(f"batch at position {position} declares {header.size} bytes, "
                             f"{end - position} remain")
        return header

    def iter_headers(self, position: int) -> Iterator[tuple[int, BatchHeader]]:
        """Walk headers (each header checksum verified, records unread) from `position` to the
        end of the segment."""
        end = self.size_bytes
        while position < end:
            header = self.header_at(position, end=end)
            yield position, header
            position += header.size

    def scan(self, *, position: int = 0, expected_offset: int | None = None,
             min_term: int = -1, on_batch: bool = True,
             authenticate: Callable[[memoryview], None] | None = None) -> ScanResult:
        """Verify every batch from `position` (checksums, contiguous offsets, monotonic terms,
        and `authenticate`: the log's at-rest check, which raises a BatchError for a batch that
        fails GCM authentication).

        Stops at the first problem and says where and why; never raises for damaged data. With
        `on_batch`, rebuilds in-memory state (index, end offset, timestamps, terms) as it goes.
        """
        end = self.file_size()
        expected = self.base_offset if expected_offset is None else expected_offset
        term = min_term
        window_start, window = position, b""
        batches = 0
        while position < end:
            if position + HEADER_SIZE > window_start + len(window):
                window_start, window = position, self.pread(position, SCAN_WINDOW_BYTES)
            rel = position - window_start
            if len(window) - rel < HEADER_SIZE:
                return self._stop(position, expected, batches,
                                  f"torn batch header: {end - position} bytes at the end")
            header = decode_header(window, rel)
            size = header.size
            if header.batch_length < _MIN_BATCH_LENGTH or position + size > end:
                return self._stop(position, expected, batches,
                                  f"batch declares {size} bytes, {end - position} remain")
            if rel + size > len(window):
                window_start = position
                window = self.pread(position, max(SCAN_WINDOW_BYTES, size))
                rel = 0
            try:
                stored = memoryview(window)[rel: rel + size]
                validate_batch(stored, max_bytes=size)
                if authenticate is not None:
                    authenticate(stored)
            except UnsupportedFormatError as exc:  # never cut as a tail: refuse the log
                raise LogFormatError(segment=self.path, format_version=exc.format_version) \
                    from exc
            except BatchError as exc:
                return self._stop(position, expected, batches, str(exc))
            if header.base_offset != expected:
                return self._stop(position, expected, batches,
                                  f"base offset {header.base_offset}, expected {expected}")
            if header.term < term:
                return self._stop(position, expected, batches,
                                  f"term {header.term} below the previous batch's {term}")
            if on_batch:
                self._account(position, header)
            term = header.term
            expected = header.last_offset + 1
            position += size
            batches += 1
        return ScanResult(end_position=position, end_offset=expected, stopped_at=None,
                          reason=None, batches=batches)

    # ---------------------------------------------------------------------------- index files

    def load_index_files(self, *, interval_bytes: int) -> tuple[SegmentIndex, SegmentSummary]:
        """Read and check the sealed index files; ValueError/CorruptFileError when unusable."""
        offset_payload = metafile.read_checksummed(self.index_path, fs=self.fs)
        time_payload = metafile.read_checksummed(self.timeindex_path, fs=self.fs)
        if offset_payload is None or time_payload is None:
            raise FileNotFoundError(f"index files of {self.path.name} missing")
        index, summary = decode_index_files(offset_payload, time_payload,
                                            base_offset=self.base_offset,
                                            interval_bytes=interval_bytes)
        actual = self.file_size()
        if summary.size_bytes != actual:
            raise ValueError(f"index says {summary.size_bytes} bytes, the segment has {actual}")
        return index, summary

    def try_load_index(self, *, interval_bytes: int) -> tuple[SegmentIndex, SegmentSummary] | str:
        """Index and summary, or the reason they cannot be used (then the caller rebuilds)."""
        try:
            return self.load_index_files(interval_bytes=interval_bytes)
        except (OSError, ValueError, CorruptFileError) as exc:
            return str(exc)

    def write_index_files(self) -> None:
        # Indexes are checked on load and rebuilt when wrong, so they need no fsync of their own.
        assert self.index is not None, "only a segment with its index in memory writes it"
        offset_payload, time_payload = encode_index_files(self.index, self.summary())
        metafile.write_checksummed(self.index_path, offset_payload, durable=False, fs=self.fs)
        metafile.write_checksummed(self.timeindex_path, time_payload, durable=False, fs=self.fs)

    def apply_summary(self, summary: SegmentSummary) -> None:
        self.size_bytes = summary.size_bytes
        self.end_offset = summary.end_offset
        self.max_timestamp_ms = summary.max_timestamp_ms
        self.last_term = summary.last_term

    # ----------------------------------------------------------------------------------- helpers

    def reset_memory_state(self, *, interval_bytes: int) -> None:
        self.size_bytes = 0
        self.durable_size_bytes = 0
        self.end_offset = self.base_offset
        self.max_timestamp_ms = NO_TIMESTAMP
        self.rolling_since_ms = None
        self.last_term = -1
        self.index = SegmentIndex(base_offset=self.base_offset, interval_bytes=interval_bytes)

    def open_writer(self) -> None:
        self._writer()

    def file_size(self) -> int:
        """The file's length as the file system sees it (may differ from size_bytes on open)."""
        return self.fs.stat_size(self.path) if self._fd is None else self.fs.fstat_size(self._fd)

    def _writer(self) -> int:
        if self._fd is None:
            self._fd = self.fs.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    def _account(self, position: int, header: BatchHeader) -> None:
        assert self.index is not None
        self.index.on_batch(base_offset=header.base_offset, position=position,
                            size_bytes=header.size, max_timestamp_ms=header.max_timestamp)
        self.size_bytes = position + header.size
        self.end_offset = header.last_offset + 1
        if header.max_timestamp > self.max_timestamp_ms:
            self.max_timestamp_ms = header.max_timestamp
        self.last_term = header.term

    def _stop(self, position: int, expected: int, batches: int, reason: str) -> ScanResult:
        return ScanResult(end_position=position, end_offset=expected, stopped_at=position,
                          reason=reason, batches=batches)

    def _rebuild_memory_state_from_headers(self) -> None:
        assert self.index is not None
        size = self.size_bytes
        self.reset_memory_state(interval_bytes=self.index.interval_bytes)
        position = 0
        while position < size:
            header = self.header_at(position, end=size)
            self._account(position, header)
            position += header.size

    def _cut_back(self, position: int, cause: OSError) -> None:
        try:
            assert self._fd is not None
            self.fs.ftruncate(self._fd, position)
        except OSError as exc:
            log.error("could not cut %s back to %d after a failed write (%s): %s",
                      self.path, position, cause, exc)
            raise LogClosedError(
                f"{self.path} may end in a partial batch: cutting it back to {position} failed "
                f"({exc}); reopen the log to recover"
            ) from cause
