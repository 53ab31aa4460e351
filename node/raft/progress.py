"""The leader's view of one follower: probe / replicate / snapshot, and the in-flight window.

As in etcd: PROBE sends one append per heartbeat round until the follower's match is known;
REPLICATE pipelines appends optimistically (``next`` advances on send) up to ``max_inflight_msgs``
unacknowledged messages; SNAPSHOT (here: a log-start reset, our InstallSnapshot) pauses appends
until the follower acknowledges the new log start.

SNAPSHOT must never wedge (issue 11, defect 2): the INSTALL_LOG_START is one message and may be
lost like any other. The leader leaves SNAPSHOT for PROBE when the follower's reply shows it can be
caught up from the log (etcd's MsgAppResp rule), when the transport reports the follower
unreachable (etcd's ReportSnapshot failure), and on its own after ``install_elapsed`` reaches a
bound (a silently dropped message). ``install_failed`` forgets the pending log start, so the next
probe finds the follower still below the log start and sends the install again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from tidelog.node.raft.types import NO_INDEX, LogIndex


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Bounded FIFO of the last offsets of unacknowledged appends. Overflow: sends pause."""

    def __init__(self, size_max: int) -> None:
        assert size_max >= 1
        self.size_max = size_max
        self._q: deque[LogIndex] = deque()

    def add(self, last: LogIndex) -> None:
        assert not self.full(), "caller must check full() before sending"
        assert not self._q or last > self._q[-1]
        self._q.append(last)

    def free_le(self, index: LogIndex) -> None:
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.size_max

    def reset(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


@dataclass(slots=True)
class Progress:
    # Invariant: match < next (next is the first offset the follower needs; next - 1 is a boundary)
    next: LogIndex
    inflights: Inflights
    match: LogIndex = NO_INDEX
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_log_start: LogIndex = NO_INDEX  # SNAPSHOT: the boundary the follower was reset to
    install_elapsed: int = 0  # SNAPSHOT: leader ticks since the INSTALL_LOG_START was sent
    recent_active: bool = field(default=False)

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = LogIndex(max(self.match + 1, self.pending_log_start + 1))
        else:
            self.next = LogIndex(self.match + 1)
        self.state, self.probe_sent = ProgressState.PROBE, False
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state, self.probe_sent = ProgressState.REPLICATE, False
        self.next = LogIndex(self.match + 1)
        self.inflights.reset()

    def become_snapshot(self, log_start_prev: LogIndex) -> None:
        self.state, self.probe_sent = ProgressState.SNAPSHOT, False
        self.pending_log_start = log_start_prev
        self.install_elapsed = 0
        self.inflights.reset()

    def install_failed(self) -> None:
        """The install was lost (reported unreachable, or unanswered for too long): probe from
        what the follower is known to have; wait for a heartbeat reply before retrying, as etcd
        does after a failed snapshot (MsgAppFlowPaused)."""
        assert self.state == ProgressState.SNAPSHOT
        # Order matters (as in etcd): forget the pending log start first, or the probe would
        # start above a log start the follower never installed.
        self.pending_log_start = NO_INDEX
        self.become_probe()
        self.probe_sent = True

    def maybe_update(self, index: LogIndex) -> bool:
        """An append up to ``index`` was acknowledged. Returns whether ``match`` moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = LogIndex(max(self.next, index + 1))
        return updated

    def maybe_decr_to(self, rejected: LogIndex, hint: LogIndex) -> bool:
        """The append with prev ``rejected`` was refused; ``hint`` is a boundary to retry from.
        Returns False for a stale rejection."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = LogIndex(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        if hint < self.match:
            # A healthy follower's hint is never below what it acknowledged; this one lost
            # acknowledged entries (a damaged log cut on restart; it does not vote until
            # refilled). Forget its match, or next could never go below it and the follower
            # would never be repaired (found by tests/node/test_replica_repair.py).
            self.match = NO_INDEX
        self.next = LogIndex(max(min(rejected, hint) + 1, self.match + 1))
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        match self.state:
            case ProgressState.PROBE:
                return self.probe_sent
            case ProgressState.REPLICATE:
                return self.inflights.full()
            case ProgressState.SNAPSHOT:
                return True
