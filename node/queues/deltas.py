"""Every durable change of a queue's state, one frozen dataclass per kind.

The core makes these, applies them to itself, and hands them to the shell, which writes them to
`__queue_state` (through Raft) before answering anybody. Replay applies the same deltas to a
restored snapshot, so `QueueCore.apply` must be a pure function of (state, delta): any time a
delta needs carries its own `now_ms`; anything derived (a backoff, a delivery count) is computed
from the durable state and the config, both of which replay the same way.

Offsets travel as inclusive ranges ((first, last), ...), so acking 100 consecutive records is one
pair, not 100 numbers. Encoding is a JSON-able dict with a short kind tag "k"; decoding is strict:
a missing or unexpected field, a wrong type, or an unordered range raises ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tidelog.node.groups.assignors import TopicPartition

__all__ = [
    "Ack",
    "AddPartitions",
    "Advance",
    "DeadLettered",
    "DeadPending",
    "Delta",
    "Deliver",
    "Discard",
    "DlqBatch",
    "DlqBatchDone",
    "DlqResync",
    "Extend",
    "Nack",
    "RedriveCursor",
    "Release",
    "SetConfig",
    "SetDlqProducer",
    "Truncate",
    "decode_delta",
    "encode_delta",
    "ranges_of",
]

Ranges = tuple[tuple[int, int], ...]
REASON_CHARS_MAX = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Records locked to `consumer_id` until `deadline_ms`; each one's delivery count goes up."""

    tp: TopicPartition
    ranges: Ranges
    consumer_id: str
    now_ms: int
    deadline_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    tp: TopicPartition
    ranges: Ranges


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack:
    """WAITING from `now_ms` + delay_ms, or + the queue's backoff for the count when delay < 0."""

    tp: TopicPartition
    ranges: Ranges
    now_ms: int
    delay_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """WAITING available at `now_ms`, with the delivery count taken back by one."""

    tp: TopicPartition
    ranges: Ranges
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Extend:
    tp: TopicPartition
    ranges: Ranges
    deadline_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadPending:
    """Bound for the dead-letter topic (reject, max deliveries, ttl "expired"). From a
    settlement (a REJECT, or a NACK at the delivery limit): `consumer_id` and `settle` (its
    SettleKind value) say which, so a retry of it is answered OK (recent_acks.RecentSettles);
    "" and 0 otherwise (tick, TTL). Encoded only when set, so older records still decode."""

    tp: TopicPartition
    ranges: Ranges
    reason: str
    now_ms: int
    consumer_id: str = ""
    settle: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLettered:
    """The dead-letter write committed: the records are done."""

    tp: TopicPartition
    ranges: Ranges


@dataclass(frozen=True, slots=True, kw_only=True)
class Discard:
    """Done without delivery: cause "duplicate" (dedup window)."""

    tp: TopicPartition
    ranges: Ranges
    cause: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Advance:
    """Every offset below `start` is done (the core saw the gaps and done records below it)."""

    tp: TopicPartition
    start: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Truncate:
    """Everything below `offset` is done, whatever its state: cause "lost" or "purged"."""

    tp: TopicPartition
    offset: int
    cause: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddPartitions:
    starts: tuple[tuple[TopicPartition, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetConfig:
    config: Mapping[str, Any]     # QueueConfig.to_dict()


@dataclass(frozen=True, slots=True, kw_only=True)
class RedriveCursor:
    dlq_partition: int
    offset: int
    count: int                    # records redriven by this step (for redriven_total)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetDlqProducer:
    """The queue's dead-letter producer (InitProducerId once per queue; never bumped after, so
    every coordinator of the queue writes a batch under the same id, epoch and sequence)."""

    producer_id: int
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqBatch:
    """Committed BEFORE its write: these DEAD_PENDING records (sorted by partition, offset) are
    the DLQ batch with `base_sequence` on (dlq_topic, dlq_partition); the next batch there
    starts at base_sequence + len(records)."""

    dlq_topic: str
    dlq_partition: int
    base_sequence: int
    records: tuple[tuple[TopicPartition, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqBatchDone:
    """The batch is in the DLQ (`written`: its records still pending are done), or abandoned
    because its dead-letter topic is gone (its records are pending again, for a new batch)."""

    dlq_topic: str
    dlq_partition: int
    base_sequence: int
    written: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqResync:
    """The DLQ partition lost the tail of its log (data loss): it expects `next_sequence` from
    the queue's producer, below the next pending batch. Every pending batch of the partition is
    given up (its records are jobs again, planned from `next_sequence` on) and `lost` letters
    it had acknowledged are counted as lost (counters "dlq_lost")."""

    dlq_topic: str
    dlq_partition: int
    next_sequence: int
    lost: int


Delta = (Deliver | Ack | Nack | Release | Extend | DeadPending | DeadLettered | Discard | Advance
         | Truncate | AddPartitions | SetConfig | RedriveCursor | SetDlqProducer | DlqBatch
         | DlqBatchDone | DlqResync)

TRUNCATE_CAUSES = ("lost", "purged")
DISCARD_CAUSES = ("duplicate",)


def ranges_of(offsets: Iterable[int]) -> Ranges:
    """Sorted, distinct offsets -> inclusive ranges. Asserts the input is strictly increasing."""
    out: list[tuple[int, int]] = []
    first = last = -2
    for off in offsets:
        if off == last + 1:
            last = off
            continue
        assert off > last, f"offsets not increasing: {off} after {last}"
        if first >= 0:
            out.append((first, last))
        first = last = off
    if first >= 0:
        out.append((first, last))
    return tuple(out)


def encode_delta(delta: Delta) -> dict[str, Any]:
    """A JSON-able dict (kind tag "k")."""
    match delta:
        case Deliver():
            return {"k": "deliver", **_tpr(delta.tp, delta.ranges), "c": delta.consumer_id,
                    "now": delta.now_ms, "dl": delta.deadline_ms}
        case Ack():
            return {"k": "ack", **_tpr(delta.tp, delta.ranges)}
        case Nack():
            return {"k": "nack", **_tpr(delta.tp, delta.ranges), "now": delta.now_ms,
                    "delay": delta.delay_ms}
        case Release():
            return {"k": "release", **_tpr(delta.tp, delta.ranges), "now": delta.now_ms}
        case Extend():
            return {"k": "extend", **_tpr(delta.tp, delta.ranges), "dl": delta.deadline_ms}
        case DeadPending():
            out = {"k": "dead", **_tpr(delta.tp, delta.ranges), "why": delta.reason,
                   "now": delta.now_ms}
            if delta.consumer_id:
                out["s"] = [delta.consumer_id, delta.settle]
            return out
        case DeadLettered():
            return {"k": "dlq", **_tpr(delta.tp, delta.ranges)}
        case Discard():
            return {"k": "discard", **_tpr(delta.tp, delta.ranges), "why": delta.cause}
        case Advance():
            return {"k": "advance", "t": delta.tp.topic, "p": delta.tp.partition,
                    "o": delta.start}
        case Truncate():
            return {"k": "truncate", "t": delta.tp.topic, "p": delta.tp.partition,
                    "o": delta.offset, "why": delta.cause}
        case AddPartitions():
            return {"k": "parts", "s": [[tp.topic, tp.partition, s] for tp, s in delta.starts]}
        case SetConfig():
            return {"k": "config", "cfg": dict(delta.config)}
        case RedriveCursor():
            return {"k": "redrive", "p": delta.dlq_partition, "o": delta.offset,
                    "n": delta.count}
        case SetDlqProducer():
            return {"k": "dlqpid", "id": delta.producer_id, "e": delta.epoch}
        case DlqBatch():
            return {"k": "dlqbatch", "t": delta.dlq_topic, "p": delta.dlq_partition,
                    "seq": delta.base_sequence, "recs": _groups(delta.records)}
        case DlqBatchDone():
            return {"k": "dlqdone", "t": delta.dlq_topic, "p": delta.dlq_partition,
                    "seq": delta.base_sequence, "w": delta.written}
        case DlqResync():
            return {"k": "dlqresync", "t": delta.dlq_topic, "p": delta.dlq_partition,
                    "seq": delta.next_sequence, "lost": delta.lost}
    raise AssertionError(f"not a delta: {delta!r}")


def decode_delta(data: Any) -> Delta:
    """Strict inverse of encode_delta; a bad record raises ValueError naming the problem."""
    if not isinstance(data, dict):
        raise ValueError(f"queue delta: expected an object, got {type(data).__name__}")
    kind = data.get("k")
    spec = _FIELDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ValueError(f"queue delta: unknown kind {kind!r}")
    if set(data) - _OPTIONAL.get(kind, set()) != {"k", *spec}:
        raise ValueError(f"queue delta {kind}: fields {sorted(data)}, expected "
                         f"{sorted({'k', *spec})}")
    match kind:
        case "deliver":
            return Deliver(tp=_tp(data), ranges=_ranges(data["r"]), consumer_id=_str(data, "c"),
                           now_ms=_int(data, "now"), deadline_ms=_int(data, "dl"))
        case "ack":
            return Ack(tp=_tp(data), ranges=_ranges(data["r"]))
        case "nack":
            return Nack(tp=_tp(data), ranges=_ranges(data["r"]), now_ms=_int(data, "now"),
                        delay_ms=_int(data, "delay", -1))
        case "release":
            return Release(tp=_tp(data), ranges=_ranges(data["r"]), now_ms=_int(data, "now"))
        case "extend":
            return Extend(tp=_tp(data), ranges=_ranges(data["r"]), deadline_ms=_int(data, "dl"))
        case "dead":
            reason = _str(data, "why")
            if len(reason) > REASON_CHARS_MAX:
                raise ValueError("queue delta dead: reason too long")
            by = data.get("s", ["", 0])
            if "s" in data and not (isinstance(by, list) and len(by) == 2
                                    and isinstance(by[0], str) and by[0]
                                    and by[1] in _DEAD_SETTLES):
                raise ValueError(f"queue delta dead: bad settlement {str(by)[:80]}")
            return DeadPending(tp=_tp(data), ranges=_ranges(data["r"]), reason=reason,
                               now_ms=_int(data, "now"), consumer_id=by[0], settle=by[1])
        case "dlq":
            return DeadLettered(tp=_tp(data), ranges=_ranges(data["r"]))
        case "discard":
            cause = _str(data, "why")
            if cause not in DISCARD_CAUSES:
                raise ValueError(f"queue delta discard: unknown cause {cause!r}")
            return Discard(tp=_tp(data), ranges=_ranges(data["r"]), cause=cause)
        case "advance":
            return Advance(tp=_tp(data), start=_int(data, "o"))
        case "truncate":
            cause = _str(data, "why")
            if cause not in TRUNCATE_CAUSES:
                raise ValueError(f"queue delta truncate: unknown cause {cause!r}")
            return Truncate(tp=_tp(data), offset=_int(data, "o"), cause=cause)
        case "parts":
            items = data["s"]
            if not isinstance(items, list):
                raise ValueError("queue delta parts: s must be a list")
            starts = []
            for item in items:
                if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                        or not _is_int(item[1]) or not _is_int(item[2])
                        or item[1] < 0 or item[2] < 0):
                    raise ValueError(f"queue delta parts: bad entry {item!r}")
                starts.append((TopicPartition(item[0], item[1]), item[2]))
            return AddPartitions(starts=tuple(starts))
        case "config":
            if not isinstance(data["cfg"], dict):
                raise ValueError("queue delta config: cfg must be an object")
            return SetConfig(config=data["cfg"])
        case "redrive":
            return RedriveCursor(dlq_partition=_int(data, "p"), offset=_int(data, "o"),
                                 count=_int(data, "n"))
        case "dlqpid":
            return SetDlqProducer(producer_id=_int(data, "id"), epoch=_int(data, "e"))
        case "dlqbatch":
            return DlqBatch(dlq_topic=_name(data), dlq_partition=_int(data, "p"),
                            base_sequence=_int(data, "seq"), records=_records(data["recs"]))
        case "dlqdone":
            written = data["w"]
            if not isinstance(written, bool):
                raise ValueError("queue delta dlqdone: w must be a boolean")
            return DlqBatchDone(dlq_topic=_name(data), dlq_partition=_int(data, "p"),
                                base_sequence=_int(data, "seq"), written=written)
        case "dlqresync":
            return DlqResync(dlq_topic=_name(data), dlq_partition=_int(data, "p"),
                             next_sequence=_int(data, "seq"), lost=_int(data, "lost"))
    raise AssertionError(kind)


_TPR = ("t", "p", "r")
_FIELDS: dict[str, tuple[str, ...]] = {
    "deliver": (*_TPR, "c", "now", "dl"),
    "ack": _TPR,
    "nack": (*_TPR, "now", "delay"),
    "release": (*_TPR, "now"),
    "extend": (*_TPR, "dl"),
    "dead": (*_TPR, "why", "now"),
    "dlq": _TPR,
    "discard": (*_TPR, "why"),
    "advance": ("t", "p", "o"),
    "truncate": ("t", "p", "o", "why"),
    "parts": ("s",),
    "config": ("cfg",),
    "redrive": ("p", "o", "n"),
    "dlqpid": ("id", "e"),
    "dlqbatch": ("t", "p", "seq", "recs"),
    "dlqdone": ("t", "p", "seq", "w"),
    "dlqresync": ("t", "p", "seq", "lost"),
}

_OPTIONAL: dict[str, set[str]] = {"dead": {"s"}}   # fields written only when set
_DEAD_SETTLES = (1, 2)                             # SettleKind NACK, REJECT


def _tpr(tp: TopicPartition, ranges: Ranges) -> dict[str, Any]:
    return {"t": tp.topic, "p": tp.partition, "r": [[a, b] for a, b in ranges]}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(data: dict[str, Any], name: str, low: int = 0) -> int:
    value = data[name]
    if not _is_int(value) or value < low:
        raise ValueError(f"queue delta {data['k']}: {name} must be an integer >= {low}, "
                         f"got {value!r}")
    return value


def _str(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise ValueError(f"queue delta {data['k']}: {name} must be a string")
    return value


def _tp(data: dict[str, Any]) -> TopicPartition:
    topic, partition = data["t"], data["p"]
    if not isinstance(topic, str) or not topic or not _is_int(partition) or partition < 0:
        raise ValueError(f"queue delta {data['k']}: bad topic/partition {topic!r}/{partition!r}")
    return TopicPartition(topic, partition)


def _ranges(raw: Any) -> Ranges:
    if not isinstance(raw, list) or not raw:
        raise ValueError("queue delta: r must be a non-empty list of [first, last]")
    out: list[tuple[int, int]] = []
    prev = -2
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2 or not _is_int(item[0])
                or not _is_int(item[1]) or not 0 <= item[0] <= item[1] or item[0] <= prev):
            raise ValueError(f"queue delta: bad range {item!r} (need 0 <= first <= last, "
                             "increasing, disjoint)")
        out.append((item[0], item[1]))
        prev = item[1]
    return tuple(out)


def _name(data: dict[str, Any]) -> str:
    topic = data["t"]
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"queue delta {data['k']}: bad topic {topic!r}")
    return topic


def _groups(records: tuple[tuple[TopicPartition, int], ...]) -> list[list[Any]]:
    """Sorted (tp, offset) pairs as [[topic, partition, [[first, last], ...]], ...]."""
    out: list[list[Any]] = []
    for tp, off in records:
        if out and (out[-1][0], out[-1][1]) == (tp.topic, tp.partition):
            ranges = out[-1][2]
            if ranges[-1][1] + 1 == off:
                ranges[-1][1] = off
            else:
                ranges.append([off, off])
        else:
            out.append([tp.topic, tp.partition, [[off, off]]])
    return out


def _records(raw: Any) -> tuple[tuple[TopicPartition, int], ...]:
    """Strict inverse of _groups: partitions strictly increasing, offsets as in `_ranges`."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("queue delta dlqbatch: recs must be a non-empty list")
    out: list[tuple[TopicPartition, int]] = []
    prev: TopicPartition | None = None
    for group in raw:
        if (not isinstance(group, list) or len(group) != 3 or not isinstance(group[0], str)
                or not group[0] or not _is_int(group[1]) or group[1] < 0):
            raise ValueError(f"queue delta dlqbatch: bad group {str(group)[:80]}")
        tp = TopicPartition(group[0], group[1])
        if prev is not None and not prev < tp:
            raise ValueError("queue delta dlqbatch: partitions not in increasing order")
        prev = tp
        out.extend((tp, off) for first, last in _ranges(group[2])
                   for off in range(first, last + 1))
    return tuple(out)
