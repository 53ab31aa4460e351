"""Node-pair liveness: what keeps quiesced Raft groups safe to leave asleep.

A quiesced group (docs/raft.md, "Quiescence") sends no heartbeats, so its followers can no longer
notice a dead leader by themselves. One heartbeat per node pair replaces the per-group ones: every
node sends a beat to each peer every `beat_ticks` ticks, and counts anything it receives from a
peer (a beat, Raft traffic, leader announcements) as hearing from it. A peer silent for
`timeout_ticks` ticks (the election timeout) is lost: every quiesced group it is a member of is
woken (`wake_groups`), so followers of a group it led run their election timers again and
campaign as usual, and a leader whose followers it was checks its quorum. A link that goes down
wakes the same groups at once, and so does a peer that restarted (its batches carry a new
incarnation): a restart can be quicker than the timeout, and a restarted replica that lost
entries may neither vote nor campaign, so its sleeping peers would otherwise never notice that
their leader is gone (found by `tidelog sim --quiesce`, seed 605).

Time is counted in ticks, never read from a clock: a node whose own event loop stalls does not
take the stall for its peers' silence, and the simulator drives the same code in virtual time.
Sans-I/O: the caller sends the beats and wakes the groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from tidelog.node.raft import NodeId, RaftCore


class Heard(Enum):
    """What hearing from a peer means."""

    AS_BEFORE = "as before"
    BACK = "back after being lost"
    RESTARTED = "restarted (a new incarnation)"


@dataclass(frozen=True, slots=True)
class LivenessTick:
    """What one tick asks of the caller."""

    beat: bool
    """Send a beat to every peer now."""
    lost: tuple[int, ...]
    """Peers that just crossed the timeout without being heard: wake their groups."""


class NodeLiveness:
    """Which peers this node has heard from within the election timeout. Event-loop only."""

    def __init__(self, peers: Iterable[int], *, timeout_ticks: int, beat_ticks: int) -> None:
        if not 0 < beat_ticks < timeout_ticks:
            raise ValueError("beat_ticks must be >= 1 and below timeout_ticks")
        self.timeout_ticks = timeout_ticks
        self.beat_ticks = beat_ticks
        # A peer counts as heard at start: nothing is quiesced yet, and a node that starts
        # before its peers must not wake (or time out) anything on their account.
        self._silent: dict[int, int] = dict.fromkeys(peers, 0)
        self._lost: set[int] = set()
        self._incarnations: dict[int, int] = {}
        self._since_beat = 0

    def heard(self, peer: int, incarnation: int) -> Heard:
        """Something arrived from `peer`, sent by its process `incarnation`. RESTARTED: wake its
        groups. A peer not known yet (a node that joined the cluster) is tracked from now on."""
        self._silent[peer] = 0
        known = self._incarnations.get(peer)
        self._incarnations[peer] = incarnation
        was_lost = peer in self._lost
        self._lost.discard(peer)
        if known is not None and known != incarnation:
            return Heard.RESTARTED
        return Heard.BACK if was_lost else Heard.AS_BEFORE

    def tick(self) -> LivenessTick:
        self._since_beat += 1
        beat = self._since_beat >= self.beat_ticks
        if beat:
            self._since_beat = 0
        lost = []
        for peer, silent in self._silent.items():
            self._silent[peer] = silent + 1
            if silent + 1 >= self.timeout_ticks and peer not in self._lost:
                self._lost.add(peer)
                lost.append(peer)
        return LivenessTick(beat=beat, lost=tuple(lost))

    def alive(self, peer: int) -> bool:
        return peer in self._silent and peer not in self._lost

    @property
    def lost(self) -> frozenset[int]:
        return frozenset(self._lost)


class HasCore(Protocol):
    """A replica as far as waking it goes (tidelog.node.replica.Replica)."""

    @property
    def core(self) -> RaftCore: ...

    @property
    def error(self) -> BaseException | None: ...


def wake_groups(replicas: Iterable[HasCore], peer: int) -> int:
    """Wake every quiesced group of which `peer` is a member (it led it, or follows us in it);
    returns how many woke. The node and the simulator both call this."""
    woken = 0
    node = NodeId(peer)
    for replica in replicas:
        core = replica.core
        if core.quiesced and replica.error is None and node in core.membership.members:
            core.wake()
            woken += 1
    return woken
