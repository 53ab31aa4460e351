"""Per-partition delivery state of the producer: sequence numbers, in-flight window, retries.

Sans-I/O: no grpc, no clock reads (``now`` is passed in), no threads; the sender drives it. This
is where the idempotence guarantees live, so the rules are spelled out:

1. **Sequences.** With idempotence, a batch gets ``base_sequence = next_sequence`` of its partition
   when it is first drained, under the producer id current at that moment; ``next_sequence``
   advances by the record count. A retry resends the same encoded bytes (same id, same sequence),
   so the broker can recognise a batch it already wrote and answer ``duplicate`` with its offsets.
2. **Window.** Up to ``max_in_flight`` batches of a partition may be in flight at once, except
   that the first batch under a producer id travels alone until acknowledged: the broker has no
   expectation for an unknown producer and would accept sequence n+1 arriving first, writing it
   before sequence 0 (node/producer_state.py accepts any first sequence).
3. **Retries in order.** When a batch fails with a retriable error it goes to the partition's retry
   queue (kept sorted by sequence) and the partition stops sending new batches. Once nothing is in
   flight for it, the retry queue is resent one batch at a time, lowest sequence first; new batches
   resume only when the queue is empty. Hence a partition's batches are written in sequence order
   and a retry never overtakes an earlier batch.
4. **Out-of-order replies.** gRPC does not keep concurrent calls in order, so the broker may see
   sequence n+1 before n and answer OUT_OF_ORDER_SEQUENCE. That error is retriable exactly when
   the attempt was sent while a lower-sequence batch of the same partition was unacknowledged
   (its success reply may well be handled before this error reply), or one still is; otherwise
   every earlier batch was acknowledged before this one left, so the gap is real and the batch
   fails.
5. **Giving up.** A batch fails for good on a non-retriable error, after ``retries`` attempts, or
   past its delivery deadline. With idempotence the partition's later sequences are then unusable:
   the partition *abandons* its queued retries (failed with an error naming the cause), lets its
   in-flight batches finish, and sends nothing new until the producer has a new producer id
   (``needs_new_producer_id``); it then restarts at sequence 0 under the new id.
6. **Fenced.** PRODUCER_FENCED means a newer instance of this producer took over (Kafka's
   semantics: it called InitProducerId with the same transactional id, bumping the epoch). A
   zombie must not write on, and must not get itself a fresh id either: ``fenced`` is set, nothing
   more is sent, and the producer fails every pending and later record with the error.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tidelog.client import errors
from tidelog.client.accumulator import ProducerBatch
from tidelog.client.records import TopicPartition

__all__ = ["DeliveryState", "PartitionDelivery"]

Failure = tuple[ProducerBatch, BaseException]


@dataclass(slots=True)
class PartitionDelivery:
    producer_id: int = -1
    producer_epoch: int = -1
    next_sequence: int = 0
    # Invariant: both lists are sorted by base_sequence (by send order when not idempotent).
    inflight: list[ProducerBatch] = field(default_factory=list)
    retry: list[ProducerBatch] = field(default_factory=list)
    backoff_until_s: float = 0.0
    #: the producer id this partition must not use any more (set when it abandoned a batch)
    retired_producer_id: int | None = None
    #: a batch under producer_id has been acknowledged (the broker now knows the sequence)
    acked: bool = False
    abandon_cause: BaseException | None = None

    def outstanding(self) -> int:
        return len(self.inflight) + len(self.retry)


class DeliveryState:
    def __init__(
        self, *, idempotent: bool, max_in_flight: int, retries: int, retry_backoff_ms: int,
        retry_backoff_ms_max: int,
    ) -> None:
        self.idempotent = idempotent
        self.max_in_flight = max_in_flight
        self.retries = retries
        self._backoff_s = retry_backoff_ms / 1000
        self._backoff_max_s = retry_backoff_ms_max / 1000
        self.producer_id = -1
        self.producer_epoch = -1
        #: the identity InitProducerId bumps the epoch of ("": a fresh id per producer)
        self.transactional_id = ""
        #: set when a partition abandoned batches: the sender should get a new producer id
        self.needs_new_producer_id = False
        #: rule 6: a newer instance fenced this producer; fatal
        self.fenced: errors.ProducerFenced | None = None
        self.partitions: dict[TopicPartition, PartitionDelivery] = {}

    def state(self, tp: TopicPartition) -> PartitionDelivery:
        st = self.partitions.get(tp)
        if st is None:
            st = self.partitions[tp] = PartitionDelivery()
        return st

    def set_producer_id(self, producer_id: int, producer_epoch: int) -> None:
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.needs_new_producer_id = False

    # --- what may be sent -----------------------------------------------------------------------

    def next_retry(self, tp: TopicPartition, now: float) -> ProducerBatch | None:
        """The batch to resend now, if any (rule 3). Call before asking for new batches."""
        st = self.state(tp)
        if not st.retry or st.inflight or now < st.backoff_until_s or self.fenced is not None:
            return None
        return st.retry.pop(0)

    def can_send_new(self, tp: TopicPartition, now: float) -> bool:
        st = self.state(tp)
        if self.fenced is not None:
            return False
        if st.retry or now < st.backoff_until_s or len(st.inflight) >= self.max_in_flight:
            return False
        if not self.idempotent:
            return True
        if self.producer_id < 0 or self.producer_id == st.retired_producer_id:
            return False  # no (usable) producer id yet
        if st.producer_id != self.producer_id:
            # switching ids: only with nothing outstanding under the old one (rule 5)
            return not st.inflight
        return st.acked or not st.inflight  # rule 2: the first batch goes alone

    def assign(self, batch: ProducerBatch) -> None:
        """Give a fresh batch its producer id and sequence (rule 1). Only after can_send_new."""
        assert batch.base_sequence == -1 and batch.attempts == 0, "batch already sequenced"
        if not self.idempotent:
            return
        st = self.state(batch.tp)
        if st.producer_id != self.producer_id:
            assert not st.inflight and not st.retry
            st.producer_id, st.producer_epoch, st.next_sequence = (
                self.producer_id, self.producer_epoch, 0)
            st.retired_producer_id = None
            st.abandon_cause = None
            st.acked = False
        batch.producer_id = st.producer_id
        batch.producer_epoch = st.producer_epoch
        batch.base_sequence = st.next_sequence
        st.next_sequence = (st.next_sequence + batch.record_count) & 0x7FFFFFFF

    def sent(self, batch: ProducerBatch) -> None:
        st = self.state(batch.tp)
        batch.attempts += 1
        batch.sent_behind = any(b.base_sequence < batch.base_sequence
                                for b in (*st.inflight, *st.retry))
        if self.idempotent:
            bisect.insort(st.inflight, batch, key=_seq)
        else:
            st.inflight.append(batch)

    # --- outcomes -------------------------------------------------------------------------------

    def succeeded(self, batch: ProducerBatch) -> None:
        st = self.state(batch.tp)
        st.inflight.remove(batch)
        if batch.producer_id == st.producer_id:
            st.acked = True

    def failed(self, batch: ProducerBatch, error: BaseException, now: float) -> list[Failure]:
        """A send attempt failed. Returns the batches to fail now (maybe none: it will retry)."""
        st = self.state(batch.tp)
        st.inflight.remove(batch)
        if isinstance(error, errors.ProducerFenced) or self.fenced is not None:
            if self.fenced is None:
                self.fenced = error if isinstance(error, errors.ProducerFenced) else None
            return [(batch, error), *self.abort(self.fenced or error)]
        if st.abandon_cause is not None:
            return [(batch, error)]
        if self._should_retry(st, batch, error, now):
            bisect.insort(st.retry, batch, key=_seq if self.idempotent else _attempt_order)
            backoff = min(self._backoff_max_s, self._backoff_s * (2 ** min(batch.attempts - 1, 16)))
            st.backoff_until_s = max(st.backoff_until_s, now + backoff)
            return []
        return [(batch, error), *self._abandon(st, batch, error)]

    def expire(self, now: float) -> list[Failure]:
        """Fail queued retries past their delivery deadline (in-flight ones expire by timeout)."""
        failures: list[Failure] = []
        for st in self.partitions.values():
            if st.retry and st.retry[0].deadline_s <= now:
                head = st.retry.pop(0)
                error = errors.Timeout(
                    f"{head.tp}: batch of {head.record_count} records not acknowledged within "
                    "delivery_timeout_ms; it may or may not have been written"
                )
                failures.append((head, error))
                failures.extend(self._abandon(st, head, error))
            if not self.idempotent:
                for batch in [b for b in st.retry if b.deadline_s <= now]:
                    st.retry.remove(batch)
                    failures.append((batch, errors.Timeout(
                        f"{batch.tp}: batch not acknowledged within delivery_timeout_ms")))
        return failures

    def abort(self, error: BaseException) -> list[Failure]:
        """Take every queued retry out (on close); in-flight batches are left to finish."""
        failures = []
        for st in self.partitions.values():
            failures.extend((b, error) for b in st.retry)
            st.retry.clear()
        return failures

    def idle(self) -> bool:
        return all(st.outstanding() == 0 for st in self.partitions.values())

    def has_inflight(self, tp: TopicPartition) -> bool:
        """A request of tp is in flight (adaptive linger: only then does its open batch wait
        linger_ms, client/accumulator.py)."""
        st = self.partitions.get(tp)
        return st is not None and bool(st.inflight)

    # --- helpers -----------------------------------------------------------------------------

    def _should_retry(
        self, st: PartitionDelivery, batch: ProducerBatch, error: BaseException, now: float
    ) -> bool:
        if batch.attempts > self.retries or now >= batch.deadline_s:
            return False
        if isinstance(error, errors.OutOfOrderSequence):
            # rule 4: retriable only behind an earlier unacknowledged batch
            return self.idempotent and (batch.sent_behind or any(
                b.base_sequence < batch.base_sequence for b in (*st.inflight, *st.retry)
            ))
        return bool(getattr(error, "retriable", False))

    def _abandon(
        self, st: PartitionDelivery, cause_batch: ProducerBatch, cause: BaseException
    ) -> list[Failure]:
        if not self.idempotent:
            return []
        st.abandon_cause = cause
        st.retired_producer_id = st.producer_id
        self.needs_new_producer_id = True
        abandoned = errors.OutOfOrderSequence(
            f"{cause_batch.tp}: not sent because an earlier batch (sequence "
            f"{cause_batch.base_sequence}) failed and later sequences of this partition could "
            f"not be written in order: {cause}"
        )
        failures = [(b, abandoned) for b in st.retry]
        st.retry.clear()
        return failures


def _seq(batch: ProducerBatch) -> int:
    return batch.base_sequence


def _attempt_order(batch: ProducerBatch) -> float:
    return batch.created_s
