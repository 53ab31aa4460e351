"""grpc.aio channels to nodes, one per address, built like client/security.py's make_channel.

Every call goes through :meth:`AioConnections.call`, which turns ``grpc.RpcError`` into a typed
TidelogError (errors.from_rpc_error, the sync client's mapping) so no other module of the asyncio
client looks at gRPC statuses. TLS uses the sync client's credentials (`channel_credentials`,
`tls_options`). SCRAM: the math is the sync client's (client/auth.py `client_first`,
`client_final`, `check_server_final`, all sans-I/O); only the two login calls are awaited here,
once per node, and the token rides on every call's metadata. A node that forgot the token
answers UNAUTHENTICATED: the call is sent once more after a new login.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from tidelog.client import errors
from tidelog.client.connection import _CHANNEL_OPTIONS
from tidelog.client.security import ClientSecurity, channel_credentials, tls_hint, tls_options
from tidelog.client.throttle import CLIENT_ID_METADATA_KEY

__all__ = ["AioConnections", "make_aio_channel"]

_STUBS = {
    "broker": ("tidelog.proto.broker_pb2_grpc", "BrokerStub"),
    "queues": ("tidelog.proto.queue_pb2_grpc", "QueuesStub"),
    "security": ("tidelog.proto.security_pb2_grpc", "SecurityStub"),
}


def make_aio_channel(target: str, security: ClientSecurity | None) -> grpc.aio.Channel:
    """The asyncio twin of make_channel: plaintext without `security` or without a CA, else TLS
    verified against `tls_ca` (mTLS with `tls_cert`/`tls_key`). SCRAM is not a channel
    interceptor here: AioConnections adds the token per call."""
    options = list(_CHANNEL_OPTIONS)
    if security is None or not security.tls:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, channel_credentials(security),
                                   options=[*options, *tls_options(security)])


@dataclass(slots=True)
class _Node:
    channel: grpc.aio.Channel
    stubs: dict[str, Any]
    token: str = ""
    renew_at: float = 0.0
    login: asyncio.Lock | None = None


class AioConnections:
    """Channels and stubs keyed by HOST:PORT. Used from one event loop only."""

    def __init__(self, security: ClientSecurity | None = None, *, client_id: str = "") -> None:
        self._security = security
        self._client_id = client_id
        self._nodes: dict[str, _Node] = {}
        self._closed = False
        self.logins = 0  # SCRAM logins done (tests, diagnostics)

    def _node(self, address: str) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            if self._closed:
                raise errors.ClientClosed("the client is closed")
            node = _Node(make_aio_channel(address, self._security), {}, login=asyncio.Lock())
            self._nodes[address] = node
        return node

    def _stub(self, node: _Node, service: str) -> Any:
        stub = node.stubs.get(service)
        if stub is None:
            import importlib

            module, name = _STUBS[service]
            stub = node.stubs[service] = getattr(importlib.import_module(module), name)(
                node.channel)
        return stub

    async def call(self, address: str, method: str, request: Any, *, timeout_s: float,
                   subject: str = "", service: str = "broker") -> Any:
        """One unary call; raises a TidelogError on any failure (never grpc.RpcError)."""
        node = self._node(address)
        rpc = getattr(self._stub(node, service), method)
        for attempt in (1, 2):
            metadata = await self._metadata(address, node)
            try:
                return await rpc(request, timeout=timeout_s, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if (exc.code() == grpc.StatusCode.UNAUTHENTICATED and attempt == 1
                        and node.token):
                    node.token = ""  # the node restarted or the password changed: log in again
                    continue
                raise self._error(exc, subject, address) from None
        raise AssertionError("unreachable")

    def _error(self, exc: grpc.RpcError, subject: str, address: str) -> errors.TidelogError:
        error = errors.from_rpc_error(exc, subject=subject, address=address)
        hint = tls_hint(error.message, self._security) \
            if isinstance(error, errors.NodeUnavailable) else ""
        if hint:
            error.message = error.message + hint
            error.args = (error.message,)
        return error

    async def _metadata(self, address: str, node: _Node) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        if self._client_id:
            out.append((CLIENT_ID_METADATA_KEY, self._client_id))
        security = self._security
        if security is not None and security.username:
            if not node.token or time.monotonic() >= node.renew_at:
                assert node.login is not None
                async with node.login:
                    if not node.token or time.monotonic() >= node.renew_at:
                        await self._login(address, node, security)
            out.append(("authorization", f"Bearer {node.token}"))
        return tuple(out)

    async def _login(self, address: str, node: _Node, security: ClientSecurity) -> None:
        from tidelog.client.auth import (
            EXPIRY_MARGIN_S,
            LOGIN_TIMEOUT_S,
            MECHANISM,
            AuthenticationFailed,
            check_server_final,
            client_final,
            client_first,
        )
        from tidelog.proto import security_pb2 as spb

        stub = self._stub(node, "security")
        first = client_first(security.username, secrets.token_urlsafe(24))
        try:
            started = await stub.SaslStart(spb.SaslStartRequest(
                mechanism=MECHANISM, client_first=first.encode()), timeout=LOGIN_TIMEOUT_S)
            final, expected = client_final(security.password, first,
                                           started.server_first.decode(errors="replace"))
            finished = await stub.SaslFinish(spb.SaslFinishRequest(
                exchange_id=started.exchange_id, client_final=final.encode()),
                timeout=LOGIN_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthenticationFailed(f"login as {security.username!r} refused: "
                                           f"{exc.details()}") from None
            raise self._error(exc, f"login as {security.username!r}", address) from None
        check_server_final(finished.server_final.decode(errors="replace"), expected)
        lifetime_s = finished.expires_in_ms / 1000
        node.token = finished.token
        node.renew_at = time.monotonic() + max(lifetime_s - EXPIRY_MARGIN_S, lifetime_s / 2)
        self.logins += 1

    async def forget(self, address: str) -> None:
        """Drop a node's channel (it moved or died) so the next call reconnects afresh."""
        node = self._nodes.pop(address, None)
        if node is not None:
            await node.channel.close()

    async def close(self) -> None:
        self._closed = True
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.channel.close(grace=None)
