"""The `__queue_state` record format and QueueReplay: snapshot + delta ring, compaction, gaps."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from tidelog.node.queues import state_log as sl
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.deltas import Delta
from tidelog.node.queues.model import Settle, SettleKind

from .core_builders import T0, make, offer, tp


def _writes(core: QueueCore, rng: random.Random, count: int) -> Iterator[list[Delta]]:
    """`count` non-empty writes of a live core (acquire / ack / nack of its records), each
    yielded as soon as the core made it (so the caller can snapshot in between)."""
    made = 0
    now = T0
    while made < count:
        now += rng.randint(1, 50)
        if rng.random() < 0.3:
            start = core.read_offset(tp())
            deltas = offer(core, tp(), range(start, start + rng.randint(1, 5)), now=now)
            deltas = deltas or []
        else:
            got, deltas = core.acquire("c", rng.randint(1, 3), now)
            items = [Settle(tp=a.tp, first=f, last=f, delivery_count=c,
                            kind=rng.choice([SettleKind.ACK, SettleKind.NACK]), delay_ms=0)
                     for a in got for first, last, c in a.ranges
                     for f in range(first, last + 1)]
            more = core.settle("c", items, now)[1] if items else []
            deltas = deltas + more
            for job in core.dead_letter_jobs():        # the 10th nack: dead-letter it
                deltas += core.dead_lettered(job.tp, [job.offset], now)
        if deltas:
            made += 1
            yield deltas


class _Log:
    """A compacted topic's worth of records: the full log, or only the latest per key."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def write(self, key: bytes, value: bytes | None) -> None:
        self.records.append((key, value))

    def compacted(self) -> list[tuple[bytes, bytes | None]]:
        latest: dict[bytes, int] = {}
        for i, (key, _) in enumerate(self.records):
            latest[key] = i
        return [self.records[i] for i in sorted(latest.values())]




def test_keys_name_the_queue_and_the_ring_slot() -> None:
    assert sl.snapshot_key("orders") == b"Q\x00orders\x00S"
    assert sl.delta_key("orders", 65) == b"Q\x00orders\x00D1"
    assert sl.decode_key(sl.delta_key("a.b", 130)) == sl.StateKey(queue="a.b", slot=2)
    assert sl.decode_key(sl.snapshot_key("a")) == sl.StateKey(queue="a", slot=None)
    for junk in (b"", b"Q\x00", b"Q\x00x\x00D64", b"Q\x00x\x00D01", b"G\x00x\x00S",
                 b"Q\x00x\x00Z", b"Q\x00\x00S"):
        assert sl.decode_key(junk) is None, junk
    keys = sl.tombstone_keys("q")
    assert len(keys) == 65 and len(set(keys)) == 65


def test_replay_of_a_compacted_log_rebuilds_the_live_core() -> None:
    """Snapshots every <= 32 writes keep every newer delta in the 64-slot ring, so replay of
    the compacted log (latest record per key) gives the live state."""
    rng = random.Random(7)
    live = make(max_in_flight=50)
    log = _Log()
    log.write(sl.snapshot_key("q"), sl.encode_snapshot(0, live.snapshot()))
    seq = 0
    since = 0
    for deltas in _writes(live, rng, 300):
        seq += 1
        log.write(sl.delta_key("q", seq), sl.encode_deltas(seq, deltas))
        since += 1
        if since >= rng.randint(1, sl.SNAPSHOT_EVERY):
            log.write(sl.snapshot_key("q"), sl.encode_snapshot(seq, live.snapshot()))
            since = 0
    for records in (log.records, log.compacted()):
        replay = sl.QueueReplay()
        for key, value in records:
            replay.feed(key, value)
        [(name, (core, last))] = replay.result().items()
        assert name == "q" and last == seq
        assert core.snapshot() == live.snapshot()


def test_a_missing_delta_record_is_an_error_that_names_the_queue() -> None:
    core = make()
    replay = sl.QueueReplay()
    replay.feed(sl.snapshot_key("orders"), sl.encode_snapshot(4, core.snapshot()))
    replay.feed(sl.delta_key("orders", 5), sl.encode_deltas(5, []))
    replay.feed(sl.delta_key("orders", 7), sl.encode_deltas(7, []))
    with pytest.raises(sl.QueueReplayError, match="'orders'.*6 is missing"):
        replay.result()


def test_deltas_at_or_below_the_snapshot_are_ignored() -> None:
    core = make()
    offer(core, tp(), range(3))
    got, deltas = core.acquire("c", 3, T0)
    replay = sl.QueueReplay()
    replay.feed(sl.delta_key("q", 3), sl.encode_deltas(3, deltas))   # older than the snapshot
    replay.feed(sl.snapshot_key("q"), sl.encode_snapshot(3, core.snapshot()))
    replay.feed(sl.delta_key("q", 2), sl.encode_deltas(2, deltas))
    [(core2, seq)] = replay.result().values()
    assert seq == 3 and core2.snapshot() == core.snapshot()


def test_tombstones_delete_the_queue_and_a_later_create_starts_clean() -> None:
    core = make()
    replay = sl.QueueReplay()
    replay.feed(sl.snapshot_key("q"), sl.encode_snapshot(0, core.snapshot()))
    replay.feed(sl.delta_key("q", 1), sl.encode_deltas(1, []))
    for key in sl.tombstone_keys("q"):
        replay.feed(key, None)
    assert replay.result() == {}
    replay.feed(sl.snapshot_key("q"), sl.encode_snapshot(0, core.snapshot()))
    assert list(replay.result()) == ["q"]


def test_unknown_keys_are_skipped_and_damaged_values_name_the_queue() -> None:
    replay = sl.QueueReplay()
    replay.feed(b'{"g": "group", "k": "group"}', b"{}")
    assert replay.result() == {}
    with pytest.raises(sl.QueueReplayError, match="'bad'"):
        replay.feed(sl.snapshot_key("bad"), b"not json")
    with pytest.raises(sl.QueueReplayError, match="'bad'.*slot"):
        replay.feed(sl.delta_key("bad", 3), sl.encode_deltas(4, []))
    replay = sl.QueueReplay()
    replay.feed(sl.snapshot_key("bad"), json.dumps({"seq": 0, "snapshot": {"v": 9}}).encode())
    with pytest.raises(sl.QueueReplayError, match="'bad'.*snapshot 0"):
        replay.result()
    replay = sl.QueueReplay()
    replay.feed(sl.snapshot_key("bad"), sl.encode_snapshot(0, make().snapshot()))
    replay.feed(sl.delta_key("bad", 1), json.dumps({"seq": 1, "deltas": [{"k": "?"}]}).encode())
    with pytest.raises(sl.QueueReplayError, match="'bad'.*delta record 1"):
        replay.result()


def test_deltas_without_a_snapshot_are_an_error() -> None:
    replay = sl.QueueReplay()
    replay.feed(sl.delta_key("lost", 1), sl.encode_deltas(1, []))
    with pytest.raises(sl.QueueReplayError, match="'lost'.*no snapshot"):
        replay.result()


def test_encoded_values_are_deterministic_bytes() -> None:
    core = make()
    offer(core, tp(), range(3))
    assert sl.encode_snapshot(1, core.snapshot()) == sl.encode_snapshot(1, core.snapshot())
    _, deltas = core.acquire("c", 2, T0)
    seq, back = sl.decode_deltas(sl.encode_deltas(9, deltas))
    assert seq == 9 and back == deltas


def test_a_delta_that_cannot_apply_is_an_error_that_names_the_queue() -> None:
    from tidelog.node.queues import deltas as dl

    replay = sl.QueueReplay()
    replay.feed(sl.snapshot_key("q"), sl.encode_snapshot(0, make().snapshot()))
    stray = dl.Ack(tp=tp(7), ranges=((0, 0),))           # a partition the queue does not have
    replay.feed(sl.delta_key("q", 1), sl.encode_deltas(1, [stray]))
    with pytest.raises(sl.QueueReplayError, match="'q'.*delta record 1"):
        replay.result()
