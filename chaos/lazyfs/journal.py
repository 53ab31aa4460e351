"""Directory entries that are not durable yet: applied at once, undone at a power cut.

Theory of operation. A create, mkdir, unlink, rmdir or rename is applied to the backing tree at
once (so path lookups stay plain passthrough), and recorded here with the directories whose
entries it changed. It becomes durable once *every* one of those directories was fsynced after
it (a rename across directories needs both). A power cut undoes every change not yet durable,
newest first, which restores the names to what the last directory fsyncs made durable:

    create / mkdir  -> the name is removed (a directory with everything below it);
    unlink / rmdir  -> the name comes back: the inode waits in the grave until the change is
                       durable (then it is deleted for real);
    rename          -> the name moves back; a target it replaced comes back from the grave.

This is the strict POSIX reading that storage/fs.py documents (a new, renamed or unlinked name
is durable only after fsync of its directory; fsync of a file does not make its name durable).
Real journaling file systems are kinder (ext4 commits its journal every 5 s and with each fsync),
so a program that passes here passes there. Known simplifications: an undo whose name was since
moved by a *durable* later change (possible only across directories) is skipped; chmod, chown
and utimens are durable at once; the journal is bounded (`entries_max`): beyond it, the oldest
change is made durable, as a journal commit would.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import shutil
from collections import deque
from dataclasses import dataclass

__all__ = ["GRAVE", "Change", "Journal"]

log = logging.getLogger(__name__)

GRAVE = ".lazyfs-grave"  # inside the backing root, hidden from the mount
ENTRIES_MAX = 100_000


class Change(enum.Enum):
    CREATE = "create"
    MKDIR = "mkdir"
    UNLINK = "unlink"
    RMDIR = "rmdir"
    RENAME = "rename"


@dataclass(slots=True, kw_only=True)
class _Entry:
    change: Change
    path: str  # mount-relative, "/a/b" (rename: the source)
    target: str | None = None  # rename: the destination
    grave: str | None = None  # backing path of the inode this change removed, kept for undo
    unsynced: set[str]  # directories (mount-relative) not fsynced since this change


class Journal:
    """Not thread-safe: the file system calls it under its namespace lock."""

    def __init__(self, root: str, *, entries_max: int = ENTRIES_MAX) -> None:
        self.root = root.rstrip("/")
        self.grave_dir = os.path.join(self.root, GRAVE)
        shutil.rmtree(self.grave_dir, ignore_errors=True)  # left by a process that died
        os.makedirs(self.grave_dir, exist_ok=True)
        self._entries: deque[_Entry] = deque()
        self._entries_max = entries_max
        self._grave_ids = itertools.count()
        self.committed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def real(self, path: str) -> str:
        return self.root + path

    def new_grave(self) -> str:
        return os.path.join(self.grave_dir, str(next(self._grave_ids)))

    def record(self, change: Change, path: str, *, target: str | None = None,
               grave: str | None = None) -> None:
        dirs = {_parent(path)} | ({_parent(target)} if target is not None else set())
        self._entries.append(_Entry(change=change, path=path, target=target, grave=grave,
                                    unsynced=dirs))
        while len(self._entries) > self._entries_max:
            self._commit(self._entries.popleft())

    def directory_synced(self, directory: str) -> int:
        """fsync of `directory`: changes in it are durable (where no other directory is owed).
        Returns how many changes became durable."""
        directory = directory.rstrip("/") or "/"
        done = 0
        kept: deque[_Entry] = deque()
        for entry in self._entries:
            entry.unsynced.discard(directory)
            if entry.unsynced:
                kept.append(entry)
            else:
                self._commit(entry)
                done += 1
        self._entries = kept
        return done

    def commit_all(self) -> int:
        """sync(2) or a clean unmount: every change is durable."""
        done = len(self._entries)
        while self._entries:
            self._commit(self._entries.popleft())
        return done

    def undo_all(self) -> int:
        """The power cut: undo every change that is not durable, newest first."""
        undone = 0
        while self._entries:
            entry = self._entries.pop()
            try:
                self._undo(entry)
                undone += 1
            except OSError as exc:  # the name was moved by a later durable change
                log.warning("undo of %s %s skipped: %s", entry.change.value, entry.path, exc)
        return undone

    # --- helpers --------------------------------------------------------------------------------

    def _commit(self, entry: _Entry) -> None:
        self.committed += 1
        if entry.grave is not None:
            _remove(entry.grave)

    def _undo(self, entry: _Entry) -> None:
        real = self.real(entry.path)
        match entry.change:
            case Change.CREATE | Change.MKDIR:
                _remove(real)
            case Change.UNLINK | Change.RMDIR:
                assert entry.grave is not None
                os.rename(entry.grave, real)
            case Change.RENAME:
                assert entry.target is not None
                os.rename(self.real(entry.target), real)
                if entry.grave is not None:
                    os.rename(entry.grave, self.real(entry.target))


def _parent(path: str) -> str:
    parent = os.path.dirname(path.rstrip("/"))
    return parent or "/"


def _remove(real: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(real) and not os.path.islink(real):
            shutil.rmtree(real)
        else:
            os.unlink(real)
