"""Adaptive linger (client/accumulator.py): a partition with no request in flight sends its open
batch at once; linger_ms only holds records behind a request in flight.

Sans-I/O: the accumulator, DeliveryState and the sender's shared step `batches_to_send` (the
one both the thread and the asyncio sender run), on a fake clock that never moves unless told,
so "sent at once" is a send at the clock reading of the append, not a wall-clock bound.
"""

from __future__ import annotations

from tidelog.client.accumulator import RecordAccumulator
from tidelog.client.delivery import DeliveryState
from tidelog.client.records import TopicPartition
from tidelog.client.sender import batches_to_send
from tidelog.proto import batch as codec

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)
LINGER_MS = 10_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[FakeClock, RecordAccumulator, DeliveryState]:
    clock = FakeClock()
    acc = RecordAccumulator(batch_size=1 << 20, linger_ms=LINGER_MS, buffer_memory=1 << 24,
                            max_block_ms=50, delivery_timeout_ms=120_000, clock=clock)
    ds = DeliveryState(idempotent=True, max_in_flight=5, retries=10, retry_backoff_ms=100,
                       retry_backoff_ms_max=1000)
    ds.set_producer_id(7, 0)
    return clock, acc, ds


def send_ready(clock: FakeClock, acc: RecordAccumulator, ds: DeliveryState) -> list[int]:
    """One sender round at the clock's reading: the record counts of the batches sent."""
    ready, _ = acc.ready(clock.now, ds.has_inflight)
    sent = []
    for tp in ready:
        for batch, _retry in batches_to_send(ds, acc, tp, clock.now, codec.Codec.NONE,
                                             1 << 22, lambda failures: None):
            ds.sent(batch)
            sent.append(batch.record_count)
    return sent


def test_a_lone_record_on_a_quiet_partition_is_sent_without_waiting_linger() -> None:
    clock, acc, ds = make()
    acc.append(TP, None, b"v", (), 1)
    assert send_ready(clock, acc, ds) == [1]  # same clock reading as the append: no linger


def test_records_sent_behind_an_in_flight_request_wait_for_its_answer() -> None:
    clock, acc, ds = make()
    acc.append(TP, None, b"first", (), 1)
    assert send_ready(clock, acc, ds) == [1]
    first = ds.partitions[TP].inflight[0]
    for _ in range(50):
        acc.append(TP, None, b"v", (), 1)
    clock.now += 0.001
    assert send_ready(clock, acc, ds) == []  # lingering behind the in-flight request
    ready, next_s = acc.ready(clock.now, ds.has_inflight)
    assert ready == [] and next_s is not None and next_s > clock.now
    ds.succeeded(first)  # the answer: the partition is quiet again
    assert send_ready(clock, acc, ds) == [50]  # the 50 leave together, before linger_ms


def test_linger_ms_bounds_the_wait_behind_a_request_that_is_not_answered() -> None:
    clock, acc, ds = make()
    acc.append(TP, None, b"first", (), 1)
    assert send_ready(clock, acc, ds) == [1]
    first = ds.partitions[TP].inflight[0]
    ds.succeeded(first)  # the broker now knows the sequence: more than one may be in flight
    acc.append(TP, None, b"second", (), 1)
    assert send_ready(clock, acc, ds) == [1]
    acc.append(TP, None, b"third", (), 1)
    clock.now += LINGER_MS / 1000 - 0.001
    assert send_ready(clock, acc, ds) == []
    clock.now += 0.002
    assert send_ready(clock, acc, ds) == [1]  # linger_ms passed: a second request in flight
    assert len(ds.partitions[TP].inflight) == 2


def test_linger_is_per_partition() -> None:
    clock, acc, ds = make()
    acc.append(TP, None, b"a", (), 1)
    assert send_ready(clock, acc, ds) == [1]
    acc.append(TP, None, b"b", (), 1)  # behind TP's request: waits
    acc.append(TP1, None, b"c", (), 1)  # TP1 is quiet: goes at once
    assert send_ready(clock, acc, ds) == [1]
    assert len(ds.partitions[TP1].inflight) == 1 and len(ds.partitions[TP].inflight) == 1
