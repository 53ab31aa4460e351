"""The record accumulator: per-partition batches waiting to be sent, bounded by buffer_memory.

Theory of operation
-------------------
``append`` (any user thread) adds a record to the last batch of its partition, or opens a new batch
when that one would grow past ``batch_size`` raw bytes. A batch is *ready* when it is not the last
of its partition (so it is closed: full), when its partition has no request in flight, when it
has lingered ``linger_ms`` since it was opened, or when a flush or close is under way. The sender
thread asks ``ready(now, lingering)`` and takes batches with ``drain(tp, now, lingering)`` in
order; a drained batch is closed for appends.

Adaptive linger: ``lingering(tp)`` (the sender passes "tp has a request in flight") says whether
an open batch waits at all. A lone record on a quiet partition leaves at once, as with
``linger_ms=0``; while a request of the partition is in flight, the records sent meanwhile build
up one batch behind it, which leaves when that request is answered (the partition is quiet
again) or after ``linger_ms``, whichever comes first. So ``linger_ms`` is the most a record
waits behind an in-flight request, and under load batches stay as large as before.

Memory: every appended record reserves its estimated raw size (``record_size``); the reservation
is released when its batch completes (acknowledged or failed), not when it is sent, so the bound
covers records waiting for a reply and retries too. When the reservation does not fit in
``buffer_memory``, ``append`` blocks up to ``max_block_ms``, then raises BufferFull and queues
nothing. A single record larger than ``buffer_memory`` raises MessageTooLarge at once.

Invariant: ``used_bytes == sum(batch.reserved_bytes for batch in incomplete batches)``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from tidelog.client import errors
from tidelog.client.future import BatchResult, DeliveryCallback, RecordFuture
from tidelog.client.records import TopicPartition

__all__ = ["RECORD_OVERHEAD_BYTES", "ProducerBatch", "RecordAccumulator", "record_size"]

#: per-record framing in the batch format: length, attributes, offset and timestamp deltas,
#: key and value lengths, header count (see tidelog.proto.batch)
RECORD_OVERHEAD_BYTES = 23

RecordTuple = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]], int]


def record_size(key: bytes | None, value: bytes | None,
                headers: Sequence[tuple[str, bytes | None]]) -> int:
    """The record's raw (uncompressed) size in the batch format, as used for batch_size."""
    size = RECORD_OVERHEAD_BYTES + (len(key) if key else 0) + (len(value) if value else 0)
    for name, data in headers:
        size += 6 + len(name) + (len(data) if data else 0)
    return size


class ProducerBatch:
    """Records of one partition that will travel in one encoded batch."""

    __slots__ = (
        "attempts", "base_sequence", "created_s", "deadline_s", "encoded", "producer_epoch",
        "producer_id", "raw_bytes", "records", "reserved_bytes", "result", "sent_behind",
        "timestamps_ms", "tp",
    )

    def __init__(self, tp: TopicPartition, created_s: float, deadline_s: float) -> None:
        self.tp = tp
        self.records: list[RecordTuple] = []
        self.raw_bytes = 0
        self.reserved_bytes = 0
        self.created_s = created_s
        #: delivery_timeout_ms after creation: the batch fails with Timeout if not acked by then
        self.deadline_s = deadline_s
        self.result = BatchResult(tp.topic, tp.partition)
        self.attempts = 0
        # Set once, when the sender first drains the batch; retries resend the same bytes.
        self.producer_id = -1
        self.producer_epoch = -1
        self.base_sequence = -1
        self.encoded: bytes | None = None
        #: whether the last attempt left while a lower sequence of the partition was unacked
        self.sent_behind = False
        #: the records' timestamps, kept when `records` is dropped after encoding
        self.timestamps_ms: list[int] = []

    @property
    def record_count(self) -> int:
        return len(self.timestamps_ms) if self.encoded is not None else len(self.records)

    @property
    def last_sequence(self) -> int:
        return self.base_sequence + len(self.records) - 1

    def set_encoded(self, encoded: bytes) -> None:
        """Keep the encoded bytes for (re)sending and drop the record objects."""
        self.timestamps_ms = [r[3] for r in self.records]
        self.encoded = encoded
        self.records = []

    def __repr__(self) -> str:
        return (f"ProducerBatch({self.tp}, records={len(self.records)}, "
                f"seq={self.base_sequence}, attempts={self.attempts})")


def _always(tp: TopicPartition) -> bool:
    return True


class RecordAccumulator:
    def __init__(
        self, *, batch_size: int, linger_ms: float, buffer_memory: int, max_block_ms: int,
        delivery_timeout_ms: int, clock: Callable[[], float] = time.monotonic,
        on_new_batch: Callable[[], None] = lambda: None,
        on_batch_closed: Callable[[TopicPartition], None] = lambda tp: None,
    ) -> None:
        self.batch_size = batch_size
        self.buffer_memory = buffer_memory
        self._linger_s = linger_ms / 1000
        self._max_block_s = max_block_ms / 1000
        self._delivery_timeout_s = delivery_timeout_ms / 1000
        self._clock = clock
        self._on_new_batch = on_new_batch
        self._on_batch_closed = on_batch_closed
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        # Invariant: only the last batch of each deque is open for appends.
        self._batches: dict[TopicPartition, deque[ProducerBatch]] = {}
        self._incomplete: set[BatchResult] = set()
        self.used_bytes = 0
        self._flushes = 0
        self._closed = False

    # --- user threads ----------------------------------------------------------------------------

    def append(
        self, tp: TopicPartition, key: bytes | None, value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]], timestamp_ms: int,
        callback: DeliveryCallback | None = None, size: int = -1,
    ) -> RecordFuture:
        """Queue one record; blocks up to max_block_ms for buffer space (see module docstring).
        `size`: the record's record_size when the caller computed it already."""
        if size < 0:
            size = record_size(key, value, headers)
        if size > self.buffer_memory:
            raise errors.MessageTooLarge(
                f"record of {size} bytes is larger than buffer_memory ({self.buffer_memory} "
                "bytes); raise buffer_memory or send a smaller record"
            )
        new_batch = False
        with self._lock:
            if self._closed:
                raise errors.ClientClosed("send() after the producer was closed")
            if self.used_bytes + size > self.buffer_memory:
                self._wait_for_space(size)
            self.used_bytes += size
            queue = self._batches.get(tp)
            if queue is None:
                queue = self._batches[tp] = deque()
            batch = queue[-1] if queue else None
            if batch is None or (batch.records and batch.raw_bytes + size > self.batch_size):
                if batch is not None:
                    # the old last batch is now closed, hence ready
                    self._on_batch_closed(tp)
                now = self._clock()
                batch = ProducerBatch(tp, now, now + self._delivery_timeout_s)
                queue.append(batch)
                self._incomplete.add(batch.result)
                new_batch = True
            index = len(batch.records)
            batch.records.append((key, value, headers, timestamp_ms))
            batch.raw_bytes += size
            batch.reserved_bytes += size
            future = RecordFuture(batch.result, index)
            if callback is not None:
                batch.result.add_callback(index, callback, record_style=True)
        if new_batch:
            self._on_new_batch()
        return future

    def _wait_for_space(self, size: int) -> None:
        # Called with the lock held.
        deadline = self._clock() + self._max_block_s
        while self.used_bytes + size > self.buffer_memory:
            remaining = deadline - self._clock()
            if remaining <= 0 or self._closed:
                raise errors.BufferFull(
                    f"buffer_memory ({self.buffer_memory} bytes) still full after "
                    f"max_block_ms ({self._max_block_s * 1000:.0f} ms); the cluster is not "
                    "keeping up or is unreachable. Nothing was queued: retry later, call "
                    "flush(), or raise buffer_memory / max_block_ms"
                )
            self._space.wait(remaining)

    def begin_flush(self) -> list[BatchResult]:
        """Make every batch ready now; returns the results to wait for."""
        with self._lock:
            self._flushes += 1
            return list(self._incomplete)

    def end_flush(self) -> None:
        with self._lock:
            self._flushes -= 1

    def close(self) -> None:
        """Refuse new records and make every batch ready; blocked senders give up."""
        with self._lock:
            self._closed = True
            self._space.notify_all()

    # --- the sender thread -------------------------------------------------------------------

    def ready(self, now: float, lingering: Callable[[TopicPartition], bool] = _always
              ) -> tuple[list[TopicPartition], float | None]:
        """Partitions with a batch to send now, and when the next lingering batch gets ready.
        `lingering(tp)`: whether tp's open batch may wait linger_ms (see the module docstring;
        by default every one does)."""
        ready: list[TopicPartition] = []
        next_s: float | None = None
        with self._lock:
            hurry = self._flushes > 0 or self._closed
            for tp, queue in self._batches.items():
                if not queue:
                    continue
                head = queue[0]
                if hurry or len(queue) > 1 or not lingering(tp):
                    ready.append(tp)
                    continue
                due = head.created_s + self._linger_s
                if due <= now:
                    ready.append(tp)
                elif next_s is None or due < next_s:
                    next_s = due
        return ready, next_s

    def drain(self, tp: TopicPartition, now: float, lingering: bool = True
              ) -> ProducerBatch | None:
        """Take the head batch of tp if it is ready (closing it if it was the open one);
        `lingering`: as ready()'s for tp."""
        with self._lock:
            queue = self._batches.get(tp)
            if not queue:
                return None
            hurry = self._flushes > 0 or self._closed
            if (lingering and not hurry and len(queue) == 1
                    and queue[0].created_s + self._linger_s > now):
                return None
            batch = queue.popleft()
            if not queue:
                # it was the open one
                self._on_batch_closed(tp)
            return batch

    def expire(self, now: float) -> list[ProducerBatch]:
        """Remove and return never-sent batches past their delivery deadline."""
        expired: list[ProducerBatch] = []
        with self._lock:
            for queue in self._batches.values():
                while queue and queue[0].deadline_s <= now:
                    expired.append(queue.popleft())
        return expired

    def abort_all(self) -> list[ProducerBatch]:
        """Remove every waiting batch (on forced close)."""
        with self._lock:
            batches = [b for q in self._batches.values() for b in q]
            self._batches.clear()
        return batches

    def release(self, batch: ProducerBatch) -> None:
        """The batch completed: give its memory back and wake blocked senders."""
        with self._lock:
            self.used_bytes -= batch.reserved_bytes
            assert self.used_bytes >= 0, "buffer accounting went negative"
            batch.reserved_bytes = 0
            self._incomplete.discard(batch.result)
            self._space.notify_all()

    def has_incomplete(self) -> bool:
        with self._lock:
            return bool(self._incomplete)

    def waiting_count(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._batches.values())
