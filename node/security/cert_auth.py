"""Who is calling, from the TLS certificate: the first interceptor of each listener.

Client listener (`CertAuthInterceptor`, first in `client_interceptors`): a client that presented a
certificate verified against our CA runs as `Cert:<subject>` (`Cert:CN=alice`); later
interceptors (SCRAM authentication, quotas, ACLs) read `current_principal`. Without a
certificate the principal stays as it was (Anonymous) and authentication decides.

Peer listener (`PeerAuthInterceptor`): every RPC runs as `Node:<id>`. With TLS the id is taken
from the verified certificate's URI SAN (`tidelog://node/<id>`) and must be one of the cluster's
node ids, or the call is refused PERMISSION_DENIED; a certificate from another CA never gets this
far (the handshake fails). ClusterService.Exchange then refuses any RaftBatch whose `from_node`
is not that id. Without TLS the peer listener trusts its network (docs/security.md) and the
principal is `Node:unverified`.

Each interceptor wraps the method handler, so the principal is set inside the RPC's own task and
is visible to the interceptors after it and to the servicer.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc
from tidelog.node.security.principal import Principal, PrincipalKind, current_principal
from tidelog.node.security.tls import certificate_of, node_id_of_certificate, subject_of

__all__ = ["UNVERIFIED_NODE", "CertAuthInterceptor", "PeerAuthInterceptor",
           "certificate_principal", "forged_from_node", "peer_node_id", "wrap_handler"]

log = logging.getLogger(__name__)

UNVERIFIED_NODE = Principal(PrincipalKind.NODE, "unverified")
REFUSAL_LOG_INTERVAL_S = 30.0
_LOGGED_SUBJECTS_MAX = 1000

Check = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def certificate_principal(context: grpc.aio.ServicerContext) -> Principal | None:
    """`Cert:<subject>` of the caller's verified client certificate; None without one."""
    cert = certificate_of(context)
    return None if cert is None else Principal(PrincipalKind.CERT, subject_of(cert))


def peer_node_id(context: grpc.aio.ServicerContext) -> int | None:
    """The node id the caller's verified certificate names; None without one."""
    cert = certificate_of(context)
    return None if cert is None else node_id_of_certificate(cert)


class CertAuthInterceptor(grpc.aio.ServerInterceptor):
    """Client listener: a verified client certificate names the principal."""

    def __init__(self) -> None:
        self._logged: set[str] = set()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        return None if handler is None else wrap_handler(handler, self._check)

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        principal = certificate_principal(context)
        if principal is None:
            return
        current_principal.set(principal)
        name = str(principal)
        if name not in self._logged and len(self._logged) < _LOGGED_SUBJECTS_MAX:
            self._logged.add(name)  # once per subject: an operator sees who connects
            log.info("client certificate accepted: principal %s (%s)", name, context.peer())


class PeerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Peer listener: only the cluster's nodes, each as `Node:<id>` from its certificate."""

    def __init__(self, node_ids: Collection[int], *, tls: bool) -> None:
        self._node_ids = node_ids  # may be live (node/membership.py LiveNodeIds)
        self._tls = tls
        self._refused_at: dict[str, float] = {}  # who → when last logged (bounded)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        return None if handler is None else wrap_handler(handler, self._check)

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        if not self._tls:
            current_principal.set(UNVERIFIED_NODE)
            return
        cert = certificate_of(context)
        node_id = None if cert is None else node_id_of_certificate(cert)
        if node_id is None or node_id not in self._node_ids:
            who = "no certificate" if cert is None else f"certificate {subject_of(cert)}"
            self._log_refusal(who, context.peer())
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer listener: {who} names no node of this cluster (node certificates carry "
                f"the URI SAN tidelog://node/<id>; cluster nodes {sorted(self._node_ids)})")
        current_principal.set(Principal(PrincipalKind.NODE, str(node_id)))

    def _log_refusal(self, who: str, peer: str) -> None:
        """Every 30 s at most per certificate: a node that is not (or no longer) a member keeps
        retrying, and an operator must see who and why (docs/operations.md)."""
        now = time.monotonic()
        if now - self._refused_at.get(who, -1e9) < REFUSAL_LOG_INTERVAL_S:
            return
        if len(self._refused_at) >= _LOGGED_SUBJECTS_MAX:
            self._refused_at.clear()
        self._refused_at[who] = now
        log.warning("peer listener refused %s from %s: it names no node of this cluster (not "
                    "admitted, or removed)", who, peer)


def forged_from_node(caller: Principal, from_node: int) -> str | None:
    """Why a RaftBatch claiming `from_node` is refused from `caller`, or None if it is not: a
    peer whose certificate names node N may only speak as node N. (Plaintext peers are
    `Node:unverified`: nothing to check against.)"""
    if caller.kind is not PrincipalKind.NODE or caller == UNVERIFIED_NODE:
        return None
    if caller.name != str(from_node):
        return (f"RaftBatch from_node {from_node} refused: the peer's certificate names node "
                f"{caller.name}")
    return None


def wrap_handler(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """The same handler, with `check(context)` awaited first in the RPC's task (it may abort)."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await inner_uu(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await inner_su(requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, check), **kwargs)
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, check), **kwargs)


def _streaming(inner: Any, check: Check) -> Any:
    """A server-streaming behaviour is an async generator or a coroutine that calls
    context.write (grpc_health's Watch); the wrapper keeps the same kind."""
    if inspect.isasyncgenfunction(inner):
        async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            async for response in inner(request, context):
                yield response
        return generator

    async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(context)
        return await inner(request, context)
    return writer
