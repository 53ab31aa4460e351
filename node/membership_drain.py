"""The drain's `ReplicaMover` (node/membership.py): a decommissioned node's replicas leave it
through the partition reassignment (node/reassignment_state.py, node/reassignment.py).

On the metadata leader, every controller round while the draining node still holds replicas:
`drain_plan` (node/reassignment_plan.py: each partition keeps its replication factor, the
node's slot goes to the least loaded placeable node, at the end of the list so the preferred
leader is a replica that is already caught up) for the partitions that are not being reassigned
yet, each proposed as an AlterPartitionReassignment that the partition's leader carries out
(new replica as a learner, catch up, promote, remove the old one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import AlterPartitionReassignment
from tidelog.node.reassignment_plan import PlanError, drain_plan
from tidelog.node.topics import partition_group

log = logging.getLogger(__name__)


def drain_moves(state: MetadataState, node_id: int,
                placement: list[int]) -> dict[tuple[str, int], tuple[int, ...]]:
    """The moves still to propose: the drain plan of the partitions not being reassigned."""
    current = {(topic.name, partition): replicas for topic in state.topics.values()
               for partition, replicas in enumerate(topic.replicas)
               if partition_group(topic.topic_id, partition) not in state.reassignments}
    return drain_plan(current, node_id, [n for n in placement if n != node_id])


class ReassignmentMover:
    """Proposes the drain's reassignments; idempotent (a running one is left alone)."""

    def __init__(self, metadata: Any, placement: Callable[[], list[int]]) -> None:
        self._metadata = metadata
        self._placement = placement
        self._said: set[tuple[int, str]] = set()

    async def move_off(self, node_id: int) -> None:
        try:
            moves = drain_moves(self._metadata.state, node_id, self._placement())
        except PlanError as exc:
            if (node_id, str(exc)) not in self._said:
                self._said.add((node_id, str(exc)))
                log.warning("draining node %d: cannot plan the moves: %s", node_id, exc)
            return
        for (topic, partition), target in sorted(moves.items()):
            result = await self._metadata.propose(AlterPartitionReassignment(
                topic=topic, partition=partition, target=target))
            if "error" in result:
                log.warning("draining node %d: moving %s-%d to %s refused: %s", node_id, topic,
                            partition, list(target), result.get("message"))
            else:
                log.info("draining node %d: %s-%d moves to %s", node_id, topic, partition,
                         list(target))
