"""The queue checker: judges a queue run offline from its two histories (STYLE habit 16).

Inputs: the run's log `History` (the producers' sends and the final read of the queue's topic)
and its `QueueHistory` (every delivery, every settlement and its outcome, the drain, the whole
dead-letter topic). The unit is a *record*: one (topic, partition, offset) of the queue's topic.
A record is judged when its send was acknowledged, when the final read holds it, or when a
consumer was given it (only committed records are delivered, so each of these must be done by
the end of a drained run).

The claims, one check each:

- `queue-integrity`: every value delivered or dead-lettered decodes, names an invoked send,
  carries its key, and is the value that position holds; every dead letter names its source.
- `queue-lost`: every judged record ends *finished*: acked by a consumer (an ack answered ok, or
  one that may have been applied, see "ambiguous answers", and was followed by no delivery of
  the record) or in the dead-letter topic. Judged
  only when the queue drained and the whole DLQ was read (UNKNOWN otherwise: unfinished is not
  lost).
- `queue-double-finished`: no record is finished twice: at most one of {an ack answered ok, a
  copy in the DLQ} (two ok acks, an ok ack and a dead letter, two dead letters).
- `queue-redelivered-after-finish`: after an ok ack (or reject, or a nack at the delivery limit)
  no delivery of the same record follows: none with a higher delivery count, none whose receive
  began after the settlement was answered. ("No acked message is delivered again.")
- `queue-duplicate-deliveries` (INFO): records given out more than once; at-least-once allows it.
- `queue-locks`: no two valid locks of one record overlap, and in key-ordered mode no two of one
  key. A lock is valid from its delivery until its deadline or its first settlement answered ok,
  whichever is first. A settlement that may have been applied counts as ending the lock when it
  was invoked. Every bound is taken on the side that can only *shorten* a lock (start = receive
  returned, end = settlement invoked), so an overlap found is a real one; `clock_slack_ms`
  absorbs the clocks' granularity.
- `queue-key-order` (key-ordered mode): per (partition, key), a record is delivered only after
  every earlier record of its key was finished (acked, rejected, or dead at the delivery limit:
  the earliest such settlement's invocation is a lower bound on when it finished), and the acks
  answered ok come in offset order (an ack of o2 answered before the ack of o1 < o2 was invoked
  is out of order). Predecessors whose finishing time nobody saw (in the DLQ by an unrecorded
  route) are skipped.
- `queue-settlements`, `queue-dead-letters` (INFO): outcomes per action; dead letters per reason.

Ambiguous answers. An `unknown` outcome may or may not have been applied. So may a `LOCK_LOST`
answer: the client sends a Settle again when its reply was lost (a coordinator killed after
committing), and the retry finds the record already settled (client/queue.py says so). With
`lock_lost_may_be_applied` (the default) a LOCK_LOST settlement counts like an unknown one
wherever that is the conservative reading (it may have finished the record, it may have ended
the lock); it never counts as an ok answer (double-finish and redelivery use ok answers only).
Set it False against a server that answers a retried settlement idempotently.

No vacuous pass: a history with no queue, no acknowledged send, no consumer ack (or, in
key-ordered mode, no key with two records delivered) is VACUOUS, as in `checker.py`.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from tidelog.chaos.history import CorruptValue, FinalRead, History, decode_value
from tidelog.chaos.index import HistoryIndex, MalformedHistory, SendId
from tidelog.chaos.queue_history import (
    Action,
    DeadLetter,
    DlqRead,
    QueueCoordinator,
    QueueDelivery,
    QueueDrained,
    QueueHistory,
    QueueSettlement,
    QueueStarted,
    SettleResult,
)
from tidelog.chaos.results import EXAMPLES_MAX, RunVerdict, Verdict

__all__ = [
    "QueueCheckName",
    "QueueCheckResult",
    "QueueChecker",
    "QueueCheckerConfig",
    "QueueResults",
    "check_queue",
    "queue_results_to_dict",
    "render_queue_summary",
]

Pos = tuple[str, int, int]  # (topic, partition, offset)


class QueueCheckName(enum.Enum):
    INTEGRITY = "queue-integrity"
    LOST = "queue-lost"
    DOUBLE_FINISHED = "queue-double-finished"
    REDELIVERED = "queue-redelivered-after-finish"
    DUPLICATES = "queue-duplicate-deliveries"
    LOCKS = "queue-locks"
    KEY_ORDER = "queue-key-order"
    SETTLEMENTS = "queue-settlements"
    DEAD_LETTERS = "queue-dead-letters"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueCheckerConfig:
    # Two clocks' readings within this of each other are not taken as an ordering.
    clock_slack_ms: float = 20.0
    examples_max: int = EXAMPLES_MAX
    # A LOCK_LOST answer may be a retry's answer to a settlement that was applied (see above).
    lock_lost_may_be_applied: bool = True

    def __post_init__(self) -> None:
        if self.clock_slack_ms < 0:
            raise ValueError("clock_slack_ms must be >= 0")
        if not 0 <= self.examples_max <= EXAMPLES_MAX:
            raise ValueError(f"examples_max must be within 0..{EXAMPLES_MAX}")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueCheckResult:
    name: QueueCheckName
    verdict: Verdict
    counts: tuple[tuple[str, int], ...]
    examples: tuple[str, ...] = ()

    def count(self, label: str) -> int:
        return dict(self.counts)[label]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueResults:
    queue: str
    key_ordered: bool
    records: int  # judged
    acked_sends: int
    consumer_acked: int  # records with an ack answered ok
    dead_lettered: int  # records with a copy in the DLQ
    lost: int
    double_finished: int
    redelivered: int
    duplicate_deliveries: int  # records delivered more than once
    extra_deliveries: int
    lock_overlaps: int
    key_order_violations: int
    coordinator_changes: int
    checks: tuple[QueueCheckResult, ...]
    vacuous: tuple[str, ...] = ()

    @property
    def verdict(self) -> RunVerdict:
        if any(c.verdict is Verdict.FAIL for c in self.checks):
            return RunVerdict.INVALID
        return RunVerdict.VACUOUS if self.vacuous else RunVerdict.VALID

    @property
    def failed_checks(self) -> tuple[QueueCheckName, ...]:
        return tuple(c.name for c in self.checks if c.verdict is Verdict.FAIL)

    def check(self, name: QueueCheckName) -> QueueCheckResult:
        for c in self.checks:
            if c.name is name:
                return c
        raise KeyError(name)


class QueueChecker:
    def __init__(self, config: QueueCheckerConfig | None = None) -> None:
        self.config = config or QueueCheckerConfig()

    def check(self, history: History, queue_history: QueueHistory) -> QueueResults:
        maybe = {SettleResult.UNKNOWN} | (
            {SettleResult.LOCK_LOST} if self.config.lock_lost_may_be_applied else set())
        ix = _QueueIndex.build(history, queue_history, maybe_applied=frozenset(maybe))
        slack, ex = self.config.clock_slack_ms, self.config.examples_max
        lost = _lost(ix, ex)
        double = _double_finished(ix, ex)
        redelivered = _redelivered(ix, slack, ex)
        dups = _duplicates(ix)
        locks = _locks(ix, slack, ex)
        order = _key_order(ix, slack, ex)
        checks = (_integrity(ix, ex), lost, double, redelivered, dups, locks, order,
                  _settlements(ix), _dead_letters(ix))
        return QueueResults(
            queue=ix.started.queue if ix.started else "",
            key_ordered=bool(ix.started and ix.started.key_ordered),
            records=len(ix.judged()),
            acked_sends=len(ix.log.acks),
            consumer_acked=sum(1 for r in ix.records.values() if r.ok_acks()),
            dead_lettered=sum(1 for r in ix.records.values() if r.dead),
            lost=lost.count("lost"),
            double_finished=double.count("double-finished"),
            redelivered=redelivered.count("redelivered"),
            duplicate_deliveries=dups.count("delivered-more-than-once"),
            extra_deliveries=dups.count("extra-deliveries"),
            lock_overlaps=locks.count("record-overlaps") + locks.count("key-overlaps"),
            key_order_violations=order.count("delivered-early") + order.count("acks-out-of-order"),
            coordinator_changes=max(0, len(ix.coordinators) - 1),
            checks=checks,
            vacuous=tuple(_vacuous(ix)),
        )


def check_queue(history: History, queue_history: QueueHistory,
                config: QueueCheckerConfig | None = None) -> QueueResults:
    return QueueChecker(config).check(history, queue_history)


# --- the index ----------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Record:
    pos: Pos
    key: str | None = None
    value: str | None = None  # what the log says the position holds (ack or final read)
    sid: SendId | None = None
    acked: bool = False  # its producer heard an ack
    in_log: bool = False  # the final read holds it
    deliveries: list[QueueDelivery] = field(default_factory=list)
    settlements: list[tuple[QueueSettlement, QueueDelivery]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def ok_acks(self) -> list[QueueSettlement]:
        return [s for s, _ in self.settlements
                if s.action is Action.ACK and s.result is SettleResult.OK]

    def maybe_acks(self, maybe: frozenset[SettleResult]) -> list[QueueSettlement]:
        """Acks not answered ok that may have been applied, and that no delivery followed (a
        receive begun after the answer that got the record shows the record was not done then,
        so that later delivery must be finished in its own right)."""
        return [s for s, _ in self.settlements if s.action is Action.ACK and s.result in maybe
                and not any(d.receive_invoked_ms > s.time_ms for d in self.deliveries)]


@dataclass(slots=True, kw_only=True)
class _QueueIndex:
    log: HistoryIndex
    # Answers after which the settlement may have been applied, besides OK.
    maybe_applied: frozenset[SettleResult] = frozenset({SettleResult.UNKNOWN})
    started: QueueStarted | None = None
    records: dict[Pos, _Record] = field(default_factory=dict)
    deliveries: list[QueueDelivery] = field(default_factory=list)
    # (consumer, delivery) -> its settlements
    settled: dict[tuple[str, int], list[QueueSettlement]] = field(
        default_factory=lambda: defaultdict(list))
    settlements: list[QueueSettlement] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    drained: QueueDrained | None = None
    dlq_read: DlqRead | None = None
    coordinators: list[str | None] = field(default_factory=list)  # each change
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def build(cls, history: History, queue_history: QueueHistory, *,
              maybe_applied: frozenset[SettleResult]) -> _QueueIndex:
        ix = cls(log=HistoryIndex.build(history), maybe_applied=maybe_applied)
        for event in queue_history:
            if isinstance(event, QueueStarted):
                if ix.started is not None:
                    raise MalformedHistory("two queue_started events")
                ix.started = event
        topic = ix.started.topics[0] if ix.started else ""
        ix._add_log(topic)
        by_delivery: dict[tuple[str, int], QueueDelivery] = {}
        for event in queue_history:
            match event:
                case QueueDelivery():
                    ident = (event.consumer, event.delivery)
                    if ident in by_delivery:
                        raise MalformedHistory(f"delivery {ident} recorded twice")
                    by_delivery[ident] = event
                    ix.deliveries.append(event)
                    ix._add_delivery(event)
                case QueueSettlement():
                    ident = (event.consumer, event.delivery)
                    d = by_delivery.get(ident)
                    if d is None or (d.topic, d.partition, d.offset) != _pos(event):
                        raise MalformedHistory(f"settlement of {ident} at {_where(_pos(event))} "
                                               "settles no recorded delivery there")
                    ix.settled[ident].append(event)
                    ix.settlements.append(event)
                    ix._record(_pos(event)).settlements.append((event, d))
                case DeadLetter():
                    ix.dead.append(event)
                    ix._add_dead(event)
                case QueueDrained():
                    ix.drained = event
                case DlqRead():
                    ix.dlq_read = event
                case QueueCoordinator():
                    if not ix.coordinators or ix.coordinators[-1] != event.node:
                        ix.coordinators.append(event.node)
                case QueueStarted():
                    pass
        ix.coordinators = [c for c in ix.coordinators if c is not None]
        ix.coordinators = [c for i, c in enumerate(ix.coordinators)
                           if i == 0 or ix.coordinators[i - 1] != c]
        return ix

    def judged(self) -> list[_Record]:
        return [r for r in self.records.values() if r.acked or r.in_log or r.deliveries]

    def lock_end(self, d: QueueDelivery) -> float:
        """The earliest the delivery's lock can have ended (see the module docstring)."""
        ends = [s.invoked_ms for s in self.settled.get((d.consumer, d.delivery), ())
                if s.result is SettleResult.OK or s.result in self.maybe_applied]
        return min([d.deadline_run_ms, *ends])

    def _record(self, pos: Pos) -> _Record:
        r = self.records.get(pos)
        if r is None:
            r = self.records[pos] = _Record(pos=pos)
        return r

    def _add_log(self, topic: str) -> None:
        for sid, ack in self.log.acks.items():
            invoked = self.log.invoked[sid]
            r = self._record((topic, ack.partition, ack.offset))
            r.acked, r.sid, r.key, r.value = True, sid, invoked.key, invoked.value
        for event in self.log.final.values():
            assert isinstance(event, FinalRead)
            for rec in event.records:
                r = self._record((topic, event.partition, rec.offset))
                r.in_log = True
                if r.value is None:
                    r.value, r.key = rec.value, rec.key
                    r.sid = self._send_of(rec.value)

    def _send_of(self, value: str) -> SendId | None:
        try:
            d = decode_value(value)
        except CorruptValue:
            return None
        sid = (d.producer, d.seq)
        return sid if sid in self.log.invoked else None

    def _check_value(self, what: str, pos: Pos, key: str | None, value: str) -> SendId | None:
        """Whether a value seen at `pos` is one a producer wrote there; problems are noted."""
        try:
            decoded = decode_value(value)
        except CorruptValue:
            self.problems["corrupt"].append(f"{what} at {_where(pos)}: value {value[:60]!r}")
            return None
        sid = (decoded.producer, decoded.seq)
        invoked = self.log.invoked.get(sid)
        if invoked is None:
            self.problems["phantom"].append(f"{what} at {_where(pos)} names {_sid(sid)}, never "
                                            "sent")
            return None
        if key is not None and invoked.key != key:
            self.problems["key-mismatch"].append(f"{what} at {_where(pos)}: {_sid(sid)} sent "
                                                 f"with key {invoked.key!r}, came with {key!r}")
        r = self.records.get(pos)
        if r is not None and r.value is not None and r.value != value:
            self.problems["value-mismatch"].append(
                f"{what} at {_where(pos)} is {_sid(sid)}, but the log holds "
                f"{_sid(r.sid) if r.sid else repr(r.value[:40])} there")
        ack = self.log.acks.get(sid)
        if ack is not None and self.started and (self.started.topics[0], ack.partition,
                                                 ack.offset) != pos:
            self.problems["value-mismatch"].append(
                f"{what} at {_where(pos)} is {_sid(sid)}, acked at p{ack.partition}@{ack.offset}")
        return sid

    def _add_delivery(self, d: QueueDelivery) -> None:
        pos = (d.topic, d.partition, d.offset)
        if self.started and d.topic not in self.started.topics:
            self.problems["foreign"].append(f"delivery at {_where(pos)}: not a topic of the "
                                            "queue")
        sid = self._check_value(f"delivery to {d.consumer}", pos, d.key, d.value)
        r = self._record(pos)
        r.deliveries.append(d)
        if r.value is None and sid is not None:
            r.value, r.sid, r.key = d.value, sid, d.key
        if r.key is None:
            r.key = d.key

    def _add_dead(self, dl: DeadLetter) -> None:
        where = f"dead letter {dl.partition}@{dl.offset}"
        if dl.source_topic and dl.source_partition >= 0 and dl.source_offset >= 0:
            pos: Pos | None = (dl.source_topic, dl.source_partition, dl.source_offset)
        else:
            self.problems["dlq-headers"].append(f"{where}: no source topic/partition/offset "
                                                "headers")
            sid = self._send_of(dl.value)
            ack = self.log.acks.get(sid) if sid else None
            pos = (self.started.topics[0], ack.partition, ack.offset) if (
                ack and self.started) else None
        if pos is None:
            self.problems["dlq-headers"].append(f"{where}: source unknown, value "
                                                f"{dl.value[:60]!r}")
            return
        if self.started and pos[0] not in self.started.topics:
            self.problems["foreign"].append(f"{where}: source {_where(pos)} not of the queue")
        self._check_value(where, pos, dl.key, dl.value)
        self._record(pos).dead.append(dl)


# --- the checks ---------------------------------------------------------------------------------


def _integrity(ix: _QueueIndex, ex: int) -> QueueCheckResult:
    """Every value delivered or dead-lettered is one its producer wrote at that position, with
    its key; every dead letter names its source."""
    kinds = ("corrupt", "phantom", "key-mismatch", "value-mismatch", "dlq-headers", "foreign")
    bad = [e for k in kinds for e in ix.problems.get(k, [])]
    return _result(QueueCheckName.INTEGRITY, failed=bool(bad),
                   counts=[(k, len(ix.problems.get(k, []))) for k in kinds],
                   examples=bad[:ex])


def _lost(ix: _QueueIndex, ex: int) -> QueueCheckResult:
    """Every judged record ends acked by a consumer (ok or unknown outcome) or in the DLQ."""
    judged = ix.judged()
    maybe = ix.maybe_applied
    unfinished = [r for r in judged if not (r.ok_acks() or r.maybe_acks(maybe) or r.dead)]
    only_maybe = [r for r in judged if not r.ok_acks() and r.maybe_acks(maybe) and not r.dead]
    by_lock_lost = sum(1 for r in only_maybe if all(s.result is SettleResult.LOCK_LOST
                                                    for s in r.maybe_acks(maybe)))
    counts = [("records", len(judged)), ("lost", len(unfinished)),
              ("finished-by-unknown-ack", len(only_maybe) - by_lock_lost),
              ("finished-by-lock-lost-ack", by_lock_lost)]
    if ix.drained is None or not ix.drained.drained:
        why = ix.drained.detail if ix.drained else "no drain phase"
        return QueueCheckResult(
            name=QueueCheckName.LOST, verdict=Verdict.UNKNOWN,
            counts=(("records", len(judged)), ("lost", 0), ("unfinished", len(unfinished))),
            examples=(f"cannot judge: the queue did not drain ({why})",
                      *(f"unfinished: {_describe_lost(r)}" for r in unfinished[:ex])))
    if ix.dlq_read is None or not ix.dlq_read.complete:
        why = ix.dlq_read.detail if ix.dlq_read else "never read"
        return QueueCheckResult(
            name=QueueCheckName.LOST, verdict=Verdict.UNKNOWN,
            counts=(("records", len(judged)), ("lost", 0), ("unfinished", len(unfinished))),
            examples=(f"cannot judge: the dead-letter topic was not read in full ({why})",
                      *(f"unfinished: {_describe_lost(r)}" for r in unfinished[:ex])))
    return _result(QueueCheckName.LOST, failed=bool(unfinished), counts=counts,
                   examples=[_describe_lost(r) for r in unfinished[:ex]])


def _describe_lost(r: _Record) -> str:
    origin = (f"{_sid(r.sid)} acked to its producer" if r.acked
              else f"{_sid(r.sid) if r.sid else 'a record'} in the log")
    if not r.deliveries:
        return f"{_where(r.pos)}: {origin}, never delivered, not acked, not in the DLQ"
    last = max(r.deliveries, key=lambda d: d.time_ms)
    outcomes = ", ".join(f"{s.action.value} {s.result.value} (count {d.delivery_count}, "
                         f"{s.consumer}, t={s.invoked_ms:.0f}ms)" for s, d in r.settlements)
    return (f"{_where(r.pos)}: {origin}, delivered {len(r.deliveries)}x (last: count "
            f"{last.delivery_count} to {last.consumer} at t={last.time_ms:.0f}ms), settlements: "
            f"{outcomes or 'none'}; no consumer ack, not in the DLQ")


def _double_finished(ix: _QueueIndex, ex: int) -> QueueCheckResult:
    """At most one of {an ack answered ok, a DLQ copy} per record."""
    bad = []
    for r in ix.records.values():
        acks, dead = r.ok_acks(), r.dead
        if len(acks) + len(dead) > 1:
            parts = [f"acked ok by {s.consumer} (count {s.delivery_count}) "
                     f"t={s.time_ms:.0f}ms" for s in acks]
            parts += [f"in the DLQ at {d.partition}@{d.offset} ({d.reason!r})" for d in dead]
            bad.append(f"{_where(r.pos)} {_sid(r.sid) if r.sid else ''}: " + "; ".join(parts))
    return _result(QueueCheckName.DOUBLE_FINISHED, failed=bool(bad),
                   counts=[("double-finished", len(bad)),
                           ("acked-and-dead", sum(1 for r in ix.records.values()
                                                  if r.ok_acks() and r.dead)),
                           ("dead-twice", sum(1 for r in ix.records.values()
                                              if len(r.dead) > 1))],
                   examples=bad[:ex])


def _finishing(ix: _QueueIndex, s: QueueSettlement, d: QueueDelivery) -> bool:
    """An ok settlement after which the record is done (acked, or on its way to the DLQ)."""
    if s.result is not SettleResult.OK:
        return False
    limit = ix.started.max_deliveries if ix.started else 0
    return (s.action in (Action.ACK, Action.REJECT)
            or (s.action is Action.NACK and limit > 0 and d.delivery_count >= limit))


def _redelivered(ix: _QueueIndex, slack: float, ex: int) -> QueueCheckResult:
    """No delivery of a record after an ok ack/reject/final nack of it: none with a higher
    delivery count (acquired after it), none whose receive began after the answer."""
    bad = []
    for r in ix.records.values():
        for s, d in r.settlements:
            if not _finishing(ix, s, d):
                continue
            later = [d2 for d2 in r.deliveries if d2 is not d and (
                d2.delivery_count > d.delivery_count
                or d2.receive_invoked_ms > s.time_ms + slack)]
            if later:
                d2 = later[0]
                bad.append(f"{_where(r.pos)}: {s.action.value} ok by {s.consumer} (count "
                           f"{d.delivery_count}, answered t={s.time_ms:.0f}ms), then delivered "
                           f"to {d2.consumer} with count {d2.delivery_count} at "
                           f"t={d2.time_ms:.0f}ms")
                break
    return _result(QueueCheckName.REDELIVERED, failed=bool(bad),
                   counts=[("redelivered", len(bad))], examples=bad[:ex])


def _duplicates(ix: _QueueIndex) -> QueueCheckResult:
    """Informational: at-least-once delivery allows a record to be given out again."""
    multi = [r for r in ix.records.values() if len(r.deliveries) > 1]
    counts = Counter(d.delivery_count for d in ix.deliveries)
    return QueueCheckResult(name=QueueCheckName.DUPLICATES, verdict=Verdict.INFO, counts=(
        ("deliveries", len(ix.deliveries)),
        ("delivered-more-than-once", len(multi)),
        ("extra-deliveries", sum(len(r.deliveries) - 1 for r in multi)),
        ("redeliveries", sum(n for c, n in counts.items() if c > 1)),
        ("max-delivery-count", max(counts, default=0)),
        ("never-delivered", sum(1 for r in ix.judged() if not r.deliveries))))


@dataclass(frozen=True, slots=True)
class _Lock:
    start: float
    end: float
    delivery: QueueDelivery


def _locks(ix: _QueueIndex, slack: float, ex: int) -> QueueCheckResult:
    """No record, and in key-ordered mode no key, holds two valid locks at once."""
    by_record: dict[Pos, list[_Lock]] = defaultdict(list)
    by_key: dict[tuple[str, int, str], list[_Lock]] = defaultdict(list)
    key_ordered = bool(ix.started and ix.started.key_ordered)
    for d in ix.deliveries:
        lock = _Lock(d.time_ms, ix.lock_end(d), d)
        if lock.end <= lock.start:  # settled before receive returned: proves no interval
            continue
        by_record[(d.topic, d.partition, d.offset)].append(lock)
        if key_ordered and d.key is not None:
            by_key[(d.topic, d.partition, d.key)].append(lock)
    record_bad = [f"record {_where(pos)}: {e}" for pos, locks in by_record.items()
                  for e in _overlaps(locks, slack)]
    key_bad = [f"key {key!r} of {topic}-{p}: {e}" for (topic, p, key), locks in by_key.items()
               for e in _overlaps(locks, slack)]
    return _result(QueueCheckName.LOCKS, failed=bool(record_bad or key_bad),
                   counts=[("locks", sum(len(v) for v in by_record.values())),
                           ("record-overlaps", len(record_bad)),
                           ("keys", len(by_key)), ("key-overlaps", len(key_bad))],
                   examples=(key_bad + record_bad)[:ex])


def _overlaps(locks: list[_Lock], slack: float) -> list[str]:
    out = []
    holder: _Lock | None = None
    for lock in sorted(locks, key=lambda x: x.start):
        if holder is not None and lock.start < holder.end - slack:
            a, b = holder.delivery, lock.delivery
            out.append(f"@{a.offset} locked by {a.consumer} (count {a.delivery_count}) "
                       f"t={holder.start:.0f}-{holder.end:.0f}ms while @{b.offset} was given to "
                       f"{b.consumer} (count {b.delivery_count}) at t={lock.start:.0f}ms")
        if holder is None or lock.end > holder.end:
            holder = lock
    return out


def _finish_bound(ix: _QueueIndex, r: _Record) -> float | None:
    """The earliest time the record can have become finished (None: nobody saw it finish)."""
    limit = ix.started.max_deliveries if ix.started else 0
    times = [s.invoked_ms for s, d in r.settlements if (
        s.result is SettleResult.OK or s.result in ix.maybe_applied) and (
        s.action in (Action.ACK, Action.REJECT)
        or (s.action is Action.NACK and limit > 0 and d.delivery_count >= limit))]
    times += [d.deadline_run_ms for d in r.deliveries if limit > 0 and d.delivery_count >= limit]
    return min(times, default=None)


def _key_order(ix: _QueueIndex, slack: float, ex: int) -> QueueCheckResult:
    """Key-ordered mode: a key's record is delivered only after its predecessors finished, and
    its acks answered ok are in offset order."""
    if not (ix.started and ix.started.key_ordered):
        return QueueCheckResult(name=QueueCheckName.KEY_ORDER, verdict=Verdict.UNKNOWN,
                                counts=(("delivered-early", 0), ("acks-out-of-order", 0)),
                                examples=("not a key-ordered queue",))
    streams: dict[tuple[str, int, str], list[_Record]] = defaultdict(list)
    for r in ix.records.values():
        if r.key is not None and (r.deliveries or r.acked or r.in_log):
            streams[(r.pos[0], r.pos[1], r.key)].append(r)
    early: list[str] = []
    unordered: list[str] = []
    for (topic, p, key), records in sorted(streams.items()):
        records.sort(key=lambda r: r.pos[2])
        finished_by: tuple[float, _Record] | None = None  # max finish bound among predecessors
        acked_from: tuple[float, _Record] | None = None  # max first-ok-ack invocation so far
        for r in records:
            for d in r.deliveries:
                if finished_by and d.time_ms < finished_by[0] - slack:
                    early.append(f"key {key!r} of {topic}-{p}: @{r.pos[2]} given to "
                                 f"{d.consumer} at t={d.time_ms:.0f}ms before @"
                                 f"{finished_by[1].pos[2]} finished (not before "
                                 f"t={finished_by[0]:.0f}ms)")
                    break
            acks = r.ok_acks()
            if acks and acked_from and min(a.time_ms for a in acks) < acked_from[0] - slack:
                unordered.append(f"key {key!r} of {topic}-{p}: ack of @{r.pos[2]} answered at "
                                 f"t={min(a.time_ms for a in acks):.0f}ms before the ack of @"
                                 f"{acked_from[1].pos[2]} was sent at "
                                 f"t={acked_from[0]:.0f}ms")
            bound = _finish_bound(ix, r)
            if bound is not None and (finished_by is None or bound > finished_by[0]):
                finished_by = (bound, r)
            if acks:
                first = min(a.invoked_ms for a in acks)
                if acked_from is None or first > acked_from[0]:
                    acked_from = (first, r)
    return _result(QueueCheckName.KEY_ORDER, failed=bool(early or unordered),
                   counts=[("keys", len(streams)), ("delivered-early", len(early)),
                           ("acks-out-of-order", len(unordered))],
                   examples=(early + unordered)[:ex])


def _settlements(ix: _QueueIndex) -> QueueCheckResult:
    counts = Counter((s.action.value, s.result.value) for s in ix.settlements)
    return QueueCheckResult(name=QueueCheckName.SETTLEMENTS, verdict=Verdict.INFO, counts=tuple(
        (f"{a.value}-{res.value}", counts.get((a.value, res.value), 0))
        for a in Action for res in SettleResult))


def _dead_letters(ix: _QueueIndex) -> QueueCheckResult:
    reasons = Counter(d.reason for d in ix.dead)
    complete = ix.dlq_read is not None and ix.dlq_read.complete
    return QueueCheckResult(
        name=QueueCheckName.DEAD_LETTERS, verdict=Verdict.INFO if complete else Verdict.UNKNOWN,
        counts=(("dead-letters", len(ix.dead)),
                *sorted((f"reason:{k or '-'}", n) for k, n in reasons.items())))


def _vacuous(ix: _QueueIndex) -> list[str]:
    if ix.started is None:
        return ["no queue_started event: not a queue run"]
    out = []
    if not ix.log.acks:
        out.append("0 acknowledged sends")
    if not any(r.ok_acks() for r in ix.records.values()):
        out.append("0 records acked by a consumer")
    if ix.started.key_ordered:
        keys = Counter((r.pos[0], r.pos[1], r.key) for r in ix.records.values()
                       if r.deliveries and r.key is not None)
        if not any(n > 1 for n in keys.values()):
            out.append("no key had two records delivered: key order untested")
    return out


# --- rendering ----------------------------------------------------------------------------------


def render_queue_summary(results: QueueResults) -> str:
    """Plain text: the queue verdict, the headline counts, one row per check, examples."""
    mode = "key-ordered" if results.key_ordered else "unordered"
    lines = [
        f"queue {results.queue or '?'} ({mode}): {queue_verdict_line(results)}",
        f"  records {results.records}, acked sends {results.acked_sends}, acked by consumers "
        f"{results.consumer_acked}, dead-lettered {results.dead_lettered}, lost {results.lost}, "
        f"double-finished {results.double_finished}, redelivered after finish "
        f"{results.redelivered}, delivered more than once {results.duplicate_deliveries} "
        f"(+{results.extra_deliveries} deliveries), lock overlaps {results.lock_overlaps}, "
        f"key-order violations {results.key_order_violations}, coordinator changes "
        f"{results.coordinator_changes}",
    ]
    width = max(len(c.name.value) for c in results.checks)
    for c in results.checks:
        counts = ", ".join(f"{k}={v}" for k, v in c.counts)
        lines.append(f"  {c.name.value:<{width}}  {c.verdict.value.upper():<7}  {counts}")
    for c in results.checks:
        lines += [f"    {c.name.value}: {e}" for e in c.examples]
    return "\n".join(lines) + "\n"


def queue_verdict_line(results: QueueResults) -> str:
    verdict = results.verdict
    if verdict is RunVerdict.INVALID:
        return "INVALID (failed: " + ", ".join(n.value for n in results.failed_checks) + ")"
    if verdict is RunVerdict.VACUOUS:
        return "INVALID (vacuous: " + "; ".join(results.vacuous) + ")"
    return "VALID"


def queue_results_to_dict(results: QueueResults) -> dict[str, Any]:
    def plain(obj: Any) -> Any:
        if isinstance(obj, enum.Enum):
            return obj.value
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [plain(x) for x in obj]
        return obj

    out = plain(asdict(results))
    for c in out["checks"]:
        c["counts"] = dict(c["counts"])
    out["verdict"] = results.verdict.value
    out["valid"] = results.verdict is RunVerdict.VALID
    return out


# --- helpers ------------------------------------------------------------------------------------


def _result(name: QueueCheckName, *, failed: bool, counts: list[tuple[str, int]],
            examples: list[str] | None = None) -> QueueCheckResult:
    return QueueCheckResult(name=name, verdict=Verdict.FAIL if failed else Verdict.PASS,
                            counts=tuple(counts), examples=tuple(examples or ()))


def _pos(s: QueueSettlement) -> Pos:
    return (s.topic, s.partition, s.offset)


def _where(pos: Pos) -> str:
    return f"{pos[0]}-{pos[1]}@{pos[2]}"


def _sid(sid: SendId | None) -> str:
    return f"({sid[0]},{sid[1]})" if sid else "(?)"
