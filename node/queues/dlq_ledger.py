"""The durable dead-letter batches of one queue: what makes each dead letter land exactly once.

Theory of operation
-------------------
The DLQ partitions check idempotent producers (node/producer_state.py): a batch whose sequence is
not the next one expected from its producer id/epoch is never appended, and a copy of one of the
producer's last RECENT_BATCHES_MAX (5) batches is answered as a Duplicate. So the queue gets ONE
producer id/epoch (`SetDlqProducer`, allocated at its first dead letter, never bumped), and every
dead-letter write is decided durably before it is sent:

1. the coordinator commits `DlqBatch(topic, partition, base_sequence, records)`: the records
   (DEAD_PENDING) and the sequence they take on that DLQ partition (`next_sequence` moves on);
2. it writes exactly that batch (the same records in the same order, the same producer id,
   epoch and base sequence), retrying as often as it likes;
3. it commits `DlqBatchDone(written=True)`: the records are dead-lettered.

A successor (or the same coordinator after a failed write) writes the committed-but-not-done
batches again in sequence order. Whatever copies are sent, by whom and when (a paused
coordinator resuming minutes later included), the DLQ partition appends the batch once: a later
copy is a Duplicate of one of the last 5 batches, or (older) out of order and refused.

Invariant (why 5 is enough): at most PENDING_BATCHES_MAX (= RECENT_BATCHES_MAX) batches per DLQ
partition are pending, and they are written in sequence order; so a pending batch already
appended is among the last 5 batches the partition knows of this producer, and its copy is
answered Duplicate rather than refused as out of order.

This module is sans-I/O and owned by `QueueCore` (which applies the deltas); the records' context
(reason, attempts, delivery times) is copied into the batch when it is planned, so the batch can
be written again with the same context even after its records were purged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues import deltas as dl
from tidelog.node.queues.model import DeadLetterJob, DlqBatchJob

__all__ = ["BATCH_RECORDS_MAX", "PENDING_BATCHES_MAX", "DlqLedger"]

# Per DLQ partition (see the invariant above). Equal to node/producer_state.RECENT_BATCHES_MAX
# (not imported: the core stays sans-I/O; tests/queues/test_queue_dlq_ledger.py checks it).
PENDING_BATCHES_MAX = 5
BATCH_RECORDS_MAX = 500                   # records per dead-letter batch (bounds the delta)

DlqPartition = tuple[str, int]            # (dead-letter topic, partition)


class DlqLedger:
    """Producer, next sequence per DLQ partition, pending batches. Mutated only by `apply_*`."""

    def __init__(self) -> None:
        self.producer: tuple[int, int] | None = None       # (producer id, epoch)
        self.next_sequence: dict[DlqPartition, int] = {}
        # Invariant: each list is in base_sequence order, consecutive, ending at next_sequence.
        self.pending: dict[DlqPartition, list[DlqBatchJob]] = {}
        self.batched: set[tuple[TopicPartition, int]] = set()   # records in pending batches

    def pending_count(self, dlq_topic: str, dlq_partition: int) -> int:
        return len(self.pending.get((dlq_topic, dlq_partition), ()))

    def batches(self) -> list[DlqBatchJob]:
        """Every pending batch, by DLQ partition, in sequence order (the order to write them)."""
        return [b for key in sorted(self.pending) for b in self.pending[key]]

    # ------------------------------------------------------------------ apply

    def apply_producer(self, d: dl.SetDlqProducer) -> None:
        assert not self.pending, "the DLQ producer changes only with no batch pending"
        if self.producer is not None and self.producer[0] == d.producer_id \
                and d.epoch > self.producer[1]:
            # A new epoch of the same id starts at sequence 0 on every partition.
            self.next_sequence.clear()
        elif self.producer is not None and self.producer[0] != d.producer_id:
            self.next_sequence.clear()
        self.producer = (d.producer_id, d.epoch)

    def apply_batch(self, d: dl.DlqBatch, jobs: tuple[DeadLetterJob, ...]) -> None:
        key = (d.dlq_topic, d.dlq_partition)
        assert self.producer is not None, "a dead-letter batch before the DLQ producer"
        expected = self.next_sequence.get(key, 0)
        assert d.base_sequence == expected, (key, d.base_sequence, expected)
        queue = self.pending.setdefault(key, [])
        assert len(queue) < PENDING_BATCHES_MAX, (key, len(queue))
        assert 0 < len(jobs) <= BATCH_RECORDS_MAX, len(jobs)
        for job in jobs:
            assert (job.tp, job.offset) not in self.batched, (job.tp, job.offset)
            self.batched.add((job.tp, job.offset))
        queue.append(DlqBatchJob(dlq_topic=d.dlq_topic, dlq_partition=d.dlq_partition,
                                 base_sequence=d.base_sequence, jobs=jobs))
        self.next_sequence[key] = expected + len(jobs)

    def apply_done(self, d: dl.DlqBatchDone) -> DlqBatchJob:
        """Removes the batch; returns it (the core marks its records)."""
        key = (d.dlq_topic, d.dlq_partition)
        queue = self.pending.get(key)
        assert queue, (key, d.base_sequence)
        if d.written:
            # Written in order: the first pending one is the only one that can be done.
            assert queue[0].base_sequence == d.base_sequence, (key, d.base_sequence)
            batch = queue.pop(0)
        else:
            # Abandoned (the topic is gone): the whole partition's pending batches go together
            # from the last, so the sequence stays consecutive.
            assert queue[-1].base_sequence == d.base_sequence, (key, d.base_sequence)
            batch = queue.pop()
            self.next_sequence[key] = batch.base_sequence
        if not queue:
            del self.pending[key]
        for job in batch.jobs:
            self.batched.discard((job.tp, job.offset))
        return batch

    def apply_resync(self, d: dl.DlqResync) -> list[DlqBatchJob]:
        """The partition lost batches it had acknowledged: every pending batch there is given
        up (returned; their records are jobs again) and the next sequence is the one the
        partition expects, so the next batch continues what it still has."""
        key = (d.dlq_topic, d.dlq_partition)
        dropped = self.pending.pop(key, [])
        assert d.next_sequence <= self.next_sequence.get(key, 0), (key, d.next_sequence)
        for batch in dropped:
            for job in batch.jobs:
                self.batched.discard((job.tp, job.offset))
        self.next_sequence[key] = d.next_sequence
        return dropped

    # ------------------------------------------------------------------ durability

    def snapshot(self) -> dict[str, Any]:
        return {
            "producer": list(self.producer) if self.producer is not None else None,
            "next": [[t, p, s] for (t, p), s in sorted(self.next_sequence.items())],
            "batches": [[b.dlq_topic, b.dlq_partition, b.base_sequence,
                         [[j.tp.topic, j.tp.partition, j.offset, j.reason, j.attempts,
                           j.first_delivery_ms, j.last_delivery_ms] for j in b.jobs]]
                        for b in self.batches()],
        }

    @classmethod
    def restore(cls, raw: Mapping[str, Any]) -> DlqLedger:
        """Strict inverse of snapshot(): a malformed one raises ValueError."""
        _expect(isinstance(raw, Mapping) and set(raw) == {"producer", "next", "batches"},
                "snapshot dlq: expected producer, next and batches")
        ledger = cls()
        producer = raw["producer"]
        if producer is not None:
            _expect(isinstance(producer, list) and len(producer) == 2
                    and all(_nat(v) for v in producer), "snapshot dlq: bad producer")
            ledger.producer = (producer[0], producer[1])
        _expect(isinstance(raw["next"], list), "snapshot dlq: next must be a list")
        for row in raw["next"]:
            _expect(isinstance(row, list) and len(row) == 3 and _topic(row[0])
                    and _nat(row[1]) and _nat(row[2]), f"snapshot dlq: bad next {row!r}")
            ledger.next_sequence[(row[0], row[1])] = row[2]
        _expect(isinstance(raw["batches"], list), "snapshot dlq: batches must be a list")
        for row in raw["batches"]:
            _expect(isinstance(row, list) and len(row) == 4 and _topic(row[0]) and _nat(row[1])
                    and _nat(row[2]) and isinstance(row[3], list) and row[3],
                    f"snapshot dlq: bad batch {str(row)[:80]}")
            jobs = tuple(_job(item) for item in row[3])
            key = (row[0], row[1])
            queue = ledger.pending.setdefault(key, [])
            end = queue[-1].base_sequence + len(queue[-1].jobs) if queue else None
            _expect(end is None or end == row[2], f"snapshot dlq: batches of {key} not "
                                                  "consecutive")
            _expect(len(queue) < PENDING_BATCHES_MAX and len(jobs) <= BATCH_RECORDS_MAX,
                    f"snapshot dlq: too many batches or records on {key}")
            for job in jobs:
                _expect((job.tp, job.offset) not in ledger.batched,
                        "snapshot dlq: a record in two batches")
                ledger.batched.add((job.tp, job.offset))
            queue.append(DlqBatchJob(dlq_topic=row[0], dlq_partition=row[1],
                                     base_sequence=row[2], jobs=jobs))
        for key, queue in ledger.pending.items():
            last = queue[-1]
            _expect(ledger.next_sequence.get(key) == last.base_sequence + len(last.jobs),
                    f"snapshot dlq: next sequence of {key} does not follow its batches")
        _expect(ledger.producer is not None or not ledger.pending,
                "snapshot dlq: batches without a producer")
        return ledger


def _job(item: Any) -> DeadLetterJob:
    _expect(isinstance(item, list) and len(item) == 7 and _topic(item[0]) and _nat(item[1])
            and _nat(item[2]) and isinstance(item[3], str) and all(_nat(v) for v in item[4:]),
            f"snapshot dlq: bad record {str(item)[:80]}")
    return DeadLetterJob(tp=TopicPartition(item[0], item[1]), offset=item[2], reason=item[3],
                         attempts=item[4], first_delivery_ms=item[5], last_delivery_ms=item[6])


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _topic(value: Any) -> bool:
    return isinstance(value, str) and bool(value)
