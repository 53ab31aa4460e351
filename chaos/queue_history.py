"""The queue workload's history: what queue consumers were given and what their settlements got.

Theory of operation. A queue run has two histories. The producers are the log workload's (they
write `send_*` events into the run's `history.jsonl`, so the log checker judges the topic under
the queue too); everything the queue consumers do goes here, into `queue-history.jsonl`, with
the SAME run clock (`time_ms`: milliseconds since the workload started, one monotonic clock).
Kept apart because `History.load` is strict about event types: a log history stays loadable by
the log checker alone. `queue_checker.py` judges both together, offline.

Event types (the `type` field of each JSON line) and their fields (all have `time_ms`):

- `queue_started`: queue, topics, key_ordered, max_deliveries, lock_ms, dlq_topic
- `queue_delivery`: consumer, delivery, topic, partition, offset, key, value, delivery_count,
  lock_deadline_ms, received_wall_ms, receive_invoked_ms
- `queue_settlement`: consumer, delivery, topic, partition, offset, delivery_count, action,
  result, error, invoked_ms
- `queue_coordinator`: node (or null)
- `queue_drained`: drained, detail
- `queue_dead_letter`: partition, offset, key, value, reason, attempts, source_topic,
  source_partition, source_offset
- `queue_dlq_read`: topic, partitions, complete, detail

`(consumer, delivery)` names one delivery (`delivery` counts up per consumer id); a settlement
names the delivery it settles, so a lock's end is found even when one consumer is given the same
record twice with one delivery count (after a release).

`queue_delivery.time_ms` is when `receive()` returned it (the lock started at the coordinator
before that, at or after `receive_invoked_ms`). `lock_deadline_ms` is the coordinator's wall
clock (ms since the epoch) and `received_wall_ms` the consumer's wall clock when receive
returned, so the deadline on the run clock is `time_ms + lock_deadline_ms - received_wall_ms`
(one machine: one wall clock).

`queue_settlement` is written once the outcome is known: `result` is `ok`, `lock_lost` (the
coordinator refused: the lock was no longer held), or `unknown` (a timeout or lost connection:
it may or may not have been applied); `invoked_ms` is when ack()/nack()/... was called,
`time_ms` when the outcome was learnt.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tidelog.chaos.history import JsonLinesWriter, events_from_jsonl, events_to_jsonl

__all__ = [
    "Action",
    "DeadLetter",
    "DlqRead",
    "QueueCoordinator",
    "QueueDelivery",
    "QueueDrained",
    "QueueEvent",
    "QueueEventKind",
    "QueueHistory",
    "QueueHistoryWriter",
    "QueueSettlement",
    "QueueStarted",
    "SettleResult",
    "queue_event_from_dict",
    "queue_event_to_dict",
]


class QueueEventKind(enum.Enum):
    STARTED = "queue_started"
    DELIVERY = "queue_delivery"
    SETTLEMENT = "queue_settlement"
    COORDINATOR = "queue_coordinator"
    DRAINED = "queue_drained"
    DEAD_LETTER = "queue_dead_letter"
    DLQ_READ = "queue_dlq_read"


class Action(enum.Enum):
    ACK = "ack"
    NACK = "nack"
    REJECT = "reject"
    RELEASE = "release"


class SettleResult(enum.Enum):
    OK = "ok"
    LOCK_LOST = "lock_lost"  # the coordinator answered: this delivery's lock is not held
    UNKNOWN = "unknown"  # no answer (timeout, connection lost): applied or not, nobody knows


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStarted:
    kind: ClassVar[QueueEventKind] = QueueEventKind.STARTED
    queue: str
    topics: tuple[str, ...]
    key_ordered: bool
    max_deliveries: int
    lock_ms: int
    dlq_topic: str
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDelivery:
    kind: ClassVar[QueueEventKind] = QueueEventKind.DELIVERY
    consumer: str
    delivery: int  # numbers this consumer's deliveries: (consumer, delivery) is unique
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    delivery_count: int
    lock_deadline_ms: int  # coordinator wall clock
    received_wall_ms: int  # consumer wall clock when receive() returned
    receive_invoked_ms: float  # run clock
    time_ms: float  # run clock, when receive() returned

    @property
    def deadline_run_ms(self) -> float:
        """The lock deadline on the run clock."""
        return self.time_ms + (self.lock_deadline_ms - self.received_wall_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettlement:
    kind: ClassVar[QueueEventKind] = QueueEventKind.SETTLEMENT
    consumer: str
    delivery: int  # the delivery it settles
    topic: str
    partition: int
    offset: int
    delivery_count: int
    action: Action
    result: SettleResult
    error: str
    invoked_ms: float
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueCoordinator:
    """Who an observer saw as the queue's coordinator (None: nobody led its state partition)."""

    kind: ClassVar[QueueEventKind] = QueueEventKind.COORDINATOR
    node: str | None
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDrained:
    """The drain phase ended: `drained` when the queue's stats showed nothing left to do."""

    kind: ClassVar[QueueEventKind] = QueueEventKind.DRAINED
    drained: bool
    detail: str
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One record of the dead-letter topic, read after the drain (source from its headers;
    -1 / "" where a header was missing)."""

    kind: ClassVar[QueueEventKind] = QueueEventKind.DEAD_LETTER
    partition: int
    offset: int
    key: str | None
    value: str
    reason: str
    attempts: int
    source_topic: str
    source_partition: int
    source_offset: int
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqRead:
    """The dead-letter topic was read from its start: `complete` when every partition was read
    to its high watermark."""

    kind: ClassVar[QueueEventKind] = QueueEventKind.DLQ_READ
    topic: str
    partitions: int
    complete: bool
    detail: str
    time_ms: float


QueueEvent = (QueueStarted | QueueDelivery | QueueSettlement | QueueCoordinator | QueueDrained
              | DeadLetter | DlqRead)

_CLASSES: dict[QueueEventKind, Any] = {
    QueueEventKind.STARTED: QueueStarted,
    QueueEventKind.DELIVERY: QueueDelivery,
    QueueEventKind.SETTLEMENT: QueueSettlement,
    QueueEventKind.COORDINATOR: QueueCoordinator,
    QueueEventKind.DRAINED: QueueDrained,
    QueueEventKind.DEAD_LETTER: DeadLetter,
    QueueEventKind.DLQ_READ: DlqRead,
}


def queue_event_to_dict(event: QueueEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.kind.value}
    for name, value in asdict(event).items():
        out[name] = value.value if isinstance(value, enum.Enum) else (
            list(value) if isinstance(value, tuple) else value)
    return out


def queue_event_from_dict(data: dict[str, Any]) -> QueueEvent:
    """Inverse of `queue_event_to_dict`; ValueError naming the problem for a malformed object."""
    fields = {k: v for k, v in data.items() if k != "type"}
    try:
        kind = QueueEventKind(data["type"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"queue history event has no known type: {data!r}") from exc
    try:
        if kind is QueueEventKind.STARTED:
            fields["topics"] = tuple(str(t) for t in fields["topics"])
        if kind is QueueEventKind.SETTLEMENT:
            fields["action"] = Action(fields["action"])
            fields["result"] = SettleResult(fields["result"])
        return _CLASSES[kind](**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {kind.value} event {data!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class QueueHistory:
    events: tuple[QueueEvent, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[QueueEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def to_jsonl(self) -> str:
        return events_to_jsonl(self.events, queue_event_to_dict)

    @classmethod
    def from_jsonl(cls, text: str) -> QueueHistory:
        return cls(events_from_jsonl(text, queue_event_from_dict, what="queue history"))

    @classmethod
    def load(cls, path: Path) -> QueueHistory:
        return cls.from_jsonl(path.read_text())

    def dump(self, path: Path) -> None:
        path.write_text(self.to_jsonl())


class QueueHistoryWriter(JsonLinesWriter[QueueEvent]):
    """The run's `queue-history.jsonl`: history.py's JSON-lines writer (thread-safe, bounded,
    still in memory after close) plus live counters for the progress line."""

    def __init__(self, path: Path, *, events_max: int = 5_000_000) -> None:
        self.deliveries = self.acks = 0
        super().__init__(path, queue_event_to_dict, events_max=events_max,
                         what="queue history")

    def history(self) -> QueueHistory:
        return QueueHistory(self.events())

    def _counted(self, event: QueueEvent) -> None:
        if isinstance(event, QueueDelivery):
            self.deliveries += 1
        elif (isinstance(event, QueueSettlement) and event.action is Action.ACK
              and event.result is SettleResult.OK):
            self.acks += 1
