"""The queue's memory of recent settlements, so a Settle sent again after a lost reply is
answered OK: `RecentAcks` for acks, `RecentSettles` for nack, reject, release and extend.

A client whose Settle reply is lost (a timeout, a coordinator move) sends the same settlements
again. Without this memory the retry finds the records done, no longer in flight, and reports
LOCK_LOST for acks that were applied (chaos isolate-leader: 32 of 2004 acks once). Here every ack
applied is remembered as (partition, offset range, holder, delivery count); an ACK settlement
whose records are not held any more but were acked by the same consumer at the same delivery is
answered OK and changes nothing. Sound because DONE is final: an acked record is never delivered
again, so "acked by this consumer at this delivery" stays true forever.

Deterministic: the ranges are recorded when an ack is applied (live or in replay), from the
records' durable state (holder and delivery count) at that moment, and kept in the snapshot, so a
successor coordinator answers a retry the way the first one would have. Bounded: the newest
RANGES_MAX ranges (consecutive offsets acked by one consumer at one delivery merge into one).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from tidelog.node.groups.assignors import TopicPartition

__all__ = ["RANGES_MAX", "SETTLES_MAX", "RecentAcks", "RecentSettles"]

RANGES_MAX = 1024   # ~46 KB in a snapshot at most; a retry comes within seconds of its ack


class RecentAcks:
    """(tp, first, last, holder, delivery count) ranges, oldest first."""

    def __init__(self) -> None:
        self._ranges: deque[tuple[TopicPartition, int, int, str, int]] = deque(
            maxlen=RANGES_MAX)

    def add(self, tp: TopicPartition, first: int, last: int, holder: str, count: int) -> None:
        """[first, last] acked by `holder` at delivery `count` (merged into the newest range
        when it continues it)."""
        ranges = self._ranges
        if ranges:
            r_tp, r_first, r_last, r_holder, r_count = ranges[-1]
            if r_tp == tp and r_last + 1 == first and r_holder == holder and r_count == count:
                ranges[-1] = (tp, r_first, last, holder, count)
                return
        ranges.append((tp, first, last, holder, count))

    def acked(self, tp: TopicPartition, first: int, last: int, holder: str,
              count: int) -> set[int]:
        """The offsets of [first, last] remembered as acked by `holder` at delivery `count`."""
        out: set[int] = set()
        for r_tp, r_first, r_last, r_holder, r_count in self._ranges:
            if (r_tp == tp and r_holder == holder and r_count == count
                    and r_first <= last and first <= r_last):
                out.update(range(max(first, r_first), min(last, r_last) + 1))
        return out

    def snapshot(self) -> list[list[Any]]:
        return [[tp.topic, tp.partition, first, last, holder, count]
                for tp, first, last, holder, count in self._ranges]

    @classmethod
    def restore(cls, raw: Any) -> RecentAcks:
        """Strict inverse of snapshot(): a malformed one raises ValueError."""
        if not isinstance(raw, list) or len(raw) > RANGES_MAX:
            raise ValueError("snapshot: acked must be a list of at most "
                             f"{RANGES_MAX} ranges")
        out = cls()
        for row in raw:
            if not (isinstance(row, list) and len(row) == 6 and isinstance(row[0], str)
                    and row[0] and isinstance(row[4], str)
                    and all(_nat(v) for v in (row[1], row[2], row[3], row[5]))
                    and row[2] <= row[3] and row[5] >= 1):
                raise ValueError(f"snapshot: bad acked range {str(row)[:80]}")
            out._ranges.append((TopicPartition(row[0], row[1]), row[2], row[3], row[4],
                                row[5]))
        return out


def _nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Settlement kinds as remembered (model.SettleKind values; not imported: this module stays a
# leaf of the core).
NACK, REJECT, RELEASE, EXTEND = 1, 2, 3, 4
SETTLES_MAX = 1024  # other settlements (nack, reject, release, extend): their own budget


class RecentSettles:
    """The same memory for every other settlement, so a nack, reject, release or extend sent
    again after a lost reply is answered OK (and changes nothing) as an ack is.

    A range is (tp, first, last, holder, delivery count, kind, deadline): the records were
    settled with `kind` by `holder` at that delivery (deadline: an EXTEND's new lock deadline,
    else 0). Recorded when the delta is applied (live or in replay), from the records' durable
    state just before it changes, and kept in the snapshot. Sound because a settlement that was
    applied stays applied: "nacked by this consumer at this delivery" stays true whatever happens
    to the record later (it is redelivered, dead-lettered, acked by someone else). Kept apart
    from the acks so a stream of acks does not push the rarer settlements out. Bounded: the
    newest SETTLES_MAX ranges (consecutive offsets with equal fields merge)."""

    def __init__(self) -> None:
        self._ranges: deque[tuple[TopicPartition, int, int, str, int, int, int]] = deque(
            maxlen=SETTLES_MAX)

    def add(self, tp: TopicPartition, first: int, last: int, holder: str, count: int,
            kind: int, deadline: int = 0) -> None:
        ranges = self._ranges
        if ranges:
            r_tp, r_first, r_last, *rest = ranges[-1]
            if r_tp == tp and r_last + 1 == first and rest == [holder, count, kind, deadline]:
                ranges[-1] = (tp, r_first, last, holder, count, kind, deadline)
                return
        ranges.append((tp, first, last, holder, count, kind, deadline))

    def settled(self, tp: TopicPartition, first: int, last: int, holder: str, count: int,
                kind: int) -> dict[int, int]:
        """offset -> deadline (0 unless EXTEND) of the offsets of [first, last] remembered as
        settled with `kind` by `holder` at delivery `count`; the newest range wins."""
        out: dict[int, int] = {}
        for r_tp, r_first, r_last, r_holder, r_count, r_kind, deadline in self._ranges:
            if (r_tp == tp and r_holder == holder and r_count == count and r_kind == kind
                    and r_first <= last and first <= r_last):
                for off in range(max(first, r_first), min(last, r_last) + 1):
                    out[off] = deadline
        return out

    def snapshot(self) -> list[list[Any]]:
        return [[tp.topic, tp.partition, first, last, holder, count, kind, deadline]
                for tp, first, last, holder, count, kind, deadline in self._ranges]

    @classmethod
    def restore(cls, raw: Any) -> RecentSettles:
        """Strict inverse of snapshot(): a malformed one raises ValueError."""
        if not isinstance(raw, list) or len(raw) > SETTLES_MAX:
            raise ValueError("snapshot: settled must be a list of at most "
                             f"{SETTLES_MAX} ranges")
        out = cls()
        for row in raw:
            if not (isinstance(row, list) and len(row) == 8 and isinstance(row[0], str)
                    and row[0] and isinstance(row[4], str)
                    and all(_nat(v) for v in (row[1], row[2], row[3], row[5], row[6], row[7]))
                    and row[2] <= row[3] and row[5] >= 1
                    and row[6] in (NACK, REJECT, RELEASE, EXTEND)):
                raise ValueError(f"snapshot: bad settled range {str(row)[:80]}")
            out._ranges.append((TopicPartition(row[0], row[1]), row[2], row[3], row[4],
                                row[5], row[6], row[7]))
        return out
