"""Safety checker: a separate object fed by the cluster after every step (VOPR-style).

Properties (Raft paper Figure 3, plus ours):
- Election Safety: at most one leader per term.
- Log Matching: entries with the same last offset and term have the same prefix. Checked on
  every append against every entry ever written anywhere, using prefix hashes ("chains").
- Leader Completeness: a new leader's log holds every entry committed so far.
- State Machine Safety: no two replicas commit different entries at one offset.
- Commit monotonicity: a replica's commit index never goes backwards, across restarts too,
  unless its disk was damaged.
- Durability of acknowledged writes: every entry a client saw committed is in the final log.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidelog.node.raft import Entry, LogIndex, NodeId, Term
from tidelog.node.sim.disk import UNKNOWN_CHAIN


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
    data: bytes


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[Term, NodeId] = {}
        self.entry_chains: dict[tuple[int, int], int] = {}  # (last, term) -> chain
        self.committed: dict[int, tuple[int, int]] = {}  # last -> (term, chain)
        self.commit_max: LogIndex = LogIndex(-1)
        self.node_commit: dict[NodeId, LogIndex] = {}
        self.acked: list[Acked] = []

    def fail(self, rule: str, detail: str) -> None:
        raise SafetyViolation(Violation(rule=rule, detail=detail))

    def on_leader(self, node: NodeId, term: Term, chains: dict[int, int], log_start: int) -> None:
        other = self.leaders.setdefault(term, node)
        if other != node:
            self.fail("Election Safety", f"nodes {other} and {node} both led term {term}")
        c = self.commit_max
        if c >= log_start and c in self.committed:
            want = self.committed[c][1]
            if chains.get(c) != want:
                self.fail(
                    "Leader Completeness",
                    f"node {node} leads term {term} without committed entry ending at {c}",
                )

    def on_append(self, node: NodeId, entries: list[Entry], chains: dict[int, int]) -> None:
        for e in entries:
            chain = chains.get(e.last, UNKNOWN_CHAIN)
            if chain == UNKNOWN_CHAIN:
                continue
            seen = self.entry_chains.setdefault((e.last, e.term), chain)
            if seen != chain:
                self.fail(
                    "Log Matching",
                    f"node {node}: entry ending at {e.last} t{e.term} has a different prefix",
                )

    def on_commit(
        self,
        node: NodeId,
        commit: LogIndex,
        entries: list[Entry],
        chains: dict[int, int],
        *,
        damaged: bool,
    ) -> None:
        """``entries`` are the node's entries newly committed (its view)."""
        prev = self.node_commit.get(node, LogIndex(-1))
        if commit < prev and not damaged:
            self.fail("Commit monotonicity", f"node {node} commit went from {prev} to {commit}")
        self.node_commit[node] = commit
        for e in entries:
            chain = chains.get(e.last, UNKNOWN_CHAIN)
            seen = self.committed.get(e.last)
            if seen is None:
                if chain != UNKNOWN_CHAIN:
                    self.committed[e.last] = (e.term, chain)
            elif seen[0] != e.term or (chain != UNKNOWN_CHAIN and seen[1] != chain):
                self.fail(
                    "State Machine Safety",
                    f"node {node} committed term {e.term} at {e.last}; another replica committed "
                    f"term {seen[0]} there",
                )
            if e.last > self.commit_max and e.last in self.committed:
                self.commit_max = e.last

    def forget_commit(self, node: NodeId) -> None:
        """A damaged replica restarted: its commit index may legitimately go backwards."""
        self.node_commit.pop(node, None)

    def on_ack(self, acked: Acked) -> None:
        self.acked.append(acked)

    def check_final(
        self, logs: dict[NodeId, tuple[int, dict[int, tuple[int, bytes]]]], *, recovering: int = 0
    ) -> None:
        """Every acknowledged entry is committed and held by a majority of final logs (or removed
        by retention). ``logs``: node -> (log start, last -> (term, data)). A replica still
        recovering from a damaged log may lack it (it was counted through an acknowledgement it
        sent before the damage); it cannot vote, so it counts as neither holder nor loser, but
        at least one replica must hold the entry."""
        for a in self.acked:
            seen = self.committed.get(a.last)
            if seen is None or seen[0] != a.term:
                self.fail(
                    "Durability", f"acked entry at {a.index}..{a.last} t{a.term} not committed"
                )
            holders = sum(
                1
                for start, ents in logs.values()
                if a.last < start or ents.get(a.last) == (a.term, a.data)
            )
            if holders == 0 or (holders + recovering) * 2 <= len(logs):
                self.fail(
                    "Durability", f"acked entry {a.index}..{a.last} held by only {holders} replicas"
                )
