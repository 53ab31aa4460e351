"""ProduceMany: one request with the batches of several partitions (Kafka's ProduceRequest, one
per broker), each partition produced exactly as a Produce of it would be, all concurrently.

Why: keyed traffic over N partitions made N Produce calls per round, and a Python gRPC call
costs ~0.2 ms whatever its size (BASELINES.md); a producer now sends one call per leader.

Each partition is answered on its own (in request order): a partition this node does not lead,
an unknown one, an invalid batch or a storage failure fails that partition only, with the
ErrorDetail a failed Produce would have carried. The per-partition produce is the node's own
`ClientApi.produce` (validation, idempotent dedup, Raft, the wait for the commit) behind the
same metrics wrapper as Produce, so nothing of the write path is duplicated here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tidelog.node.errors import (
    BrokerError,
    InvalidRequestError,
    NotLeaderError,
    StorageRequestError,
)
from tidelog.node.metrics.produce import observed_produce
from tidelog.node.storage import StorageError
from tidelog.proto import broker_pb2 as pb

__all__ = ["PARTITIONS_PER_REQUEST_MAX", "produce_many"]

log = logging.getLogger(__name__)

#: more partitions than this in one request is refused as a whole (bound everything)
PARTITIONS_PER_REQUEST_MAX = 10_000

Produce = Callable[[pb.ProduceRequest], Awaitable[pb.ProduceResponse]]


async def produce_many(produce: Produce, request: pb.ProduceManyRequest) -> pb.ProduceManyResponse:
    """Run `produce` for every partition of `request` concurrently; one result per partition."""
    if len(request.partitions) > PARTITIONS_PER_REQUEST_MAX:
        raise InvalidRequestError(
            f"ProduceMany with {len(request.partitions)} partitions; at most "
            f"{PARTITIONS_PER_REQUEST_MAX} per request")
    seen: set[tuple[str, int]] = set()
    jobs: list[Awaitable[pb.ProducePartitionResult]] = []
    for data in request.partitions:
        key = (data.topic, data.partition)
        if key in seen:  # two writes of one partition in one call would race each other
            jobs.append(_refused(data, InvalidRequestError(
                f"{data.topic}-{data.partition} appears more than once in one ProduceMany")))
            continue
        seen.add(key)
        jobs.append(_one(produce, request, data))
    results = await asyncio.gather(*jobs)
    return pb.ProduceManyResponse(results=results)


async def _one(produce: Produce, request: pb.ProduceManyRequest,
               data: pb.ProducePartitionData) -> pb.ProducePartitionResult:
    single = pb.ProduceRequest(topic=data.topic, partition=data.partition, acks=request.acks,
                               timeout_ms=request.timeout_ms, batches=data.batches)
    try:
        response = await observed_produce(produce, single)
    except BrokerError as exc:
        return _failed(data, exc)
    except StorageError as exc:  # our disk's fault, as node/service.py answers it
        log.error("ProduceMany %s-%s: storage failure: %s", data.topic, data.partition, exc)
        return _failed(data, StorageRequestError(f"storage failure on this node: {exc}"))
    except (ValueError, KeyError) as exc:  # a malformed partition that slipped past validation
        return _failed(data, InvalidRequestError(f"invalid request: {exc}"))
    return pb.ProducePartitionResult(
        topic=data.topic, partition=data.partition,
        error=pb.ErrorDetail(code=pb.NONE, leader_id=-1), response=response)


async def _refused(data: pb.ProducePartitionData, exc: BrokerError) -> pb.ProducePartitionResult:
    return _failed(data, exc)


def _failed(data: pb.ProducePartitionData, exc: BrokerError) -> pb.ProducePartitionResult:
    detail = pb.ErrorDetail(code=exc.code, leader_id=-1, retriable=exc.retriable)
    if isinstance(exc, NotLeaderError):
        detail.leader_id = exc.leader_id if exc.leader_id is not None else -1
        detail.leader_address = exc.leader_address
    return pb.ProducePartitionResult(topic=data.topic, partition=data.partition, error=detail,
                                     error_message=exc.message)
