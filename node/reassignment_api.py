"""The Broker RPCs of partition reassignment: AlterPartitionReassignments and
ListPartitionReassignments (docs/operations.md "Reassignment").

Alter proposes one `AlterPartitionReassignment` per partition to the metadata group and reports
each result (errors per item: an unknown topic, partition or node); the moves themselves are the
leaders' work (node/reassignment.py). List answers from the committed metadata and adds, for the
partitions this node leads, the live progress of each member and the next step the driver will
take, computed by the same pure function (node/reassignment_steps.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tidelog.node import errors as E
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import AlterPartitionReassignment, Command, CommandError
from tidelog.node.reassignment import group_view
from tidelog.node.reassignment_steps import next_step
from tidelog.node.replica import Replica
from tidelog.proto import broker_pb2 as pb

PARTITIONS_PER_CALL_MAX = 10_000


class _Metadata(Protocol):
    @property
    def state(self) -> MetadataState: ...

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...


class _Replicas(Protocol):
    @property
    def partitions(self) -> Mapping[str, Replica]: ...


class ReassignmentApi:
    def __init__(self, *, metadata: _Metadata, replicas: _Replicas) -> None:
        self._metadata = metadata
        self._replicas = replicas

    async def alter(self, request: pb.AlterPartitionReassignmentsRequest
                    ) -> pb.AlterPartitionReassignmentsResponse:
        if len(request.partitions) > PARTITIONS_PER_CALL_MAX:
            raise E.InvalidRequestError(f"{len(request.partitions)} partitions in one call; "
                                        f"at most {PARTITIONS_PER_CALL_MAX}")
        if request.throttle_bytes_per_s < 0:
            raise E.InvalidRequestError("throttle_bytes_per_s must be >= 0 (0: unthrottled)")
        timeout_s = (request.timeout_ms or 10_000) / 1000
        response = pb.AlterPartitionReassignmentsResponse()
        for spec in request.partitions:
            out = response.results.add(topic=spec.topic, partition=spec.partition)
            try:
                result = await self._metadata.propose(AlterPartitionReassignment(
                    topic=spec.topic, partition=spec.partition, target=tuple(spec.target),
                    cancel=spec.cancel, throttle_bytes_per_s=request.throttle_bytes_per_s),
                    timeout_s)
            except CommandError as exc:
                result = {"code": pb.INVALID_REQUEST, "message": str(exc), "error": "x"}
            except (E.InvalidRequestError, E.PolicyViolationError) as exc:
                result = {"code": exc.code, "message": exc.message, "error": "x"}
            if "error" in result:
                out.error = result["code"]
                out.error_message = result["message"]
            out.noop = bool(result.get("noop"))
        return response

    def list(self, request: pb.ListPartitionReassignmentsRequest
             ) -> pb.ListPartitionReassignmentsResponse:
        state = self._metadata.state
        wanted = set(request.topics)
        response = pb.ListPartitionReassignmentsResponse()
        for group, r in sorted(state.reassignments.items()):
            topic = state.topic_by_id(r.topic_id)
            if topic is None or (wanted and topic.name not in wanted):
                continue
            status = response.partitions.add(
                topic=topic.name, partition=r.partition, replicas=topic.replicas[r.partition],
                target=r.target, original=r.original,
                throttle_bytes_per_s=r.throttle_bytes_per_s, cancelled=r.cancelled)
            replica = self._replicas.partitions.get(group)
            if replica is None or not replica.is_leader or replica.error is not None:
                continue
            view = group_view(replica)
            status.from_leader = True
            status.commit = view.commit
            for node in sorted(view.voters | view.learners):
                status.members.add(node_id=node, match=view.match.get(node, -1),
                                   learner=node in view.learners)
            status.next_step = next_step(view, r.target).describe()
        return response
