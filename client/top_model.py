"""`tidelog top`'s data: one snapshot of the cluster, and what two snapshots say together.

Pure (no I/O, no clock): tidelog.client.top_data fills a Snapshot from the cluster,
tidelog.client.top_view draws it. Rates are not asked of the cluster: they are the difference of
two snapshots' offsets over the time between them (end offsets -> produce rate, groups' committed
offsets -> consume rate, queues' acked totals -> ack rate), so a counter that went backwards (a
topic deleted and made again, a group reset) gives no rate rather than a negative one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "GroupLag",
    "NodeState",
    "NodeView",
    "PartitionView",
    "QueueView",
    "Rates",
    "Snapshot",
    "biggest_lags",
    "biggest_queues",
    "rates",
    "snapshot_to_dict",
]


class NodeState(enum.Enum):
    UP = "up"  # answered this poll
    DOWN = "down"  # did not answer this poll (refused, timed out)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    id: int
    address: str
    state: NodeState
    voter: bool
    #: partitions this node says it leads (internal topics included); 0 when down
    leaders: int
    #: what the answering nodes think of it (their transport saw it lately); None: nobody said
    peers_see_alive: bool | None
    #: why it is down ("" when up)
    problem: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionView:
    topic: str
    partition: int
    internal: bool
    leader_id: int  # -1: none known
    replicas: tuple[int, ...]
    in_sync: tuple[int, ...]
    #: high watermark as its leader reported it; -1 when the leader did not answer
    end_offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupLag:
    group: str
    topic: str
    partition: int
    committed: int
    end_offset: int
    lag_records: int
    #: now minus the timestamp of the first record not yet consumed; 0 when nothing lags; None
    #: when it could not be read this poll
    lag_seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueView:
    name: str
    coordinator_id: int
    depth: int
    in_flight: int
    #: None when the coordinator did not describe the queue this poll
    oldest_unacked_age_s: float | None
    dlq_depth: int | None
    acked_total: int | None
    consumers: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one poll saw. `taken_s` is a monotonic time (for rates), `wall_ms` the wall
    clock (for people and lag seconds)."""

    taken_s: float
    wall_ms: int
    poll_s: float
    cluster_id: str = ""
    metadata_leader_id: int = -1
    nodes: tuple[NodeView, ...] = ()
    partitions: tuple[PartitionView, ...] = ()
    #: group -> state, members
    groups: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    lags: tuple[GroupLag, ...] = ()
    queues: tuple[QueueView, ...] = ()
    #: what went wrong while gathering, for the screen (bounded by the gatherer)
    problems: tuple[str, ...] = ()

    @property
    def reachable(self) -> bool:
        """False when no node answered at all: the screen says so instead of drawing tables."""
        return any(n.state is NodeState.UP for n in self.nodes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rates:
    """Records per second between two snapshots; absent keys: no rate (first snapshot, offset
    unknown in either, or a counter that went backwards)."""

    seconds: float
    produce_by_topic: Mapping[str, float]
    consume_by_topic: Mapping[str, float]
    acks_by_queue: Mapping[str, float]

    @property
    def produce_total(self) -> float | None:
        return sum(self.produce_by_topic.values()) if self.produce_by_topic else None

    @property
    def consume_total(self) -> float | None:
        return sum(self.consume_by_topic.values()) if self.consume_by_topic else None


NO_RATES = Rates(seconds=0.0, produce_by_topic={}, consume_by_topic={}, acks_by_queue={})


def rates(previous: Snapshot | None, current: Snapshot) -> Rates:
    """Rates from the offsets two snapshots share (user topics only)."""
    if previous is None:
        return NO_RATES
    seconds = current.taken_s - previous.taken_s
    if seconds <= 0:
        return NO_RATES
    ends_before = {(p.topic, p.partition): p.end_offset for p in previous.partitions
                   if p.end_offset >= 0 and not p.internal}
    produced = dict(((p.topic, p.partition), p.end_offset) for p in current.partitions
                       if p.end_offset >= 0 and not p.internal)
    produce = _per_key(produced, ends_before, seconds)
    committed_before = {(g.group, g.topic, g.partition): g.committed for g in previous.lags}
    consumed = dict(((g.group, g.topic, g.partition), g.committed) for g in current.lags)
    consume = _per_key(consumed, committed_before, seconds, key=lambda k: k[1])
    acked_before = {q.name: q.acked_total for q in previous.queues if q.acked_total is not None}
    acked = dict((q.name, q.acked_total) for q in current.queues if q.acked_total is not None)
    acks = _per_key(acked, acked_before, seconds)
    return Rates(seconds=seconds, produce_by_topic=produce, consume_by_topic=consume,
                 acks_by_queue=acks)


def biggest_lags(lags: Iterable[GroupLag]) -> list[GroupLag]:
    """Worst first: by lag in seconds (unknown seconds after known ones), then in records; only
    partitions that lag."""
    lagging = [g for g in lags if g.lag_records > 0]
    return sorted(lagging, key=lambda g: (g.lag_seconds is None, -(g.lag_seconds or 0.0),
                                          -g.lag_records, g.group, g.topic, g.partition))


def biggest_queues(queues: Iterable[QueueView]) -> list[QueueView]:
    """Worst first: by oldest unacked age, then depth."""
    return sorted(queues, key=lambda q: (-(q.oldest_unacked_age_s or 0.0), -q.depth, q.name))


def snapshot_to_dict(snapshot: Snapshot, rate: Rates) -> dict[str, Any]:
    """The snapshot and its rates as JSON-ready data (`tidelog top --once --output json`)."""
    out = asdict(snapshot)
    out["reachable"] = snapshot.reachable
    out["nodes"] = [{**asdict(n), "state": n.state.value} for n in snapshot.nodes]
    out["groups"] = {g: {"state": s, "members": m} for g, (s, m) in snapshot.groups.items()}
    out["rates"] = {"seconds": round(rate.seconds, 3),
                    "produce_total": rate.produce_total, "consume_total": rate.consume_total,
                    "produce_by_topic": dict(rate.produce_by_topic),
                    "consume_by_topic": dict(rate.consume_by_topic),
                    "acks_by_queue": dict(rate.acks_by_queue)}
    for name in ("nodes", "partitions", "lags", "queues", "problems"):
        out[name] = list(out[name])
    return out


def _per_key(now: Mapping[Any, int], before: Mapping[Any, int], seconds: float, *,
             key: Any = None) -> dict[str, float]:
    """Sum (now - before) per key(k) over the keys both know, / seconds. A key whose counter went
    backwards makes its whole group rateless (a reset is not a negative rate)."""
    sums: dict[str, int] = {}
    broken: set[str] = set()
    for k, value in now.items():
        if k not in before:
            continue
        name = key(k) if key is not None else (k[0] if isinstance(k, tuple) else k)
        delta = value - before[k]
        if delta < 0:
            broken.add(name)
            continue
        sums[name] = sums.get(name, 0) + delta
    return {name: total / seconds for name, total in sums.items() if name not in broken}
