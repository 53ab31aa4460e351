"""The Producer: ``send`` records, get futures of their offsets.

Thread-safe: any number of threads may call ``send`` and ``flush``; one background thread
(tidelog.client.sender) batches, sends and retries. See docs/client.md for every option.

A program that ends without ``close()`` still gets its records delivered (kafka-python's
promise): an exit hook closes every open producer, for at most exit_flush_timeout_s, and what
is still pending then fails with ClientClosed through its future and callback. The hook and
the sender hold no reference to the Producer (a `_Lifecycle` holds the parts), so an unclosed
producer can still be garbage-collected; its finalizer then starts the same graceful close.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from tidelog.client import errors
from tidelog.client.accumulator import RecordAccumulator, record_size
from tidelog.client.config import ProducerConfig, parse_bootstrap
from tidelog.client.connection import Connections
from tidelog.client.delivery import DeliveryState
from tidelog.client.future import DeliveryCallback, RecordFuture
from tidelog.client.metadata import Metadata
from tidelog.client.partitioner import PARTITIONERS, StickyPartitioner
from tidelog.client.records import TopicPartition
from tidelog.client.security import ClientSecurity
from tidelog.client.sender import Sender
from tidelog.client.throttle import ThrottleStats, check_client_id

__all__ = ["Producer", "check_can_send", "check_record_size", "choose_partition"]

Headers = Sequence[tuple[str, bytes | None]]

_log = logging.getLogger(__name__)
#: after close(timeout) gave up: how long the forced stop (cancel in-flight calls) may take
_FORCED_STOP_S = 5.0


class _Lifecycle:
    """The producer's closing, apart from the Producer so that neither the exit hook nor the
    sender thread keeps the Producer alive. ``close`` may be interrupted (Ctrl-C) at any point
    and called again: it resumes where it was."""

    def __init__(self, accumulator: RecordAccumulator, sender: Sender,
                 connections: Connections, exit_timeout_s: float) -> None:
        self.accumulator = accumulator
        self.sender = sender
        self.connections = connections
        self.exit_timeout_s = exit_timeout_s
        self.done = False

    def begin(self) -> None:
        """Stop taking records and deliver what is queued (idempotent, never blocks)."""
        self.accumulator.close()
        self.sender.stop(force=False)

    def close(self, timeout: float | None) -> None:
        if self.done:
            return
        self.begin()
        # Event.wait, not Thread.join: an interrupted join marks the thread stopped (3.11)
        if not self.sender.finished.wait(timeout):
            self.sender.stop(force=True)
            if not self.sender.finished.wait(_FORCED_STOP_S):
                _log.warning("producer sender thread did not stop within %.0f s",
                             _FORCED_STOP_S)
        self.connections.close()
        self.done = True
        _OPEN.discard(self)


#: every producer not closed yet (a strong set of lifecycles, not of producers)
_OPEN: set[_Lifecycle] = set()
_hook_lock = threading.Lock()
_hook_installed = False


def _close_open_producers() -> None:
    """The exit hook: once the program's other (non-daemon) threads are done, as Python itself
    would wait for them next (they may still be sending), close every open producer at once,
    each within its exit timeout. Ctrl-C here skips the wait; a second one the delivery."""
    if not _OPEN:
        return
    try:
        current = threading.current_thread()
        for thread in threading.enumerate():
            if not thread.daemon and thread is not current \
                    and thread is not threading.main_thread():
                thread.join()
    except KeyboardInterrupt:
        pass
    open_now = list(_OPEN)
    for lifecycle in open_now:
        lifecycle.begin()
    try:
        for lifecycle in open_now:
            try:
                lifecycle.close(lifecycle.exit_timeout_s)
            except Exception:  # pragma: no cover - never let one producer stop the others
                _log.exception("closing a producer at exit failed")
    except KeyboardInterrupt:
        pass


def _install_exit_hook() -> None:
    """Once per process. threading's exit hooks run when the main thread ends, before atexit
    handlers and while new threads may still start (gRPC and the sender start some; Python 3.12
    refuses new threads in atexit handlers); atexit is the fallback."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        register = getattr(threading, "_register_atexit", None)
        try:
            if register is None:
                raise RuntimeError("no threading._register_atexit")
            register(_close_open_producers)
        except RuntimeError:  # already shutting down, or another Python
            import atexit

            atexit.register(_close_open_producers)
        _hook_installed = True


def choose_partition(topic: str, count: int, key: bytes | None, partition: int | None,
                     hash_partition: Callable[[bytes, int], int],
                     sticky: StickyPartitioner) -> int:
    """The record's partition among `count` (sans-I/O, shared with client/aio/producer.py): the
    one asked for (TopicNotFound when out of range), else the key's hash, else the sticky one."""
    if partition is None:
        return hash_partition(key, count) if key is not None else sticky.partition(topic, count)
    if not 0 <= partition < count:
        raise errors.TopicNotFound(
            f"topic {topic!r} has partitions 0..{count - 1}; there is no partition {partition}")
    return partition


def check_can_send(closed: bool, delivery: DeliveryState | None) -> None:
    """ClientClosed after close(), ProducerFenced once a successor fenced this producer."""
    if closed:
        raise errors.ClientClosed("send() after the producer was closed")
    fenced = delivery.fenced if delivery is not None else None
    if fenced is not None:
        raise errors.ProducerFenced(f"this producer was fenced and sends nothing more: "
                                    f"{fenced}")


def check_record_size(key: bytes | None, value: bytes | None, headers: Any,
                      request_bytes_max: int) -> int:
    """The record's size; MessageTooLarge when it alone exceeds request_bytes_max."""
    size = record_size(key, value, headers)
    if size > request_bytes_max:
        raise errors.MessageTooLarge(
            f"record of {size} bytes exceeds request_bytes_max ({request_bytes_max})")
    return size


class Producer:
    """Send records to Tidelog topics.

    Batching is adaptive: a record for a partition with no request in flight is sent at once
    (one record at a time costs one round trip, not linger_ms more); records sent while a
    request of their partition is in flight build up one batch behind it, which leaves when that
    request is answered or after ``linger_ms``, whichever is first. So ``linger_ms`` is the most
    a record waits behind an in-flight request, and under load batches stay large.

    >>> with Producer("127.0.0.1:9091") as producer:
    ...     future = producer.send("events", b"hello", key=b"user-1")
    ...     print(future.result().offset)
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        acks: str = "all",
        linger_ms: float = 5.0,
        batch_size: int = 128 * 1024,
        compression: str = "lz4",
        idempotent: bool = True,
        max_in_flight: int = 5,
        buffer_memory: int = 32 * 1024 * 1024,
        max_block_ms: int = 60_000,
        retries: int = 2**31 - 1,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        retry_backoff_ms_max: int = 1_000,
        metadata_max_age_ms: int = 300_000,
        partitioner: str = "xxh3",
        request_bytes_max: int = 8 * 1024 * 1024,
        transactional_id: str | None = None,
        security: ClientSecurity | None = None,
        client_id: str = "",
        bootstrap_timeout_s: float = 10.0,
        exit_flush_timeout_s: float = 10.0,
        key_serializer: Callable[[Any], bytes | str | None] | None = None,
        value_serializer: Callable[[Any], bytes | str | None] | None = None,
    ) -> None:
        # send() applies them to every non-None key/value before the str -> UTF-8 step
        self._key_serializer, self._value_serializer = key_serializer, value_serializer
        self.config = ProducerConfig(
            bootstrap=parse_bootstrap(bootstrap), security=security, acks=acks, linger_ms=linger_ms,
            batch_size=batch_size, compression=compression, idempotent=idempotent,
            max_in_flight=max_in_flight, buffer_memory=buffer_memory, max_block_ms=max_block_ms,
            retries=retries, delivery_timeout_ms=delivery_timeout_ms,
            request_timeout_ms=request_timeout_ms, retry_backoff_ms=retry_backoff_ms,
            retry_backoff_ms_max=retry_backoff_ms_max, metadata_max_age_ms=metadata_max_age_ms,
            partitioner=partitioner, request_bytes_max=request_bytes_max,
            client_id=check_client_id(client_id), bootstrap_timeout_s=bootstrap_timeout_s,
            exit_flush_timeout_s=exit_flush_timeout_s,
        )
        config = self.config
        self._connections = Connections(config.security, client_id=config.client_id)
        self._metadata = Metadata(
            self._connections, config.bootstrap, request_timeout_ms=config.request_timeout_ms,
            max_age_ms=config.metadata_max_age_ms, retry_backoff_ms=config.retry_backoff_ms,
            bootstrap_timeout_s=config.bootstrap_timeout_s,
        )
        self._hash = PARTITIONERS[config.partitioner]
        self._sticky = StickyPartitioner()
        self._tps: dict[str, list[TopicPartition]] = {}
        self._closed = False
        self._sender: Sender | None = None
        # The accumulator's hooks must not hold the Producer (see _Lifecycle): plain closures
        wake: list[Sender] = []
        sticky, tps_of = self._sticky, self._tps

        def batch_closed(tp: TopicPartition) -> None:
            sticky.batch_closed(tp.topic, tp.partition, len(tps_of.get(tp.topic, ())) or 1)

        self._accumulator = RecordAccumulator(
            batch_size=config.batch_size, linger_ms=config.linger_ms,
            buffer_memory=config.buffer_memory, max_block_ms=config.max_block_ms,
            delivery_timeout_ms=config.delivery_timeout_ms,
            on_new_batch=lambda: wake and wake[0].wake(), on_batch_closed=batch_closed,
        )
        self._sender = Sender(config, self._accumulator, self._metadata, self._connections)
        wake.append(self._sender)
        # An identity that survives restarts: each new instance bumps the producer's epoch,
        # which fences the previous one (a zombie's writes fail with ProducerFenced).
        self._sender.delivery.transactional_id = transactional_id or ""
        self._lifecycle = _Lifecycle(self._accumulator, self._sender, self._connections,
                                     config.exit_flush_timeout_s)
        _install_exit_hook()
        _OPEN.add(self._lifecycle)
        weakref.finalize(self, self._lifecycle.begin)  # collected unclosed: deliver, then stop
        self._sender.start()

    # --- public API -----------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
        callback: DeliveryCallback | None = None,
    ) -> RecordFuture:
        """Queue one record; returns a future of its RecordMetadata.

        str keys and values are encoded as UTF-8. ``timestamp`` is ms since the epoch (default:
        now). ``callback(metadata, error)`` runs on the sender thread when the outcome is known.
        Blocks only to fetch a topic's metadata the first time, or when buffer_memory is full
        (up to max_block_ms, then BufferFull). Raises TopicNotFound for an unknown topic.
        """
        check_can_send(self._closed, self._sender.delivery if self._sender is not None else None)
        if self._value_serializer is not None and value is not None:
            value = self._value_serializer(value)
        if self._key_serializer is not None and key is not None:
            key = self._key_serializer(key)
        if isinstance(value, str):
            value = value.encode()
        if isinstance(key, str):
            key = key.encode()
        tps = self._tps.get(topic)
        cached = self._metadata.cached_topic(topic)
        if tps is None or cached is None or len(cached.partitions) != len(tps):
            tps = self._load_topic(topic)  # first send, or the topic grew (a refresh saw it)
        partition = choose_partition(topic, len(tps), key, partition, self._hash, self._sticky)
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        headers = headers or ()
        size = check_record_size(key, value, headers, self.config.request_bytes_max)
        return self._accumulator.append(tps[partition], key, value, headers, timestamp, callback,
                                        size)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now (ignoring linger_ms) and wait until each record sent before
        this call is acknowledged or failed. Raises Timeout if `timeout` seconds pass first."""
        results = self._accumulator.begin_flush()
        self._wake_sender()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for result in results:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not result.wait(remaining):
                    raise errors.Timeout(f"flush did not finish within {timeout} s")
        finally:
            self._accumulator.end_flush()

    def partitions_for(self, topic: str) -> list[TopicPartition]:
        return list(self._load_topic(topic))

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to `timeout` seconds, None = until delivery_timeout_ms
        expires it), then stop. Records still pending after the timeout fail with ClientClosed.
        Interrupted (Ctrl-C), it can be called again and goes on where it was."""
        self._closed = True
        self._lifecycle.close(timeout)

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def metrics(self) -> dict[str, object]:
        """A snapshot of this producer's counters, like kafka-python's ``metrics()``: a new
        plain dict each call, keys listed in docs/client.md ("Metrics"). Thread-safe and cheap
        (no I/O); counters only grow, so rates are differences between two snapshots."""
        sender = self._sender
        assert sender is not None
        out: dict[str, object] = {
            "buffer_used_bytes": self._accumulator.used_bytes,
            "buffer_limit_bytes": self.config.buffer_memory,
            "batches_waiting": self._accumulator.waiting_count(),
            "requests_sent": sender.requests_sent,
            "retries_sent": sender.retries_sent,
        }
        out.update(sender.counters.snapshot())
        throttle = self.throttle
        out["throttled_responses"] = throttle.throttled_responses
        out["throttle_time_ms_total"] = throttle.throttle_time_ms_total
        return out

    @property
    def throttle(self) -> ThrottleStats:
        """How often and how long the nodes' quotas throttled this producer (each time it
        waited the throttle time out before its next request to that node)."""
        assert self._sender is not None
        return self._sender.throttle.stats

    # --- helpers -----------------------------------------------------------------------------

    def _load_topic(self, topic: str) -> list[TopicPartition]:
        description = self._metadata.topic(topic, timeout_s=self.config.max_block_ms / 1000)
        tps = self._tps.get(topic)
        if tps is None or len(tps) != len(description.partitions):
            tps = [TopicPartition(topic, p) for p in range(len(description.partitions))]
            self._tps[topic] = tps
        return tps

    def _wake_sender(self) -> None:
        if self._sender is not None:
            self._sender.wake()
