"""Accumulator: batching by size and linger, flush, and buffer_memory backpressure."""

from __future__ import annotations

import threading
import time

import pytest
from tidelog.client import errors
from tidelog.client.accumulator import RECORD_OVERHEAD_BYTES, RecordAccumulator, record_size
from tidelog.client.records import TopicPartition

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock | None = None, **overrides: object) -> RecordAccumulator:
    options: dict[str, object] = dict(batch_size=1000, linger_ms=5, buffer_memory=10_000,
                                      max_block_ms=50, delivery_timeout_ms=1000)
    options.update(overrides)
    return RecordAccumulator(clock=clock or FakeClock(), **options)  # type: ignore[arg-type]


def value(n: int) -> bytes:
    """A value whose record_size is exactly n."""
    return b"x" * (n - RECORD_OVERHEAD_BYTES)


def test_record_size_counts_key_value_and_headers() -> None:
    assert record_size(None, None, ()) == RECORD_OVERHEAD_BYTES
    assert record_size(b"k", b"vv", [("h", b"123")]) == RECORD_OVERHEAD_BYTES + 3 + 6 + 1 + 3


def test_records_share_a_batch_until_batch_size() -> None:
    clock = FakeClock()
    acc = make(clock)
    for _ in range(4):
        acc.append(TP, None, value(250), (), 1)
    assert acc.waiting_count() == 1
    acc.append(TP, None, value(250), (), 1)  # 1250 > 1000: a new batch
    assert acc.waiting_count() == 2
    ready, _ = acc.ready(clock.now)
    assert ready == [TP]  # the full batch is ready before linger
    batch = acc.drain(TP, clock.now)
    assert batch is not None and batch.record_count == 4
    assert acc.drain(TP, clock.now) is None  # the open one still lingers


def test_a_record_larger_than_batch_size_gets_its_own_batch() -> None:
    acc = make()
    acc.append(TP, None, value(3000), (), 1)
    acc.append(TP, None, value(100), (), 1)
    assert acc.waiting_count() == 2


def test_linger_makes_a_batch_ready() -> None:
    clock = FakeClock()
    acc = make(clock)
    acc.append(TP, None, b"a", (), 1)
    ready, next_s = acc.ready(clock.now)
    assert ready == [] and next_s == pytest.approx(clock.now + 0.005)
    clock.now += 0.005
    ready, _ = acc.ready(clock.now)
    assert ready == [TP]
    batch = acc.drain(TP, clock.now)
    assert batch is not None and batch.records[0][1] == b"a"


def test_flush_makes_every_batch_ready_at_once() -> None:
    clock = FakeClock()
    acc = make(clock)
    acc.append(TP, None, b"a", (), 1)
    acc.append(TP1, None, b"b", (), 1)
    results = acc.begin_flush()
    assert len(results) == 2
    ready, _ = acc.ready(clock.now)
    assert sorted(ready) == [TP, TP1]
    acc.end_flush()
    assert acc.ready(clock.now)[0] == []


def test_new_and_closed_batches_are_reported() -> None:
    new, closed = [], []
    acc = make(on_new_batch=lambda: new.append(1), on_batch_closed=closed.append)
    acc.append(TP, None, value(600), (), 1)
    acc.append(TP, None, value(600), (), 1)
    assert len(new) == 2 and closed == [TP]


def test_memory_is_reserved_until_the_batch_completes() -> None:
    clock = FakeClock()
    acc = make(clock)
    acc.append(TP, None, value(500), (), 1)
    assert acc.used_bytes == 500
    batch = acc.drain(TP, clock.now + 1)
    assert batch is not None and acc.used_bytes == 500  # sent is not done
    batch.result.complete(0, [1])
    acc.release(batch)
    assert acc.used_bytes == 0 and not acc.has_incomplete()


def test_full_buffer_blocks_then_raises_buffer_full_and_queues_nothing() -> None:
    acc = make(buffer_memory=1000, batch_size=1000, max_block_ms=50, clock=time.monotonic)
    acc.append(TP, None, value(900), (), 1)
    started = time.monotonic()
    with pytest.raises(errors.BufferFull, match="max_block_ms"):
        acc.append(TP, None, value(200), (), 1)
    assert time.monotonic() - started >= 0.045
    assert acc.used_bytes == 900
    assert acc.waiting_count() == 1


def test_full_buffer_unblocks_when_memory_is_released() -> None:
    acc = make(buffer_memory=1000, batch_size=1000, max_block_ms=5000, clock=time.monotonic)
    acc.append(TP, None, value(900), (), 1)
    batch = acc.drain(TP, time.monotonic() + 1)
    assert batch is not None

    def release_later() -> None:
        time.sleep(0.05)
        batch.result.complete(0, [1])
        acc.release(batch)

    thread = threading.Thread(target=release_later)
    thread.start()
    acc.append(TP, None, value(200), (), 1)  # blocks ~50 ms, then fits
    thread.join()
    assert acc.used_bytes == 200


def test_record_larger_than_buffer_memory_is_rejected_at_once() -> None:
    acc = make(buffer_memory=1000, batch_size=500)
    with pytest.raises(errors.MessageTooLarge, match="buffer_memory"):
        acc.append(TP, None, value(1500), (), 1)


def test_append_after_close_raises() -> None:
    acc = make()
    acc.close()
    with pytest.raises(errors.ClientClosed):
        acc.append(TP, None, b"a", (), 1)


def test_expire_removes_batches_past_their_delivery_deadline() -> None:
    clock = FakeClock()
    acc = make(clock, delivery_timeout_ms=1000)
    acc.append(TP, None, b"a", (), 1)
    assert acc.expire(clock.now + 0.5) == []
    expired = acc.expire(clock.now + 1.0)
    assert len(expired) == 1 and acc.waiting_count() == 0


def test_record_futures_resolve_with_offsets_and_timestamps() -> None:
    clock = FakeClock()
    acc = make(clock)
    seen = []
    f0 = acc.append(TP, b"k", b"a", (), 11, callback=lambda m, e: seen.append((m, e)))
    f1 = acc.append(TP, b"k", b"b", (), 12)
    batch = acc.drain(TP, clock.now + 1)
    assert batch is not None
    assert not f0.done()
    batch.result.complete(40, [11, 12])
    assert f0.result(0).offset == 40 and f1.result(0).offset == 41
    assert f1.result(0).timestamp == 12 and f1.result(0).partition == 0
    assert seen[0][0].offset == 40 and seen[0][1] is None


def test_failed_batch_raises_its_error_from_every_future() -> None:
    clock = FakeClock()
    acc = make(clock)
    f0 = acc.append(TP, None, b"a", (), 1)
    batch = acc.drain(TP, clock.now + 1)
    assert batch is not None
    batch.result.fail(errors.MessageTooLarge("too big"), [1])
    with pytest.raises(errors.MessageTooLarge):
        f0.result(0)
    assert isinstance(f0.exception(0), errors.MessageTooLarge)
    got = []
    f0.add_done_callback(got.append)
    assert got and got[0].done()


def test_pending_future_result_times_out() -> None:
    acc = make()
    future = acc.append(TP, None, b"a", (), 1)
    with pytest.raises(errors.Timeout):
        future.result(0.01)
