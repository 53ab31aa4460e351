"""What a replica keeps on disk beside its log, and in which file each part lives.

Two files, split by how they are written (defects 4 and 6 of issue 11):

* ``raft.state`` — term, vote, membership, the log start's (offset, term) and a commit hint.
  Written only atomically AND durably (temp file, fsync, rename, fsync of the directory), after
  the log writes it depends on are durable (etcd's order: entries, then HardState). Nothing is
  ever written to it lazily: a power loss leaves the old or the new file, never a damaged one.
* ``raft.durable`` — the durable "recover to" marker: the highest offset this replica has
  promised as durable (acknowledged to a leader, or counted towards commit as the leader), and
  the commit index at that moment. Rewritten in place after every log fsync and BEFORE the
  acknowledgement is sent: two checksummed, sequence-numbered records in two 512-byte sectors,
  written alternately, each followed by fdatasync. A torn write damages at most the record being
  written; the other one still holds the previous promise, which is the newest durable one.

On restart a log that ends below the marker lost entries it acknowledged (a bit flip cut as a
torn tail, a quarantined segment): the replica neither votes nor campaigns until a leader has
given them back (``RaftCore(recover_to=...)``).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import xxhash
from tidelog.node.raft import Membership
from tidelog.node.storage import read_checksummed, write_checksummed
from tidelog.node.storage.fs import OS_FS, FileSystem

__all__ = [
    "DURABLE_FILE",
    "RAFT_STATE_FILE",
    "DurableMarker",
    "MarkerRecord",
    "RaftStateFile",
    "read_state",
    "write_state",
]

RAFT_STATE_FILE = "raft.state"
DURABLE_FILE = "raft.durable"


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftStateFile:
    """The durable part of a replica's Raft state (see the module docstring).

    ``log_start``/``prefix_term``: the log starts at ``log_start`` and the entry ending at
    ``log_start - 1`` had term ``prefix_term``. Recorded BEFORE the log is reset or cut at the
    front, so a crash in between is finished on restart (``reset`` says which of the two).
    ``log_start`` -1: an old file that did not record it (the prefix term applies to the log's
    start, whatever it is). ``commit``: a hint, never above the log that was durable when the
    file was written.
    """

    term: int = 0
    vote: int | None = None
    commit: int = -1
    membership: Membership | None = None
    log_start: int = -1
    prefix_term: int = 0
    reset: bool = False

    def encode(self) -> bytes:
        return json.dumps({
            "term": self.term, "vote": self.vote, "commit": self.commit,
            "membership": self.membership.encode().hex() if self.membership else None,
            "log_start": self.log_start, "prefix_term": self.prefix_term, "reset": self.reset,
        }, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> RaftStateFile:
        d = json.loads(data)
        if d.get("membership") is not None:
            membership: Membership | None = Membership.decode(bytes.fromhex(d["membership"]))
        elif d.get("voters"):  # the first format kept voters and learners field by field
            membership = Membership(voters=frozenset(d["voters"]),
                                    learners=frozenset(d.get("learners", ())))
        else:
            membership = None
        return cls(term=d["term"], vote=d["vote"], commit=d["commit"], membership=membership,
                   log_start=d.get("log_start", -1), prefix_term=d.get("prefix_term", 0),
                   reset=d.get("reset", False))


def read_state(directory: Path, fs: FileSystem = OS_FS) -> RaftStateFile:
    """The state, or a fresh one. A damaged raft.state raises CorruptFileError: it is written
    durably and atomically, so damage is real damage, never a torn lazy write."""
    data = _read(directory / RAFT_STATE_FILE, fs)
    return RaftStateFile.decode(data) if data is not None else RaftStateFile()


def write_state(directory: Path, state: RaftStateFile, fs: FileSystem = OS_FS) -> None:
    """Atomic and durable (blocking: run it off the event loop)."""
    _write(directory / RAFT_STATE_FILE, state.encode(), fs)


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkerRecord:
    seq: int
    durable_upto: int
    """Every offset up to here was fsynced and may have been acknowledged."""
    commit: int
    """The commit index when the record was written (<= durable_upto)."""


_SECTOR = 512
_RECORD = struct.Struct(">4sQqq")
_CHECK = struct.Struct(">Q")
_MAGIC = b"TLDM"


class DurableMarker:
    """The two-slot ``raft.durable`` file. Blocking methods: call them off the event loop."""

    def __init__(self, directory: Path, fs: FileSystem = OS_FS) -> None:
        self._fs = fs
        self._path = directory / DURABLE_FILE
        existed = fs.exists(self._path)
        self.last = _load(self._path, fs) if existed else None
        self._fd: int | None = fs.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        if not existed:
            fs.fsync(self._fd)
            fs.fsync_directory(directory)

    def write(self, *, durable_upto: int, commit: int) -> None:
        """Durable when it returns (pwrite of one sector + fdatasync)."""
        assert self._fd is not None, "marker closed"
        assert commit <= durable_upto or commit < 0, (commit, durable_upto)
        seq = (self.last.seq + 1) if self.last is not None else 1
        body = _RECORD.pack(_MAGIC, seq, durable_upto, commit)
        record = body + _CHECK.pack(xxhash.xxh3_64_intdigest(body))
        self._fs.pwrite(self._fd, record, (seq % 2) * _SECTOR)
        self._fs.fdatasync(self._fd)
        self.last = MarkerRecord(seq=seq, durable_upto=durable_upto, commit=commit)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._fs.close(fd)


def _load(path: Path, fs: FileSystem) -> MarkerRecord | None:
    fd = fs.open(path, os.O_RDONLY)
    try:
        raw = fs.pread(fd, 2 * _SECTOR, 0)
    finally:
        fs.close(fd)
    best: MarkerRecord | None = None
    for slot in (0, 1):
        chunk = raw[slot * _SECTOR: slot * _SECTOR + _RECORD.size + _CHECK.size]
        if len(chunk) < _RECORD.size + _CHECK.size:
            continue
        body, (check,) = chunk[:_RECORD.size], _CHECK.unpack_from(chunk, _RECORD.size)
        if xxhash.xxh3_64_intdigest(body) != check:
            continue  # torn or never written: the other slot holds the newest durable record
        magic, seq, upto, commit = _RECORD.unpack(body)
        if magic == _MAGIC and (best is None or seq > best.seq):
            best = MarkerRecord(seq=seq, durable_upto=upto, commit=commit)
    return best


def _read(path: Path, fs: FileSystem) -> bytes | None:
    return read_checksummed(path, fs=fs)


def _write(path: Path, payload: bytes, fs: FileSystem) -> None:
    write_checksummed(path, payload, fs=fs)
