"""Every settlement is idempotent on retry (issue 12): a nack, reject, release or extend whose
reply was lost and that the client sends again is answered OK and changes nothing, also at a
successor coordinator (restored from the snapshot, or replayed through __queue_state's record
format). Before, only ACK was remembered and the others answered LOCK_LOST for a settlement
that had been applied. The real QueueCore throughout (sans-I/O: time is an argument)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tidelog.node.queues import deltas as dl
from tidelog.node.queues import state_log as sl
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.model import Settle, SettleKind
from tidelog.node.queues.recent_acks import RANGES_MAX, SETTLES_MAX

from .core_builders import T0, flat, make, offer, settle, tp

ACK, NACK, REJECT, RELEASE, EXTEND = (SettleKind.ACK, SettleKind.NACK, SettleKind.REJECT,
                                      SettleKind.RELEASE, SettleKind.EXTEND)
# (kind, settings): NACK twice, below the limit (WAITING) and at it (dead-letter pending)
CASES = [(NACK, {}), (NACK, {"max_deliveries": 1}), (REJECT, {}), (RELEASE, {}),
         (EXTEND, {})]


def _item(kind: SettleKind, first: int, last: int, count: int = 1) -> Settle:
    return Settle(tp=tp(), first=first, last=last, delivery_count=count, kind=kind,
                  delay_ms=60_000, reason="bad input", extend_ms=5_000)


def _successors(core: QueueCore, base: dict, deltas: list[dl.Delta]) -> Iterator[QueueCore]:
    """The core itself, a core restored from its snapshot, and one replayed from an earlier
    snapshot plus the deltas through the state log's records (encode, decode, apply)."""
    yield core
    yield QueueCore.restore(core.snapshot())
    records = [(sl.snapshot_key("q"), sl.encode_snapshot(1, base)),
               (sl.delta_key("q", 2), sl.encode_deltas(2, deltas))]
    replay = sl.QueueReplay()
    for key, value in records:
        replay.feed(key, value)
    ((replayed, _),) = replay.result().values()
    assert replayed.snapshot() == core.snapshot()
    yield replayed


@pytest.mark.parametrize(("kind", "settings"), CASES,
                         ids=["nack", "nack-at-limit", "reject", "release", "extend"])
def test_a_settlement_sent_again_after_it_was_applied_is_ok_and_changes_nothing(
        kind: SettleKind, settings: dict) -> None:
    core = make(**settings)
    offer(core, tp(), range(4))
    core.acquire("c", 4, T0)
    base = core.snapshot()
    outcomes, deltas = core.settle("c", [_item(kind, 1, 2)], T0 + 10)
    assert outcomes[0].ok and deltas
    first_deadline = outcomes[0].lock_deadline_ms
    if kind is EXTEND:
        # Still held, a retry would simply extend again: take the records away first (here a
        # purge; a lock expiry and redelivery to someone else does the same).
        deltas += core.purge(T0 + 15)[1]
    for successor in _successors(core, base, deltas):
        before = successor.snapshot()
        outcomes, again = successor.settle("c", [_item(kind, 1, 2)], T0 + 20)
        assert outcomes[0].ok and not outcomes[0].lock_lost, outcomes[0]
        assert again == [] and successor.snapshot() == before
        if kind is EXTEND:     # the deadline the first attempt set, not a new one
            assert outcomes[0].lock_deadline_ms == first_deadline == T0 + 10 + 5_000
        # The memory is exact: anyone else, another delivery, another action is refused.
        for consumer, count, other in (("d", 1, kind), ("c", 2, kind),
                                       ("c", 1, ACK if kind is not ACK else NACK)):
            lost = settle(successor, consumer, tp(), 1, 1, count, other, T0 + 20,
                          delay_ms=1, reason="x", extend_ms=10)
            assert lost.lock_lost and not lost.ok, (consumer, count, other)


def test_a_retried_nack_stays_ok_after_the_record_went_to_someone_else() -> None:
    """The retry comes after the nacked record was redelivered (count 2) to another consumer:
    the first nack was applied, so OK, and the new holder's lock is untouched."""
    core = make(backoff_initial_ms=0, backoff_max_ms=0)
    offer(core, tp(), [0])
    core.acquire("c", 1, T0)
    assert settle(core, "c", tp(), 0, 0, 1, NACK, T0 + 1).ok
    got, _ = core.acquire("d", 1, T0 + 2)
    assert flat(got) == [(0, 0, 2)]
    before = core.snapshot()
    outcomes, deltas = core.settle("c", [Settle(tp=tp(), first=0, last=0, delivery_count=1,
                                                kind=NACK)], T0 + 3)
    assert outcomes[0].ok and deltas == [] and core.snapshot() == before
    assert settle(core, "d", tp(), 0, 0, 2, ACK, T0 + 4).ok


def test_a_retried_range_settles_the_part_still_held_and_answers_ok() -> None:
    """The client merged a retried settlement with one for records it still holds (same
    action): the remembered part changes nothing, the held part is settled now."""
    core = make()
    offer(core, tp(), range(4))
    core.acquire("c", 4, T0)
    assert core.settle("c", [_item(REJECT, 1, 2)], T0)[0][0].ok
    outcomes, deltas = core.settle("c", [_item(REJECT, 0, 3)], T0 + 1)
    assert outcomes[0].ok
    assert [d.ranges for d in deltas if isinstance(d, dl.DeadPending)] == [((0, 0), (3, 3))]
    assert [j.offset for j in core.dead_letter_jobs()] == [0, 1, 2, 3]
    # Part remembered, part held by someone else: refused as a whole, nothing changes.
    core2 = make()
    offer(core2, tp(), range(2))
    core2.acquire("c", 1, T0)
    core2.acquire("d", 1, T0)
    assert settle(core2, "c", tp(), 0, 0, 1, NACK, T0, delay_ms=0).ok
    assert settle(core2, "c", tp(), 0, 0, 1, RELEASE, T0).lock_lost   # another action
    before = core2.snapshot()
    outcomes, deltas = core2.settle("c", [Settle(tp=tp(), first=0, last=1, delivery_count=1,
                                                 kind=NACK, delay_ms=0)], T0 + 2)
    assert outcomes[0].lock_lost and deltas == [] and core2.snapshot() == before


def test_the_memory_is_bounded_and_acks_do_not_push_settlements_out() -> None:
    core = make(max_in_flight=20_000)
    n = SETTLES_MAX + 10
    offer(core, tp(), range(2 * n))
    core.acquire("c", 2 * n // 2, T0)
    core.acquire("c", 2 * n - 2 * n // 2, T0)
    # 2n single-record settlements: extends of the even offsets (deadlines differ, so no two
    # merge) interleaved with acks of the odd ones.
    for off in range(0, 2 * n, 2):
        assert settle(core, "c", tp(), off, off, 1, EXTEND, T0 + off, extend_ms=1_000).ok
        assert settle(core, "c", tp(), off + 1, off + 1, 1, ACK, T0 + off).ok
    snap = core.snapshot()
    assert len(snap["settled"]) == SETTLES_MAX
    assert QueueCore.restore(snap).snapshot() == snap
    # Purge makes every extended record not held: a retry answers from the memory alone.
    core.purge(T0 + 3 * n)
    newest = 2 * (n - 1)
    assert settle(core, "c", tp(), newest, newest, 1, EXTEND, T0 + 4 * n,
                  extend_ms=1_000).lock_deadline_ms == T0 + newest + 1_000
    # The 10 oldest are forgotten; the oldest one kept (offset 20) is still answered, though
    # more than RANGES_MAX acks came after it: acks have their own budget.
    assert settle(core, "c", tp(), 18, 18, 1, EXTEND, T0 + 4 * n, extend_ms=1_000).lock_lost
    assert settle(core, "c", tp(), 20, 20, 1, EXTEND, T0 + 4 * n, extend_ms=1_000).ok
    assert len(snap["acked"]) == RANGES_MAX
    assert settle(core, "c", tp(), 2 * n - 1, 2 * n - 1, 1, ACK, T0 + 4 * n).ok
    assert settle(core, "c", tp(), 1, 1, 1, ACK, T0 + 4 * n).lock_lost


def test_older_records_and_snapshots_still_read() -> None:
    """A dead-pending delta without the settlement field (written by the previous version)
    decodes as one from a tick; a v3 snapshot (no "settled") restores with an empty memory."""
    old = {"k": "dead", "t": "t", "p": 0, "r": [[1, 2]], "why": "rejected", "now": T0}
    assert dl.decode_delta(old) == dl.DeadPending(tp=tp(), ranges=((1, 2),), reason="rejected",
                                                  now_ms=T0)
    new = dl.DeadPending(tp=tp(), ranges=((1, 2),), reason="rejected", now_ms=T0,
                         consumer_id="c", settle=REJECT.value)
    assert dl.decode_delta(dl.encode_delta(new)) == new
    for bad in (["c", 4], ["", 2], "c", ["c", 2, 3]):
        with pytest.raises(ValueError, match="settlement"):
            dl.decode_delta({**old, "s": bad})
    core = make()
    offer(core, tp(), range(2))
    core.acquire("c", 2, T0)
    snap = core.snapshot()
    v3 = {k: v for k, v in snap.items() if k != "settled"} | {"v": 3}
    assert QueueCore.restore(v3).snapshot() == snap
