"""QueueConsumer without a cluster: decoding real stored batches, coalescing settlements into
ranges, the settle futures, and many threads acking at once.

The Settle call is the consumer's seam (`_settle_transport`); `HoldTwin` is its twin and applies
the coordinator's fencing rule from queue.proto / docs/queues.md: a Settlement is accepted only
when every offset of its range is held by this consumer at that delivery count, else LOCK_LOST;
ack, nack, reject and release end the hold, extend renews it. The real coordinator answers the
same calls in tests/client/test_queue_cli_cluster.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import pytest
from tidelog.client import LockLostError, QueueConsumer, QueueMessage, errors
from tidelog.client.queue import (
    DELIVER_AT_HEADER,
    Coalesced,
    SettleAction,
    _Item,
    coalesce,
    decode_partition,
    deliver_at_header,
)
from tidelog.proto import batch as codec
from tidelog.proto import queue_pb2

LOCK_LOST = 32
NOW_MS = 1_700_000_000_000
UNREACHABLE = "127.0.0.1:1"  # never dialled: these tests make no Receive call


def stored_batch(base_offset: int, values: Sequence[str], *, key: bytes | None = None,
                 codec_kind: codec.Codec = codec.Codec.LZ4) -> bytes:
    """A batch as the broker stores it: encoded by a producer, stamped by the leader."""
    records = [(key, v.encode(), (("i", v.encode()),), NOW_MS + i) for i, v in enumerate(values)]
    return codec.stamp(codec.encode_batch(records, codec=codec_kind), base_offset=base_offset,
                       term=3)


def control_batch(base_offset: int) -> bytes:
    return codec.encode_control_batch(codec.ControlType.RAFT_NOOP, b"", base_offset=base_offset,
                                      term=3)


def test_receive_keeps_only_the_acquired_records_with_their_delivery_counts() -> None:
    batches = (stored_batch(0, ["a0", "a1", "a2", "a3", "a4"], key=b"k")
               + control_batch(5)
               + stored_batch(6, ["b6", "b7"], codec_kind=codec.Codec.NONE)
               + stored_batch(8, ["c8", "c9", "c10"]))
    ranges = [(8, 9, 1), (1, 2, 1), (7, 7, 4)]  # unsorted on purpose
    messages = decode_partition("q", "t", 2, batches, ranges, NOW_MS + 30_000)
    assert [(m.offset, m.value, m.delivery_count) for m in messages] == [
        (1, b"a1", 1), (2, b"a2", 1), (7, b"b7", 4), (8, b"c8", 1), (9, b"c9", 1)]
    first = messages[0]
    assert (first.queue, first.topic, first.partition, first.key) == ("q", "t", 2, b"k")
    assert first.headers == (("i", b"a1"),) and first.header("i") == b"a1"
    assert first.timestamp_ms == NOW_MS + 1 and first.lock_deadline_ms == NOW_MS + 30_000
    assert decode_partition("q", "t", 2, batches, [], 0) == []
    assert decode_partition("q", "t", 2, batches, [(5, 5, 1)], 0) == [], "control batch skipped"


def test_a_damaged_batch_is_decoded_only_if_it_holds_an_acquired_record() -> None:
    good = stored_batch(0, ["x0", "x1"])
    damaged = bytearray(stored_batch(2, ["y2", "y3"]))
    damaged[-1] ^= 0xFF  # a flipped bit in the records area: the records checksum fails
    batches = good + bytes(damaged)
    assert [m.offset for m in decode_partition("q", "t", 0, batches, [(0, 1, 1)], 0)] == [0, 1]
    with pytest.raises(errors.CorruptBatch, match="t/0"):
        decode_partition("q", "t", 0, batches, [(1, 2, 1)], 0)


def item(offset: int, action: SettleAction = SettleAction.ACK, *, partition: int = 0,
         count: int = 1, delay_ms: int = -1, reason: str = "", extend_ms: int = 0,
         topic: str = "t") -> _Item:
    return _Item(topic, partition, offset, count, action, delay_ms, reason, extend_ms,
                 None)  # type: ignore[arg-type] - coalesce never looks at the future


def spans(ranges: Sequence[Coalesced]) -> set[tuple[str, int, int, int, int, str, int, int]]:
    return {(r.topic, r.partition, r.first, r.last, r.delivery_count, r.action.name, r.delay_ms,
             len(r.items)) for r in ranges}


def test_coalesce_merges_consecutive_offsets_sharing_partition_count_action_and_parameters(
) -> None:
    items = [item(5), item(3), item(4), item(7), item(8),          # 3..5 and 7..8 (gap at 6)
             item(6, count=2),                                      # another delivery count
             item(9, SettleAction.NACK, delay_ms=100), item(10, SettleAction.NACK, delay_ms=100),
             item(11, SettleAction.NACK, delay_ms=200),             # other delay: not merged
             item(12, partition=1), item(13, partition=1),          # other partition
             item(14, topic="u")]
    assert spans(coalesce(items)) == {
        ("t", 0, 3, 5, 1, "ACK", -1, 3), ("t", 0, 7, 8, 1, "ACK", -1, 2),
        ("t", 0, 6, 6, 2, "ACK", -1, 1), ("t", 0, 9, 10, 1, "NACK", 100, 2),
        ("t", 0, 11, 11, 1, "NACK", 200, 1), ("t", 1, 12, 13, 1, "ACK", -1, 2),
        ("u", 0, 14, 14, 1, "ACK", -1, 1)}
    assert sum(len(r.items) for r in coalesce(items)) == len(items)


def test_coalesce_against_a_dumb_oracle_on_random_settlements() -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed} (replay: set seed = {seed} in this test)")
    rng = random.Random(seed)
    for _ in range(200):
        offsets = rng.sample(range(60), rng.randint(1, 40))
        items = [item(o, rng.choice([SettleAction.ACK, SettleAction.NACK]),
                      partition=rng.randint(0, 1), count=rng.randint(1, 2)) for o in offsets]
        ranges = coalesce(items)
        # oracle: every item in exactly one range, ranges consecutive and homogeneous, and no
        # two ranges that could have been one
        covered = sorted((it.partition, it.offset) for r in ranges for it in r.items)
        assert covered == sorted((it.partition, it.offset) for it in items), seed
        for r in ranges:
            assert [it.offset for it in r.items] == list(range(r.first, r.last + 1)), seed
            assert {it.group for it in r.items} == {r.items[0].group}, seed
        ends = {(r.items[0].group, r.last) for r in ranges}
        assert not any((r.items[0].group, r.first - 1) in ends for r in ranges), seed


def make_message(offset: int, *, partition: int = 0, count: int = 1, topic: str = "t",
                 queue: str = "q") -> QueueMessage:
    return QueueMessage(queue=queue, topic=topic, partition=partition, offset=offset, key=None,
                        value=f"v{offset}".encode(), headers=(), timestamp_ms=NOW_MS,
                        delivery_count=count, lock_deadline_ms=NOW_MS + 30_000)


class HoldTwin:
    """The Settle seam's twin (see the module docstring). Thread-safe; records every request."""

    def __init__(self, held: dict[tuple[str, int, int], int], *, delay_s: float = 0.0) -> None:
        self.held = dict(held)
        self.requests: list[list[tuple[str, int, int, int, str]]] = []
        self.applied: list[tuple[str, int, int, str]] = []
        self.delay_s = delay_s
        self.fail_with: errors.TidelogError | None = None
        self.active: set[tuple[str, int, int]] = set()  # offsets of the calls under way
        self.overlaps: list[tuple[str, int, int]] = []  # an offset in two calls at once
        self.concurrency_max = 0
        self._calls = 0
        self._lock = threading.Lock()

    def __call__(self, ranges: Sequence[Coalesced], timeout_s: float
                 ) -> dict[int, tuple[int, str, int]]:
        mine = {(r.topic, r.partition, o) for r in ranges for o in range(r.first, r.last + 1)}
        with self._lock:
            self.overlaps += sorted(mine & self.active)
            self.active |= mine
            self._calls += 1
            self.concurrency_max = max(self.concurrency_max, self._calls)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return self._answer(ranges)
        finally:
            with self._lock:
                self.active -= mine
                self._calls -= 1

    def _answer(self, ranges: Sequence[Coalesced]) -> dict[int, tuple[int, str, int]]:
        with self._lock:
            if self.fail_with is not None:
                raise self.fail_with
            self.requests.append([(r.topic, r.partition, r.first, r.last, r.action.name)
                                  for r in ranges])
            results: dict[int, tuple[int, str, int]] = {}
            for index, r in enumerate(ranges):
                offsets = range(r.first, r.last + 1)
                if any(self.held.get((r.topic, r.partition, o)) != r.delivery_count
                       for o in offsets):
                    results[index] = (LOCK_LOST, "not held", 0)
                    continue
                for o in offsets:
                    self.applied.append((r.topic, r.partition, o, r.action.name))
                    if r.action is not SettleAction.EXTEND:
                        del self.held[(r.topic, r.partition, o)]
                if r.action is SettleAction.EXTEND:
                    results[index] = (0, "", NOW_MS + r.extend_ms)
            return results


def consumer_with(twin: HoldTwin, *, linger_ms: float = 1.0) -> QueueConsumer:
    return QueueConsumer(UNREACHABLE, queue="q", ack_linger_ms=linger_ms,
                         _settle_transport=twin)


def test_settlements_made_within_the_linger_travel_as_ranges_in_one_request() -> None:
    twin = HoldTwin({("t", 0, o): 1 for o in range(100)})
    with consumer_with(twin, linger_ms=200) as consumer:
        futures = [consumer.ack(make_message(o)) for o in range(50)]
        futures += [consumer.nack(make_message(o), delay_s=1) for o in range(50, 60)]
        futures += [consumer.reject(make_message(o), "bad") for o in (60, 61)]
        futures += [consumer.release(make_message(o)) for o in (70, 72)]
        consumer.flush(10)
        assert all(f.done() and f.result(0) is None for f in futures)
        assert twin.requests == [[("t", 0, 0, 49, "ACK"), ("t", 0, 50, 59, "NACK"),
                                  ("t", 0, 60, 61, "REJECT"), ("t", 0, 70, 70, "RELEASE"),
                                  ("t", 0, 72, 72, "RELEASE")]]
        assert consumer.metrics()["settle_requests_sent"] == 1
        assert consumer.metrics()["settle_ranges_sent"] == 5
        assert consumer.metrics()["settlements_sent"] == 64


def test_a_refused_range_is_asked_again_per_offset_so_each_future_has_its_own_outcome() -> None:
    held = {("t", 0, o): 1 for o in range(10)}
    held[("t", 0, 4)] = 2  # redelivered elsewhere: our delivery 1 of offset 4 lost its lock
    twin = HoldTwin(held)
    with consumer_with(twin, linger_ms=100) as consumer:
        futures = [consumer.ack(make_message(o)) for o in range(10)]
        consumer.flush(10)
        for offset, future in enumerate(futures):
            if offset == 4:
                with pytest.raises(LockLostError, match="t/0@4"):
                    future.result(0)
                assert isinstance(future.exception(0), LockLostError)
            else:
                assert future.result(0) is None, offset
        assert twin.requests[0] == [("t", 0, 0, 9, "ACK")]
        assert sorted(twin.requests[1]) == sorted(("t", 0, o, o, "ACK") for o in range(10))
        assert sorted(o for _, _, o, _ in twin.applied) == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_extend_gives_the_new_deadline_and_a_later_ack_of_that_offset_goes_after_it() -> None:
    twin = HoldTwin({("t", 0, 1): 3})
    with consumer_with(twin, linger_ms=100) as consumer:
        message = make_message(1, count=3)
        extended = consumer.extend(message, 45)
        acked = consumer.ack(message)
        consumer.flush(10)
        assert extended.result(0) == NOW_MS + 45_000
        assert acked.result(0) is None
        # one request never carries the same offset twice: the ack waited for the extend
        assert twin.requests == [[("t", 0, 1, 1, "EXTEND")], [("t", 0, 1, 1, "ACK")]]
        again = consumer.ack(message)
        with pytest.raises(LockLostError):
            again.result(10)


def test_a_failed_request_fails_every_future_in_it_and_callbacks_run() -> None:
    twin = HoldTwin({("t", 0, o): 1 for o in range(3)})
    twin.fail_with = errors.QueueNotFound("queue 'q': no such queue")
    seen: list[BaseException | None] = []
    with consumer_with(twin) as consumer:
        futures = [consumer.ack(make_message(o)) for o in range(3)]
        futures[0].add_done_callback(lambda f: seen.append(f.exception(0)))
        consumer.flush(10)
        for future in futures:
            with pytest.raises(errors.QueueNotFound):
                future.result(0)
        futures[1].add_done_callback(lambda f: seen.append(f.exception(0)))  # already done
        assert len(seen) == 2 and all(isinstance(e, errors.QueueNotFound) for e in seen)
    with pytest.raises(errors.ClientClosed):
        consumer.ack(make_message(0))


def test_settling_a_message_of_another_queue_is_refused() -> None:
    with consumer_with(HoldTwin({})) as consumer, pytest.raises(errors.ConfigError):
        consumer.ack(make_message(0, queue="other"))


def test_result_times_out_while_the_reply_is_pending() -> None:
    twin = HoldTwin({("t", 0, 0): 1}, delay_s=1.0)
    with consumer_with(twin) as consumer:
        future = consumer.ack(make_message(0))
        with pytest.raises(errors.Timeout):
            future.result(0.05)
        with pytest.raises(errors.Timeout):
            consumer.flush(0.05)
        assert future.result(10) is None


def test_many_threads_acking_at_once_settle_each_message_exactly_once() -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed} (replay: set seed = {seed} in this test)")
    rng = random.Random(seed)
    threads_n, per_thread = 8, 400
    total = threads_n * per_thread
    offsets = list(range(total))
    rng.shuffle(offsets)
    twin = HoldTwin({("t", p, o): 1 for p in (0, 1) for o in range(total)}, delay_s=0.002)
    outcomes: list[list[object]] = [[] for _ in range(threads_n)]
    with consumer_with(twin, linger_ms=1.0) as consumer:
        start = threading.Barrier(threads_n)

        def work(index: int) -> None:
            mine = offsets[index::threads_n]
            start.wait()
            futures = [consumer.ack(make_message(o, partition=o * 2 // total)) for o in mine]
            outcomes[index] = [f.result(30) for f in futures]

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        consumer.flush(30)
        metrics = consumer.metrics()
    assert all(len(o) == per_thread and all(r is None for r in o) for o in outcomes), seed
    acked = sorted((p, o) for _, p, o, _ in twin.applied)
    assert acked == sorted((o * 2 // total, o) for o in range(total)), f"seed {seed}: not once each"
    assert metrics["settlements_sent"] == total, seed
    # batching happened: far fewer requests and ranges than acks
    assert metrics["settle_requests_sent"] < total / 10, (seed, metrics)
    assert metrics["settle_ranges_sent"] < total, (seed, metrics)
    assert twin.overlaps == [], seed


def test_close_releases_the_messages_received_and_not_settled() -> None:
    twin = HoldTwin({("t", 0, o): 2 for o in range(4)})
    consumer = consumer_with(twin)
    response = queue_pb2.ReceiveResponse(partitions=[queue_pb2.ReceivedPartition(
        topic="t", partition=0, batches=stored_batch(0, ["a", "b", "c", "d"]),
        acquired=[queue_pb2.AcquiredRange(first_offset=0, last_offset=3, delivery_count=2)],
        lock_deadline_ms=NOW_MS)])
    messages = consumer._messages(response)  # the decode path of receive()
    assert [(m.offset, m.value, m.delivery_count) for m in messages] == [
        (0, b"a", 2), (1, b"b", 2), (2, b"c", 2), (3, b"d", 2)]
    consumer.ack(messages[0]).result(10)
    consumer.extend(messages[1], 10).result(10)  # an extend keeps it held
    assert consumer.metrics()["held"] == 3
    consumer.close()
    assert sorted(twin.applied) == [("t", 0, 0, "ACK"), ("t", 0, 1, "EXTEND"),
                                    ("t", 0, 1, "RELEASE"), ("t", 0, 2, "RELEASE"),
                                    ("t", 0, 3, "RELEASE")]
    consumer.close()  # idempotent


def test_deliver_at_header() -> None:
    assert deliver_at_header(at_ms=NOW_MS) == (DELIVER_AT_HEADER, str(NOW_MS).encode())
    assert deliver_at_header(2.5, now_ms=NOW_MS) == ("tidelog-deliver-at-ms",
                                                     str(NOW_MS + 2500).encode())
    before = time.time_ns() // 1_000_000
    name, value = deliver_at_header(10)
    assert before + 10_000 <= int(value) <= time.time_ns() // 1_000_000 + 10_000
    for bad in ({}, {"delay_s": 1, "at_ms": 1}, {"delay_s": -1}):
        with pytest.raises(errors.ConfigError):
            deliver_at_header(**bad)  # type: ignore[arg-type]


def test_argument_checks() -> None:
    with consumer_with(HoldTwin({})) as consumer:
        with pytest.raises(errors.ConfigError):
            consumer.receive(max_messages=0)
        with pytest.raises(errors.ConfigError):
            consumer.extend(make_message(0), 0)
        with pytest.raises(errors.ConfigError):
            consumer.nack(make_message(0), delay_s=-1)
        with pytest.raises(errors.ConfigError):
            consumer.reject(make_message(0), "x" * 1001)
    with pytest.raises(errors.ConfigError):
        QueueConsumer(UNREACHABLE, queue="")


class CoreTwin:
    """The Settle seam answered by the real sans-I/O QueueCore (node/queues/core.py), as the
    coordinator does, minus the Raft write: our settlements meet the real fencing rule."""

    def __init__(self, core: object, consumer_id: str, clock: list[int]) -> None:
        self.core = core
        self.consumer_id = consumer_id
        self.clock = clock
        self.requests: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, ranges: Sequence[Coalesced], timeout_s: float
                 ) -> dict[int, tuple[int, str, int]]:
        from tidelog.node.groups.assignors import TopicPartition
        from tidelog.node.queues.model import Settle, SettleKind

        items = [Settle(tp=TopicPartition(r.topic, r.partition), first=r.first, last=r.last,
                        delivery_count=r.delivery_count, kind=SettleKind(int(r.action)),
                        delay_ms=r.delay_ms, reason=r.reason, extend_ms=r.extend_ms)
                 for r in ranges]
        with self._lock:
            self.requests.append(len(items))
            outcomes, _ = self.core.settle(self.consumer_id, items, self.clock[0])
        return {o.index: ((LOCK_LOST if o.lock_lost else 19) if not o.ok else 0, o.message,
                          o.lock_deadline_ms) for o in outcomes
                if not o.ok or items[o.index].kind is SettleKind.EXTEND}


def test_against_the_real_core_only_the_redelivered_message_loses_its_lock() -> None:
    from tidelog.node.groups.assignors import TopicPartition
    from tidelog.node.queues.config import QueueConfig
    from tidelog.node.queues.core import QueueCore
    from tidelog.node.queues.model import OfferedRecord

    tp = TopicPartition("t", 0)
    core = QueueCore(QueueConfig(name="q", topics=("t",), lock_ms=1_000), {tp: 0})
    clock = [NOW_MS]
    core.offer(tp, [OfferedRecord(offset=o, timestamp_ms=NOW_MS, key=None) for o in range(6)],
               6, clock[0])
    (mine,), _ = core.acquire("me", 6, clock[0])
    assert mine.ranges == ((0, 5, 1),)
    twin = CoreTwin(core, "me", clock)
    with QueueConsumer(UNREACHABLE, queue="q", consumer_id="me", ack_linger_ms=50,
                       _settle_transport=twin) as consumer:
        messages = [make_message(o) for o in range(6)]
        assert consumer.extend(messages[3], 10).result(10) == NOW_MS + 10_000
        clock[0] += 122_000  # every lock expired, and the redelivery backoff passed
        core.tick(clock[0])
        theirs, _ = core.acquire("other", 2, clock[0])
        assert [r[:2] for a in theirs for r in a.ranges] == [(0, 1)]
        futures = [consumer.ack(m) for m in messages]
        consumer.flush(10)
        outcomes = ["lost" if isinstance(f.exception(0), LockLostError) else f.exception(0)
                    for f in futures]
        # 0 and 1 are the other's now; 2..5 expired but were not redelivered: still ours
        assert outcomes == ["lost", "lost", None, None, None, None]
    assert twin.requests[1:] == [1, 6], "one range 0..5 refused, then one request per offset"


def test_a_damaged_partition_of_a_receive_is_released_and_the_rest_delivered() -> None:
    twin = HoldTwin({("t", 0, o): 1 for o in range(2)} | {("t", 1, o): 1 for o in range(2)})
    damaged = bytearray(stored_batch(0, ["d0", "d1"]))
    damaged[-1] ^= 0x01
    acquired = [queue_pb2.AcquiredRange(first_offset=0, last_offset=1, delivery_count=1)]
    response = queue_pb2.ReceiveResponse(partitions=[
        queue_pb2.ReceivedPartition(topic="t", partition=0, batches=bytes(damaged),
                                    acquired=acquired, lock_deadline_ms=NOW_MS),
        queue_pb2.ReceivedPartition(topic="t", partition=1, batches=stored_batch(0, ["g0", "g1"]),
                                    acquired=acquired, lock_deadline_ms=NOW_MS)])
    with consumer_with(twin) as consumer:
        messages = consumer._messages(response)
        assert [(m.partition, m.value) for m in messages] == [(1, b"g0"), (1, b"g1")]
        consumer.flush(10)
        assert sorted(twin.applied) == [("t", 0, 0, "RELEASE"), ("t", 0, 1, "RELEASE")]
        assert consumer.metrics()["held"] == 2


def overlapping_settlements() -> tuple[HoldTwin, dict[int, list[str]]]:
    """With 4 requests in flight, each answered after 200 ms: two acks 20 ms apart go in two
    overlapping requests; an ack made while its message's extend is in flight must wait."""
    twin = HoldTwin({("t", 0, o): 1 for o in (0, 1, 10, 11)}, delay_s=0.2)
    order: dict[int, list[str]] = {0: ["extend", "ack"], 1: ["ack"], 10: ["ack"], 11: ["ack"]}
    with QueueConsumer(UNREACHABLE, queue="q", ack_linger_ms=0, settle_in_flight_max=4,
                       _settle_transport=twin) as consumer:
        consumer.ack(make_message(10))
        time.sleep(0.02)
        consumer.ack(make_message(11))
        consumer.extend(make_message(0), 5)
        time.sleep(0.02)
        consumer.ack(make_message(0))
        consumer.ack(make_message(1))
        consumer.flush(30)
    return twin, order


def test_requests_overlap_but_never_share_an_offset_and_keep_each_messages_order() -> None:
    twin, order = overlapping_settlements()
    assert twin.overlaps == [], "an offset in two requests at once"
    assert twin.concurrency_max > 1, "requests never overlapped"
    applied: dict[int, list[str]] = {o: [] for o in order}
    for _, _, offset, action in twin.applied:
        applied[offset].append(action.lower())
    assert applied == order


def test_planted_bug_an_offset_sent_while_in_flight_is_caught(monkeypatch) -> None:  # noqa: ANN001
    """Planted bug: the sender ignores the offsets in flight. The overlap check must see it."""
    from tidelog.client.queue import SETTLEMENTS_PER_REQUEST_MAX, _SettleSender

    def take_ignoring_busy(self: _SettleSender) -> list[_Item]:
        taken: list[_Item] = []
        seen: set[tuple[str, int, int]] = set()
        while self._pending and len(taken) < SETTLEMENTS_PER_REQUEST_MAX:
            where = (self._pending[0].topic, self._pending[0].partition,
                     self._pending[0].offset)
            if where in seen:
                break
            seen.add(where)
            taken.append(self._pending.popleft())
        return taken

    monkeypatch.setattr(_SettleSender, "_take", take_ignoring_busy)
    monkeypatch.setattr(_SettleSender, "_ready", lambda self: bool(self._pending) and len(
        self._in_flight) < self._in_flight_max)
    twin, _ = overlapping_settlements()
    assert twin.overlaps == [("t", 0, 0)], "the planted bug went unnoticed"


@pytest.mark.parametrize("action", ["create", "list", "describe", "delete", "alter", "send",
                                    "receive", "peek", "purge", "redrive", "stats"])
def test_every_cli_action_has_help_with_json_output_and_exit_codes(action: str, capsys) -> None:  # noqa: ANN001
    from tidelog.client.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["queue", action, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--output {table,json}" in text and "exit codes" in text, text
