"""The record format of `__queue_state` (compacted) and its replay.

Queue Q lives in partition ``xxh3_64(Q) % N`` (node/groups/offsets_log.partition_for). Records::

    key                      value (compact JSON, sorted keys)
    b"Q\\x00<Q>\\x00S"         {"seq": n, "snapshot": QueueCore.snapshot()}
    b"Q\\x00<Q>\\x00D<slot>"   {"seq": n, "deltas": [encode_delta(d), ...]}   slot = n % 64

One write of the coordinator is one delta record with the next seq (all the deltas of one
request). Compaction keeps the latest record per key, so the delta ring has 64 slots and the shell
writes a new snapshot at least every SNAPSHOT_EVERY (32) delta records: every delta newer than the
latest snapshot then survives compaction. Replay takes the latest snapshot and the deltas with a
higher seq, in seq order; a missing seq is a `QueueReplayError` naming the queue (never a silent
hole in the state). Deleting a queue writes tombstones for its snapshot and all 64 slots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.deltas import Delta, decode_delta, encode_delta

__all__ = [
    "DELTA_SLOTS",
    "QUEUE_STATE_TOPIC",
    "SNAPSHOT_EVERY",
    "QueueReplay",
    "QueueReplayError",
    "StateKey",
    "decode_deltas",
    "decode_key",
    "decode_snapshot",
    "delta_key",
    "encode_deltas",
    "encode_snapshot",
    "snapshot_key",
    "tombstone_keys",
]

QUEUE_STATE_TOPIC = "__queue_state"
DELTA_SLOTS = 64
SNAPSHOT_EVERY = 32
_PREFIX = b"Q\x00"


class QueueReplayError(ValueError):
    """The state of one queue cannot be rebuilt (a gap or a damaged record)."""

    def __init__(self, queue: str, message: str) -> None:
        super().__init__(f"queue {queue!r}: {message}")
        self.queue = queue


@dataclass(frozen=True, slots=True, kw_only=True)
class StateKey:
    queue: str
    slot: int | None      # None: the snapshot key


def snapshot_key(queue: str) -> bytes:
    return _PREFIX + queue.encode() + b"\x00S"


def delta_key(queue: str, seq: int) -> bytes:
    """The ring slot of delta record `seq`."""
    return _PREFIX + queue.encode() + b"\x00D" + str(seq % DELTA_SLOTS).encode()


def tombstone_keys(queue: str) -> list[bytes]:
    """Every key of a queue (write each with a null value to delete it)."""
    return [snapshot_key(queue)] + [delta_key(queue, slot) for slot in range(DELTA_SLOTS)]


def decode_key(key: bytes) -> StateKey | None:
    """None for a key this version does not know (skipped: forward compatibility)."""
    if not key.startswith(_PREFIX):
        return None
    name, sep, tail = key[len(_PREFIX):].rpartition(b"\x00")
    if not sep or not name:
        return None
    try:
        queue = name.decode()
    except UnicodeDecodeError:
        return None
    if tail == b"S":
        return StateKey(queue=queue, slot=None)
    if tail[:1] == b"D" and tail[1:].isdigit():
        slot = int(tail[1:])
        if slot < DELTA_SLOTS and str(slot).encode() == tail[1:]:
            return StateKey(queue=queue, slot=slot)
    return None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def encode_snapshot(seq: int, snapshot: dict[str, Any]) -> bytes:
    return _dumps({"seq": seq, "snapshot": snapshot})


def encode_deltas(seq: int, deltas: Sequence[Delta]) -> bytes:
    return _dumps({"seq": seq, "deltas": [encode_delta(d) for d in deltas]})


def decode_snapshot(value: bytes) -> tuple[int, dict[str, Any]]:
    return _snapshot_of(_loads(value, "snapshot"))


def decode_deltas(value: bytes) -> tuple[int, list[Delta]]:
    return _deltas_of(_loads(value, "deltas"))


def _snapshot_of(obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    snap = obj["snapshot"]
    if not isinstance(snap, dict):
        raise ValueError("queue snapshot record: snapshot must be an object")
    return obj["seq"], snap


def _deltas_of(obj: dict[str, Any]) -> tuple[int, list[Delta]]:
    raw = obj["deltas"]
    if not isinstance(raw, list):
        raise ValueError("queue delta record: deltas must be a list")
    return obj["seq"], [decode_delta(d) for d in raw]


def _loads(value: bytes, field_name: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"queue state record: not JSON ({exc})") from None
    return _checked(obj, field_name)


def _checked(obj: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != {"seq", field_name}:
        raise ValueError(f"queue state record: expected seq and {field_name}")
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError(f"queue state record: bad seq {seq!r}")
    return obj


@dataclass(slots=True)
class _Pending:
    snapshot: tuple[int, dict[str, Any]] | None = None      # (seq, the parsed record)
    deltas: dict[int, dict[str, Any]] = field(default_factory=dict)   # seq -> parsed record


class QueueReplay:
    """Feed every record of one `__queue_state` partition in log order, then `result()`.

    Each value is parsed once (JSON) in `feed`; building cores and decoding deltas waits for
    `result()` and touches only the latest snapshot and the deltas after it. A record that is
    not ours or is damaged raises QueueReplayError naming the queue."""

    def __init__(self) -> None:
        self._queues: dict[str, _Pending] = {}

    def feed(self, key: bytes, value: bytes | None) -> None:
        parsed = decode_key(key)
        if parsed is None:
            return
        if parsed.slot is None:
            if value is None:          # the queue was deleted: forget all of it
                self._queues.pop(parsed.queue, None)
                return
            obj = _parse(parsed.queue, value, "snapshot")
            seq = obj["seq"]
            pending = self._queues.setdefault(parsed.queue, _Pending())
            pending.snapshot = (seq, obj)
            for old in [s for s in pending.deltas if s <= seq]:
                del pending.deltas[old]
            return
        if value is None:
            return                     # a deleted ring slot (the snapshot's tombstone decides)
        obj = _parse(parsed.queue, value, "deltas")
        seq = obj["seq"]
        if seq % DELTA_SLOTS != parsed.slot:
            raise QueueReplayError(parsed.queue, f"delta seq {seq} in ring slot {parsed.slot}")
        pending = self._queues.setdefault(parsed.queue, _Pending())
        if pending.snapshot is None or seq > pending.snapshot[0]:
            pending.deltas[seq] = obj

    def result(self) -> dict[str, tuple[QueueCore, int]]:
        """queue -> (its core, the last seq applied). Raises QueueReplayError on a gap."""
        out: dict[str, tuple[QueueCore, int]] = {}
        for name, pending in self._queues.items():
            if pending.snapshot is None:
                raise QueueReplayError(name, f"deltas {sorted(pending.deltas)[:5]} but no "
                                             "snapshot")
            seq, raw = pending.snapshot
            try:
                _, snap = _snapshot_of(raw)
                core = QueueCore.restore(snap)
            except ValueError as exc:
                raise QueueReplayError(name, f"snapshot {seq}: {exc}") from None
            for expected, have in enumerate(sorted(pending.deltas), start=seq + 1):
                if have != expected:
                    raise QueueReplayError(name, f"delta record {expected} is missing (have "
                                                 f"{have}; snapshot at {seq})")
                try:
                    _, deltas = _deltas_of(pending.deltas[have])
                    for delta in deltas:
                        core.apply(delta)
                except (ValueError, KeyError, AssertionError) as exc:
                    # well-formed but impossible here (an unknown partition, a state the
                    # delta cannot apply to): the log is not this queue's history
                    raise QueueReplayError(name, f"delta record {have}: {exc!r}") from None
                seq = have
            out[name] = (core, seq)
        return out


def _parse(queue: str, value: bytes, field_name: str) -> dict[str, Any]:
    try:
        return _loads(value, field_name)
    except ValueError as exc:
        raise QueueReplayError(queue, str(exc)) from None
