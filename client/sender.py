"""The producer's sender thread: accumulator -> Produce requests -> futures.

One thread owns all delivery state (tidelog.client.delivery); gRPC completion callbacks only put
the reply on a queue and wake the thread, so no state is shared with gRPC's threads. Each loop:

1. handle finished requests (complete futures, or schedule retries / fail batches);
2. get a producer id if idempotent and there is none (or a partition retired the old one): on a
   helper thread, so a slow InitProducerId (a paused node, a metadata election) holds up only the
   partitions that need the new id, never replies or the partitions that still have one;
3. refresh metadata for topics found stale (NOT_LEADER, unreachable node, age), also on a helper
   thread (one at a time): sends go on with the cached leaders meanwhile;
4. for each partition with a retry or a ready batch whose leader is known: take what the delivery
   rules allow (retries first, then new batches, up to max_in_flight per partition), then send
   them as one request per leader (ProduceMany: at most one batch per partition per request, up
   to request_bytes_max; a lone batch, or a node without ProduceMany, gets a plain Produce);
5. expire batches past delivery_timeout_ms;
6. sleep until the next linger deadline, backoff end, reply, or new batch (at most 100 ms).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from tidelog.client import errors
from tidelog.client.accumulator import ProducerBatch, RecordAccumulator
from tidelog.client.config import ProducerConfig
from tidelog.client.connection import Connections
from tidelog.client.delivery import DeliveryState, Failure
from tidelog.client.metadata import HEDGE_AFTER_S, METADATA_ATTEMPT_S_MAX, Metadata
from tidelog.client.metrics import ProducerCounters
from tidelog.client.records import TopicPartition
from tidelog.client.throttle import ThrottleTracker

__all__ = ["Sender", "attempt_failed", "batches_to_send", "encode_for_send",
           "expired_failures", "fail_batch", "fail_everything", "many_outcomes",
           "produce_many_request", "produce_request", "request_groups", "retry_wake"]

_log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.1
# The broker gets request_timeout_ms to answer; the gRPC deadline adds this much so that a broker
# that times out answers REQUEST_TIMED_OUT before the client gives up on the call.
_DEADLINE_MARGIN_S = 0.5
_LEADERSHIP_ERRORS = (errors.NotLeader, errors.LeaderNotAvailable, errors.NodeUnavailable,
                      errors.Timeout, errors.TopicNotFound)



# --- sans-I/O steps shared with the asyncio sender (client/aio/sender.py) ---------------------

def batches_to_send(delivery: DeliveryState, accumulator: RecordAccumulator, tp: TopicPartition,
                    now: float, codec: int, request_bytes_max: int,
                    fail: Callable[[list[Failure]], object]
                    ) -> Iterator[tuple[ProducerBatch, bool]]:
    """The batches of `tp` to send now, each with True for a retry: the partition's due retry
    alone (order first), else new batches while delivery.py allows more in flight, encoded (one
    that cannot be goes to `fail` with what fails with it: encode_for_send). Lazy: each next
    batch is chosen after the caller has sent the one before."""
    batch = delivery.next_retry(tp, now)
    if batch is not None:
        yield batch, True
        return
    while delivery.can_send_new(tp, now):
        # adaptive linger: a partition with nothing in flight sends its open batch at once
        batch = accumulator.drain(tp, now, lingering=delivery.has_inflight(tp))
        if batch is None:
            return
        delivery.assign(batch)
        failures = encode_for_send(batch, codec, request_bytes_max, delivery)
        if failures:
            fail(failures)
        else:
            yield batch, False


def encode_for_send(batch: ProducerBatch, codec: int, request_bytes_max: int,
                    delivery: DeliveryState) -> list[Failure]:
    """Encode `batch` into its wire bytes; [] when it can be sent. A batch that cannot be
    encoded or is larger than request_bytes_max fails, and (a sequenced batch that never left
    counts as a failed send, so sequences stay coherent) so do the later ones delivery.py fails
    with it: the failures returned, the batch first."""
    from tidelog.proto import batch as codec_module

    try:
        encoded = codec_module.encode_batch(
            batch.records, codec=codec, producer_id=batch.producer_id,
            producer_epoch=batch.producer_epoch, base_sequence=batch.base_sequence,
        )
    except codec_module.BatchError as exc:
        return [(batch, errors.InvalidBatch(f"{batch.tp}: cannot encode: {exc}")),
                *_abandon_unsent(delivery, batch)]
    if len(encoded) > request_bytes_max:
        error = errors.MessageTooLarge(
            f"{batch.tp}: encoded batch of {len(encoded)} bytes exceeds request_bytes_max "
            f"({request_bytes_max}); lower batch_size or send smaller records")
        return [(batch, error), *_abandon_unsent(delivery, batch)]
    batch.set_encoded(encoded)
    return []


def _abandon_unsent(delivery: DeliveryState, batch: ProducerBatch) -> list[Failure]:
    delivery.sent(batch)
    return [f for f in delivery.failed(batch, errors.InvalidBatch("not sent"), float("inf"))
            if f[0] is not batch]


def produce_request(batch: ProducerBatch, acks: int, request_timeout_ms: int,
                    now: float) -> tuple[Any, int]:
    """The ProduceRequest for an encoded batch and its timeout in ms: request_timeout_ms, cut to
    what is left of the batch's delivery deadline (at least 1 ms)."""
    from tidelog.proto import broker_pb2

    remaining_s = batch.deadline_s - now
    timeout_ms = max(1, int(min(request_timeout_ms, remaining_s * 1000)))
    return broker_pb2.ProduceRequest(
        topic=batch.tp.topic, partition=batch.tp.partition, acks=acks,
        timeout_ms=timeout_ms, batches=batch.encoded,
    ), timeout_ms


def request_groups(batches: list[ProducerBatch], request_bytes_max: int
                   ) -> list[list[ProducerBatch]]:
    """`batches` (all for one leader, in the order taken) cut into requests: a request holds at
    most one batch per partition (a partition's batches stay in order: the k-th of a partition
    goes in the k-th request that has it) and, past its first batch, no more than
    request_bytes_max of batch bytes."""
    groups: list[list[ProducerBatch]] = []
    sizes: list[int] = []
    last: dict[TopicPartition, int] = {}  # the request the partition's previous batch went in
    for batch in batches:
        size = len(batch.encoded or b"")
        i = last.get(batch.tp, -1) + 1
        while i < len(groups) and sizes[i] + size > request_bytes_max:
            i += 1
        if i == len(groups):
            groups.append([])
            sizes.append(0)
        groups[i].append(batch)
        sizes[i] += size
        last[batch.tp] = i
    return groups


def produce_many_request(batches: list[ProducerBatch], acks: int, request_timeout_ms: int,
                         now: float) -> tuple[Any, int]:
    """The ProduceManyRequest for encoded batches of distinct partitions, and its timeout in ms
    (as produce_request's, for the batch with the nearest delivery deadline)."""
    from tidelog.proto import broker_pb2

    remaining_s = min(batch.deadline_s for batch in batches) - now
    timeout_ms = max(1, int(min(request_timeout_ms, remaining_s * 1000)))
    return broker_pb2.ProduceManyRequest(
        acks=acks, timeout_ms=timeout_ms,
        partitions=[broker_pb2.ProducePartitionData(
            topic=b.tp.topic, partition=b.tp.partition, batches=b.encoded) for b in batches],
    ), timeout_ms


def many_outcomes(batches: list[ProducerBatch], response: Any
                  ) -> list[tuple[ProducerBatch, Any, errors.TidelogError | None]]:
    """Each batch of a ProduceMany with its ProduceResponse (written) or its error. Checked
    against the request: a result missing or for another partition is a retriable error (an
    idempotent retry of a batch that was written is answered as a duplicate)."""
    results = list(response.results)
    out: list[tuple[ProducerBatch, Any, errors.TidelogError | None]] = []
    for i, batch in enumerate(batches):
        result = results[i] if i < len(results) else None
        if result is None or (result.topic, result.partition) != (batch.tp.topic,
                                                                  batch.tp.partition):
            error = errors.UnknownError(
                f"{batch.tp}: the ProduceMany answer has no result for this partition at "
                f"position {i} ({len(results)} results for {len(batches)} partitions)")
            error.retriable = True
            out.append((batch, None, error))
        elif result.error.code == 0:
            out.append((batch, result.response, None))
        else:
            detail = result.error
            error = errors.from_code(detail.code, result.error_message, subject=str(batch.tp),
                                     leader_id=detail.leader_id,
                                     leader_address=detail.leader_address)
            if detail.retriable:
                error.retriable = True
            out.append((batch, None, error))
    return out


def attempt_failed(delivery: DeliveryState, metadata: Any, batch: ProducerBatch,
                   error: errors.TidelogError, now: float) -> list[Failure]:
    """A Produce attempt failed: a leadership error marks the partition stale (NOT_LEADER's
    hint applied at once); delivery.py decides what fails now (the failures returned) and what
    is retried. The caller then checks delivery.fenced (rule 6)."""
    if isinstance(error, _LEADERSHIP_ERRORS):
        hint = error if isinstance(error, errors.NotLeader) else None
        metadata.mark_stale(
            batch.tp.topic, partition=batch.tp.partition,
            leader_id=hint.leader_id if hint else -1,
            leader_address=hint.leader_address if hint else "",
        )
    _log.debug("%s: attempt %d failed: %s", batch.tp, batch.attempts, error)
    return delivery.failed(batch, error, now)


def expired_failures(accumulator: RecordAccumulator, delivery: DeliveryState,
                     delivery_timeout_ms: int, now: float) -> list[Failure]:
    """Batches past delivery_timeout_ms: the unsent ones (with a Timeout), then delivery.py's."""
    unsent: list[Failure] = [(batch, errors.Timeout(
        f"{batch.tp}: batch of {batch.record_count} records expired after "
        f"delivery_timeout_ms ({delivery_timeout_ms} ms) without being "
        "sent (no leader reachable?)")) for batch in accumulator.expire(now)]
    return [*unsent, *delivery.expire(now)]


def fail_batch(accumulator: RecordAccumulator, batch: ProducerBatch,
               error: BaseException) -> None:
    """The batch's records fail with `error` (with their own timestamps while unencoded) and
    its buffer memory is released."""
    timestamps = batch.timestamps_ms if batch.encoded is not None else [
        r[3] for r in batch.records]
    batch.result.fail(error, timestamps)
    accumulator.release(batch)


def fail_everything(accumulator: RecordAccumulator, delivery: DeliveryState,
                    error: BaseException, fail: Callable[[ProducerBatch, BaseException], object]
                    ) -> None:
    """Every batch queued, then every one delivery.py tracks, goes to `fail` with `error` (a
    fenced or closed producer); the caller then cancels its requests in flight."""
    for batch in accumulator.abort_all():
        fail(batch, error)
    for batch, failure in delivery.abort(error):
        fail(batch, failure)


def retry_wake(delivery: DeliveryState, now: float, next_wake: float | None) -> float | None:
    """`next_wake`, made earlier by any partition's retry backoff that ends after `now`."""
    for st in delivery.partitions.values():
        if st.retry and st.backoff_until_s > now:
            next_wake = st.backoff_until_s if next_wake is None else min(
                next_wake, st.backoff_until_s)
    return next_wake


class Sender(threading.Thread):
    def __init__(
        self, config: ProducerConfig, accumulator: RecordAccumulator, metadata: Metadata,
        connections: Connections, *, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="tidelog-producer-sender", daemon=True)
        self._config = config
        self._accumulator = accumulator
        self._metadata = metadata
        self._connections = connections
        self._clock = clock
        self.delivery = DeliveryState(
            idempotent=config.idempotent, max_in_flight=config.max_in_flight,
            retries=config.retries, retry_backoff_ms=config.retry_backoff_ms,
            retry_backoff_ms_max=config.retry_backoff_ms_max,
        )
        #: (the request's batches, leader, its future, "Produce" | "ProduceMany")
        self._replies: queue.SimpleQueue[tuple[list[ProducerBatch], str, grpc.Future, str]] = (
            queue.SimpleQueue())
        self._wakeup = threading.Event()
        self._stopping = False  # finish what is queued, then exit
        self._forced = False  # fail what is queued, then exit
        self._pid_retry_at = 0.0
        self._pid_call: threading.Thread | None = None  # InitProducerId under way
        self._pid_outcome: object | None = None  # its reply or TidelogError, for the loop
        self._refreshing: threading.Thread | None = None  # a metadata refresh under way
        self._refresh_at = 0.0  # after a failed refresh: not before retry_backoff_ms
        #: set when run() returns: wait on this, not on join() (an interrupted join() marks a
        #: running thread stopped on Python 3.11, bpo-45274, so a second join() returns at once)
        self.finished = threading.Event()
        self._codec = None
        self._acks = None
        self._inflight_futures: set[grpc.Future] = set()
        #: leaders that answered ProduceMany with UNIMPLEMENTED (older nodes): Produce only
        self._no_produce_many: set[str] = set()
        #: counters for benchmarks and tests
        self.requests_sent = 0
        self.retries_sent = 0
        #: Producer.metrics(): outcomes per request and per batch (client/metrics.py)
        self.counters = ProducerCounters()
        #: quotas: nothing is sent to a node until its last throttle time has passed
        self.throttle = ThrottleTracker()
        self._throttled_until: float | None = None  # the earliest end of a skipped node's wait

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self, *, force: bool) -> None:
        self._stopping = True
        self._forced = self._forced or force
        self.wake()

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        from tidelog.proto import batch as codec_module
        from tidelog.proto import broker_pb2

        self._codec = codec_module.Codec.LZ4 if self._config.compression == "lz4" else (
            codec_module.Codec.NONE)
        self._acks = broker_pb2.ACKS_ALL if self._config.acks == "all" else broker_pb2.ACKS_LEADER
        try:
            self._loop()
        finally:
            self.finished.set()

    def _loop(self) -> None:
        try:
            while True:
                timeout = self._run_once()
                if self._stopping and self._finished():
                    break
                self._wakeup.wait(timeout)
                self._wakeup.clear()
        except Exception:  # pragma: no cover - a bug; make it loud and fail what is pending
            _log.exception("producer sender thread crashed")
            self._forced = True
            self._fail_everything(errors.TidelogError("the producer's sender thread crashed; "
                                                      "see the log"))
            raise

    def _finished(self) -> bool:
        if self._forced:
            self._fail_everything(errors.ClientClosed("producer closed before delivery"))
            return not self._inflight_futures
        return not self._accumulator.has_incomplete()

    def _run_once(self) -> float:
        self._handle_replies()
        now = self._clock()
        self._apply_producer_id(now)
        if self._config.idempotent and (
            self.delivery.producer_id < 0 or self.delivery.needs_new_producer_id
        ) and now >= self._pid_retry_at and not self._forced and self._pid_call is None:
            self._init_producer_id()
        stale = self._metadata.stale_topics()
        if stale and not self._forced and now >= self._refresh_at and (
                self._refreshing is None or not self._refreshing.is_alive()):
            self._refreshing = threading.Thread(target=self._refresh, args=(stale,),
                                                name="tidelog-producer-metadata", daemon=True)
            self._refreshing.start()
        now = self._clock()
        ready, next_linger = self._accumulator.ready(now, self.delivery.has_inflight)
        with_retries = [tp for tp, st in self.delivery.partitions.items() if st.retry]
        next_wake = next_linger
        self._throttled_until = None
        if not self._forced:
            taken: dict[str, list[ProducerBatch]] = {}
            for tp in dict.fromkeys([*with_retries, *ready]):
                self._take_partition(tp, now, taken)
            for leader, batches in taken.items():
                for group in request_groups(batches, self._config.request_bytes_max):
                    self._send(group, leader)
        self._fail_all(expired_failures(self._accumulator, self.delivery,
                                        self._config.delivery_timeout_ms, now))
        if self._throttled_until is not None:
            next_wake = self._throttled_until if next_wake is None else min(
                next_wake, self._throttled_until)
        next_wake = retry_wake(self.delivery, now, next_wake)
        if next_wake is None:
            return _IDLE_WAIT_S
        return max(0.0, min(_IDLE_WAIT_S, next_wake - self._clock()))

    def _take_partition(self, tp: TopicPartition, now: float,
                        taken: dict[str, list[ProducerBatch]]) -> None:
        """Add what tp may send now to its leader's list in `taken` (each marked sent)."""
        leader = self._metadata.leader_address(tp.topic, tp.partition)
        if leader is None:
            self._metadata.mark_stale(tp.topic)
            return
        ready_at = self.throttle.ready_at(leader, now)
        if ready_at is not None:  # wait out the node's throttle time (quotas), like Kafka
            self._throttled_until = min(ready_at, self._throttled_until or ready_at)
            return
        for batch, retry in batches_to_send(self.delivery, self._accumulator, tp, now,
                                            self._codec, self._config.request_bytes_max,
                                            self._fail_all):
            self.retries_sent += retry
            self.delivery.sent(batch)  # before the next one is taken (in-flight window)
            taken.setdefault(leader, []).append(batch)

    def _send(self, batches: list[ProducerBatch], leader: str) -> None:
        """One request: Produce for a lone batch (or a node without ProduceMany), else
        ProduceMany. The batches are already marked sent."""
        if len(batches) == 1 or leader in self._no_produce_many:
            for batch in batches:
                request, timeout_ms = produce_request(
                    batch, self._acks, self._config.request_timeout_ms, self._clock())
                self._call(leader, "Produce", request, timeout_ms, [batch])
            return
        request, timeout_ms = produce_many_request(batches, self._acks,
                                                   self._config.request_timeout_ms, self._clock())
        self._call(leader, "ProduceMany", request, timeout_ms, batches)

    def _call(self, leader: str, method: str, request: Any, timeout_ms: int,
              batches: list[ProducerBatch]) -> None:
        self.requests_sent += 1
        sent_at = self._clock()
        try:
            future = self._connections.call_async(
                leader, method, request, timeout_s=timeout_ms / 1000 + _DEADLINE_MARGIN_S)
        except errors.TidelogError as exc:  # closed pool
            for batch in batches:
                self._fail_all(self.delivery.failed(batch, exc, self._clock()))
            return
        self._inflight_futures.add(future)
        self.counters.request_sent(sum(b.record_count for b in batches))

        def done(f: grpc.Future) -> None:
            self.counters.latency.observe(self._clock() - sent_at)
            self._replies.put((batches, leader, f, method))
            self._wakeup.set()

        future.add_done_callback(done)

    # --- replies --------------------------------------------------------------------------------

    def _handle_replies(self) -> None:
        while True:
            try:
                batches, leader, future, method = self._replies.get_nowait()
            except queue.Empty:
                return
            self._inflight_futures.discard(future)
            records = sum(b.record_count for b in batches)
            try:
                response = future.result()
            except grpc.FutureCancelledError:
                error: errors.TidelogError = errors.ClientClosed(
                    "request cancelled by close(); the batch may or may not have been written")
                self.counters.request_answered(records, error)
                for batch in batches:
                    self._fail_all(self.delivery.failed(batch, error, float("inf")))
                continue
            except grpc.RpcError as exc:
                if method == "ProduceMany" and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    # an older node: nothing was written; the same batches go as Produce calls
                    self.counters.request_answered(records, None)
                    self._no_produce_many.add(leader)
                    self._send(batches, leader)
                    continue
                self.counters.request_answered(records, errors.from_rpc_error(
                    exc, subject=str(batches[0].tp), address=leader))
                for batch in batches:
                    self._on_error(batch, errors.from_rpc_error(exc, subject=str(batch.tp),
                                                                address=leader))
                continue
            self.throttle.record(leader, response.throttle_time_ms, self._clock())
            self.counters.request_answered(records, None)
            if method == "Produce":
                self._succeeded(batches[0], response)
                continue
            for batch, result, error in many_outcomes(batches, response):
                if error is None:
                    self._succeeded(batch, result)
                else:
                    self.counters.errors.add(error)
                    self._on_error(batch, error)

    def _succeeded(self, batch: ProducerBatch, response: Any) -> None:
        self.delivery.succeeded(batch)
        self.counters.acknowledged(batch.record_count, len(batch.encoded or b""))
        self._complete(batch, response.base_offset)

    def _on_error(self, batch: ProducerBatch, error: errors.TidelogError) -> None:
        self._fail_all(attempt_failed(self.delivery, self._metadata, batch, error, self._clock()))
        if self.delivery.fenced is not None:  # delivery.py rule 6: fail what is still queued
            self._fail_everything(self.delivery.fenced)

    def _complete(self, batch: ProducerBatch, base_offset: int) -> None:
        batch.result.complete(base_offset, batch.timestamps_ms)
        self._accumulator.release(batch)

    def _fail(self, batch: ProducerBatch, error: BaseException) -> None:
        self.counters.given_up(batch.record_count)
        fail_batch(self._accumulator, batch, error)

    def _fail_all(self, failures: list[Failure]) -> None:
        for batch, error in failures:
            self._fail(batch, error)

    def _fail_everything(self, error: BaseException) -> None:
        fail_everything(self._accumulator, self.delivery, error, self._fail)
        for future in list(self._inflight_futures):
            future.cancel()

    # --- producer id ----------------------------------------------------------------------------

    def _refresh(self, topics: set[str]) -> None:
        """On the helper thread: Metadata is thread-safe; the loop reads the new leaders."""
        try:
            self._metadata.refresh(topics)
        except errors.TidelogError as exc:
            _log.info("metadata refresh failed: %s", exc)
            self._refresh_at = self._clock() + self._config.retry_backoff_ms / 1000
            return
        self.wake()

    def _init_producer_id(self) -> None:
        """Start InitProducerId on a helper thread; _apply_producer_id takes its outcome."""
        from tidelog.proto import broker_pb2

        transactional_id = self.delivery.transactional_id
        request = broker_pb2.InitProducerIdRequest(transactional_id=transactional_id)
        timeout_s = self._config.request_timeout_ms / 1000
        # Without a transactional id a second answer only wastes a producer id: ask the next
        # node when one is slow. With one, each call bumps the epoch: one call at a time.
        hedged = dict(attempt_s=min(timeout_s, METADATA_ATTEMPT_S_MAX),
                      hedge_after_s=HEDGE_AFTER_S) if not transactional_id else {}

        def call() -> None:
            try:
                self._pid_outcome = self._metadata.call_any("InitProducerId", request, **hedged)
            except errors.TidelogError as exc:
                self._pid_outcome = exc
            self.wake()

        self._pid_call = threading.Thread(target=call, name="tidelog-producer-init",
                                          daemon=True)
        self._pid_call.start()

    def _apply_producer_id(self, now: float) -> None:
        if self._pid_call is None or (self._pid_outcome is None and self._pid_call.is_alive()):
            return
        outcome, self._pid_outcome, self._pid_call = self._pid_outcome, None, None
        if isinstance(outcome, errors.TidelogError) or outcome is None:
            _log.info("InitProducerId failed (will retry): %s", outcome)
            self._pid_retry_at = now + self._config.retry_backoff_ms / 1000
            return
        self.delivery.set_producer_id(outcome.producer_id, outcome.producer_epoch)  # type: ignore[attr-defined]
