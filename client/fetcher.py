"""The consumer's fetcher: long-poll Fetch requests per leader, a bounded prefetch buffer, and the
decoding of fetched batches into records.

Theory of operation
-------------------
Each assigned partition has a *position* (the next offset ``poll`` returns) and a *fetch offset*
(the next offset to ask the broker for; ``fetch_offset >= position``, the records between them are
buffered). ``send_fetches`` sends at most one Fetch per leader node, covering every partition of
that leader that is not paused, has a known position, no request in flight, and room in the
buffer. Requests are asynchronous (gRPC futures) so a long poll keeps running while the user
handles the records already returned: that is the prefetch.

Replies are buffered as the raw batch bytes, decoded one batch at a time when ``poll`` needs
records, so the buffer bound (``prefetch_bytes_max``) counts wire bytes: the bytes buffered plus
the ``max_bytes`` of every fetch in flight never exceed it.

A fetched batch may start before the fetch offset (the broker returns whole batches): records
below the fetch offset are skipped, and so are control batches. A trailing partial batch (cut by
``max_bytes``) is dropped and fetched again whole next time.

``seek`` bumps the partition's *epoch*; replies for an older epoch are discarded.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from tidelog.client import errors
from tidelog.client.config import ConsumerConfig
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.metrics import ConsumerCounters
from tidelog.client.records import ConsumerRecord, TopicPartition
from tidelog.client.routing import note_failure
from tidelog.client.throttle import ThrottleTracker

__all__ = ["FetchPlan", "FetchPositions", "Fetcher", "PartitionFetchState", "apply_fetch_result",
           "assigned", "buffered_bytes", "complete_batches", "decode_fetched", "plan_fetches",
           "take_order", "take_records"]

_log = logging.getLogger(__name__)
_DEADLINE_MARGIN_S = 5.0


def complete_batches(
    buf: bytes | memoryview, fetch_offset: int
) -> tuple[list[tuple[int, int]], int]:
    """Whole batches in a fetched buffer that hold records at or after `fetch_offset`.

    Returns ([(position, size), ...], next_fetch_offset). Batches entirely below fetch_offset and
    a trailing partial batch are left out; next_fetch_offset is one past the last whole batch
    (fetch_offset itself when there is none)."""
    from tidelog.proto import batch as codec

    view = memoryview(buf)
    out: list[tuple[int, int]] = []
    pos, end = 0, len(view)
    next_offset = fetch_offset
    while end - pos >= codec.HEADER_SIZE:
        header = codec.decode_header(view, pos)
        size = header.size
        if size < codec.HEADER_SIZE:
            raise errors.CorruptBatch(
                f"batch at byte {pos} of a fetch reply declares an impossible size {size}")
        if pos + size > end:
            break  # partial: fetched again whole next time
        last = header.last_offset
        if last >= next_offset:
            if not header.is_control:
                out.append((pos, size))
            next_offset = last + 1
        pos += size
    return out, next_offset


def decode_fetched(
    topic: str, partition: int, batch: bytes | memoryview, position: int
) -> list[ConsumerRecord]:
    """Decode one whole batch into records, skipping those below `position` (checksum-verified)."""
    from tidelog.proto import batch as codec

    # One object per record: the codec builds each ConsumerRecord straight from the decoded
    # fields (building a codec Record first, then copying it, cost twice as much).
    try:
        header, records = codec.decode_records_with(
            batch, functools.partial(ConsumerRecord, topic, partition))
    except codec.CorruptBatchError as exc:
        raise errors.CorruptBatch(f"{topic}/{partition}: fetched batch is damaged: {exc}") from None
    except codec.BatchError as exc:
        raise errors.InvalidBatch(
            f"{topic}/{partition}: fetched batch is malformed: {exc}") from None
    if position <= header.base_offset:
        return records
    return [r for r in records if r.offset >= position]


def _undecodable(tp: TopicPartition, batch: memoryview,
                 cause: errors.TidelogError) -> errors.CorruptRecordError:
    from tidelog.proto import batch as codec

    header = codec.decode_header(batch)  # whole and size-checked by complete_batches
    return errors.CorruptRecordError(
        f"{cause} (the batch of offsets {header.base_offset}..{header.last_offset}); poll() "
        f"raises this until you seek {tp} past it, e.g. seek(tp, {header.last_offset + 1})",
        topic=tp.topic, partition=tp.partition, offset=header.base_offset)


@dataclass(slots=True)
class PartitionFetchState:
    #: next offset poll() returns; None until reset by seek / auto_offset_reset
    position: int | None = None
    fetch_offset: int | None = None
    paused: bool = False
    epoch: int = 0
    inflight: bool = False
    #: whole batches fetched but not yet decoded
    raw: deque[memoryview] = field(default_factory=deque)
    raw_bytes: int = 0
    #: records decoded from the head batch, not yet returned
    ready: deque[ConsumerRecord] = field(default_factory=deque)
    high_watermark: int = -1
    log_start_offset: int = -1
    retry_at_s: float = 0.0
    #: an OFFSET_OUT_OF_RANGE to raise (auto_offset_reset="error") or resolve
    out_of_range: errors.OffsetOutOfRange | None = None
    #: a fatal error of this partition's fetch (corrupt reply, non-retriable code): poll()
    #: raises it every time, once the records before it are handed out, until a seek clears it
    error: errors.TidelogError | None = None

    def clear(self) -> None:
        self.raw.clear()
        self.raw_bytes = 0
        self.ready.clear()
        self.out_of_range = None
        self.error = None
        self.epoch += 1
        self.inflight = False

    def seek(self, offset: int) -> None:
        """Read from `offset` on: what is buffered is dropped, replies in flight are stale."""
        self.clear()
        self.position = self.fetch_offset = offset


def assigned(states: dict[TopicPartition, PartitionFetchState], tps: Iterable[TopicPartition]
             ) -> dict[TopicPartition, PartitionFetchState]:
    """The states of a new assignment: a partition kept keeps its state, in the order given."""
    return {tp: states.get(tp) or PartitionFetchState() for tp in dict.fromkeys(tps)}


def buffered_bytes(states: dict[TopicPartition, PartitionFetchState],
                   reserved: Iterable[int]) -> int:
    """The prefetch bound's count: wire bytes buffered plus the max_bytes of fetches in flight."""
    return sum(st.raw_bytes for st in states.values()) + sum(reserved)


def take_order(states: dict[TopicPartition, PartitionFetchState], rotation: int
               ) -> tuple[list[TopicPartition], int]:
    """The partitions to hand out records from, rotated one further than last time (round
    robin), and the new rotation: kept by the caller even when take_records then raises, so
    that a damaged partition does not come first again and hold back the others."""
    for st in states.values():
        # Everything below fetch_offset was handed out or was a control batch (a Raft
        # no-op): the position moves past them, so a committed position reaches the log end.
        if (not st.ready and not st.raw and st.fetch_offset is not None
                and st.position is not None and st.fetch_offset > st.position):
            st.position = st.fetch_offset
    tps = [tp for tp, st in states.items()
           if not st.paused and (st.ready or st.raw or st.error is not None)]
    if not tps:
        return tps, rotation
    rotation = (rotation + 1) % len(tps)
    return tps[rotation:] + tps[: rotation], rotation


def take_records(states: dict[TopicPartition, PartitionFetchState], tps: list[TopicPartition],
                 max_records: int) -> list[ConsumerRecord]:
    """Up to max_records buffered records from `tps` in that order (sans-I/O, shared by the
    sync and the asyncio fetchers). A damaged head batch raises CorruptRecordError, and again
    on the next call until a seek; a partition's error raises once the records before it are
    handed out."""
    out: list[ConsumerRecord] = []
    for tp in tps:
        st = states[tp]
        while len(out) < max_records:
            if not st.ready:
                if not st.raw:
                    if st.error is not None and not out:
                        raise st.error  # again on every poll until a seek clears it
                    break
                assert st.position is not None
                try:
                    decoded = decode_fetched(tp.topic, tp.partition, st.raw[0], st.position)
                except (errors.CorruptBatch, errors.InvalidBatch) as exc:
                    # Kept at the head of the buffer: the next poll raises again.
                    if out:
                        break
                    raise _undecodable(tp, st.raw[0], exc) from None
                raw = st.raw.popleft()
                st.raw_bytes -= len(raw)
                st.ready.extend(decoded)
                continue
            want = max_records - len(out)
            if len(st.ready) <= want:
                out.extend(st.ready)
                st.ready.clear()
            else:
                out.extend(st.ready.popleft() for _ in range(want))
            st.position = out[-1].offset + 1
        if len(out) >= max_records:
            break
    return out


@dataclass(frozen=True)
class FetchPlan:
    """One Fetch to send to `leader`: `asked` maps each partition to its epoch when asked (a
    reply for an older epoch is stale); `reserved` is the prefetch budget the reply may fill."""

    leader: str
    asked: dict[TopicPartition, int]
    request: Any
    reserved: int


def plan_fetches(states: dict[TopicPartition, PartitionFetchState], metadata: Any,
                 config: ConsumerConfig, now: float, budget: int,
                 skip_leader: Callable[[str], bool]) -> list[FetchPlan]:
    """The Fetch requests to send now, one per leader (sans-I/O: the sync and the asyncio
    fetchers send them their own way). A partition is asked for when it is not paused, not in
    flight, has a fetch offset, no pending error and room in its buffer; one with no known leader
    marks its topic stale and backs off. Every partition asked is marked in flight: a caller that
    cannot send a plan must clear that. `skip_leader(address)` leaves out a leader already asked
    (or throttled); the plans stop when `budget` (prefetch bytes left) cannot take a partition."""
    from tidelog.proto import broker_pb2

    per_partition = config.partition_fetch_bytes_max
    grouped: dict[str, list[TopicPartition]] = {}
    for tp, st in states.items():
        if (st.paused or st.inflight or st.fetch_offset is None or st.out_of_range
                or st.error is not None or now < st.retry_at_s
                or st.raw_bytes >= per_partition):
            continue
        leader = metadata.leader_address(tp.topic, tp.partition)
        if leader is None:
            metadata.mark_stale(tp.topic)
            st.retry_at_s = now + config.retry_backoff_ms / 1000
            continue
        if skip_leader(leader):
            continue
        grouped.setdefault(leader, []).append(tp)
    plans: list[FetchPlan] = []
    for leader, tps in grouped.items():
        if budget < per_partition:
            break
        request_bytes = min(config.fetch_max_bytes, budget)
        parts = []
        asked: dict[TopicPartition, int] = {}
        for tp in tps[: max(1, request_bytes // per_partition)]:
            st = states[tp]
            parts.append(broker_pb2.FetchPartition(
                topic=tp.topic, partition=tp.partition, offset=st.fetch_offset,
                max_bytes=per_partition))
            st.inflight = True
            asked[tp] = st.epoch
        reserved = min(request_bytes, per_partition * len(parts))
        budget -= reserved
        request = broker_pb2.FetchRequest(
            partitions=parts, max_wait_ms=config.fetch_max_wait_ms,
            min_bytes=config.fetch_min_bytes, max_bytes=reserved)
        plans.append(FetchPlan(leader, asked, request, reserved))
    return plans


def apply_fetch_result(tp: TopicPartition, st: PartitionFetchState, result: Any, *,
                       config: ConsumerConfig, metadata: Any, now: float,
                       counters: ConsumerCounters | None = None) -> None:
    """One partition's result of a Fetch reply into its state (sans-I/O, shared by the sync and
    the asyncio fetchers): the watermarks; an error code (out of range: kept for the consumer's
    reset; retriable: the metadata marked stale, NOT_LEADER's hint applied, a backoff; other:
    raised); or the whole batches buffered and the fetch offset moved past them. A damaged
    buffer raises CorruptRecordError, a batch larger than partition_fetch_bytes_max
    MessageTooLarge."""
    code = result.error
    st.high_watermark = result.high_watermark
    st.log_start_offset = result.log_start_offset
    if code:
        error = errors.from_code(code, result.error_message, subject=str(tp),
                                 leader_id=result.leader_id)
        if counters is not None:
            counters.fetch_errors.add(error)
        if isinstance(error, errors.OffsetOutOfRange):
            st.out_of_range = errors.OffsetOutOfRange(
                f"{tp}: offset {st.fetch_offset} is out of range (log start "
                f"{st.log_start_offset}, high watermark {st.high_watermark}); seek to an "
                "offset in that range, or use auto_offset_reset='earliest' or 'latest'",
                topic=tp.topic, partition=tp.partition, offset=st.fetch_offset or -1,
                log_start_offset=st.log_start_offset, high_watermark=st.high_watermark)
            return
        if not error.retriable and not isinstance(error, errors.TopicNotFound):
            raise error
        note_failure(metadata, tp, error, leader_id=result.leader_id)
        st.retry_at_s = now + config.retry_backoff_ms / 1000
        return
    data = result.batches
    if not data:
        return
    if counters is not None:
        counters.fetched(len(data))
    assert st.fetch_offset is not None
    try:
        spans, next_offset = complete_batches(data, st.fetch_offset)
    except errors.CorruptBatch as exc:
        raise errors.CorruptRecordError(
            f"{tp}: the fetched batches from offset {st.fetch_offset} are damaged ({exc}); "
            "seek past them to read on",
            topic=tp.topic, partition=tp.partition, offset=st.fetch_offset) from None
    if next_offset == st.fetch_offset and not spans:
        from tidelog.proto import batch as codec

        header = codec.decode_header(data)
        if header.size > len(data):
            raise errors.MessageTooLarge(
                f"{tp}: the batch at offset {header.base_offset} is {header.size} bytes, "
                f"more than partition_fetch_bytes_max "
                f"({config.partition_fetch_bytes_max}); raise it to read on")
    view = memoryview(data)
    for pos, size in spans:
        st.raw.append(view[pos: pos + size])
        st.raw_bytes += size
    st.fetch_offset = next_offset


class FetchPositions:
    """The per-partition fetch states and the fetches in flight, with the methods on them that
    do no I/O: the base of the sync Fetcher and of client/aio/fetcher.py's AioFetcher."""

    states: dict[TopicPartition, PartitionFetchState]
    #: per leader: (prefetch bytes reserved, the request in flight)
    _inflight: dict[str, tuple[int, Any]]

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        self.states = assigned(self.states, tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.states[tp].seek(offset)

    def buffered_bytes(self) -> int:
        return buffered_bytes(self.states, (reserved for reserved, _ in self._inflight.values()))

    def out_of_range(self) -> list[tuple[TopicPartition, errors.OffsetOutOfRange]]:
        return [(tp, st.out_of_range) for tp, st in self.states.items() if st.out_of_range]


class Fetcher(FetchPositions):
    """Not thread-safe by itself: the Consumer serialises calls."""

    def __init__(
        self, config: ConsumerConfig, metadata: Metadata, connections: Connections,
        *, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metadata = metadata
        self._connections = connections
        self._clock = clock
        self.states: dict[TopicPartition, PartitionFetchState] = {}
        # One outstanding Fetch per leader address: the max_bytes it reserved, and its future.
        self._inflight: dict[str, tuple[int, grpc.Future]] = {}
        self._replies: queue.SimpleQueue[tuple[str, dict[TopicPartition, int], grpc.Future]] = (
            queue.SimpleQueue())
        self._wakeup = threading.Event()
        self._rotation = 0
        #: quotas: no fetch goes to a node until its last throttle time has passed
        self.throttle = ThrottleTracker()
        #: Consumer.metrics(): per request, per partition result, per take (client/metrics.py)
        self.counters = ConsumerCounters()

    # --- fetching ------------------------------------------------------------------------------

    def send_fetches(self) -> None:
        now = self._clock()
        plans = plan_fetches(
            self.states, self._metadata, self._config, now,
            self._config.prefetch_bytes_max - self.buffered_bytes(),
            lambda leader: (leader in self._inflight
                            or self.throttle.ready_at(leader, now) is not None))
        for i, plan in enumerate(plans):
            leader, asked, request, reserved = plan.leader, plan.asked, plan.request, plan.reserved
            timeout_s = (self._config.request_timeout_ms + self._config.fetch_max_wait_ms) / 1000
            sent_at = self._clock()
            try:
                future = self._connections.call_async(
                    leader, "Fetch", request, timeout_s=timeout_s + _DEADLINE_MARGIN_S)
            except errors.TidelogError:
                for unsent in plans[i:]:
                    for tp in unsent.asked:
                        self.states[tp].inflight = False
                raise
            self._inflight[leader] = (reserved, future)
            self.counters.fetch_sent()

            def done(f: grpc.Future, leader: str = leader,
                     asked: dict[TopicPartition, int] = asked, sent_at: float = sent_at) -> None:
                self.counters.fetch_latency.observe(self._clock() - sent_at)
                self._replies.put((leader, asked, f))
                self._wakeup.set()

            future.add_done_callback(done)

    def wait(self, timeout_s: float) -> None:
        """Sleep until a reply arrives or timeout_s passes."""
        self._wakeup.wait(max(0.0, timeout_s))
        self._wakeup.clear()

    def interrupt(self) -> None:
        """Make a wait() in progress (or the next one) return at once; any thread."""
        self._wakeup.set()

    def handle_replies(self) -> None:
        while True:
            try:
                leader, asked, future = self._replies.get_nowait()
            except queue.Empty:
                return
            self._inflight.pop(leader, None)
            try:
                response = future.result()
            except (grpc.RpcError, grpc.FutureCancelledError) as exc:
                self._request_failed(leader, asked, exc)
                continue
            self.throttle.record(leader, response.throttle_time_ms, self._clock())
            for result in response.partitions:
                tp = TopicPartition(result.topic, result.partition)
                st = self.states.get(tp)
                if st is None or asked.get(tp) != st.epoch:
                    continue  # unassigned or sought since: stale
                st.inflight = False
                # Each partition's outcome stands alone: one that fails must not leave the
                # others of this reply unapplied (and in flight forever).
                try:
                    self._apply(tp, st, result)
                except errors.TidelogError as exc:
                    st.error = exc
                except Exception as exc:  # noqa: BLE001 - undecodable bytes from the wire
                    st.error = errors.CorruptRecordError(
                        f"{tp}: the fetch reply at offset {st.fetch_offset} cannot be read "
                        f"({type(exc).__name__}: {exc}); seek past it to read on",
                        topic=tp.topic, partition=tp.partition, offset=st.fetch_offset or 0)
            for tp, epoch in asked.items():  # partitions the reply left out
                st = self.states.get(tp)
                if st is not None and st.epoch == epoch:
                    st.inflight = False

    def _request_failed(self, leader: str, asked: dict[TopicPartition, int],
                        exc: BaseException) -> None:
        error = (errors.from_rpc_error(exc, address=leader) if isinstance(exc, grpc.RpcError)
                 else errors.ClientClosed("fetch cancelled"))
        _log.info("fetch from %s failed: %s", leader, error)
        self.counters.fetch_errors.add(error)
        retry_at = self._clock() + self._config.retry_backoff_ms / 1000
        for tp, epoch in asked.items():
            st = self.states.get(tp)
            if st is not None and st.epoch == epoch:
                st.inflight = False
                st.retry_at_s = retry_at
            self._metadata.mark_stale(tp.topic)

    def _apply(self, tp: TopicPartition, st: PartitionFetchState, result: object) -> None:
        apply_fetch_result(tp, st, result, config=self._config, metadata=self._metadata,
                           now=self._clock(), counters=self.counters)

    # --- handing out records ----------------------------------------------------------------------

    def take(self, max_records: int) -> list[ConsumerRecord]:
        """Up to max_records buffered records, round-robin over unpaused partitions."""
        tps, self._rotation = take_order(self.states, self._rotation)
        out = take_records(self.states, tps, max_records)
        if out:
            self.counters.consumed(len(out))
        return out

    def close(self) -> None:
        for _, future in list(self._inflight.values()):
            future.cancel()
        self._inflight.clear()
