"""AIOQueueConsumer: receive messages of a queue and settle them from asyncio code.

The model and wire are the sync QueueConsumer's (docs/queues.md, proto/queue.proto, theory of
operation in client/queue.py), and so are its sans-I/O parts: `decode_partition` (only acquired
records become QueueMessages, checksums verified), `coalesce` (consecutive offsets with the same
action travel as one Settlement range), `SettleAction`, `create_queue_request`. Settlements
never wait for the network: ``ack(message)`` returns an asyncio future at once; a settle task
lingers ack_linger_ms, then sends everything pending as ranges, up to settle_in_flight_max
requests at once, never one offset in two of them (so per message they apply in the order made).
A range refused with LOCK_LOST is sent again one offset at a time so each future tells its own
message's outcome (LockLostError). ``close()`` flushes, then releases every message received and
not settled.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tidelog.client import errors
from tidelog.client.aio.connection import AioConnections
from tidelog.client.aio.metadata import AioMetadata
from tidelog.client.config import parse_bootstrap
from tidelog.client.queue import (
    ATTEMPT_S_MIN,
    SETTLE_IN_FLIGHT_MAX,
    SETTLEMENTS_PER_REQUEST_MAX,
    Coalesced,
    QueueMessage,
    SettleAction,
    _Item,
    _range,
    check_consumer_args,
    check_max_messages,
    check_reject_reason,
    coalesce,
    extend_ms,
    nack_delay_ms,
    range_outcomes,
    received_messages,
    settle_item,
    settle_request,
    settle_results,
    unhold,
)
from tidelog.client.security import ClientSecurity

__all__ = ["AIOQueueConsumer"]

_log = logging.getLogger(__name__)
_MOVED = (errors.NotCoordinator, errors.CoordinatorNotAvailable, errors.NodeUnavailable,
          errors.NotLeader, errors.LeaderNotAvailable, errors.Timeout)
Where = tuple[str, int, int]


class _AioQueueCoordinator:
    """Calls to one queue's coordinator (Queues service), found again after it moved."""

    def __init__(self, queue: str, metadata: AioMetadata, *, backoff_s: float) -> None:
        self.queue = queue
        self._metadata = metadata
        self._backoff_s = backoff_s
        self._address: str | None = None

    async def call(self, method: str, request: object, *, timeout_s: float,
                   attempt_s: float | None = None) -> Any:
        deadline = time.monotonic() + timeout_s
        last: errors.TidelogError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Timeout(f"queue {self.queue!r}: {method} did not succeed within "
                                     f"{timeout_s:.1f} s (last error: {last})")
            try:
                address = await self._coordinator()
                budget = attempt_s if attempt_s is not None else max(ATTEMPT_S_MIN,
                                                                     timeout_s / 3)
                return await self._metadata.aio.call(
                    address, method, request, timeout_s=max(0.1, min(remaining, budget)),
                    subject=f"queue {self.queue!r}", service="queues")
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                last = exc
                if isinstance(exc, _MOVED):
                    self._address = None
            await asyncio.sleep(min(self._backoff_s, max(0.0, deadline - time.monotonic())))

    async def _coordinator(self) -> str:
        if self._address is None:
            from tidelog.proto import queue_pb2

            response = await self._metadata.call_any_async(
                "FindQueueCoordinator", queue_pb2.FindQueueCoordinatorRequest(queue=self.queue),
                service="queues")
            if not response.address:
                raise errors.CoordinatorNotAvailable(f"queue {self.queue!r}: no coordinator yet")
            self._address = response.address
        return self._address


class AIOQueueConsumer:
    """
    >>> async with AIOQueueConsumer("127.0.0.1:9091", queue="jobs", topics=["jobs"]) as c:
    ...     for message in await c.receive(max_messages=10, timeout_s=5):
    ...         await handle(message.value)
    ...         c.ack(message)          # a future; await it to know the outcome
    """

    def __init__(self, bootstrap: str | Sequence[str], *, queue: str,
                 topics: Sequence[str] | None = None, consumer_id: str | None = None,
                 ack_linger_ms: float = 1.0, request_timeout_s: float = 30.0,
                 retry_backoff_ms: int = 100, settle_in_flight_max: int = SETTLE_IN_FLIGHT_MAX,
                 security: ClientSecurity | None = None) -> None:
        check_consumer_args(queue, ack_linger_ms, settle_in_flight_max, request_timeout_s)
        self.queue = queue
        self.topics = tuple(topics or ())
        self.consumer_id = consumer_id or uuid.uuid4().hex
        self._bootstrap = parse_bootstrap(bootstrap)
        self._security = security
        self._timeout_s = request_timeout_s
        self._backoff_s = retry_backoff_ms / 1000
        self._linger_s = ack_linger_ms / 1000
        self._in_flight_max = settle_in_flight_max
        self._closed = False
        self._held: dict[Where, QueueMessage] = {}
        self._pending: deque[_Item] = deque()
        self._busy: set[Where] = set()
        self._requests: set[asyncio.Task[None]] = set()
        self._connections: AioConnections | None = None
        self._coordinator: _AioQueueCoordinator | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._flushing = 0
        self.requests_sent = 0

    async def start(self) -> None:
        self._start()

    def _start(self) -> None:
        if self._task is not None:
            return
        self._connections = AioConnections(self._security)
        metadata = AioMetadata(self._connections, self._bootstrap,
                               request_timeout_ms=int(self._timeout_s * 1000), max_age_ms=300_000,
                               retry_backoff_ms=int(self._backoff_s * 1000))
        self._coordinator = _AioQueueCoordinator(self.queue, metadata, backoff_s=self._backoff_s)
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._settle_loop())

    # --- receiving -------------------------------------------------------------------------------

    async def receive(self, max_messages: int = 1, timeout_s: float = 1.0
                      ) -> list[QueueMessage]:
        """Up to max_messages messages, each locked to this consumer; waits up to timeout_s for
        the first one ([] if none came)."""
        from tidelog.client.queue_admin import create_queue_request
        from tidelog.proto import queue_pb2

        check_max_messages(max_messages)
        self._check_open()
        self._start()
        assert self._coordinator is not None
        wait_until = time.monotonic() + max(0.0, timeout_s)

        async def call() -> Any:
            wait_s = max(0.0, wait_until - time.monotonic())
            request = queue_pb2.ReceiveRequest(
                queue=self.queue, consumer_id=self.consumer_id, max_messages=max_messages,
                max_wait_ms=int(wait_s * 1000))
            assert self._coordinator is not None
            return await self._coordinator.call(
                "Receive", request, timeout_s=self._timeout_s + timeout_s,
                attempt_s=wait_s + max(ATTEMPT_S_MIN, self._timeout_s / 3))

        try:
            response = await call()
        except errors.QueueNotFound:
            if not self.topics:
                raise
            _log.info("queue %s does not exist: creating it over %s with the defaults",
                      self.queue, ", ".join(self.topics))
            await self._coordinator.call(
                "CreateQueue", create_queue_request(self.queue, self.topics, if_not_exists=True,
                                                    timeout_ms=int(self._timeout_s * 1000)),
                timeout_s=self._timeout_s, attempt_s=self._timeout_s)
            response = await call()
        return self._messages(response)

    # --- settling --------------------------------------------------------------------------------

    def ack(self, message: QueueMessage) -> asyncio.Future[int | None]:
        """Done: never delivered again."""
        return self._settle(message, SettleAction.ACK)

    def nack(self, message: QueueMessage, delay_s: float | None = None
             ) -> asyncio.Future[int | None]:
        """Failed: redeliver after delay_s (None: the queue's backoff)."""
        return self._settle(message, SettleAction.NACK, delay_ms=nack_delay_ms(delay_s))

    def reject(self, message: QueueMessage, reason: str = "") -> asyncio.Future[int | None]:
        """Poison: straight to the dead-letter topic, with `reason`."""
        check_reject_reason(reason)
        return self._settle(message, SettleAction.REJECT, reason=reason)

    def release(self, message: QueueMessage) -> asyncio.Future[int | None]:
        """Not processed: available again at once; this delivery does not count."""
        return self._settle(message, SettleAction.RELEASE)

    def extend(self, message: QueueMessage, seconds: float) -> asyncio.Future[int | None]:
        """Keep the lock `seconds` from now; the future gives the new deadline (ms)."""
        return self._settle(message, SettleAction.EXTEND, extend_ms=extend_ms(seconds))

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send every settlement made so far now and wait until each is answered."""
        futures = [it.future for it in self._pending] + [
            it.future for task in self._requests for it in getattr(task, "items", ())]
        if not futures:
            return
        self._flushing += 1
        assert self._wake is not None
        self._wake.set()
        try:
            done, _ = await asyncio.wait(futures, timeout=timeout_s)
            if len(done) != len(futures):
                raise errors.Timeout(f"flush did not finish within {timeout_s} s")
        finally:
            self._flushing -= 1

    async def close(self, timeout_s: float | None = None) -> None:
        """Flush, release the messages received and not settled, stop. Idempotent."""
        if self._closed:
            return
        for message in list(self._held.values()):
            self._settle(message, SettleAction.RELEASE)
        self._closed = True
        if self._task is None:
            return
        try:
            await self.flush(timeout_s if timeout_s is not None else self._timeout_s)
        except errors.Timeout as exc:
            _log.warning("queue %s: closing with settlements unanswered: %s", self.queue, exc)
        requests = list(self._requests)
        for task in [self._task, *requests]:
            task.cancel()
        await asyncio.gather(self._task, *requests, return_exceptions=True)
        for item in [*self._pending, *(it for task in requests
                                       for it in getattr(task, "items", ()))]:
            if not item.future.done():
                item.future.set_exception(errors.ClientClosed(
                    "queue consumer closed before the settlement was answered"))
                item.future.exception()  # retrieved: a fire-and-forget ack must not warn
        assert self._connections is not None
        await self._connections.close()

    async def __aenter__(self) -> AIOQueueConsumer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def held(self) -> int:
        """Messages received and not settled yet."""
        return len(self._held)

    # --- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClientClosed("the queue consumer is closed")

    def _messages(self, response: Any) -> list[QueueMessage]:
        out = received_messages(self.queue, response, None,
                                lambda message: self._settle(message, SettleAction.RELEASE))
        for message in out:
            self._held[(message.topic, message.partition, message.offset)] = message
        return out

    def _settle(self, message: QueueMessage, action: SettleAction, *, delay_ms: int = -1,
                reason: str = "", extend_ms: int = 0) -> asyncio.Future[int | None]:
        unhold(self.queue, self._held, message, action)  # (a closed one holds nothing)
        self._check_open()
        self._start()
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.append(settle_item(message, action, future, delay_ms=delay_ms,
                                         reason=reason, extend_ms=extend_ms))
        assert self._wake is not None
        self._wake.set()
        return future

    async def _settle_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._linger_s and not self._flushing:
                await asyncio.sleep(self._linger_s)
            while self._pending and len(self._requests) < self._in_flight_max:
                items = self._take()
                if not items:
                    break
                task = asyncio.get_running_loop().create_task(self._send(items))
                task.items = items  # type: ignore[attr-defined]
                self._requests.add(task)

    def _take(self) -> list[_Item]:
        """The next request's items, in order, stopping before an offset already taken or in
        flight."""
        taken: list[_Item] = []
        seen: set[Where] = set()
        while self._pending and len(taken) < SETTLEMENTS_PER_REQUEST_MAX:
            item = self._pending[0]
            where = (item.topic, item.partition, item.offset)
            if where in seen or where in self._busy:
                break
            seen.add(where)
            taken.append(self._pending.popleft())
        self._busy |= seen
        return taken

    async def _send(self, items: list[_Item]) -> None:
        try:
            ranges = coalesce(items)
            outcomes = await self._attempt(ranges)
            done: list[tuple[_Item, BaseException | None, int | None]] = []
            retry: list[_Item] = []
            for r, (error, deadline) in zip(ranges, outcomes, strict=True):
                if isinstance(error, errors.LockLostError) and len(r.items) > 1:
                    retry += r.items  # one refused record refuses its range: one at a time
                else:
                    done += [(it, error, deadline) for it in r.items]
            if retry:
                singles = [_range([it]) for it in retry]
                for r, (error, deadline) in zip(singles, await self._attempt(singles),
                                                strict=True):
                    done.append((r.items[0], error, deadline))
        except Exception as exc:  # a bug must fail the futures, not hang flush()
            _log.exception("settle request failed")
            done = [(it, errors.UnknownError(f"settle failed: {exc!r}"), None) for it in items]
        for item, error, deadline in done:
            future: asyncio.Future[int | None] = item.future  # type: ignore[assignment]
            if not future.done():
                if error is None:
                    future.set_result(deadline)
                else:
                    future.set_exception(error)
                    future.exception()  # retrieved here: a fire-and-forget ack must not warn
        for item in items:
            self._busy.discard((item.topic, item.partition, item.offset))
        self._requests.discard(asyncio.current_task())  # type: ignore[arg-type]
        assert self._wake is not None
        if self._pending:
            self._wake.set()

    async def _attempt(self, ranges: Sequence[Coalesced]
                       ) -> list[tuple[BaseException | None, int | None]]:

        assert self._coordinator is not None
        self.requests_sent += 1
        request = settle_request(self.queue, self.consumer_id, ranges, self._timeout_s)
        try:
            response = await self._coordinator.call("Settle", request, timeout_s=self._timeout_s)
        except errors.TidelogError as exc:
            return [(exc, None)] * len(ranges)
        return range_outcomes(ranges, settle_results(response))
