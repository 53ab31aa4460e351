"""Directories whose existence is durable: created with their parent fsynced, removed likewise.

A new directory's name lives in its parent directory; until the parent is fsynced a power loss
can drop the name and with it everything below, however carefully each file inside was fsynced
(issue 11, defect 8). Every directory the node creates goes through `ensure_directory`.
"""

from __future__ import annotations

from pathlib import Path

from tidelog.node.storage.fs import OS_FS, FileSystem

__all__ = ["ensure_directory", "remove_directory"]


def ensure_directory(path: Path, *, fs: FileSystem = OS_FS) -> list[Path]:
    """Create `path` and any missing parents; fsync the parent of each one created, and the
    parent of `path` even when it existed (cheap, and it covers a crash between an earlier
    mkdir and its fsync, after which the directory exists in the cache only).

    Returns the directories created, outermost first. NotADirectoryError if a file is in the way.
    """
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not fs.is_dir(probe):
        if fs.exists(probe):
            raise NotADirectoryError(f"{probe} exists and is not a directory")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    created = list(reversed(missing))
    for directory in created:
        try:
            fs.mkdir(directory)
        except FileExistsError:
            if not fs.is_dir(directory):
                raise
        fs.fsync_directory(directory.parent)
    if not created:
        fs.fsync_directory(path.parent)
    return created


def remove_directory(path: Path, *, fs: FileSystem = OS_FS) -> bool:
    """Remove `path` and everything in it, durably (the parent is fsynced). False if absent."""
    path = Path(path)
    if not fs.exists(path):
        return False
    fs.rmtree(path)
    fs.fsync_directory(path.parent)
    return True
