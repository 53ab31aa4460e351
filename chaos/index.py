"""One pass over a history into the lookups every check needs (sans-I/O, no clocks).

A send is identified by `SendId = (producer, seq)`. A *sighting* is one record seen in a read (a
consumer read or the final read) at a `(partition, offset)` position. Values that do not decode
(corrupt) or decode to a send that was never invoked (phantom) are kept apart, by position, so a
check can count them without guessing whom they belong to.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass, field

from tidelog.chaos.history import (
    ConsumerRead,
    CorruptValue,
    FaultStart,
    FaultStop,
    FinalRead,
    GroupCommit,
    History,
    LeaderObserved,
    ReplicaDigest,
    SendFailed,
    SendIndeterminate,
    SendInvoked,
    SendOk,
    decode_value,
)

__all__ = [
    "HistoryIndex", "MalformedHistory", "Outcome", "Position", "SendId", "Sighting", "Source",
]

SendId = tuple[str, int]
Position = tuple[int, int]  # (partition, offset)


class MalformedHistory(ValueError):
    """The history breaks the recorder's contract (a workload bug), so no verdict can be trusted."""


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    INDETERMINATE = "indeterminate"
    NONE = "none"  # invoked, no outcome recorded


class Source(enum.Enum):
    CONSUMER = "consumer"
    FINAL = "final"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sighting:
    source: Source
    partition: int
    offset: int
    key: str
    value: str
    time_ms: float
    consumer: str | None = None
    group: str | None = None


@dataclass(slots=True, kw_only=True)
class HistoryIndex:
    invoked: dict[SendId, SendInvoked] = field(default_factory=dict)
    acks: dict[SendId, SendOk] = field(default_factory=dict)
    failed: dict[SendId, SendFailed] = field(default_factory=dict)
    indeterminate: dict[SendId, SendIndeterminate] = field(default_factory=dict)
    reads: list[ConsumerRead] = field(default_factory=list)
    commits: list[GroupCommit] = field(default_factory=list)
    final: dict[int, FinalRead] = field(default_factory=dict)
    faults: list[FaultStart | FaultStop] = field(default_factory=list)
    leaders: list[LeaderObserved] = field(default_factory=list)
    digests: list[ReplicaDigest] = field(default_factory=list)
    # Sightings of values that decode to an invoked send, by send.
    sightings: dict[SendId, list[Sighting]] = field(default_factory=lambda: defaultdict(list))
    # Every sighting by position (including corrupt and phantom ones).
    by_position: dict[Position, list[Sighting]] = field(default_factory=lambda: defaultdict(list))
    corrupt: list[Sighting] = field(default_factory=list)
    phantom: list[Sighting] = field(default_factory=list)
    key_mismatch: list[Sighting] = field(default_factory=list)
    end_ms: float = 0.0

    @classmethod
    def build(cls, history: History) -> HistoryIndex:
        ix = cls()
        # Two passes: invocations first, so a sighting recorded (by a concurrent recorder) just
        # before its send's invocation still finds it.
        for event in history:
            ix.end_ms = max(ix.end_ms, event.time_ms)
            if isinstance(event, SendInvoked):
                sid = (event.producer, event.seq)
                if sid in ix.invoked:
                    raise MalformedHistory(f"send {sid} invoked twice")
                ix.invoked[sid] = event
        for event in history:
            match event:
                case SendInvoked():
                    pass
                case SendOk():
                    ix._outcome(event.producer, event.seq, ix.acks, event)
                case SendFailed():
                    ix._outcome(event.producer, event.seq, ix.failed, event)
                case SendIndeterminate():
                    ix._outcome(event.producer, event.seq, ix.indeterminate, event)
                case ConsumerRead():
                    ix.reads.append(event)
                    ix._sight(Sighting(
                        source=Source.CONSUMER, partition=event.partition, offset=event.offset,
                        key=event.key, value=event.value, time_ms=event.time_ms,
                        consumer=event.consumer, group=event.group))
                case GroupCommit():
                    ix.commits.append(event)
                case FinalRead():
                    if event.partition in ix.final:
                        raise MalformedHistory(f"partition {event.partition} read finally twice")
                    ix.final[event.partition] = event
                    for r in event.records:
                        ix._sight(Sighting(
                            source=Source.FINAL, partition=event.partition, offset=r.offset,
                            key=r.key, value=r.value, time_ms=event.time_ms))
                case FaultStart() | FaultStop():
                    ix.faults.append(event)
                case LeaderObserved():
                    ix.leaders.append(event)
                case ReplicaDigest():
                    ix.digests.append(event)
        return ix

    def data_offsets(self) -> dict[int, list[int]]:
        """Per partition, every offset at which some read (a consumer's or the final one) saw a
        data record, ascending: Jepsen's version order, with offsets kept. Offsets in between
        may be control batches (leader no-ops), which no consumer is given, so a gap in offsets
        alone is no skip; a gap over one of these offsets is. Acked offsets nobody read are left
        out: such an ack is lost or inconsistent (judged there), and the offset may hold a
        control batch by now."""
        known: dict[int, set[int]] = defaultdict(set)
        for partition, offset in self.by_position:
            known[partition].add(offset)
        return {p: sorted(offsets) for p, offsets in known.items()}

    def outcome(self, sid: SendId) -> Outcome:
        if sid in self.acks:
            return Outcome.OK
        if sid in self.failed:
            return Outcome.FAILED
        if sid in self.indeterminate:
            return Outcome.INDETERMINATE
        return Outcome.NONE

    def final_positions(self, sid: SendId) -> set[Position]:
        return {(s.partition, s.offset) for s in self.sightings.get(sid, ())
                if s.source is Source.FINAL}

    def _outcome(self, producer: str, seq: int, into: dict, event: object) -> None:
        sid = (producer, seq)
        if sid not in self.invoked:
            raise MalformedHistory(f"outcome for send {sid} that was never invoked")
        if sid in self.acks or sid in self.failed or sid in self.indeterminate:
            raise MalformedHistory(f"send {sid} has two outcomes")
        into[sid] = event

    def _sight(self, s: Sighting) -> None:
        self.by_position[(s.partition, s.offset)].append(s)
        try:
            decoded = decode_value(s.value)
        except CorruptValue:
            self.corrupt.append(s)
            return
        sid = (decoded.producer, decoded.seq)
        invoked = self.invoked.get(sid)
        if invoked is None:
            self.phantom.append(s)
            return
        if invoked.key != s.key:
            self.key_mismatch.append(s)
        self.sightings[sid].append(s)
