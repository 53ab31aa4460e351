"""Small builders shared by the queue-core tests (real QueueCore, no fakes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.config import QueueConfig
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.deltas import Delta
from tidelog.node.queues.model import Acquired, OfferedRecord, Settle, SettleKind, SettleOutcome

T0 = 1_700_000_000_000


def tp(partition: int = 0, topic: str = "t") -> TopicPartition:
    return TopicPartition(topic, partition)


def make(partitions: int = 1, **settings: Any) -> QueueCore:
    config = QueueConfig(name="q", topics=("t",), **settings)
    return QueueCore(config, {tp(p): 0 for p in range(partitions)})


def rec(offset: int, *, ts: int = T0, key: bytes | None = None,
        deliver_at: int = 0) -> OfferedRecord:
    return OfferedRecord(offset, ts, key, deliver_at)


def offer(core: QueueCore, part: TopicPartition, offsets: Iterable[int], *, now: int = T0,
          ts: int = T0, keys: Sequence[bytes | None] | None = None,
          read_to: int | None = None) -> list[Delta]:
    offs = list(offsets)
    records = [rec(o, ts=ts, key=None if keys is None else keys[i]) for i, o in enumerate(offs)]
    end = read_to if read_to is not None else (offs[-1] + 1 if offs else core.read_offset(part))
    return core.offer(part, records, end, now)


def flat(acquired: Sequence[Acquired]) -> list[tuple[int, int, int]]:
    """(partition, offset, delivery_count) of every acquired record, in answer order."""
    return [(a.tp.partition, off, count) for a in acquired for first, last, count in a.ranges
            for off in range(first, last + 1)]


def settle(core: QueueCore, consumer: str, part: TopicPartition, first: int, last: int,
           count: int, kind: SettleKind, now: int, **kw: Any) -> SettleOutcome:
    outcomes, _ = core.settle(consumer, [Settle(tp=part, first=first, last=last,
                                                 delivery_count=count, kind=kind, **kw)], now)
    return outcomes[0]


def ack_all(core: QueueCore, consumer: str, acquired: Sequence[Acquired],
            now: int) -> list[SettleOutcome]:
    items = [Settle(tp=a.tp, first=f, last=last, delivery_count=c, kind=SettleKind.ACK)
             for a in acquired for f, last, c in a.ranges]
    outcomes, _ = core.settle(consumer, items, now)
    return outcomes
