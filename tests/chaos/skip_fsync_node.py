"""A deliberately broken node that never fsyncs its topics' data, for proving the power-cut
harness can fail (tests only, never shipped).

Runs the real `tidelog.node.main` after monkeypatching the storage layer's fsyncs to no-ops for
everything under `<data-dir>/partitions/`: segment data (`fdatasync`), the partitions' own small
files and their directory entries (`fsync`, `fsync_directory`). The file-system seam
(`OsFileSystem` in node/storage/fs.py) is patched, and `os.fsync` / `os.fdatasync` as a backstop
for any storage code that calls them directly. Everything else is the shipped node: it answers
acks=all exactly as before, only nothing it acknowledges is on the disk.

Why the cluster metadata group (`<data-dir>/metadata/`) keeps its fsyncs: if it lost everything
too, the topic itself would be gone after a power cut of every node, and the final read would
have nothing to read: the run would fail, but without naming the lost records. This way the
topic survives, its partitions come back empty on every replica, and the checker must report
each acknowledged record the final read no longer holds.

A kill -9 cannot tell this node from the real one (the page cache survives it); a power cut on
LazyFS must. Started by tests/chaos/test_power_cut.py as `python -m tests.chaos.skip_fsync_node
ARGS...` with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tidelog.node.storage import fs

_PARTITIONS = f"{os.sep}partitions{os.sep}"
_real_fsync = os.fsync
_real_fdatasync = os.fdatasync


def _skipped(path: str | Path) -> bool:
    return _PARTITIONS in str(path)


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _fsync(fd: int) -> None:
    if not _skipped(_fd_path(fd)):
        _real_fsync(fd)


def _fdatasync(fd: int) -> None:
    if not _skipped(_fd_path(fd)):
        _real_fdatasync(fd)


_seam_fsync_directory = fs.OsFileSystem.fsync_directory


def _fsync_directory(self: fs.OsFileSystem, path: Path) -> None:
    if not _skipped(path):  # the partitions directory itself keeps its fsyncs
        _seam_fsync_directory(self, path)


fs.OsFileSystem.fsync = lambda self, fd: _fsync(fd)  # type: ignore[method-assign]
fs.OsFileSystem.fdatasync = lambda self, fd: _fdatasync(fd)  # type: ignore[method-assign]
fs.OsFileSystem.fsync_directory = _fsync_directory  # type: ignore[method-assign]
os.fsync = _fsync
os.fdatasync = _fdatasync

if __name__ == "__main__":
    from tidelog.node.main import main

    print("skip_fsync_node: no fsync under partitions/ in this node (test build)",
          file=sys.stderr)
    sys.exit(main())
