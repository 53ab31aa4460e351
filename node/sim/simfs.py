"""SimFileSystem: the in-memory twin of the storage engine's FileSystem seam, with power loss.

Theory of operation (the fault model LazyFS and the POSIX/ext4 durability rules give us):

* **Inodes.** A file inode has its *volatile* content (the page cache: what reads return) and its
  *durable* content (what the disk holds), plus the data operations made since they last agreed
  (`pending`: writes and size changes, in order). `fsync`/`fdatasync` on any descriptor of the
  inode (a dup'ed one too) makes the current content and size durable.
* **Directories.** A directory inode has volatile and durable entry maps (name -> inode). Every
  name change (create, mkdir, unlink, rename, replace) is a *metadata operation* appended to one
  global, ordered journal of uncommitted operations. `fsync_directory(d)` commits every pending
  operation that touches `d` (a rename between two directories is one operation touching both,
  so it is committed or lost as a whole: `replace` is atomic).
* **Power loss** (`power_loss(rng)`): every descriptor dies. Of the uncommitted metadata journal,
  a random prefix survives (often none: a name not yet made durable vanishes, an unlink or rename
  not yet durable is undone). Then each file reachable from the root through durable names keeps
  its durable content plus an arbitrary subset of its pending data operations, in order, at
  SECTOR granularity: a write may survive whole, not at all, or sector by sector (a torn write;
  a surviving sector past a lost one leaves zeros in the gap); a size change may or may not
  survive. What survives becomes the new durable and volatile state. Inodes no durable name
  reaches are gone.
* **Process crash** (`crash()`, kill -9): descriptors close; the page cache survives, so nothing
  is lost.
* **Faults.** `fail_next_fsync(path | None, errno)`: the next fsync of that file (or of any file)
  raises; as on Linux after a write-back error, the dirty pages are then marked clean: some
  random part of what was pending reached the disk, the rest never will (a later fsync succeeds
  without writing it), yet reads still return it until the next power loss. `capacity_bytes`:
  writes and extensions beyond it fail with ENOSPC (after a partial write of what fits).
  `flip_bit(path, rng)`: bit rot in durable content (the cached copy is damaged too, as if the
  page had been evicted and read back).

Deterministic: no clock, no threads, no global random; sorted listings; descriptor numbers are
never reused. Power loss uses the caller's rng; fsync failures use the rng seeded at construction.
Bounded: sizes, descriptors and inodes are capped (asserts for absurd values, EMFILE for too many
descriptors), and a file's pending operations are written back (made durable, as the kernel's
flusher would) when they exceed PENDING_BYTES_MAX.
"""

from __future__ import annotations

import errno as errno_codes
import os
import posixpath
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SECTOR_BYTES", "SimFileSystem", "SimFsStats"]

SECTOR_BYTES = 512
FILE_BYTES_MAX = 1 << 32  # an assert, not a quota: no simulated file gets near this
WRITE_BYTES_MAX = 1 << 28
INODES_MAX = 1_000_000
DESCRIPTORS_MAX = 65_536
PENDING_BYTES_MAX = 16 << 20  # per file; beyond it the oldest pending writes are written back
GC_EVERY_UNLINKS = 1024  # drop inodes no name, journal entry or descriptor can reach any more
_ROOT = 1


@dataclass(frozen=True, slots=True)
class _Write:
    position: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Resize:
    length: int


_DataOp = _Write | _Resize


@dataclass(slots=True)
class _Inode:
    number: int
    is_dir: bool
    # files
    data: bytearray = field(default_factory=bytearray)  # volatile (page cache)
    durable: bytes = b""
    pending: list[_DataOp] = field(default_factory=list)  # since volatile and durable agreed
    pending_bytes: int = 0
    # directories
    entries: dict[str, int] = field(default_factory=dict)  # volatile names
    durable_entries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _MetaOp:
    """One half of a name change: set `name` in directory `dir_ino` to `target` (None: remove).
    A rename is two halves with the same `seq`."""

    seq: int
    dir_ino: int
    name: str
    target: int | None


@dataclass(slots=True)
class _Descriptor:
    ino: int
    readable: bool
    writable: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SimFsStats:
    """Counters for traces and assertions."""

    writes: int
    bytes_written: int
    fsyncs: int
    directory_fsyncs: int
    failed_fsyncs: int
    power_losses: int
    crashes: int
    enospc: int
    open_descriptors: int


class SimFileSystem:
    """An in-memory FileSystem (see tidelog.node.storage.fs) that models power loss."""

    def __init__(self, *, seed: int = 0, capacity_bytes: int | None = None,
                 sector_bytes: int = SECTOR_BYTES) -> None:
        assert sector_bytes > 0 and sector_bytes & (sector_bytes - 1) == 0, sector_bytes
        self.sector_bytes = sector_bytes
        self.capacity_bytes = capacity_bytes
        self._rng = random.Random(seed)  # only for the outcome of a failed fsync
        self._lock = threading.RLock()  # callers may use executor threads; we start none
        root = _Inode(_ROOT, is_dir=True)
        self._inodes: dict[int, _Inode] = {_ROOT: root}
        self._next_ino = _ROOT + 1
        self._fds: dict[int, _Descriptor] = {}
        self._next_fd = 3
        self._journal: list[_MetaOp] = []  # uncommitted name changes, in order
        self._next_seq = 0
        self._unlinks_since_gc = 0
        self._fail_fsync: list[tuple[str | None, int]] = []
        self._counts = dict(writes=0, bytes_written=0, fsyncs=0, directory_fsyncs=0,
                            failed_fsyncs=0, power_losses=0, crashes=0, enospc=0)

    # ===================================================================== descriptors

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        del mode  # permissions are not modelled
        with self._lock:
            access = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
            writable = access in (os.O_WRONLY, os.O_RDWR)
            parent, name = self._parent_of(path)
            ino = parent.entries.get(name) if name else _ROOT
            if ino is None:
                if not flags & os.O_CREAT:
                    raise _error(errno_codes.ENOENT, path)
                if flags & getattr(os, "O_DIRECTORY", 0):
                    raise _error(errno_codes.ENOENT, path)
                inode = self._new_inode(is_dir=False)
                self._link(parent, name, inode.number)
            else:
                if flags & os.O_CREAT and flags & os.O_EXCL:
                    raise _error(errno_codes.EEXIST, path)
                inode = self._inodes[ino]
                if inode.is_dir and writable:
                    raise _error(errno_codes.EISDIR, path)
                if not inode.is_dir and flags & getattr(os, "O_DIRECTORY", 0):
                    raise _error(errno_codes.ENOTDIR, path)
                if flags & os.O_TRUNC and writable and inode.data:
                    self._resize(inode, 0)
            if len(self._fds) >= DESCRIPTORS_MAX:
                raise _error(errno_codes.EMFILE, path)
            return self._new_fd(_Descriptor(inode.number, readable=access != os.O_WRONLY,
                                            writable=writable))

    def close(self, fd: int) -> None:
        with self._lock:
            self._descriptor(fd)
            del self._fds[fd]

    def dup(self, fd: int) -> int:
        with self._lock:
            d = self._descriptor(fd)
            if len(self._fds) >= DESCRIPTORS_MAX:
                raise _error(errno_codes.EMFILE, None)
            return self._new_fd(_Descriptor(d.ino, readable=d.readable, writable=d.writable))

    def pread(self, fd: int, length: int, position: int) -> bytes:
        with self._lock:
            assert 0 <= length <= WRITE_BYTES_MAX and position >= 0, (length, position)
            d = self._descriptor(fd)
            inode = self._inodes[d.ino]
            if inode.is_dir:
                raise _error(errno_codes.EISDIR, None)
            if not d.readable:
                raise _error(errno_codes.EBADF, None)
            return bytes(inode.data[position: position + length])

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> int:
        with self._lock:
            payload = bytes(data)
            assert len(payload) <= WRITE_BYTES_MAX, len(payload)
            assert position >= 0 and position + len(payload) <= FILE_BYTES_MAX, position
            d = self._descriptor(fd)
            inode = self._inodes[d.ino]
            if not d.writable or inode.is_dir:
                raise _error(errno_codes.EBADF, None)
            if not payload:
                return 0
            growth = max(0, position + len(payload) - len(inode.data))
            room = self._room_bytes()
            if growth > room:
                fits = len(payload) - (growth - room)
                if fits <= 0:
                    self._counts["enospc"] += 1
                    raise _error(errno_codes.ENOSPC, None)
                payload = payload[:fits]  # a short write; the caller's next call gets ENOSPC
            self._write(inode, position, payload)
            self._counts["writes"] += 1
            self._counts["bytes_written"] += len(payload)
            return len(payload)

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            assert 0 <= length <= FILE_BYTES_MAX, length
            d = self._descriptor(fd)
            inode = self._inodes[d.ino]
            if not d.writable or inode.is_dir:
                raise _error(errno_codes.EINVAL, None)
            if length - len(inode.data) > self._room_bytes():
                self._counts["enospc"] += 1
                raise _error(errno_codes.ENOSPC, None)
            self._resize(inode, length)

    def fsync(self, fd: int) -> None:
        with self._lock:
            inode = self._inodes[self._descriptor(fd).ino]
            if inode.is_dir:
                self._sync_directory(inode, None)
                return
            self._counts["fsyncs"] += 1
            failure = self._take_fsync_failure(inode)
            if failure is not None:
                self._fail_file_sync(inode)
                raise _error(failure, None)
            self._make_durable(inode)

    def fdatasync(self, fd: int) -> None:
        # Size is data here (as fdatasync flushes it when reading the data needs it).
        self.fsync(fd)

    def fstat_size(self, fd: int) -> int:
        with self._lock:
            inode = self._inodes[self._descriptor(fd).ino]
            return 0 if inode.is_dir else len(inode.data)

    # ===================================================================== names

    def stat_size(self, path: Path) -> int:
        with self._lock:
            inode = self._lookup(path)
            return 0 if inode.is_dir else len(inode.data)

    def exists(self, path: Path) -> bool:
        with self._lock:
            return self._lookup_or_none(path) is not None

    def is_dir(self, path: Path) -> bool:
        with self._lock:
            inode = self._lookup_or_none(path)
            return inode is not None and inode.is_dir

    def listdir(self, path: Path) -> list[str]:
        with self._lock:
            inode = self._lookup(path)
            if not inode.is_dir:
                raise _error(errno_codes.ENOTDIR, path)
            return sorted(inode.entries)

    def mkdir(self, path: Path, *, parents: bool = False, exist_ok: bool = False) -> None:
        with self._lock:
            existing = self._lookup_or_none(path)
            if existing is not None:
                if exist_ok and existing.is_dir:
                    return
                raise _error(errno_codes.EEXIST, path)
            try:
                parent, name = self._parent_of(path)
            except FileNotFoundError:
                if not parents:
                    raise
                self.mkdir(Path(posixpath.dirname(_normal(path))), parents=True, exist_ok=True)
                parent, name = self._parent_of(path)
            inode = self._new_inode(is_dir=True)
            self._link(parent, name, inode.number)

    def unlink(self, path: Path) -> None:
        with self._lock:
            parent, name = self._parent_of(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise _error(errno_codes.ENOENT, path)
            if self._inodes[ino].is_dir:
                raise _error(errno_codes.EISDIR, path)
            self._unlink(parent, name)

    def replace(self, src: Path, dst: Path) -> None:
        with self._lock:
            src_parent, src_name = self._parent_of(src)
            dst_parent, dst_name = self._parent_of(dst)
            ino = src_parent.entries.get(src_name)
            if ino is None:
                raise _error(errno_codes.ENOENT, src)
            target = dst_parent.entries.get(dst_name)
            if target is not None and self._inodes[target].is_dir:
                raise _error(errno_codes.EISDIR, dst)
            if self._inodes[ino].is_dir and target is not None:
                raise _error(errno_codes.ENOTDIR, dst)
            if (src_parent.number, src_name) == (dst_parent.number, dst_name):
                return
            seq = self._seq()
            del src_parent.entries[src_name]
            dst_parent.entries[dst_name] = ino
            self._journal.append(_MetaOp(seq, src_parent.number, src_name, None))
            self._journal.append(_MetaOp(seq, dst_parent.number, dst_name, ino))

    def rmtree(self, path: Path) -> None:
        with self._lock:
            inode = self._lookup(path)
            if not inode.is_dir:
                raise _error(errno_codes.ENOTDIR, path)
            self._remove_tree(inode)
            parent, name = self._parent_of(path)
            self._unlink(parent, name)

    def fsync_directory(self, path: Path) -> None:
        with self._lock:
            inode = self._lookup(path)
            if not inode.is_dir:
                raise _error(errno_codes.ENOTDIR, path)
            self._sync_directory(inode, path)

    # ===================================================================== faults

    def power_loss(self, rng: random.Random) -> None:
        """Cut power: descriptors die; only durable state and a random part of the rest
        survive (see the module doc)."""
        with self._lock:
            self._counts["power_losses"] += 1
            self._fds.clear()
            self._fail_fsync.clear()
            seqs = sorted({op.seq for op in self._journal})
            kept = 0 if not seqs or rng.random() < 0.5 else rng.randint(0, len(seqs))
            survivors = set(seqs[:kept])
            for op in self._journal:
                if op.seq in survivors:
                    self._apply_durably(op)
            self._journal.clear()
            reachable = self._reachable_durably()
            for number in list(self._inodes):
                if number not in reachable:
                    del self._inodes[number]
                    continue
                inode = self._inodes[number]
                if inode.is_dir:
                    inode.entries = dict(inode.durable_entries)
                else:
                    content = self._surviving_content(inode, rng)
                    inode.durable = bytes(content)
                    inode.data = content
                    inode.pending.clear()
                    inode.pending_bytes = 0

    def crash(self) -> None:
        """A process crash (kill -9): descriptors close, the page cache survives."""
        with self._lock:
            self._counts["crashes"] += 1
            self._fds.clear()

    def fail_next_fsync(self, path: Path | None = None, errno: int = errno_codes.EIO) -> None:
        """The next fsync of `path` (any file or directory when None) raises OSError(errno)."""
        with self._lock:
            self._fail_fsync.append((None if path is None else _normal(path), errno))

    def flip_bit(self, path: Path, rng: random.Random, *, start: int = 0,
                 end: int | None = None) -> int:
        """Flip one random bit of the file's durable content in [start, end); returns the bit's
        position (byte * 8 + bit). The cached copy shows the damage too."""
        with self._lock:
            inode = self._lookup(path)
            assert not inode.is_dir, path
            stop = len(inode.durable) if end is None else min(end, len(inode.durable))
            assert 0 <= start < stop, f"no durable bytes in [{start}, {stop}) of {path}"
            byte = rng.randrange(start, stop)
            bit = rng.randrange(8)
            durable = bytearray(inode.durable)
            before = durable[byte]
            durable[byte] ^= 1 << bit
            inode.durable = bytes(durable)
            if byte < len(inode.data) and inode.data[byte] == before:
                inode.data[byte] ^= 1 << bit
            return byte * 8 + bit

    # ===================================================================== inspection

    def read(self, path: Path) -> bytes:
        """The file's current (cached) content."""
        with self._lock:
            inode = self._lookup(path)
            assert not inode.is_dir, path
            return bytes(inode.data)

    def read_durable(self, path: Path) -> bytes | None:
        """What a power loss that kept nothing unsynced would leave at `path` (None: no file)."""
        with self._lock:
            inode = self._lookup_durable(path)
            if inode is None or inode.is_dir:
                return None
            return inode.durable

    def listdir_durable(self, path: Path) -> list[str] | None:
        """Names in `path` that survive any power loss (None: the directory itself may not)."""
        with self._lock:
            inode = self._lookup_durable(path)
            if inode is None or not inode.is_dir:
                return None
            return sorted(inode.durable_entries)

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    @property
    def inode_count(self) -> int:
        with self._lock:
            return len(self._inodes)

    @property
    def stats(self) -> SimFsStats:
        with self._lock:
            return SimFsStats(open_descriptors=len(self._fds), **self._counts)

    # ===================================================================== helpers: names

    def _lookup_or_none(self, path: Path) -> _Inode | None:
        inode = self._inodes[_ROOT]
        for part in _parts(path):
            if not inode.is_dir:
                return None
            ino = inode.entries.get(part)
            if ino is None:
                return None
            inode = self._inodes[ino]
        return inode

    def _lookup(self, path: Path) -> _Inode:
        inode = self._lookup_or_none(path)
        if inode is None:
            raise _error(errno_codes.ENOENT, path)
        return inode

    def _lookup_durable(self, path: Path) -> _Inode | None:
        inode = self._inodes[_ROOT]
        for part in _parts(path):
            ino = inode.durable_entries.get(part) if inode.is_dir else None
            if ino is None or ino not in self._inodes:
                return None
            inode = self._inodes[ino]
        return inode

    def _parent_of(self, path: Path) -> tuple[_Inode, str]:
        parts = _parts(path)
        if not parts:
            return self._inodes[_ROOT], ""
        parent = self._inodes[_ROOT]
        for part in parts[:-1]:
            ino = parent.entries.get(part)
            if ino is None:
                raise _error(errno_codes.ENOENT, path)
            parent = self._inodes[ino]
            if not parent.is_dir:
                raise _error(errno_codes.ENOTDIR, path)
        return parent, parts[-1]

    def _new_inode(self, *, is_dir: bool) -> _Inode:
        assert len(self._inodes) < INODES_MAX, "simulated file system: too many inodes"
        inode = _Inode(self._next_ino, is_dir=is_dir)
        self._next_ino += 1
        self._inodes[inode.number] = inode
        return inode

    def _new_fd(self, descriptor: _Descriptor) -> int:
        fd = self._next_fd
        self._next_fd += 1  # never reused: a stale descriptor fails instead of aliasing
        self._fds[fd] = descriptor
        return fd

    def _descriptor(self, fd: int) -> _Descriptor:
        d = self._fds.get(fd)
        if d is None:
            raise _error(errno_codes.EBADF, None)
        return d

    def _seq(self) -> int:
        self._next_seq += 1
        return self._next_seq

    def _link(self, parent: _Inode, name: str, ino: int) -> None:
        parent.entries[name] = ino
        self._journal.append(_MetaOp(self._seq(), parent.number, name, ino))

    def _unlink(self, parent: _Inode, name: str) -> None:
        del parent.entries[name]
        self._journal.append(_MetaOp(self._seq(), parent.number, name, None))
        self._unlinks_since_gc += 1
        if self._unlinks_since_gc >= GC_EVERY_UNLINKS:
            self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Forget inodes that nothing can reach: no volatile or durable name, no uncommitted
        journal entry (it could come back at a power loss), no open descriptor. Keeps a long
        simulation's memory bounded by its live files."""
        self._unlinks_since_gc = 0
        roots = {_ROOT} | {op.target for op in self._journal if op.target is not None} \
            | {d.ino for d in self._fds.values()}
        seen: set[int] = set()
        stack = [r for r in roots if r in self._inodes]
        while stack:
            number = stack.pop()
            if number in seen:
                continue
            seen.add(number)
            inode = self._inodes[number]
            if inode.is_dir:
                stack.extend(i for i in (*inode.entries.values(),
                                         *inode.durable_entries.values())
                             if i in self._inodes and i not in seen)
        for number in [n for n in self._inodes if n not in seen]:
            del self._inodes[number]

    def _remove_tree(self, directory: _Inode) -> None:
        for name in sorted(directory.entries):
            child = self._inodes[directory.entries[name]]
            if child.is_dir:
                self._remove_tree(child)
            self._unlink(directory, name)

    def _sync_directory(self, inode: _Inode, path: Path | None) -> None:
        self._counts["directory_fsyncs"] += 1
        failure = self._take_fsync_failure(inode)
        if failure is not None:
            raise _error(failure, path)  # its pending name changes stay uncommitted
        seqs = {op.seq for op in self._journal if op.dir_ino == inode.number}
        if not seqs:
            return
        remaining = []
        for op in self._journal:
            if op.seq in seqs:
                self._apply_durably(op)
            else:
                remaining.append(op)
        self._journal = remaining

    def _apply_durably(self, op: _MetaOp) -> None:
        directory = self._inodes.get(op.dir_ino)
        if directory is None:
            return
        if op.target is None:
            directory.durable_entries.pop(op.name, None)
        else:
            directory.durable_entries[op.name] = op.target

    def _reachable_durably(self) -> set[int]:
        seen = {_ROOT}
        stack = [_ROOT]
        while stack:
            inode = self._inodes[stack.pop()]
            for ino in inode.durable_entries.values():
                if ino not in seen and ino in self._inodes:
                    seen.add(ino)
                    if self._inodes[ino].is_dir:
                        stack.append(ino)
        return seen

    # ===================================================================== helpers: data

    def _write(self, inode: _Inode, position: int, payload: bytes) -> None:
        _apply(inode.data, _Write(position, payload))
        self._add_pending(inode, _Write(position, payload), len(payload))

    def _resize(self, inode: _Inode, length: int) -> None:
        _apply(inode.data, _Resize(length))
        self._add_pending(inode, _Resize(length), 0)

    def _add_pending(self, inode: _Inode, op: _DataOp, size: int) -> None:
        inode.pending.append(op)
        inode.pending_bytes += size
        while inode.pending_bytes > PENDING_BYTES_MAX:  # the kernel's flusher writes back
            oldest = inode.pending.pop(0)
            inode.durable = bytes(_apply(bytearray(inode.durable), oldest))
            if isinstance(oldest, _Write):
                inode.pending_bytes -= len(oldest.data)

    def _make_durable(self, inode: _Inode) -> None:
        # The pending operations, not the cached content: after a failed fsync the cache holds
        # data that no later fsync writes (see _fail_file_sync).
        content = bytearray(inode.durable)
        for op in inode.pending:
            _apply(content, op)
        inode.durable = bytes(content)
        inode.pending.clear()
        inode.pending_bytes = 0

    def _fail_file_sync(self, inode: _Inode) -> None:
        """Linux after a write-back error: part of the dirty data reached the disk, the pages are
        marked clean anyway, so the rest is never written (but stays readable in the cache)."""
        self._counts["failed_fsyncs"] += 1
        inode.durable = bytes(self._surviving_content(inode, self._rng))
        inode.pending.clear()
        inode.pending_bytes = 0

    def _take_fsync_failure(self, inode: _Inode) -> int | None:
        for i, (path, code) in enumerate(self._fail_fsync):
            if path is None or self._lookup_or_none(Path(path)) is inode:
                del self._fail_fsync[i]
                return code
        return None

    def _surviving_content(self, inode: _Inode, rng: random.Random) -> bytearray:
        content = bytearray(inode.durable)
        for op in inode.pending:
            if isinstance(op, _Resize):
                if rng.random() < 0.5:
                    _apply(content, op)
                continue
            fate = rng.random()
            if fate < 1 / 3:
                continue  # lost whole
            if fate < 2 / 3:
                _apply(content, op)  # survived whole
                continue
            for chunk in _sector_chunks(op, self.sector_bytes):  # torn
                if rng.random() < 0.5:
                    _apply(content, chunk)
        return content

    def _used_bytes(self) -> int:
        return sum(len(i.data) for i in self._inodes.values() if not i.is_dir)

    def _room_bytes(self) -> int:
        if self.capacity_bytes is None:
            return FILE_BYTES_MAX
        return max(0, self.capacity_bytes - self._used_bytes())


def _apply(content: bytearray, op: _DataOp) -> bytearray:
    if isinstance(op, _Resize):
        if op.length < len(content):
            del content[op.length:]
        else:
            content.extend(bytes(op.length - len(content)))
        return content
    if op.position > len(content):
        content.extend(bytes(op.position - len(content)))
    content[op.position: op.position + len(op.data)] = op.data
    return content


def _sector_chunks(op: _Write, sector: int) -> list[_Write]:
    chunks = []
    position = op.position
    end = op.position + len(op.data)
    while position < end:
        stop = min(end, (position // sector + 1) * sector)
        chunks.append(_Write(position, op.data[position - op.position: stop - op.position]))
        position = stop
    return chunks


def _normal(path: Path | str) -> str:
    """Absolute, normalised; a relative path is taken from the root (there is no cwd)."""
    return posixpath.normpath("/" + str(path).lstrip("/"))


def _parts(path: Path | str) -> tuple[str, ...]:
    return tuple(p for p in _normal(path).split("/") if p)


def _error(code: int, path: Path | str | None) -> OSError:
    message = os.strerror(code)
    return OSError(code, message) if path is None else OSError(code, message, str(path))
