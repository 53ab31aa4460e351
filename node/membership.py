"""Node membership: who may talk to this node, joining a running cluster, draining and leaving.

Theory of operation (docs/operations.md "Add and remove nodes"):

* **The node set** is the initial `--peers` plus every node admitted with `AddNode`, minus the
  removed ones (`member_ids`). Only members may open a Raft stream to us (`Exchange`), Join, or
  (with TLS, whose certificate names `tidelog://node/<id>`) make any peer call. A process that
  was never admitted is refused everywhere and its refusals are logged on both sides.
* **Peer addresses come from the metadata** (`peer_addresses`): the static `--peers`, each
  admitted node's `AddNode.peer_address`, and for the rest their registered client address plus
  the peer port offset. The transport opens a link when a node appears there and closes it
  when the node is removed (`Transport.set_peers`).
* **Joining.** A new node starts with `--join HOST:PORT,...` (client addresses of any members,
  DNS names welcome) and an empty data dir. It asks the seeds (`NodeMembershipPeer.Join`, on
  their peer listeners) until one answers that it was admitted: the answer holds every member's
  peer address and the metadata group's current voters and learners. It keeps the answer in
  `join.json` (so a restart never falls back to a bootstrap membership of its own) and opens its
  metadata replica as a LEARNER of that membership; the metadata leader adds it as a learner
  (`next_metadata_change`), it replays the metadata log, registers, and is ACTIVE.
* **Metadata voters** stay the initial ones: a joining node is promoted only when admitted with
  `--metadata-voter` (changing voters is the risky change: a mistake costs the quorum).
* **Decommission** marks the node DRAINING (placements skip it); the draining node hands its
  leaderships to caught-up peers (`leaderships_to_move`); the metadata leader moves its
  replicas away through the partition reassignment (`ReplicaMover`), then commits RemoveNode
  and removes it from the metadata group (handing metadata leadership over first if it has it);
  the removed node stops itself once it is out of the metadata group.

The decisions are pure functions of (metadata state, Raft membership, liveness); the
`MembershipController` at the end is the thin loop that applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from tidelog.node import errors as E
from tidelog.node.config import NodeConfig, parse_address, peer_address
from tidelog.node.membership_state import NodeState, node_state, placeable, replicas_on
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command, RemoveNode
from tidelog.node.raft import ConfigChangeRejected, Membership, NodeId, NotLeader, RaftError
from tidelog.node.storage.metafile import read_checksummed, write_checksummed

log = logging.getLogger(__name__)

JOIN_FILE = "join.json"
JOIN_RETRY_S = 1.0
CONTROL_INTERVAL_S = 0.25
REFUSAL_LOG_INTERVAL_S = 30.0
# A removed node stops once out of the metadata group or at the latest this long after applying
# RemoveNode: it rarely learns that the CONFIG entry removing it committed (the leader stops
# sending to it), and stopping is safe anyway: the change needs a majority of the old voters,
# which decommission checked were up.
REMOVED_STOP_WAIT_S = 3.0
METADATA_VOTERS_MIN = 3


# ============================================================== the node set (pure)


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinedPeer:
    node_id: int
    address: str
    peer_address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRecord:
    """What a seed answered a joining node: kept in `join.json` for every later start."""

    cluster_id: str
    peers: tuple[JoinedPeer, ...]
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    membership_index: int

    def bootstrap_membership(self, self_id: int) -> Membership:
        """The metadata group as the seed knew it, with this node a learner (never a voter: a
        joining node must not be able to elect itself)."""
        return Membership(voters=frozenset(NodeId(v) for v in self.voters if v != self_id),
                          learners=frozenset(NodeId(n) for n in (*self.learners, self_id)
                                             if n not in self.voters or n == self_id),
                          index=self.membership_index)

    def encode(self) -> bytes:
        return json.dumps({
            "cluster_id": self.cluster_id, "voters": list(self.voters),
            "learners": list(self.learners), "membership_index": self.membership_index,
            "peers": [[p.node_id, p.address, p.peer_address] for p in self.peers]},
            sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> JoinRecord:
        body = json.loads(data)
        return cls(cluster_id=body["cluster_id"], voters=tuple(body["voters"]),
                   learners=tuple(body["learners"]), membership_index=body["membership_index"],
                   peers=tuple(JoinedPeer(node_id=p[0], address=p[1], peer_address=p[2])
                               for p in body["peers"]))


def member_ids(config: NodeConfig, state: MetadataState,
               joined: JoinRecord | None = None) -> set[int]:
    """Every node of the cluster that is not removed: the initial --peers, registered and
    admitted nodes, and (on a node that joined) the members its seed named."""
    ids = set(config.peers) | set(state.nodes) | set(state.members)
    if joined is not None:
        ids |= {p.node_id for p in joined.peers}
    return {n for n in ids if node_state(state, n) is not NodeState.REMOVED}


def peer_addresses(config: NodeConfig, state: MetadataState,
                   joined: JoinRecord | None = None) -> dict[int, str]:
    """node id → its peer listener, for every member. Precedence: --peers (the operator's
    word for this node), the admitted peer address, the seed's answer, then the registered
    client address plus the peer port offset (as --peers derives it)."""
    out: dict[int, str] = {}
    for node_id in member_ids(config, state, joined):
        member = state.members.get(node_id)
        seed = next((p for p in joined.peers if p.node_id == node_id), None) if joined else None
        if node_id in config.peers:
            out[node_id] = config.peer_addresses[node_id]
        elif member is not None and member.peer_address:
            out[node_id] = member.peer_address
        elif seed is not None and seed.peer_address:
            out[node_id] = seed.peer_address
        elif node_id in state.nodes:
            with contextlib.suppress(E.ConfigError):
                out[node_id] = peer_address(state.nodes[node_id], config.peer_port_offset)
    return out


def placement_nodes(config: NodeConfig, state: MetadataState) -> list[int]:
    """Where new replicas may go: members that are not joining, draining or removed."""
    candidates = set(config.peers) | set(state.nodes)
    return [n for n in placeable(state, candidates)
            if node_state(state, n) is not NodeState.JOINING]


class LiveNodeIds(Collection[int]):
    """The node set as a live collection, for checks made per call (PeerAuthInterceptor)."""

    def __init__(self, ids: Callable[[], set[int]]) -> None:
        self._ids = ids

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._ids()

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._ids()))

    def __len__(self) -> int:
        return len(self._ids())


# ============================================================== decisions (pure)


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE = "remove"
    TRANSFER_LEADERSHIP = "transfer_leadership"


@dataclass(frozen=True, slots=True)
class MetadataChange:
    kind: ChangeKind
    node_id: int


def next_metadata_change(state: MetadataState, membership: Membership, *, leader_id: int,
                         caught_up: Callable[[int], bool]) -> MetadataChange | None:
    """The one membership change of the metadata Raft group the leader should make next
    (Raft allows one pending change at a time), or None. Removals first, so a removed node
    stops counting toward the quorum; the leader never removes itself: it hands over first."""
    members = membership.voters | membership.learners
    for node_id in sorted(members):
        if node_state(state, node_id) is NodeState.REMOVED:
            if node_id == leader_id:
                target = _handover_target(state, membership, leader_id, caught_up)
                return None if target is None else MetadataChange(
                    ChangeKind.TRANSFER_LEADERSHIP, target)
            return MetadataChange(ChangeKind.REMOVE, node_id)
    for member in sorted(state.members.values(), key=lambda m: m.node_id):
        if member.state is not NodeState.REMOVED and member.node_id not in members:
            return MetadataChange(ChangeKind.ADD_LEARNER, member.node_id)
    for member in sorted(state.members.values(), key=lambda m: m.node_id):
        if (member.metadata_voter and member.state is NodeState.ACTIVE
                and member.node_id in membership.learners and caught_up(member.node_id)):
            return MetadataChange(ChangeKind.PROMOTE, member.node_id)
    if node_state(state, leader_id) is NodeState.DRAINING:
        target = _handover_target(state, membership, leader_id, caught_up)
        if target is not None:
            return MetadataChange(ChangeKind.TRANSFER_LEADERSHIP, target)
    return None


def _handover_target(state: MetadataState, membership: Membership, leader_id: int,
                     caught_up: Callable[[int], bool]) -> int | None:
    for node_id in sorted(membership.voters):
        if node_id != leader_id and caught_up(node_id) and node_state(state, node_id) in (
                NodeState.ACTIVE, None):
            return int(node_id)
    return None


def voter_removal_problem(voters: Collection[int], node_id: int, *, alive: Callable[[int], bool],
                          force: bool) -> str | None:
    """Why decommissioning `node_id` would endanger the metadata quorum (None: safe). The
    voters that remain must be at least 3 (else only with force) and a majority of them up."""
    if node_id not in voters:
        return None
    remaining = [v for v in voters if v != node_id]
    if not remaining:
        return f"node {node_id} is the only metadata voter"
    if len(remaining) < METADATA_VOTERS_MIN and not force:
        return (f"node {node_id} is a metadata voter: removing it leaves {len(remaining)} "
                f"voters ({', '.join(map(str, sorted(remaining)))}), fewer than "
                f"{METADATA_VOTERS_MIN}, so one more failure would stop the metadata group; "
                "add a voter first (`add-node --metadata-voter`) or pass --force")
    up = [v for v in remaining if alive(v)]
    if len(up) <= len(remaining) // 2:
        return (f"only {len(up)} of the {len(remaining)} metadata voters that would remain are "
                "up: removing a voter now could leave the metadata group without a majority")
    return None


@dataclass(frozen=True, slots=True)
class LeadershipMove:
    group: str
    to: int


# ============================================================== seams


class ReplicaMover(Protocol):
    """Moves a draining node's partition replicas to other nodes (the partition reassignment:
    a new replica joins as a learner, catches up, is promoted, the old one is removed).
    Called by the metadata leader's controller every round while replicas are left: it must be
    idempotent (start what is not started, leave running moves alone)."""

    async def move_off(self, node_id: int) -> None: ...


class MetadataGroup(Protocol):
    """What the controller needs of node/metadata_service.MetadataService."""

    @property
    def state(self) -> MetadataState: ...

    @property
    def replica(self) -> Any: ...  # node/replica.Replica of __metadata

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...


class PartitionReplicas(Protocol):
    """What the controller needs of node/replica_manager.ReplicaManager."""

    @property
    def partitions(self) -> Mapping[str, Any]: ...

    @property
    def transport(self) -> Any: ...  # node/transport.Transport

    def alive(self, node_id: int) -> bool: ...


# ============================================================== joining (I/O)


def load_join_record(data_dir: Path) -> JoinRecord | None:
    raw = read_checksummed(data_dir / JOIN_FILE)
    return None if raw is None else JoinRecord.decode(raw)


def store_join_record(data_dir: Path, record: JoinRecord) -> None:
    write_checksummed(data_dir / JOIN_FILE, record.encode())


async def join_cluster(config: NodeConfig, seeds: tuple[str, ...],
                       channel: Callable[[str], grpc.aio.Channel]) -> JoinRecord:
    """Ask the seeds (client addresses; their peer listeners are dialled) until one answers
    that this node was admitted. Refusals are logged once per reason: an operator sees what to
    run (`tidelog cluster add-node ...`)."""
    from tidelog.proto import membership_pb2 as mpb
    from tidelog.proto import membership_pb2_grpc

    request = mpb.JoinRequest(node_id=config.node_id, address=config.advertise,
                              cluster_id=config.cluster_id)
    said: set[str] = set()
    while True:
        for seed in seeds:
            target = peer_address(seed, config.peer_port_offset)
            ch = channel(target)
            try:
                answer = await membership_pb2_grpc.NodeMembershipPeerStub(ch).Join(
                    request, timeout=5.0)
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
                if reason not in said:
                    said.add(reason)
                    log.warning("node %d: join via %s (%s) refused or failed: %s%s",
                                config.node_id, seed, target, reason,
                                "; waiting to be admitted (tidelog cluster add-node "
                                f"{config.node_id} --address {config.advertise})"
                                if exc.code() is grpc.StatusCode.PERMISSION_DENIED else "")
                continue
            finally:
                await ch.close()
            record = JoinRecord(
                cluster_id=answer.cluster_id,
                peers=tuple(JoinedPeer(node_id=p.node_id, address=p.address,
                                       peer_address=p.peer_address) for p in answer.peers),
                voters=tuple(answer.metadata_voters), learners=tuple(answer.metadata_learners),
                membership_index=answer.membership_index)
            log.info("node %d joined cluster %s via %s: members %s, metadata voters %s",
                     config.node_id, record.cluster_id, seed,
                     ",".join(str(p.node_id) for p in record.peers), list(record.voters))
            return record
        await asyncio.sleep(JOIN_RETRY_S)


def seeds_of(text: str) -> tuple[str, ...]:
    """'HOST:PORT,HOST:PORT' → the addresses, each checked."""
    seeds = tuple(s.strip() for s in text.split(",") if s.strip())
    for seed in seeds:
        parse_address(seed)
    return seeds


# ============================================================== the controller (I/O shell)


class MembershipController:
    """Applies the decisions above on this node, every CONTROL_INTERVAL_S. Owned by the loop."""

    def __init__(self, config: NodeConfig, *, metadata: MetadataGroup,
                 replicas: PartitionReplicas, mover: ReplicaMover,
                 on_removed: Callable[[], None]) -> None:
        self.config = config
        self.id = config.node_id
        self.joined: JoinRecord | None = None
        self._metadata = metadata
        self._replicas = replicas
        self._mover = mover
        self._on_removed = on_removed
        self._refusals: dict[tuple[str, int], float] = {}
        self._removed_at: float | None = None
        self._draining_said = False

    # -- the node set, as every part of the node asks it

    @property
    def state(self) -> MetadataState:
        return self._metadata.state

    def member_ids(self) -> set[int]:
        return member_ids(self.config, self.state, self.joined)

    def is_member(self, node_id: int) -> bool:
        """Whether `node_id` may talk to us; a refusal is logged (at most every 30 s a node)."""
        if node_id != self.id and node_id in self.member_ids():
            return True
        self.note_refusal("raft stream", node_id)
        return False

    def note_refusal(self, what: str, node_id: int) -> None:
        now = time.monotonic()
        if now - self._refusals.get((what, node_id), -1e9) >= REFUSAL_LOG_INTERVAL_S:
            self._refusals[(what, node_id)] = now
            removed = node_state(self.state, node_id) is NodeState.REMOVED
            log.warning("refused %s of node %d: %s", what, node_id,
                        "it was removed from this cluster" if removed else
                        "it is not a member of this cluster (admit it with `tidelog cluster "
                        f"add-node {node_id} --address HOST:PORT`)")

    def peer_addresses(self) -> dict[int, str]:
        return {n: a for n, a in peer_addresses(self.config, self.state, self.joined).items()
                if n != self.id}

    def placement_nodes(self) -> list[int]:
        return placement_nodes(self.config, self.state)

    def metadata_membership(self) -> Membership | None:
        replica = self._metadata.replica
        return None if replica is None else replica.core.membership

    # -- the loop

    def refresh_links(self) -> None:
        self._replicas.transport.set_peers(self.peer_addresses())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_INTERVAL_S)
            try:
                self.refresh_links()
                self._move_own_leaderships()
                await self._lead_metadata_membership()
                await self._drive_drains()
                self._stop_when_removed()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: keep the node up, say so
                log.exception("membership controller round failed")

    def _caught_up(self, node_id: int) -> bool:
        replica = self._metadata.replica
        progress = replica.core.progress.get(NodeId(node_id))
        return (progress is not None and progress.match >= replica.commit_index
                and self._replicas.alive(node_id))

    async def _lead_metadata_membership(self) -> None:
        replica = self._metadata.replica
        if replica is None or not replica.is_leader:
            return
        change = next_metadata_change(self.state, replica.core.membership, leader_id=self.id,
                                      caught_up=self._caught_up)
        if change is None or replica.core.lead_transferee is not None:
            return
        try:
            match change.kind:
                case ChangeKind.ADD_LEARNER:
                    replica.add_learner(change.node_id)
                case ChangeKind.PROMOTE:
                    replica.promote(change.node_id)
                case ChangeKind.REMOVE:
                    replica.remove(change.node_id)
                case ChangeKind.TRANSFER_LEADERSHIP:
                    replica.transfer_leadership(change.node_id)
        except (ConfigChangeRejected, NotLeader, RaftError) as exc:
            log.debug("metadata membership change %s %d not made yet: %s", change.kind.value,
                      change.node_id, exc)
            return
        log.info("metadata group: %s node %d", change.kind.value.replace("_", " "),
                 change.node_id)

    def _move_own_leaderships(self) -> None:
        """A draining node hands every partition it leads to a caught-up voter."""
        if node_state(self.state, self.id) is not NodeState.DRAINING:
            self._draining_said = False  # (a decommission cancelled: say it again next time)
            return
        if not self._draining_said:
            self._draining_said = True
            log.info("node %d is draining: moving its leaderships and replicas away", self.id)
        for group, replica in list(self._replicas.partitions.items()):
            if not replica.is_leader or replica.core.lead_transferee is not None:
                continue
            target = self._partition_target(replica)
            if target is not None:
                with contextlib.suppress(Exception):
                    replica.transfer_leadership(target)
                    log.info("draining: leadership of %s moves to node %d", group, target)

    def _partition_target(self, replica: Any) -> int | None:
        for node_id, progress in sorted(replica.core.progress.items()):
            if (node_id != self.id and node_id in replica.core.membership.voters
                    and progress.match >= replica.commit_index and self._replicas.alive(node_id)
                    and node_state(self.state, node_id) not in (NodeState.DRAINING,
                                                                NodeState.REMOVED)):
                return int(node_id)
        return None

    async def _drive_drains(self) -> None:
        """On the metadata leader: move each draining node's replicas away; once none is left,
        commit its removal."""
        replica = self._metadata.replica
        if replica is None or not replica.is_leader or replica.core.lead_transferee is not None:
            return  # (a leader handing over leaves the drain to the next one)
        for member in list(self.state.members.values()):
            if member.state is not NodeState.DRAINING:
                continue
            if replicas_on(self.state, member.node_id):
                await self._mover.move_off(member.node_id)
                continue
            result = await self._metadata.propose(RemoveNode(node_id=member.node_id))
            if "error" in result:
                log.warning("removing drained node %d refused: %s", member.node_id,
                            result.get("message"))
            else:
                log.info("node %d is drained (no replica left) and removed", member.node_id)

    def _stop_when_removed(self) -> None:
        """A removed node stops once the metadata group has let it go (or after a grace)."""
        if node_state(self.state, self.id) is not NodeState.REMOVED:
            return
        now = time.monotonic()
        if self._removed_at is None:
            self._removed_at = now
            log.info("node %d was removed from the cluster; stopping once it is out of the "
                     "metadata group", self.id)
        replica = self._metadata.replica
        still_in = replica is not None and self.id in replica.core.membership.voters | \
            replica.core.membership.learners
        if replica is not None and replica.is_leader:
            return  # the controller hands leadership over first (next_metadata_change)
        if still_in and now - self._removed_at < REMOVED_STOP_WAIT_S:
            return
        self._on_removed()

