"""AIOConsumer: the asyncio twin of tidelog.client.Consumer.

Options are the sync consumer's (client/config.py ConsumerConfig). With `group_id` and `topics`
the consumer joins the group (client/aio/group.py: heartbeats and rebalances are an asyncio
task); with `topics` and no group it reads every partition of them; or `assign()` partitions by
hand. Records come from ``await getmany()`` (a dict per partition, like aiokafka),
``await getone()``, or ``async for record in consumer``.

Positions: a partition without one starts at the group's committed offset, else at
auto_offset_reset (earliest / latest / error). Auto-commit (the default with a group) commits
the positions every auto_commit_interval_ms, before a partition is revoked, and at close.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from tidelog.client import errors
from tidelog.client.aio import offsets
from tidelog.client.aio.connection import AioConnections
from tidelog.client.aio.fetcher import AioFetcher
from tidelog.client.aio.group import AioCoordinator, AioMembership
from tidelog.client.aio.metadata import AioMetadata
from tidelog.client.config import ConsumerConfig, parse_bootstrap
from tidelog.client.group import tps_to_wire
from tidelog.client.records import ConsumerRecord, TopicPartition
from tidelog.client.security import ClientSecurity
from tidelog.client.throttle import check_client_id

__all__ = ["AIOConsumer"]

_log = logging.getLogger(__name__)


class AIOConsumer:
    """Read records from asyncio code.

    >>> async with AIOConsumer("127.0.0.1:9091", group_id="g", topics=["events"],
    ...                        auto_offset_reset="earliest") as consumer:
    ...     async for record in consumer:
    ...         print(record.offset, record.value)
    """

    def __init__(self, bootstrap: str | Sequence[str], *, group_id: str | None = None,
                 topics: Iterable[str] = (), security: ClientSecurity | None = None,
                 client_id: str = "", **options: object) -> None:
        """`options`: any ConsumerConfig field (auto_offset_reset, fetch_max_wait_ms,
        max_poll_records, enable_auto_commit, session_timeout_ms, ...)."""
        self.config = ConsumerConfig(bootstrap=parse_bootstrap(bootstrap), security=security,
                                     group_id=group_id, client_id=check_client_id(client_id),
                                     **options)  # type: ignore[arg-type]
        self._topics = tuple(dict.fromkeys(topics))
        self._started = False
        self._closed = False
        self._connections: AioConnections | None = None
        self._metadata: AioMetadata | None = None
        self._fetcher: AioFetcher | None = None
        self._coordinator: AioCoordinator | None = None
        self._membership: AioMembership | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._reset_lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        config = self.config
        self._connections = AioConnections(config.security, client_id=config.client_id)
        self._metadata = AioMetadata(
            self._connections, config.bootstrap, request_timeout_ms=config.request_timeout_ms,
            max_age_ms=config.metadata_max_age_ms, retry_backoff_ms=config.retry_backoff_ms,
            bootstrap_timeout_s=config.bootstrap_timeout_s)
        self._fetcher = AioFetcher(config, self._metadata)
        if config.group_id is not None:
            self._coordinator = AioCoordinator(config.group_id, self._metadata,
                                               backoff_s=config.retry_backoff_ms / 1000)
        if self._topics and config.group_id is not None:
            self._membership = AioMembership(
                self._coordinator, self._reconcile, topics=self._topics,  # type: ignore[arg-type]
                assignor=config.group_assignor, session_timeout_ms=config.session_timeout_ms,
                max_poll_interval_ms=config.max_poll_interval_ms,
                request_timeout_ms=config.request_timeout_ms, client_id=config.client_id)
            self._membership.start()
            if config.enable_auto_commit:
                self._commit_task = asyncio.get_running_loop().create_task(self._auto_commit())
        elif self._topics:
            tps: list[TopicPartition] = []
            for topic in self._topics:
                description = await self._metadata.topic_async(
                    topic, timeout_s=config.request_timeout_ms / 1000)
                tps += [TopicPartition(topic, p) for p in range(len(description.partitions))]
            self._fetcher.assign(tps)

    async def close(self) -> None:
        """Commit (auto-commit), leave the group, stop. Idempotent."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if self._commit_task is not None:
            self._commit_task.cancel()
            await asyncio.gather(self._commit_task, return_exceptions=True)
        if self._membership is not None:
            if self.config.enable_auto_commit and self._membership.owned:
                try:
                    await self.commit()
                except errors.TidelogError as exc:
                    _log.warning("final commit failed: %s", exc)
            await self._membership.leave()
        assert self._fetcher is not None and self._connections is not None
        await self._fetcher.close()
        await self._connections.close()

    def __del__(self) -> None:
        if self._started and not self._closed:  # like an unclosed file: say so, at least
            warnings.warn(f"unclosed {type(self).__name__}: call `await close()` or use "
                          "`async with` (its group keeps its partitions until the session expires)",
                          ResourceWarning, stacklevel=1)

    async def __aenter__(self) -> AIOConsumer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- assignment ------------------------------------------------------------------------------

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (no group membership)."""
        if self._membership is not None:
            raise errors.ConfigError("assign() on a consumer subscribed to a group's topics")
        self._fetcher_or_fail().assign(tps)

    def assignment(self) -> set[TopicPartition]:
        return set(self._fetcher_or_fail().states)

    @property
    def member_id(self) -> str | None:
        return self._membership.member_id if self._membership is not None else None

    async def wait_for_assignment(self, timeout_s: float = 30.0) -> set[TopicPartition]:
        """Until the group gave this member partitions (or timeout_s passed)."""
        deadline = time.monotonic() + timeout_s
        while self._membership is not None and not self._membership.owned:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._membership.changed.clear()
            try:
                await asyncio.wait_for(self._membership.changed.wait(), remaining)
            except TimeoutError:
                break
        return self.assignment()

    # --- records ---------------------------------------------------------------------------------

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition,
                                                              list[ConsumerRecord]]:
        """Records buffered or arriving within timeout_ms, at most max_records (default
        max_poll_records), per partition in offset order; {} when none came. `tps` limits the
        partitions returned (the others stay buffered)."""
        fetcher = self._fetcher_or_fail()
        limit = max_records or self.config.max_poll_records
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if self._membership is not None:  # a long wait in getmany is polling too
                self._membership.polled()
            fetcher.raise_errors()
            try:
                await self._reset_positions()
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                _log.info("looking up positions failed (will retry): %s", exc)
            paused: list[TopicPartition] = []
            if tps:
                paused = [tp for tp, st in fetcher.states.items() if tp not in tps
                          and not st.paused]
                for tp in paused:
                    fetcher.states[tp].paused = True
            try:
                records = fetcher.take(limit)
            finally:
                for tp in paused:
                    if tp in fetcher.states:
                        fetcher.states[tp].paused = False
            fetcher.send_fetches()
            if records:
                return _by_partition(records)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {}
            await fetcher.wait(min(remaining, 0.1))

    async def getone(self) -> ConsumerRecord:
        """The next record (waits as long as it takes)."""
        while True:
            batch = await self.getmany(timeout_ms=1000, max_records=1)
            for records in batch.values():
                return records[0]

    def __aiter__(self) -> AIOConsumer:
        return self

    async def __anext__(self) -> ConsumerRecord:
        if self._closed:
            raise StopAsyncIteration
        return await self.getone()

    # --- positions -----------------------------------------------------------------------------

    def position(self, tp: TopicPartition) -> int | None:
        st = self._fetcher_or_fail().states.get(tp)
        if st is None:
            raise errors.ConfigError(f"{tp} is not assigned to this consumer")
        return st.position

    def seek(self, tp: TopicPartition, offset: int) -> None:
        fetcher = self._fetcher_or_fail()
        if tp not in fetcher.states:
            raise errors.ConfigError(f"{tp} is not assigned to this consumer")
        if offset < 0:
            raise errors.ConfigError(f"seek: offset must be >= 0, not {offset}")
        fetcher.seek(tp, offset)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        await self._seek_to(offsets.EARLIEST, tps)

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        await self._seek_to(offsets.LATEST, tps)

    async def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]
                                ) -> dict[TopicPartition, int | None]:
        """{tp: timestamp_ms} -> the first offset whose timestamp is >= it (None: none)."""
        found = await offsets.list_offsets(
            self._metadata_or_fail(), {tp: (offsets.TIMESTAMP, ts) for tp, ts in
                                       timestamps.items()},
            timeout_s=self.config.request_timeout_ms / 1000,
            backoff_s=self.config.retry_backoff_ms / 1000)
        return {tp: (None if off < 0 else off) for tp, off in found.items()}

    async def beginning_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._list(offsets.EARLIEST, tps)

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._list(offsets.LATEST, tps)

    # --- commits ---------------------------------------------------------------------------------

    async def commit(self, offsets_: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit these next-offsets-to-read (default: the position of every assigned
        partition that has one)."""
        from tidelog.proto import broker_pb2

        coordinator = self._coordinator
        if coordinator is None:
            raise errors.ConfigError("commit() needs a group_id")
        fetcher = self._fetcher_or_fail()
        wanted = dict(offsets_) if offsets_ is not None else {
            tp: st.position for tp, st in fetcher.states.items() if st.position is not None}
        if not wanted:
            return
        membership = self._membership
        request = broker_pb2.OffsetCommitRequest(
            group_id=coordinator.group_id,
            member_id=membership.member_id if membership is not None else "",
            member_epoch=membership.epoch if membership is not None else -1,
            partitions=[broker_pb2.OffsetCommitPartition(topic=tp.topic, partition=tp.partition,
                                                         offset=offset)
                        for tp, offset in sorted(wanted.items())],
            timeout_ms=self.config.request_timeout_ms)
        await coordinator.call("OffsetCommit", request,
                               timeout_s=self.config.request_timeout_ms / 1000)

    async def committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets of these partitions (missing: none committed)."""
        from tidelog.proto import broker_pb2

        if self._coordinator is None:
            raise errors.ConfigError("committed offsets need a group_id")
        response = await self._coordinator.call(
            "OffsetFetch", broker_pb2.OffsetFetchRequest(group_id=self._coordinator.group_id,
                                                         partitions=tps_to_wire(tps)),
            timeout_s=self.config.request_timeout_ms / 1000)
        return {TopicPartition(p.topic, p.partition): p.offset
                for p in response.partitions if p.offset >= 0}  # type: ignore[attr-defined]

    # --- helpers -----------------------------------------------------------------------------

    def _fetcher_or_fail(self) -> AioFetcher:
        if self._closed:
            raise errors.ClientClosed("the consumer is closed")
        if self._fetcher is None:
            raise errors.ConfigError("start the consumer first (async with, or await start())")
        return self._fetcher

    def _metadata_or_fail(self) -> AioMetadata:
        self._fetcher_or_fail()
        assert self._metadata is not None
        return self._metadata

    async def _reconcile(self, revoked: frozenset[TopicPartition],
                         assigned: frozenset[TopicPartition], lost: bool) -> None:
        """The heartbeat task's rebalance step: commit and drop the revoked partitions (lost
        ones are dropped without committing: the commit would be refused), take the new ones
        (their positions are looked up by the next getmany)."""
        fetcher = self._fetcher
        assert fetcher is not None
        if revoked and not lost and self.config.enable_auto_commit:
            positions = {tp: fetcher.states[tp].position for tp in revoked
                         if tp in fetcher.states and fetcher.states[tp].position is not None}
            try:
                await self.commit(positions)  # type: ignore[arg-type]
            except errors.TidelogError as exc:
                _log.warning("commit of revoked partitions failed: %s", exc)
        keep = [tp for tp in fetcher.states if tp not in revoked]
        fetcher.assign([*keep, *sorted(assigned)])

    async def _reset_positions(self) -> None:
        fetcher = self._fetcher_or_fail()
        missing = [tp for tp, st in fetcher.states.items() if st.position is None]
        bad = fetcher.out_of_range()
        if bad and self.config.auto_offset_reset == "error":
            raise bad[0][1]
        if not missing and not bad:
            return
        async with self._reset_lock:
            if missing and self._coordinator is not None:
                for tp, offset in (await self.committed(missing)).items():
                    if tp in fetcher.states and fetcher.states[tp].position is None:
                        fetcher.seek(tp, offset)
            reset = [tp for tp, st in fetcher.states.items() if st.position is None]
            reset += [tp for tp, _ in bad if tp in fetcher.states]
            if not reset:
                return
            if self.config.auto_offset_reset == "error":
                raise errors.OffsetOutOfRange(
                    f"no committed offset for {sorted(map(str, reset))} and "
                    "auto_offset_reset='error'")
            spec = offsets.EARLIEST if self.config.auto_offset_reset == "earliest" \
                else offsets.LATEST
            for tp, offset in (await self._list(spec, reset)).items():
                if tp in fetcher.states:
                    fetcher.seek(tp, offset)

    async def _seek_to(self, spec: int, tps: Iterable[TopicPartition]) -> None:
        fetcher = self._fetcher_or_fail()
        wanted = list(tps) or list(fetcher.states)
        for tp, offset in (await self._list(spec, wanted)).items():
            self.seek(tp, offset)

    async def _list(self, spec: int, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await offsets.list_offsets(
            self._metadata_or_fail(), {tp: (spec, 0) for tp in tps},
            timeout_s=self.config.request_timeout_ms / 1000,
            backoff_s=self.config.retry_backoff_ms / 1000)

    async def _auto_commit(self) -> None:
        interval = self.config.auto_commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            membership = self._membership
            if membership is None or not membership.owned or membership.epoch <= 0:
                continue
            try:
                await self.commit()
            except errors.TidelogError as exc:
                _log.info("auto-commit failed: %s", exc)


def _by_partition(records: list[ConsumerRecord]) -> dict[TopicPartition, list[ConsumerRecord]]:
    """Records (in runs per partition, as take() hands them out) grouped by partition; one
    TopicPartition per run, not per record."""
    out: dict[TopicPartition, list[ConsumerRecord]] = {}
    run: list[ConsumerRecord] = []
    topic, partition = None, -1
    for record in records:
        if record.partition != partition or record.topic != topic:
            topic, partition = record.topic, record.partition
            run = out.setdefault(TopicPartition(topic, partition), [])
        run.append(record)
    return out
