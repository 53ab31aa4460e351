"""Idempotent-producer state of one partition: drops retried batches, refuses gaps and old epochs.

A producer stamps each batch with (producer id, epoch, base sequence). The leader remembers the last
few batches of every producer; a retry of one of them is answered with the offsets it already has
(and waits for their commit like any write), a gap in sequences is refused so that a lost batch is
never silently skipped, and a batch from an older epoch is fenced. The state is rebuilt from the
batch headers in the log when leadership moves, so a new leader dedups retries sent to the old one.

Epochs follow Kafka: InitProducerId bumps a producer's epoch (node/metadata.py, replicated so every
node agrees). A batch with an epoch older than the latest seen here, or older than the latest the
metadata handed out (`latest_epoch`, so a zombie is fenced even on a partition the new instance has
not written to yet), is refused with PRODUCER_FENCED; the first batch of a newer epoch must carry
sequence 0 (else OUT_OF_ORDER_SEQUENCE: its earlier batches are missing).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tidelog.node.errors import OutOfOrderSequenceError, ProducerFencedError
from tidelog.proto.batch import BatchHeader

RECENT_BATCHES_MAX = 5  # like Kafka: a producer has at most 5 batches in flight per partition
SEQUENCE_MODULUS = 2**31


@dataclass(frozen=True, slots=True)
class BatchRecord:
    first_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int
    # The Raft term the batch was written in at these offsets (-1: unknown). A record made when a
    # leader proposed a batch outlives the batch if the entry is dropped from the log tail after a
    # leadership change; the term lets the leader tell (see Node.produce).
    term: int = -1


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    recent: deque[BatchRecord] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES_MAX))

    @property
    def next_sequence(self) -> int | None:
        return (self.recent[-1].last_sequence + 1) % SEQUENCE_MODULUS if self.recent else None


@dataclass(frozen=True, slots=True)
class Duplicate:
    base_offset: int
    last_offset: int
    term: int = -1  # the term the earlier attempt was written in (-1: unknown)


class ProducerStateTable:
    """Per-partition table, keyed by producer id. Not thread-safe: owned by the event loop."""

    def __init__(self) -> None:
        self._producers: dict[int, ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def check(self, header: BatchHeader, latest_epoch: int = -1) -> Duplicate | None:
        """Before appending: the earlier offsets if this batch is a retry, else None.

        `latest_epoch`: the newest epoch the cluster handed out for this producer id (-1:
        unknown). Raises ProducerFencedError / OutOfOrderSequenceError for batches that must
        be refused.
        """
        if header.producer_id < 0:
            return None
        if header.producer_epoch < latest_epoch:
            raise ProducerFencedError(
                f"producer {header.producer_id} epoch {header.producer_epoch} is fenced: a "
                f"newer instance holds epoch {latest_epoch}")
        entry = self._producers.get(header.producer_id)
        if entry is None:
            return None
        if header.producer_epoch < entry.epoch:
            raise ProducerFencedError(
                f"producer {header.producer_id} epoch {header.producer_epoch} is older than "
                f"the current epoch {entry.epoch}"
            )
        if header.producer_epoch > entry.epoch:
            if header.base_sequence != 0:
                raise OutOfOrderSequenceError(
                    f"producer {header.producer_id} starts epoch {header.producer_epoch} at "
                    f"sequence {header.base_sequence}; a new epoch starts at 0")
            return None
        last_sequence = _last_sequence(header)
        for seen in entry.recent:
            if seen.first_sequence == header.base_sequence and seen.last_sequence == last_sequence:
                return Duplicate(seen.base_offset, seen.last_offset, seen.term)
        expected = entry.next_sequence
        if expected is not None and header.base_sequence != expected:
            raise OutOfOrderSequenceError(
                f"producer {header.producer_id} sent sequence {header.base_sequence} but "
                f"{expected} was expected next (a batch is missing or was reordered)"
            )
        return None

    def record(self, header: BatchHeader, base_offset: int, term: int = -1) -> None:
        """After appending (or proposing) a batch at base_offset in `term` (also when replaying
        the log)."""
        if header.producer_id < 0:
            return
        entry = self._producers.get(header.producer_id)
        if entry is None or header.producer_epoch > entry.epoch:
            entry = ProducerEntry(epoch=header.producer_epoch)
            self._producers[header.producer_id] = entry
        entry.recent.append(
            BatchRecord(
                first_sequence=header.base_sequence,
                last_sequence=_last_sequence(header),
                base_offset=base_offset,
                last_offset=base_offset + header.last_offset_delta,
                term=term,
            )
        )

    def check_request(self, headers: list[BatchHeader],
                      latest_epoch: Callable[[int], int]) -> list[Duplicate | None]:
        """`check` for every batch of one produce request before any is proposed (all or
        nothing): a producer's later batch in the request must follow its earlier one."""
        out: list[Duplicate | None] = []
        pending: dict[int, BatchHeader] = {}  # producer id → its last new batch in the request
        for header in headers:
            before = pending.get(header.producer_id)
            if before is None:
                dup = self.check(header, latest_epoch(header.producer_id))
            else:
                dup = None
                expected = (_last_sequence(before) + 1) % SEQUENCE_MODULUS
                if header.producer_epoch != before.producer_epoch or \
                        header.base_sequence != expected:
                    raise OutOfOrderSequenceError(
                        f"producer {header.producer_id}: a batch at epoch "
                        f"{header.producer_epoch} sequence {header.base_sequence} follows "
                        f"epoch {before.producer_epoch} sequence {_last_sequence(before)} in "
                        "the same request")
            if dup is None and header.producer_id >= 0:
                pending[header.producer_id] = header
            out.append(dup)
        return out

    def forget_from(self, producer_id: int, base_offset: int) -> None:
        """Drop the producer's records at or after base_offset: they name entries that were
        replaced in the log (a proposal lost in a leadership change), so a retry must be written
        again instead of being answered with offsets that now hold something else."""
        entry = self._producers.get(producer_id)
        if entry is None:
            return
        kept = [r for r in entry.recent if r.base_offset < base_offset]
        entry.recent.clear()
        entry.recent.extend(kept)

    def clear(self) -> None:
        self._producers.clear()

    def snapshot_below(self, offset: int) -> dict[int, ProducerEntry]:
        """A copy of the state the batches ending before `offset` left: what retention must
        keep when it deletes them (node/producer_snapshot.py). Restoring it and replaying the
        batches from `offset` on gives this table again: each producer's newest records below
        `offset` are all still here unless newer ones pushed them out, and replaying those newer
        ones pushes them out again."""
        out: dict[int, ProducerEntry] = {}
        for producer_id, entry in self._producers.items():
            kept = [r for r in entry.recent if r.last_offset < offset]
            if kept:
                out[producer_id] = ProducerEntry(
                    epoch=entry.epoch, recent=deque(kept, maxlen=RECENT_BATCHES_MAX))
        return out

    def restore(self, producers: dict[int, ProducerEntry]) -> None:
        """Replace the table by a snapshot (then replay the log after it)."""
        self._producers = {
            producer_id: ProducerEntry(epoch=entry.epoch,
                                       recent=deque(entry.recent, maxlen=RECENT_BATCHES_MAX))
            for producer_id, entry in producers.items()}


def _last_sequence(header: BatchHeader) -> int:
    return (header.base_sequence + header.record_count - 1) % SEQUENCE_MODULUS
