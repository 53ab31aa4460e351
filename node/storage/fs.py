"""The file-system seam of the storage engine: every byte the node stores goes through a FileSystem.

The methods mirror the `os` calls the storage engine makes (descriptors are ints), so that the
real shell runs unchanged on two implementations:

* `OsFileSystem` — the real one (`OS_FS`), thin wrappers over `os`.
* `tidelog.node.sim.simfs.SimFileSystem` — the in-memory twin used by the deterministic simulator.
  It models power loss: writes, truncations, renames and directory entries not yet made durable by
  `fsync`/`fdatasync` (file data) or `fsync_directory` (names in a directory) are lost, torn at
  sector granularity, when the simulator cuts power.

Durability contract (POSIX, as ext4/xfs behave and as LazyFS models them):
* `fsync(fd)` / `fdatasync(fd)` make the file's data and size durable, not its name.
* A new, renamed or unlinked name is durable only after `fsync_directory(parent)`.
* `replace(src, dst)` is atomic: after a crash either the old or the new `dst` exists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from time import perf_counter
from typing import Protocol

from tidelog.node.metrics.storage import FSYNC_SECONDS

__all__ = ["OS_FS", "FileSystem", "OsFileSystem", "SequentialReader", "SequentialWriter",
           "pread_all", "pwrite_all", "read_file", "unlink_quietly"]


class FileSystem(Protocol):
    """What the storage engine needs of a file system. Errors are `OSError`s with an errno."""

    # -- descriptors ------------------------------------------------------------------------
    def open(self, path: Path, flags: int, mode: int = 0o644) -> int: ...
    def close(self, fd: int) -> None: ...
    def dup(self, fd: int) -> int: ...
    def pread(self, fd: int, length: int, position: int) -> bytes: ...
    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> int: ...
    def ftruncate(self, fd: int, length: int) -> None: ...
    def fsync(self, fd: int) -> None: ...
    def fdatasync(self, fd: int) -> None: ...
    def fstat_size(self, fd: int) -> int: ...

    # -- names ------------------------------------------------------------------------------
    def stat_size(self, path: Path) -> int: ...
    def exists(self, path: Path) -> bool: ...
    def is_dir(self, path: Path) -> bool: ...
    def listdir(self, path: Path) -> list[str]: ...
    def mkdir(self, path: Path, *, parents: bool = False, exist_ok: bool = False) -> None: ...
    def unlink(self, path: Path) -> None: ...
    def replace(self, src: Path, dst: Path) -> None: ...
    def rmtree(self, path: Path) -> None: ...
    def fsync_directory(self, path: Path) -> None: ...


class OsFileSystem:
    """The real file system."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def pread(self, fd: int, length: int, position: int) -> bytes:
        return os.pread(fd, length, position)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> int:
        return os.pwrite(fd, data, position)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fsync(self, fd: int) -> None:
        started = perf_counter()
        os.fsync(fd)
        FSYNC_SECONDS.observe(perf_counter() - started)  # tidelog_fsync_seconds

    def fdatasync(self, fd: int) -> None:
        started = perf_counter()
        (getattr(os, "fdatasync", None) or os.fsync)(fd)
        FSYNC_SECONDS.observe(perf_counter() - started)

    def fstat_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def stat_size(self, path: Path) -> int:
        return os.stat(path).st_size

    def exists(self, path: Path) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: Path) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: Path, *, parents: bool = False, exist_ok: bool = False) -> None:
        Path(path).mkdir(parents=parents, exist_ok=exist_ok)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def rmtree(self, path: Path) -> None:
        shutil.rmtree(path)

    def fsync_directory(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


OS_FS: FileSystem = OsFileSystem()


# ------------------------------------------------------------------------------------ helpers
# Built on the seam only, so they behave the same on every FileSystem.


def pread_all(fs: FileSystem, fd: int, position: int, length: int) -> bytes:
    """Up to `length` bytes at `position`; fewer only at the end of the file."""
    data = fs.pread(fd, length, position)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = fs.pread(fd, length - got, position + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def pwrite_all(fs: FileSystem, fd: int, data: bytes | memoryview, position: int) -> None:
    """Write all of `data` at `position` (pwrite may write less than asked: loop)."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += fs.pwrite(fd, view[written:], position + written)


def read_file(fs: FileSystem, path: Path) -> bytes:
    """The whole file (FileNotFoundError if it does not exist)."""
    fd = fs.open(path, os.O_RDONLY)
    try:
        return pread_all(fs, fd, 0, fs.fstat_size(fd))
    finally:
        fs.close(fd)


def unlink_quietly(fs: FileSystem, path: Path) -> bool:
    """Unlink `path` if it exists; True if it did."""
    try:
        fs.unlink(path)
    except FileNotFoundError:
        return False
    return True


class SequentialWriter:
    """A file written front to back through the seam, in chunks of `buffer_bytes` (one pwrite
    per chunk instead of one per batch). `sync()` writes what is buffered and fdatasyncs."""

    def __init__(self, fs: FileSystem, path: Path, *, buffer_bytes: int) -> None:
        assert buffer_bytes > 0
        self._fs = fs
        self._fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._buffer = bytearray()
        self._buffer_bytes = buffer_bytes
        self._position = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._buffer_bytes:
            self._flush()

    def sync(self) -> None:
        self._flush()
        self._fs.fdatasync(self._fd)

    def close(self) -> None:
        self._fs.close(self._fd)

    def __enter__(self) -> SequentialWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _flush(self) -> None:
        if self._buffer:
            pwrite_all(self._fs, self._fd, self._buffer, self._position)
            self._position += len(self._buffer)
            self._buffer = bytearray()


class SequentialReader:
    """A file read front to back through the seam, `buffer_bytes` per pread."""

    def __init__(self, fs: FileSystem, path: Path, *, buffer_bytes: int) -> None:
        assert buffer_bytes > 0
        self._fs = fs
        self._fd = fs.open(path, os.O_RDONLY)
        self._buffer = b""
        self._offset = 0  # into _buffer
        self._position = 0  # file position of the end of _buffer
        self._buffer_bytes = buffer_bytes

    def read(self, length: int) -> bytes:
        """Up to `length` bytes; fewer only at the end of the file."""
        parts = []
        while length > 0:
            if self._offset == len(self._buffer):
                self._buffer = pread_all(self._fs, self._fd, self._position,
                                         max(self._buffer_bytes, length))
                self._offset = 0
                self._position += len(self._buffer)
                if not self._buffer:
                    break
            part = self._buffer[self._offset: self._offset + length]
            self._offset += len(part)
            length -= len(part)
            parts.append(part)
        return b"".join(parts)

    def close(self) -> None:
        self._fs.close(self._fd)

    def __enter__(self) -> SequentialReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
