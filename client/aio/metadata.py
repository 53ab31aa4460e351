"""The asyncio client's metadata cache: the sync client's `Metadata` cache (leaders, nodes,
staleness, NOT_LEADER hints: no I/O) with its four I/O methods awaited instead of blocking.

The cache methods (`cached_topic`, `leader_address`, `node_address`, `nodes`, `mark_stale`,
`stale_topics`, `mark_slow`/`is_slow`) are inherited unchanged, and so are call_any's rules
(client/metadata.py `_needs_probe`, `_attempt_budget`, `_candidates`, `_answered`,
`_round_failed`): nodes are asked in the same order (a node that timed out is asked last for
SLOW_FOR_S), and until some node first answered each failed round is logged at INFO on the
``tidelog.client`` logger and ClusterUnreachable is raised once bootstrap_timeout_s passed. Nodes
are asked one after the other (not hedged). The blocking methods (`describe`, `refresh`, `topic`,
`call_any`) raise, so nothing on the event loop can block on them by mistake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from tidelog.client import errors
from tidelog.client.aio.connection import AioConnections
from tidelog.client.metadata import (
    BOOTSTRAP_TIMEOUT_S,
    ClusterDescription,
    Metadata,
    TopicDescription,
    _description_from,
)

__all__ = ["METADATA_ATTEMPT_S_MAX", "AioMetadata"]

#: a Metadata call is cheap: a node that has not answered in this long is paused or cut off, and
#: the next one is asked (a paused node must not hold leader discovery for request_timeout_ms)
METADATA_ATTEMPT_S_MAX = 5.0


class AioMetadata(Metadata):
    def __init__(self, connections: AioConnections, bootstrap: tuple[str, ...], *,
                 request_timeout_ms: int, max_age_ms: int, retry_backoff_ms: int,
                 bootstrap_timeout_s: float = BOOTSTRAP_TIMEOUT_S) -> None:
        super().__init__(None, bootstrap, request_timeout_ms=request_timeout_ms,  # type: ignore[arg-type]
                         max_age_ms=max_age_ms, retry_backoff_ms=retry_backoff_ms,
                         bootstrap_timeout_s=bootstrap_timeout_s)
        self.aio = connections

    # --- awaited I/O ------------------------------------------------------------------------------

    async def describe_async(self, topics: Iterable[str] | None = None, *,
                             include_internal: bool = False) -> ClusterDescription:
        """One Metadata call; updates the cache like Metadata.describe."""
        from tidelog.proto import broker_pb2

        request = broker_pb2.MetadataRequest(topics=list(topics or ()),
                                             include_internal=include_internal)
        return self._learn(_description_from(await self.call_any_async(
            "Metadata", request, attempt_s=min(self._timeout_s, METADATA_ATTEMPT_S_MAX))))

    async def _confirmed_by_async(self, leader: str, name: str,
                                  answer: ClusterDescription) -> ClusterDescription:
        """Metadata._confirmed_by, awaited."""
        from tidelog.proto import broker_pb2

        try:
            response = await self.aio.call(
                leader, "Metadata", broker_pb2.MetadataRequest(topics=[name]),
                timeout_s=min(self._timeout_s, METADATA_ATTEMPT_S_MAX))
        except errors.TidelogError:
            return answer
        return self._learn(_description_from(response))

    async def refresh_async(self, topics: Iterable[str]) -> None:
        """Refresh these topics unless refreshed within retry_backoff_ms."""
        due = self._due(topics)
        if due:
            await self.describe_async(due)

    async def topic_async(self, name: str, *, timeout_s: float) -> TopicDescription:
        """Like Metadata.topic: TopicNotFound when the cluster says so, Timeout when it cannot
        be reached within timeout_s."""
        cached = self._topics.get(name)
        if cached is not None and not self._is_old(name):
            return cached
        deadline = time.monotonic() + timeout_s
        last_error: errors.TidelogError | None = None
        while True:
            try:
                description = await self.describe_async([name])
                leader = self.not_found_to_confirm(description, name)
                if leader is not None:  # a lagging node's "not found": ask the metadata leader
                    description = await self._confirmed_by_async(leader, name, description)
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                last_error = exc
            else:
                error = description.topic_errors.get(name)
                if error is not None and not error.retriable:
                    raise error
                last_error = error
                found = self._topics.get(name)
                if error is None and found is not None:
                    return found
            if time.monotonic() >= deadline:
                raise errors.Timeout(f"topic {name!r}: no usable metadata after "
                                     f"{timeout_s:.1f} s (last error: {last_error})")
            await asyncio.sleep(self._backoff_s)

    async def call_any_async(self, method: str, request: object, *, service: str = "broker",
                             attempt_s: float | None = None) -> Any:
        """The call on the first node that answers (last good, known alive, bootstrap; slow
        nodes last); each node gets `attempt_s` (default request_timeout_ms), less while
        bootstrapping. A node that times out is marked slow. NoBrokersAvailable when none
        answered, ClusterUnreachable once bootstrap_timeout_s passed with none ever answering
        (Metadata.call_any's rules)."""
        if self._needs_probe(method):
            from tidelog.proto import broker_pb2

            await self.call_any_async("Metadata", broker_pb2.MetadataRequest(topics=[]),
                                      attempt_s=min(self._timeout_s, METADATA_ATTEMPT_S_MAX))
        budget = self._attempt_budget(attempt_s, None)
        addresses = self._candidates()
        failed: dict[str, errors.TidelogError] = {}
        for address in addresses:
            try:
                response = await self.aio.call(address, method, request, timeout_s=budget,
                                               service=service)
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                if isinstance(exc, errors.Timeout):
                    self.mark_slow(address)
                failed[address] = exc
                continue
            self._answered(address)
            return response
        raise self._round_failed(method, addresses, failed)

    # --- the blocking twins must not run on the loop --------------------------------------------

    def describe(self, *args: object, **kwargs: object) -> ClusterDescription:
        raise TypeError("AioMetadata: use `await describe_async(...)`")

    def refresh(self, *args: object, **kwargs: object) -> None:
        raise TypeError("AioMetadata: use `await refresh_async(...)`")

    def topic(self, *args: object, **kwargs: object) -> TopicDescription:
        raise TypeError("AioMetadata: use `await topic_async(...)`")

    def call_any(self, *args: object, **kwargs: object) -> object:
        raise TypeError("AioMetadata: use `await call_any_async(...)`")
