"""Client-side metrics: what ``Producer.metrics()``, ``Consumer.metrics()`` and
``QueueConsumer.metrics()`` return, like kafka-python's ``metrics()``.

Why a plain dict and no Prometheus here: the client is a library inside someone else's process,
which has its own metrics system (Prometheus, StatsD, OpenTelemetry, logs). A snapshot of numbers
with stable names is what every one of them can take; docs/client.md ("Metrics") shows how to
export it. The node's metrics are Prometheus (docs/metrics.md); the client's are not.

Cost: one lock acquire and a few integer additions per request, batch or poll, never per record
(a queue consumer's settlements are counted where the settle thread already loops over them).
Latency percentiles come from a bounded window of the newest `LATENCY_SAMPLES_MAX` requests,
sorted only when a snapshot is taken.

Key conventions (stable; docs/client.md lists each): counters end in the thing counted
(``records_sent``, ``fetch_requests``) and only grow; ``*_bytes`` are bytes; latencies are
``<name>_ms_count`` (all requests since start), ``_avg`` (mean since start), ``_p50``, ``_p99``
and ``_max`` (over the recent window; 0.0 before the first request). ``errors`` maps an error
kind (the client exception's class name, e.g. ``NotLeader``) to a count.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["LATENCY_SAMPLES_MAX", "ErrorCounts", "LatencyWindow", "ConsumerCounters",
           "ProducerCounters", "QueueCounters"]

#: requests whose latency the percentiles are computed over (the newest ones)
LATENCY_SAMPLES_MAX = 1024


class LatencyWindow:
    """Count, mean and max since start; p50/p99/max over the newest `samples_max` observations.

    Thread-safe: observed from gRPC callback threads, read by whoever asks for a snapshot."""

    __slots__ = ("_lock", "_samples", "_sum_s", "count")

    def __init__(self, samples_max: int = LATENCY_SAMPLES_MAX) -> None:
        assert samples_max >= 1
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=samples_max)
        self._sum_s = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self._sum_s += seconds
            self.count += 1

    def snapshot(self, prefix: str) -> dict[str, float]:
        """``{prefix}_ms_count``, ``_avg``, ``_p50``, ``_p99``, ``_max``, in milliseconds."""
        with self._lock:
            samples = sorted(self._samples)
            count, total_s = self.count, self._sum_s
        if not samples:
            return {f"{prefix}_ms_count": 0, f"{prefix}_ms_avg": 0.0, f"{prefix}_ms_p50": 0.0,
                    f"{prefix}_ms_p99": 0.0, f"{prefix}_ms_max": 0.0}
        return {
            f"{prefix}_ms_count": count,
            f"{prefix}_ms_avg": total_s / count * 1000,
            f"{prefix}_ms_p50": _quantile(samples, 0.50) * 1000,
            f"{prefix}_ms_p99": _quantile(samples, 0.99) * 1000,
            f"{prefix}_ms_max": samples[-1] * 1000,
        }


class ErrorCounts:
    """Failures by kind (the exception's class name: a bounded set, one per error code)."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, error: BaseException, count: int = 1) -> None:
        kind = type(error).__name__
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class ProducerCounters:
    """The producer's delivery counters. Written by the sender thread (one call per request or
    batch outcome), read by `snapshot` from any thread; one small lock keeps a snapshot coherent
    (records_in_flight never counts a batch twice or not at all)."""

    __slots__ = ("_lock", "batch_bytes_max", "batch_records_max", "batches_failed",
                 "batches_sent", "bytes_sent", "errors", "latency", "records_failed",
                 "records_in_flight", "records_sent", "requests_in_flight")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records_sent = 0
        self.batches_sent = 0
        self.bytes_sent = 0
        self.batch_records_max = 0
        self.batch_bytes_max = 0
        self.records_failed = 0
        self.batches_failed = 0
        self.records_in_flight = 0
        self.requests_in_flight = 0
        self.errors = ErrorCounts()
        self.latency = LatencyWindow()

    def request_sent(self, records: int) -> None:
        with self._lock:
            self.records_in_flight += records
            self.requests_in_flight += 1

    def request_answered(self, records: int, error: BaseException | None) -> None:
        """A Produce request finished (reply, RPC error or cancel); `error` when it failed."""
        with self._lock:
            self.records_in_flight -= records
            self.requests_in_flight -= 1
        if error is not None:
            self.errors.add(error)

    def acknowledged(self, records: int, size_bytes: int) -> None:
        """A batch was written: each batch counts once, however many attempts it took."""
        with self._lock:
            self.records_sent += records
            self.batches_sent += 1
            self.bytes_sent += size_bytes
            self.batch_records_max = max(self.batch_records_max, records)
            self.batch_bytes_max = max(self.batch_bytes_max, size_bytes)

    def given_up(self, records: int) -> None:
        """A batch failed for good (its futures raise)."""
        with self._lock:
            self.records_failed += records
            self.batches_failed += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            batches = self.batches_sent
            out: dict[str, object] = {
                "records_sent": self.records_sent, "batches_sent": batches,
                "bytes_sent": self.bytes_sent,
                "batch_records_avg": self.records_sent / batches if batches else 0.0,
                "batch_records_max": self.batch_records_max,
                "batch_bytes_avg": self.bytes_sent / batches if batches else 0.0,
                "batch_bytes_max": self.batch_bytes_max,
                "records_failed": self.records_failed, "batches_failed": self.batches_failed,
                "records_in_flight": self.records_in_flight,
                "requests_in_flight": self.requests_in_flight,
            }
        out["errors"] = self.errors.snapshot()
        out.update(self.latency.snapshot("request_latency"))
        return out


class ConsumerCounters:
    """The consumer's fetch and commit counters: one call per Fetch request, per fetched
    partition result, per poll() that returns records, per commit."""

    __slots__ = ("_lock", "bytes_fetched", "commit_failures", "commits", "commit_latency",
                 "fetch_errors", "fetch_latency", "fetch_requests", "records_consumed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fetch_requests = 0
        self.bytes_fetched = 0
        self.records_consumed = 0
        self.commits = 0
        self.commit_failures = 0
        self.fetch_errors = ErrorCounts()
        self.fetch_latency = LatencyWindow()
        self.commit_latency = LatencyWindow()

    def fetch_sent(self) -> None:
        with self._lock:
            self.fetch_requests += 1

    def fetched(self, size_bytes: int) -> None:
        with self._lock:
            self.bytes_fetched += size_bytes

    def consumed(self, records: int) -> None:
        with self._lock:
            self.records_consumed += records

    def committed(self, seconds: float, error: BaseException | None) -> None:
        with self._lock:
            if error is None:
                self.commits += 1
            else:
                self.commit_failures += 1
        self.commit_latency.observe(seconds)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            out: dict[str, object] = {
                "fetch_requests": self.fetch_requests, "bytes_fetched": self.bytes_fetched,
                "records_consumed": self.records_consumed, "commits": self.commits,
                "commit_failures": self.commit_failures,
            }
        out["fetch_errors"] = self.fetch_errors.snapshot()
        out.update(self.fetch_latency.snapshot("fetch_latency"))
        out.update(self.commit_latency.snapshot("commit_latency"))
        return out


class QueueCounters:
    """The queue consumer's counters: one call per Receive, per Settle request, and per batch
    of settlements completed (the settle thread already loops over those items)."""

    __slots__ = ("_lock", "receive_latency", "receive_requests", "received", "settle_failures",
                 "settle_latency", "settled")

    #: SettleAction value -> the key of its counter (client/queue.py SettleAction)
    ACTION_KEYS = ("acked", "nacked", "rejected", "released", "extended")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.receive_requests = 0
        self.received = 0
        self.settled = [0] * len(self.ACTION_KEYS)
        self.settle_failures = ErrorCounts()
        self.receive_latency = LatencyWindow()
        self.settle_latency = LatencyWindow()

    def receive_answered(self, messages: int, seconds: float) -> None:
        with self._lock:
            self.receive_requests += 1
            self.received += messages
        self.receive_latency.observe(seconds)

    def settlements_done(self, ok_by_action: list[int], failures: list[BaseException]) -> None:
        """Settlements answered: successes per SettleAction value, and the errors of the
        others (LockLostError: the lock had expired; or what stopped the request)."""
        with self._lock:
            for action, count in enumerate(ok_by_action):
                self.settled[action] += count
        for error in failures:
            self.settle_failures.add(error)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            out: dict[str, object] = {"receive_requests": self.receive_requests,
                                      "received": self.received}
            out.update(zip(self.ACTION_KEYS, self.settled, strict=True))
        out["settle_failures"] = self.settle_failures.snapshot()
        out.update(self.receive_latency.snapshot("receive_latency"))
        out.update(self.settle_latency.snapshot("settle_latency"))
        return out


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of a sorted, non-empty list (no interpolation: a real sample)."""
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]
