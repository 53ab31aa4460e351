"""gRPC channels to nodes: one channel (one HTTP/2 connection) per node address, made lazily.

Every call the client makes goes through :meth:`Connections.call`, which turns ``grpc.RpcError``
into a typed :class:`~tidelog.client.errors.TidelogError` (errors.from_rpc_error) so no other
module looks at gRPC statuses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from tidelog.client import errors
from tidelog.client.security import ClientSecurity, make_channel, tls_hint
from tidelog.proto import broker_pb2_grpc

__all__ = ["MESSAGE_BYTES_MAX", "Connections"]

#: gRPC message size limit on both directions; a Produce request or Fetch reply must fit.
MESSAGE_BYTES_MAX = 64 * 1024 * 1024

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
    # Fail fast on a dead node instead of queueing the call until the deadline.
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Connections:
    """Thread-safe pool of channels and stubs, keyed by HOST:PORT."""

    def __init__(self, security: ClientSecurity | None = None, *, client_id: str = "") -> None:
        self._security = security
        self._client_id = client_id  # sent on every call (client/throttle.py); "" = none
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, broker_pb2_grpc.BrokerStub] = {}
        self._closed = False
        self._redirects: dict[str, str] = {}

    def redirect(self, address: str, to: str) -> None:
        """Dial `to` whenever `address` is asked for (a TCP proxy in tests, or NAT)."""
        with self._lock:
            self._redirects[address] = to
            self._stubs.pop(address, None)

    def stub(self, address: str) -> broker_pb2_grpc.BrokerStub:
        stub = self._stubs.get(address)
        if stub is not None:
            return stub
        with self._lock:
            if self._closed:
                raise errors.ClientClosed("the client is closed")
            stub = self._stubs.get(address)
            if stub is None:
                target = self._redirects.get(address, address)
                channel = make_channel(target, _CHANNEL_OPTIONS, self._security)
                if self._client_id:  # quotas: the node reads the client id of every call
                    from tidelog.client.throttle import ClientIdInterceptor

                    channel = grpc.intercept_channel(channel,
                                                     ClientIdInterceptor(self._client_id))
                self._channels[address] = channel
                stub = broker_pb2_grpc.BrokerStub(channel)
                self._stubs[address] = stub
            return stub

    def channel(self, address: str) -> grpc.Channel:
        """The node's channel (made if needed), for stubs of other services on the same
        connection (tidelog.client.queue's Queues stub). A new object after forget()."""
        self.stub(address)
        with self._lock:
            channel = self._channels.get(address)
        if channel is None:
            raise errors.ClientClosed("the client is closed")
        return channel

    def call(
        self, address: str, method: str, request: Any, *, timeout_s: float, subject: str = ""
    ) -> Any:
        """A blocking unary call; raises a TidelogError on any failure."""
        rpc: Callable[..., Any] = getattr(self.stub(address), method)
        try:
            return rpc(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self.error_of(exc, address, subject=subject) from None

    def error_of(
        self, exc: BaseException, address: str, *, subject: str = ""
    ) -> errors.TidelogError:
        """The typed error of a failed call to `address` (with a TLS hint where one helps). An
        error typed already (the SCRAM login of a channel raises AuthenticationFailed inside the
        call) is returned as it is."""
        if isinstance(exc, errors.TidelogError):
            return exc
        error = errors.from_rpc_error(exc, subject=subject, address=address)
        hint = tls_hint(error.message, self._security) \
            if isinstance(error, errors.NodeUnavailable) else ""
        if hint:  # a plaintext client at a TLS node, an unknown CA, no client certificate
            error.message = error.message + hint
            error.args = (error.message,)
        return error

    def call_async(
        self, address: str, method: str, request: Any, *, timeout_s: float
    ) -> grpc.Future:
        """Start a unary call; the returned grpc future's callbacks run on a gRPC thread."""
        rpc = getattr(self.stub(address), method)
        return rpc.future(request, timeout=timeout_s)

    def forget(self, address: str) -> None:
        """Drop a channel (after the node moved or died) so the next call reconnects afresh."""
        with self._lock:
            channel = self._channels.pop(address, None)
            self._stubs.pop(address, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        for channel in channels:
            channel.close()
