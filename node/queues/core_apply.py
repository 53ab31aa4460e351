"""How each delta changes a queue core's state: one `_apply_*` per delta kind (a mixin of
`QueueCore`, node/queues/core.py).

The live methods of the core emit deltas through these same functions (`_emit`), and replay
applies the logged deltas through them (`apply`), so a replayed core has the live one's state:
each function is a pure function of (state, delta). Sans-I/O.
"""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from typing import Any

from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues import deltas as dl
from tidelog.node.queues.config import QueueConfig
from tidelog.node.queues.dlq_ledger import DlqLedger
from tidelog.node.queues.model import DeadLetterJob
from tidelog.node.queues.part import DEAD, IN_FLIGHT, REASON_EXPIRED, WAITING
from tidelog.node.queues.part import DONE as _DONE
from tidelog.node.queues.part import Entry as _Entry
from tidelog.node.queues.part import Part as _Part
from tidelog.node.queues.part import offsets as _offsets
from tidelog.node.queues.recent_acks import EXTEND, NACK, RELEASE, RecentAcks, RecentSettles

__all__ = ["Appliers"]


class Appliers:
    """The state these functions change, owned by QueueCore (which sets it up)."""

    config: QueueConfig
    counters: dict[str, int]
    _parts: dict[TopicPartition, _Part]
    _order: list[_Part]
    _redrive: dict[int, int]
    _dlq: DlqLedger
    _acked: RecentAcks
    _settled: RecentSettles

    # Provided by QueueCore: timers, backoff, partitions.
    def _timer(self, p: _Part, at: int, payload: Any) -> None:
        raise NotImplementedError

    def _ttl_timers(self, p: _Part, ranges: dl.Ranges) -> None:
        raise NotImplementedError

    def _backoff(self, tp: TopicPartition, offset: int, count: int) -> int:
        raise NotImplementedError

    def _add_part(self, tp: TopicPartition, start: int) -> _Part:
        raise NotImplementedError

    def _done(self, p: _Part, off: int) -> bool:
        """Mark one record DONE; False when it already was."""
        e = p.entries.get(off)
        if e is _DONE:
            return False
        if e is not None and e.state == DEAD:
            del p.dead[off]
        p.entries[off] = _DONE
        rec = p.recs.pop(off, None)
        if rec is not None and rec.key is not None and p.keys is not None:
            self._key_done(p, off, rec.key)
        return True

    def _key_done(self, p: _Part, off: int, key: bytes) -> None:
        assert p.keys is not None
        queue = p.keys.get(key)
        if queue is None:
            return
        if queue[0] == off:
            queue.popleft()
            if queue:
                heapq.heappush(p.ready, queue[0])
            else:
                del p.keys[key]
        else:
            with contextlib.suppress(ValueError):
                queue.remove(off)

    def _apply_deliver(self, d: dl.Deliver) -> None:
        p = self._parts[d.tp]
        entries = p.entries
        holder, now, deadline = d.consumer_id, d.now_ms, d.deadline_ms
        delivered = redelivered = 0
        for first, last in d.ranges:
            for off in range(first, last + 1):
                e = entries.get(off)
                if e is None:
                    entries[off] = _Entry(IN_FLIGHT, holder, 1, deadline, now, now, "")
                else:
                    assert e is not _DONE and e.state != DEAD, (d.tp, off)
                    e.state = IN_FLIGHT
                    e.holder = holder
                    e.count += 1
                    e.at = deadline
                    e.last_ms = now
                    if not e.first_ms:
                        e.first_ms = now
                    if e.count > 1:
                        redelivered += 1
                delivered += 1
        self.counters["delivered"] += delivered
        self.counters["redelivered"] += redelivered
        self._timer(p, deadline, d.ranges)

    def _apply_ack(self, d: dl.Ack) -> None:
        p = self._parts[d.tp]
        remember = self._acked.add
        entries = p.entries
        for first, last in d.ranges:
            # Remember (holder, count) runs before the records become DONE, as settle does.
            start, run = first, None
            for off in range(first, last + 1):
                e = entries.get(off)
                key = (e.holder, e.count) if e is not None and e is not _DONE \
                    and e.state == IN_FLIGHT else None
                if key != run:
                    if run is not None:
                        remember(p.tp, start, off - 1, *run)
                    start, run = off, key
            if run is not None:
                remember(p.tp, start, last, *run)
            self._ack(p, first, last)

    def _ack(self, p: _Part, first: int, last: int) -> None:
        n = 0
        for off in range(first, last + 1):
            n += self._done(p, off)
        self.counters["acked"] += n

    def _remember(self, p: _Part, ranges: dl.Ranges, kind: int, deadline: int = 0) -> None:
        """Settled by the records' holder at their delivery count (before the delta changes
        them): runs of equal (holder, count) into RecentSettles, so a retry answers OK."""
        entries, remember = p.entries, self._settled.add
        for first, last in ranges:
            start, run = first, None
            for off in range(first, last + 1):
                e = entries.get(off)
                key = (e.holder, e.count) if e is not None and e is not _DONE \
                    and e.state == IN_FLIGHT and e.holder else None
                if key != run:
                    if run is not None:
                        remember(p.tp, start, off - 1, *run, kind, deadline)
                    start, run = off, key
            if run is not None:
                remember(p.tp, start, last, *run, kind, deadline)

    def _apply_nack(self, d: dl.Nack) -> None:
        p = self._parts[d.tp]
        self._remember(p, d.ranges, NACK)
        for off in _offsets(d.ranges):
            e = p.entries[off]
            assert e is not _DONE and e.state == IN_FLIGHT, (d.tp, off)
            e.state = WAITING
            e.holder = ""
            e.at = d.now_ms + (d.delay_ms if d.delay_ms >= 0
                               else self._backoff(d.tp, off, e.count))
            if d.delay_ms < 0:
                self._timer(p, e.at, off)
        if d.delay_ms >= 0:
            self._timer(p, d.now_ms + d.delay_ms, d.ranges)
        self._ttl_timers(p, d.ranges)

    def _apply_release(self, d: dl.Release) -> None:
        p = self._parts[d.tp]
        self._remember(p, d.ranges, RELEASE)
        for off in _offsets(d.ranges):
            e = p.entries[off]
            assert e is not _DONE and e.state == IN_FLIGHT, (d.tp, off)
            e.state = WAITING
            e.holder = ""
            e.count = max(0, e.count - 1)
            e.at = d.now_ms
        self._timer(p, d.now_ms, d.ranges)
        self._ttl_timers(p, d.ranges)

    def _apply_extend(self, d: dl.Extend) -> None:
        p = self._parts[d.tp]
        self._remember(p, d.ranges, EXTEND, d.deadline_ms)
        for off in _offsets(d.ranges):
            e = p.entries[off]
            assert e is not _DONE and e.state == IN_FLIGHT, (d.tp, off)
            e.at = d.deadline_ms
        self._timer(p, d.deadline_ms, d.ranges)

    def _apply_dead(self, d: dl.DeadPending) -> None:
        p = self._parts[d.tp]
        if d.consumer_id:      # a REJECT, or a NACK at the limit
            self._remember(p, d.ranges, d.settle)
        n = 0
        for off in _offsets(d.ranges):
            e = p.entries.get(off)
            if e is None:
                p.entries[off] = _Entry(DEAD, "", 0, 0, 0, 0, d.reason)
            else:
                assert e is not _DONE, (d.tp, off)
                e.state = DEAD
                e.holder = ""
                e.at = 0
                e.reason = d.reason
            p.dead[off] = None
            n += 1
        if d.reason == REASON_EXPIRED:
            self.counters["expired"] += n

    def _apply_dead_lettered(self, d: dl.DeadLettered) -> None:
        p = self._parts[d.tp]
        n = 0
        for off in _offsets(d.ranges):
            if off in p.dead:
                n += self._done(p, off)
        self.counters["dead_lettered"] += n

    def _apply_discard(self, d: dl.Discard) -> None:
        p = self._parts[d.tp]
        n = 0
        for off in _offsets(d.ranges):
            n += self._done(p, off)
        self.counters["duplicates"] += n

    def _apply_advance(self, d: dl.Advance) -> None:
        p = self._parts[d.tp]
        old, new = p.start, d.start
        if new <= old:
            return
        entries = p.entries
        if new - old <= len(entries):
            for off in range(old, new):
                e = entries.pop(off, None)
                assert e is None or e is _DONE, (d.tp, off)
        else:
            assert all(e is _DONE for o, e in entries.items() if o < new), d
            p.entries = {o: e for o, e in entries.items() if o >= new}
        p.start = new
        p.read_offset = max(p.read_offset, new)

    def _apply_truncate(self, d: dl.Truncate) -> None:
        p = self._parts[d.tp]
        old, new = p.start, d.offset
        if new <= old:
            return
        p.entries = {o: e for o, e in p.entries.items() if o >= new}
        p.dead = {o: None for o in p.dead if o >= new}
        dropped_keys: set[bytes] = set()
        if new - old <= len(p.recs):
            for off in range(old, new):
                rec = p.recs.pop(off, None)
                if rec is not None and rec.key is not None:
                    dropped_keys.add(rec.key)
        else:
            keep = {}
            for off, rec in p.recs.items():
                if off >= new:
                    keep[off] = rec
                elif rec.key is not None:
                    dropped_keys.add(rec.key)
            p.recs = keep
        if p.keys is not None:
            for key in dropped_keys:
                queue = p.keys.get(key)
                if queue is None:
                    continue
                while queue and queue[0] < new:
                    queue.popleft()
                if queue:
                    heapq.heappush(p.ready, queue[0])
                else:
                    del p.keys[key]
        p.start = new
        p.read_offset = max(p.read_offset, new)

    def _apply_add_partitions(self, d: dl.AddPartitions) -> None:
        for tp, start in d.starts:
            if tp not in self._parts:
                self._add_part(tp, start)

    def _apply_set_config(self, d: dl.SetConfig) -> None:
        new = QueueConfig.from_dict(d.config)
        old, self.config = self.config, new
        for p in self._order:
            if new.key_ordered != old.key_ordered:
                p.keys = None
                if new.key_ordered:
                    p.keys = {}
                    for off in sorted(p.recs):
                        key = p.recs[off].key
                        if key is not None:
                            p.keys.setdefault(key, deque()).append(off)
            # Delays, backoff, limits or ordering changed: every record is looked at again at
            # the next tick or acquire (a timer due at once, so tick dead-letters what the new
            # limit makes dead, as a replayed core, whose timers are all fresh, would).
            if p.recs:
                self._timer(p, 0, dl.ranges_of(sorted(p.recs)))
            if new.ttl_ms and new.ttl_ms != old.ttl_ms:
                for off, rec in p.recs.items():     # a new TTL: each record's own deadline
                    self._timer(p, rec.timestamp_ms + new.ttl_ms + 1, off)

    def _apply_redrive(self, d: dl.RedriveCursor) -> None:
        self._redrive[d.dlq_partition] = d.offset
        self.counters["redriven"] += d.count

    def _apply_dlq_producer(self, d: dl.SetDlqProducer) -> None:
        self._dlq.apply_producer(d)

    def _apply_dlq_batch(self, d: dl.DlqBatch) -> None:
        jobs = []
        for tp, off in d.records:
            p = self._parts[tp]
            assert off in p.dead, (tp, off)
            e = p.entries[off]
            jobs.append(DeadLetterJob(tp=tp, offset=off, reason=e.reason, attempts=e.count,
                                      first_delivery_ms=e.first_ms, last_delivery_ms=e.last_ms))
        self._dlq.apply_batch(d, tuple(jobs))

    def _apply_dlq_resync(self, d: dl.DlqResync) -> None:
        self._dlq.apply_resync(d)
        self.counters["dlq_lost"] += d.lost

    def _apply_dlq_batch_done(self, d: dl.DlqBatchDone) -> None:
        batch = self._dlq.apply_done(d)
        if not d.written:
            return
        n = 0
        for job in batch.jobs:
            p = self._parts[job.tp]
            if job.offset in p.dead:       # not purged or lost meanwhile
                n += self._done(p, job.offset)
        self.counters["dead_lettered"] += n
