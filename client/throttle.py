"""Quotas on the client side: the client id on every call, and waiting out throttle times.

A node over a quota answers with `throttle_time_ms` (Produce, Fetch) and holds that caller's next
requests until it has passed (docs/security.md "Quotas"). Like Kafka's clients, the producer's
sender and the consumer's fetcher then send nothing more to that node until the throttle time is
over (`ThrottleTracker.ready_at`), so the node never needs to hold them, and they count it
(`ThrottleStats`: how often, how long in total, the longest).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from tidelog.client.errors import ConfigError

__all__ = ["CLIENT_ID_CHARS_MAX", "CLIENT_ID_METADATA_KEY", "ClientIdInterceptor",
           "ThrottleStats", "ThrottleTracker", "check_client_id"]

#: the gRPC metadata key of the client id (node/security/quotas.py reads the same key)
CLIENT_ID_METADATA_KEY = "x-tidelog-client-id"
CLIENT_ID_CHARS_MAX = 255


def check_client_id(client_id: str) -> str:
    if len(client_id) > CLIENT_ID_CHARS_MAX or not client_id.isprintable() or (
            not client_id.isascii()):
        raise ConfigError(f"client_id must be at most {CLIENT_ID_CHARS_MAX} printable ASCII "
                          f"characters, got {client_id!r}")
    return client_id


class ClientIdInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Adds `x-tidelog-client-id` to every call of a channel (client/connection.py)."""

    def __init__(self, client_id: str) -> None:
        self._metadatum = (CLIENT_ID_METADATA_KEY, check_client_id(client_id))

    def _with_id(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadatum]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                              request: Any) -> Any:
        return continuation(self._with_id(client_call_details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], client_call_details: Any,
                               request_iterator: Any) -> Any:
        return continuation(self._with_id(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: float | None, metadata: Any, credentials: Any,
                 wait_for_ready: Any, compression: Any) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleStats:
    """What the nodes' quotas cost this client so far."""

    throttled_responses: int = 0  # answers that carried a throttle time
    throttle_time_ms_total: int = 0
    throttle_time_ms_max: int = 0


class ThrottleTracker:
    """Per node address: when the client may send to it again. Thread-safe; times are the
    caller's clock (seconds), passed in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready_at_s: dict[str, float] = {}
        self._stats = ThrottleStats()

    def record(self, address: str, throttle_time_ms: int, now_s: float) -> None:
        """An answer from `address` said to wait `throttle_time_ms` (0: not throttled)."""
        if throttle_time_ms <= 0:
            return
        with self._lock:
            until = now_s + throttle_time_ms / 1000
            self._ready_at_s[address] = max(until, self._ready_at_s.get(address, until))
            s = self._stats
            self._stats = ThrottleStats(
                throttled_responses=s.throttled_responses + 1,
                throttle_time_ms_total=s.throttle_time_ms_total + throttle_time_ms,
                throttle_time_ms_max=max(s.throttle_time_ms_max, throttle_time_ms))

    def ready_at(self, address: str, now_s: float) -> float | None:
        """When the client may send to `address` again; None: now."""
        with self._lock:
            until = self._ready_at_s.get(address)
            if until is None:
                return None
            if until <= now_s:
                del self._ready_at_s[address]
                return None
            return until

    @property
    def stats(self) -> ThrottleStats:
        return self._stats
