"""QueueConsumer: receive messages of a queue, settle each one (ack, nack, reject, release, extend).

Theory of operation (the model is docs/queues.md; the wire contract proto/queue.proto)
-------------------------------------------------------------------------------------
* A queue is a share group over topics; its state lives at one coordinator (the leader of a
  ``__queue_state`` partition). `QueueCoordinator` finds it (``FindQueueCoordinator`` on any
  node) and sends every call there, finding it again after NOT_COORDINATOR,
  COORDINATOR_NOT_AVAILABLE, NOT_LEADER or an unreachable node, with backoff, until the call's
  time budget runs out.
* ``receive`` acquires records: the coordinator answers with the RAW stored batches of each
  partition and the offset ranges acquired for this consumer (with their delivery count). A batch
  may hold records that were not acquired (acked, in flight elsewhere, delayed): only the acquired
  ones become `QueueMessage`s (`decode_partition`). Checksums are verified on decoding.
* Settlements never block the caller: each queues one item and returns a `SettleFuture`. One
  background thread (`_SettleSender`) waits ``ack_linger_ms`` after the first pending item (no
  wait while someone flushes), then sends one ``Settle`` with everything pending, coalesced into
  ranges: consecutive offsets of one partition that share delivery count, action and action
  parameters travel as one `Settlement` (`coalesce`). Up to ``settle_in_flight_max`` requests
  are in flight at once (each on a worker of a small pool), but an offset is never in two of
  them: a second settlement of a message (extend, then ack) waits until the first is answered,
  so per message they take effect in the order made.
* The coordinator answers per settlement; a range refused with LOCK_LOST is sent again one offset
  at a time, so each message's future tells that message's own outcome. The future of a refused
  settlement raises `LockLostError`: the lock expired and the message went (or will go) to
  someone else. Delivery is at-least-once.
* Ambiguity, stated: a Settle whose reply is lost (timeout, node crash) is sent again; any
  settlement the first attempt already applied (ack, nack, reject, release, extend) is answered
  OK (the coordinator remembers its newest 1024 acked ranges and 1024 ranges of the others,
  durably, so a new coordinator answers the same; docs/queues.md has the limits). A Receive
  whose reply is lost the same way leaves its records locked to this consumer until the lock
  expires; they are then delivered again, the lost delivery counted.
* ``close()`` flushes, then releases every message received and not settled (so other consumers
  get them at once instead of after the lock duration), then stops the thread.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Any, NamedTuple

from tidelog.client import errors
from tidelog.client.config import parse_bootstrap
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.metrics import QueueCounters
from tidelog.client.security import ClientSecurity

__all__ = [
    "DELIVER_AT_HEADER",
    "SETTLEMENTS_PER_REQUEST_MAX",
    "QueueConsumer",
    "QueueCoordinator",
    "QueueMessage",
    "QueueRpc",
    "SettleAction",
    "SettleFuture",
    "coalesce",
    "decode_partition",
    "deliver_at_header",
]

_log = logging.getLogger(__name__)

DELIVER_AT_HEADER = "tidelog-deliver-at-ms"
#: queue.proto: a SettleRequest carries at most this many settlements
SETTLEMENTS_PER_REQUEST_MAX = 10_000
#: queue.proto: ReceiveRequest.max_messages is 1..10000
RECEIVE_MESSAGES_MAX = 10_000
REASON_CHARS_MAX = 1000
#: Settle requests of one consumer in flight at once, by default
SETTLE_IN_FLIGHT_MAX = 4
#: the shortest gRPC deadline of one attempt of a coordinator call (see QueueCoordinator.call)
ATTEMPT_S_MIN = 5.0
#: received-and-unsettled messages remembered for close()'s release; past it, the ones whose lock
#: expired over a minute ago are forgotten (their release would be refused anyway)
HELD_MAX = 100_000
_DEFAULT_BOOTSTRAP = os.environ.get("TIDELOG_BOOTSTRAP", "127.0.0.1:9091")
# Errors after which the coordinator is looked up again.
_MOVED = (errors.NotCoordinator, errors.CoordinatorNotAvailable, errors.NodeUnavailable,
          errors.NotLeader, errors.LeaderNotAvailable, errors.Timeout)


class SettleAction(IntEnum):
    """queue.proto SettleAction, same numbers."""

    ACK = 0
    NACK = 1
    REJECT = 2
    RELEASE = 3
    EXTEND = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueMessage:
    """One delivery of one record. Settle it with the consumer that received it."""

    queue: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    #: ms since the epoch (the producer's, or the broker's clock)
    timestamp_ms: int
    #: 1 on the first delivery; a redelivery after nack / lock expiry counts up
    delivery_count: int
    #: wall clock (ms since the epoch) the lock expires at; 0 for peeked messages (no lock)
    lock_deadline_ms: int

    def header(self, name: str) -> bytes | None:
        """The value of the last header called `name`, None when there is none."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


def deliver_at_header(delay_s: float | None = None, *, at_ms: int | None = None,
                      now_ms: int | None = None) -> tuple[str, bytes]:
    """The header that delays one record: `delay_s` seconds from now, or at `at_ms` (ms since the
    epoch). Pass it in ``Producer.send(headers=[...])``; the queue delivers it no earlier."""
    if (delay_s is None) == (at_ms is None):
        raise errors.ConfigError("deliver_at_header: give delay_s or at_ms, not both or neither")
    if at_ms is None:
        assert delay_s is not None
        if delay_s < 0:
            raise errors.ConfigError(f"deliver_at_header: delay_s must be >= 0, not {delay_s}")
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        at_ms = now + round(delay_s * 1000)
    if at_ms < 0:
        raise errors.ConfigError(f"deliver_at_header: at_ms must be >= 0, not {at_ms}")
    return DELIVER_AT_HEADER, str(int(at_ms)).encode("ascii")


class DecodedBatches:
    """The records of the stored batches a consumer decoded last, so the next receive that gets
    the same batch does not decode it again.

    Why: a producer's batch holds ~1,000 records and a receive of 100 gets the whole batch, so
    without this each batch was decoded about ten times (70% of a consumer's CPU in
    benchmarks/queue_bench.py's profile). Keyed by (topic, partition, base offset, header
    checksum): a hit needs the exact header of a batch that was verified when it was decoded.
    Bounded by `batches_max`, least recently used dropped first; thread-safe."""

    def __init__(self, batches_max: int = 16) -> None:
        self._batches_max = batches_max
        self._lock = threading.Lock()
        self._records: OrderedDict[tuple[str, int, int, int], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, int, int, int]) -> Any | None:
        with self._lock:
            records = self._records.get(key)
            if records is None:
                self.misses += 1
                return None
            self._records.move_to_end(key)
            self.hits += 1
            return records

    def put(self, key: tuple[str, int, int, int], records: Any) -> None:
        with self._lock:
            self._records[key] = records
            self._records.move_to_end(key)
            while len(self._records) > self._batches_max:
                self._records.popitem(last=False)


# Shared by every QueueConsumer of this process: worker threads of one queue receive different
# records of the same stored batches, and with a cache each (16 consumers) every batch was decoded
# by each of them (74% of the process's CPU in the 16-consumer benchmark profile).
PROCESS_DECODED = DecodedBatches(batches_max=32)


def decode_partition(
    queue: str, topic: str, partition: int, batches: bytes, ranges: Iterable[tuple[int, int, int]],
    lock_deadline_ms: int, cache: DecodedBatches | None = None,
) -> list[QueueMessage]:
    """The messages of `ranges` ((first, last, delivery_count), inclusive) found in `batches` (raw
    stored batches, concatenated), in offset order. Records outside the ranges and control batches
    are skipped; a batch with no acquired record is not decompressed; a batch in `cache` is not
    decoded again. Raises CorruptBatch / InvalidBatch for damaged bytes."""
    from tidelog.proto import batch as codec

    spans = sorted(ranges)
    firsts = [first for first, _, _ in spans]
    out: list[QueueMessage] = []
    if not spans:
        return out
    view = memoryview(batches)
    try:
        for pos, header in codec.iter_batches(view, verify=False):
            if header.is_control or not _overlaps(spans, firsts, header.base_offset,
                                                  header.last_offset):
                continue
            key = (topic, partition, header.base_offset, header.header_checksum)
            decoded = cache.get(key) if cache is not None else None
            if decoded is None:
                decoded = _decoded_batch(view[pos:pos + header.size])
                if cache is not None:
                    cache.put(key, decoded)
            offsets, records = decoded
            # Only the acquired records are visited: a receive of 100 from a cached batch of
            # ~1,000 records bisects to its ranges instead of walking the whole batch.
            for first, last, count in spans:
                if last < header.base_offset or first > header.last_offset:
                    continue
                for i in range(bisect.bisect_left(offsets, first),
                               bisect.bisect_right(offsets, last)):
                    offset, timestamp, record_key, value, headers = records[i]
                    out.append(QueueMessage(
                        queue=queue, topic=topic, partition=partition, offset=offset,
                        key=record_key, value=value, headers=headers, timestamp_ms=timestamp,
                        delivery_count=count, lock_deadline_ms=lock_deadline_ms))
    except codec.CorruptBatchError as exc:
        raise errors.CorruptBatch(f"queue {queue!r}: {topic}/{partition}: received batch is "
                                  f"damaged: {exc}") from None
    except codec.BatchError as exc:
        raise errors.InvalidBatch(f"queue {queue!r}: {topic}/{partition}: received batch is "
                                  f"malformed: {exc}") from None
    return out


# --- RPC plumbing --------------------------------------------------------------------------------


class QueueRpc:
    """Calls to the Queues service, on the same channels (one per node) as the Broker calls."""

    def __init__(self, connections: Connections, metadata: Metadata,
                 bootstrap: tuple[str, ...]) -> None:
        self._connections = connections
        self._metadata = metadata
        self._bootstrap = bootstrap
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[object, Any]] = {}  # address -> (channel, QueuesStub)
        self._last_good: str | None = None

    def call(self, address: str, method: str, request: object, *, timeout_s: float,
             subject: str = "") -> Any:
        """A blocking unary call; raises a TidelogError on any failure."""
        import grpc

        try:
            return getattr(self._stub(address), method)(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc, subject=subject, address=address) from None

    def call_any(self, method: str, request: object, *, timeout_s: float) -> Any:
        """The call on the first node that answers (the last good one first, then the known
        nodes, then the bootstrap list); non-retriable errors are raised at once."""
        failures: list[str] = []
        for address in self._candidates():
            try:
                response = self.call(address, method, request, timeout_s=timeout_s)
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                failures.append(f"{address}: {exc}")
                continue
            self._last_good = address
            return response
        raise errors.NoBrokersAvailable(
            f"no node answered {method}; tried " + "; ".join(failures)
            + " (check --bootstrap / TIDELOG_BOOTSTRAP and that the cluster is up)")

    def node_addresses(self) -> list[str]:
        """The address of every node the cluster thinks alive (I/O: one Metadata call)."""
        return [n.address for n in self._metadata.describe([]).nodes if n.alive]

    def _candidates(self) -> list[str]:
        ordered = [self._last_good] if self._last_good else []
        ordered += [n.address for n in self._metadata.nodes() if n.alive]
        ordered += list(self._bootstrap)
        seen: set[str] = set()
        return [a for a in ordered if not (a in seen or seen.add(a))]

    def _stub(self, address: str) -> Any:
        from tidelog.proto import queue_pb2_grpc

        channel = self._connections.channel(address)
        with self._lock:
            cached = self._stubs.get(address)
            if cached is None or cached[0] is not channel:  # a new channel after forget()
                cached = (channel, queue_pb2_grpc.QueuesStub(channel))
                self._stubs[address] = cached
            return cached[1]


class QueueCoordinator:
    """Calls to one queue's coordinator, wherever it is. Thread-safe."""

    def __init__(self, queue: str, rpc: QueueRpc, *, backoff_s: float) -> None:
        self.queue = queue
        self._rpc = rpc
        self._backoff_s = backoff_s
        self._lock = threading.Lock()
        self._address: str | None = None
        self.node_id = -1

    def call(self, method: str, request: object, *, timeout_s: float,
             attempt_s: Callable[[float], float] | None = None) -> Any:
        """Retries retriable failures (finding the coordinator again when it may have moved)
        until timeout_s, then raises Timeout; other errors are raised at once. `attempt_s(left)`
        gives one attempt's gRPC deadline (default: the time left, at most a third of timeout_s
        and at least ATTEMPT_S_MIN, so a coordinator that stopped answering without closing its
        connections, paused or cut off, leaves time to try its successor)."""
        deadline = time.monotonic() + timeout_s
        last: errors.TidelogError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Timeout(
                    f"queue {self.queue!r}: {method} did not succeed within {timeout_s:.1f} s "
                    f"(last error: {last})")
            try:
                address = self._coordinator(remaining)
                budget = (attempt_s(remaining) if attempt_s is not None
                          else min(remaining, max(ATTEMPT_S_MIN, timeout_s / 3)))
                return self._rpc.call(address, method, request, timeout_s=max(0.1, budget),
                                      subject=f"queue {self.queue!r}")
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                last = exc
                if isinstance(exc, _MOVED):
                    self.forget()
            time.sleep(min(self._backoff_s, max(0.0, deadline - time.monotonic())))

    def forget(self) -> None:
        with self._lock:
            self._address = None

    def _coordinator(self, timeout_s: float) -> str:
        with self._lock:
            if self._address is not None:
                return self._address
        from tidelog.proto import queue_pb2

        response = self._rpc.call_any(
            "FindQueueCoordinator", queue_pb2.FindQueueCoordinatorRequest(queue=self.queue),
            timeout_s=max(0.1, min(timeout_s, ATTEMPT_S_MIN)))
        if not response.address:
            raise errors.CoordinatorNotAvailable(f"queue {self.queue!r}: no coordinator yet")
        with self._lock:
            self._address = response.address
            self.node_id = response.node_id
        return response.address


# --- settlements ---------------------------------------------------------------------------------


class SettleFuture:
    """The outcome of one settlement. ``result(timeout)`` returns the new lock deadline (ms since
    the epoch) for extend, None for the others; raises LockLostError when the consumer no longer
    held the message, or the error that stopped the request."""

    __slots__ = ("_callbacks", "_cond", "_deadline_ms", "_done", "_error", "action", "message")

    def __init__(self, message: QueueMessage, action: SettleAction,
                 cond: threading.Condition) -> None:
        self.message = message
        self.action = action
        self._cond = cond
        self._done = False
        self._error: BaseException | None = None
        self._deadline_ms: int | None = None
        self._callbacks: list[Callable[[SettleFuture], object]] = []

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds (None: forever)."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._deadline_ms

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def add_done_callback(self, fn: Callable[[SettleFuture], object]) -> None:
        """fn(self) once the outcome is known (at once if it is), on the settle thread: keep
        it short, and never wait in it (result() of a pending future, flush(), close())."""
        with self._cond:
            if not self._done:
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)

    def _wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise errors.Timeout(f"{self.action.name.lower()} of {self.message.topic}/"
                                     f"{self.message.partition}@{self.message.offset} not "
                                     f"answered within {timeout} s (still pending)")

    def _set(self, error: BaseException | None, deadline_ms: int | None) -> list[Callable]:
        """Called with the condition held; returns the callbacks to run after releasing it."""
        assert not self._done, "a settle future completed twice"
        self._error, self._deadline_ms, self._done = error, deadline_ms, True
        callbacks, self._callbacks = self._callbacks, []
        return callbacks


def _run_callback(fn: Callable[[SettleFuture], object], future: SettleFuture) -> None:
    try:
        fn(future)
    except Exception:  # a user's callback must not kill the settle thread
        _log.exception("settle callback %r raised", fn)


class _Item(NamedTuple):
    """One settlement as made by the user: one message, one action. A NamedTuple, not a frozen
    dataclass: one is made per ack, and tuple construction is several times cheaper."""

    topic: str
    partition: int
    offset: int
    delivery_count: int
    action: SettleAction
    delay_ms: int
    reason: str
    extend_ms: int
    future: SettleFuture

    @property
    def group(self) -> tuple[str, int, int, int, int, str, int]:
        return (self.topic, self.partition, self.delivery_count, int(self.action),
                self.delay_ms, self.reason, self.extend_ms)


@dataclass(frozen=True, slots=True)
class Coalesced:
    """One wire Settlement: consecutive offsets [first, last] with the same parameters."""

    topic: str
    partition: int
    first: int
    last: int
    delivery_count: int
    action: SettleAction
    delay_ms: int
    reason: str
    extend_ms: int
    items: tuple[_Item, ...]


def coalesce(items: Sequence[_Item]) -> list[Coalesced]:
    """Ranges of consecutive offsets that share (topic, partition, delivery count, action, action
    parameters), in order of their first item. Precondition: no offset appears twice."""
    groups: dict[tuple[str, int, int, int, int, str, int], list[_Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    out: list[Coalesced] = []
    for members in groups.values():
        members.sort(key=lambda it: it.offset)
        run = [members[0]]
        for item in members[1:]:
            assert item.offset != run[-1].offset, "coalesce: an offset appears twice"
            if item.offset == run[-1].offset + 1:
                run.append(item)
                continue
            out.append(_range(run))
            run = [item]
        out.append(_range(run))
    return out


def _range(run: list[_Item]) -> Coalesced:
    head = run[0]
    return Coalesced(topic=head.topic, partition=head.partition, first=head.offset,
                     last=run[-1].offset, delivery_count=head.delivery_count, action=head.action,
                     delay_ms=head.delay_ms, reason=head.reason, extend_ms=head.extend_ms,
                     items=tuple(run))


# transport(settlements, timeout_s) -> {index: (error code, message, lock_deadline_ms)}
SettleTransport = Callable[[Sequence[Coalesced], float], dict[int, tuple[int, str, int]]]


class _SettleSender:
    """The settle thread: linger, coalesce, up to `in_flight_max` Settle requests at once (each
    sent and answered on a worker of a small pool), complete the futures.

    Invariants: every item put() is completed exactly once (answered, or failed by close); an
    offset is in at most one request in flight, and a later settlement of it is sent only after
    the earlier one was answered (so per message, settlements take effect in the order made)."""

    def __init__(self, transport: SettleTransport, *, linger_s: float, timeout_s: float,
                 in_flight_max: int, name: str) -> None:
        self._transport = transport
        self._linger_s = linger_s
        self._timeout_s = timeout_s
        self._in_flight_max = in_flight_max
        self.cond = threading.Condition(threading.Lock())  # not an RLock: cheaper per ack
        # Guarded by cond:
        self._pending: deque[_Item] = deque()
        self._first_at = 0.0  # monotonic time the oldest pending item was put
        self._in_flight: dict[int, list[_Item]] = {}  # request number -> its items
        self._busy: set[tuple[str, int, int]] = set()  # offsets of the requests in flight
        self._requests = 0
        self._flushing = 0
        self._stopping = False
        self.requests_sent = 0
        self.ranges_sent = 0
        self.items_sent = 0
        #: QueueConsumer.metrics() (client/metrics.py); thread-safe by itself
        self.counters = QueueCounters()
        self._pool = ThreadPoolExecutor(in_flight_max, thread_name_prefix=f"{name}-call")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: _Item) -> None:
        with self.cond:
            if self._stopping:
                raise errors.ClientClosed("settlement after the queue consumer was closed")
            pending = self._pending
            if not pending:
                self._first_at = time.monotonic()
                pending.append(item)
                self.cond.notify_all()
                return
            pending.append(item)
            if len(pending) >= SETTLEMENTS_PER_REQUEST_MAX:
                self.cond.notify_all()

    def flush(self, timeout_s: float | None) -> None:
        """Wait until every item put so far is answered; Timeout after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.cond:
            waiting = [item.future for items in self._in_flight.values() for item in items]
            waiting += [item.future for item in self._pending]
            self._flushing += 1
            self.cond.notify_all()
            try:
                for future in waiting:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if not self.cond.wait_for(future.done, left):
                        raise errors.Timeout(f"flush: {sum(not f.done() for f in waiting)} "
                                             f"settlements not answered within {timeout_s} s")
            finally:
                self._flushing -= 1

    def stop(self, timeout_s: float | None) -> None:
        """Send what is pending, wait for the replies, end the threads; items still unsent
        after timeout_s fail with ClientClosed."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        self._thread.join(timeout_s)
        self._pool.shutdown(wait=False)
        with self.cond:
            left = list(self._pending)
            self._pending.clear()
        self._complete([(it, errors.ClientClosed("the queue consumer closed before this "
                                                 "settlement was sent"), None) for it in left])

    # --- the threads -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self._ready():
                    if self._stopping and not self._pending and not self._in_flight:
                        return
                    self.cond.wait()
                while (not self._stopping and not self._flushing
                       and len(self._pending) < SETTLEMENTS_PER_REQUEST_MAX):
                    left = self._first_at + self._linger_s - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
                batch = self._take()
                number = self._requests
                self._requests += 1
                self._in_flight[number] = batch
                self._busy.update((it.topic, it.partition, it.offset) for it in batch)
            try:
                self._pool.submit(self._send, number, batch)
            except RuntimeError:  # the pool was shut down by a stop() that timed out
                self._complete([(it, errors.ClientClosed("the queue consumer closed"), None)
                                for it in batch], number)

    def _ready(self) -> bool:
        """A request can go now: something pending whose head is not in flight, and room."""
        if not self._pending or len(self._in_flight) >= self._in_flight_max:
            return False
        head = self._pending[0]
        return (head.topic, head.partition, head.offset) not in self._busy

    def _take(self) -> list[_Item]:
        """The next request's items, in order, stopping before an offset already taken or in
        flight."""
        taken: list[_Item] = []
        seen: set[tuple[str, int, int]] = set()
        busy = self._busy
        while self._pending and len(taken) < SETTLEMENTS_PER_REQUEST_MAX:
            item = self._pending[0]
            where = (item.topic, item.partition, item.offset)
            if where in seen or where in busy:
                break
            seen.add(where)
            taken.append(self._pending.popleft())
        if self._pending:
            self._first_at = 0.0  # what is left has lingered already
        return taken

    def _send(self, number: int, batch: list[_Item]) -> None:
        """On a pool worker: send one request (and its per-offset retries), complete it."""
        try:
            self._complete(self._outcomes(batch), number)
        except BaseException as exc:  # a bug must fail the futures, not hang flush()
            _log.exception("settle request failed")
            self._complete([(it, errors.UnknownError(f"settle failed: {exc!r}"), None)
                            for it in batch], number)

    def _outcomes(self, batch: list[_Item]
                  ) -> list[tuple[_Item, BaseException | None, int | None]]:
        ranges = coalesce(batch)
        outcomes = self._attempt(ranges)
        retry = [it for r, (error, _) in zip(ranges, outcomes, strict=True)
                 if isinstance(error, errors.LockLostError) and len(r.items) > 1 for it in r.items]
        done: list[tuple[_Item, BaseException | None, int | None]] = []
        for r, (error, deadline) in zip(ranges, outcomes, strict=True):
            if isinstance(error, errors.LockLostError) and len(r.items) > 1:
                continue
            done += [(it, error, deadline) for it in r.items]
        if retry:
            # One refused record refuses its whole range: ask again one offset at a time, so
            # each future reports its own message's outcome.
            singles = [_range([it]) for it in retry]
            for r, (error, deadline) in zip(singles, self._attempt(singles), strict=True):
                done.append((r.items[0], error, deadline))
        return done

    def _attempt(self, ranges: Sequence[Coalesced]
                 ) -> list[tuple[BaseException | None, int | None]]:
        with self.cond:
            self.requests_sent += 1
            self.ranges_sent += len(ranges)
            self.items_sent += sum(len(r.items) for r in ranges)
        started = time.monotonic()
        try:
            results = self._transport(ranges, self._timeout_s)
            self.counters.settle_latency.observe(time.monotonic() - started)
        except errors.TidelogError as exc:
            return [(exc, None)] * len(ranges)
        except Exception as exc:  # a bug must fail the futures, not hang them
            _log.exception("settle request failed")
            return [(errors.UnknownError(f"settle failed: {exc!r}"), None)] * len(ranges)
        return range_outcomes(ranges, results)

    def _complete(self, done: Sequence[tuple[_Item, BaseException | None, int | None]],
                  number: int | None = None) -> None:
        """Set the futures, then (same lock) retire request `number`: its offsets may go out
        again only once their earlier settlement is answered."""
        callbacks: list[tuple[Callable, SettleFuture]] = []
        ok = [0] * len(QueueCounters.ACTION_KEYS)
        failures: list[BaseException] = []
        with self.cond:
            for item, error, deadline in done:
                if not item.future.done():
                    callbacks += [(fn, item.future) for fn in item.future._set(error, deadline)]
                    if error is None:
                        ok[item.action] += 1
                    else:
                        failures.append(error)
            if number is not None:
                for it in self._in_flight.pop(number, ()):
                    self._busy.discard((it.topic, it.partition, it.offset))
            self.cond.notify_all()
        self.counters.settlements_done(ok, failures)
        for fn, future in callbacks:
            _run_callback(fn, future)


# --- the consumer --------------------------------------------------------------------------------


# --- sans-I/O rules shared with the asyncio consumer (client/aio/queue.py) -------------------

def check_consumer_args(queue: str, ack_linger_ms: float, settle_in_flight_max: int,
                        request_timeout_s: float) -> None:
    """ConfigError for a queue consumer's arguments out of range."""
    if not queue:
        raise errors.ConfigError("queue: give the queue's name")
    if ack_linger_ms < 0:
        raise errors.ConfigError(f"ack_linger_ms must be >= 0, not {ack_linger_ms}")
    if not 1 <= settle_in_flight_max <= 64:
        raise errors.ConfigError(
            f"settle_in_flight_max must be 1..64, not {settle_in_flight_max}")
    if request_timeout_s <= 0:
        raise errors.ConfigError(f"request_timeout_s must be > 0, not {request_timeout_s}")


def check_max_messages(max_messages: int) -> None:
    if not 1 <= max_messages <= RECEIVE_MESSAGES_MAX:
        raise errors.ConfigError(
            f"max_messages must be 1..{RECEIVE_MESSAGES_MAX}, not {max_messages}")


def nack_delay_ms(delay_s: float | None) -> int:
    """A nack's delay on the wire: -1 (the queue's backoff) for None."""
    if delay_s is not None and delay_s < 0:
        raise errors.ConfigError(f"nack: delay_s must be >= 0, not {delay_s}")
    return -1 if delay_s is None else round(delay_s * 1000)


def check_reject_reason(reason: str) -> None:
    if len(reason) > REASON_CHARS_MAX:
        raise errors.ConfigError(f"reject: reason has {len(reason)} characters, at most "
                                 f"{REASON_CHARS_MAX}")


def extend_ms(seconds: float) -> int:
    """An extend's lock time on the wire (at least 1 ms)."""
    if seconds <= 0:
        raise errors.ConfigError(f"extend: seconds must be > 0, not {seconds}")
    return max(1, round(seconds * 1000))


def unhold(queue: str, held: dict[tuple[str, int, int], QueueMessage], message: QueueMessage,
           action: SettleAction) -> None:
    """A settlement of `message` is made: it is no longer held (an extend keeps it held; a
    message of an older delivery does not unhold the newer). ConfigError for another queue's."""
    if message.queue != queue:
        raise errors.ConfigError(f"message of queue {message.queue!r} settled on the "
                                 f"consumer of queue {queue!r}")
    if action is not SettleAction.EXTEND:
        where = (message.topic, message.partition, message.offset)
        current = held.get(where)
        if current is not None and current.delivery_count == message.delivery_count:
            del held[where]


def settle_item(message: QueueMessage, action: SettleAction, future: Any, *, delay_ms: int = -1,
                reason: str = "", extend_ms: int = 0) -> _Item:
    """The settlement as the sender queues it: only its action's own argument kept."""
    return _Item(message.topic, message.partition, message.offset, message.delivery_count,
                 action, delay_ms if action is SettleAction.NACK else -1,
                 reason if action is SettleAction.REJECT else "",
                 extend_ms if action is SettleAction.EXTEND else 0, future)


def stand_ins(queue: str, topic: str, partition: int,
              ranges: Sequence[tuple[int, int, int]]) -> list[QueueMessage]:
    """Empty messages for acquired offsets whose batches could not be decoded, to release."""
    return [QueueMessage(queue=queue, topic=topic, partition=partition, offset=offset, key=None,
                         value=None, headers=(), timestamp_ms=0, delivery_count=count,
                         lock_deadline_ms=0)
            for first, last, count in ranges for offset in range(first, last + 1)]


def received_messages(queue: str, response: Any, cache: DecodedBatches | None,
                      release: Callable[[QueueMessage], object]) -> list[QueueMessage]:
    """The messages of a ReceiveResponse. A partition whose batches are damaged is logged and
    its acquired offsets given to `release` (else they stay locked until the lock expires)."""
    out: list[QueueMessage] = []
    for part in response.partitions:
        ranges = [(r.first_offset, r.last_offset, r.delivery_count) for r in part.acquired]
        try:
            messages = decode_partition(queue, part.topic, part.partition, part.batches,
                                        ranges, part.lock_deadline_ms, cache)
        except (errors.CorruptBatch, errors.InvalidBatch) as exc:
            _log.warning("%s; releasing its %d acquired ranges", exc, len(ranges))
            for message in stand_ins(queue, part.topic, part.partition, ranges):
                release(message)
            continue
        missing = sum(last - first + 1 for first, last, _ in ranges) - len(messages)
        if missing:  # the coordinator acquires only offsets it read records at
            _log.warning("queue %s: %s/%d: %d acquired offsets had no record in the batches",
                         queue, part.topic, part.partition, missing)
        out += messages
    return out


def settle_request(queue: str, consumer_id: str, ranges: Sequence[Coalesced],
                   timeout_s: float) -> Any:
    from tidelog.proto import queue_pb2

    return queue_pb2.SettleRequest(
        queue=queue, consumer_id=consumer_id, timeout_ms=int(timeout_s * 1000),
        settlements=[queue_pb2.Settlement(
            topic=r.topic, partition=r.partition, first_offset=r.first, last_offset=r.last,
            delivery_count=r.delivery_count, action=int(r.action), delay_ms=r.delay_ms,
            reason=r.reason, extend_ms=r.extend_ms) for r in ranges])


def range_outcomes(ranges: Sequence[Coalesced], results: Mapping[int, tuple[int, str, int]]
                   ) -> list[tuple[BaseException | None, int | None]]:
    """Each range's outcome from the Settle results by index: (error, None), or (None, the new
    lock deadline for an extend, else None). A range the answer left out counts as OK."""
    out: list[tuple[BaseException | None, int | None]] = []
    for index, r in enumerate(ranges):
        code, message, deadline = results.get(index, (0, "", 0))
        if code:
            where = f"{r.topic}/{r.partition}@{r.first}" + (
                f"..{r.last}" if r.last != r.first else "")
            out.append((errors.from_code(code, message, subject=where), None))
        else:
            out.append((None, deadline if r.action is SettleAction.EXTEND else None))
    return out


def settle_results(response: Any) -> dict[int, tuple[int, str, int]]:
    """A SettleResponse's results by request index: (error code, message, lock deadline)."""
    return {res.index: (res.error, res.error_message, res.lock_deadline_ms)
            for res in response.results}


class QueueConsumer:
    """Receive and settle messages of one queue.

    >>> with QueueConsumer("127.0.0.1:9091", queue="jobs", topics=["jobs"]) as consumer:
    ...     for message in consumer.receive(max_messages=10, timeout_s=5):
    ...         handle(message.value)
    ...         consumer.ack(message)

    Thread-safe: any thread may receive and settle; settlements are sent by one background thread
    (batched, ack_linger_ms). With `topics`, a missing queue is created with the defaults on the
    first receive (Kafka's share groups are implicit the same way); without, QueueNotFound.
    """

    def __init__(
        self, bootstrap: str | Sequence[str] = _DEFAULT_BOOTSTRAP, *, queue: str,
        topics: Sequence[str] | None = None, consumer_id: str | None = None,
        ack_linger_ms: float = 1.0, request_timeout_s: float = 30.0,
        retry_backoff_ms: int = 100, settle_in_flight_max: int = SETTLE_IN_FLIGHT_MAX,
        security: ClientSecurity | None = None,
        _settle_transport: SettleTransport | None = None,
    ) -> None:
        """`settle_in_flight_max`: Settle requests sent before the first is answered (more
        overlap the coordinator's Raft commits, so an ack made while one is in flight need not
        wait for it). `_settle_transport` is a test seam (the Settle call); leave it None."""
        check_consumer_args(queue, ack_linger_ms, settle_in_flight_max, request_timeout_s)
        self.queue = queue
        self.topics = tuple(topics) if topics else ()
        self.consumer_id = consumer_id or uuid.uuid4().hex
        self._timeout_s = request_timeout_s
        bootstrap_addresses = parse_bootstrap(bootstrap)
        self._connections = Connections(security)
        self._metadata = Metadata(self._connections, bootstrap_addresses,
                                  request_timeout_ms=int(request_timeout_s * 1000),
                                  max_age_ms=300_000, retry_backoff_ms=retry_backoff_ms)
        self._rpc = QueueRpc(self._connections, self._metadata, bootstrap_addresses)
        self._coordinator = QueueCoordinator(queue, self._rpc, backoff_s=retry_backoff_ms / 1000)
        self._lock = threading.Lock()
        self._closed = False
        # Guarded by _lock: messages received and not yet acked/nacked/rejected/released.
        self._held: dict[tuple[str, int, int], QueueMessage] = {}
        self._decoded = PROCESS_DECODED
        self._sender = _SettleSender(_settle_transport or self._settle_rpc,
                                     linger_s=ack_linger_ms / 1000, timeout_s=request_timeout_s,
                                     in_flight_max=settle_in_flight_max,
                                     name=f"tidelog-settle-{queue}")

    # --- receiving -------------------------------------------------------------------------------

    def receive(self, max_messages: int = 1, timeout_s: float = 1.0) -> list[QueueMessage]:
        """Up to max_messages messages, each locked to this consumer for the queue's lock
        duration; waits up to timeout_s for the first one and returns [] if none came. While
        the coordinator moves, retries for up to request_timeout_s, then raises Timeout."""
        from tidelog.proto import queue_pb2

        check_max_messages(max_messages)
        self._check_open()
        started = time.monotonic()
        wait_until = started + max(0.0, timeout_s)

        def attempt_s(left: float) -> float:
            return max(0.0, wait_until - time.monotonic()) + min(
                left, max(ATTEMPT_S_MIN, self._timeout_s / 3))

        def request() -> object:
            return queue_pb2.ReceiveRequest(
                queue=self.queue, consumer_id=self.consumer_id, max_messages=max_messages,
                max_wait_ms=int(max(0.0, wait_until - time.monotonic()) * 1000))

        try:
            response = self._coordinator.call("Receive", request(), timeout_s=self._timeout_s
                                              + timeout_s, attempt_s=attempt_s)
        except errors.QueueNotFound:
            if not self.topics:
                raise
            self._create_queue()
            response = self._coordinator.call("Receive", request(), timeout_s=self._timeout_s
                                              + timeout_s, attempt_s=attempt_s)
        messages = self._messages(response)
        self._sender.counters.receive_answered(len(messages), time.monotonic() - started)
        return messages

    # --- settling --------------------------------------------------------------------------------

    def ack(self, message: QueueMessage) -> SettleFuture:
        """Done: the message is never delivered again."""
        return self._settle(message, SettleAction.ACK)

    def nack(self, message: QueueMessage, delay_s: float | None = None) -> SettleFuture:
        """Failed: redeliver after delay_s, or after the queue's backoff when None. The delivery
        that reaches max_deliveries is dead-lettered instead."""
        return self._settle(message, SettleAction.NACK, delay_ms=nack_delay_ms(delay_s))

    def reject(self, message: QueueMessage, reason: str = "") -> SettleFuture:
        """Poison: straight to the dead-letter topic, with `reason` (at most 1000 characters)."""
        check_reject_reason(reason)
        return self._settle(message, SettleAction.REJECT, reason=reason)

    def release(self, message: QueueMessage) -> SettleFuture:
        """Not processed: available again at once; this delivery does not count."""
        return self._settle(message, SettleAction.RELEASE)

    def extend(self, message: QueueMessage, seconds: float) -> SettleFuture:
        """Keep the lock `seconds` from now; the future gives the new deadline (ms since the
        epoch)."""
        return self._settle(message, SettleAction.EXTEND, extend_ms=extend_ms(seconds))

    def flush(self, timeout_s: float | None = None) -> None:
        """Send every settlement made so far at once and wait until each is answered (its future
        is done, successfully or not). Raises Timeout if timeout_s passes first."""
        self._sender.flush(timeout_s)

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self, timeout_s: float | None = None) -> None:
        """Flush the settlements, release the messages received and not settled (best effort:
        else their locks expire), and stop. Idempotent."""
        with self._lock:
            if self._closed:
                return
            held = list(self._held.values())
            self._held.clear()
        for message in held:
            self._sender.put(self._item(message, SettleAction.RELEASE))
        with self._lock:
            self._closed = True
        try:
            self._sender.flush(timeout_s if timeout_s is not None else self._timeout_s)
        except errors.Timeout as exc:
            _log.warning("queue %s: closing with settlements unanswered: %s", self.queue, exc)
        finally:
            self._sender.stop(5.0)
            self._connections.close()

    def __enter__(self) -> QueueConsumer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def metrics(self) -> dict[str, object]:
        """A snapshot of this consumer's counters, like kafka-python's ``metrics()``: a new
        plain dict each call, keys listed in docs/client.md ("Metrics"): messages received and
        held (received, not settled), settlements answered OK per action (acked, nacked,
        rejected, released, extended) and failed by kind, Settle requests / wire ranges /
        settlements sent, receive and settle (ack) latency. Thread-safe, no I/O."""
        with self._lock:
            held = len(self._held)
        out: dict[str, object] = {"held": held}
        out.update(self._sender.counters.snapshot())
        with self._sender.cond:
            out.update({"settle_requests_sent": self._sender.requests_sent,
                        "settle_ranges_sent": self._sender.ranges_sent,
                        "settlements_sent": self._sender.items_sent})
        return out

    # --- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClientClosed("the queue consumer is closed")

    def _messages(self, response: Any) -> list[QueueMessage]:
        out = received_messages(self.queue, response, self._decoded,
                                lambda message: self._settle(message, SettleAction.RELEASE))
        with self._lock:
            if len(self._held) + len(out) > HELD_MAX:
                self._forget_expired()
            for message in out:
                self._held[(message.topic, message.partition, message.offset)] = message
        return out

    def _forget_expired(self) -> None:
        """Bound _held: messages whose lock expired long ago are someone else's by now."""
        cutoff = time.time_ns() // 1_000_000 - 60_000
        for where in [w for w, m in self._held.items() if m.lock_deadline_ms < cutoff]:
            del self._held[where]

    def _settle(self, message: QueueMessage, action: SettleAction, *, delay_ms: int = -1,
                reason: str = "", extend_ms: int = 0) -> SettleFuture:
        with self._lock:
            unhold(self.queue, self._held, message, action)  # (a closed one holds nothing)
            self._check_open()
        item = self._item(message, action, delay_ms=delay_ms, reason=reason,
                          extend_ms=extend_ms)
        self._sender.put(item)
        return item.future

    def _item(self, message: QueueMessage, action: SettleAction, *, delay_ms: int = -1,
              reason: str = "", extend_ms: int = 0) -> _Item:
        future = SettleFuture(message, action, self._sender.cond)
        return settle_item(message, action, future, delay_ms=delay_ms, reason=reason,
                           extend_ms=extend_ms)

    def _settle_rpc(self, ranges: Sequence[Coalesced],
                    timeout_s: float) -> dict[int, tuple[int, str, int]]:
        request = settle_request(self.queue, self.consumer_id, ranges, timeout_s)
        return settle_results(self._coordinator.call("Settle", request, timeout_s=timeout_s))

    def _create_queue(self) -> None:
        from tidelog.client.queue_admin import create_queue_request

        request = create_queue_request(self.queue, self.topics, if_not_exists=True,
                                       timeout_ms=int(self._timeout_s * 1000))
        _log.info("queue %s does not exist: creating it over %s with the defaults", self.queue,
                  ", ".join(self.topics))
        # One attempt may use the whole budget: creating the dead-letter topic takes a while,
        # and a retry after a slow success would only say QUEUE_ALREADY_EXISTS.
        self._coordinator.call("CreateQueue", request, timeout_s=self._timeout_s,
                               attempt_s=lambda left: left)


def _decoded_batch(batch: memoryview) -> tuple[list[int], list[tuple[Any, ...]]]:
    """A batch's records as plain tuples (offset, timestamp, key, value, headers), sorted by
    offset, and their offsets: what DecodedBatches keeps (decode_records_with builds one tuple
    per record instead of a frozen Record, about half the cost of a decode)."""
    from tidelog.proto import batch as codec

    _, records = codec.decode_records_with(batch, _record_tuple)
    offsets = [r[0] for r in records]
    if any(a >= b for a, b in zip(offsets, offsets[1:], strict=False)):  # not from a Producer
        records.sort(key=lambda r: r[0])
        offsets = [r[0] for r in records]
    return offsets, records


def _record_tuple(offset: int, timestamp: int, key: bytes | None, value: bytes | None,
                  headers: tuple[tuple[str, bytes | None], ...]) -> tuple[Any, ...]:
    return (offset, timestamp, key, value, headers)


def _overlaps(spans: list[tuple[int, int, int]], firsts: list[int], lo: int, hi: int) -> bool:
    """Whether [lo, hi] meets any of the sorted, disjoint spans."""
    i = bisect.bisect_right(firsts, hi) - 1
    return i >= 0 and spans[i][1] >= lo

