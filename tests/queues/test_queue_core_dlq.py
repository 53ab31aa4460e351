"""The exactly-once dead-letter protocol in the core (node/queues/dlq_ledger.py), sans-I/O.

Deterministic DLQ batches: a batch is committed (records, DLQ partition, base sequence) before it
is written, and written as exactly that batch with the queue's one producer id/epoch, so every
copy of it is the same batch to the DLQ partition's idempotent-producer check (the real
node/producer_state.ProducerStateTable here, the DLQ leader's own code). The randomized test
drives coordinators that take over from each other while zombies send their copies at any later
time and the DLQ leader rebuilds its producer state from its log; every dead letter must be in the
DLQ exactly once. Seeds are printed; replay one with TIDELOG_QUEUE_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest
from tidelog.node.errors import OutOfOrderSequenceError, ProducerFencedError
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.producer_state import RECENT_BATCHES_MAX, Duplicate, ProducerStateTable
from tidelog.node.queues import deltas as dl
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.dlq_ledger import PENDING_BATCHES_MAX
from tidelog.node.queues.model import DlqBatchJob, SettleKind
from tidelog.proto.batch import BatchHeader, decode_header, encode_batch

from .core_builders import T0, make, offer, settle, tp

DLQ = "q.dlq"


def _dead(core: QueueCore, offsets: range, now: int = T0) -> None:
    """Offer, deliver and reject `offsets` of t/0 (DEAD_PENDING)."""
    offer(core, tp(), offsets, now=now)
    got, _ = core.acquire("c", len(offsets), now)
    for a in got:
        for first, last, count in a.ranges:
            assert settle(core, "c", a.tp, first, last, count, SettleKind.REJECT, now,
                          reason="bad").ok


def _replayed(core: QueueCore, snapshot: dict, deltas: list[dl.Delta]) -> QueueCore:
    other = QueueCore.restore(snapshot)
    for d in deltas:
        other.apply(dl.decode_delta(dl.encode_delta(d)))
    assert other.snapshot() == core.snapshot()
    return other


def test_the_pending_bound_is_the_producer_states_window() -> None:
    """The invariant of dlq_ledger.py: every pending batch already appended is within the DLQ
    partition's last RECENT_BATCHES_MAX batches of the producer."""
    assert PENDING_BATCHES_MAX == RECENT_BATCHES_MAX


def test_a_batch_takes_the_next_sequence_and_its_records_leave_the_jobs() -> None:
    core = make()
    _dead(core, range(5))
    assert core.set_dlq_producer(7, 0) == [dl.SetDlqProducer(producer_id=7, epoch=0)]
    assert core.set_dlq_producer(7, 0) == []          # once per queue
    first = core.plan_dlq_batch(DLQ, 0, [(tp(), 1), (tp(), 0)])
    assert first == [dl.DlqBatch(dlq_topic=DLQ, dlq_partition=0, base_sequence=0,
                                 records=((tp(), 0), (tp(), 1)))]
    core.plan_dlq_batch(DLQ, 0, [(tp(), 2), (tp(), 3), (tp(), 4)])
    assert core.dead_letter_jobs() == []
    assert core.has_dead_letter_work()
    a, b = core.dlq_batches()
    assert (a.base_sequence, len(a.jobs), b.base_sequence, len(b.jobs)) == (0, 2, 2, 3)
    assert [j.reason for j in a.jobs] == ["bad", "bad"] and a.jobs[0].attempts == 1
    deltas = core.dlq_batch_done(a, written=True)
    assert deltas[0] == dl.DlqBatchDone(dlq_topic=DLQ, dlq_partition=0, base_sequence=0,
                                        written=True)
    assert dl.Advance(tp=tp(), start=2) in deltas
    assert core.counters["dead_lettered"] == 2
    assert core.dlq_batches() == [b]
    core.dlq_batch_done(b, written=True)
    assert core.start_offset(tp()) == 5 and not core.has_dead_letter_work()
    assert core.snapshot()["dlq"]["next"] == [[DLQ, 0, 5]]


def test_at_most_five_batches_are_pending_per_dlq_partition() -> None:
    core = make()
    _dead(core, range(7))
    core.set_dlq_producer(1, 0)
    for off in range(PENDING_BATCHES_MAX):
        core.plan_dlq_batch(DLQ, 0, [(tp(), off)])
    with pytest.raises(AssertionError):
        core.plan_dlq_batch(DLQ, 0, [(tp(), 5)])
    core.plan_dlq_batch(DLQ, 1, [(tp(), 5)])           # another partition has room
    assert core.dlq_pending_count(DLQ, 0) == PENDING_BATCHES_MAX


def test_a_batch_is_planned_only_after_the_producer_and_of_dead_records() -> None:
    core = make()
    _dead(core, range(1))
    with pytest.raises(AssertionError):
        core.plan_dlq_batch(DLQ, 0, [(tp(), 0)])
    core.set_dlq_producer(1, 0)
    offer(core, tp(), [1])
    with pytest.raises(AssertionError):             # offset 1 is fresh, not dead
        core.plan_dlq_batch(DLQ, 0, [(tp(), 1)])


def test_a_purged_record_of_a_pending_batch_is_still_written_with_its_context() -> None:
    """The batch is committed: its sequence must be written (a later batch would be out of
    order otherwise), with the record's context as it was; done marks nothing then."""
    core = make()
    _dead(core, range(2))
    core.set_dlq_producer(1, 0)
    core.plan_dlq_batch(DLQ, 0, [(tp(), 0), (tp(), 1)])
    core.purge(T0 + 1)
    (batch,) = core.dlq_batches()
    assert [(j.offset, j.reason) for j in batch.jobs] == [(0, "bad"), (1, "bad")]
    snap = core.snapshot()
    assert QueueCore.restore(snap).dlq_batches() == [batch]
    core.dlq_batch_done(batch, written=True)
    assert core.counters["dead_lettered"] == 0 and not core.has_dead_letter_work()


def test_an_abandoned_batch_gives_its_records_and_sequence_back() -> None:
    core = make()
    _dead(core, range(3))
    core.set_dlq_producer(1, 0)
    core.plan_dlq_batch("old.dlq", 0, [(tp(), 0)])
    core.plan_dlq_batch("old.dlq", 0, [(tp(), 1), (tp(), 2)])
    first, second = core.dlq_batches()
    with pytest.raises(AssertionError):             # abandoned from the last one
        core.dlq_batch_done(first, written=False)
    core.dlq_batch_done(second, written=False)
    core.dlq_batch_done(first, written=False)
    assert [j.offset for j in core.dead_letter_jobs()] == [0, 1, 2]
    assert core.snapshot()["dlq"]["next"] == [["old.dlq", 0, 0]]


def test_replay_rebuilds_the_ledger_and_a_version_1_snapshot_still_restores() -> None:
    core = make()
    _dead(core, range(4))
    base = core.snapshot()
    deltas = core.set_dlq_producer(3, 2)
    deltas += core.plan_dlq_batch(DLQ, 1, [(tp(), 0), (tp(), 2)])
    deltas += core.plan_dlq_batch(DLQ, 1, [(tp(), 3)])
    deltas += core.dlq_batch_done(core.dlq_batches()[0], written=True)
    replayed = _replayed(core, base, deltas)
    assert replayed.dlq_producer == (3, 2)
    assert replayed.dlq_batches() == core.dlq_batches()
    assert [j.offset for j in replayed.dead_letter_jobs()] == [1]
    old = dict(base)
    old.pop("dlq")
    old.pop("acked")
    old.pop("settled")
    old["v"] = 1                                   # written before the DLQ ledger existed
    restored = QueueCore.restore(old)
    assert restored.dlq_producer is None and restored.dlq_batches() == []
    assert len(restored.dead_letter_jobs()) == 4


@pytest.mark.parametrize("raw", [
    {"k": "dlqbatch", "t": DLQ, "p": 0, "seq": 0, "recs": []},
    {"k": "dlqbatch", "t": DLQ, "p": 0, "seq": 0, "recs": [["t", 1, [[0, 0]]],
                                                           ["t", 0, [[1, 1]]]]},
    {"k": "dlqbatch", "t": "", "p": 0, "seq": 0, "recs": [["t", 0, [[0, 0]]]]},
    {"k": "dlqdone", "t": DLQ, "p": 0, "seq": 0, "w": 1},
    {"k": "dlqpid", "id": -1, "e": 0},
])
def test_dlq_deltas_decode_strictly(raw: dict) -> None:
    with pytest.raises(ValueError):
        dl.decode_delta(raw)


def test_dlq_deltas_round_trip() -> None:
    records = ((tp(0), 1), (tp(0), 2), (tp(0), 5), (tp(1, "u"), 0))
    for d in (dl.SetDlqProducer(producer_id=4, epoch=1),
              dl.DlqBatch(dlq_topic=DLQ, dlq_partition=2, base_sequence=9, records=records),
              dl.DlqBatchDone(dlq_topic=DLQ, dlq_partition=2, base_sequence=9, written=False)):
        assert dl.decode_delta(dl.encode_delta(d)) == d


# ------------------------------------------- the DLQ partition's rules the protocol relies on


def _header(pid: int, epoch: int, seq: int, count: int, base_offset: int = 0) -> BatchHeader:
    data = encode_batch([(None, b"v", (), T0)] * count, producer_id=pid, producer_epoch=epoch,
                        base_sequence=seq, base_offset=base_offset)
    return decode_header(data)


def test_a_copy_of_a_recent_batch_is_a_duplicate_and_an_older_one_is_refused() -> None:
    """What a late copy meets at the DLQ leader (node/producer_state.py): one of the last 5
    batches -> Duplicate (not appended); older -> OUT_OF_ORDER_SEQUENCE (refused, never
    appended); an earlier epoch -> fenced. The same after a rebuild from the log's headers
    (what a restarted or newly elected DLQ leader does)."""
    table = ProducerStateTable()
    headers = [_header(5, 0, seq, 1, base_offset=seq) for seq in range(7)]
    for h in headers:
        assert table.check(h) is None
        table.record(h, h.base_offset)
    for rebuilt in (False, True):
        if rebuilt:
            table.clear()
            for h in headers:
                table.record(h, h.base_offset)
        for seq in range(2, 7):
            assert isinstance(table.check(_header(5, 0, seq, 1)), Duplicate)
        for seq in (0, 1):
            with pytest.raises(OutOfOrderSequenceError):
                table.check(_header(5, 0, seq, 1))
        with pytest.raises(OutOfOrderSequenceError):   # a gap is refused too
            table.check(_header(5, 0, 9, 1))
        with pytest.raises(ProducerFencedError):
            table.check(_header(5, 0, 7, 1), latest_epoch=1)


# --------------------------------------------------- randomized: zombies, takeovers, restarts

RUNS = 40


def _seeds(count: int) -> list[int]:
    fixed = os.environ.get("TIDELOG_QUEUE_SEED")
    if fixed:
        return [int(fixed)]
    base = random.SystemRandom().randrange(1 << 30)
    return [base + i for i in range(count)]


@dataclass
class DlqPartition:
    """One DLQ partition: its log of (header, source offsets) and the leader's real producer
    state table, rebuilt from the log's headers on a restart."""

    log: list[tuple[BatchHeader, tuple[int, ...]]] = field(default_factory=list)
    table: ProducerStateTable = field(default_factory=ProducerStateTable)
    end: int = 0

    def produce(self, data: bytes, sources: tuple[int, ...]) -> bool:
        """True: acknowledged (appended now, or a duplicate); False: refused."""
        header = decode_header(data)
        try:
            if self.table.check(header) is not None:
                return True
        except (OutOfOrderSequenceError, ProducerFencedError):
            return False
        self.log.append((header, sources))
        self.table.record(header, self.end)
        self.end += header.last_offset_delta + 1
        return True

    def restart(self) -> None:
        self.table.clear()
        offset = 0
        for header, _ in self.log:
            self.table.record(header, offset)
            offset += header.last_offset_delta + 1


def _copy(batch: DlqBatchJob, producer: tuple[int, int], idempotent: bool) -> bytes:
    pid, epoch = producer if idempotent else (-1, -1)
    return encode_batch([(None, b"dead", (), T0)] * len(batch.jobs), producer_id=pid,
                        producer_epoch=epoch, base_sequence=batch.base_sequence if idempotent
                        else -1)


def protocol_failure(seed: int, idempotent: bool = True) -> str | None:
    """Coordinators replay the committed deltas, plan batches, send copies (some delayed
    in the 'network' and delivered later, in any order: zombies), take each other over, and the
    DLQ leader restarts now and then. In the end every dead letter must be in the DLQ once."""
    rng = random.Random(seed)
    core = make(max_deliveries=1)
    base = core.snapshot()
    committed: list[dl.Delta] = []
    dlq = DlqPartition()
    network: list[tuple[bytes, tuple[int, ...]]] = []
    next_offset = 0
    for _ in range(rng.randint(20, 60)):
        r = rng.random()
        if r < 0.25:
            n = rng.randint(1, 4)
            before = len(committed)
            offer(core, tp(), range(next_offset, next_offset + n))
            got, deltas = core.acquire("c", n, T0)
            committed += deltas
            for a in got:
                for first, last, count in a.ranges:
                    _, more = core.settle("c", [_reject(a.tp, first, last, count)], T0)
                    committed += more
            next_offset += n
            assert len(committed) > before
        elif r < 0.45:
            if core.dlq_producer is None:
                committed += core.set_dlq_producer(11, 3)
            jobs = core.dead_letter_jobs()
            room = PENDING_BATCHES_MAX - core.dlq_pending_count(DLQ, 0)
            while jobs and room > 0:
                k = rng.randint(1, len(jobs))
                committed += core.plan_dlq_batch(DLQ, 0, [(j.tp, j.offset) for j in jobs[:k]])
                jobs, room = jobs[k:], room - 1
        elif r < 0.7 and core.dlq_batches():
            batch = core.dlq_batches()[0]
            assert core.dlq_producer is not None
            data = _copy(batch, core.dlq_producer, idempotent)
            sources = tuple(j.offset for j in batch.jobs)
            if rng.random() < 0.4:
                network.append((data, sources))        # in flight: lands later, or never
                continue
            if dlq.produce(data, sources) and rng.random() < 0.7:
                committed += core.dlq_batch_done(batch, written=True)
            # else: the reply was lost; the batch stays pending
        elif r < 0.8:
            core = _replayed_from(base, committed, next_offset)  # a takeover; the old: a zombie
        elif r < 0.85:
            dlq.restart()
        elif network:
            data, sources = network.pop(rng.randrange(len(network)))
            dlq.produce(data, sources)
    for data, sources in rng.sample(network, len(network)):   # the zombies' late copies
        dlq.produce(data, sources)
    core = _replayed_from(base, committed, next_offset)
    while core.has_dead_letter_work():
        if not core.dlq_batches():
            if core.dlq_producer is None:
                committed += core.set_dlq_producer(11, 3)
            committed += core.plan_dlq_batch(DLQ, 0, [(j.tp, j.offset)
                                                      for j in core.dead_letter_jobs()[:500]])
        batch = core.dlq_batches()[0]
        assert core.dlq_producer is not None
        if not dlq.produce(_copy(batch, core.dlq_producer, idempotent),
                           tuple(j.offset for j in batch.jobs)):
            return f"the current coordinator's batch {batch.base_sequence} was refused"
        committed += core.dlq_batch_done(batch, written=True)
    landed = [off for _, sources in dlq.log for off in sources]
    if sorted(landed) != sorted(set(landed)):
        twice = sorted({o for o in landed if landed.count(o) > 1})
        return f"dead letters in the DLQ more than once: {twice}"
    if sorted(landed) != list(range(next_offset)):
        return f"dead letters missing from the DLQ: {sorted(set(range(next_offset)) - set(landed))}"
    return None


def _reject(part: TopicPartition, first: int, last: int, count: int):  # type: ignore[no-untyped-def]
    from tidelog.node.queues.model import Settle

    return Settle(tp=part, first=first, last=last, delivery_count=count, kind=SettleKind.REJECT,
                  reason="poison")


def _replayed_from(base: dict, committed: list[dl.Delta], log_end: int) -> QueueCore:
    """A new coordinator: replay, then re-offer the records from start (as the shell does)."""
    core = QueueCore.restore(base)
    for d in committed:
        core.apply(dl.decode_delta(dl.encode_delta(d)))
    start = core.start_offset(tp())
    offer(core, tp(), range(start, log_end), read_to=max(start, log_end))
    return core


def test_every_dead_letter_lands_once_whatever_copies_zombies_send() -> None:
    for seed in _seeds(RUNS):
        print(f"seed {seed}: replay with TIDELOG_QUEUE_SEED={seed}")
        failure = protocol_failure(seed)
        assert failure is None, f"seed {seed}: {failure}"


def test_the_check_catches_copies_written_without_the_producer_sequence() -> None:
    """Planted bug: the same protocol with non-idempotent writes lands duplicates."""
    seeds = _seeds(RUNS)
    caught = [s for s in seeds if protocol_failure(s, idempotent=False) is not None]
    print(f"seeds {seeds[0]}..{seeds[-1]}: planted duplicates caught in {len(caught)}")
    assert caught, "planted bug not caught: non-idempotent copies should land twice"


def test_the_state_log_replays_the_dlq_ledger_and_the_recent_acks() -> None:
    """Through __queue_state's record format (state_log.py): a snapshot, then delta records
    with the new kinds; an impossible DlqBatch (a sequence out of order) names the queue."""
    from tidelog.node.queues import state_log as sl

    core = make()
    offer(core, tp(), range(3))
    core.acquire("c", 3, T0)
    records = [(sl.snapshot_key("q"), sl.encode_snapshot(1, core.snapshot()))]
    _, acked = core.settle("c", [_ack(0)], T0)
    _, dead = core.settle("c", [_reject(tp(), 1, 2, 1)], T0)
    deltas = [acked, dead, core.set_dlq_producer(5, 1),
              core.plan_dlq_batch(DLQ, 0, [(tp(), 1), (tp(), 2)])]
    records += [(sl.delta_key("q", seq), sl.encode_deltas(seq, d))
                for seq, d in enumerate(deltas, start=2)]
    replay = sl.QueueReplay()
    for key, value in records:
        replay.feed(key, value)
    ((replayed, seq),) = replay.result().values()
    assert seq == 5 and replayed.snapshot() == core.snapshot()
    outcomes, _ = replayed.settle("c", [_ack(0)], T0 + 1)   # the ack sent again: OK
    assert outcomes[0].ok
    wrong = dl.DlqBatch(dlq_topic=DLQ, dlq_partition=0, base_sequence=7,
                        records=((tp(), 1),))
    replay = sl.QueueReplay()
    for key, value in [*records[:4], (sl.delta_key("q", 5), sl.encode_deltas(5, [
            dl.SetDlqProducer(producer_id=5, epoch=1), wrong]))]:
        replay.feed(key, value)
    with pytest.raises(sl.QueueReplayError, match="'q'"):
        replay.result()


def _ack(offset: int):  # type: ignore[no-untyped-def]
    from tidelog.node.queues.model import Settle

    return Settle(tp=tp(), first=offset, last=offset, delivery_count=1, kind=SettleKind.ACK)
