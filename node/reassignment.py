"""The reassignment driver: the leader of a reassigning partition moves its own Raft group to the
target, one single-server change at a time (docs/operations.md "Reassignment").

Every node runs one; it acts only on the partitions whose local replica LEADS. Each round it
reads the core's committed membership and the target from the committed metadata and makes the
one change `reassignment_steps.next_step` names. Nothing else is kept between rounds, so a leader
that fails over, restarts or is replaced mid-way leaves nothing to recover: the next leader
derives the same next step. When the group's committed membership is the target, the leader
proposes `CompletePartitionReassignment` to the metadata group; the replica list then becomes the
target and the nodes outside it delete their replica (node/replica_manager.py `reconcile`).

`learner_rate` is the catch-up throttle's policy (node/learner_throttle.py): a learner of a
partition under reassignment gets the reassignment's bytes/s, everything else is unthrottled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command, CompletePartitionReassignment
from tidelog.node.raft import ConfigChangeRejected, NotLeader, ProposalDropped, RaftError
from tidelog.node.reassignment_state import PartitionReassignment
from tidelog.node.reassignment_steps import (
    CommitHistory,
    GroupView,
    Step,
    StepKind,
    next_step,
)
from tidelog.node.replica import Replica

log = logging.getLogger(__name__)

ROUND_S = 0.1  # how often a leader looks at its reassigning partitions
PROMOTE_LAG_S = 1.0  # a learner holding what was committed this long ago is caught up
# The Raft core's own promote check (RaftConfig.promote_lag_max, in offsets) for partition
# replicas: a safety net only; the driver's rule (caught up to the commit of PROMOTE_LAG_S ago,
# reassignment_steps) decides. Kept far above what a second of produce adds.
PROMOTE_LAG_MAX = 1_000_000
COMPLETE_TIMEOUT_S = 10.0


class ReassignmentHost(Protocol):
    """What the driver needs of the node: the committed metadata and the local replicas."""

    @property
    def state(self) -> MetadataState: ...

    @property
    def partitions(self) -> Mapping[str, Replica]: ...

    def log_label(self, group: str) -> str: ...


Propose = Callable[[Command, float], Awaitable[dict[str, Any]]]


def group_view(replica: Replica, caught_up_at: int | None = None) -> GroupView:
    """`caught_up_at`: the bar of a learner's catch-up (None: the commit index now)."""
    core = replica.core
    membership = core.membership
    match = {int(n): int(p.match) for n, p in core.progress.items()}
    match[int(core.id)] = int(core.log.last_index())
    return GroupView(leader=int(core.id), voters=frozenset(int(n) for n in membership.voters),
                     learners=frozenset(int(n) for n in membership.learners),
                     # CONFIG entries above the commit index (the core applies one at commit)
                     change_pending=bool(core._pending_configs),
                     commit=int(core.commit), match=match,
                     caught_up_at=min(int(core.commit), caught_up_at if caught_up_at is not None
                                      else int(core.commit)))


def learner_rate(state: MetadataState, replica: Replica | None, node: int) -> int:
    """Bytes/s for `replica`'s messages to `node`: the reassignment's throttle if this replica
    leads a reassigning partition and `node` is one of its learners, else 0 (unthrottled)."""
    if replica is None or not replica.is_leader:
        return 0
    r = state.reassignments.get(replica.group)
    if r is None or r.throttle_bytes_per_s <= 0:
        return 0
    return r.throttle_bytes_per_s if node in replica.core.membership.learners else 0


class ReassignmentDriver:
    """Owned by the event loop."""

    def __init__(self, host: ReassignmentHost, propose: Propose, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._host = host
        self._propose = propose
        self._completing: dict[str, asyncio.Task[None]] = {}
        self._last_step: dict[str, str] = {}  # group → the step last logged (log once each)
        # group → its recent commit indexes: a learner whose match reached the commit index of
        # PROMOTE_LAG_S ago is caught up (soft state: lost at a failover, which only delays a
        # promotion by PROMOTE_LAG_S)
        self._commits: dict[str, CommitHistory] = {}
        self._clock = clock

    def last_step(self, group: str) -> str:
        """The step this node last chose for the group ('' when it does not lead it)."""
        return self._last_step.get(group, "")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(ROUND_S)
            self.round()

    def round(self) -> None:
        state = self._host.state
        for group in [g for g in self._last_step if g not in state.reassignments]:
            del self._last_step[group]
        for group in [g for g in self._commits if g not in state.reassignments]:
            del self._commits[group]
        for group, reassignment in list(state.reassignments.items()):
            replica = self._host.partitions.get(group)
            if replica is None or replica.error is not None or not replica.is_leader:
                self._last_step.pop(group, None)
                self._commits.pop(group, None)
                continue
            step = next_step(group_view(replica, self._caught_up_bar(group, replica)),
                             reassignment.target)
            self._note(group, step)
            self._take(replica, reassignment, step)

    def _caught_up_bar(self, group: str, replica: Replica) -> int:
        """The commit index of PROMOTE_LAG_S ago: under load a learner's match trails the commit
        index by its round trip however caught up it is, and "the commit index now" is rarely
        met (seen: a promotion delayed 9 s at load average 33)."""
        history = self._commits.setdefault(group, CommitHistory())
        return history.bar(self._clock(), replica.term, replica.commit_index, PROMOTE_LAG_S)

    def _take(self, replica: Replica, reassignment: PartitionReassignment, step: Step) -> None:
        node = step.node
        try:
            match step.kind:
                case StepKind.WAIT:
                    pass
                case StepKind.ADD_LEARNER:
                    assert node is not None
                    replica.add_learner(node)
                case StepKind.PROMOTE:
                    assert node is not None
                    replica.promote(node)
                case StepKind.REMOVE:
                    assert node is not None
                    replica.remove(node)
                case StepKind.TRANSFER:
                    assert node is not None
                    if replica.core.lead_transferee is None:
                        replica.transfer_leadership(node)
                case StepKind.COMPLETE:
                    self._complete(reassignment)
        except (ConfigChangeRejected, NotLeader, ProposalDropped, RaftError) as exc:
            # Retried next round: a change pending, a NOOP of the term not committed yet, a
            # learner a little behind the commit index, leadership moving.
            log.debug("reassignment of %s: %s not taken yet: %s",
                      self._host.log_label(replica.group), step.describe(), exc)

    def _complete(self, reassignment: PartitionReassignment) -> None:
        group = reassignment.group
        if group in self._completing:
            return
        command = CompletePartitionReassignment(
            topic_id=reassignment.topic_id, partition=reassignment.partition,
            target=reassignment.target)
        task = asyncio.get_running_loop().create_task(self._propose_complete(command),
                                                      name=f"complete-{group}")
        self._completing[group] = task
        task.add_done_callback(lambda _t, g=group: self._completing.pop(g, None))

    async def _propose_complete(self, command: CompletePartitionReassignment) -> None:
        try:
            result = await self._propose(command, COMPLETE_TIMEOUT_S)
        except Exception as exc:  # retried next round by whoever leads then
            log.info("completing the reassignment of %d/%d failed (retried): %s",
                     command.topic_id, command.partition, exc)
            return
        if "error" in result:
            log.info("completing the reassignment of %d/%d refused: %s", command.topic_id,
                     command.partition, result.get("message"))
        else:
            log.info("reassignment of %d/%d complete: replicas %s", command.topic_id,
                     command.partition, list(command.target))

    def _note(self, group: str, step: Step) -> None:
        text = step.describe()
        if self._last_step.get(group) != text:
            self._last_step[group] = text
            if step.kind is not StepKind.WAIT or "catching up" not in step.reason:
                log.info("reassignment of %s: %s", self._host.log_label(group), text)

    async def close(self) -> None:
        for task in list(self._completing.values()):
            task.cancel()
