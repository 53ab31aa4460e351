"""Partition reassignments as the metadata state machine keeps them (docs/operations.md
"Reassignment").

A reassignment records a partition's TARGET replica list; the partition's replica list in the
topic stays what it was until the partition's Raft group has reached the target, when the leader
proposes `CompletePartitionReassignment` and the list becomes the target. In between:

* every node in `replicas ∪ target` runs a replica of the partition (a node only in the target
  starts as a learner: it neither votes nor counts until the leader promotes it);
* every node in `involved` (the original replicas and every target set since, e.g. before a
  cancel) KEEPS its replica, even when it is in neither list: it may still be a member of the
  group, and deleting a member's data before the leader has removed it would weaken the group;
* the partition's leader drives its own group towards the target (node/reassignment.py).

Pure functions of the committed metadata, called while applying, so every node agrees.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tidelog.node.errors import (
    InvalidReplicationFactorError,
    InvalidRequestError,
    UnknownTopicError,
)
from tidelog.node.membership_state import NodeState, placeable
from tidelog.node.topics import partition_group

if TYPE_CHECKING:
    from tidelog.node.metadata import MetadataState
    from tidelog.node.metadata_commands import (
        AlterPartitionReassignment,
        CompletePartitionReassignment,
    )



@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionReassignment:
    """One partition's replicas moving from `original` to `target`."""

    topic_id: int
    partition: int
    target: tuple[int, ...]  # the wanted replica list, first = preferred leader
    original: tuple[int, ...]  # the replica list when the reassignment began
    # Invariant: original ⊆ involved and target ⊆ involved (sorted, unique).
    involved: tuple[int, ...]
    throttle_bytes_per_s: int = 0  # catch-up bytes/s the leader sends each learner; 0: no limit
    cancelled: bool = False  # target was set back to original by a cancel

    @property
    def group(self) -> str:
        return partition_group(self.topic_id, self.partition)

    def to_wire(self) -> dict[str, Any]:
        """JSON form (metadata snapshots: node/metadata_snapshot.py)."""
        return {"topic_id": self.topic_id, "partition": self.partition,
                "target": list(self.target), "original": list(self.original),
                "involved": list(self.involved),
                "throttle_bytes_per_s": self.throttle_bytes_per_s, "cancelled": self.cancelled}

    @classmethod
    def from_wire(cls, doc: Any) -> PartitionReassignment:
        """Strict: raises ValueError for anything `to_wire` would not produce."""
        keys = {"topic_id", "partition", "target", "original", "involved",
                "throttle_bytes_per_s", "cancelled"}
        if not isinstance(doc, dict) or set(doc) != keys:
            raise ValueError(f"a reassignment must be an object with the keys {sorted(keys)}")
        ints = [doc["topic_id"], doc["partition"], doc["throttle_bytes_per_s"]]
        lists = [doc["target"], doc["original"], doc["involved"]]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints) or \
                not isinstance(doc["cancelled"], bool) or not all(
                    isinstance(ids, list) and ids and all(
                        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in ids)
                    for ids in lists):
            raise ValueError(f"malformed reassignment {str(doc)[:120]}")
        out = cls(topic_id=doc["topic_id"], partition=doc["partition"],
                  target=tuple(doc["target"]), original=tuple(doc["original"]),
                  involved=tuple(doc["involved"]),
                  throttle_bytes_per_s=doc["throttle_bytes_per_s"], cancelled=doc["cancelled"])
        if not set(out.target) | set(out.original) <= set(out.involved):
            raise ValueError(f"reassignment {out.group}: involved must hold target and original")
        return out


def encode_reassignments(value: dict[str, PartitionReassignment]) -> list[dict[str, Any]]:
    return [r.to_wire() for _, r in sorted(value.items())]


def decode_reassignments(value: Any) -> dict[str, PartitionReassignment]:
    if not isinstance(value, list):
        raise ValueError("reassignments must be a list")
    out = {}
    for doc in value:
        r = PartitionReassignment.from_wire(doc)
        if r.group in out:
            raise ValueError(f"reassignment {r.group} appears twice")
        out[r.group] = r
    return out


def alter_reassignment(state: MetadataState, command: AlterPartitionReassignment
                       ) -> dict[str, Any]:
    """Begin, change or cancel one partition's reassignment. Checks everything first."""
    topic = state.topics.get(command.topic)
    if topic is None:
        raise UnknownTopicError(f"topic {command.topic!r} does not exist")
    if not 0 <= command.partition < topic.partitions:
        raise UnknownTopicError(f"topic {command.topic!r} has no partition {command.partition} "
                                f"(it has {topic.partitions})")
    group = partition_group(topic.topic_id, command.partition)
    current = state.reassignments.get(group)
    replicas = tuple(topic.replicas[command.partition])
    if command.cancel:
        if current is None:
            raise InvalidRequestError(f"{command.topic}-{command.partition}: no reassignment "
                                      "in progress to cancel")
        state.reassignments[group] = replace(current, target=current.original, cancelled=True)
        return {"target": list(current.original), "cancelled": True}
    target = tuple(command.target)
    where = f"{command.topic}-{command.partition}"
    check_target(target, known_nodes(state), where)
    new_nodes = set(target) - set(replicas) - set(current.involved if current else ())
    draining = sorted(set(new_nodes) - set(placeable(state, new_nodes)))
    if draining:
        raise InvalidRequestError(
            f"{where}: node {', '.join(map(str, draining))} is being decommissioned; no new "
            "replica is placed on it")
    if current is None and target == replicas:
        return {"target": list(target), "noop": True}  # already there: nothing to do
    original = current.original if current is not None else replicas
    involved = tuple(sorted(set(current.involved if current is not None else original)
                            | set(target)))
    state.reassignments[group] = PartitionReassignment(
        topic_id=topic.topic_id, partition=command.partition, target=target, original=original,
        involved=involved, throttle_bytes_per_s=command.throttle_bytes_per_s)
    return {"target": list(target)}


def known_nodes(state: MetadataState) -> set[int]:
    """Nodes a replica may be placed on as far as the metadata knows: registered ones, admitted
    ones (node/membership_state.py: joining, active, draining), and every node some replica
    list names (a node of the initial --peers that has not registered YET is a valid member:
    topics are placed on --peers, and a node registers a moment after it starts)."""
    known = set(state.nodes)
    known |= {n for n, m in state.members.items() if m.state is not NodeState.REMOVED}
    known |= {n for t in state.topics.values() for r in t.replicas for n in r}
    return known - {n for n, m in state.members.items() if m.state is NodeState.REMOVED}


def check_target(target: tuple[int, ...], nodes: Iterable[int], where: str) -> None:
    """A target replica list names each known node at most once (the operator's fault)."""
    known = set(nodes)
    if not target:
        raise InvalidReplicationFactorError(f"{where}: a target needs at least one replica")
    if len(set(target)) != len(target):
        raise InvalidReplicationFactorError(f"{where}: target {list(target)} names a node "
                                            "twice")
    unknown = sorted(set(target) - known)
    if unknown:
        raise InvalidRequestError(
            f"{where}: node{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(str, unknown))} {'are' if len(unknown) > 1 else 'is'} not a node "
            f"of this cluster (known nodes: {', '.join(map(str, sorted(known)))})")


def complete_reassignment(state: MetadataState, command: CompletePartitionReassignment
                          ) -> dict[str, Any]:
    """The group's committed membership equals the target: the replica list becomes it. A stale
    completion (the target changed, or it completed already) is refused and changes nothing."""
    group = partition_group(command.topic_id, command.partition)
    current = state.reassignments.get(group)
    topic = state.topic_by_id(command.topic_id)
    if current is None or topic is None or current.target != tuple(command.target):
        raise InvalidRequestError(f"reassignment of {group} to {list(command.target)} is not "
                                  "in progress (completed, changed or cancelled)")
    topic.replicas[command.partition] = list(command.target)
    del state.reassignments[group]
    return {"replicas": list(command.target)}


def drop_reassignments(state: MetadataState, topic_id: int) -> None:
    """A deleted topic's reassignments end with it."""
    for group in [g for g, r in state.reassignments.items() if r.topic_id == topic_id]:
        del state.reassignments[group]


def nodes_running(state: MetadataState, topic_id: int, partition: int,
                  replicas: list[int]) -> tuple[set[int], set[int]]:
    """(nodes that must run a replica of the partition, nodes that may keep one)."""
    r = state.reassignments.get(partition_group(topic_id, partition))
    if r is None:
        return set(replicas), set(replicas)
    return set(replicas) | set(r.target), set(replicas) | set(r.involved)


def preferred_leader(state: MetadataState, topic_id: int, partition: int,
                     replicas: list[int]) -> int | None:
    """The leader the balancer moves leadership to: the list's first replica; None while a
    reassignment is in progress, when the reassignment's driver moves leadership itself (the
    old preferred leader may be on its way out: balancing back to it would fight the driver)."""
    if partition_group(topic_id, partition) in state.reassignments:
        return None
    return replicas[0] if replicas else None
