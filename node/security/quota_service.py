"""The `tidelog.v1.Quotas` servicer (proto/quota.proto): set, remove and describe client quotas.

Set and Remove become metadata commands (SetQuota, RemoveQuota) committed through the metadata
Raft group, so every node enforces the same quotas and they survive restarts (the metadata log
is replayed). Describe reads what this node has applied.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from tidelog.node.errors import InvalidRequestError
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command, RemoveQuota, SetQuota
from tidelog.node.metadata_service import raise_result
from tidelog.node.security.quotas import QuotaEntity, QuotaKind
from tidelog.node.service import _unary as unary
from tidelog.node.service import add_servicer
from tidelog.proto import quota_pb2 as qpb
from tidelog.proto import quota_pb2_grpc

__all__ = ["QuotasService", "add_quotas_service"]

_TIMEOUT_MS_DEFAULT = 10_000
_TIMEOUT_MS_MAX = 120_000


class QuotaMetadata(Protocol):
    """What the servicer needs of node/metadata_service.MetadataService."""

    @property
    def state(self) -> MetadataState: ...

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...


def add_quotas_service(server: grpc.aio.Server, metadata: QuotaMetadata) -> None:
    """Register the Quotas service on the client listener (node/server.py)."""
    add_servicer(server, QuotasService(metadata), qpb.DESCRIPTOR.services_by_name["Quotas"])


class QuotasService(quota_pb2_grpc.QuotasServicer):
    def __init__(self, metadata: QuotaMetadata) -> None:
        self._metadata = metadata

    @unary
    async def SetQuota(self, request, context):  # noqa: N802 - gRPC method names
        if not request.limits:
            raise InvalidRequestError("SetQuota names no quota to set; give at least one of "
                                      + ", ".join(k.value for k in QuotaKind))
        command = SetQuota(entity=entity_from_wire(request.entity), limits=tuple(sorted(
            ((kind_from_wire(k), v) for k, v in request.limits.items()),
            key=lambda item: item[0].value)))
        raise_result(await self._metadata.propose(command, _timeout_s(request.timeout_ms)))
        return qpb.SetQuotaResponse()

    @unary
    async def RemoveQuota(self, request, context):  # noqa: N802
        kinds = sorted({kind_from_wire(k) for k in request.kinds}, key=lambda k: k.value)
        command = RemoveQuota(entity=entity_from_wire(request.entity), kinds=tuple(kinds))
        result = await self._metadata.propose(command, _timeout_s(request.timeout_ms))
        raise_result(result)
        return qpb.RemoveQuotaResponse(removed=result.get("removed", 0))

    @unary
    async def DescribeQuotas(self, request, context):  # noqa: N802
        entries = [qpb.QuotaEntry(entity=entity_to_wire(entity),
                                  limits={k.value: v for k, v in limits.items()})
                   for entity, limits in self._metadata.state.quotas.items()]
        entries.sort(key=lambda e: (e.entity.user, e.entity.user_default, e.entity.client_id,
                                    e.entity.client_id_default))
        return qpb.DescribeQuotasResponse(entries=entries)


def entity_from_wire(entity: qpb.QuotaEntity) -> QuotaEntity:
    try:
        return QuotaEntity(user=entity.user, user_default=entity.user_default,
                           client_id=entity.client_id, client_id_default=entity.client_id_default)
    except ValueError as exc:
        raise InvalidRequestError(f"quota entity: {exc}") from None


def entity_to_wire(entity: QuotaEntity) -> qpb.QuotaEntity:
    return qpb.QuotaEntity(user=entity.user, user_default=entity.user_default,
                           client_id=entity.client_id, client_id_default=entity.client_id_default)


def kind_from_wire(name: str) -> QuotaKind:
    try:
        return QuotaKind(name)
    except ValueError:
        raise InvalidRequestError(f"unknown quota {name!r}; known: "
                                  + ", ".join(k.value for k in QuotaKind)) from None


def _timeout_s(timeout_ms: int) -> float:
    if timeout_ms < 0:
        raise InvalidRequestError(f"timeout_ms {timeout_ms} is negative")
    return min(timeout_ms or _TIMEOUT_MS_DEFAULT, _TIMEOUT_MS_MAX) / 1000
