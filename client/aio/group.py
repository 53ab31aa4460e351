"""Consumer group membership for the asyncio consumer: the coordinator's calls and the heartbeat
as asyncio tasks, over the sync client's wire helpers (client/group.py `tps_to_wire`,
`tps_from_wire`, JOIN_EPOCH, LEAVE_EPOCH) and protocol (docs/consumer-groups.md).

The heartbeat task sends what the consumer owns; when the coordinator answers with a different
assignment it reconciles at once, on the loop: revoked partitions are committed (auto-commit)
and dropped, assigned ones get their committed positions, then the next heartbeat tells the
coordinator, which only then hands the revoked partitions to their new owners. Fencing
(UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH) drops every owned partition without committing and joins
again with epoch 0. `leave()` sends epoch -1 so the partitions move on at once, and so does a
member whose consumer has not called getmany() for max_poll_interval_ms (it joins again on the
next getmany()).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from tidelog.client import errors
from tidelog.client.aio.metadata import AioMetadata
from tidelog.client.aio.waiting import wait_event
from tidelog.client.group import JOIN_EPOCH, LEAVE_EPOCH, tps_from_wire, tps_to_wire
from tidelog.client.records import TopicPartition

__all__ = ["AioCoordinator", "AioMembership"]

_log = logging.getLogger(__name__)
_COORDINATOR_ERRORS = (errors.NotCoordinator, errors.CoordinatorNotAvailable,
                       errors.NodeUnavailable, errors.Timeout)

Reconcile = Callable[[frozenset[TopicPartition], frozenset[TopicPartition], bool],
                     Awaitable[None]]


class AioCoordinator:
    """Calls to one group's coordinator, found again after it moved."""

    def __init__(self, group_id: str, metadata: AioMetadata, *, backoff_s: float) -> None:
        self.group_id = group_id
        self._metadata = metadata
        self._backoff_s = backoff_s
        self._address: str | None = None

    async def call(self, method: str, request: object, *, timeout_s: float) -> object:
        deadline = time.monotonic() + timeout_s
        last: errors.TidelogError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Timeout(f"group {self.group_id!r}: {method} did not succeed within "
                                     f"{timeout_s:.1f} s (last error: {last})")
            try:
                address = await self._coordinator()
                return await self._metadata.aio.call(
                    address, method, request, timeout_s=max(0.1, remaining),
                    subject=f"group {self.group_id!r}")
            except errors.TidelogError as exc:
                if not exc.retriable and not isinstance(exc, _COORDINATOR_ERRORS):
                    raise
                last = exc  # e.g. the offsets topic still being created: retry until timeout
                if isinstance(exc, _COORDINATOR_ERRORS):
                    self._address = None
            await asyncio.sleep(min(self._backoff_s, max(0.0, deadline - time.monotonic())))

    async def _coordinator(self) -> str:
        if self._address is None:
            from tidelog.proto import broker_pb2

            response = await self._metadata.call_any_async(
                "FindCoordinator", broker_pb2.FindCoordinatorRequest(group_id=self.group_id))
            self._address = response.address
        return self._address


class AioMembership:
    """One member of one group: the heartbeat task."""

    def __init__(self, coordinator: AioCoordinator, reconcile: Reconcile, *,
                 topics: Iterable[str], assignor: str, session_timeout_ms: int,
                 max_poll_interval_ms: int, request_timeout_ms: int, client_id: str = "") -> None:
        self.coordinator = coordinator
        self.member_id = uuid.uuid4().hex
        self._reconcile = reconcile
        self._topics = tuple(sorted(set(topics)))
        self._assignor = assignor
        self._session_timeout_ms = session_timeout_ms
        self._max_poll_interval_ms = max_poll_interval_ms
        self._request_timeout_s = request_timeout_ms / 1000
        self._client_id = client_id
        self.epoch = JOIN_EPOCH
        self.owned: frozenset[TopicPartition] = frozenset()
        self._interval_s = min(1.0, session_timeout_ms / 5000)
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_poll = time.monotonic()
        self._poll_timed_out = False
        self._task: asyncio.Task[None] | None = None
        self.last_error: errors.TidelogError | None = None
        #: set whenever the owned partitions changed (tests and getmany wait on it)
        self.changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"tidelog-aio-heartbeat-{self.coordinator.group_id}")

    async def leave(self) -> None:
        """Stop heartbeating and leave the group (best effort: else the session times out)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, self._request_timeout_s)
        if self.epoch > 0:
            try:
                await self._send(LEAVE_EPOCH, frozenset(), min(5.0, self._request_timeout_s))
            except errors.TidelogError as exc:
                _log.info("leaving group %s: %s (its session will time out instead)",
                          self.coordinator.group_id, exc)
            self.epoch = LEAVE_EPOCH

    def polled(self) -> None:
        """getmany() was called: alive as far as max_poll_interval_ms goes (a member that left
        for not polling joins again now)."""
        self._last_poll = time.monotonic()
        if self._poll_timed_out:
            self._poll_timed_out = False
            self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            if self._poll_timed_out:  # left the group: wait for the next getmany()
                await self._wake.wait()
                self._wake.clear()
                continue
            if time.monotonic() - self._last_poll > self._max_poll_interval_ms / 1000:
                await self._leave_for_not_polling()
                continue
            await self._heartbeat()
            if self._stopping:
                return
            await wait_event(self._wake, self._interval_s)
            self._wake.clear()

    async def _leave_for_not_polling(self) -> None:
        """max_poll_interval_ms passed without getmany(): leave, so the partitions move on to
        members that make progress; they are lost here (no commit: this member stalled)."""
        _log.warning("group %s: getmany() not called for max_poll_interval_ms=%d; leaving the "
                     "group (the next getmany joins again)", self.coordinator.group_id,
                     self._max_poll_interval_ms)
        self._poll_timed_out = True
        if self.epoch > 0:
            try:
                await self._send(LEAVE_EPOCH, frozenset(), min(5.0, self._request_timeout_s))
            except errors.TidelogError as exc:
                self.last_error = exc
        lost, self.owned, self.epoch = self.owned, frozenset(), JOIN_EPOCH
        await self._reconcile(lost, frozenset(), True)
        self.changed.set()

    async def _heartbeat(self) -> None:
        timeout_s = max(1.0, min(self._request_timeout_s, self._session_timeout_ms / 2000))
        try:
            response = await self._send(self.epoch, self.owned, timeout_s)
        except (errors.UnknownMemberId, errors.FencedMemberEpoch) as exc:
            _log.warning("group %s: member %s fenced (%s); its partitions are lost, joining "
                         "again", self.coordinator.group_id, self.member_id, exc)
            self.last_error = exc
            lost, self.owned, self.epoch = self.owned, frozenset(), JOIN_EPOCH
            await self._reconcile(lost, frozenset(), True)
            self.changed.set()
            self._wake.set()
            return
        except errors.TidelogError as exc:
            self.last_error = exc
            _log.info("group %s: heartbeat failed: %s", self.coordinator.group_id, exc)
            return
        self.last_error = None
        if self._stopping:
            return
        self.epoch = response.member_epoch  # type: ignore[attr-defined]
        self._interval_s = max(0.05, response.heartbeat_interval_ms / 1000)  # type: ignore[attr-defined]
        target = frozenset(tps_from_wire(response.assignment))  # type: ignore[attr-defined]
        if target != self.owned:
            revoked, assigned = self.owned - target, target - self.owned
            await self._reconcile(revoked, assigned, False)
            self.owned = target
            self.changed.set()
            self._wake.set()  # tell the coordinator at once

    async def _send(self, epoch: int, owned: frozenset[TopicPartition],
                    timeout_s: float) -> object:
        from tidelog.proto import broker_pb2

        request = broker_pb2.ConsumerGroupHeartbeatRequest(
            group_id=self.coordinator.group_id, member_id=self.member_id, member_epoch=epoch,
            subscribed_topic_names=self._topics, server_assignor=self._assignor,
            owned=tps_to_wire(owned), owned_sent=True,
            session_timeout_ms=self._session_timeout_ms,
            rebalance_timeout_ms=self._max_poll_interval_ms, client_id=self._client_id)
        return await self.coordinator.call("ConsumerGroupHeartbeat", request,
                                           timeout_s=timeout_s)
