"""The next membership change a partition's leader makes towards a reassignment's target.

Sans-I/O: a pure function of what the leader's Raft core knows now (its COMMITTED membership —
the core applies a change when it commits —, whether a change is still pending, each member's
match) and of the target. Nothing is remembered between calls, which is what makes a
reassignment resumable: after a failover or a restart the new leader derives the next step from
the same two inputs, and running `--execute` twice changes nothing.

Order, one single-server change at a time (Raft's rule, node/raft/core.py):

1. wait while a membership change is pending (uncommitted);
2. remove a learner that is not in the target (a changed or cancelled target);
3. add the first target node that is no member yet, as a LEARNER (it neither votes nor counts);
4. promote a learner of the target once it has caught up: its match has reached `caught_up_at`,
   the commit index as it was a moment ago (the driver's PROMOTE_LAG_S: under a steady produce
   load a learner's match trails the commit index by its round trip, so "holds what was
   committed a second ago" is the rule, as Kafka's in-sync rule is a time lag); while none has,
   wait (the replication factor never drops below the original's during a move);
5. remove a voter that is not in the target, the leader itself last;
6. if the leader is not in the target, transfer leadership to a caught-up target voter (the
   core's transfer catches it up the rest of the way before its TimeoutNow; the new leader then
   removes the old one at step 5);
7. the committed membership is the target, no learners: complete (the metadata's replica list
   becomes the target; nodes outside it then delete their replica).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class StepKind(enum.Enum):
    WAIT = "wait"
    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE = "remove"
    TRANSFER = "transfer-leadership"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupView:
    """What the leader's core says of its group."""

    leader: int
    voters: frozenset[int]
    learners: frozenset[int]
    change_pending: bool  # a CONFIG entry above the commit index
    commit: int  # the commit index (an offset)
    match: Mapping[int, int]  # member → highest offset it acknowledged (the leader's view)
    caught_up_at: int  # a learner whose match reached this (<= commit) may be promoted


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    kind: StepKind
    node: int | None = None
    reason: str = ""

    def describe(self) -> str:
        """For logs and `--verify`: 'add-learner 4', 'wait (learner 4 catching up ...)'."""
        text = self.kind.value + (f" {self.node}" if self.node is not None else "")
        return f"{text} ({self.reason})" if self.reason else text


def next_step(view: GroupView, target: Sequence[int]) -> Step:
    """The one change to make now (or WAIT / COMPLETE); see the module docstring for the order."""
    wanted = set(target)
    assert wanted, "a target holds at least one replica"
    if view.change_pending:
        return Step(kind=StepKind.WAIT, reason="a membership change is being committed")
    for node in sorted(view.learners - wanted):
        return Step(kind=StepKind.REMOVE, node=node, reason="learner not in the target")
    for node in target:
        if node not in view.voters and node not in view.learners:
            return Step(kind=StepKind.ADD_LEARNER, node=node)
    joining = [n for n in target if n in view.learners]
    for node in joining:
        if _caught_up(view, node):
            return Step(kind=StepKind.PROMOTE, node=node)
    if joining:
        lags = ", ".join(f"{n} at {view.match.get(n, -1)}" for n in joining)
        return Step(kind=StepKind.WAIT,
                    reason=f"learner {lags} catching up to {view.caught_up_at}")
    for node in sorted(view.voters - wanted - {view.leader}):
        return Step(kind=StepKind.REMOVE, node=node)
    if view.leader not in wanted:
        ready = [n for n in target if n in view.voters and _caught_up(view, n)]
        if not ready:
            return Step(kind=StepKind.WAIT, reason="no caught-up target voter to lead")
        return Step(kind=StepKind.TRANSFER, node=ready[0],
                    reason=f"leader {view.leader} leaves the group")
    assert view.voters == wanted and not view.learners
    return Step(kind=StepKind.COMPLETE)


def _caught_up(view: GroupView, node: int) -> bool:
    return view.match.get(node, -1) >= view.caught_up_at


@dataclass(slots=True)
class CommitHistory:
    """A leader's recent (time, term, commit index), for the bar of step 4: `bar(now, term,
    commit, lag_s)` is the commit index of `lag_s` ago in this term (the oldest noted in it when
    the term is younger). Bounded: entries older than the bar are dropped."""

    _seen: deque[tuple[float, int, int]] = field(default_factory=deque)

    def bar(self, now: float, term: int, commit: int, lag_s: float) -> int:
        if self._seen and self._seen[-1][1] != term:
            self._seen.clear()  # a new term: what an older leader committed says nothing here
        self._seen.append((now, term, commit))
        while len(self._seen) > 1 and self._seen[1][0] <= now - lag_s:
            self._seen.popleft()
        return self._seen[0][2]
