"""Admin's partition reassignment methods (mixed into tidelog.client.admin.Admin; docs/operations.md
"Reassignment"): set or cancel target replica lists, list the moves in progress, change a topic's
replication factor. The plans themselves are pure functions (tidelog.node.reassignment_plan).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidelog.client import errors

if TYPE_CHECKING:
    from tidelog.client.connection import Connections
    from tidelog.client.metadata import Metadata

__all__ = ["ReassignmentAdmin", "ReassignmentMember", "ReassignmentResult", "ReassignmentStatus"]

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReassignmentResult:
    topic: str
    partition: int
    error: errors.TidelogError | None
    noop: bool  # the partition had the target replicas already


@dataclass(frozen=True, slots=True, kw_only=True)
class ReassignmentMember:
    node_id: int
    match: int  # highest offset acknowledged, as the leader sees it
    learner: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ReassignmentStatus:
    topic: str
    partition: int
    replicas: tuple[int, ...]
    target: tuple[int, ...]
    original: tuple[int, ...]
    throttle_bytes_per_s: int
    cancelled: bool
    from_leader: bool  # members, commit and next_step are the leader's (else empty)
    members: tuple[ReassignmentMember, ...]
    commit: int
    next_step: str


class ReassignmentAdmin:
    _metadata: Metadata
    _connections: Connections
    _timeout_s: float

    _retrying: Callable[[str, object], Any]  # Admin's (follows NOT_LEADER to the metadata leader)

    def alter_partition_reassignments(
        self, targets: Mapping[TopicPartition, Sequence[int] | None], *,
        throttle_bytes_per_s: int = 0,
    ) -> list[ReassignmentResult]:
        """Begin (or change) each partition's move to its target replica list (first = preferred
        leader); None cancels a partition's move (back to the replicas it had). Returns once the
        targets are committed; the moves go on in the background (`list_partition_reassignments`
        follows them). Sending the same targets again is harmless (resumes nothing twice)."""
        from tidelog.proto import broker_pb2

        request = broker_pb2.AlterPartitionReassignmentsRequest(
            throttle_bytes_per_s=throttle_bytes_per_s, timeout_ms=int(self._timeout_s * 1000))
        for (topic, partition), target in sorted(targets.items()):
            request.partitions.add(topic=topic, partition=partition, target=list(target or ()),
                                   cancel=target is None)
        response = self._retrying("AlterPartitionReassignments", request)
        return [ReassignmentResult(
            topic=r.topic, partition=r.partition, noop=r.noop,
            error=errors.from_code(r.error, r.error_message,
                                   subject=f"{r.topic}-{r.partition}") if r.error else None)
            for r in response.results]

    def list_partition_reassignments(self, topics: Iterable[str] | None = None
                                     ) -> list[ReassignmentStatus]:
        """The moves in progress. Every node knows the targets; only a partition's leader knows
        the progress, so every node is asked and the leader's answer kept."""
        from tidelog.proto import broker_pb2

        request = broker_pb2.ListPartitionReassignmentsRequest(topics=list(topics or ()))
        found: dict[TopicPartition, ReassignmentStatus] = {}
        answered = 0
        for node in self._metadata.describe([]).nodes:
            try:
                response = self._connections.call(node.address, "ListPartitionReassignments",
                                                  request, timeout_s=self._timeout_s)
            except errors.TidelogError:
                continue  # a down node leads nothing right now
            answered += 1
            for p in response.partitions:
                key = (p.topic, p.partition)
                if key in found and found[key].from_leader and not p.from_leader:
                    continue
                found[key] = _status(p)
        if not answered:
            raise errors.ClusterUnreachable("no node answered ListPartitionReassignments")
        return [found[k] for k in sorted(found)]

    def current_assignment(self, topics: Iterable[str] | None = None
                           ) -> dict[TopicPartition, tuple[int, ...]]:
        """Every partition's committed replica list (of these topics; None: all, internal
        topics included, since draining a node moves them too)."""
        names = list(topics) if topics is not None else None
        description = self._metadata.describe(names, include_internal=names is None)
        for name in names or ():
            if name in description.topic_errors:
                raise description.topic_errors[name]
        return {(t.name, p.partition): tuple(p.replicas)
                for t in description.topics for p in t.partitions}

    def alter_replication_factor(self, topic: str, replication_factor: int, *,
                                 throttle_bytes_per_s: int = 0,
                                 nodes: Sequence[int] | None = None
                                 ) -> dict[TopicPartition, tuple[int, ...]]:
        """Give every partition of `topic` `replication_factor` replicas (on `nodes`, default
        the live nodes): a reassignment of each partition; returns the plan (empty: nothing to
        change). Raises InvalidReplicationFactor when it cannot be placed."""
        from tidelog.node.reassignment_plan import PlanError, replication_factor_plan

        current = self.current_assignment([topic])
        if nodes is None:  # the live nodes (all of them if none is known to be alive)
            described = self._metadata.describe([]).nodes
            nodes = sorted(n.id for n in described if n.alive) or sorted(n.id for n in described)
        try:
            plan = replication_factor_plan(current, topic, replication_factor, nodes)
        except PlanError as exc:
            raise errors.InvalidReplicationFactor(str(exc)) from None
        for result in self.alter_partition_reassignments(
                plan, throttle_bytes_per_s=throttle_bytes_per_s):
            if result.error is not None:
                raise result.error
        return plan


def _status(p: Any) -> ReassignmentStatus:
    return ReassignmentStatus(
        topic=p.topic, partition=p.partition, replicas=tuple(p.replicas),
        target=tuple(p.target), original=tuple(p.original),
        throttle_bytes_per_s=p.throttle_bytes_per_s, cancelled=p.cancelled,
        from_leader=p.from_leader,
        members=tuple(ReassignmentMember(node_id=m.node_id, match=m.match, learner=m.learner)
                      for m in p.members),
        commit=p.commit, next_step=p.next_step)
