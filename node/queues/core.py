"""The queue core: per-partition acquisition state of one queue. Sans-I/O: records come in through
`offer`, time as `now_ms`, and every durable change goes out as deltas (node/queues/deltas.py) that
the shell persists through Raft before it answers anybody.

Theory of operation
-------------------
Per partition (`_Part`):

* `start`: every offset below it is done (durable). `read_offset`: the next offset to look at
  (volatile; after a restore it is `start` and the shell re-offers from there).
* `entries`: sparse offset -> state for offsets in [start, read_offset) that are not fresh
  (durable): IN_FLIGHT(holder, count, deadline), WAITING(count, available_at), DEAD(reason,
  attempts), or DONE. Invariant: no entry below `start`; `start` is never above an offset that is
  not done. A record with no entry is *fresh*: offered, never delivered, available at its
  deliver-at header or timestamp + delay_ms.
* `recs`: the offered records that are not done (volatile; key, timestamp, deliver-at).
* `ready`: a min-heap of offsets that may be available now; `timers`: a heap of
  (time, seq, offset | ranges) to look at again at that time. Both are hints: a popped offset is
  re-classified against the durable state (`_classify`), so stale and duplicate hints are
  harmless. Invariant: every record that is not done and not dead is either in `ready`, or has a
  timer at or before the time it becomes available.
* Lock expiry is computed, not persisted: IN_FLIGHT with deadline <= now is available at
  deadline + backoff(count); with count >= max_deliveries it is dead-lettered ("max deliveries")
  when its timer fires (acquire or tick emits that DeadPending delta).
* `pending`: a min-heap of offered offsets (hints again) whose minimum still in `recs` is the
  next `start`: so advancing `start` past done records and gaps costs O(log n) per record.
* Key-ordered mode: `keys` maps a key to its not-done offsets in offset order; only the head may
  be delivered, and only when not in flight; when the head is done the next head is pushed to
  `ready`. Null keys are independent. Keys are volatile: restore + re-offer rebuilds them.
* Dedup window (`_is_duplicate`): a fresh record whose `tidelog-message-id` was seen on another
  record of the queue within the queue's dedup_window_ms (by record timestamp; -1: off) is
  discarded (Discard delta: DONE, never delivered). The ids are volatile, rebuilt after a
  restore from the records below `start` the shell reads back (`remember_ids`) and from the
  re-offered ones.

The window: the shell may offer a record only while `offset - start < max_in_flight`
(`reads_wanted` stops asking beyond it, `offer` ignores records beyond it). Overflow behaviour:
the partition hands out no new records until its oldest unfinished record is done, as Kafka's
share-partition record locks behave.

Every mutating method builds deltas and applies them through the same functions `apply` uses,
so restore(snapshot) + apply(each later delta) + re-offer gives the live core's durable state and
the same future answers (tests/queues/test_queue_core_random.py checks it over random runs).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues import deltas as dl
from tidelog.node.queues.backoff import backoff_ms
from tidelog.node.queues.config import LOCK_MS_MAX, MAX_IN_FLIGHT_MAX, QueueConfig
from tidelog.node.queues.core_apply import Appliers
from tidelog.node.queues.core_snapshot import restore_core, snapshot_of
from tidelog.node.queues.dlq_ledger import BATCH_RECORDS_MAX, PENDING_BATCHES_MAX, DlqLedger
from tidelog.node.queues.model import (
    Acquired,
    DeadLetterJob,
    DlqBatchJob,
    OfferedRecord,
    PartitionStats,
    QueueStats,
    Settle,
    SettleKind,
    SettleOutcome,
)
from tidelog.node.queues.part import COUNTERS as _COUNTERS
from tidelog.node.queues.part import (
    DEAD,
    IN_FLIGHT,
    REASON_EXPIRED,
    REASON_MAX_DELIVERIES,
    REASON_REJECTED,
    WAITING,
)
from tidelog.node.queues.part import DONE as _DONE
from tidelog.node.queues.part import Part as _Part
from tidelog.node.queues.part import offsets as _offsets
from tidelog.node.queues.recent_acks import RecentAcks, RecentSettles

__all__ = ["REASON_EXPIRED", "REASON_MAX_DELIVERIES", "REASON_REJECTED", "QueueCore"]

MAX_MESSAGES_MAX = 10_000
DEDUP_IDS_MAX = 200_000             # ids remembered at most (oldest forgotten first)

_NOT, _TTL, _MAX = -1, -2, -3   # _classify codes; a value >= 0 is the time it is available at


class QueueCore(Appliers):
    """One queue's acquisition state over its partitions. Owned by one thread (the event loop)."""

    def __init__(self, config: QueueConfig, starts: Mapping[TopicPartition, int]) -> None:
        self.config = config
        self._parts: dict[TopicPartition, _Part] = {}
        self._order: list[_Part] = []
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._redrive: dict[int, int] = {}
        self._dlq = DlqLedger()
        self._acked = RecentAcks()
        self._settled = RecentSettles()
        self._seen: dict[str, int] = {}
        self._seq = 0
        # Dedup window (volatile): message id -> timestamp of its first record, and a heap
        # of (timestamp, id) to forget ids older than the window. Bounded by DEDUP_IDS_MAX.
        self._ids: dict[bytes, int] = {}
        self._id_times: list[tuple[int, bytes]] = []
        self._id_ts_max = 0
        for tp, start in sorted(starts.items()):
            self._add_part(tp, start)
        self._apply_fns = {
            dl.Deliver: self._apply_deliver, dl.Ack: self._apply_ack, dl.Nack: self._apply_nack,
            dl.Release: self._apply_release, dl.Extend: self._apply_extend,
            dl.DeadPending: self._apply_dead, dl.DeadLettered: self._apply_dead_lettered,
            dl.Discard: self._apply_discard, dl.Advance: self._apply_advance,
            dl.Truncate: self._apply_truncate, dl.AddPartitions: self._apply_add_partitions,
            dl.SetConfig: self._apply_set_config, dl.RedriveCursor: self._apply_redrive,
            dl.SetDlqProducer: self._apply_dlq_producer, dl.DlqBatch: self._apply_dlq_batch,
            dl.DlqBatchDone: self._apply_dlq_batch_done, dl.DlqResync: self._apply_dlq_resync,
        }

    # ---------------------------------------------------------------- reading the partitions

    @property
    def partitions(self) -> tuple[TopicPartition, ...]:
        return tuple(p.tp for p in self._order)

    def start_offset(self, tp: TopicPartition) -> int:
        return self._parts[tp].start

    def read_offset(self, tp: TopicPartition) -> int:
        """The next offset this partition will look at (volatile: `start` after a restore)."""
        return self._parts[tp].read_offset

    def reads_wanted(self) -> dict[TopicPartition, int]:
        """tp -> the offset to read next, for partitions whose window has room."""
        window = self.config.max_in_flight
        return {p.tp: p.read_offset for p in self._order if p.read_offset < p.start + window}

    def offer(self, tp: TopicPartition, records: Iterable[OfferedRecord], read_to: int,
              now_ms: int) -> list[dl.Delta]:
        """Records read from `reads_wanted()[tp]` on, in offset order; `read_to` is the offset
        after the last position examined (so gaps and control batches are skipped). Records
        below the read offset are ignored (already seen); records beyond the window are
        dropped and read again later. Returns deltas for records already past their TTL."""
        p = self._parts[tp]
        cfg = self.config
        limit = p.start + cfg.max_in_flight
        ttl, delay = cfg.ttl_ms, cfg.delay_ms
        entries, recs, ready, timers, pending, keys = (p.entries, p.recs, p.ready, p.timers,
                                                      p.pending, p.keys)
        expired: list[int] = []
        duplicates: list[int] = []
        read_offset = p.read_offset
        new_read = max(read_to, read_offset)
        for rec in records:
            off = rec.offset
            if off < read_offset:
                continue
            if off >= limit:
                new_read = off
                break
            read_offset = off + 1
            e = entries.get(off)
            if rec.message_id is not None:
                # A fresh record is checked against the window; one with a state (re-offered
                # after a restore: delivered, waiting, done) was checked when it was fresh and
                # only puts its id back, so its later duplicates are still caught.
                if e is None:
                    if self._is_duplicate(rec):
                        duplicates.append(off)
                        continue
                else:
                    self._is_duplicate(rec, remember_only=True)
            if e is _DONE:
                continue
            recs[off] = rec
            heapq.heappush(pending, off)
            if keys is not None and rec.key is not None:
                queue = keys.get(rec.key)
                if queue is None:
                    keys[rec.key] = deque((off,))
                else:
                    queue.append(off)
            if e is not None and e.state == DEAD:
                continue
            if ttl:
                if e is None and rec.timestamp_ms + ttl < now_ms:
                    expired.append(off)
                    continue
                self._timer(p, rec.timestamp_ms + ttl + 1, off)
            if e is None:
                at = rec.deliver_at_ms or rec.timestamp_ms + delay
                if at <= now_ms:
                    heapq.heappush(ready, off)
                else:
                    self._seq += 1
                    heapq.heappush(timers, (at, self._seq, off))
            else:
                self._timer(p, e.at, off)
        p.read_offset = max(new_read, read_offset)
        out: list[dl.Delta] = []
        if expired:
            self._emit(out, dl.DeadPending(tp=tp, ranges=dl.ranges_of(expired),
                                           reason=REASON_EXPIRED, now_ms=now_ms))
        if duplicates:
            self._emit(out, dl.Discard(tp=tp, ranges=dl.ranges_of(duplicates),
                                       cause="duplicate"))
        self._advance(p, out)
        return out

    def remember_ids(self, records: Iterable[OfferedRecord]) -> None:
        """Put back the dedup ids of records already done below `start` (the shell re-reads
        the window after a restore), so their later duplicates are still dropped. Volatile,
        like every id: changes no durable state."""
        if self.config.dedup_window_ms < 0:
            return
        for rec in records:
            if rec.message_id is not None:
                self._is_duplicate(rec, remember_only=True)

    def log_start_moved(self, tp: TopicPartition, log_start: int) -> list[dl.Delta]:
        """Retention deleted the log below `log_start`: those records are lost (done)."""
        p = self._parts[tp]
        out: list[dl.Delta] = []
        if log_start > p.start:
            self._emit(out, dl.Truncate(tp=tp, offset=log_start, cause="lost"))
            self._advance(p, out)
        return out

    # ---------------------------------------------------------------- consumers

    def acquire(self, consumer_id: str, max_messages: int,
                now_ms: int) -> tuple[list[Acquired], list[dl.Delta]]:
        """Lock up to `max_messages` available records to `consumer_id` for lock_ms: in offset
        order within a partition, shared out evenly between partitions (the first partition
        rotates with the durable delivered count, so a replayed core answers the same)."""
        assert 1 <= max_messages <= MAX_MESSAGES_MAX, max_messages
        self._seen[consumer_id] = now_ms
        out: list[dl.Delta] = []
        order = self._order
        n = len(order)
        if not n:
            return [], out
        for p in order:
            if p.timers and p.timers[0][0] <= now_ms:
                self._fire(p, now_ms, out)
        # Which partitions stay in the share-out depends only on how many records each could
        # give (durable state), never on stale hints left in `ready`: replay answers the same.
        first = self.counters["delivered"] % n
        active = order[first:] + order[:first]
        taken: dict[TopicPartition, list[int]] = {}
        remaining = max_messages
        while remaining > 0 and active:
            quota = max(1, remaining // len(active))
            still = []
            for p in active:
                want = min(quota, remaining)
                got = taken.setdefault(p.tp, [])
                k = self._take(p, want, now_ms, got, out)
                remaining -= k
                if k == want:
                    still.append(p)
                if remaining <= 0:
                    break
            active = still
        acquired: list[Acquired] = []
        deadline = now_ms + self.config.lock_ms
        for tp, got in taken.items():
            if not got:
                continue
            d = dl.Deliver(tp=tp, ranges=dl.ranges_of(got), consumer_id=consumer_id,
                           now_ms=now_ms, deadline_ms=deadline)
            self._emit(out, d)
            acquired.append(Acquired(tp=tp, ranges=self._counted(self._parts[tp], got),
                                     lock_deadline_ms=deadline))
        return acquired, out

    def settle(self, consumer_id: str, items: Sequence[Settle],
               now_ms: int) -> tuple[list[SettleOutcome], list[dl.Delta]]:
        """Apply each settlement whose records are all IN_FLIGHT, held by `consumer_id` with
        the settlement's delivery count (an expired lock not yet redelivered still counts);
        any other is LOCK_LOST and changes nothing. One outcome per item, in order."""
        self._seen[consumer_id] = now_ms
        out: list[dl.Delta] = []
        outcomes: list[SettleOutcome] = []
        acks: dict[_Part, list[tuple[int, int]]] = {}   # keyed by identity: cheap to hash
        counts: dict[_Part, list[tuple[int, int, int]]] = {}   # acked (first, last, count)
        cfg = self.config
        last_tp: TopicPartition | None = None
        p: _Part | None = None
        for index, s in enumerate(items):
            if s.tp is not last_tp:
                last_tp = s.tp
                p = self._parts.get(s.tp)
            problem = _invalid(s, p is not None)
            if problem:
                outcomes.append(SettleOutcome(index=index, ok=False, lock_lost=False,
                                              message=problem))
                continue
            assert p is not None
            ranges: dl.Ranges = ((s.first, s.last),)
            remembered = 0    # EXTEND: the earliest deadline of the parts applied before
            if not self._holds(p, consumer_id, s):
                retried = self._retried(p, consumer_id, s, counts.get(p, ()))
                if retried is None:
                    outcomes.append(SettleOutcome(
                        index=index, ok=False, lock_lost=True,
                        message=f"{s.tp.topic}/{s.tp.partition} [{s.first}, {s.last}] is not "
                                f"held by this consumer at delivery {s.delivery_count}"))
                    continue
                # Sent again after a lost reply: what was settled then stays settled (OK,
                # nothing changes); what is still held by this delivery is settled now.
                ranges, remembered = retried
                if not ranges:
                    outcomes.append(SettleOutcome(index=index, ok=True, lock_lost=False,
                                                  lock_deadline_ms=remembered))
                    continue
            deadline = 0
            if p not in acks:
                acks[p] = []
            match s.kind:
                case SettleKind.ACK:
                    for first, last in ranges:
                        self._ack(p, first, last)
                        acks[p].append((first, last))
                        counts.setdefault(p, []).append((first, last, s.delivery_count))
                case SettleKind.NACK:
                    if s.delivery_count >= cfg.max_deliveries:
                        self._emit(out, dl.DeadPending(tp=s.tp, ranges=ranges,
                                                       reason=REASON_MAX_DELIVERIES,
                                                       now_ms=now_ms, consumer_id=consumer_id,
                                                       settle=SettleKind.NACK.value))
                    else:
                        self._emit(out, dl.Nack(tp=s.tp, ranges=ranges, now_ms=now_ms,
                                                delay_ms=max(s.delay_ms, -1)))
                case SettleKind.REJECT:
                    self._emit(out, dl.DeadPending(tp=s.tp, ranges=ranges,
                                                   reason=s.reason or REASON_REJECTED,
                                                   now_ms=now_ms, consumer_id=consumer_id,
                                                   settle=SettleKind.REJECT.value))
                case SettleKind.RELEASE:
                    self._emit(out, dl.Release(tp=s.tp, ranges=ranges, now_ms=now_ms))
                case SettleKind.EXTEND:
                    deadline = now_ms + s.extend_ms
                    self._emit(out, dl.Extend(tp=s.tp, ranges=ranges, deadline_ms=deadline))
                    if remembered:
                        deadline = min(deadline, remembered)
            outcomes.append(SettleOutcome(index=index, ok=True, lock_lost=False,
                                          lock_deadline_ms=deadline))
        # Acks were applied at once (later items are fenced against them) and are written as
        # one delta per partition: nothing else can touch a record after its ack.
        for part, acked in acks.items():
            if acked:
                out.append(dl.Ack(tp=part.tp, ranges=_merge(acked)))
                # Remembered in the order replay applies the merged delta (recent_acks.py).
                for first, last, count in sorted(counts.get(part, ())):
                    self._acked.add(part.tp, first, last, consumer_id, count)
        for part in acks:
            self._advance(part, out)
        return outcomes, out

    def tick(self, now_ms: int) -> list[dl.Delta]:
        """Fire due timers: locks expired at the delivery limit and TTLs become DeadPending."""
        out: list[dl.Delta] = []
        for p in self._order:
            if p.timers and p.timers[0][0] <= now_ms:
                self._fire(p, now_ms, out)
        horizon = now_ms - self.config.lock_ms
        if len(self._seen) > 64:
            self._seen = {c: t for c, t in self._seen.items() if t >= horizon}
        return out

    # ---------------------------------------------------------------- dead letters, admin

    def dead_letter_jobs(self) -> list[DeadLetterJob]:
        """Every DEAD_PENDING record not in a pending dead-letter batch yet: the shell plans
        batches of them (`plan_dlq_batch`), writes each, then `dlq_batch_done`."""
        jobs = []
        batched = self._dlq.batched
        for p in self._order:
            for off in sorted(p.dead):
                if batched and (p.tp, off) in batched:
                    continue
                e = p.entries[off]
                jobs.append(DeadLetterJob(tp=p.tp, offset=off, reason=e.reason, attempts=e.count,
                                          first_delivery_ms=e.first_ms,
                                          last_delivery_ms=e.last_ms))
        return jobs

    # The exactly-once dead-letter protocol (node/queues/dlq_ledger.py): producer, batches.

    @property
    def dlq_producer(self) -> tuple[int, int] | None:
        """(producer id, epoch) every dead-letter batch of this queue is written with."""
        return self._dlq.producer

    def set_dlq_producer(self, producer_id: int, epoch: int) -> list[dl.Delta]:
        """Once per queue (its first dead letter); asserts no batch is pending."""
        out: list[dl.Delta] = []
        if self._dlq.producer != (producer_id, epoch):
            self._emit(out, dl.SetDlqProducer(producer_id=producer_id, epoch=epoch))
        return out

    def has_dead_letter_work(self) -> bool:
        """A dead-letter batch to write or a DEAD_PENDING record to plan (cheap: per tick)."""
        return bool(self._dlq.pending) or any(p.dead for p in self._order)

    def dlq_pending_count(self, dlq_topic: str, dlq_partition: int) -> int:
        """Batches pending on that DLQ partition; plan one only while < PENDING_BATCHES_MAX."""
        return self._dlq.pending_count(dlq_topic, dlq_partition)

    def dlq_batches(self) -> list[DlqBatchJob]:
        """Committed batches not known to be written, in the order to write them."""
        return self._dlq.batches()

    def plan_dlq_batch(self, dlq_topic: str, dlq_partition: int,
                       records: Sequence[tuple[TopicPartition, int]]) -> list[dl.Delta]:
        """The next batch of `dlq_partition`: these records (DEAD_PENDING, not batched yet;
        written in sorted order). Asserts the producer is set, at most BATCH_RECORDS_MAX records
        and fewer than PENDING_BATCHES_MAX batches pending there."""
        assert self._dlq.producer is not None, "plan_dlq_batch before set_dlq_producer"
        assert self._dlq.pending_count(dlq_topic, dlq_partition) < PENDING_BATCHES_MAX
        ordered = tuple(sorted(set(records)))
        assert 0 < len(ordered) <= BATCH_RECORDS_MAX, len(ordered)
        out: list[dl.Delta] = []
        self._emit(out, dl.DlqBatch(
            dlq_topic=dlq_topic, dlq_partition=dlq_partition,
            base_sequence=self._dlq.next_sequence.get((dlq_topic, dlq_partition), 0),
            records=ordered))
        return out

    def dlq_batch_done(self, batch: DlqBatchJob, written: bool) -> list[dl.Delta]:
        """`written`: the DLQ partition acknowledged the batch (appended now or earlier): its
        records still pending are done. Else the batch is abandoned (its topic is gone): its
        records are jobs again. Batches are done in `dlq_batches()` order (abandoned: last
        first)."""
        out: list[dl.Delta] = []
        self._emit(out, dl.DlqBatchDone(dlq_topic=batch.dlq_topic,
                                        dlq_partition=batch.dlq_partition,
                                        base_sequence=batch.base_sequence, written=written))
        if written:
            for tp in sorted({job.tp for job in batch.jobs}):
                self._advance(self._parts[tp], out)
        return out

    def dlq_resync(self, dlq_topic: str, dlq_partition: int,
                   next_sequence: int) -> list[dl.Delta]:
        """The DLQ partition expects `next_sequence` (< the first pending batch's base
        sequence): it lost the letters of [next_sequence, base) that it had acknowledged (data
        loss). Its pending batches are given up and planned again from `next_sequence`."""
        pending = [b for b in self._dlq.batches()
                   if (b.dlq_topic, b.dlq_partition) == (dlq_topic, dlq_partition)]
        assert pending and 0 <= next_sequence < pending[0].base_sequence, next_sequence
        out: list[dl.Delta] = []
        self._emit(out, dl.DlqResync(dlq_topic=dlq_topic, dlq_partition=dlq_partition,
                                     next_sequence=next_sequence,
                                     lost=pending[0].base_sequence - next_sequence))
        return out

    def dead_lettered(self, tp: TopicPartition, offsets: Iterable[int],
                      now_ms: int) -> list[dl.Delta]:
        """The DLQ write of these records committed: they are done. Others are ignored. (Kept
        for records written outside the batch protocol; the shell uses `dlq_batch_done`.)"""
        p = self._parts[tp]
        done = sorted({o for o in offsets if o in p.dead})
        out: list[dl.Delta] = []
        if done:
            self._emit(out, dl.DeadLettered(tp=tp, ranges=dl.ranges_of(done)))
            self._advance(p, out)
        return out

    def purge(self, now_ms: int, high_watermarks: Mapping[TopicPartition, int] | None = None
              ) -> tuple[int, list[dl.Delta]]:
        """Every record read so far (and, given high watermarks, up to them) is done, whatever
        its state; late settlements of purged records get LOCK_LOST. Returns how many records
        were dropped (records in the log between the read offset and the high watermark are
        counted by position, so compacted-away offsets count too)."""
        count = 0
        out: list[dl.Delta] = []
        for p in self._order:
            target = p.read_offset
            dropped = len(p.recs)
            hw = (high_watermarks or {}).get(p.tp, -1)
            if hw > target:
                dropped += hw - target
                target = hw
            if target > p.start:
                count += dropped
                self._emit(out, dl.Truncate(tp=p.tp, offset=target, cause="purged"))
                self._advance(p, out)
        return count, out

    def set_partitions(self, starts: Mapping[TopicPartition, int]) -> list[dl.Delta]:
        """Partitions added to the queue's topics (existing ones are left alone)."""
        new = tuple((tp, s) for tp, s in sorted(starts.items())
                    if tp not in self._parts)
        out: list[dl.Delta] = []
        if new:
            self._emit(out, dl.AddPartitions(starts=new))
        return out

    def set_config(self, config: QueueConfig) -> list[dl.Delta]:
        assert config.name == self.config.name, (config.name, self.config.name)
        out: list[dl.Delta] = []
        if config != self.config:
            self._emit(out, dl.SetConfig(config=config.to_dict()))
        return out

    def redrive_cursor(self, dlq_partition: int) -> int:
        """The DLQ offset below which this partition's dead letters were redriven."""
        return self._redrive.get(dlq_partition, 0)

    def set_redrive_cursor(self, dlq_partition: int, offset: int,
                           count: int) -> list[dl.Delta]:
        out: list[dl.Delta] = []
        self._emit(out, dl.RedriveCursor(dlq_partition=dlq_partition, offset=offset, count=count))
        return out

    # ---------------------------------------------------------------- queries

    def next_event_ms(self, now_ms: int) -> int | None:
        """When something may next become available or due (now_ms if already), else None.
        May be early (stale timers are hints); when it is <= now call acquire or tick."""
        best: int | None = None
        for p in self._order:
            ready = p.ready
            while ready:
                c = self._classify(p, ready[0], now_ms)
                if c == _NOT:
                    heapq.heappop(ready)
                    continue
                if c < 0 or c <= now_ms:
                    return now_ms
                self._retime(p, heapq.heappop(ready), c)
            timers, recs = p.timers, p.recs
            while timers and not any(o in recs for o in _offsets(timers[0][2])):
                heapq.heappop(timers)          # only done records: nothing will happen then
            if p.timers and (best is None or p.timers[0][0] < best):
                best = p.timers[0][0]
        return None if best is None else max(best, now_ms)

    def peek(self, max_messages: int, now_ms: int) -> list[Acquired]:
        """Records available now, without locking them; count = deliveries so far."""
        out: list[Acquired] = []
        remaining = max_messages
        for p in self._order:
            if remaining <= 0:
                break
            cands = set(p.ready)
            for t, _, payload in p.timers:
                if t <= now_ms:
                    cands.update(_offsets(payload))
            avail = sorted(o for o in cands if 0 <= self._classify(p, o, now_ms) <= now_ms)
            avail = avail[:remaining]
            if avail:
                remaining -= len(avail)
                out.append(Acquired(tp=p.tp, ranges=self._counted(p, avail), lock_deadline_ms=0))
        return out

    def stats(self, now_ms: int, high_watermarks: Mapping[TopicPartition, int]) -> QueueStats:
        """O(window) per partition: for admin and metrics, not for the message path."""
        parts = []
        oldest_ts: int | None = None
        total_depth = total_in_flight = 0
        for p in self._order:
            in_flight = waiting = dead = 0
            for off, e in p.entries.items():
                if e is _DONE:
                    continue
                if e.state == IN_FLIGHT:
                    if e.at > now_ms:
                        in_flight += 1
                    elif (e.count >= self.config.max_deliveries
                          or e.at + self._backoff(p.tp, off, e.count) > now_ms):
                        waiting += 1          # expired: its backoff (or the DLQ) first
                elif e.state == WAITING:
                    if e.at > now_ms:         # past its delay or backoff: available
                        waiting += 1
                else:
                    dead += 1
            hw = high_watermarks.get(p.tp, -1)
            unread = max(0, hw - p.read_offset) if hw >= 0 else 0
            dead_read = sum(1 for o in p.dead if o in p.recs)
            depth = max(0, len(p.recs) - dead_read) + unread
            self._clean_pending(p)
            if p.pending:
                ts = p.recs[p.pending[0]].timestamp_ms
                oldest_ts = ts if oldest_ts is None else min(oldest_ts, ts)
            total_depth += depth
            total_in_flight += in_flight
            parts.append(PartitionStats(topic=p.tp.topic, partition=p.tp.partition,
                                        start_offset=p.start, read_offset=p.read_offset,
                                        high_watermark=hw, depth=depth, in_flight=in_flight,
                                        waiting=waiting, dead_letter_pending=dead))
        dlq = self.config.dlq_topic
        dlq_depth = sum(max(0, hw - self._redrive.get(tp.partition, 0))
                        for tp, hw in high_watermarks.items() if tp.topic == dlq)
        horizon = now_ms - self.config.lock_ms
        c = self.counters
        return QueueStats(
            depth=total_depth, in_flight=total_in_flight,
            oldest_unacked_age_ms=0 if oldest_ts is None else max(0, now_ms - oldest_ts),
            acked_total=c["acked"], delivered_total=c["delivered"],
            redelivered_total=c["redelivered"], dead_lettered_total=c["dead_lettered"],
            expired_total=c["expired"], dlq_depth=dlq_depth, redriven_total=c["redriven"],
            consumers=sum(1 for t in self._seen.values() if t >= horizon),
            partitions=tuple(parts), now_ms=now_ms, deduplicated_total=c["duplicates"],
            dead_letters_lost_total=c["dlq_lost"])

    # ---------------------------------------------------------------- durability

    def apply(self, delta: dl.Delta) -> None:
        """Apply one delta (replay; the live methods apply their own through the same code)."""
        fn = self._apply_fns.get(type(delta))
        if fn is None:
            raise TypeError(f"not a queue delta: {delta!r}")
        fn(delta)

    def snapshot(self) -> dict[str, Any]:
        """The durable state as a JSON-able dict; consecutive equal states become ranges
        (node/queues/core_snapshot.py)."""
        return snapshot_of(self)

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> QueueCore:
        """Strict inverse of snapshot(): a malformed snapshot raises ValueError."""
        return restore_core(cls, snapshot)

    # ---------------------------------------------------------------- internals

    def _emit(self, out: list[dl.Delta], delta: dl.Delta) -> None:
        self._apply_fns[type(delta)](delta)
        out.append(delta)

    def _add_part(self, tp: TopicPartition, start: int) -> _Part:
        assert start >= 0, (tp, start)
        p = _Part(tp, start, self.config.key_ordered)
        self._parts[tp] = p
        self._order = sorted(self._parts.values(), key=lambda q: q.tp)
        return p

    def _timer(self, p: _Part, at: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(p.timers, (at, self._seq, payload))

    def _is_duplicate(self, rec: OfferedRecord, remember_only: bool = False) -> bool:
        """Dedup window: another record with this message id and a timestamp within the
        queue's dedup_window_ms (-1: off) was offered before (any partition of the queue). The
        first one seen is kept. The ids are volatile: after a restore they are rebuilt from the
        window below `start` the shell reads back (`remember_ids`) and from the records
        re-offered (`remember_only` for those that have a state; docs/queues.md)."""
        assert rec.message_id is not None
        window = self.config.dedup_window_ms
        if window < 0:
            return False
        ids = self._ids
        seen = ids.get(rec.message_id)
        if seen is not None and (remember_only or abs(rec.timestamp_ms - seen) <= window):
            return not remember_only
        ids[rec.message_id] = rec.timestamp_ms
        heap = self._id_times
        heapq.heappush(heap, (rec.timestamp_ms, rec.message_id))
        self._id_ts_max = max(self._id_ts_max, rec.timestamp_ms)
        horizon = self._id_ts_max - window
        while heap and (heap[0][0] < horizon or len(heap) > DEDUP_IDS_MAX):
            ts, old = heapq.heappop(heap)
            if ids.get(old) == ts:
                del ids[old]
        return False

    def _retime(self, p: _Part, off: int, at: int) -> None:
        """Look at a record again when it becomes available, or when its TTL passes if that is
        sooner (so TTL dead-letters at the first tick after it, however the record waits)."""
        ttl = self.config.ttl_ms
        if ttl:
            rec = p.recs.get(off)
            if rec is not None:
                at = min(at, rec.timestamp_ms + ttl + 1)
        self._timer(p, at, off)

    def _ttl_timers(self, p: _Part, ranges: dl.Ranges) -> None:
        """Records unlocked (nack, release): their TTL counts again."""
        ttl = self.config.ttl_ms
        if not ttl:
            return
        for off in _offsets(ranges):
            rec = p.recs.get(off)
            if rec is not None:
                self._timer(p, rec.timestamp_ms + ttl + 1, off)

    def _backoff(self, tp: TopicPartition, offset: int, count: int) -> int:
        cfg = self.config
        return backoff_ms(initial_ms=cfg.backoff_initial_ms, max_ms=cfg.backoff_max_ms,
                          multiplier=cfg.backoff_multiplier, topic=tp.topic,
                          partition=tp.partition, offset=offset, count=count)

    def _classify(self, p: _Part, off: int, now_ms: int) -> int:
        """_NOT (done, dead, locked, not the head of its key), _TTL / _MAX (must be dead-lettered
        now), or the time (>= 0) it is available at."""
        rec = p.recs.get(off)
        if rec is None:
            return _NOT
        e = p.entries.get(off)
        cfg = self.config
        if e is None:
            at = rec.deliver_at_ms or rec.timestamp_ms + cfg.delay_ms
        elif e.state == WAITING:
            at = e.at
        elif e.state == IN_FLIGHT:
            if e.at > now_ms:
                return _NOT
            if e.count >= cfg.max_deliveries:
                return _MAX
            at = e.at + self._backoff(p.tp, off, e.count)
        else:
            return _NOT
        if cfg.ttl_ms and rec.timestamp_ms + cfg.ttl_ms < now_ms:
            return _TTL
        if p.keys is not None and rec.key is not None and p.keys[rec.key][0] != off:
            return _NOT
        return at if at > 0 else 0

    def _take(self, p: _Part, want: int, now_ms: int, got: list[int],
              out: list[dl.Delta]) -> int:
        ready = p.ready
        k = 0
        last = got[-1] if got else -1
        prev = -1
        ttl_dead: list[int] = []
        max_dead: list[int] = []
        while k < want and ready:
            off = heapq.heappop(ready)
            if off in (last, prev):
                continue
            prev = off
            c = self._classify(p, off, now_ms)
            if c < 0:
                if c == _TTL:
                    ttl_dead.append(off)
                elif c == _MAX:
                    max_dead.append(off)
                continue
            if c > now_ms:
                self._retime(p, off, c)
                continue
            got.append(off)
            last = off
            k += 1
        self._dead_now(p, ttl_dead, max_dead, now_ms, out)
        return k

    def _fire(self, p: _Part, now_ms: int, out: list[dl.Delta]) -> None:
        timers, ready = p.timers, p.ready
        ttl_dead: set[int] = set()
        max_dead: set[int] = set()
        while timers and timers[0][0] <= now_ms:
            _, _, payload = heapq.heappop(timers)
            for off in _offsets(payload):
                c = self._classify(p, off, now_ms)
                if c >= 0:
                    if c <= now_ms:
                        heapq.heappush(ready, off)
                    else:
                        self._retime(p, off, c)
                elif c == _TTL:
                    ttl_dead.add(off)
                elif c == _MAX:
                    max_dead.add(off)
        self._dead_now(p, sorted(ttl_dead), sorted(max_dead), now_ms, out)

    def _dead_now(self, p: _Part, ttl_dead: list[int], max_dead: list[int], now_ms: int,
                  out: list[dl.Delta]) -> None:
        if ttl_dead:
            self._emit(out, dl.DeadPending(tp=p.tp, ranges=dl.ranges_of(ttl_dead),
                                           reason=REASON_EXPIRED, now_ms=now_ms))
        if max_dead:
            self._emit(out, dl.DeadPending(tp=p.tp, ranges=dl.ranges_of(max_dead),
                                           reason=REASON_MAX_DELIVERIES, now_ms=now_ms))

    def _holds(self, p: _Part, consumer_id: str, s: Settle) -> bool:
        entries = p.entries
        count = s.delivery_count
        for off in range(s.first, s.last + 1):
            e = entries.get(off)
            if (e is None or e is _DONE or e.state != IN_FLIGHT or e.count != count
                    or e.holder != consumer_id):
                return False
        return True

    def _counted(self, p: _Part, offsets: list[int]) -> tuple[tuple[int, int, int], ...]:
        """Sorted offsets -> (first, last, delivery_count) ranges."""
        out: list[tuple[int, int, int]] = []
        entries = p.entries
        first = last = count = -1
        for off in offsets:
            e = entries.get(off)
            c = 0 if e is None or e is _DONE else e.count
            if off == last + 1 and c == count:
                last = off
                continue
            if first >= 0:
                out.append((first, last, count))
            first = last = off
            count = c
        if first >= 0:
            out.append((first, last, count))
        return tuple(out)

    def _clean_pending(self, p: _Part) -> None:
        pending, recs = p.pending, p.recs
        while pending and pending[0] not in recs:
            heapq.heappop(pending)

    def _advance(self, p: _Part, out: list[dl.Delta]) -> None:
        """Move `start` past done records and gaps (the lowest offered record not done)."""
        self._clean_pending(p)
        new = p.pending[0] if p.pending else p.read_offset
        if new > p.start:
            self._emit(out, dl.Advance(tp=p.tp, start=new))

    def _retried(self, p: _Part, consumer_id: str, s: Settle,
                 this_call: Iterable[tuple[int, int, int]]) -> tuple[dl.Ranges, int] | None:
        """A settlement not held as a whole: (the parts still held by (consumer, count), the
        earliest remembered EXTEND deadline or 0), if every other offset of it was settled the
        same way by that consumer at that delivery (recent_acks.py; for acks also earlier in
        this call: `this_call`); else None (LOCK_LOST)."""
        count = s.delivery_count
        if s.kind is SettleKind.ACK:
            done: Mapping[int, int] = dict.fromkeys(
                self._acked.acked(p.tp, s.first, s.last, consumer_id, count), 0)
            for first, last, c in this_call:
                if c == count and first <= s.last and s.first <= last:
                    done = {**done, **dict.fromkeys(
                        range(max(first, s.first), min(last, s.last) + 1), 0)}
        else:
            done = self._settled.settled(p.tp, s.first, s.last, consumer_id, count,
                                         s.kind.value)
        if not done:
            return None
        held = []
        entries = p.entries
        for off in range(s.first, s.last + 1):
            if off in done:
                continue
            e = entries.get(off)
            if (e is None or e is _DONE or e.state != IN_FLIGHT or e.count != count
                    or e.holder != consumer_id):
                return None
            held.append(off)
        return dl.ranges_of(held), min(done.values())


def _invalid(s: Settle, known: bool) -> str:
    if not known:
        return f"{s.tp.topic}/{s.tp.partition} is not a partition of this queue"
    if not 0 <= s.first <= s.last or s.last - s.first >= MAX_IN_FLIGHT_MAX:
        return f"bad range [{s.first}, {s.last}]"
    if s.delivery_count < 1:
        return f"bad delivery_count {s.delivery_count}"
    if s.kind is SettleKind.REJECT and len(s.reason) > dl.REASON_CHARS_MAX:
        return f"reason longer than {dl.REASON_CHARS_MAX} characters"
    if s.kind is SettleKind.EXTEND and not 1 <= s.extend_ms <= LOCK_MS_MAX:
        return f"extend_ms must be within 1..{LOCK_MS_MAX}"
    return ""


def _merge(ranges: list[tuple[int, int]]) -> dl.Ranges:
    ranges.sort()
    out: list[tuple[int, int]] = []
    for first, last in ranges:
        if out and out[-1][1] + 1 == first:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return tuple(out)
