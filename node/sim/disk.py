"""Simulated disk of one replica: durable hard state + membership + log, and storage faults.

Each ``Ready`` is written and fsynced as a unit, unless the simulator crashes the replica in the
middle of it: then the hard state may or may not have reached the disk, the log operations are
applied only partly, and the last entry written can be torn (its checksum fails on restart, so
it is dropped like any unsynced tail). None of that was acknowledged, so Raft must cope.

A bit flip damages an entry that *was* durable and possibly acknowledged. The runtime detects it
on restart (checksum), truncates before it, and tells the core ``recover_to`` (the last offset
the log held, i.e. the most it can have acknowledged). The marker is durable until the core
reports ``Ready.recovered``.

``chains`` gives every entry a hash of the whole log prefix ending with it, for the checker's
Log Matching test (two entries with the same last offset and term must have the same chain).
"""

from __future__ import annotations

import random

from tidelog.node.raft import Entry, HardState, LogIndex, Membership, MemoryLog, Ready

UNKNOWN_CHAIN = -1


class SimDisk:
    def __init__(self, membership: Membership) -> None:
        self.log = MemoryLog()
        self.hard_state = HardState()
        self.membership = membership
        self.recover_to: LogIndex | None = None
        self.corrupt_index: LogIndex | None = None  # first offset of a bit-flipped entry
        self.chains: dict[int, int] = {-1: 0}  # entry last offset -> prefix hash
        self.torn_writes = 0

    def write(self, rd: Ready, start_chain: int | None) -> list[Entry]:
        """Persist a whole Ready durably. Returns the entries appended (for the checker)."""
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.membership is not None:
            self.membership = rd.membership
        self._apply_log_ops(rd, len(rd.entries), start_chain)
        if rd.recovered:
            self.recover_to = None
        return list(rd.entries)

    def write_partial(self, rd: Ready, rng: random.Random, start_chain: int | None) -> list[Entry]:
        """A crash in the middle of persisting ``rd`` (nothing of it was acknowledged)."""
        if rd.hard_state is not None and rng.random() < 0.5:
            self.hard_state = rd.hard_state
            if rd.membership is not None:
                self.membership = rd.membership
        if rng.random() < 0.5:
            return []
        kept = rng.randint(0, len(rd.entries))
        if kept < len(rd.entries) and rng.random() < 0.5:
            self.torn_writes += 1  # the next entry was half-written; the checksum drops it
        self._apply_log_ops(rd, kept, start_chain)
        return list(rd.entries[:kept])

    def _apply_log_ops(self, rd: Ready, n_entries: int, start_chain: int | None) -> None:
        if rd.reset_log_to is not None:
            self.log.reset(rd.reset_log_to.start, rd.reset_log_to.term)
            self.chains = {
                rd.reset_log_to.start - 1: UNKNOWN_CHAIN if start_chain is None else start_chain
            }
        if rd.truncate_after is not None:
            for e in self.log.entries(LogIndex(rd.truncate_after + 1), 1 << 62):
                self.chains.pop(e.last, None)
            self.log.truncate_after(rd.truncate_after)
        ents = rd.entries[:n_entries]
        self.log.append(ents)
        for e in ents:
            prev = self.chains.get(e.index - 1, UNKNOWN_CHAIN)
            self.chains[e.last] = (
                UNKNOWN_CHAIN
                if prev == UNKNOWN_CHAIN
                else hash((prev, e.term, e.last, e.count, e.kind, e.data))
            )

    def retain_from(self, upto: LogIndex) -> None:
        """Retention: delete entries ending at or before the boundary ``upto``."""
        for e in self.log.entries(self.log.log_start(), 1 << 62):
            if e.last >= upto:
                break
            self.chains.pop(e.last, None)
        self.chains.pop(self.log.log_start() - 1, None)
        self.log.truncate_prefix(upto)

    def flip_bit(self, rng: random.Random) -> bool:
        ents = self.log.entries(self.log.log_start(), 1 << 62)
        if not ents:
            return False
        self.corrupt_index = rng.choice(ents).index
        return True

    def recover_on_restart(self) -> LogIndex | None:
        """What the runtime does at start: verify checksums; a damaged entry loses the tail."""
        if self.corrupt_index is not None:
            acked = self.log.last_index()
            cut = LogIndex(self.corrupt_index - 1)
            for e in self.log.entries(self.corrupt_index, 1 << 62):
                self.chains.pop(e.last, None)
            self.log.truncate_after(cut)
            self.corrupt_index = None
            self.recover_to = (
                acked if self.recover_to is None else LogIndex(max(acked, self.recover_to))
            )
        return self.recover_to
