"""`tidelog storage migrate DIR`: rewrite logs of batch format v1 as format v2, in place.

Why: format v1 left the Raft term outside the batch checksum (issue 11, defect 9); a v2 node
refuses to open a log holding v1 batches (`LogFormatError`) rather than guess. This offline tool,
run with the node stopped, converts every log below DIR (a node's data directory or one
partition directory).

Theory of operation. Each segment file is converted on its own, crash-safely:

1. Read it one batch at a time (memory bounded by the largest batch). Every batch must be an
   intact v1 batch (its v1 checksum holds) with the offsets and terms v1 recovery demanded:
   base offsets contiguous from the file's base offset, terms never decreasing, and each
   segment ending where the next begins. These are the checks v1 itself made on the fields its
   checksum did not cover; only then are base offset and term sealed into a v2 header checksum.
   Anything else stops the migration with `MigrationError` (file, position, reason) and leaves
   that file as it was: a v1 log with a torn tail is first opened once by the old version
   (which cuts the tail), or restored from a replica.
2. Write `<segment>.log.migrating`, fsync it, read it back and verify it (check in pairs).
3. Delete the segment's index files (their byte positions move: a v2 header is 8 bytes
   longer), fsync the directory, rename the new file over the old one, fsync the directory.
   open() rebuilds missing indexes. Offsets are unchanged, so log.meta and raft.state stay.

A crash leaves each segment whole in v1 or v2; the log is then still refused (it holds v1
segments) and running the tool again finishes the job: v2 segments are skipped, a leftover
`.migrating` file is deleted.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tidelog.node.storage.errors import StorageError
from tidelog.node.storage.fs import OS_FS, FileSystem, pread_all, pwrite_all
from tidelog.proto.batch import (
    MAGIC,
    BatchError,
    decode_header,
    format_version,
    iter_batches,
    upgrade_v1_batch,
)

__all__ = ["MigrationError", "SegmentMigration", "migrate_log", "migrate_tree", "run_cli"]

MIGRATING_SUFFIX = ".migrating"
_V1 = 1
_PREFIX = struct.Struct(">qi")  # base_offset, batch_length: the same in v1 and v2
WRITE_BUFFER_BYTES = 1 << 20
BATCH_BYTES_MAX = 256 * 1024 * 1024
"""Refuse a batch declaring more than this (damage), rather than allocate it."""


class MigrationError(StorageError):
    """A v1 segment cannot be converted as it is; it was left untouched."""

    def __init__(self, segment: Path, position: int, reason: str) -> None:
        super().__init__(f"{segment} at position {position}: {reason}; the file was left as it "
                         "was")
        self.segment = segment
        self.position = position


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentMigration:
    """What happened to one segment file."""

    segment: Path
    converted: bool  # False: already v2 (or empty), skipped
    batches: int
    end_offset: int  # next offset after the segment's last batch (its base if empty)
    last_term: int  # -1 if empty


def migrate_tree(root: Path, *, fs: FileSystem = OS_FS) -> list[SegmentMigration]:
    """Convert every log directory at or below `root`; returns one entry per segment file."""
    results: list[SegmentMigration] = []
    for directory in _log_directories(fs, Path(root)):
        results.extend(migrate_log(directory, fs=fs))
    return results


def migrate_log(directory: Path, *, fs: FileSystem = OS_FS) -> list[SegmentMigration]:
    """Convert the v1 segments of one log directory (see the module doc)."""
    directory = Path(directory)
    for name in fs.listdir(directory):
        if name.endswith(MIGRATING_SUFFIX):
            fs.unlink(directory / name)
    results: list[SegmentMigration] = []
    term = -1
    previous: SegmentMigration | None = None
    for path in _segment_files(fs, directory):
        base = int(path.name[:20])
        if previous is not None and previous.batches and previous.end_offset != base:
            raise MigrationError(path, 0, f"the previous segment ends at offset "
                                          f"{previous.end_offset}, this one starts at {base}")
        result = _migrate_segment(fs, path, base, term)
        if result.batches:
            term = result.last_term
        results.append(result)
        previous = result
    return results


# ------------------------------------------------------------------------------------ helpers


def _migrate_segment(fs: FileSystem, path: Path, base: int, min_term: int) -> SegmentMigration:
    if format_version(_read_at(fs, path, 0, 21)) != _V1:
        return _summarise_v2(fs, path, base, min_term)  # v2 or empty: already done
    tmp = path.with_name(path.name + MIGRATING_SUFFIX)
    expected, term, batches = base, min_term, 0
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        buffer, written = bytearray(), 0
        for position, batch in _read_batches(fs, path):
            try:
                upgraded = upgrade_v1_batch(batch)
            except BatchError as exc:
                raise MigrationError(path, position, str(exc)) from None
            header = decode_header(upgraded)
            if header.base_offset != expected:
                raise MigrationError(path, position, f"base offset {header.base_offset}, "
                                                     f"expected {expected}")
            if header.term < term:
                raise MigrationError(path, position, f"term {header.term} below the "
                                                     f"previous batch's {term}")
            buffer += upgraded
            if len(buffer) >= WRITE_BUFFER_BYTES:
                pwrite_all(fs, fd, buffer, written)
                written += len(buffer)
                buffer = bytearray()
            expected, term, batches = header.last_offset + 1, header.term, batches + 1
        pwrite_all(fs, fd, buffer, written)
        fs.fsync(fd)
        fs.close(fd)
        fd = -1
        _verify(fs, tmp, base, expected)
    except BaseException:
        if fd >= 0:
            fs.close(fd)
        if fs.exists(tmp):
            fs.unlink(tmp)
        raise
    stem = path.name[:20]
    for index in (path.with_name(stem + ".index"), path.with_name(stem + ".timeindex")):
        if fs.exists(index):
            fs.unlink(index)
    fs.fsync_directory(path.parent)
    fs.replace(tmp, path)
    fs.fsync_directory(path.parent)
    return SegmentMigration(segment=path, converted=True, batches=batches, end_offset=expected,
                            last_term=term)


def _summarise_v2(fs: FileSystem, path: Path, base: int, min_term: int) -> SegmentMigration:
    expected, term, batches = base, min_term, 0
    for position, batch in _read_batches(fs, path):
        if format_version(batch) != MAGIC:
            raise MigrationError(path, position, "a segment mixing format versions")
        header = decode_header(batch)
        expected, term, batches = header.last_offset + 1, header.term, batches + 1
    return SegmentMigration(segment=path, converted=False, batches=batches, end_offset=expected,
                            last_term=term if batches else -1)


def _read_batches(fs: FileSystem, path: Path) -> Iterator[tuple[int, bytes]]:
    """(position, bytes) of each whole batch of a segment file, one at a time."""
    fd = fs.open(path, os.O_RDONLY)
    try:
        size = fs.fstat_size(fd)
        position = 0
        while position < size:
            prefix = pread_all(fs, fd, position, _PREFIX.size)
            if len(prefix) < _PREFIX.size:
                raise MigrationError(path, position, "torn batch at the end of the file")
            _, length = _PREFIX.unpack(prefix)
            if not 0 < length <= BATCH_BYTES_MAX or position + _PREFIX.size + length > size:
                raise MigrationError(path, position, f"batch declares {length} bytes, "
                                                     f"{size - position} remain (torn or damaged)")
            yield position, prefix + pread_all(fs, fd, position + _PREFIX.size, length)
            position += _PREFIX.size + length
    finally:
        fs.close(fd)


def _verify(fs: FileSystem, tmp: Path, base: int, end: int) -> None:
    """Check in pairs: read the rewrite back (every checksum, contiguous offsets, same end)."""
    expected = base
    for _, batch in _read_batches(fs, tmp):
        for _, header in iter_batches(batch):
            assert header.base_offset == expected, (tmp, header.base_offset, expected)
            expected = header.last_offset + 1
    assert expected == end, (tmp, expected, end)


def _read_at(fs: FileSystem, path: Path, position: int, length: int) -> bytes:
    fd = fs.open(path, os.O_RDONLY)
    try:
        return pread_all(fs, fd, position, length)
    finally:
        fs.close(fd)


def _segment_files(fs: FileSystem, directory: Path) -> list[Path]:
    return [directory / name for name in sorted(fs.listdir(directory))
            if name.endswith(".log") and len(name) == 24 and name[:20].isdigit()]


def _log_directories(fs: FileSystem, root: Path) -> list[Path]:
    """`root` and every directory below it that holds segment files, depth first, sorted."""
    found = [root] if _segment_files(fs, root) else []
    for name in sorted(fs.listdir(root)):
        child = root / name
        if fs.is_dir(child):
            found.extend(_log_directories(fs, child))
    return found


# ---------------------------------------------------------------------------------------- CLI


def run_cli(root: Path, *, fs: FileSystem = OS_FS) -> int:
    """`tidelog storage migrate DIR` (parser in tidelog.node.storage_cli): exit code 0, 1 when a
    segment cannot be converted, 2 when DIR is not a directory."""
    if not fs.is_dir(root):
        print(f"tidelog storage migrate: {root} is not a directory", file=sys.stderr)
        return 2
    try:
        results = migrate_tree(root, fs=fs)
    except MigrationError as exc:
        print(f"tidelog storage migrate: {exc}", file=sys.stderr)
        return 1
    converted = [r for r in results if r.converted]
    for r in converted:
        print(f"converted {r.segment} ({r.batches} batches, offsets up to {r.end_offset - 1})")
    print(f"{len(converted)} segment(s) converted to batch format v{MAGIC}, "
          f"{len(results) - len(converted)} already v{MAGIC} or empty")
    return 0
