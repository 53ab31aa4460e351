"""Group commit of queue-state changes: the writes that requests of one event-loop pass make to
one `__queue_state` partition are proposed as ONE Raft batch (sans-I/O: no asyncio here).

Why: each Receive and each Settle used to propose its own batch. Raft already sends the
proposals of one round in one append, but each was still its own log batch, its own entry
on all three replicas (append, checksum, term lookups, fsync bookkeeping) and its own state
record, and every 32 records of a queue cost a snapshot. Kafka's share groups do the same:
the acknowledgements of many consumers go to `__share_group_state` in one write.

What keeps replay exact (docs/queues.md "What is written before each answer"): the changes are
appended here in the synchronous step that made them, so the pending list holds every change
made since the last flush, in order; one flush writes, per queue, ONE delta record with the
concatenation of its pending deltas (applying them in order is what applying each would have
done), or, when a snapshot is due, a snapshot of the core taken at the flush, which covers
exactly those changes. Raw records (a deleted queue's tombstones) keep their place: the
changes of a queue pending before them are written before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PendingWrites", "StateGroup"]


@dataclass(slots=True, eq=False)
class StateGroup:
    """Either one queue's changes (`queue` set: its deltas in order, whether a snapshot was
    asked for, and whether it is that queue's last group of the flush), or raw records."""

    queue: Any | None
    deltas: list[Any] = field(default_factory=list)
    snapshot: bool = False
    last_of_queue: bool = True
    records: Sequence[tuple[bytes, bytes | None]] = ()


class PendingWrites:
    """The writes of one partition not proposed yet, in the order they were made."""

    def __init__(self) -> None:
        self._groups: list[StateGroup] = []
        self._open: dict[int, StateGroup] = {}   # id(queue) -> its group after the last raw
        self.changes = 0                          # writes added since the last take()

    def __bool__(self) -> bool:
        return bool(self._groups)

    def add(self, queue: Any, deltas: Sequence[Any], snapshot: bool = False) -> None:
        group = self._open.get(id(queue))
        if group is None or group.queue is not queue:
            group = StateGroup(queue=queue)
            self._groups.append(group)
            self._open[id(queue)] = group
        group.deltas.extend(deltas)
        group.snapshot = group.snapshot or snapshot
        self.changes += 1

    def add_records(self, records: Sequence[tuple[bytes, bytes | None]]) -> None:
        self._groups.append(StateGroup(queue=None, records=tuple(records)))
        self._open.clear()   # later changes of any queue go after these records
        self.changes += 1

    def take(self) -> list[StateGroup]:
        """The groups in order; a queue's earlier groups (split by raw records) are marked not
        last, since only a snapshot taken at its last group covers exactly what was written."""
        groups, self._groups = self._groups, []
        self._open.clear()
        self.changes = 0
        seen: set[int] = set()
        for group in reversed(groups):
            if group.queue is None:
                continue
            group.last_of_queue = id(group.queue) not in seen
            seen.add(id(group.queue))
        return groups
