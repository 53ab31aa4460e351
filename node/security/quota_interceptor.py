"""The quota check of the client listener: the I/O shell around node/security/quotas.py.

Runs after authentication (`current_principal` is set) and before authorization, in the RPC's
own task. For each call it finds the quotas that apply (`resolve`, from the replicated
`MetadataState.quotas`), holds the call while its buckets are held (a caller that did not wait
out an earlier throttle time), serves it, counts the usage (one request; Produce: the request's
batch bytes; Fetch: the response's batch bytes) and, over a quota, puts the throttle time in the
response's `throttle_time_ms`. Nothing is refused: a held Produce is appended once the hold ends.

Exempt: gRPC health checks, and `Node:` principals (another node of this cluster: Kafka exempts
inter-broker traffic too).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, assert_never

import grpc
from tidelog.node.log_events import ThrottleLog
from tidelog.node.metadata import MetadataState
from tidelog.node.security.principal import PrincipalKind, current_principal
from tidelog.node.security.quotas import (
    CLIENT_ID_CHARS_MAX,
    CLIENT_ID_METADATA_KEY,
    QuotaKind,
    QuotaMatch,
    QuotaTracker,
    QuotaWindow,
    resolve,
)

__all__ = ["PRODUCE_METHOD", "FETCH_METHOD", "QuotaInterceptor", "quota_window_from_env"]

PRODUCE_METHOD = "/tidelog.v1.Broker/Produce"
PRODUCE_MANY_METHOD = "/tidelog.v1.Broker/ProduceMany"  # node/produce_many.py
FETCH_METHOD = "/tidelog.v1.Broker/Fetch"
_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
#: a hold ends this long before the caller's deadline, so the held call is still answered
_HOLD_DEADLINE_MARGIN_S = 1.0


class _MetadataView(Protocol):
    @property
    def state(self) -> MetadataState: ...


def quota_window_from_env(environ: Mapping[str, str] | None = None) -> QuotaWindow:
    """TIDELOG_QUOTA_SAMPLE_MS (default 1000) and TIDELOG_QUOTA_SAMPLES (default 11): Kafka's
    quota.window.size.seconds and quota.window.num. Tests shorten the window so that a burst
    is measured in a second rather than ten."""
    env = os.environ if environ is None else environ
    defaults = QuotaWindow()
    try:
        return QuotaWindow(
            sample_ms=int(env.get("TIDELOG_QUOTA_SAMPLE_MS", defaults.sample_ms)),
            samples=int(env.get("TIDELOG_QUOTA_SAMPLES", defaults.samples)))
    except ValueError as exc:
        from tidelog.node.errors import ConfigError

        raise ConfigError(f"TIDELOG_QUOTA_SAMPLE_MS / TIDELOG_QUOTA_SAMPLES: {exc}") from None


class QuotaInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metadata: _MetadataView, *, window: QuotaWindow | None = None,
                 clock_ms: Callable[[], float] = lambda: time.monotonic() * 1000) -> None:
        self._metadata = metadata
        self.tracker = QuotaTracker(window)
        self._clock_ms = clock_ms
        self._throttle_log = ThrottleLog()  # "throttling client ...", once per client per 10 s

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or method.startswith(
                _EXEMPT_PREFIXES):
            return handler  # a client-streaming method (none is served yet) is not counted
        client_id = _client_id(details.invocation_metadata)
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if client_id is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{CLIENT_ID_METADATA_KEY} is longer than {CLIENT_ID_CHARS_MAX} characters")
            matches = self._matches(method, client_id or "")
            if not matches:
                return await inner(request, context)
            await self._hold(matches, context)
            self._account_request(matches, request)  # no await since the hold: no race
            response = await inner(request, context)
            throttle_ms, worst = self._account_response(matches, response)
            if throttle_ms and hasattr(response, "throttle_time_ms"):
                response.throttle_time_ms = max(response.throttle_time_ms, throttle_ms)
            if throttle_ms and worst is not None:
                self._throttle_log.throttled(
                    f"{client_id or '(no client id)'} ({current_principal.get()})",
                    f"{worst.kind.value} (limit {worst.limit}/s)", throttle_ms)
            return response

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _matches(self, method: str, client_id: str) -> list[QuotaMatch]:
        quotas = self._metadata.state.quotas
        principal = current_principal.get()
        if not quotas or principal.kind is PrincipalKind.NODE:
            return []
        kinds = [QuotaKind.REQUEST_RATE]
        if method in (PRODUCE_METHOD, PRODUCE_MANY_METHOD):
            kinds.append(QuotaKind.PRODUCER_BYTE_RATE)
        elif method == FETCH_METHOD:
            kinds.append(QuotaKind.CONSUMER_BYTE_RATE)
        return [m for kind in kinds
                if (m := resolve(quotas, str(principal), client_id, kind)) is not None]

    async def _hold(self, matches: list[QuotaMatch], context: grpc.aio.ServicerContext) -> None:
        """Sleep while a bucket is held. Checked again after each sleep: requests held together
        wake together, and the first to go on sets a new hold (it is counted before the next
        await) that the others then wait for -- one at a time, as Kafka serves a connection."""
        while True:
            hold_s = self.tracker.hold_ms(matches, self._clock_ms()) / 1000
            remaining_s = context.time_remaining()
            if remaining_s is not None:
                hold_s = min(hold_s, remaining_s - _HOLD_DEADLINE_MARGIN_S)
            if hold_s <= 0:
                return
            await asyncio.sleep(hold_s)

    def _account_request(self, matches: list[QuotaMatch], request: Any) -> None:
        """Count what is known before serving (one request; a Produce's batch bytes) and hold
        the buckets now over quota, so requests already on their way wait for this one's
        throttle time rather than passing in the meantime."""
        now_ms = self._clock_ms()
        for match in matches:
            match match.kind:
                case QuotaKind.REQUEST_RATE:
                    self.tracker.record(match, 1, now_ms)
                case QuotaKind.PRODUCER_BYTE_RATE:
                    self.tracker.record(match, _produce_bytes(request), now_ms)
                case QuotaKind.CONSUMER_BYTE_RATE:
                    continue  # known once served
                case _:
                    assert_never(match.kind)
            self.tracker.throttle(match, now_ms)

    def _account_response(self, matches: list[QuotaMatch], response: Any
                          ) -> tuple[int, QuotaMatch | None]:
        """Count a Fetch's batch bytes; the throttle time to answer with (the longest) and the
        quota that set it."""
        now_ms = self._clock_ms()
        throttle_ms, worst = 0, None
        for match in matches:
            if match.kind is QuotaKind.CONSUMER_BYTE_RATE:
                self.tracker.record(match, sum(len(p.batches) for p in response.partitions),
                                    now_ms)
            this_ms = self.tracker.throttle(match, now_ms)
            if this_ms > throttle_ms:
                throttle_ms, worst = this_ms, match
        return throttle_ms, worst


def _produce_bytes(request: Any) -> int:
    """The batch bytes of a Produce, or of every partition of a ProduceMany."""
    if hasattr(request, "partitions"):
        return sum(len(p.batches) for p in request.partitions)
    return len(getattr(request, "batches", b""))


def _client_id(metadata: Any) -> str | None:
    """The caller's client id ("" when none is sent); None when it is too long."""
    for key, value in metadata or ():
        if key == CLIENT_ID_METADATA_KEY:
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            return text if len(text) <= CLIENT_ID_CHARS_MAX else None
    return ""
