"""The asyncio consumer's fetcher: one long-poll Fetch task per leader, a bounded prefetch
buffer, and the sync client's sans-I/O parts (client/fetcher.py `PartitionFetchState`,
`plan_fetches` to build the requests, `apply_fetch_result` to apply a reply, `decode_fetched`).

Positions, fetch offsets, epochs (a seek discards replies for an older epoch), the prefetch
bound and the round-robin hand-out are the sync fetcher's (see its theory of operation). Two
differences, both about failures:
* a reply is applied partition by partition, and a partition whose result raises records the
  error for the next ``getmany`` without keeping the reply's other partitions in flight;
* a damaged batch stays at the head of its partition: every ``getmany`` raises CorruptBatch
  again until the user seeks past it (as Kafka does), it is never skipped silently.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tidelog.client import errors
from tidelog.client.aio.metadata import AioMetadata
from tidelog.client.aio.waiting import wait_event
from tidelog.client.config import ConsumerConfig
from tidelog.client.fetcher import (
    FetchPositions,
    PartitionFetchState,
    apply_fetch_result,
    plan_fetches,
    take_order,
    take_records,
)
from tidelog.client.records import ConsumerRecord, TopicPartition

__all__ = ["AioFetcher"]

_log = logging.getLogger(__name__)
_DEADLINE_MARGIN_S = 5.0


class AioFetcher(FetchPositions):
    def __init__(self, config: ConsumerConfig, metadata: AioMetadata) -> None:
        self._config = config
        self._metadata = metadata
        self.states: dict[TopicPartition, PartitionFetchState] = {}
        self._inflight: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self.arrived = asyncio.Event()
        self._errors: list[errors.TidelogError] = []
        self._rotation = 0

    # --- errors (assign / seek / buffered_bytes / out_of_range: FetchPositions) -----------------

    def raise_errors(self) -> None:
        if self._errors:
            error = self._errors.pop(0)
            raise error

    # --- fetching --------------------------------------------------------------------------------

    def send_fetches(self) -> None:
        plans = plan_fetches(self.states, self._metadata, self._config, time.monotonic(),
                             self._config.prefetch_bytes_max - self.buffered_bytes(),
                             lambda leader: leader in self._inflight)
        loop = asyncio.get_running_loop()
        for plan in plans:
            task = loop.create_task(self._fetch(plan.leader, plan.asked, plan.request))
            self._inflight[plan.leader] = (plan.reserved, task)

    async def _fetch(self, leader: str, asked: dict[TopicPartition, int], request: object) -> None:
        timeout_s = (self._config.request_timeout_ms + self._config.fetch_max_wait_ms) / 1000
        try:
            response = await self._metadata.aio.call(leader, "Fetch", request,
                                                     timeout_s=timeout_s + _DEADLINE_MARGIN_S)
        except errors.TidelogError as exc:
            _log.info("fetch from %s failed: %s", leader, exc)
            retry_at = time.monotonic() + self._config.retry_backoff_ms / 1000
            for tp in asked:
                st = self.states.get(tp)
                if st is not None and st.epoch == asked[tp]:
                    st.retry_at_s = retry_at
                self._metadata.mark_stale(tp.topic)
            return
        finally:
            self._inflight.pop(leader, None)
            for tp, epoch in asked.items():  # every partition asked is free again, whatever
                st = self.states.get(tp)
                if st is not None and st.epoch == epoch:
                    st.inflight = False
            self.arrived.set()
        for result in response.partitions:
            tp = TopicPartition(result.topic, result.partition)
            st = self.states.get(tp)
            if st is None or asked.get(tp) != st.epoch:
                continue  # unassigned or sought since: stale
            try:
                self._apply(tp, st, result)
            except errors.TidelogError as exc:
                self._errors.append(exc)
                st.retry_at_s = time.monotonic() + self._config.retry_backoff_ms / 1000

    def _apply(self, tp: TopicPartition, st: PartitionFetchState, result: object) -> None:
        apply_fetch_result(tp, st, result, config=self._config, metadata=self._metadata,
                           now=time.monotonic())

    # --- handing out records ------------------------------------------------------------------

    def take(self, max_records: int) -> list[ConsumerRecord]:
        """Up to max_records buffered records, round-robin over unpaused partitions. A damaged
        head batch raises, and raises again on the next call (until a seek)."""
        tps, self._rotation = take_order(self.states, self._rotation)
        return take_records(self.states, tps, max_records)

    async def wait(self, timeout_s: float) -> None:
        """Until a reply arrives or timeout_s passes."""
        await wait_event(self.arrived, timeout_s)
        self.arrived.clear()

    async def close(self) -> None:
        tasks = [task for _, task in self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
