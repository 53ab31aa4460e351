"""A queue core's snapshot: its durable state as a JSON-able dict and back (strictly).

Consecutive offsets in the same state become one range row; restore refuses anything malformed
(ValueError naming the problem). Versions: 1 (the first), 2 (+ "dlq": dlq_ledger.py), 3
(+ "acked": recent_acks.py), 4 (+ "settled": recent_acks.RecentSettles); each older one is still
read, anything else is refused with a message saying so. Sans-I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.config import QueueConfig
from tidelog.node.queues.dlq_ledger import DlqLedger
from tidelog.node.queues.part import COUNTERS, COUNTERS_V3, DEAD, DONE, IN_FLIGHT, WAITING, Entry
from tidelog.node.queues.recent_acks import RecentAcks, RecentSettles

if TYPE_CHECKING:
    from tidelog.node.queues.core import QueueCore

__all__ = ["SNAPSHOT_VERSION", "restore_core", "snapshot_of"]

SNAPSHOT_VERSION = 4       # 2: + "dlq" (dlq_ledger.py), 3: + "acked" (recent_acks.py),
                           # 4: + "settled" (RecentSettles); 1.. read

_PART_FIELDS = ("t", "p", "start", "done", "in_flight", "waiting", "dead")
_SNAPSHOT_V1 = frozenset({"v", "config", "partitions", "counters", "redrive"})
_SNAPSHOT_FIELDS = {1: _SNAPSHOT_V1, 2: _SNAPSHOT_V1 | {"dlq"}, 3: _SNAPSHOT_V1 | {"dlq", "acked"},
                    4: _SNAPSHOT_V1 | {"dlq", "acked", "settled"}}


def snapshot_of(core: QueueCore) -> dict[str, Any]:
    """The durable state as a JSON-able dict; consecutive equal states become ranges."""
    parts = []
    for p in core._order:
        done: list[list[Any]] = []
        in_flight: list[list[Any]] = []
        waiting: list[list[Any]] = []
        dead: list[list[Any]] = []
        for off in sorted(p.entries):
            e = p.entries[off]
            if e is DONE:
                _extend(done, off, ())
            elif e.state == IN_FLIGHT:
                _extend(in_flight, off, (e.holder, e.count, e.at, e.first_ms, e.last_ms))
            elif e.state == WAITING:
                _extend(waiting, off, (e.count, e.at, e.first_ms, e.last_ms))
            else:
                _extend(dead, off, (e.reason, e.count, e.first_ms, e.last_ms))
        parts.append({"t": p.tp.topic, "p": p.tp.partition, "start": p.start, "done": done,
                      "in_flight": in_flight, "waiting": waiting, "dead": dead})
    return {"v": SNAPSHOT_VERSION, "config": core.config.to_dict(), "partitions": parts,
            "counters": dict(sorted(core.counters.items())),
            "redrive": [[k, v] for k, v in sorted(core._redrive.items())],
            "dlq": core._dlq.snapshot(), "acked": core._acked.snapshot(),
            "settled": core._settled.snapshot()}


def restore_core(cls: type[QueueCore], snapshot: Mapping[str, Any]) -> QueueCore:
    """Strict inverse of snapshot(): a malformed snapshot raises ValueError."""
    _expect(isinstance(snapshot, Mapping), "snapshot: expected an object")
    version = snapshot.get("v")
    _expect(version in _SNAPSHOT_FIELDS, f"snapshot: version {version!r} is not one this "
            f"node reads ({sorted(_SNAPSHOT_FIELDS)}); upgrade the node")
    _expect(set(snapshot) == _SNAPSHOT_FIELDS[version],
            f"snapshot: fields {sorted(snapshot)}")
    config = QueueConfig.from_dict(snapshot["config"])
    parts = snapshot["partitions"]
    _expect(isinstance(parts, list), "snapshot: partitions must be a list")
    starts: dict[TopicPartition, int] = {}
    for item in parts:
        _expect(isinstance(item, dict) and set(item) == set(_PART_FIELDS),
                f"snapshot: bad partition {str(item)[:80]}")
        _expect(isinstance(item["t"], str) and _nat(item["p"]) and _nat(item["start"]),
                "snapshot: bad partition topic/partition/start")
        starts[TopicPartition(item["t"], item["p"])] = item["start"]
    _expect(len(starts) == len(parts), "snapshot: a partition is listed twice")
    core = cls(config, starts)
    for item in parts:
        p = core._parts[TopicPartition(item["t"], item["p"])]
        for row in _rows(item["done"], ()):
            for off in range(row[0], row[1] + 1):
                p.entries[off] = DONE
        for row in _rows(item["in_flight"], (str, int, int, int, int)):
            holder, count, at, first_ms, last_ms = row[2:]
            _expect(count >= 1, "snapshot: in-flight count must be >= 1")
            for off in range(row[0], row[1] + 1):
                p.entries[off] = Entry(IN_FLIGHT, holder, count, at, first_ms, last_ms, "")
        for row in _rows(item["waiting"], (int, int, int, int)):
            count, at, first_ms, last_ms = row[2:]
            for off in range(row[0], row[1] + 1):
                p.entries[off] = Entry(WAITING, "", count, at, first_ms, last_ms, "")
        for row in _rows(item["dead"], (str, int, int, int)):
            reason, count, first_ms, last_ms = row[2:]
            for off in range(row[0], row[1] + 1):
                p.entries[off] = Entry(DEAD, "", count, 0, first_ms, last_ms, reason)
                p.dead[off] = None
        total = sum(r[1] - r[0] + 1 for key in ("done", "in_flight", "waiting", "dead")
                    for r in item[key])
        _expect(len(p.entries) == total, f"snapshot: {p.tp} has overlapping ranges")
        _expect(all(off >= p.start for off in p.entries),
                f"snapshot: {p.tp} has an entry below its start {p.start}")
    counters = snapshot["counters"]
    _expect(isinstance(counters, dict) and set(counters) in (set(COUNTERS), set(COUNTERS_V3))
            and all(_nat(v) for v in counters.values()), "snapshot: bad counters")
    core.counters = dict.fromkeys(COUNTERS, 0) | counters
    redrive = snapshot["redrive"]
    _expect(isinstance(redrive, list), "snapshot: bad redrive cursors")
    for row in redrive:
        _expect(isinstance(row, list) and len(row) == 2 and _nat(row[0]) and _nat(row[1]),
                f"snapshot: bad redrive cursor {row!r}")
        core._redrive[row[0]] = row[1]
    if "acked" in snapshot:
        core._acked = RecentAcks.restore(snapshot["acked"])
    if "settled" in snapshot:
        core._settled = RecentSettles.restore(snapshot["settled"])
    if "dlq" in snapshot:
        core._dlq = DlqLedger.restore(snapshot["dlq"])
        for batch in core._dlq.batches():
            for job in batch.jobs:
                p = core._parts.get(job.tp)
                _expect(p is not None, f"snapshot dlq: {job.tp} is not a partition")
                assert p is not None
                _expect(job.offset < p.start or job.offset in p.dead,
                        f"snapshot dlq: {job.tp} {job.offset} is batched but not dead")
    return core


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rows(raw: Any, types: tuple[type, ...]) -> Iterable[list[Any]]:
    _expect(isinstance(raw, list), "snapshot: entry ranges must be a list")
    prev = -1
    for row in raw:
        _expect(isinstance(row, list) and len(row) == 2 + len(types)
                and _nat(row[0]) and _nat(row[1]) and prev < row[0] <= row[1],
                f"snapshot: bad range {str(row)[:80]}")
        for value, kind in zip(row[2:], types, strict=True):
            _expect(isinstance(value, kind) and not isinstance(value, bool)
                    and (kind is str or value >= 0), f"snapshot: bad value in {str(row)[:80]}")
        prev = row[1]
        yield row


def _extend(items: list[list[Any]], off: int, attrs: tuple[Any, ...]) -> None:
    if items and items[-1][1] == off - 1 and tuple(items[-1][2:]) == attrs:
        items[-1][1] = off
    else:
        items.append([off, off, *attrs])
