"""The Raft log as the core sees it: a stable part read through ``LogReader`` plus an unstable tail.

Theory of operation (after etcd's ``raftLog``/``unstable``). The runtime owns the durable log
(the storage engine's partition log) and exposes it read-only through ``LogReader``. Entries the
core accepted but the runtime has not yet persisted live in ``RaftLog``'s unstable tail, starting
at offset ``_offset``. Mutations of the stable part are *requested*, never done: a conflicting
append records ``truncate_after`` and a log-start reset records ``reset``; ``take_ready`` hands
them to the runtime with the entries to append, and ``stable_to`` moves entries out of the
unstable tail once the runtime says they are durable.

Invariants:
- every position below ``_offset`` is read from the stable log, and is valid there (a pending
  truncation only removes positions >= ``_offset``);
- ``_unstable`` is contiguous: ``_unstable[0].index == _offset`` and each entry starts right after
  the previous one ends;
- ``_persist_from`` <= the first offset not yet handed to the runtime.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tidelog.node.raft.types import ZERO_INDEX, ZERO_TERM, Entry, LogIndex, Term


class LogReader(Protocol):
    """Read-only view of the durable log. Positions are record offsets (see types.py)."""

    def log_start(self) -> LogIndex:
        """The first offset present (entries before it were removed by retention or a reset)."""
        ...

    def last_index(self) -> LogIndex:
        """The last offset present; ``log_start() - 1`` when empty."""
        ...

    def term_at(self, index: LogIndex) -> Term | None:
        """Term of the entry ENDING at ``index``; at ``log_start() - 1`` the term of the last
        removed entry (0 for a fresh log); None if no entry ends there or out of range."""
        ...

    def entries(self, from_index: LogIndex, max_bytes: int) -> list[Entry]:
        """Entries starting with the one CONTAINING ``from_index``, at least one if any, then
        more while their total ``size_bytes`` stays within ``max_bytes``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LogStart:
    """A log-start reset: drop every entry; the next entry's first offset is ``start``, and the
    (removed) entry ending at ``start - 1`` had term ``term``."""

    start: LogIndex
    term: Term


class MemoryLog:
    """In-memory ``LogReader`` twin with the mutations a runtime performs. Used by the simulator
    and the tests; the broker adapts the storage engine's PartitionLog instead."""

    def __init__(self, start: LogIndex = ZERO_INDEX, start_term: Term = ZERO_TERM) -> None:
        self._entries: list[Entry] = []
        self._lasts: list[int] = []  # Invariant: _lasts[i] == _entries[i].last, ascending
        self._start = start
        self._start_term = start_term

    # --- LogReader ---
    def log_start(self) -> LogIndex:
        return self._start

    def last_index(self) -> LogIndex:
        return self._entries[-1].last if self._entries else LogIndex(self._start - 1)

    def last_term(self) -> Term:
        return self._entries[-1].term if self._entries else self._start_term

    def term_at(self, index: LogIndex) -> Term | None:
        if index == self._start - 1:
            return self._start_term
        i = bisect.bisect_left(self._lasts, index)
        if i < len(self._lasts) and self._lasts[i] == index:
            return self._entries[i].term
        return None

    def entries(self, from_index: LogIndex, max_bytes: int) -> list[Entry]:
        i = bisect.bisect_left(self._lasts, max(from_index, self._start))
        out: list[Entry] = []
        size = 0
        for e in self._entries[i:]:
            size += e.size_bytes
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    # --- mutations (the runtime's side) ---
    def append(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            assert e.index == self.last_index() + 1, f"gap: {e.index} after {self.last_index()}"
            assert e.count >= 1
            self._entries.append(e)
            self._lasts.append(e.last)

    def truncate_after(self, index: LogIndex) -> None:
        """Remove every entry ending after ``index`` (which must be an entry boundary)."""
        assert index >= self._start - 1
        i = bisect.bisect_right(self._lasts, index)
        assert i == 0 or self._lasts[i - 1] == index or index == self._start - 1, "not a boundary"
        del self._entries[i:]
        del self._lasts[i:]

    def reset(self, start: LogIndex, term: Term) -> None:
        self._entries.clear()
        self._lasts.clear()
        self._start, self._start_term = start, term

    def truncate_prefix(self, upto: LogIndex) -> None:
        """Retention: remove entries ending at or before the boundary ``upto``."""
        term = self.term_at(upto)
        assert term is not None, "retention must cut at an entry boundary"
        if upto < self._start:
            return
        i = bisect.bisect_right(self._lasts, upto)
        del self._entries[:i]
        del self._lasts[:i]
        self._start, self._start_term = LogIndex(upto + 1), term

    def all_entries(self) -> list[Entry]:
        return list(self._entries)

    def copy(self) -> MemoryLog:
        m = MemoryLog(self._start, self._start_term)
        m._entries, m._lasts = list(self._entries), list(self._lasts)
        return m


class RaftLog:
    """Stable log (through ``LogReader``) + unstable tail + pending stable-log mutations."""

    def __init__(self, stable: LogReader) -> None:
        self.stable = stable
        self._offset = LogIndex(stable.last_index() + 1)
        self._unstable: list[Entry] = []
        self._persist_from = self._offset  # first unstable offset not yet handed out
        self._truncate_after: LogIndex | None = None
        self._reset: LogStart | None = None  # pending until the runtime confirms it (stable_to)
        self._reset_handed = False

    # --- reads over the combined log ---
    def log_start(self) -> LogIndex:
        return self._reset.start if self._reset is not None else self.stable.log_start()

    def last_index(self) -> LogIndex:
        return self._unstable[-1].last if self._unstable else LogIndex(self._offset - 1)

    def last_term(self) -> Term:
        t = self.term_at(self.last_index())
        assert t is not None
        return t

    def persisted_index(self) -> LogIndex:
        """Last offset the runtime has made durable (and still valid)."""
        return LogIndex(self._offset - 1)

    def term_at(self, index: LogIndex) -> Term | None:
        if index >= self._offset:
            i = bisect.bisect_left(self._unstable, index, key=_last)
            if i < len(self._unstable) and self._unstable[i].last == index:
                return self._unstable[i].term
            return None
        if self._reset is not None:
            return self._reset.term if index == self._reset.start - 1 else None
        return self.stable.term_at(index)

    def matches(self, index: LogIndex, term: Term) -> bool:
        return self.term_at(index) == term

    def entries(self, from_index: LogIndex, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        if from_index < self._offset and self._reset is None:
            for e in self.stable.entries(from_index, max_bytes):
                if e.last >= self._offset:
                    break
                out.append(e)
            max_bytes -= sum(e.size_bytes for e in out)
            if out and (max_bytes <= 0 or out[-1].last < self._offset - 1):
                return out  # the stable part stopped short: never skip to the unstable tail
        i = bisect.bisect_left(self._unstable, max(from_index, self._offset), key=_last)
        size = 0
        for e in self._unstable[i:]:
            size += e.size_bytes
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def boundary_at_or_before(self, index: LogIndex) -> LogIndex:
        """The largest entry boundary <= index (>= log_start - 1 when index is in range)."""
        if index >= self.last_index():
            return self.last_index()
        if index < self.log_start() - 1 or self.term_at(index) is not None:
            return index
        ents = self.entries(index, 1)
        assert ents and ents[0].index <= index <= ents[0].last
        return LogIndex(ents[0].index - 1)

    def find_conflict_by_term(self, index: LogIndex, term: Term) -> tuple[LogIndex, Term]:
        """Fast backtracking: the largest boundary <= index whose term is <= term (etcd's
        findConflictByTerm, on record-offset boundaries). Below the log start it returns the
        index with term 0, which makes the leader fall back to a log-start reset."""
        b = self.boundary_at_or_before(index)
        while True:
            t = self.term_at(b)
            if t is None:  # below our log start: let the other side decide
                return b, Term(0)
            if t <= term or b <= self.log_start() - 1:
                return b, t
            ents = self.entries(b, 1)
            b = LogIndex(ents[0].index - 1)

    def is_up_to_date(self, last_index: LogIndex, last_term: Term) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    # --- mutations requested by the core ---
    def append(self, entries: list[Entry]) -> None:
        """Append after ``entries[0].index - 1`` (a boundary <= last_index), truncating after it."""
        assert entries
        after = LogIndex(entries[0].index - 1)
        assert after <= self.last_index(), "gap in the log"
        assert after >= self.log_start() - 1, "append below the log start"
        for a, b in zip(entries, entries[1:], strict=False):
            assert b.index == a.last + 1, "entries must be contiguous"
        if after >= self._offset - 1:
            i = bisect.bisect_right(self._unstable, after, key=_last)
            del self._unstable[i:]
            self._persist_from = LogIndex(min(self._persist_from, after + 1))
        else:
            self._truncate_after = (
                after
                if self._truncate_after is None
                else LogIndex(min(self._truncate_after, after))
            )
            self._unstable = []
            self._offset = LogIndex(after + 1)
            self._persist_from = self._offset
        self._unstable.extend(entries)

    def reset(self, start: LogStart) -> None:
        self._reset = start
        self._reset_handed = False
        self._truncate_after = None
        self._unstable = []
        self._offset = self._persist_from = start.start

    # --- the Ready/advance handshake ---
    def has_unpersisted(self) -> bool:
        return (
            (self._reset is not None and not self._reset_handed)
            or self._truncate_after is not None
            or (bool(self._unstable) and self._unstable[-1].last >= self._persist_from)
        )

    def take_ready(self) -> tuple[LogStart | None, LogIndex | None, tuple[Entry, ...]]:
        reset = self._reset if (self._reset is not None and not self._reset_handed) else None
        self._reset_handed = self._reset is not None
        trunc, self._truncate_after = self._truncate_after, None
        i = bisect.bisect_left(self._unstable, self._persist_from, key=_last)
        ents = tuple(self._unstable[i:])
        if ents:
            self._persist_from = LogIndex(ents[-1].last + 1)
        return reset, trunc, ents

    def stable_to(self, last: LogIndex | None, term: Term | None) -> None:
        """The runtime made the handed-out reset/truncation and entries up to ``last`` durable."""
        if self._reset_handed:
            self._reset, self._reset_handed = None, False
        if last is None:
            return
        i = bisect.bisect_left(self._unstable, last, key=_last)
        if (
            i < len(self._unstable)
            and self._unstable[i].last == last
            and self._unstable[i].term == term
        ):
            del self._unstable[: i + 1]
            self._offset = LogIndex(last + 1)


def _last(e: Entry) -> int:
    return e.last
