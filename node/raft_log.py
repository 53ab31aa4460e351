"""The Raft log of a replica IS its partition log: this adapter lets the core read it as entries.

Raft positions are record offsets (see tidelog.node.raft.types): entry = one stored batch. DATA
entries' data is the batch itself; NOOP and CONFIG entries are control batches whose single record
holds the core's payload. `to_batch` is the inverse used when persisting what the core emits.

Every replica runs `to_batch` itself, so it must be a pure function of the entry (index, term,
kind, data): replicas of a committed prefix are then byte-identical, and a digest of the prefix
(storage/digest.py) can compare them. Control batches therefore carry no wall-clock time (their
timestamps are the codec's NO_TIMESTAMP), and DATA batches are the leader's bytes, stamped.
"""

from __future__ import annotations

from tidelog.node.raft.types import Entry, EntryKind, LogIndex, Term
from tidelog.node.storage import PartitionLog
from tidelog.proto.batch import (
    ControlType,
    decode_header,
    decode_records,
    encode_control_batch,
    iter_batches,
    stamp,
)

_KIND_BY_CONTROL = {
    ControlType.RAFT_NOOP: EntryKind.NOOP,
    ControlType.RAFT_CONFIG: EntryKind.CONFIG,
}
_CONTROL_BY_KIND = {v: k for k, v in _KIND_BY_CONTROL.items()}


def to_batch(entry: Entry) -> bytes:
    """The bytes stored for an entry (base offset and term stamped in); the same on every
    replica and at every call."""
    if entry.kind is EntryKind.DATA:
        return stamp(entry.data, base_offset=entry.index, term=entry.term)
    return encode_control_batch(
        _CONTROL_BY_KIND[entry.kind], entry.data, base_offset=entry.index, term=entry.term,
    )


def to_entry(batch: bytes | memoryview) -> Entry:
    header = decode_header(batch)
    kind = _KIND_BY_CONTROL.get(header.control_type, EntryKind.DATA) if header.is_control \
        else EntryKind.DATA
    if kind is EntryKind.DATA:
        data = bytes(batch)
    elif kind is EntryKind.CONFIG:
        data = decode_records(bytes(batch))[0].value or b""
    else:
        data = b""
    return Entry(term=Term(header.term), index=LogIndex(header.base_offset),
                 count=header.last_offset_delta + 1, kind=kind, data=data)


class PartitionRaftLog:
    """LogReader over a PartitionLog. `prefix_term`: the term of the entry just below log start."""

    def __init__(self, log: PartitionLog, prefix_term: int = 0) -> None:
        self.log = log
        self.prefix_term = prefix_term

    def log_start(self) -> LogIndex:
        return LogIndex(self.log.log_start_offset)

    def last_index(self) -> LogIndex:
        return LogIndex(self.log.log_end_offset - 1)

    def last_term(self) -> Term:
        if self.log.log_end_offset == self.log.log_start_offset:
            return Term(self.prefix_term)
        return Term(self.log.last_term)

    def term_at(self, index: int) -> Term | None:
        if index == self.log.log_start_offset - 1:
            return Term(self.prefix_term)
        if not self.log.log_start_offset <= index < self.log.log_end_offset:
            return None
        header = self.log.batch_header_at(index)
        if header is None or header.last_offset != index:
            return None
        return Term(header.term)

    def entries(self, from_index: int, max_bytes: int) -> list[Entry]:
        """LogReader's contract: entries continue while they fit in max_bytes. A read stops at
        a segment's end, so read on into the next segment (the core skips to its unstable tail
        after the stable entries: a short answer would leave a gap, found by the simulator)."""
        out: list[Entry] = []
        size = 0
        end = self.log.log_end_offset
        while from_index < end:
            raw = self.log.read(from_index, max(max_bytes - size, 1))
            view = memoryview(raw)
            for pos, header in iter_batches(raw):
                entry = to_entry(view[pos:pos + header.size])
                size += entry.size_bytes
                if out and size > max_bytes:
                    return out
                out.append(entry)
                from_index = entry.last + 1
            if not raw:
                break
        return out
