"""LazyFS's operations: a passthrough over a backing directory that loses what was not fsynced.

Theory of operation (the fault model of Jepsen's LazyFS, our own code). The backing directory
is "the disk". Data written through the mount is kept in memory (`PendingFile`, keyed by the
backing inode, so renames and open descriptors follow it) and reaches the backing file only when
that file is fsynced or fdatasynced through any descriptor; close does not imply durability.
Directory entries follow `journal.py`: applied at once, durable after fsync of their directory.
`power_cut()` drops every pending write (or, torn, keeps a prefix of each file's dirty pages in
the order they were first dirtied, at 4 KiB granularity) and undoes every non-durable name
change; the mount then shows exactly the durable state, as a machine after a power loss would.

Concurrency: libfuse runs callbacks on several threads. Every operation holds the shared side
of `_cut_lock`; a power cut, sync and stats hold the exclusive side, so a cut is atomic. Name
changes hold `_ns_lock` (with the journal); data operations hold their file's own lock, so
writers to different files run in parallel. Descriptors opened before a cut are fenced: writes
and fsyncs through them fail with EIO (a killed process's request that was still queued in the
kernel must not reach the "disk" after the power came back).

The kernel must not serve stale names or sizes after a cut. It caches names and attributes for
`CACHE_TIMEOUT_S` (never negative lookups), so a cut returns only after that long: "the machine
is off for a second", and whatever the kernel cached has expired before anything runs on the
mount again. (Zero timeouts would do it too, but cost a LOOKUP and GETATTR round trip per path
component of every call: measured, they made a commit several times slower.) File data: the
kernel drops a file's page cache on every open (no keep_cache), and the node was killed before
the cut, so no descriptor of the old process serves cached pages.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import mfusepy
from tidelog.chaos.lazyfs.journal import GRAVE, Change, Journal
from tidelog.chaos.lazyfs.pages import PendingFile

__all__ = ["CutReport", "LazyOperations", "PENDING_BYTES_MAX"]

log = logging.getLogger(__name__)

PENDING_BYTES_MAX = 512 << 20  # beyond this, the file being written is written back
CACHE_TIMEOUT_S = 1.0  # the kernel's entry and attribute cache; a cut outlasts it
GETATTR_RETRIES_MAX = 100  # getattr looks again when an fsync applied the pending file meanwhile
_STAT_KEYS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
              "st_blocks", "st_blksize")
_OPEN_DROP = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_CREAT | os.O_EXCL


@dataclass(frozen=True, slots=True, kw_only=True)
class CutReport:
    """What a power cut threw away (or, torn, kept of it)."""

    files: int  # files that had unsynced data
    dropped_bytes: int  # dirty bytes lost
    kept_bytes: int  # torn: bytes of the dirty prefix that reached the disk anyway
    undone_names: int  # name changes undone (creates, renames, unlinks ...)
    torn: bool

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "dropped_bytes": self.dropped_bytes,
                "kept_bytes": self.kept_bytes, "undone_names": self.undone_names,
                "torn": self.torn}


@dataclass(slots=True)
class _Handle:
    fd: int
    ino: int
    epoch: int
    sync_writes: bool  # opened O_SYNC/O_DSYNC: every write is durable before it returns


class _SharedExclusive:
    """A readers-writer lock (the writer waits for readers to leave; new readers wait for it)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def shared(self):  # noqa: ANN202 - Iterator[None]
        with self._cv:
            while self._writer:
                self._cv.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cv:
                self._readers -= 1
                if not self._readers:
                    self._cv.notify_all()

    @contextlib.contextmanager
    def exclusive(self):  # noqa: ANN202 - Iterator[None]
        with self._cv:
            while self._writer:
                self._cv.wait()
            self._writer = True
            while self._readers:
                self._cv.wait()
        try:
            yield
        finally:
            with self._cv:
                self._writer = False
                self._cv.notify_all()


class LazyOperations(mfusepy.Operations):
    use_ns = True  # mfusepy: times as nanoseconds

    def __init__(self, backing: str, *, pending_bytes_max: int = PENDING_BYTES_MAX) -> None:
        self.root = os.path.realpath(backing)
        self.journal = Journal(self.root)
        self._cut_lock = _SharedExclusive()
        self._ns_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._pending: dict[int, PendingFile] = {}
        self._pending_bytes = 0
        self._pending_bytes_max = pending_bytes_max
        self._handles: dict[int, _Handle] = {}
        self._fh = itertools.count(1)
        self._epoch = 0
        self.counters = {"writes": 0, "fsyncs": 0, "fsyncdirs": 0, "cuts": 0, "writebacks": 0,
                         "fenced": 0}

    # --- control (called from the control socket's thread) -------------------------------------

    def power_cut(self, *, torn_seed: int | None = None) -> CutReport:
        """Drop everything not durable. Torn: each file keeps a seeded prefix of its pages."""
        rng = random.Random(torn_seed) if torn_seed is not None else None
        with self._cut_lock.exclusive():
            self._epoch += 1
            self.counters["cuts"] += 1
            dropped = kept = 0
            files = len(self._pending)
            for pf in self._pending.values():
                with pf.lock:
                    if rng is not None and pf.pages:
                        keep = rng.randint(0, len(pf.pages))
                        kept += pf.apply(pages_max=keep)
                    dropped += pf.dirty_bytes
                    pf.dead = True
                    os.close(pf.fd)
            self._pending.clear()
            self._pending_bytes = 0
            with self._ns_lock:
                undone = self.journal.undo_all()
            time.sleep(CACHE_TIMEOUT_S + 0.2)  # the kernel forgets names and sizes meanwhile
            return CutReport(files=files, dropped_bytes=max(0, dropped - kept), kept_bytes=kept,
                             undone_names=undone, torn=rng is not None)

    def sync_all(self) -> None:
        """sync(2): every pending write and name change becomes durable."""
        with self._cut_lock.exclusive():
            for pf in list(self._pending.values()):
                with pf.lock:
                    pf.apply()
                    pf.dead = True
                    os.close(pf.fd)
            self._pending.clear()
            self._pending_bytes = 0
            with self._ns_lock:
                self.journal.commit_all()

    def stats(self) -> dict[str, int]:
        with self._map_lock:
            return {**self.counters, "pending_files": len(self._pending),
                    "pending_bytes": self._pending_bytes, "pending_names": len(self.journal)}

    # --- FUSE: set-up ---------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if config_3 is not None:
            # A cut outlasts these (see the module docstring); a negative entry is never cached,
            # so a name a cut brings back is seen at once.
            config_3.entry_timeout = CACHE_TIMEOUT_S
            config_3.attr_timeout = CACHE_TIMEOUT_S
            config_3.negative_timeout = 0.0
            config_3.use_ino = 1
            # unlink of an open file is an unlink (the inode waits in our grave, descriptors keep
            # working), not libfuse's rename to .fuse_hidden* plus an unlink at release, which
            # would turn one name change into two, the second one late.
            config_3.hard_remove = 1

    def destroy(self, path: str) -> None:
        """A clean unmount writes back, as umount does (a cut is the unclean ending)."""
        with contextlib.suppress(Exception):
            self.sync_all()

    # --- FUSE: metadata -------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._cut_lock.shared():
            h = self._handles.get(fh) if fh else None

            def stat() -> os.stat_result:
                return os.fstat(h.fd) if h is not None else os.lstat(self._real(path))

            # The size must not race an fsync applying the pending pages: a backing size read
            # before the apply with the pending file looked up after it (gone) reported the
            # file shorter than what was written, the kernel cached that size and clamped reads
            # to it, and a node read 0 bytes of a batch it had appended (a replica stopped on
            # "truncated batch header" in CI). So stat under the pending file's lock, or after
            # seeing no pending file (then every apply so far is in the backing file).
            for _ in range(GETATTR_RETRIES_MAX):
                ino = h.ino if h is not None else stat().st_ino
                pf = self._pending.get(ino)
                if pf is None:
                    st, size = stat(), None
                    break
                with pf.lock:
                    if pf.dead:
                        continue  # applied meanwhile: look again
                    st, size = stat(), pf.size
                    break
            else:
                raise mfusepy.FuseOSError(errno.EAGAIN)
            attrs: dict[str, Any] = {k: getattr(st, k) for k in _STAT_KEYS}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns,
                         st_ctime=st.st_ctime_ns)
            if size is not None:
                attrs["st_size"] = size
                attrs["st_blocks"] = (size + 511) // 512
            return attrs

    def access(self, path: str, amode: int) -> int:
        with self._cut_lock.shared():
            if not os.access(self._real(path), amode):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # Real inode numbers (use_ino): readdir(3) skips entries whose d_ino is 0.
        with self._cut_lock.shared():
            real = self._real(path)
            out = [(name, _dirent(os.lstat(p)), 0)
                   for name, p in ((".", real), ("..", os.path.dirname(real) or real))]
            with os.scandir(real) as entries:
                for e in entries:
                    if path == "/" and e.name == GRAVE:
                        continue
                    out.append((e.name, _dirent(e.stat(follow_symlinks=False)), 0))
            return out

    def opendir(self, path: str) -> int:
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._cut_lock.shared():
            with self._ns_lock:
                self.counters["fsyncdirs"] += 1
                committed = self.journal.directory_synced(path)
            if committed:
                self._forget_unreachable()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                            "f_bavail", "f_files", "f_ffree", "f_favail",
                                            "f_flag", "f_namemax")}

    def chmod(self, path: str, mode: int) -> int:
        with self._cut_lock.shared():
            os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._cut_lock.shared():
            os.chown(self._real(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._cut_lock.shared():
            if times is None:
                os.utime(self._real(path))
            else:
                os.utime(self._real(path), ns=(int(times[0]), int(times[1])))
        return 0

    # --- FUSE: names (journal.py) ---------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        with self._cut_lock.shared(), self._ns_lock:
            os.mkdir(self._real(path), mode)
            self.journal.record(Change.MKDIR, path)
        return 0

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self._cut_lock.shared(), self._ns_lock:
            real = self._real(path)
            existed = os.path.lexists(real)
            fd = os.open(real, (flags & ~_OPEN_DROP) | os.O_RDWR | os.O_CREAT
                         | (flags & os.O_EXCL), mode)
            if not existed:
                self.journal.record(Change.CREATE, path)
            return self._new_handle(fd, flags)

    def unlink(self, path: str) -> int:
        with self._cut_lock.shared(), self._ns_lock:
            grave = self.journal.new_grave()
            os.rename(self._real(path), grave)
            self.journal.record(Change.UNLINK, path, grave=grave)
        return 0

    def rmdir(self, path: str) -> int:
        with self._cut_lock.shared(), self._ns_lock:
            real = self._real(path)
            if os.listdir(real):
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            grave = self.journal.new_grave()
            os.rename(real, grave)
            self.journal.record(Change.RMDIR, path, grave=grave)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._cut_lock.shared(), self._ns_lock:
            src, dst = self._real(old), self._real(new)
            os.lstat(src)  # ENOENT before touching the target
            grave = None
            if os.path.lexists(dst):
                if os.path.isdir(dst) != os.path.isdir(src):
                    raise mfusepy.FuseOSError(errno.EISDIR if os.path.isdir(dst)
                                              else errno.ENOTDIR)
                if os.path.isdir(dst) and os.listdir(dst):
                    raise mfusepy.FuseOSError(errno.ENOTEMPTY)
                grave = self.journal.new_grave()
                os.rename(dst, grave)
            try:
                os.rename(src, dst)
            except OSError:
                if grave is not None:
                    os.rename(grave, dst)
                raise
            self.journal.record(Change.RENAME, old, target=new, grave=grave)
        return 0

    # --- FUSE: data (pages.py) ------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        with self._cut_lock.shared():
            real = self._real(path)
            try:  # read-write always: an fsync through a read-only descriptor writes too
                fd = os.open(real, (flags & ~_OPEN_DROP) | os.O_RDWR)
            except OSError:
                fd = os.open(real, flags & ~(os.O_APPEND | os.O_TRUNC | os.O_CREAT))
            fh = self._new_handle(fd, flags)
        if flags & os.O_TRUNC:
            self.truncate(path, 0, fh)
        return fh

    def release(self, path: str, fh: int) -> int:
        h = self._handles.pop(fh, None)
        if h is not None:
            os.close(h.fd)
            with self._cut_lock.shared():
                self._forget_unreachable(h.ino)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close(2) does not make anything durable

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._cut_lock.shared():
            h = self._handle(fh, fence=False)
            pf = self._pending.get(h.ino)
            if pf is not None:
                with pf.lock:
                    if not pf.dead:
                        return pf.read(offset, size)
            return os.pread(h.fd, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._cut_lock.shared():
            h = self._handle(fh)
            while True:
                pf = self._pending_file(h)
                with pf.lock:
                    if pf.dead:
                        continue
                    added = pf.write(offset, data)
                    break
            with self._map_lock:
                self.counters["writes"] += 1
                self._pending_bytes += added
                over = self._pending_bytes > self._pending_bytes_max
            if over:
                self.counters["writebacks"] += 1
                self._sync_file(h)
            elif h.sync_writes:
                self._sync_file(h)
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._cut_lock.shared():
            if fh:
                self._truncate(self._handle(fh), length)
                return 0
            fd = os.open(self._real(path), os.O_RDWR)
            try:
                self._truncate(_Handle(fd=fd, ino=os.fstat(fd).st_ino, epoch=self._epoch,
                                       sync_writes=False), length)
            finally:
                os.close(fd)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._cut_lock.shared():
            self.counters["fsyncs"] += 1
            self._sync_file(self._handle(fh))
        return 0

    # --- helpers --------------------------------------------------------------------------------

    def _real(self, path: str) -> str:
        if path == f"/{GRAVE}" or path.startswith(f"/{GRAVE}/"):
            raise mfusepy.FuseOSError(errno.ENOENT)
        return self.root + path

    def _new_handle(self, fd: int, flags: int) -> int:
        fh = next(self._fh)
        self._handles[fh] = _Handle(fd=fd, ino=os.fstat(fd).st_ino, epoch=self._epoch,
                                    sync_writes=bool(flags & (os.O_SYNC | os.O_DSYNC)))
        return fh

    def _handle(self, fh: int, *, fence: bool = True) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if fence and h.epoch != self._epoch:
            self.counters["fenced"] += 1
            raise mfusepy.FuseOSError(errno.EIO)  # opened before the power cut
        return h

    def _pending_file(self, h: _Handle) -> PendingFile:
        with self._map_lock:
            pf = self._pending.get(h.ino)
            if pf is None:
                pf = PendingFile(os.dup(h.fd), h.ino)
                self._pending[h.ino] = pf
            return pf

    def _forget_unreachable(self, ino: int | None = None) -> None:
        """Drop the unsynced data of files nobody can ever read again: no name (their unlink is
        durable: the grave is gone) and no open descriptor. Without this, temp files written and
        deleted without fsync would stay in memory until the next cut."""
        candidates = [ino] if ino is not None else list(self._pending)
        open_inos = {h.ino for h in list(self._handles.values())}
        for i in candidates:
            pf = self._pending.get(i)
            if pf is None or i in open_inos:
                continue
            with pf.lock:
                if pf.dead or os.fstat(pf.fd).st_nlink:
                    continue
                with self._map_lock:
                    pf.dead = True
                    self._pending_bytes -= pf.dirty_bytes
                    if self._pending.get(i) is pf:
                        del self._pending[i]
                os.close(pf.fd)

    def _truncate(self, h: _Handle, length: int) -> None:
        while True:
            pf = self._pending_file(h)
            with pf.lock:
                if pf.dead:
                    continue
                released = pf.truncate(length)
                break
        with self._map_lock:
            self._pending_bytes -= released

    def _sync_file(self, h: _Handle) -> None:
        """Apply the file's pending state to the backing file and forget it."""
        pf = self._pending.get(h.ino)
        if pf is None:
            return
        with pf.lock:
            if pf.dead:
                return
            pf.apply()
            with self._map_lock:
                pf.dead = True
                self._pending_bytes -= pf.dirty_bytes
                if self._pending.get(h.ino) is pf:
                    del self._pending[h.ino]
            os.close(pf.fd)


def _dirent(st: os.stat_result) -> dict[str, int]:
    return {"st_ino": st.st_ino, "st_mode": st.st_mode}
