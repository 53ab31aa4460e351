"""The asyncio producer's sender: one task that drains the sync client's RecordAccumulator and
drives its DeliveryState (sequence numbers, in-flight window, retries in order, abandon and
fencing: client/delivery.py's rules 1-6, unchanged), with one task per Produce request.

Everything runs on the event loop, so no state is shared with another thread. Each round:
1. get a producer id if idempotent and there is none (a task of its own: a slow node does not
   hold up the sends of partitions whose leaders answer);
2. refresh stale metadata (a task of its own, one at a time);
3. for each partition with a retry or a ready batch whose leader is known: take what the delivery
   rules allow (retries first, then new batches) and send it as one request per leader
   (ProduceMany; Produce for a lone batch or a node without it), as the sync sender does;
4. expire batches past delivery_timeout_ms;
5. wait for the next linger deadline, backoff end, reply or new batch (at most 100 ms).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from tidelog.client import errors
from tidelog.client.accumulator import ProducerBatch, RecordAccumulator
from tidelog.client.aio.metadata import METADATA_ATTEMPT_S_MAX, AioMetadata
from tidelog.client.aio.waiting import wait_event
from tidelog.client.config import ProducerConfig
from tidelog.client.delivery import DeliveryState, Failure
from tidelog.client.records import TopicPartition
from tidelog.client.sender import (
    attempt_failed,
    batches_to_send,
    expired_failures,
    fail_batch,
    fail_everything,
    many_outcomes,
    produce_many_request,
    produce_request,
    request_groups,
    retry_wake,
)

__all__ = ["AioSender"]

_log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.1
_DEADLINE_MARGIN_S = 0.5  # as the sync sender: the broker's REQUEST_TIMED_OUT comes first


class AioSender:
    def __init__(self, config: ProducerConfig, accumulator: RecordAccumulator,
                 metadata: AioMetadata, *, transactional_id: str = "",
                 on_release: Callable[[], object] = lambda: None) -> None:
        """`on_release()`: a batch completed and gave its buffer memory back."""
        from tidelog.proto import batch as codec
        from tidelog.proto import broker_pb2

        self._config = config
        self._accumulator = accumulator
        self._metadata = metadata
        self._on_release = on_release
        self.delivery = DeliveryState(
            idempotent=config.idempotent, max_in_flight=config.max_in_flight,
            retries=config.retries, retry_backoff_ms=config.retry_backoff_ms,
            retry_backoff_ms_max=config.retry_backoff_ms_max)
        self.delivery.transactional_id = transactional_id
        self._codec = codec.Codec.LZ4 if config.compression == "lz4" else codec.Codec.NONE
        self._acks = broker_pb2.ACKS_ALL if config.acks == "all" else broker_pb2.ACKS_LEADER
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._forced = False
        self._pid_task: asyncio.Task[None] | None = None
        self._pid_retry_at = 0.0
        self._refresh_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        #: leaders that answered ProduceMany with UNIMPLEMENTED (older nodes): Produce only
        self._no_produce_many: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.requests_sent = 0
        self.retries_sent = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tidelog-aio-sender")

    def wake(self) -> None:
        self._wakeup.set()

    async def stop(self, *, timeout_s: float | None) -> None:
        """Deliver what is queued (up to timeout_s), then fail the rest with ClientClosed."""
        self._stopping = True
        self.wake()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._forced = True
            self.wake()
            await self._task
        for task in (self._pid_task, self._refresh_task):
            if task is not None and not task.done():
                task.cancel()

    # --- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                timeout = self._run_once()
                if self._stopping and self._finished():
                    return
                if timeout > 0:
                    await wait_event(self._wakeup, timeout)
                else:
                    await asyncio.sleep(0)
                self._wakeup.clear()
        except Exception:  # pragma: no cover - a bug; make it loud and fail what is pending
            _log.exception("asyncio producer sender crashed")
            self._fail_everything(errors.TidelogError("the producer's sender crashed; see log"))
            raise

    def _finished(self) -> bool:
        if self._forced:
            self._fail_everything(errors.ClientClosed("producer closed before delivery"))
            return not self._inflight
        return not self._accumulator.has_incomplete()

    def _run_once(self) -> float:
        now = time.monotonic()
        if (self._config.idempotent and not self._forced and now >= self._pid_retry_at
                and (self.delivery.producer_id < 0 or self.delivery.needs_new_producer_id)
                and (self._pid_task is None or self._pid_task.done())):
            self._pid_task = asyncio.get_running_loop().create_task(self._init_producer_id())
        stale = self._metadata.stale_topics()
        if stale and not self._forced and (self._refresh_task is None
                                           or self._refresh_task.done()):
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh(stale))
        ready, next_wake = self._accumulator.ready(now, self.delivery.has_inflight)
        if not self._forced:
            with_retries = [tp for tp, st in self.delivery.partitions.items() if st.retry]
            taken: dict[str, list[ProducerBatch]] = {}
            for tp in dict.fromkeys([*with_retries, *ready]):
                self._take_partition(tp, now, taken)
            for leader, batches in taken.items():
                for group in request_groups(batches, self._config.request_bytes_max):
                    self._send(group, leader)
        self._fail_all(expired_failures(self._accumulator, self.delivery,
                                        self._config.delivery_timeout_ms, now))
        next_wake = retry_wake(self.delivery, now, next_wake)
        if next_wake is None:
            return _IDLE_WAIT_S
        return max(0.0, min(_IDLE_WAIT_S, next_wake - time.monotonic()))

    async def _refresh(self, topics: set[str]) -> None:
        try:
            await self._metadata.refresh_async(topics)
        except errors.TidelogError as exc:
            _log.info("metadata refresh failed: %s", exc)
        self.wake()

    def _take_partition(self, tp: TopicPartition, now: float,
                        taken: dict[str, list[ProducerBatch]]) -> None:
        leader = self._metadata.leader_address(tp.topic, tp.partition)
        if leader is None:
            self._metadata.mark_stale(tp.topic)
            return
        for batch, retry in batches_to_send(self.delivery, self._accumulator, tp, now,
                                            self._codec, self._config.request_bytes_max,
                                            self._fail_all):
            self.retries_sent += retry
            self.delivery.sent(batch)  # before the next one is taken (in-flight window)
            taken.setdefault(leader, []).append(batch)

    def _send(self, batches: list[ProducerBatch], leader: str) -> None:
        """One request task; the batches are already marked sent."""
        self.requests_sent += 1
        if len(batches) == 1 or leader in self._no_produce_many:
            self.requests_sent += len(batches) - 1
            for batch in batches:
                self._start(self._produce(batch, leader))
        else:
            self._start(self._produce_many(batches, leader))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _produce(self, batch: ProducerBatch, leader: str) -> None:
        request, timeout_ms = produce_request(batch, self._acks, self._config.request_timeout_ms,
                                              time.monotonic())
        try:
            response = await self._metadata.aio.call(
                leader, "Produce", request, timeout_s=timeout_ms / 1000 + _DEADLINE_MARGIN_S,
                subject=str(batch.tp))
        except errors.TidelogError as exc:
            self._on_error(batch, exc)
        except asyncio.CancelledError:
            self._cancelled([batch])
            raise
        else:
            self._succeeded(batch, response)
        finally:
            self.wake()

    async def _produce_many(self, batches: list[ProducerBatch], leader: str) -> None:
        request, timeout_ms = produce_many_request(
            batches, self._acks, self._config.request_timeout_ms, time.monotonic())
        try:
            response = await self._metadata.aio.call(
                leader, "ProduceMany", request,
                timeout_s=timeout_ms / 1000 + _DEADLINE_MARGIN_S, subject=str(batches[0].tp))
        except errors.TidelogError as exc:
            if _unimplemented(exc):  # an older node: nothing was written; use Produce
                self._no_produce_many.add(leader)
                self._send(batches, leader)
                return
            for batch in batches:
                self._on_error(batch, exc)
        except asyncio.CancelledError:
            self._cancelled(batches)
            raise
        else:
            for batch, result, error in many_outcomes(batches, response):
                if error is None:
                    self._succeeded(batch, result)
                else:
                    self._on_error(batch, error)
        finally:
            self.wake()

    def _succeeded(self, batch: ProducerBatch, response: Any) -> None:
        self.delivery.succeeded(batch)
        batch.result.complete(response.base_offset, batch.timestamps_ms)
        self._accumulator.release(batch)
        self._on_release()

    def _cancelled(self, batches: list[ProducerBatch]) -> None:
        for batch in batches:
            self._fail_all(self.delivery.failed(batch, errors.ClientClosed(
                f"{batch.tp}: request cancelled by close(); the batch may or may not have "
                "been written"), float("inf")))

    def _on_error(self, batch: ProducerBatch, error: errors.TidelogError) -> None:
        self._fail_all(attempt_failed(self.delivery, self._metadata, batch, error,
                                      time.monotonic()))
        if self.delivery.fenced is not None:  # delivery.py rule 6
            self._fail_everything(self.delivery.fenced)

    def _fail(self, batch: ProducerBatch, error: BaseException) -> None:
        fail_batch(self._accumulator, batch, error)
        self._on_release()

    def _fail_all(self, failures: list[Failure]) -> None:
        for batch, error in failures:
            self._fail(batch, error)

    def _fail_everything(self, error: BaseException) -> None:
        fail_everything(self._accumulator, self.delivery, error, self._fail)
        for task in list(self._inflight):
            task.cancel()

    async def _init_producer_id(self) -> None:
        from tidelog.proto import broker_pb2

        try:
            response = await self._metadata.call_any_async(
                "InitProducerId", broker_pb2.InitProducerIdRequest(
                    transactional_id=self.delivery.transactional_id),
                attempt_s=min(self._config.request_timeout_ms / 1000, METADATA_ATTEMPT_S_MAX))
        except errors.TidelogError as exc:
            _log.info("InitProducerId failed (will retry): %s", exc)
            self._pid_retry_at = time.monotonic() + self._config.retry_backoff_ms / 1000
            return
        self.delivery.set_producer_id(response.producer_id, response.producer_epoch)
        self.wake()


def _unimplemented(error: errors.TidelogError) -> bool:
    """The call failed with UNIMPLEMENTED (AioConnections.call raises the typed error from the
    grpc one, which stays its __context__)."""
    cause = error.__cause__ or error.__context__
    return isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNIMPLEMENTED
