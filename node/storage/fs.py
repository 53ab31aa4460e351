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
from typing import Protocol

__all__ = ["OS_FS", "FileSystem", "OsFileSystem"]


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
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        (getattr(os, "fdatasync", None) or os.fsync)(fd)

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
