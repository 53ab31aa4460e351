"""The values the queue core takes and gives: what the shell offers, what a consumer acquires, a
settlement and its outcome, a dead-letter job, and the stats of queue.proto."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tidelog.node.groups.assignors import TopicPartition

__all__ = [
    "Acquired",
    "DeadLetterJob",
    "DlqBatchJob",
    "OfferedRecord",
    "PartitionStats",
    "QueueStats",
    "Settle",
    "SettleKind",
    "SettleOutcome",
    "TopicPartition",
]


@dataclass(frozen=True, slots=True)
class OfferedRecord:
    """One record of a data partition as the shell read it (only what the core decides on)."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    deliver_at_ms: int = 0              # header tidelog-deliver-at-ms; 0: none
    message_id: bytes | None = None     # header tidelog-message-id (dedup, stretch)


@dataclass(frozen=True, slots=True, kw_only=True)
class Acquired:
    """Records locked to one consumer: (first, last, delivery_count) ranges, inclusive."""

    tp: TopicPartition
    ranges: tuple[tuple[int, int, int], ...]
    lock_deadline_ms: int

    @property
    def count(self) -> int:
        return sum(last - first + 1 for first, last, _ in self.ranges)


class SettleKind(Enum):
    ACK = 0
    NACK = 1
    REJECT = 2
    RELEASE = 3
    EXTEND = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Settle:
    tp: TopicPartition
    first: int
    last: int                 # inclusive
    delivery_count: int       # of the delivery being settled: fences stale settlements
    kind: SettleKind
    delay_ms: int = -1        # NACK: -1 = the queue's backoff
    reason: str = ""          # REJECT
    extend_ms: int = 0        # EXTEND


@dataclass(frozen=True, slots=True, kw_only=True)
class SettleOutcome:
    index: int
    ok: bool
    lock_lost: bool
    message: str = ""
    lock_deadline_ms: int = 0     # EXTEND: the new deadline


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterJob:
    tp: TopicPartition
    offset: int
    reason: str
    attempts: int
    first_delivery_ms: int    # 0: never delivered (ttl, reject of ... )
    last_delivery_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqBatchJob:
    """One dead-letter batch committed to the queue state and not yet known to be written:
    written as exactly these records, in this order, as ONE produced batch with the queue's DLQ
    producer id/epoch and this base sequence (so every copy of it, whoever sends it and when,
    is the same batch to the DLQ partition's idempotent-producer check)."""

    dlq_topic: str
    dlq_partition: int
    base_sequence: int                   # unbounded; sent modulo 2**31
    jobs: tuple[DeadLetterJob, ...]      # the records' dead-letter context, in write order


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionStats:
    topic: str
    partition: int
    start_offset: int
    read_offset: int
    high_watermark: int       # -1 when unknown
    depth: int
    in_flight: int
    waiting: int
    dead_letter_pending: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    depth: int
    in_flight: int
    oldest_unacked_age_ms: int
    acked_total: int
    delivered_total: int
    redelivered_total: int
    dead_lettered_total: int
    expired_total: int
    dlq_depth: int
    redriven_total: int
    consumers: int
    partitions: tuple[PartitionStats, ...]
    now_ms: int
    deduplicated_total: int = 0
    # dead letters a DLQ partition acknowledged and then lost (data loss; dlq_ledger.py)
    dead_letters_lost_total: int = 0
