"""The checker: judges a chaos history. A separate object from any workload (STYLE habit 16).

`Checker(config).check(history)` runs every check below over an index of the history and returns
`Results`. Each check is a small function of the index; each says in its docstring what it claims.
The checker never reads a clock or the network: the same history always gets the same verdict.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.chaos.availability import partition_availability, phase_latencies, recoveries
from tidelog.chaos.history import (
    METADATA_PARTITION,
    ConsumerRead,
    CorruptValue,
    FaultStart,
    History,
    ReplicaDigest,
    decode_value,
)
from tidelog.chaos.index import HistoryIndex, Outcome, Position, SendId, Sighting, Source
from tidelog.chaos.results import (
    EXAMPLES_MAX,
    CheckName,
    CheckResult,
    Operations,
    Results,
    Verdict,
)

__all__ = ["Checker", "CheckerConfig", "check_history", "realtime_violations_naive"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckerConfig:
    # A stretch without any ack on a partition longer than this is reported as unavailability.
    gap_without_ack_ms_min: float = 1000.0
    examples_max: int = EXAMPLES_MAX
    # A chaos run in which no fault was executed tested nothing: its verdict is VACUOUS, not
    # VALID. Only a deliberately fault-free history (a baseline) sets this False.
    faults_required: bool = True

    def __post_init__(self) -> None:
        if self.gap_without_ack_ms_min <= 0:
            raise ValueError("gap_without_ack_ms_min must be positive")
        if not 0 <= self.examples_max <= EXAMPLES_MAX:
            raise ValueError(f"examples_max must be within 0..{EXAMPLES_MAX}")


class Checker:
    def __init__(self, config: CheckerConfig | None = None) -> None:
        self.config = config or CheckerConfig()

    def check(self, history: History) -> Results:
        ix = HistoryIndex.build(history)
        ex = self.config.examples_max
        checks = tuple(f(ix, ex) for f in _CHECKS)
        by_name = {c.name: c for c in checks}
        indeterminate = by_name[CheckName.INDETERMINATE]
        inconsistent = by_name[CheckName.INCONSISTENT_OFFSETS]
        vacuous = []
        if not ix.acks:
            vacuous.append("0 acknowledged writes")
        if self.config.faults_required and not any(isinstance(f, FaultStart) for f in ix.faults):
            vacuous.append("0 faults executed (the nemesis did nothing)")
        return Results(
            operations=Operations(
                attempted=len(ix.invoked),
                ok=len(ix.acks),
                failed=len(ix.failed),
                indeterminate=len(ix.indeterminate),
                no_outcome=sum(1 for sid in ix.invoked if ix.outcome(sid) is Outcome.NONE),
            ),
            acked=len(ix.acks),
            lost=by_name[CheckName.LOST].count("lost"),
            duplicated=by_name[CheckName.DUPLICATES].count("duplicated"),
            inconsistent=inconsistent.count("positions"),
            aborted=by_name[CheckName.ABORTED_READS].count("appeared"),
            divergent=by_name[CheckName.REPLICAS].count("divergent"),
            recovered=indeterminate.count("appeared"),
            unrecovered=indeterminate.count("absent"),
            checks=checks,
            availability=partition_availability(ix, self.config.gap_without_ack_ms_min),
            recoveries=recoveries(ix),
            phases=phase_latencies(ix),
            vacuous=tuple(vacuous),
        )


def check_history(history: History, config: CheckerConfig | None = None) -> Results:
    return Checker(config).check(history)


# --- the checks ---------------------------------------------------------------------------------


def _integrity(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """Every value read back decodes, checks out, names a send that was invoked, under its key."""
    bad = ix.corrupt + ix.phantom + ix.key_mismatch
    return _result(
        CheckName.INTEGRITY,
        failed=bool(bad),
        counts=[("corrupt", len(ix.corrupt)), ("phantom", len(ix.phantom)),
                ("key-mismatch", len(ix.key_mismatch))],
        examples=[f"{_where(s)} value {s.value[:60]!r}" for s in bad[:examples_max]],
    )


def _lost(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """Every acknowledged send, and every send a consumer was given, is in the final read.

    A consumer is only given committed records (below the high watermark), so a record that was
    read and is later absent had been committed and was then lost, whether or not its producer
    heard an ack (Jepsen's lost-write: what was observed must stay observable). Only partitions
    the final read covers are judged.
    """
    if not ix.final:
        return _unknown(CheckName.LOST, "no final read", [("acked", len(ix.acks)), ("lost", 0)])
    lost_acked = [sid for sid, ack in ix.acks.items()
                  if ack.partition in ix.final and not ix.final_positions(sid)]
    first_read: dict[SendId, Sighting] = {}
    for sid, seen in ix.sightings.items():
        for s in seen:
            if s.source is Source.CONSUMER and s.partition in ix.final:
                first_read.setdefault(sid, s)
                break
    lost_read = [sid for sid, s in first_read.items()
                 if sid not in ix.acks and not ix.final_positions(sid)]
    examples = [f"{_sid(sid)} acked at p{ix.acks[sid].partition}@{ix.acks[sid].offset}, "
                f"t={ix.acks[sid].time_ms:.0f}ms, absent from the final read"
                for sid in lost_acked[:examples_max]]
    examples += [f"{_sid(sid)} never acked but read by {first_read[sid].consumer} at "
                 f"p{first_read[sid].partition}@{first_read[sid].offset}, "
                 f"t={first_read[sid].time_ms:.0f}ms, absent from the final read"
                 for sid in lost_read[:max(0, examples_max - len(examples))]]
    return _result(
        CheckName.LOST,
        failed=bool(lost_acked or lost_read),
        counts=[("acked", len(ix.acks)), ("lost", len(lost_acked) + len(lost_read)),
                ("read-unacked-lost", len(lost_read))],
        examples=examples,
    )


def _inconsistent_offsets(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """One position holds one value: across all reads, and where the ack said it would be."""
    conflicts: dict[Position, str] = {}
    for pos, seen in ix.by_position.items():
        values = {s.value for s in seen}
        if len(values) > 1:
            conflicts[pos] = f"p{pos[0]}@{pos[1]} read as {len(values)} different values"
    mismatched = 0
    for sid, ack in ix.acks.items():
        final = ix.final.get(ack.partition)
        if final is None:
            continue
        pos = (ack.partition, ack.offset)
        found = ix.final_positions(sid)
        value = ix.invoked[sid].value
        at_pos = {s.value for s in ix.by_position.get(pos, ()) if s.source is Source.FINAL}
        # An empty acked position with the value nowhere is plain loss (the `lost` check).
        if pos in found or (not at_pos and not found):
            continue
        mismatched += 1
        conflicts.setdefault(pos, f"{_sid(sid)} acked at p{pos[0]}@{pos[1]} but the final read "
                                  f"has {sorted(at_pos - {value}) or 'nothing'} there")
    return _result(
        CheckName.INCONSISTENT_OFFSETS,
        failed=bool(conflicts),
        counts=[("positions", len(conflicts)), ("acked-offset-mismatch", mismatched)],
        examples=list(conflicts.values())[:examples_max],
    )


def _duplicates(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """No send appears at two positions (a re-read of one position is not a duplicate)."""
    if not ix.final and not ix.reads:
        return _unknown(CheckName.DUPLICATES, "no reads", [("duplicated", 0)])
    dups = {sid: sorted({(s.partition, s.offset) for s in seen})
            for sid, seen in ix.sightings.items()}
    dups = {sid: pos for sid, pos in dups.items() if len(pos) > 1}
    return _result(
        CheckName.DUPLICATES,
        failed=bool(dups),
        counts=[("duplicated", len(dups)),
                ("extra-copies", sum(len(p) - 1 for p in dups.values()))],
        examples=[f"{_sid(sid)} at " + ", ".join(f"p{p}@{o}" for p, o in pos)
                  for sid, pos in list(dups.items())[:examples_max]],
    )


def _key_order(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """In the final read, one producer's values for one key appear in send (seq) order."""
    if not ix.final:
        return _unknown(CheckName.KEY_ORDER, "no final read", [("out-of-order", 0)])
    bad: list[str] = []
    for partition, final in sorted(ix.final.items()):
        highest: dict[tuple[str, str], int] = {}  # (producer, key) -> highest seq so far
        seen: set[SendId] = set()
        for r in sorted(final.records, key=lambda r: r.offset):
            sid = _send_of(ix, r.value)
            if sid is None or sid in seen:  # corrupt/phantom, or a duplicate: counted elsewhere
                continue
            seen.add(sid)
            stream = (sid[0], r.key)
            top = highest.get(stream, -1)
            if sid[1] < top:
                bad.append(f"p{partition}@{r.offset}: {_sid(sid)} key {r.key!r} after seq {top}")
            highest[stream] = max(top, sid[1])
    return _result(CheckName.KEY_ORDER, failed=bool(bad), counts=[("out-of-order", len(bad))],
                   examples=bad[:examples_max])


def _consumer_order(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """Each consumer reads each partition at strictly increasing offsets.

    A consumer id names one incarnation: a consumer that restarts or is reassigned after a
    rebalance must record under a new id, so a legitimate re-read is not reported here.
    """
    if not ix.reads:
        return _unknown(CheckName.CONSUMER_ORDER, "no consumer reads", [("backward-steps", 0)])
    last: dict[tuple[str, int], int] = {}
    bad: list[str] = []
    for r in sorted(ix.reads, key=lambda r: r.time_ms):  # stable: recording order breaks ties
        stream = (r.consumer, r.partition)
        prev = last.get(stream)
        if prev is not None and r.offset <= prev:
            bad.append(f"consumer {r.consumer} p{r.partition}: @{r.offset} after @{prev}, "
                       f"t={r.time_ms:.0f}ms")
        last[stream] = r.offset
    return _result(CheckName.CONSUMER_ORDER, failed=bool(bad),
                   counts=[("reads", len(ix.reads)), ("backward-steps", len(bad))],
                   examples=bad[:examples_max])


def _group_skips(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """A group commits offset C on a partition only after its consumers were given every record
    below C that the final read holds (groups start from the earliest offset)."""
    if not ix.commits:
        return _unknown(CheckName.GROUP_SKIPS, "no group commits", [("skipped", 0)])
    if not ix.final:
        return _unknown(CheckName.GROUP_SKIPS, "no final read", [("skipped", 0)])
    delivered: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for r in ix.reads:
        if r.group is not None:
            delivered[(r.group, r.partition)].append((r.time_ms, r.offset))
    offsets = {p: sorted({r.offset for r in f.records}) for p, f in ix.final.items()}
    skipped: set[tuple[str, int, int]] = set()
    bad: list[str] = []
    checked_upto: dict[tuple[str, int], int] = defaultdict(int)
    for c in sorted(ix.commits, key=lambda c: c.time_ms):
        stream = (c.group, c.partition)
        got = {o for t, o in delivered[stream] if t <= c.time_ms}
        present = offsets.get(c.partition, [])
        # Offsets below an earlier commit were judged then; judge only the new range.
        lo = bisect.bisect_left(present, checked_upto[stream])
        hi = bisect.bisect_left(present, c.offset)
        missing = [o for o in present[lo:hi] if o not in got]
        checked_upto[stream] = max(checked_upto[stream], c.offset)
        for o in missing:
            skipped.add((c.group, c.partition, o))
        if missing:
            bad.append(f"group {c.group} committed p{c.partition}@{c.offset} at "
                       f"t={c.time_ms:.0f}ms without reading {len(missing)} records "
                       f"(first @{missing[0]})")
    return _result(CheckName.GROUP_SKIPS, failed=bool(skipped),
                   counts=[("commits", len(ix.commits)), ("skipped", len(skipped))],
                   examples=bad[:examples_max])


def _indeterminate(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """Informational: of the sends whose outcome is unknown, how many later appeared in a read."""
    unsure = [sid for sid in ix.invoked
              if ix.outcome(sid) in (Outcome.INDETERMINATE, Outcome.NONE)]
    appeared = [sid for sid in unsure if ix.sightings.get(sid)]
    counts = [("indeterminate", len(unsure)), ("appeared", len(appeared)),
              ("absent", len(unsure) - len(appeared))]
    return CheckResult(name=CheckName.INDETERMINATE,
                       verdict=Verdict.INFO if ix.final else Verdict.UNKNOWN, counts=tuple(counts))


def _aborted_reads(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """A send the broker definitely rejected never shows up in any read."""
    appeared = [sid for sid in ix.failed if ix.sightings.get(sid)]
    return _result(
        CheckName.ABORTED_READS,
        failed=bool(appeared),
        counts=[("failed-sends", len(ix.failed)), ("appeared", len(appeared))],
        examples=[f"{_sid(sid)} failed ({ix.failed[sid].error}) but was read at "
                  f"{_where(ix.sightings[sid][0])}" for sid in appeared[:examples_max]],
    )


def _realtime_order(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """Within a partition, a send acknowledged before another was invoked has the lower offset.

    O(n log n): per partition, sweep the sends by invocation time while folding in, in ack-time
    order, every send acknowledged strictly earlier; keep the highest offset among those.
    """
    bad: list[str] = []
    for partition, sends in sorted(_acked_by_partition(ix).items()):
        by_ack = sorted(sends, key=lambda s: s.acked_ms)
        i, top = 0, None
        for s in sorted(sends, key=lambda s: s.invoked_ms):
            while i < len(by_ack) and by_ack[i].acked_ms < s.invoked_ms:
                if top is None or by_ack[i].offset > top.offset:
                    top = by_ack[i]
                i += 1
            if top is not None and top.offset > s.offset:
                bad.append(f"p{partition}: {_sid(top.sid)}@{top.offset} acked at "
                           f"t={top.acked_ms:.0f}ms before {_sid(s.sid)} was invoked at "
                           f"t={s.invoked_ms:.0f}ms, which got lower offset @{s.offset}")
    return _result(CheckName.REALTIME_ORDER, failed=bool(bad),
                   counts=[("acked", len(ix.acks)), ("violations", len(bad))],
                   examples=bad[:examples_max])


def realtime_violations_naive(ix: HistoryIndex) -> int:
    """The dumb O(n^2) oracle for `_realtime_order`: sends B with some A acked before B began on
    the same partition at a higher offset."""
    count = 0
    for sends in _acked_by_partition(ix).values():
        for b in sends:
            if any(a.acked_ms < b.invoked_ms and a.offset > b.offset for a in sends):
                count += 1
    return count


def _internal_poll_skips(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """Within one poll() call, a consumer's records of one partition are contiguous: it is never
    given offsets o1 < o2 while some read shows a data record between them (Jepsen's
    int-poll-skip; a gap over control batches is not a skip)."""
    return _skip_result(CheckName.INTERNAL_POLL_SKIPS, ix, examples_max, internal=True)


def _poll_skips(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """Between two successive poll() calls of one consumer, a partition resumes exactly where
    it stopped: the next poll's first record of it follows the last one's with no data record
    in between (Jepsen's poll-skip). A consumer id names one incarnation and one assignment, so
    a restart or rebalance that legitimately moves the position starts a new id."""
    return _skip_result(CheckName.POLL_SKIPS, ix, examples_max, internal=False)


def _nonmonotonic_sends(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """One producer's acknowledged sends to one partition get increasing offsets in send (seq)
    order: the idempotent producer keeps send order per partition across retries (Jepsen's
    nonmonotonic-send). Unacknowledged sends are not judged: they have no offset."""
    streams: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for (producer, seq), ack in ix.acks.items():
        streams[(producer, ack.partition)].append((seq, ack.offset))
    bad: list[str] = []
    for (producer, partition), sends in sorted(streams.items()):
        top: tuple[int, int] | None = None  # (seq, offset) of the highest offset so far
        for seq, offset in sorted(sends):
            if top is not None and offset <= top[1]:
                bad.append(f"p{partition}: {_sid((producer, seq))} acked @{offset} after "
                           f"{_sid((producer, top[0]))} acked @{top[1]}")
            else:
                top = (seq, offset)
    return _result(CheckName.NONMONOTONIC_SENDS, failed=bool(bad),
                   counts=[("acked", len(ix.acks)), ("backward-acks", len(bad))],
                   examples=bad[:examples_max])


def _replica_consistency(ix: HistoryIndex, examples_max: int) -> CheckResult:
    """After the heal, every replica of a partition holds the same bytes over the prefix all of
    them had committed (Raft's log matching and state machine safety, to the byte: a replica
    that re-encoded an entry differently, or kept a different entry, shows here). A replica
    whose log could not be read is a failure too, not a pass."""
    if not ix.digests:
        return _unknown(CheckName.REPLICAS, "no replica digests in the history",
                        [("partitions", 0), ("divergent", 0), ("unreadable", 0)])
    by_partition: dict[int, list[ReplicaDigest]] = defaultdict(list)
    for d in ix.digests:
        by_partition[d.partition].append(d)
    divergent: list[str] = []
    unreadable: list[str] = []
    compared = 0
    for partition, digests in sorted(by_partition.items()):
        groups: dict[tuple[int, str], list[str]] = defaultdict(list)
        for d in digests:
            if d.digest is None:
                unreadable.append(f"{_group(partition)} replica {d.node} unreadable: {d.detail}")
            else:
                groups[(d.upto_offset, d.digest)].append(d.node)
        compared += max((upto for upto, _ in groups), default=0)
        if len(groups) > 1:
            divergent.append(f"INCONSISTENT {_group(partition)}: replicas differ over their common "
                             "committed prefix: " + "; ".join(
                                 f"{','.join(sorted(nodes))} [0,{upto}) digest {digest[:16]}"
                                 for (upto, digest), nodes in sorted(groups.items())))
    return _result(CheckName.REPLICAS, failed=bool(divergent or unreadable),
                   counts=[("partitions", len(by_partition)), ("replicas", len(ix.digests)),
                           ("divergent", len(divergent)), ("unreadable", len(unreadable)),
                           ("offsets-compared", compared)],
                   examples=(divergent + unreadable)[:examples_max])


_CHECKS: tuple[Callable[[HistoryIndex, int], CheckResult], ...] = (
    _integrity,
    _lost,
    _inconsistent_offsets,
    _duplicates,
    _key_order,
    _consumer_order,
    _internal_poll_skips,
    _poll_skips,
    _group_skips,
    _indeterminate,
    _aborted_reads,
    _realtime_order,
    _nonmonotonic_sends,
    _replica_consistency,
)


# --- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Acked:
    sid: SendId
    offset: int
    invoked_ms: float
    acked_ms: float


def _acked_by_partition(ix: HistoryIndex) -> dict[int, list[_Acked]]:
    out: dict[int, list[_Acked]] = defaultdict(list)
    for sid, ack in ix.acks.items():
        out[ack.partition].append(_Acked(sid=sid, offset=ack.offset,
                                         invoked_ms=ix.invoked[sid].time_ms, acked_ms=ack.time_ms))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class _Skip:
    before: ConsumerRead
    after: ConsumerRead
    skipped: tuple[int, ...]  # offsets holding data records that the consumer jumped over


def _consumer_skips(ix: HistoryIndex) -> tuple[list[_Skip], list[_Skip]]:
    """(internal, external) skips: successive reads of one (consumer, partition) that jump
    forward over an offset some read saw holding a data record. Reads are taken in recording
    order, which for one consumer is the order it was given them (one thread per consumer);
    steps backwards are `consumer-order`'s business."""
    known = ix.data_offsets()
    last: dict[tuple[str, int], ConsumerRead] = {}
    internal: list[_Skip] = []
    external: list[_Skip] = []
    for r in ix.reads:
        stream = (r.consumer, r.partition)
        prev = last.get(stream)
        last[stream] = r
        if prev is None or r.offset <= prev.offset:
            continue
        offsets = known.get(r.partition, [])
        lo = bisect.bisect_right(offsets, prev.offset)
        hi = bisect.bisect_left(offsets, r.offset)
        if hi > lo:
            skip = _Skip(before=prev, after=r, skipped=tuple(offsets[lo:hi]))
            same_poll = r.poll is not None and r.poll == prev.poll
            (internal if same_poll else external).append(skip)
    return internal, external


def _skip_result(name: CheckName, ix: HistoryIndex, examples_max: int, *,
                 internal: bool) -> CheckResult:
    if not ix.reads:
        return _unknown(name, "no consumer reads", [("skips", 0)])
    skips = _consumer_skips(ix)[0 if internal else 1]
    where = "in one poll" if internal else "between two polls"
    examples = [f"consumer {s.after.consumer} p{s.after.partition}: @{s.before.offset} then "
                f"@{s.after.offset} {where} (#{s.before.poll}, #{s.after.poll}), "
                f"t={s.after.time_ms:.0f}ms, skipping {len(s.skipped)} records "
                f"(first @{s.skipped[0]})" for s in skips[:examples_max]]
    return _result(name, failed=bool(skips),
                   counts=[("reads", len(ix.reads)), ("skips", len(skips)),
                           ("skipped-records", sum(len(s.skipped) for s in skips))],
                   examples=examples)


def _send_of(ix: HistoryIndex, value: str) -> SendId | None:
    """The invoked send a value names, or None for a corrupt or phantom value."""
    try:
        d = decode_value(value)
    except CorruptValue:
        return None
    sid = (d.producer, d.seq)
    return sid if sid in ix.invoked else None


def _result(name: CheckName, *, failed: bool, counts: list[tuple[str, int]],
            examples: list[str] | None = None) -> CheckResult:
    return CheckResult(name=name, verdict=Verdict.FAIL if failed else Verdict.PASS,
                       counts=tuple(counts), examples=tuple(examples or ()))


def _unknown(name: CheckName, why: str, counts: list[tuple[str, int]]) -> CheckResult:
    return CheckResult(name=name, verdict=Verdict.UNKNOWN, counts=tuple(counts),
                       examples=(f"cannot judge: {why}",))


def _group(partition: int) -> str:
    return "metadata" if partition == METADATA_PARTITION else f"p{partition}"


def _sid(sid: SendId) -> str:
    return f"({sid[0]},{sid[1]})"


def _where(s: Sighting) -> str:
    who = f" by {s.consumer}" if s.consumer else ""
    return f"{s.source.value} read{who} p{s.partition}@{s.offset}"
