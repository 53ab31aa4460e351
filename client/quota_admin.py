"""Admin's quota methods (mixed into tidelog.client.admin.Admin): set, remove and describe client
quotas (proto/quota.proto; semantics and precedence in docs/security.md "Quotas").

An entity is a user (a principal: 'alice' means 'User:alice'), a client id, or both; either part
may instead be the default (`user_default=True`, `client_id_default=True`). Limits are per
second: producer_byte_rate and consumer_byte_rate in bytes, request_rate in requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidelog.client import errors
from tidelog.client.routing import call_first_answering

if TYPE_CHECKING:
    from tidelog.client.config import AdminConfig
    from tidelog.client.connection import Connections
    from tidelog.client.metadata import Metadata

__all__ = ["QUOTA_KINDS", "QuotaAdmin", "QuotaEntity", "QuotaEntry", "principal_name"]

QUOTA_KINDS = ("producer_byte_rate", "consumer_byte_rate", "request_rate")
_PRINCIPAL_KINDS = ("User", "Cert", "Node", "Anonymous")
DEFAULT_NAME = "<default>"


def principal_name(user: str) -> str:
    """'alice' -> 'User:alice'; a name that already has a principal kind is kept."""
    kind, sep, _ = user.partition(":")
    if sep and kind.lower() in {k.lower() for k in _PRINCIPAL_KINDS}:
        return user
    return f"User:{user}"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaEntity:
    user: str = ""  # a principal, 'User:alice'; "" = no user part
    user_default: bool = False
    client_id: str = ""  # "" = no client-id part
    client_id_default: bool = False

    def __str__(self) -> str:
        parts = []
        if self.user or self.user_default:
            parts.append(f"user={DEFAULT_NAME if self.user_default else self.user}")
        if self.client_id or self.client_id_default:
            parts.append("client-id=" + (DEFAULT_NAME if self.client_id_default
                                         else self.client_id))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"user": DEFAULT_NAME if self.user_default else (self.user or None),
                "client_id": DEFAULT_NAME if self.client_id_default else (self.client_id or None)}


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaEntry:
    entity: QuotaEntity
    limits: dict[str, int]  # kind -> per second

    def to_dict(self) -> dict[str, Any]:
        return {**self.entity.to_dict(), "limits": dict(sorted(self.limits.items()))}


class QuotaAdmin:
    """Mixin: needs the Admin's `config`, `_connections`, `_metadata` and `_timeout_s`."""

    config: AdminConfig
    _connections: Connections
    _metadata: Metadata
    _timeout_s: float

    def set_quota(self, *, user: str = "", client_id: str = "", user_default: bool = False,
                  client_id_default: bool = False, producer_byte_rate: int | None = None,
                  consumer_byte_rate: int | None = None, request_rate: int | None = None
                  ) -> None:
        """Set the given limits of one entity (its other limits stay). Raises InvalidRequest
        for a malformed entity or a limit below 1."""
        from tidelog.proto import quota_pb2

        limits = {kind: value for kind, value in (
            ("producer_byte_rate", producer_byte_rate), ("consumer_byte_rate", consumer_byte_rate),
            ("request_rate", request_rate)) if value is not None}
        entity = _entity(user, client_id, user_default, client_id_default)
        self._quota_call("SetQuota", quota_pb2.SetQuotaRequest(
            entity=entity, limits=limits, timeout_ms=int(self._timeout_s * 1000)))

    def remove_quota(self, *, user: str = "", client_id: str = "", user_default: bool = False,
                     client_id_default: bool = False, kinds: tuple[str, ...] = ()) -> int:
        """Remove some (none named: all) limits of one entity; returns how many were set."""
        from tidelog.proto import quota_pb2

        entity = _entity(user, client_id, user_default, client_id_default)
        response = self._quota_call("RemoveQuota", quota_pb2.RemoveQuotaRequest(
            entity=entity, kinds=list(kinds), timeout_ms=int(self._timeout_s * 1000)))
        return int(response.removed)

    def describe_quotas(self, *, node_address: str | None = None) -> list[QuotaEntry]:
        """Every quota the cluster has, as the node asked (any, or `node_address`) has applied
        it."""
        from tidelog.proto import quota_pb2

        response = self._quota_call("DescribeQuotas", quota_pb2.DescribeQuotasRequest(),
                                    address=node_address)
        return [QuotaEntry(entity=QuotaEntity(user=e.entity.user,
                                              user_default=e.entity.user_default,
                                              client_id=e.entity.client_id,
                                              client_id_default=e.entity.client_id_default),
                           limits=dict(e.limits)) for e in response.entries]

    def _quota_call(self, method: str, request: Any, *, address: str | None = None) -> Any:
        """On the first node that answers, retrying retriable failures until the timeout (any
        node takes a change: it forwards it to the metadata leader)."""
        from tidelog.proto import quota_pb2_grpc

        return call_first_answering(
            self._connections, quota_pb2_grpc.QuotasStub, method, request,
            candidates=lambda: [address] if address else list(dict.fromkeys(
                [*(n.address for n in self._metadata.nodes()), *self.config.bootstrap])),
            subject="quotas", timeout_s=self._timeout_s,
            backoff_s=self.config.retry_backoff_ms / 1000)


def _entity(user: str, client_id: str, user_default: bool, client_id_default: bool) -> Any:
    from tidelog.proto import quota_pb2

    if not (user or client_id or user_default or client_id_default):
        raise errors.ConfigError("a quota needs a user, a client id, or a default of one")
    return quota_pb2.QuotaEntity(user=principal_name(user) if user else "",
                                 user_default=user_default, client_id=client_id,
                                 client_id_default=client_id_default)
