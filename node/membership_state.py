"""The node set as the metadata state machine keeps it: who is a member, and in which state.

Pure functions of the committed metadata (the state machine calls the handlers while applying
AddNode / DecommissionNode / RemoveNode / RegisterNode), so every node reaches the same answer.

A node's life (docs/operations.md "Add and remove nodes"):

    (not a member) --AddNode--> JOINING --RegisterNode--> ACTIVE --DecommissionNode--> DRAINING
    DRAINING --RemoveNode--> REMOVED (final: the id is never admitted again)
    DRAINING --RecommissionNode--> ACTIVE (a decommission cancelled)

The nodes the cluster was started with (`--peers`) are ACTIVE members without an entry in
`MetadataState.members` until one of them is decommissioned; only AddNode admits anyone else.
The admission gate itself is not here: a node that is no member has its Raft streams, its Join
and (with TLS) every peer call refused (node/membership.py `is_member`), so its RegisterNode
never reaches the log.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tidelog.node.errors import InvalidRequestError

if TYPE_CHECKING:
    from tidelog.node.metadata import MetadataState
    from tidelog.node.metadata_commands import (
        AddNode,
        DecommissionNode,
        RecommissionNode,
        RegisterNode,
        RemoveNode,
    )


class NodeState(enum.Enum):
    JOINING = "joining"  # admitted (AddNode), has not registered yet
    ACTIVE = "active"
    DRAINING = "draining"  # decommissioned: placements skip it, its replicas move away
    REMOVED = "removed"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeMember:
    """A node admitted with AddNode, or any node once decommissioned. `peer_address` is empty
    for a node of the initial --peers (every node derives its peer listener from --peers)."""

    node_id: int
    address: str
    peer_address: str
    state: NodeState
    metadata_voter: bool = False


def node_state(state: MetadataState, node_id: int) -> NodeState | None:
    """A node's state; None for a node the metadata does not know (never admitted, or one of
    the initial nodes that has not registered yet)."""
    member = state.members.get(node_id)
    if member is not None:
        return member.state
    return NodeState.ACTIVE if node_id in state.nodes else None


def placeable(state: MetadataState, node_ids: list[int] | set[int]) -> list[int]:
    """Of these nodes, those new replicas may be placed on: not draining, not removed."""
    return sorted(n for n in node_ids if node_state(state, n) not in (NodeState.DRAINING,
                                                                      NodeState.REMOVED))


def replicas_on(state: MetadataState, node_id: int) -> list[tuple[str, int]]:
    """(topic, partition) of every partition with a replica assigned to `node_id`."""
    return [(topic.name, partition) for topic in state.topics.values()
            for partition, replicas in enumerate(topic.replicas) if node_id in replicas]


# -- handlers (called by MetadataState.apply; each checks everything before it changes anything)


def apply_add_node(state: MetadataState, command: AddNode) -> dict[str, Any]:
    known = state.members.get(command.node_id)
    if known is not None and known.state is NodeState.REMOVED:
        raise InvalidRequestError(
            f"node {command.node_id} was removed from this cluster; a removed id is never "
            "admitted again (its old data could come back with it): give the new node another "
            "id")
    if known is not None:
        same = (known.address, known.peer_address) == (command.address, command.peer_address)
        if not same and known.state is NodeState.JOINING:
            # Not registered yet, so no data of it exists anywhere: a mistyped address is fixed
            # by admitting it again (the links move to the new address).
            state.members[command.node_id] = replace(
                known, address=command.address, peer_address=command.peer_address,
                metadata_voter=command.metadata_voter)
            return {"state": NodeState.JOINING.value, "moved_from": known.address}
        if not same:
            raise InvalidRequestError(
                f"node {command.node_id} is already a member at {known.address} (peer "
                f"{known.peer_address}); decommission it, then admit the new node under "
                "another id")
        return {"state": known.state.value, "already": True}
    if command.node_id in state.nodes:
        raise InvalidRequestError(f"node {command.node_id} is already a member (at "
                                  f"{state.nodes[command.node_id]})")
    state.members[command.node_id] = NodeMember(
        node_id=command.node_id, address=command.address, peer_address=command.peer_address,
        state=NodeState.JOINING, metadata_voter=command.metadata_voter)
    return {"state": NodeState.JOINING.value}


def check_register(state: MetadataState, command: RegisterNode) -> None:
    """A removed node may not register again (its process was told to stop)."""
    member = state.members.get(command.node_id)
    if member is not None and member.state is NodeState.REMOVED:
        raise InvalidRequestError(f"node {command.node_id} was removed from this cluster")


def after_register(state: MetadataState, node_id: int) -> None:
    member = state.members.get(node_id)
    if member is not None and member.state is NodeState.JOINING:
        state.members[node_id] = replace(member, state=NodeState.ACTIVE)


def apply_decommission(state: MetadataState, command: DecommissionNode) -> dict[str, Any]:
    node_id = command.node_id
    current = node_state(state, node_id)
    if current is None:
        raise InvalidRequestError(f"node {node_id} is not a member of this cluster")
    if current is NodeState.REMOVED:
        raise InvalidRequestError(f"node {node_id} was removed already")
    if current is NodeState.DRAINING:
        return {"state": current.value, "already": True}
    remaining = [n for n in placeable(state, set(state.nodes)) if n != node_id]
    widest = max((len(r) for t in state.topics.values() for r in t.replicas), default=0)
    if widest > len(remaining):
        raise InvalidRequestError(
            f"cannot decommission node {node_id}: a partition has {widest} replicas and only "
            f"{len(remaining)} other nodes would remain to hold them (add a node, or lower "
            "that topic's replication factor, first)")
    member = state.members.get(node_id)
    state.members[node_id] = (replace(member, state=NodeState.DRAINING) if member is not None
                              else NodeMember(node_id=node_id, address=state.nodes[node_id],
                                              peer_address="", state=NodeState.DRAINING))
    return {"state": NodeState.DRAINING.value}


def apply_recommission(state: MetadataState, command: RecommissionNode) -> dict[str, Any]:
    """DRAINING → ACTIVE (placements may use it again; JOINING for one that never registered);
    a node not draining is refused."""
    member = state.members.get(command.node_id)
    if member is None or member.state is not NodeState.DRAINING:
        current = node_state(state, command.node_id)
        raise InvalidRequestError(
            f"node {command.node_id} is {current.value if current else 'not a member'}; only a "
            "draining node can be recommissioned")
    back = NodeState.ACTIVE if command.node_id in state.nodes else NodeState.JOINING
    state.members[command.node_id] = replace(member, state=back)
    return {"state": back.value}


def apply_remove(state: MetadataState, command: RemoveNode) -> dict[str, Any]:
    node_id = command.node_id
    member = state.members.get(node_id)
    if member is None or member.state is not NodeState.DRAINING:
        current = node_state(state, node_id)
        raise InvalidRequestError(
            f"node {node_id} is {current.value if current else 'not a member'}; only a "
            "draining node can be removed (decommission it first)")
    left = replicas_on(state, node_id)
    if left and not command.force:
        shown = ", ".join(f"{t}-{p}" for t, p in left[:5])
        raise InvalidRequestError(
            f"node {node_id} still holds {len(left)} partition replicas ({shown}"
            f"{', ...' if len(left) > 5 else ''}); move them first or force")
    state.members[node_id] = replace(member, state=NodeState.REMOVED)
    state.nodes.pop(node_id, None)
    state.listeners.pop(node_id, None)
    return {"state": NodeState.REMOVED.value, "replicas_left": len(left)}
