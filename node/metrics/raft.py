"""Raft metrics of a node's replicas: elections, leader changes, dropped proposals, and the round
trip of AppendEntries (docs/metrics.md, "Raft").

The Raft core is sans-I/O and holds no metric: everything here is observed in the shell.
`RaftObserver` (one per ReplicaManager) sees every soft-state change of every local replica and
every Raft message in and out of the node; it does one dict lookup per message at most, and times
at most one AppendEntries per (group, follower) at a time, so its cost does not grow with the
entries or records a round carries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from tidelog.node.metrics.registry import REGISTRY
from tidelog.node.raft import Message, MessageType, Role

if TYPE_CHECKING:
    from tidelog.node.replica import Replica

ROUND_TRIP_S_MAX = 5.0
"""An AppendEntries unanswered this long is given up (the follower is down or cut off): its
eventual answer would measure the outage, not the round trip."""

ELECTIONS = Counter(
    "tidelog_raft_elections_total",
    "Elections this node's replicas started (became candidate in a new term, voting for "
    "themselves); pre-vote rounds that did not win are not counted",
    registry=REGISTRY)
LEADER_CHANGES = Counter(
    "tidelog_raft_leader_changes_total",
    "Times a local replica saw its group's leader change to a known node",
    registry=REGISTRY)
PROPOSALS_DROPPED = Counter(
    "tidelog_raft_proposals_dropped_total",
    "Proposals the Raft core refused (not the leader, or leadership moving away)",
    registry=REGISTRY)
APPEND_ROUND_TRIP = Histogram(
    "tidelog_raft_append_round_trip_seconds",
    "From the leader sending AppendEntries with entries to a follower's acknowledgement of them "
    "(includes the follower's append and fsync); one timed append per follower and group at a "
    "time",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY)

_CAMPAIGNING = (Role.CANDIDATE, Role.LEADER)


@dataclass(frozen=True, slots=True)
class _Timed:
    last: int  # the last offset the timed AppendEntries carried
    term: int
    sent_s: float


class RaftObserver:
    """Counts elections and leader changes from soft-state changes, and times append rounds.
    Owned by the event loop (no locks)."""

    def __init__(self) -> None:
        self._leader_seen: dict[str, int | None] = {}  # group → the leader it last reported
        self._election_term: dict[str, int] = {}  # group → term of its last counted election
        self._timed: dict[tuple[str, int], _Timed] = {}  # (group, follower) → its timed append

    def on_soft_state(self, replica: Replica) -> None:
        """A replica's role, leader or term changed (called for every local replica, the
        metadata group's too)."""
        group, core = replica.group, replica.core
        leader = core.leader
        if leader is not None and leader != self._leader_seen.get(group):
            LEADER_CHANGES.inc()
        self._leader_seen[group] = leader
        # Our election in term T: we are candidate (or already leader) in T, having voted for
        # ourselves. Counted once per term, however many soft states the term brings.
        if core.role in _CAMPAIGNING and core.vote == core.id \
                and self._election_term.get(group) != core.term:
            self._election_term[group] = core.term
            ELECTIONS.inc()

    def sent(self, group: str, message: Message) -> None:
        """An outbound Raft message; an AppendEntries with entries starts a timed round unless
        one is already running for that follower."""
        if message.type is not MessageType.APPEND or not message.entries:
            return
        key = (group, int(message.to))
        now = time.perf_counter()
        timed = self._timed.get(key)
        if timed is not None and timed.term == message.term \
                and now - timed.sent_s < ROUND_TRIP_S_MAX:
            return
        self._timed[key] = _Timed(last=int(message.entries[-1].last), term=int(message.term),
                                  sent_s=now)

    def received(self, group: str, message: Message) -> None:
        """An inbound Raft message (validated); an acknowledgement covering the timed append
        ends its round."""
        if message.type is not MessageType.APPEND_RESP:
            return
        key = (group, int(message.frm))
        timed = self._timed.get(key)
        if timed is None:
            return
        if message.reject or message.term != timed.term:
            del self._timed[key]  # the follower refused or the term moved: time the next one
            return
        if message.index >= timed.last:
            del self._timed[key]
            elapsed = time.perf_counter() - timed.sent_s
            if elapsed < ROUND_TRIP_S_MAX:
                APPEND_ROUND_TRIP.observe(elapsed)

    def forget(self, group: str) -> None:
        """The local replica of `group` was deleted (its topic was): drop what was kept of it."""
        self._leader_seen.pop(group, None)
        self._election_term.pop(group, None)
        for key in [k for k in self._timed if k[0] == group]:
            del self._timed[key]

    def unreachable(self, peer: int) -> None:
        """The transport lost `peer`: its timed rounds will not be answered."""
        for key in [k for k in self._timed if k[1] == peer]:
            del self._timed[key]


def record_dropped_proposal() -> None:
    """The Raft core refused a proposal (Replica.propose)."""
    PROPOSALS_DROPPED.inc()
