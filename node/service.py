"""gRPC servicers: translate wire requests into calls on the Node, and BrokerErrors into statuses.

A refused single-subject call becomes a gRPC status with a precise message plus an ErrorDetail in
the trailing metadata ("tidelog-error-bin"), so clients follow a NOT_LEADER to the leader without
parsing text. Multi-item calls (Fetch, ListOffsets, CreateTopics...) report per-item codes.

Every request gets a clear status, whatever its bytes: `add_servicer` registers the methods with
a deserializer that turns undecodable bytes into a `MalformedRequest` (answered INVALID_ARGUMENT,
where grpc's own handlers would say INTERNAL "Exception deserializing request!"), and an
unexpected exception (a bug) is logged with its traceback and answered INTERNAL with a short text,
never UNKNOWN with Python's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from tidelog.node.errors import (
    BrokerError,
    InvalidRequestError,
    NotLeaderError,
    StorageRequestError,
)
from tidelog.node.metrics.produce import observed_fetch, observed_produce
from tidelog.node.produce_many import produce_many
from tidelog.node.security.cert_auth import forged_from_node
from tidelog.node.security.principal import current_principal
from tidelog.node.storage import StorageError
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc, cluster_pb2_grpc

if TYPE_CHECKING:
    from tidelog.node.client_api import ClientApi
    from tidelog.node.groups.coordinator import GroupCoordinator
    from tidelog.proto import cluster_pb2 as cpb

log = logging.getLogger(__name__)

ERROR_METADATA_KEY = "tidelog-error-bin"

_STATUS_BY_CODE = {
    pb.NOT_LEADER: grpc.StatusCode.UNAVAILABLE,
    pb.LEADER_NOT_AVAILABLE: grpc.StatusCode.UNAVAILABLE,
    pb.DISK_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    pb.STORAGE_ERROR: grpc.StatusCode.UNAVAILABLE,
    pb.UNKNOWN_TOPIC_OR_PARTITION: grpc.StatusCode.NOT_FOUND,
    pb.TOPIC_ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    pb.OFFSET_OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    pb.OUT_OF_ORDER_SEQUENCE: grpc.StatusCode.FAILED_PRECONDITION,
    pb.PRODUCER_FENCED: grpc.StatusCode.FAILED_PRECONDITION,
    pb.REQUEST_TIMED_OUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    pb.UNAUTHORIZED: grpc.StatusCode.PERMISSION_DENIED,
    pb.NOT_ENOUGH_REPLICAS: grpc.StatusCode.UNAVAILABLE,
    pb.NOT_COORDINATOR: grpc.StatusCode.UNAVAILABLE,
    pb.COORDINATOR_NOT_AVAILABLE: grpc.StatusCode.UNAVAILABLE,
    pb.UNKNOWN_MEMBER_ID: grpc.StatusCode.FAILED_PRECONDITION,
    pb.FENCED_MEMBER_EPOCH: grpc.StatusCode.FAILED_PRECONDITION,
    pb.GROUP_NOT_EMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    pb.GROUP_ID_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    pb.QUEUE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    pb.QUEUE_ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    pb.LOCK_LOST: grpc.StatusCode.FAILED_PRECONDITION,
    pb.INVALID_QUEUE_CONFIG: grpc.StatusCode.INVALID_ARGUMENT,
}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def status_for(code: int) -> grpc.StatusCode:
    return _STATUS_BY_CODE.get(code, grpc.StatusCode.INVALID_ARGUMENT)


def error_detail(exc: BrokerError) -> pb.ErrorDetail:
    detail = pb.ErrorDetail(code=exc.code, leader_id=-1, retriable=exc.retriable)
    if isinstance(exc, NotLeaderError):
        detail.leader_id = exc.leader_id if exc.leader_id is not None else -1
        detail.leader_address = exc.leader_address
    return detail


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Bytes that are not a valid message of the method's request type (the caller's fault)."""

    type_name: str
    reason: str

    @property
    def message(self) -> str:
        return f"request is not a valid {self.type_name}: {self.reason}"


def add_servicer(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Register every method of `service` on `servicer` (like the generated add_*_to_server),
    with deserializers that never raise (see MalformedRequest)."""
    handlers = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        make = (grpc.stream_unary_rpc_method_handler if method.client_streaming
                else grpc.unary_unary_rpc_method_handler)
        assert not method.server_streaming, "no server-streaming methods in tidelog.v1"
        handlers[method.name] = make(
            behaviour, request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _lenient(request_type: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except (protobuf_message.DecodeError, RecursionError, ValueError) as exc:
            return MalformedRequest(request_type.DESCRIPTOR.full_name, str(exc) or "undecodable")

    return deserialize


def _unary(method: F) -> F:
    """Turn BrokerError into a status + ErrorDetail; log and report anything unexpected."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidRequestError(request.message)
            return await method(self, request, context)
        except BrokerError as exc:
            context.set_trailing_metadata(
                ((ERROR_METADATA_KEY, error_detail(exc).SerializeToString()),)
            )
            await context.abort(status_for(exc.code), exc.message)
        except StorageError as exc:  # our disk's fault, not the caller's (CorruptLogError is
            # also a ValueError: without this it would be answered "invalid request")
            log.error("%s: storage failure: %s", method.__name__, exc)
            failed = StorageRequestError(f"storage failure on this node: {exc}")
            context.set_trailing_metadata(
                ((ERROR_METADATA_KEY, error_detail(failed).SerializeToString()),))
            await context.abort(status_for(failed.code), failed.message)
        except (ValueError, KeyError) as exc:  # a malformed request that slipped past validation
            detail = error_detail(InvalidRequestError(str(exc)))
            context.set_trailing_metadata(((ERROR_METADATA_KEY, detail.SerializeToString()),))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {exc}")
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError):
                raise
            log.exception("%s failed unexpectedly", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error in {method.__name__} ({type(exc).__name__}); "
                                "see the node's log")

    return wrapper  # type: ignore[return-value]


class RaftInbox(Protocol):
    """Where a peer's Raft stream goes (node/replica_manager.py)."""

    def is_peer(self, node_id: int) -> bool: ...

    def receive_raft(self, batch: cpb.RaftBatch) -> None: ...


class ForwardedProposals(Protocol):
    """Where a peer's metadata proposal goes (node/metadata_service.py)."""

    async def serve_forwarded(
        self, request: cpb.ProposeMetadataRequest) -> cpb.ProposeMetadataResponse: ...

    def snapshot_chunk(
        self, request: cpb.MetadataSnapshotRequest) -> cpb.MetadataSnapshotChunk: ...


class BrokerService(broker_pb2_grpc.BrokerServicer):
    def __init__(self, api: ClientApi, groups: GroupCoordinator) -> None:
        self.api = api
        self.groups = groups

    @_unary
    async def Metadata(self, request, context):  # noqa: N802 - gRPC method names
        return self.api.metadata_response(list(request.topics), request.include_internal)

    @_unary
    async def CreateTopics(self, request, context):  # noqa: N802
        return await self.api.create_topics(request)

    @_unary
    async def DeleteTopics(self, request, context):  # noqa: N802
        return await self.api.delete_topics(request)

    @_unary
    async def DescribeConfigs(self, request, context):  # noqa: N802
        return self.api.describe_configs(request)

    @_unary
    async def AlterConfigs(self, request, context):  # noqa: N802
        return await self.api.alter_configs(request)

    @_unary
    async def CreatePartitions(self, request, context):  # noqa: N802
        return await self.api.create_partitions(request)

    @_unary
    async def Produce(self, request, context):  # noqa: N802
        return await observed_produce(self.api.produce, request)

    @_unary
    async def ProduceMany(self, request, context):  # noqa: N802 - node/produce_many.py
        return await produce_many(self.api.produce, request)

    @_unary
    async def Fetch(self, request, context):  # noqa: N802
        return await observed_fetch(self.api.fetch, request)

    @_unary
    async def ListOffsets(self, request, context):  # noqa: N802
        return self.api.list_offsets(request)

    @_unary
    async def InitProducerId(self, request, context):  # noqa: N802
        return await self.api.init_producer_id(request)

    # -- consumer groups: node/groups/coordinator.py

    @_unary
    async def FindCoordinator(self, request, context):  # noqa: N802
        response = await self.groups.find_coordinator(request)
        if response.address:  # the coordinator's address on this call's listener
            response.address = self.api.address_for_client(response.node_id, response.address)
        return response

    @_unary
    async def ConsumerGroupHeartbeat(self, request, context):  # noqa: N802
        return await self.groups.heartbeat(request)

    @_unary
    async def OffsetCommit(self, request, context):  # noqa: N802
        return await self.groups.offset_commit(request)

    @_unary
    async def OffsetFetch(self, request, context):  # noqa: N802
        return await self.groups.offset_fetch(request)

    @_unary
    async def ListGroups(self, request, context):  # noqa: N802
        return self.groups.list_groups()

    @_unary
    async def DescribeGroups(self, request, context):  # noqa: N802
        return self.groups.describe_groups(request)

    @_unary
    async def DeleteGroups(self, request, context):  # noqa: N802
        return await self.groups.delete_groups(request)

    # -- partition reassignment: node/reassignment_api.py

    @_unary
    async def AlterPartitionReassignments(self, request, context):  # noqa: N802
        return await self.api.reassignments.alter(request)

    @_unary
    async def ListPartitionReassignments(self, request, context):  # noqa: N802
        return self.api.reassignments.list(request)


class ClusterService(cluster_pb2_grpc.ClusterServicer):
    def __init__(self, inbox: RaftInbox, proposals: ForwardedProposals) -> None:
        self.inbox = inbox
        self.proposals = proposals

    async def Exchange(self, request_iterator, context):  # noqa: N802
        """One peer's stream: its first batch declares the peer (a node of this cluster); every
        later batch must come from the same one, or the stream is refused."""
        from tidelog.proto import cluster_pb2 as cpb

        batches = 0
        declared: int | None = None
        caller = current_principal.get()  # Node:<id> from the peer's certificate (with TLS)
        async for batch in request_iterator:
            if isinstance(batch, MalformedRequest):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, batch.message)
            forged = forged_from_node(caller, batch.from_node)
            if forged is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, forged)
            if declared is None:
                if not self.inbox.is_peer(batch.from_node):
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                        f"node {batch.from_node} is not a peer of this node")
                declared = batch.from_node
            elif batch.from_node != declared:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"node {declared}'s stream carried a batch from node {batch.from_node}")
            batches += 1
            try:
                self.inbox.receive_raft(batch)
            except Exception:  # a bug: say so clearly, keep the node up
                log.exception("Exchange from node %d failed unexpectedly", declared)
                await context.abort(grpc.StatusCode.INTERNAL,
                                    "internal error in Exchange; see the node's log")
        return cpb.ExchangeSummary(batches=batches)

    @_unary
    async def ProposeMetadata(self, request, context):  # noqa: N802
        return await self.proposals.serve_forwarded(request)

    @_unary
    async def FetchMetadataSnapshot(self, request, context):  # noqa: N802
        return self.proposals.snapshot_chunk(request)
