"""The chaos history: what the workload did and saw, as JSON-lines events.

Theory of operation. A chaos run is judged only from its history, never from the live system: the
workload (and the nemesis that injects faults) append events; the checker (`checker.py`) reads them
afterwards. Every send is identified by `(producer, seq)`: `seq` counts up from 0 per producer in
invocation order, so `seq` order *is* send order. The value written carries that identity and a
checksum (`encode_value`), so any record read back, by a consumer or by the final read, names the
send it came from, and a damaged value is detected rather than silently miscounted.

Times are `time_ms`: milliseconds since the run started, from one monotonic clock on the workload
host (the recorder's caller reads the clock; nothing here does).

Event types (the `type` field of each JSON line):

| type               | fields                                                          |
|--------------------|-----------------------------------------------------------------|
| send_invoked       | producer, seq, key, value, partition (or null), time_ms         |
| send_ok            | producer, seq, partition, offset, time_ms                       |
| send_failed        | producer, seq, error, time_ms (the write definitely did not happen) |
| send_indeterminate | producer, seq, error, time_ms (timeout / unknown outcome)       |
| consumer_read      | consumer, group (or null), partition, offset, key, value, poll, time_ms |
| group_commit       | group, partition, offset (next offset to read), time_ms         |
| final_read         | partition, records: [[offset, key, value], ...], time_ms        |
| fault_start        | name, targets: [...], time_ms                                   |
| fault_stop         | name, targets: [...], time_ms                                   |
| leader_observed    | partition, leader (or null: no leader), time_ms                 |
| replica_digest     | partition, node, upto_offset, digest (or null), detail, time_ms |

`poll` numbers one consumer's `poll()` calls (0, 1, ...): reads with the same consumer and poll
came back from one call, which is what tells an internal poll skip (inside one call) from an
external one (between two calls). Older histories have no `poll` (null): each read is then judged
as if it were its own call.

`replica_digest` is written by the harness after the final read, with the nodes stopped: a digest
of one replica's log bytes over offsets `[0, upto_offset)`, the prefix every replica of the
partition holds as committed; `digest` is null when it could not be computed (`detail` says why).
Partition -1 (`METADATA_PARTITION`) is the metadata log, which every node holds.
"""

from __future__ import annotations

import enum
import json
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TextIO, TypeVar

__all__ = [
    "ConsumerRead",
    "CorruptValue",
    "DecodedValue",
    "Event",
    "EventKind",
    "FaultStart",
    "FaultStop",
    "FinalRead",
    "FinalRecord",
    "GroupCommit",
    "History",
    "HistoryWriter",
    "JsonLinesWriter",
    "LeaderObserved",
    "METADATA_PARTITION",
    "ReplicaDigest",
    "SendFailed",
    "SendIndeterminate",
    "SendInvoked",
    "SendOk",
    "decode_value",
    "encode_value",
    "event_from_dict",
    "event_to_dict",
    "events_from_jsonl",
    "events_to_jsonl",
]


class EventKind(enum.Enum):
    SEND_INVOKED = "send_invoked"
    SEND_OK = "send_ok"
    SEND_FAILED = "send_failed"
    SEND_INDETERMINATE = "send_indeterminate"
    CONSUMER_READ = "consumer_read"
    GROUP_COMMIT = "group_commit"
    FINAL_READ = "final_read"
    FAULT_START = "fault_start"
    FAULT_STOP = "fault_stop"
    LEADER_OBSERVED = "leader_observed"
    REPLICA_DIGEST = "replica_digest"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendInvoked:
    kind: ClassVar[EventKind] = EventKind.SEND_INVOKED
    producer: str
    seq: int
    key: str
    value: str
    partition: int | None
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOk:
    kind: ClassVar[EventKind] = EventKind.SEND_OK
    producer: str
    seq: int
    partition: int
    offset: int
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SendFailed:
    """The broker said, definitely, that the write was not applied (e.g. a rejected request)."""

    kind: ClassVar[EventKind] = EventKind.SEND_FAILED
    producer: str
    seq: int
    error: str
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SendIndeterminate:
    """The outcome is unknown (timeout, connection lost after sending): it may yet appear."""

    kind: ClassVar[EventKind] = EventKind.SEND_INDETERMINATE
    producer: str
    seq: int
    error: str
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerRead:
    kind: ClassVar[EventKind] = EventKind.CONSUMER_READ
    consumer: str
    group: str | None
    partition: int
    offset: int
    key: str
    value: str
    time_ms: float
    # Which poll() call of this consumer returned the record (None: not recorded).
    poll: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCommit:
    """`offset` has Kafka's meaning: the next offset the group will read (all below are done)."""

    kind: ClassVar[EventKind] = EventKind.GROUP_COMMIT
    group: str
    partition: int
    offset: int
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalRecord:
    offset: int
    key: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalRead:
    """Every record of one partition, read from its start after the faults healed."""

    kind: ClassVar[EventKind] = EventKind.FINAL_READ
    partition: int
    records: tuple[FinalRecord, ...]
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultStart:
    kind: ClassVar[EventKind] = EventKind.FAULT_START
    name: str
    targets: tuple[str, ...]
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultStop:
    kind: ClassVar[EventKind] = EventKind.FAULT_STOP
    name: str
    targets: tuple[str, ...]
    time_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderObserved:
    """`leader` None means the observer saw no leader for the partition at that time."""

    kind: ClassVar[EventKind] = EventKind.LEADER_OBSERVED
    partition: int
    leader: str | None
    time_ms: float


METADATA_PARTITION = -1  # a replica_digest of the metadata log rather than of a topic partition


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaDigest:
    """One replica's committed prefix `[0, upto_offset)`, digested offline after the run.

    All replicas of a partition are digested over the same `upto_offset` (the lowest offset any
    of them has not committed), so by Raft's log matching they must be byte-identical."""

    kind: ClassVar[EventKind] = EventKind.REPLICA_DIGEST
    partition: int
    node: str
    upto_offset: int
    digest: str | None  # None: could not be computed; `detail` says why
    detail: str
    time_ms: float


Event = (
    SendInvoked
    | SendOk
    | SendFailed
    | SendIndeterminate
    | ConsumerRead
    | GroupCommit
    | FinalRead
    | FaultStart
    | FaultStop
    | LeaderObserved
    | ReplicaDigest
)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON object for one event: its fields plus `type`."""
    out: dict[str, Any] = {"type": event.kind.value}
    if isinstance(event, FinalRead):
        out["partition"] = event.partition
        out["records"] = [[r.offset, r.key, r.value] for r in event.records]
        out["time_ms"] = event.time_ms
        return out
    out.update(asdict(event))
    if isinstance(event, FaultStart | FaultStop):
        out["targets"] = list(event.targets)
    return out


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of `event_to_dict`; raises ValueError naming the problem for a malformed object."""
    fields = {k: v for k, v in data.items() if k != "type"}
    try:
        kind = EventKind(data["type"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"history event has no known type: {data!r}") from exc
    try:
        match kind:
            case EventKind.FINAL_READ:
                records = tuple(
                    FinalRecord(offset=int(o), key=str(k), value=str(v))
                    for o, k, v in fields["records"]
                )
                return FinalRead(
                    partition=int(fields["partition"]),
                    records=records,
                    time_ms=float(fields["time_ms"]),
                )
            case EventKind.FAULT_START | EventKind.FAULT_STOP:
                cls = FaultStart if kind is EventKind.FAULT_START else FaultStop
                return cls(
                    name=str(fields["name"]),
                    targets=tuple(str(t) for t in fields["targets"]),
                    time_ms=float(fields["time_ms"]),
                )
            case _:
                return _SIMPLE[kind](**fields)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {kind.value} event {data!r}: {exc}") from exc


_SIMPLE: dict[EventKind, Any] = {
    EventKind.SEND_INVOKED: SendInvoked,
    EventKind.SEND_OK: SendOk,
    EventKind.SEND_FAILED: SendFailed,
    EventKind.SEND_INDETERMINATE: SendIndeterminate,
    EventKind.CONSUMER_READ: ConsumerRead,
    EventKind.GROUP_COMMIT: GroupCommit,
    EventKind.LEADER_OBSERVED: LeaderObserved,
    EventKind.REPLICA_DIGEST: ReplicaDigest,
}


@dataclass(frozen=True, slots=True)
class History:
    """An ordered, immutable sequence of events (in the order they were recorded)."""

    events: tuple[Event, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def to_jsonl(self) -> str:
        return events_to_jsonl(self.events, event_to_dict)

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        return cls(events_from_jsonl(text, event_from_dict, what="history"))

    def dump(self, path: Path) -> None:
        path.write_text(self.to_jsonl())

    @classmethod
    def load(cls, path: Path) -> History:
        return cls.from_jsonl(path.read_text())


# --- JSON lines, shared by this history and the queue history (queue_history.py) --------------

E = TypeVar("E")


def events_to_jsonl(events: Iterable[E], encode: Callable[[E], dict[str, Any]]) -> str:
    """One JSON object per line, keys sorted (so equal histories are equal files)."""
    return "".join(_line(encode(e)) for e in events)


def events_from_jsonl(text: str, decode: Callable[[dict[str, Any]], E], *, what: str
                      ) -> tuple[E, ...]:
    """Inverse of `events_to_jsonl`; blank lines are skipped, and a bad line is a ValueError
    naming `what` and its line number."""
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(decode(json.loads(line)))
        except (ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{what} line {number}: {exc}") from exc
    return tuple(events)


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True) + "\n"


class JsonLinesWriter(Generic[E]):
    """Appends events to a JSON-lines file as they happen, so a crashed run keeps its history,
    and keeps them in memory for the checker. Thread-safe: workload threads append at once.

    Bounded: more than `events_max` events is a workload bug (a runaway loop), not data to keep.
    After `close()` events are still kept in memory but no longer written, so a thread that
    records one last outcome after the run ended does not fail on a closed file.
    Subclasses count what they need for a progress line in `_counted` (called under the lock).
    """

    def __init__(self, path: Path, encode: Callable[[E], dict[str, Any]], *, events_max: int,
                 what: str) -> None:
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._encode = encode
        self._events: list[E] = []
        self._events_max = events_max
        self._what = what
        self._lock = threading.Lock()

    def append(self, event: E) -> None:
        line = _line(self._encode(event))
        with self._lock:
            assert len(self._events) < self._events_max, \
                f"{self._what} over {self._events_max} events"
            self._events.append(event)
            if not self._file.closed:
                self._file.write(line)
            self._counted(event)

    def extend(self, events: Iterable[E]) -> None:
        for event in events:
            self.append(event)

    def events(self) -> tuple[E, ...]:
        with self._lock:
            return tuple(self._events)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                self._file.close()

    def _counted(self, event: E) -> None:
        """Live counters of a subclass; nothing here."""


class HistoryWriter(JsonLinesWriter[Event]):
    """The run's `history.jsonl` (workload.Recorder wraps it with the run clock)."""

    def __init__(self, path: Path, *, events_max: int = 10_000_000) -> None:
        super().__init__(path, event_to_dict, events_max=events_max, what="history")

    def history(self) -> History:
        return History(self.events())

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- self-describing values ------------------------------------------------------------------
#
# Layout (ASCII, so it survives any bytes<->str round trip):
#     "tl1|<producer>|<seq>|<padding>|<crc32 of everything before this field, 8 hex digits>"
# The producer id must not contain "|". Padding is "." repeated, to reach a requested size.

_VALUE_TAG = "tl1"


class CorruptValue(ValueError):
    """A value read back is not one any producer could have written: damaged or foreign."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodedValue:
    producer: str
    seq: int


def encode_value(producer: str, seq: int, *, size_bytes: int = 0) -> str:
    """The value for send `(producer, seq)`, padded to at least `size_bytes`."""
    assert "|" not in producer, f"producer id {producer!r} must not contain '|'"
    assert seq >= 0, seq
    head = f"{_VALUE_TAG}|{producer}|{seq}|"
    padding = "." * max(0, size_bytes - len(head) - 1 - 8)
    body = f"{head}{padding}"
    return f"{body}|{zlib.crc32(body.encode()):08x}"


def decode_value(value: str) -> DecodedValue:
    """Identify the send a value came from; raises CorruptValue when it does not check out."""
    parts = value.split("|")
    if len(parts) != 5 or parts[0] != _VALUE_TAG:
        raise CorruptValue(f"not a tidelog chaos value: {value[:80]!r}")
    body, _, crc = value.rpartition("|")
    if f"{zlib.crc32(body.encode()):08x}" != crc:
        raise CorruptValue(f"checksum mismatch in value {value[:80]!r}")
    _, producer, seq, padding, _ = parts
    if not seq.isdigit() or padding.strip("."):
        raise CorruptValue(f"malformed value {value[:80]!r}")
    return DecodedValue(producer=producer, seq=int(seq))
