"""The record format of the internal topic `__consumer_offsets` (compacted).

Group G lives in partition ``xxh3_64(G utf-8) % N`` (`partition_for`); the leader of that partition
is G's coordinator. Every record has a key, so compaction keeps the latest per key; deleting is a
tombstone (null value). Keys and values are compact JSON with sorted keys (deterministic bytes, so
equal keys compare equal byte for byte, which compaction needs)::

    key                                              value
    {"g": G, "k": "offset", "p": P, "t": T}          {"metadata": str, "offset": int, "ts": ms}
    {"g": G, "k": "group"}                           the group snapshot (GroupSnapshot.to_json)

The group snapshot holds the group epoch, the assignor, every member (id, epochs, subscription,
timeouts, the partitions it holds and those being revoked) and the target assignment, so a new
coordinator keeps the members and their partitions instead of starting a rebalance. It is written
whenever any of that changes (join, leave, expiry, each reconciliation step), never on a plain
heartbeat. Sizes are bounded: one snapshot holds at most MEMBERS_MAX members.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

import xxhash

__all__ = [
    "OFFSETS_TOPIC",
    "KeyKind",
    "OffsetKey",
    "OffsetValue",
    "GroupKey",
    "decode_key",
    "decode_offset_value",
    "encode_key",
    "encode_offset_value",
    "partition_for",
]

OFFSETS_TOPIC = "__consumer_offsets"
GROUP_ID_CHARS_MAX = 255
METADATA_CHARS_MAX = 4096


def partition_for(group_id: str, partitions: int) -> int:
    """The `__consumer_offsets` partition of a group: xxh3_64 of its UTF-8 id, modulo N."""
    assert partitions > 0
    return xxhash.xxh3_64_intdigest(group_id.encode("utf-8")) % partitions


class KeyKind(Enum):
    OFFSET = "offset"
    GROUP = "group"


@dataclass(frozen=True, slots=True, kw_only=True)
class OffsetKey:
    group_id: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupKey:
    group_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OffsetValue:
    offset: int
    metadata: str = ""
    commit_ms: int = 0


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def encode_key(key: OffsetKey | GroupKey) -> bytes:
    if isinstance(key, OffsetKey):
        return _dumps({"g": key.group_id, "k": KeyKind.OFFSET.value, "p": key.partition,
                       "t": key.topic})
    return _dumps({"g": key.group_id, "k": KeyKind.GROUP.value})


def decode_key(data: bytes) -> OffsetKey | GroupKey | None:
    """None for a key this version does not know (skipped on replay: forward compatibility)."""
    try:
        obj = json.loads(data)
        kind = KeyKind(obj["k"])
    except (ValueError, KeyError, TypeError):
        return None
    if kind is KeyKind.OFFSET:
        return OffsetKey(group_id=str(obj["g"]), topic=str(obj["t"]), partition=int(obj["p"]))
    return GroupKey(group_id=str(obj["g"]))


def encode_offset_value(value: OffsetValue) -> bytes:
    return _dumps({"metadata": value.metadata, "offset": value.offset, "ts": value.commit_ms})


def decode_offset_value(data: bytes) -> OffsetValue:
    obj = json.loads(data)
    return OffsetValue(offset=int(obj["offset"]), metadata=str(obj.get("metadata", "")),
                       commit_ms=int(obj.get("ts", 0)))


def encode_json(obj: Any) -> bytes:
    return _dumps(obj)


def decode_json(data: bytes) -> Any:
    return json.loads(data)
