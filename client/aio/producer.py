"""AIOProducer: the asyncio twin of tidelog.client.Producer.

Same options (client/config.py ProducerConfig, validated the same way), same accumulator,
partitioners and delivery rules (idempotence, sequence numbers, retries in order); the sender is
an asyncio task (client/aio/sender.py), not a thread. ``await send(...)`` returns the record's
RecordMetadata once acknowledged (acks=all by default); ``send_nowait(...)`` queues the record and
returns an asyncio future at once, so many records share batches (linger_ms, batch_size) and
``flush()`` waits for all of them. Batching is adaptive as in the sync Producer: a partition
with no request in flight sends at once; linger_ms bounds the wait behind one in flight.

A full buffer does not block the loop: the record waits (``await``) for space up to
max_block_ms, then BufferFull. Records are queued in call order: a record whose topic metadata
is still being fetched holds back the records sent after it.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import NamedTuple

from tidelog.client import errors
from tidelog.client.accumulator import RecordAccumulator
from tidelog.client.aio.connection import AioConnections
from tidelog.client.aio.metadata import AioMetadata
from tidelog.client.aio.sender import AioSender
from tidelog.client.aio.waiting import wait_event
from tidelog.client.config import ProducerConfig, parse_bootstrap
from tidelog.client.future import BatchResult
from tidelog.client.partitioner import PARTITIONERS, StickyPartitioner
from tidelog.client.producer import check_can_send, check_record_size, choose_partition
from tidelog.client.records import RecordMetadata, TopicPartition
from tidelog.client.security import ClientSecurity
from tidelog.client.throttle import check_client_id

__all__ = ["AIOProducer"]

Headers = Sequence[tuple[str, bytes | None]]


class _Waiting(NamedTuple):
    """A record sent while its topic's metadata or buffer space was not there yet."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None
    timestamp: int
    size: int
    future: asyncio.Future[RecordMetadata]


class AIOProducer:
    """Send records from asyncio code.

    >>> async with AIOProducer("127.0.0.1:9091") as producer:
    ...     metadata = await producer.send("events", b"hello", key=b"user-1")
    ...     futures = [producer.send_nowait("events", b"%d" % i) for i in range(1000)]
    ...     await producer.flush()
    """

    def __init__(self, bootstrap: str | Sequence[str], *, transactional_id: str | None = None,
                 security: ClientSecurity | None = None, client_id: str = "",
                 **options: object) -> None:
        """`options`: any ProducerConfig field (acks, linger_ms, batch_size, compression,
        idempotent, max_in_flight, buffer_memory, max_block_ms, retries, delivery_timeout_ms,
        request_timeout_ms, retry_backoff_ms, ...), with the sync Producer's defaults."""
        self.config = ProducerConfig(bootstrap=parse_bootstrap(bootstrap), security=security,
                                     client_id=check_client_id(client_id),
                                     **options)  # type: ignore[arg-type]
        config = self.config
        self._transactional_id = transactional_id or ""
        self._hash = PARTITIONERS[config.partitioner]
        self._sticky = StickyPartitioner()
        self._tps: dict[str, list[TopicPartition]] = {}
        self._closed = False
        self._started = False
        # Records waiting for their topic's metadata or for buffer space, in call order; one
        # task admits them (no task per record), and while any waits, later records queue too.
        self._backlog: deque[_Waiting] = deque()
        self._backlog_task: asyncio.Task[None] | None = None
        self._space = asyncio.Event()
        self._accumulator = RecordAccumulator(
            batch_size=config.batch_size, linger_ms=config.linger_ms,
            buffer_memory=config.buffer_memory, max_block_ms=config.max_block_ms,
            delivery_timeout_ms=config.delivery_timeout_ms,
            on_new_batch=self._wake, on_batch_closed=self._batch_closed)
        self._connections: AioConnections | None = None
        self._metadata: AioMetadata | None = None
        self._sender: AioSender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Bind to the running loop and start the sender (done by `async with` or the first
        send)."""
        self._start_now()

    def _start_now(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        config = self.config
        self._connections = AioConnections(config.security, client_id=config.client_id)
        self._metadata = AioMetadata(
            self._connections, config.bootstrap, request_timeout_ms=config.request_timeout_ms,
            max_age_ms=config.metadata_max_age_ms, retry_backoff_ms=config.retry_backoff_ms,
            bootstrap_timeout_s=config.bootstrap_timeout_s)
        self._sender = AioSender(config, self._accumulator, self._metadata,
                                 transactional_id=self._transactional_id,
                                 on_release=self._space.set)
        self._sender.start()

    # --- sending ------------------------------------------------------------------------------

    async def send(self, topic: str, value: bytes | str | None, key: bytes | str | None = None,
                   headers: Headers | None = None, partition: int | None = None,
                   timestamp: int | None = None) -> RecordMetadata:
        """Queue one record and wait until it is acknowledged; raises its delivery error."""
        return await self.send_nowait(topic, value, key=key, headers=headers,
                                      partition=partition, timestamp=timestamp)

    def send_nowait(self, topic: str, value: bytes | str | None,
                    key: bytes | str | None = None, headers: Headers | None = None,
                    partition: int | None = None, timestamp: int | None = None,
                    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record without waiting; the future gives its RecordMetadata (or raises
        its delivery error). Must be called on the loop. Errors found at once (closed, fenced,
        a partition out of range, too large) raise here."""
        self._check_open()
        if isinstance(value, str):
            value = value.encode()
        if isinstance(key, str):
            key = key.encode()
        headers = tuple(headers or ())
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        size = check_record_size(key, value, headers, self.config.request_bytes_max)
        self._start_now()
        loop = self._loop
        assert self._metadata is not None and loop is not None
        future: asyncio.Future[RecordMetadata] = loop.create_future()
        if (not self._backlog and topic in self._tps
                and self._metadata.cached_topic(topic) is not None
                and self._accumulator.used_bytes + size <= self._accumulator.buffer_memory):
            self._append(future, topic, key, value, headers, partition, timestamp, size)
            return future
        self._backlog.append(_Waiting(topic, key, value, headers, partition, timestamp, size,
                                      future))
        if self._backlog_task is None or self._backlog_task.done():
            self._backlog_task = loop.create_task(self._admit_backlog())
        return future

    async def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now (ignoring linger_ms) and wait until each record queued
        before this call is acknowledged or failed. Raises Timeout after `timeout` seconds."""
        if not self._started:
            return
        await self._backlog_admitted()  # records waiting for metadata were queued before too
        results = self._accumulator.begin_flush()
        self._wake()
        try:
            waits = [_done(result) for result in results]
            if waits:
                done, _ = await asyncio.wait(waits, timeout=timeout)
                if len(done) != len(waits):
                    raise errors.Timeout(f"flush did not finish within {timeout} s")
        finally:
            self._accumulator.end_flush()

    async def partitions_for(self, topic: str) -> list[TopicPartition]:
        self._start_now()
        return list(await self._load_topic(topic))

    async def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to `timeout` s; None: until delivery_timeout_ms expires
        it), then stop; what is still pending fails with ClientClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        await self._backlog_admitted()
        self._accumulator.close()
        assert self._sender is not None and self._connections is not None
        await self._sender.stop(timeout_s=timeout)
        await self._connections.close()

    def __del__(self) -> None:
        if self._started and not self._closed:  # like an unclosed file: say so, at least
            warnings.warn(f"unclosed {type(self).__name__}: call `await close()` or use "
                          "`async with` (records still queued are lost)",
                          ResourceWarning, stacklevel=1)

    async def __aenter__(self) -> AIOProducer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def metrics(self) -> dict[str, object]:
        """A few counters (the sync Producer's keys where they exist)."""
        sender = self._sender
        return {"buffer_used_bytes": self._accumulator.used_bytes,
                "buffer_limit_bytes": self.config.buffer_memory,
                "batches_waiting": self._accumulator.waiting_count(),
                "requests_sent": sender.requests_sent if sender else 0,
                "retries_sent": sender.retries_sent if sender else 0}

    @property
    def producer_id(self) -> int:
        return self._sender.delivery.producer_id if self._sender else -1

    # --- helpers ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        check_can_send(self._closed, self._sender.delivery if self._sender is not None else None)

    async def _admit_backlog(self) -> None:
        """Queue the waiting records in call order, each once its topic is known and its bytes
        fit in buffer_memory; a record that cannot be queued fails its own future."""
        while self._backlog:
            item = self._backlog[0]
            try:
                self._check_open_for_queued()
                if item.topic not in self._tps or self._metadata_or_fail().cached_topic(
                        item.topic) is None:
                    await self._load_topic(item.topic)
                await self._wait_for_space(item.size)
                self._append(item.future, item.topic, item.key, item.value, item.headers,
                             item.partition, item.timestamp, item.size)
            except Exception as exc:  # the record's own outcome
                if not item.future.done():
                    item.future.set_exception(exc)
            self._backlog.popleft()
            if len(self._backlog) % 1024 == 0:
                await asyncio.sleep(0)  # let the sender run while a long backlog drains

    async def _backlog_admitted(self) -> None:
        task = self._backlog_task
        if task is not None and not task.done():
            await asyncio.shield(task)

    def _metadata_or_fail(self) -> AioMetadata:
        assert self._metadata is not None
        return self._metadata

    def _check_open_for_queued(self) -> None:
        fenced = self._sender.delivery.fenced if self._sender is not None else None
        if fenced is not None:
            raise errors.ProducerFenced(f"this producer was fenced: {fenced}")

    async def _wait_for_space(self, size: int) -> None:
        if size > self._accumulator.buffer_memory:
            raise errors.MessageTooLarge(
                f"record of {size} bytes is larger than buffer_memory "
                f"({self._accumulator.buffer_memory} bytes)")
        deadline = time.monotonic() + self.config.max_block_ms / 1000
        while self._accumulator.used_bytes + size > self._accumulator.buffer_memory:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.BufferFull(
                    f"buffer_memory ({self.config.buffer_memory} bytes) still full after "
                    f"max_block_ms ({self.config.max_block_ms} ms); nothing was queued")
            self._space.clear()
            await wait_event(self._space, min(remaining, 0.05))

    def _append(self, future: asyncio.Future[RecordMetadata], topic: str, key: bytes | None,
                value: bytes | None, headers: Headers, partition: int | None,
                timestamp: int, size: int) -> None:
        tps = self._tps[topic]
        partition = choose_partition(topic, len(tps), key, partition, self._hash, self._sticky)

        def settle(metadata: RecordMetadata | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(metadata)  # type: ignore[arg-type]

        self._accumulator.append(tps[partition], key, value, headers, timestamp, settle, size)

    async def _load_topic(self, topic: str) -> list[TopicPartition]:
        assert self._metadata is not None
        description = await self._metadata.topic_async(
            topic, timeout_s=self.config.max_block_ms / 1000)
        tps = self._tps.get(topic)
        if tps is None or len(tps) != len(description.partitions):
            tps = self._tps[topic] = [TopicPartition(topic, p)
                                      for p in range(len(description.partitions))]
        return tps

    def _wake(self) -> None:
        if self._sender is not None:
            self._sender.wake()

    def _batch_closed(self, tp: TopicPartition) -> None:
        self._sticky.batch_closed(tp.topic, tp.partition, len(self._tps.get(tp.topic, ())) or 1)


def _done(result: BatchResult) -> asyncio.Future[None]:
    """An asyncio future done when the batch completes (its callbacks run on the loop)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    result.add_callback(0, lambda _f: future.done() or future.set_result(None),
                        record_style=False)
    return future
