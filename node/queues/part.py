"""The per-partition state of a queue core: one record's durable entry, the partition's maps
and heaps (node/queues/core.py explains them), and the names of the queue's counters. Shared
by the core, which changes them, and its snapshot codec (core_snapshot.py). Sans-I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.model import OfferedRecord

__all__ = ["COUNTERS", "COUNTERS_V3", "DEAD", "DONE", "IN_FLIGHT", "REASON_EXPIRED",
           "REASON_MAX_DELIVERIES", "REASON_REJECTED", "WAITING", "Entry", "Part", "offsets"]

REASON_EXPIRED = "expired"                 # dead-letter reasons the core gives
REASON_MAX_DELIVERIES = "max deliveries"
REASON_REJECTED = "rejected"               # a reject without a reason

IN_FLIGHT, WAITING, DEAD = 1, 2, 3


class Entry:
    """The durable state of one record that is not fresh. `at`: deadline (IN_FLIGHT) or
    available-at (WAITING). Mutable and slotted: the hot path changes it in place."""

    __slots__ = ("state", "holder", "count", "at", "first_ms", "last_ms", "reason")

    def __init__(self, state: int, holder: str, count: int, at: int, first_ms: int,
                 last_ms: int, reason: str) -> None:
        self.state = state
        self.holder = holder
        self.count = count
        self.at = at
        self.first_ms = first_ms
        self.last_ms = last_ms
        self.reason = reason


DONE: Any = object()   # the entry of every DONE record (shared: DONE carries no data)


class Part:
    __slots__ = ("tp", "start", "read_offset", "entries", "recs", "ready", "timers", "pending",
                 "keys", "dead")

    def __init__(self, tp: TopicPartition, start: int, key_ordered: bool) -> None:
        self.tp = tp
        self.start = start
        self.read_offset = start
        self.entries: dict[int, Any] = {}           # offset -> Entry | DONE
        self.recs: dict[int, OfferedRecord] = {}    # offered, not done
        self.ready: list[int] = []
        self.timers: list[tuple[int, int, Any]] = []
        self.pending: list[int] = []
        self.keys: dict[bytes, deque[int]] | None = {} if key_ordered else None
        self.dead: dict[int, None] = {}             # DEAD entries (an ordered set)


COUNTERS = ("acked", "delivered", "redelivered", "dead_lettered", "expired", "redriven",
             "duplicates", "dlq_lost")
COUNTERS_V3 = COUNTERS[:-1]   # snapshots up to v4 have no "dlq_lost" (0)


def offsets(payload: Any) -> Iterable[int]:
    """The offsets of a timer payload: one offset, or inclusive (first, last) ranges."""
    if type(payload) is int:
        return (payload,)
    return (off for first, last in payload for off in range(first, last + 1))
