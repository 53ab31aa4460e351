"""The gRPC servicer of tidelog.v1.Queues: each method hands its request to the QueueCoordinator.

Errors are mapped exactly as the Broker service maps them (node/service.py `_unary`): a
BrokerError becomes a gRPC status plus an ErrorDetail in "tidelog-error-bin" (QUEUE_NOT_FOUND ->
NOT_FOUND, QUEUE_ALREADY_EXISTS -> ALREADY_EXISTS, NOT_COORDINATOR and COORDINATOR_NOT_AVAILABLE
-> UNAVAILABLE and retriable, INVALID_REQUEST / INVALID_QUEUE_CONFIG -> INVALID_ARGUMENT);
undecodable requests are INVALID_ARGUMENT, bugs INTERNAL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidelog.node.listeners import address_for_client
from tidelog.node.service import _unary
from tidelog.proto import queue_pb2_grpc

if TYPE_CHECKING:
    from tidelog.node.queues.coordinator import QueueCoordinator

__all__ = ["QueuesService"]


class QueuesService(queue_pb2_grpc.QueuesServicer):
    def __init__(self, queues: QueueCoordinator) -> None:
        self.queues = queues

    @_unary
    async def FindQueueCoordinator(self, request, context):  # noqa: N802 - gRPC method names
        response = await self.queues.find_coordinator(request)
        if response.address:  # the coordinator's address on this call's listener
            response.address = address_for_client(
                self.queues.host.state.listeners, response.node_id, response.address)
        return response

    @_unary
    async def CreateQueue(self, request, context):  # noqa: N802
        return await self.queues.create_queue(request)

    @_unary
    async def AlterQueue(self, request, context):  # noqa: N802
        return await self.queues.alter_queue(request)

    @_unary
    async def DeleteQueue(self, request, context):  # noqa: N802
        return await self.queues.delete_queue(request)

    @_unary
    async def ListQueues(self, request, context):  # noqa: N802
        return self.queues.list_queues()

    @_unary
    async def DescribeQueue(self, request, context):  # noqa: N802
        return await self.queues.describe_queue(request)

    @_unary
    async def Receive(self, request, context):  # noqa: N802
        return await self.queues.receive(request)

    @_unary
    async def Settle(self, request, context):  # noqa: N802
        return await self.queues.settle(request)

    @_unary
    async def Peek(self, request, context):  # noqa: N802
        return await self.queues.peek(request)

    @_unary
    async def Purge(self, request, context):  # noqa: N802
        return await self.queues.purge(request)

    @_unary
    async def Redrive(self, request, context):  # noqa: N802
        return await self.queues.redrive(request)
