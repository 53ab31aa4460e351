"""Randomized checks of QueueCore: replay equivalence, and a model of the delivery invariants.

Every test prints its seed; replay one with TIDELOG_QUEUE_SEED=<seed> and the test's name, e.g.
``TIDELOG_QUEUE_SEED=123 pytest tests/queues/test_queue_core_random.py -k replay``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues import deltas as dl
from tidelog.node.queues.config import QueueConfig
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.model import Acquired, OfferedRecord, Settle, SettleKind

from .core_builders import T0

RUNS = 30
KEYS = (None, b"a", b"b", b"c", b"d", b"e")
MESSAGE_IDS = (None,) * 20 + (b"m1", b"m2", b"m3")


def _seeds(count: int) -> list[int]:
    fixed = os.environ.get("TIDELOG_QUEUE_SEED")
    if fixed:
        return [int(fixed)]
    base = random.SystemRandom().randrange(1 << 30)
    return [base + i for i in range(count)]


@dataclass
class World:
    """A static log per partition and the op generator; the same seed gives the same run."""

    rng: random.Random
    key_ordered: bool
    message_ids: bool = False     # dedup ids are volatile: the replay test leaves them out
    config: QueueConfig = field(init=False)
    log: dict[TopicPartition, list[OfferedRecord]] = field(default_factory=dict)
    hw: int = 600
    now: int = T0
    held: dict[tuple[TopicPartition, int], tuple[str, int]] = field(default_factory=dict)
    resend: object = None         # a settle sent again (its reply "lost"), now and then

    def __post_init__(self) -> None:
        rng = self.rng
        self.config = QueueConfig(
            name="q", topics=("t",), key_ordered=self.key_ordered,
            max_deliveries=rng.randint(1, 4), lock_ms=rng.choice([50, 500, 2000]),
            backoff_initial_ms=rng.choice([0, 100, 1000]), backoff_max_ms=5000,
            ttl_ms=rng.choice([0, 0, 5000, 30_000]), delay_ms=rng.choice([0, 0, 30]),
            max_in_flight=rng.randint(3, 40))
        for p in range(2):
            tp = TopicPartition("t", p)
            self.log[tp] = [
                OfferedRecord(o, T0 + o * 60 - rng.randint(0, 50), rng.choice(KEYS),
                              T0 + rng.randint(0, 400) if rng.random() < 0.1 else 0,
                              rng.choice(MESSAGE_IDS) if self.message_ids else None)
                for o in range(self.hw) if rng.random() < 0.85]

    def records(self, tp: TopicPartition, start: int, end: int) -> list[OfferedRecord]:
        return [r for r in self.log[tp] if start <= r.offset < end]

    def step(self, core: QueueCore) -> tuple[str, object]:
        """Pick one op against `core`'s state; returns (name, args) for `run`."""
        rng = self.rng
        self.now += rng.choice([0, 1, 5, 20, 100, 400])
        r = rng.random()
        if r < 0.25:
            wanted = core.reads_wanted()
            if wanted:
                tp = rng.choice(sorted(wanted, key=lambda t: t.partition))
                end = min(self.hw, wanted[tp] + rng.randint(1, 12))
                return "offer", (tp, end)
            return "tick", None
        if r < 0.5:
            return "acquire", (rng.choice("xyz"), rng.randint(1, 8))
        if r < 0.55 and self.resend is not None and rng.random() < 0.3:
            return "settle", self.resend
        if r < 0.85 and self.held:
            items = []
            keys = sorted(self.held, key=lambda k: (k[0].partition, k[1]))
            for _ in range(rng.randint(1, 4)):
                tp, off = rng.choice(keys)
                consumer, count = self.held[(tp, off)]
                if rng.random() < 0.1:
                    count += rng.choice([-1, 1])
                if rng.random() < 0.05:
                    consumer = "w"
                kind = rng.choice([SettleKind.ACK] * 4 + list(SettleKind))
                items.append((consumer, Settle(
                    tp=tp, first=off, last=off, delivery_count=max(count, 1), kind=kind,
                    delay_ms=rng.choice([-1, 0, 50, 3000]), reason="r",
                    extend_ms=rng.choice([10, 300]))))
            consumer = items[0][0]
            return "settle", (consumer, [s for c, s in items if c == consumer])
        if r < 0.85:
            return "tick", None
        if r < 0.9:
            jobs = core.dead_letter_jobs()
            if jobs:
                picked = [j for j in jobs if rng.random() < 0.7]
                by_tp: dict[TopicPartition, list[int]] = {}
                for j in picked:
                    by_tp.setdefault(j.tp, []).append(j.offset)
                return "dead_lettered", by_tp
            return "tick", None
        if r < 0.905:
            tp = TopicPartition("t", rng.randint(0, 1))
            return "log_start", (tp, min(self.hw, core.start_offset(tp) + rng.randint(0, 3)))
        if r < 0.906:
            return "purge", None
        if r < 0.916:
            return "config", {"backoff_initial_ms": str(rng.choice([0, 100, 1000])),
                              "max_deliveries": str(rng.randint(1, 4)),
                              "key_ordered": rng.choice(["true", "false"]),
                              "ttl_ms": str(rng.choice([0, 5000])),
                              "delay_ms": str(rng.choice([0, 0, 300]))}
        if r < 0.92:
            return "redrive", (rng.randint(0, 1), rng.randint(0, 50))
        return "tick", None

    def run(self, core: QueueCore, op: tuple[str, object]) -> tuple[object, list[dl.Delta]]:
        """Apply one op to `core`; returns (what a client would see, the deltas)."""
        name, args = op
        now = self.now
        match name:
            case "offer":
                tp, end = args  # type: ignore[misc]
                start = core.read_offset(tp)
                return None, core.offer(tp, self.records(tp, start, end), end, now)
            case "acquire":
                consumer, n = args  # type: ignore[misc]
                got, deltas = core.acquire(consumer, n, now)
                return got, deltas
            case "settle":
                consumer, items = args  # type: ignore[misc]
                return core.settle(consumer, items, now)
            case "dead_lettered":
                deltas = []
                for tp, offs in sorted(args.items(), key=lambda kv: kv[0].partition):  # type: ignore[union-attr]
                    deltas += core.dead_lettered(tp, offs, now)
                return None, deltas
            case "log_start":
                tp, offset = args  # type: ignore[misc]
                return None, core.log_start_moved(tp, offset)
            case "purge":
                return core.purge(now, {tp: min(self.hw, core.read_offset(tp) + 5)
                                        for tp in core.partitions})
            case "config":
                return None, core.set_config(core.config.with_changes(args))  # type: ignore[arg-type]
            case "redrive":
                p, offset = args  # type: ignore[misc]
                return None, core.set_redrive_cursor(p, offset, 1)
            case "tick":
                return None, core.tick(now)
        raise AssertionError(name)

    def observe(self, op: tuple[str, object], seen: object) -> None:
        """Track which records the consumers hold (to make plausible settlements)."""
        if op[0] == "acquire":
            consumer = op[1][0]  # type: ignore[index]
            for a in seen:  # type: ignore[attr-defined]
                for first, last, count in a.ranges:
                    for off in range(first, last + 1):
                        self.held[(a.tp, off)] = (consumer, count)
        elif op[0] == "settle":
            self.resend = op[1] if self.rng.random() < 0.3 else self.resend
            _, items = op[1]  # type: ignore[misc]
            outcomes = seen[0]  # type: ignore[index]
            for s, o in zip(items, outcomes, strict=True):
                if (o.ok and s.kind is not SettleKind.EXTEND) or o.lock_lost:
                    self.held.pop((s.tp, s.first), None)


def _reoffer(world: World, live: QueueCore, replayed: QueueCore) -> None:
    for tp in live.partitions:
        end = live.read_offset(tp)
        start = replayed.start_offset(tp)
        replayed.offer(tp, world.records(tp, start, end), end, world.now)


@pytest.mark.parametrize("key_ordered", [False, True])
def test_replay_of_snapshot_and_deltas_gives_the_same_state_and_answers(
        key_ordered: bool) -> None:
    for seed in _seeds(RUNS):
        print(f"seed {seed} key_ordered={key_ordered}: replay with TIDELOG_QUEUE_SEED={seed}")
        failure = replay_failure(seed, key_ordered)
        assert failure is None, failure


def replay_failure(seed: int, key_ordered: bool,
                   core_cls: type[QueueCore] = QueueCore) -> str | None:
    """Drive a live core at random, restore a snapshot taken at a random point, apply the later
    deltas, re-offer the records from start: the replayed core must have the live core's
    state and give the same answers to the same future ops. None, or what differed."""
    rng = random.Random(seed)
    world = World(rng, key_ordered)
    live = core_cls(world.config, {tp: 0 for tp in world.log})
    snapshots: list[tuple[int, dict]] = [(0, live.snapshot())]
    history: list[list[dl.Delta]] = []
    for i in range(rng.randint(50, 400)):
        op = world.step(live)
        seen, deltas = world.run(live, op)
        world.observe(op, (seen, deltas) if op[0] == "settle" else seen)
        history.append([dl.decode_delta(dl.encode_delta(d)) for d in deltas])  # wire form
        if rng.random() < 0.1:
            snapshots.append((i + 1, live.snapshot()))
    at, snap = rng.choice(snapshots)
    replayed = core_cls.restore(snap)
    for deltas in history[at:]:
        for d in deltas:
            replayed.apply(d)
    _reoffer(world, live, replayed)
    # due timers fire on both sides (the live core may not have ticked since its last op)
    live.tick(world.now)
    replayed.tick(world.now)
    if replayed.snapshot() != live.snapshot():
        return f"seed {seed}: state after replay (snapshot after op {at})"
    world.rng = random.Random(seed ^ 0x5EED)     # the same future for both
    for _ in range(150):
        op = world.step(live)
        a_seen, _ = world.run(live, op)
        b_seen, _ = world.run(replayed, op)
        if a_seen != b_seen:
            return f"seed {seed}: {op[0]} answered differently"
        if replayed.snapshot() != live.snapshot():
            return f"seed {seed}: state after {op[0]}"
        if op[0] == "acquire":
            world.observe(op, a_seen)
    return None


class _ForgetsTtlWhenUnlocked(QueueCore):
    """Planted: nack/release do not re-arm the TTL timer (a bug the replay test found)."""

    def _ttl_timers(self, p, ranges):  # type: ignore[no-untyped-def]
        return None


def test_the_replay_check_catches_a_planted_bug() -> None:
    """The replay check is not vacuous: it finds the TTL bug it once found, re-planted."""
    caught = next((f for seed in range(400)
                   if (f := replay_failure(seed, False, _ForgetsTtlWhenUnlocked))), None)
    assert caught is not None, "a lost TTL timer went unnoticed in 400 runs"
    print(f"planted bug caught: {caught}")


@dataclass
class Model:
    """The claims, checked against every answer of the core (a separate checker object)."""

    config: QueueConfig
    keys: dict[tuple[TopicPartition, int], bytes | None]
    locks: dict[tuple[TopicPartition, int], tuple[str, int, int]] = field(default_factory=dict)
    done: set[tuple[TopicPartition, int]] = field(default_factory=set)
    # (consumer, delivery count, kind) of every settlement applied to a record
    settled_by: dict[tuple[TopicPartition, int], set[tuple[str, int, SettleKind]]] = field(
        default_factory=dict)
    deliveries: dict[tuple[TopicPartition, int], int] = field(default_factory=dict)
    floor: dict[TopicPartition, int] = field(default_factory=dict)
    by_key: dict[tuple[TopicPartition, bytes | None], list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for (tp, off), key in sorted(self.keys.items(), key=lambda kv: kv[0][1]):
            self.by_key.setdefault((tp, key), []).append(off)

    def is_done(self, tp: TopicPartition, off: int) -> bool:
        return (tp, off) in self.done or off < self.floor.get(tp, 0)

    def acquired(self, consumer: str, got: list[Acquired], now: int, seed: int) -> None:
        for a in got:
            assert a.lock_deadline_ms == now + self.config.lock_ms
            for first, last, count in a.ranges:
                for off in range(first, last + 1):
                    k = (a.tp, off)
                    assert not self.is_done(a.tp, off), f"seed {seed}: done {k} delivered"
                    old = self.locks.get(k)
                    assert old is None or old[2] <= now, f"seed {seed}: {k} in flight twice"
                    self.deliveries[k] = self.deliveries.get(k, 0) + 1
                    assert count == self.deliveries[k], (
                        f"seed {seed}: {k} delivery_count {count}, model {self.deliveries[k]}")
                    assert count <= self.config.max_deliveries, f"seed {seed}: {k} count {count}"
                    self.locks[k] = (consumer, count, a.lock_deadline_ms)
                    key = self.keys[k]
                    if not self.config.key_ordered or key is None:
                        continue
                    tp2 = a.tp
                    for off2 in self.by_key[(a.tp, key)]:
                        if off2 == off:
                            continue
                        if off2 < off:
                            assert self.is_done(tp2, off2), (
                                f"seed {seed}: key {key!r} {off} before {off2} was done")
                        lock = self.locks.get((tp2, off2))
                        assert lock is None or lock[2] <= now or self.is_done(tp2, off2), (
                            f"seed {seed}: key {key!r} in flight at {off2} and {off}")

    def settled(self, consumer: str, items: list[Settle], outcomes: list, now: int,
                seed: int) -> None:
        for s, o in zip(items, outcomes, strict=True):
            k = (s.tp, s.first)
            lock = self.locks.get(k)
            holds = (lock is not None and lock[0] == consumer and lock[1] == s.delivery_count
                     and not self.is_done(s.tp, s.first))
            # A settlement sent again by its consumer for its delivery (a lost reply), after
            # it was applied, is OK and changes nothing; held records are settled again.
            again = not holds and \
                (consumer, s.delivery_count, s.kind) in self.settled_by.get(k, ())
            assert o.ok == (holds or again), f"seed {seed}: settle {s} -> {o} (model lock {lock})"
            if not o.ok or again:
                continue
            self.settled_by.setdefault(k, set()).add((consumer, s.delivery_count, s.kind))
            if s.kind is SettleKind.EXTEND:
                self.locks[k] = (consumer, s.delivery_count, now + s.extend_ms)
            elif s.kind is SettleKind.ACK:
                self.done.add(k)
                del self.locks[k]
            elif s.kind is SettleKind.RELEASE:
                self.deliveries[k] -= 1          # the attempt does not count
                del self.locks[k]
            else:
                del self.locks[k]


@pytest.mark.parametrize("key_ordered", [False, True])
def test_model_no_double_delivery_key_order_and_fenced_settlements(key_ordered: bool) -> None:
    delivered_runs = 0
    for seed in _seeds(RUNS):
        print(f"seed {seed} key_ordered={key_ordered}: replay with TIDELOG_QUEUE_SEED={seed}")
        delivered_runs += run_model(seed, key_ordered)
    assert delivered_runs, "no run delivered anything: the generator is broken"


def run_model(seed: int, key_ordered: bool, core_cls: type[QueueCore] = QueueCore) -> bool:
    """Random ops against a core, every answer checked by `Model` (AssertionError names the
    seed), then a drain: every record must end up acked, dead-lettered or discarded.
    Returns whether anything was delivered before the drain."""
    rng = random.Random(seed)
    world = World(rng, key_ordered, message_ids=True)
    core = core_cls(world.config, {tp: 0 for tp in world.log})
    keys = {(tp, r.offset): r.key for tp, recs in world.log.items() for r in recs}
    model = Model(world.config, keys)
    for _ in range(rng.randint(100, 500)):
        op = world.step(core)
        if op[0] in ("config", "purge"):
            continue           # the model keeps the config fixed and every record
        seen, deltas = world.run(core, op)
        if op[0] == "acquire":
            model.acquired(op[1][0], seen, world.now, seed)  # type: ignore[index,arg-type]
            world.observe(op, seen)
        elif op[0] == "settle":
            consumer, items = op[1]  # type: ignore[misc]
            model.settled(consumer, items, seen, world.now, seed)
            world.observe(op, (seen, deltas))
        elif op[0] == "dead_lettered":
            for tp, offs in op[1].items():  # type: ignore[union-attr]
                model.done.update((tp, o) for o in offs)
        elif op[0] == "log_start":
            tp, offset = op[1]  # type: ignore[misc]
            model.floor[tp] = max(model.floor.get(tp, 0), offset)
        for d in deltas:
            if isinstance(d, dl.Discard):          # a duplicate: done, never delivered
                model.done.update((d.tp, o) for f, last in d.ranges
                                  for o in range(f, last + 1))
            if isinstance(d, dl.DeadPending):
                for first, last in d.ranges:
                    for off in range(first, last + 1):
                        model.locks.pop((d.tp, off), None)
    delivered = bool(model.deliveries)
    _drain(world, core, model, seed)
    lost = [k for k in keys if not model.is_done(*k)]
    assert lost == [], f"seed {seed}: never acked nor dead-lettered: {lost[:5]}"
    return delivered


class _IgnoresKeyHeads(QueueCore):
    """Planted: key-ordered mode hands out any available record of a key."""

    def _classify(self, p, off, now_ms):  # type: ignore[no-untyped-def]
        keys, p.keys = p.keys, None
        try:
            return super()._classify(p, off, now_ms)
        finally:
            p.keys = keys


class _ForgetsTheHolder(QueueCore):
    """Planted: settlements are not fenced by consumer."""

    def _holds(self, p, consumer_id, s):  # type: ignore[no-untyped-def]
        e = p.entries.get(s.first)
        return super()._holds(p, e.holder if e is not None and hasattr(e, "holder")
                              else consumer_id, s)


@pytest.mark.parametrize("planted,key_ordered", [(_IgnoresKeyHeads, True),
                                                 (_ForgetsTheHolder, False)],
                         ids=["key-heads", "holder"])
def test_the_model_catches_planted_bugs(planted: type[QueueCore], key_ordered: bool) -> None:
    for seed in range(50):
        try:
            run_model(seed, key_ordered, planted)
        except AssertionError as exc:
            print(f"{planted.__name__} caught: {exc}")
            return
    raise AssertionError(f"{planted.__name__} went unnoticed in 50 runs")


def _drain(world: World, core: QueueCore, model: Model, seed: int) -> None:
    """Consumers that ack everything, for long enough: every record must end up done."""
    for _ in range(400):
        world.now += 500
        for tp, offset in core.reads_wanted().items():
            for d in core.offer(tp, world.records(tp, offset, world.hw), world.hw, world.now):
                if isinstance(d, dl.Discard):
                    model.done.update((d.tp, o) for f, last in d.ranges
                                      for o in range(f, last + 1))
        core.tick(world.now)
        got, _ = core.acquire("drain", 1000, world.now)
        model.acquired("drain", got, world.now, seed)
        items = [Settle(tp=a.tp, first=f, last=f, delivery_count=c, kind=SettleKind.ACK)
                 for a in got for first, last, c in a.ranges for f in range(first, last + 1)]
        outcomes, _ = core.settle("drain", items, world.now)
        model.settled("drain", items, outcomes, world.now, seed)
        for job in core.dead_letter_jobs():
            core.dead_lettered(job.tp, [job.offset], world.now)
            model.done.add((job.tp, job.offset))
        if all(core.start_offset(tp) >= world.hw for tp in core.partitions):
            return
