"""The measuring loops of `tidelog bench` (no argparse, no printing): produce, consume, e2e.

Each loop is bounded by a message count AND a time limit, and stops early when `stop` is set
(Ctrl-C in the command): it then returns what it measured so far, marked interrupted. A
`Counters` object is updated as records are acknowledged or read, so a progress reporter in
another thread can show the rate while the loop runs. benchmarks/bench_peers.py calls these
same functions for Tidelog's side of its table.

Values are slices of one random buffer (never the same bytes twice within lz4's 64 KiB
window), so compression cannot make the figures look better than the bytes a user sends: a
worst case, as the peers' brokers do not compress at all. In `e2e` the first 8 bytes of each
value carry the send time (monotonic ns), read back by a consumer in the same process.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidelog.client.bench_stats import BenchResult, LatencyKind, Percentiles

if TYPE_CHECKING:
    from tidelog.client.future import RecordFuture
    from tidelog.client.security import ClientSecurity

__all__ = ["ConsumeSpec", "Counters", "ProduceSpec", "Values", "run_consume", "run_e2e",
           "run_produce"]

STAMP = struct.Struct(">q")  # e2e: the send time in the first 8 bytes of a value
_POOL_BYTES = 4 * 1024 * 1024  # > lz4's 64 KiB window, so no batch repeats itself
_SEMAPHORE_WAIT_S = 0.1  # how often a full window re-checks the deadline and `stop`
_FLUSH_AFTER_STOP_S = 10.0  # what is still in flight after a stop gets this long
_E2E_DRAIN_S = 10.0  # after the last ack, the e2e consumer gets this long to read the rest


@dataclass(frozen=True, slots=True, kw_only=True)
class ProduceSpec:
    """One produce workload. `in_flight` bounds the records sent but not yet acknowledged (1 =
    send, wait, send: the one-at-a-time latency); `keys` > 0 sends keyed records over that
    many distinct keys (xxh3 spreads them over the partitions), 0 = null keys (sticky)."""

    topic: str
    size: int = 100
    count: int = 100_000
    seconds: float = 60.0
    acks: str = "all"
    linger_ms: float = 5.0
    in_flight: int = 1000
    keys: int = 0
    batch_size: int = 128 * 1024

    def producer_options(self) -> dict[str, object]:
        return {"acks": self.acks, "linger_ms": self.linger_ms, "batch_size": self.batch_size,
                "buffer_memory": max(32 * 1024 * 1024, 4 * self.in_flight * (self.size + 64))}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumeSpec:
    """Read `topic` from the start of every partition up to the end it had when reading began,
    or `count` records, or `seconds`, whichever comes first."""

    topic: str
    count: int = 100_000
    seconds: float = 60.0


class Counters:
    """Running totals for a progress line (written by one loop, read by the reporter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.errors = 0
        self.bytes = 0
        self.started = time.perf_counter()

    def add(self, messages: int, nbytes: int, errors: int = 0) -> None:
        with self._lock:
            self.messages += messages
            self.bytes += nbytes
            self.errors += errors

    def snapshot(self) -> tuple[int, int, int, float]:
        """(messages, bytes, errors, seconds since started)."""
        with self._lock:
            return self.messages, self.bytes, self.errors, time.perf_counter() - self.started

    def restart(self) -> None:
        with self._lock:
            self.messages = self.errors = self.bytes = 0
            self.started = time.perf_counter()


class Values:
    """Record values of one size, each a different slice of one random buffer."""

    def __init__(self, size: int, pool_bytes: int = _POOL_BYTES) -> None:
        if size < 1:
            raise ValueError("a value needs at least 1 byte")
        self.size = size
        self._pool = os.urandom(max(pool_bytes, 2 * size))
        self._slots = (len(self._pool) - size) // size + 1
        self._next = 0

    def next(self) -> bytes:
        start = (self._next % self._slots) * self.size
        self._next += 1
        return self._pool[start:start + self.size]


def run_produce(bootstrap: str, security: ClientSecurity | None, spec: ProduceSpec, *,
                counters: Counters | None = None, stop: threading.Event | None = None,
                stamp: bool = False) -> BenchResult:
    """Send up to spec.count records within spec.seconds; latency = send() to acknowledgement."""
    from tidelog.client.producer import Producer

    counters = counters or Counters()
    stop = stop or threading.Event()
    values = Values(spec.size)
    window = threading.BoundedSemaphore(spec.in_flight)
    latencies = array("d")
    key_names = [f"key-{i}".encode() for i in range(spec.keys)]
    size = spec.size
    last_ack = [0.0]

    def acknowledged(future: RecordFuture, sent_at: float) -> None:
        now = time.perf_counter()
        failed = future.exception(0) is not None
        if failed:
            counters.add(0, 0, 1)
        else:
            latencies.append(now - sent_at)
            counters.add(1, size)
        last_ack[0] = max(last_ack[0], now)
        window.release()

    interrupted = False
    sent = 0
    started = time.perf_counter()
    with Producer(bootstrap, security=security, **spec.producer_options()) as producer:
        try:
            producer.partitions_for(spec.topic)  # metadata before the clock starts
            counters.restart()
            started = time.perf_counter()
            deadline = started + spec.seconds
            while sent < spec.count and not stop.is_set():
                if not window.acquire(timeout=_SEMAPHORE_WAIT_S):
                    if time.perf_counter() >= deadline:
                        break
                    continue
                sent_at = time.perf_counter()
                if sent_at >= deadline:
                    window.release()
                    break
                value = values.next()
                if stamp:
                    value = STAMP.pack(time.monotonic_ns()) + value[STAMP.size:]
                key = key_names[sent % spec.keys] if key_names else None
                future = producer.send(spec.topic, value, key=key)
                future.add_done_callback(functools.partial(acknowledged, sent_at=sent_at))
                sent += 1
        except KeyboardInterrupt:
            interrupted = True
            stop.set()  # an e2e reader stops too: the table shows what was read so far
        interrupted = interrupted or stop.is_set()
        try:
            producer.flush(_FLUSH_AFTER_STOP_S if interrupted else None)
        except KeyboardInterrupt:
            interrupted = True
        except Exception:  # noqa: BLE001, S110 - a flush timeout: the pending count as errors
            pass
    messages, nbytes, _, _ = counters.snapshot()
    errors = sent - messages  # failed, or never acknowledged (a flush that gave up)
    end = last_ack[0] if last_ack[0] else time.perf_counter()
    return BenchResult(workload="produce", messages=messages, errors=errors, bytes=nbytes,
                       elapsed_s=max(1e-9, end - started),
                       latency=Percentiles.of_seconds(LatencyKind.ACK, latencies),
                       interrupted=interrupted)


def run_consume(bootstrap: str, security: ClientSecurity | None, spec: ConsumeSpec, *,
                counters: Counters | None = None, stop: threading.Event | None = None
                ) -> BenchResult:
    """Read the topic from the beginning (no group); latency = one poll() that returned records."""
    from tidelog.client.consumer import Consumer

    counters = counters or Counters()
    stop = stop or threading.Event()
    polls = array("d")
    interrupted = False
    with Consumer(bootstrap, security=security, auto_offset_reset="earliest",
                  max_poll_records=5000) as consumer:
        partitions = consumer.partitions_for(spec.topic)
        consumer.assign(partitions)
        consumer.seek_to_beginning(partitions)
        ends = consumer.end_offsets(partitions)
        counters.restart()
        started = time.perf_counter()
        deadline = started + spec.seconds
        last = started
        try:
            def caught_up() -> bool:
                return all(consumer.position(tp) >= end for tp, end in ends.items())

            while counters.messages < spec.count and not stop.is_set() and not caught_up():
                before = time.perf_counter()
                if before >= deadline:
                    break
                records = consumer.poll(timeout_s=min(0.5, deadline - before),
                                        max_records=spec.count - counters.messages)
                if records:
                    last = time.perf_counter()
                    polls.append(last - before)
                    counters.add(len(records), sum(len(r.value or b"") for r in records))
        except KeyboardInterrupt:
            interrupted = True
    messages, nbytes, errors, _ = counters.snapshot()
    return BenchResult(workload="consume", messages=messages, errors=errors, bytes=nbytes,
                       elapsed_s=max(1e-9, last - started),
                       latency=Percentiles.of_seconds(LatencyKind.POLL, polls),
                       interrupted=interrupted or stop.is_set())


def run_e2e(bootstrap: str, security: ClientSecurity | None, spec: ProduceSpec, *,
            counters: Counters | None = None, stop: threading.Event | None = None,
            on_ready: Callable[[], None] | None = None) -> tuple[BenchResult, BenchResult]:
    """Produce as run_produce does while a consumer in this process reads the same topic from
    its end; latency = send() to read. Returns (produce result, end-to-end result)."""
    from tidelog.client.consumer import Consumer

    if spec.size < STAMP.size:
        raise ValueError(f"e2e needs values of at least {STAMP.size} bytes (the send time)")
    stop = stop or threading.Event()
    produced_all = threading.Event()
    acked: list[int] = [0]
    e2e = array("d")
    read = Counters()
    last_read = [0.0]
    failure: list[BaseException] = []
    consumer = Consumer(bootstrap, security=security, auto_offset_reset="latest",
                        max_poll_records=5000)

    def read_loop() -> None:
        drain_until = float("inf")
        try:
            while not stop.is_set():
                if produced_all.is_set():
                    drain_until = min(drain_until, time.perf_counter() + _E2E_DRAIN_S)
                    if read.messages >= acked[0] or time.perf_counter() >= drain_until:
                        return
                records = consumer.poll(timeout_s=0.2)
                now = time.monotonic_ns()
                for record in records:
                    e2e.append((now - STAMP.unpack_from(record.value or b"\0" * 8)[0]) / 1e9)
                if records:
                    read.add(len(records), sum(len(r.value or b"") for r in records))
                    last_read[0] = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            failure.append(exc)

    try:
        partitions = consumer.partitions_for(spec.topic)
        consumer.assign(partitions)
        consumer.seek_to_end(partitions)
        for tp in partitions:
            consumer.position(tp)  # resolved now: only records sent after this are read
        reader = threading.Thread(target=read_loop, name="bench-e2e-reader", daemon=True)
        reader.start()
        if on_ready is not None:
            on_ready()
        read.restart()
        produced: BenchResult | None = None
        try:
            produced = run_produce(bootstrap, security, spec, counters=counters, stop=stop,
                                   stamp=True)
        finally:
            acked[0] = produced.messages if produced is not None else 0
            produced_all.set()
            reader.join()
    finally:
        consumer.close()
    if failure:
        raise failure[0]
    messages, nbytes, _, _ = read.snapshot()
    missing = max(0, produced.messages - messages)
    end_to_end = BenchResult(workload="e2e", messages=messages, errors=missing, bytes=nbytes,
                             elapsed_s=max(1e-9, (last_read[0] or read.started) - read.started),
                             latency=Percentiles.of_seconds(LatencyKind.END_TO_END, e2e),
                             interrupted=produced.interrupted or stop.is_set())
    return produced, end_to_end
