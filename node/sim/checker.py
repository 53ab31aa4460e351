"""Safety checker: a separate object the simulated cluster feeds with what the REAL replicas do.

It sees only the replicas' outputs (the soft-state and apply callbacks, the logs they keep, what a
restarted replica believes, the acknowledgements clients got), never the harness's intentions.

Properties (Raft paper Figure 3, plus ours):
- Election Safety: at most one leader per term.
- Log Matching: entries with the same last offset and term have the same prefix. Checked on the
  logs of every replica, periodically and at each restart, with prefix hashes ("chains").
- Leader Completeness: a new leader's log holds the newest entry committed so far.
- State Machine Safety: no two replicas apply (or, restarted, believe committed) different
  entries at one offset. A restarted replica's restored commit index counts as a claim that
  everything up to it is committed: persisting a commit index over an entry that never
  committed is caught here (the metadata state machine would replay it).
- Apply order: each replica applies a contiguous run of entries, in order, without repeats.
- Durability of acknowledged writes: every entry whose ``wait_committed`` returned is committed
  and held by a majority of the final logs (a replica still recovering from a damaged log
  counts as neither holder nor loser, but someone must hold it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import xxhash
from tidelog.node.raft import LogIndex, NodeId, Term

UNKNOWN_CHAIN = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


class SafetyViolation(Exception):
    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


@dataclass(frozen=True, slots=True, kw_only=True)
class Acked:
    index: LogIndex
    last: LogIndex
    term: Term
    key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """An entry as the checker compares it: its offsets, term and identity (``key``)."""

    index: int
    last: int
    term: int
    key: bytes


def chain_of(prev: int, e: Seen) -> int:
    if prev == UNKNOWN_CHAIN:
        return UNKNOWN_CHAIN
    return xxhash.xxh3_64_intdigest(b"%d|%d|%d|%d|" % (prev, e.index, e.last, e.term) + e.key)


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[int, NodeId] = {}
        self.entry_chains: dict[tuple[int, int], int] = {}  # (last, term) -> chain
        self.committed: dict[int, Seen] = {}  # last -> entry
        self.committed_at: dict[int, Seen] = {}  # every offset -> the entry covering it
        self.committed_chain: dict[int, int] = {-1: 0}  # last -> chain of the committed prefix
        self.commit_max: int = -1
        self.applied_upto: dict[NodeId, int] = {}
        self.acked: list[Acked] = []

    def fail(self, rule: str, detail: str) -> None:
        raise SafetyViolation(Violation(rule=rule, detail=detail))

    # -- leaders ---------------------------------------------------------------------------

    def on_leader(self, node: NodeId, term: int, entry_at: Callable[[int], Seen | None],
                  log_start: int) -> None:
        """``entry_at``: the new leader's entry ending at an offset (unstable tail included)."""
        other = self.leaders.setdefault(term, node)
        if other != node:
            self.fail("Election Safety", f"nodes {other} and {node} both led term {term}")
        c = self.commit_max
        if c >= log_start and c in self.committed:
            mine = entry_at(c)
            want = self.committed[c]
            if mine is None or (mine.term, mine.key) != (want.term, want.key):
                self.fail("Leader Completeness",
                          f"node {node} leads term {term} without committed entry ending at {c} "
                          f"(t{want.term}); it holds {mine}")

    # -- logs ------------------------------------------------------------------------------

    def check_log(self, node: NodeId, log_start: int, entries: Iterable[Seen]) -> None:
        """Log Matching over one replica's whole log."""
        chain = self.committed_chain.get(log_start - 1, UNKNOWN_CHAIN)
        for e in entries:
            chain = chain_of(chain, e)
            if chain == UNKNOWN_CHAIN:
                return
            seen = self.entry_chains.setdefault((e.last, e.term), chain)
            if seen != chain:
                self.fail("Log Matching",
                          f"node {node}: entry ending at {e.last} t{e.term} has a different "
                          "prefix than the same entry elsewhere")

    # -- commits ---------------------------------------------------------------------------

    def on_apply(self, node: NodeId, e: Seen, *, log_start: int, restored: bool = False) -> None:
        """``node`` applied ``e`` (or, ``restored``, believes it committed after a restart).
        The first entry after a log-start reset follows the reset, not the last applied one."""
        upto = self.applied_upto.get(node)
        if upto is not None and e.index != upto + 1 and e.index != log_start:
            self.fail("Apply order", f"node {node} applied {e.index}..{e.last} after {upto}")
        self.applied_upto[node] = e.last
        self.on_committed(node, e, why="restored after restart" if restored else "applied")

    def on_committed(self, node: NodeId, e: Seen, *, why: str) -> None:
        for offset in range(e.index, e.last + 1):  # batches of other bounds overlap here
            other = self.committed_at.setdefault(offset, e)
            if other != e:
                self.fail("State Machine Safety",
                          f"node {node} {why} {e.index}..{e.last} t{e.term}; the cluster "
                          f"committed {other.index}..{other.last} t{other.term} at {offset}")
        seen = self.committed.get(e.last)
        if seen is None:
            self.committed[e.last] = e
            prev = self.committed_chain.get(e.index - 1)
            if prev is not None:
                self.committed_chain[e.last] = chain_of(prev, e)
            self.commit_max = max(self.commit_max, e.last)
        elif (seen.index, seen.term, seen.key) != (e.index, e.term, e.key):
            self.fail("State Machine Safety",
                      f"node {node} {why} {e.index}..{e.last} t{e.term}; the cluster committed "
                      f"{seen.index}..{seen.last} t{seen.term} there")

    def on_restart(self, node: NodeId) -> None:
        """A new incarnation replays its state machine from its log start."""
        self.applied_upto.pop(node, None)

    def on_ack(self, acked: Acked) -> None:
        """A client's write was acknowledged: it is committed (perhaps not applied anywhere yet:
        applies come in chunks of max_committed_bytes and the leader may die first)."""
        self.acked.append(acked)
        self.on_committed(NodeId(0), Seen(index=acked.index, last=acked.last, term=acked.term,
                                          key=acked.key), why="acknowledged")

    # -- the end ---------------------------------------------------------------------------

    def check_final(self, logs: dict[NodeId, tuple[int, dict[int, Seen]]], *,
                    recovering: int = 0, voters: int | None = None) -> None:
        """``logs``: voter -> (log start, last -> entry), after heal; ``recovering`` voters
        (damaged, or down for good) are not in ``logs``' holders but count in ``voters``."""
        total = len(logs) if voters is None else voters
        for a in self.acked:
            seen = self.committed.get(a.last)
            if seen is None or (seen.term, seen.key) != (a.term, a.key):
                self.fail("Durability", f"acked entry {a.index}..{a.last} t{a.term} is not "
                                        f"what was committed there ({seen})")
            holders = sum(
                1 for start, ents in logs.values()
                if a.last < start or ((e := ents.get(a.last)) is not None
                                      and (e.term, e.key) == (a.term, a.key)))
            if holders == 0 or (holders + recovering) * 2 <= total:
                self.fail("Durability",
                          f"acked entry {a.index}..{a.last} held by only {holders} of "
                          f"{total} replicas ({recovering} recovering)")
