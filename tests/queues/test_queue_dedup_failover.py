"""The dedup window across a coordinator failover (issue 12, docs/queues.md "Across a
coordinator failover the window has a hole"): the ids are rebuilt from the re-offered records,
so a successor (restored from the snapshot, then offered the partition from `start` again, as
the shell does) still drops a duplicate of an original it re-reads, whatever that original's
state: in flight, waiting, or done above `start`; and, once the shell has read the window below
`start` back (`remember_ids`), an original already below it. Before, only fresh records put their
ids back, so a duplicate of a delivered or acked record arriving after a failover was delivered
too. Real QueueCore."""

from __future__ import annotations

from tidelog.node.queues import deltas as dl
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.model import OfferedRecord, SettleKind

from .core_builders import T0, flat, make, settle, tp


def _mid(offset: int, mid: bytes, ts: int = T0) -> OfferedRecord:
    return OfferedRecord(offset, ts, None, 0, mid)


def test_a_successor_drops_duplicates_of_originals_it_re_reads_in_any_state() -> None:
    core = make()
    originals = [_mid(0, b"unfinished"), _mid(1, b"in-flight"), _mid(2, b"nacked"),
                 _mid(3, b"acked")]
    core.offer(tp(), originals, 4, T0)
    got, _ = core.acquire("c", 4, T0)
    assert [off for _, off, _ in flat(got)] == [0, 1, 2, 3]
    assert settle(core, "c", tp(), 2, 2, 1, SettleKind.NACK, T0, delay_ms=60_000).ok
    assert settle(core, "c", tp(), 3, 3, 1, SettleKind.ACK, T0).ok   # done, above start 0
    successor = QueueCore.restore(core.snapshot())
    assert successor.start_offset(tp()) == 0
    dups = [_mid(4, b"in-flight", T0 + 1), _mid(5, b"nacked", T0 + 1),
            _mid(6, b"acked", T0 + 1), _mid(7, b"unfinished", T0 + 1)]
    deltas = successor.offer(tp(), originals + dups, 8, T0 + 2)
    assert dl.Discard(tp=tp(), ranges=((4, 7),), cause="duplicate") in deltas
    assert successor.counters["duplicates"] == 4


def test_ids_below_start_are_put_back_by_remember_ids() -> None:
    """The original was acked and `start` moved past it before the failover: re-offering
    from `start` never sees it, so its duplicate would be delivered. The shell reads the
    window below `start` back and hands those records to `remember_ids` first
    (coordinator._read_ids); then the duplicate is dropped, as the old coordinator would."""
    core = make()
    core.offer(tp(), [_mid(0, b"m")], 1, T0)
    core.acquire("c", 1, T0)
    assert settle(core, "c", tp(), 0, 0, 1, SettleKind.ACK, T0).ok
    assert core.start_offset(tp()) == 1
    without = QueueCore.restore(core.snapshot())
    successor = QueueCore.restore(core.snapshot())
    successor.remember_ids([_mid(0, b"m")])
    assert successor.snapshot() == without.snapshot()      # volatile: nothing durable changed
    assert core.offer(tp(), [_mid(1, b"m", T0 + 1)], 2, T0 + 2)[0].cause == "duplicate"
    assert successor.offer(tp(), [_mid(1, b"m", T0 + 1)], 2, T0 + 2)[0].cause == "duplicate"
    assert without.offer(tp(), [_mid(1, b"m", T0 + 1)], 2, T0 + 2) == []   # the hole
    assert flat(without.acquire("c", 1, T0 + 2)[0]) == [(0, 1, 1)]
    off = make(dedup_window_ms=-1)
    off.remember_ids([_mid(0, b"m")])                       # dedup off: nothing remembered
    assert off.offer(tp(), [_mid(0, b"m")], 1, T0) == []
