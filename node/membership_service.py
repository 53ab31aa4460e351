"""The membership servicers (proto/membership.proto).

`NodeMembershipService` (client listener): AddNode and DecommissionNode become metadata commands
(checked here first where only this node can check: the metadata group's voters); Describe reads
this node's view. `NodeMembershipPeerService` (peer listener): Join, answered only for a node
that was admitted, at the address it was admitted with.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from tidelog.node import errors as E
from tidelog.node.config import NodeConfig, peer_address
from tidelog.node.membership import MembershipController, voter_removal_problem
from tidelog.node.membership_state import NodeState, node_state, replicas_on
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import AddNode, DecommissionNode, RecommissionNode
from tidelog.node.metadata_service import METADATA_GROUP, raise_result
from tidelog.node.service import _unary as unary
from tidelog.proto import membership_pb2 as mpb
from tidelog.proto import membership_pb2_grpc

log = logging.getLogger(__name__)

TIMEOUT_MS_DEFAULT = 10_000
TIMEOUT_MS_MAX = 120_000
REFUSAL_LOG_INTERVAL_S = 30.0


def _timeout_s(timeout_ms: int) -> float:
    if timeout_ms < 0:
        raise E.InvalidRequestError(f"timeout_ms {timeout_ms} is negative")
    return min(timeout_ms or TIMEOUT_MS_DEFAULT, TIMEOUT_MS_MAX) / 1000


class NodeMembershipService(membership_pb2_grpc.NodeMembershipServicer):
    def __init__(self, config: NodeConfig, metadata: Any, replicas: Any,
                 controller: MembershipController) -> None:
        self._config = config
        self._metadata = metadata
        self._replicas = replicas
        self._controller = controller

    @unary
    async def AddNode(self, request, context):  # noqa: N802 - gRPC method names
        address = request.address.strip()
        if request.node_id <= 0 or not address:
            raise E.InvalidRequestError("AddNode needs a node id > 0 and its address HOST:PORT")
        try:
            peer = request.peer_address.strip() or peer_address(address,
                                                                self._config.peer_port_offset)
        except E.ConfigError as exc:
            raise E.InvalidRequestError(str(exc)) from None
        result = await self._metadata.propose(AddNode(
            node_id=request.node_id, address=address, peer_address=peer,
            metadata_voter=request.metadata_voter), _timeout_s(request.timeout_ms))
        raise_result(result)
        return mpb.AddNodeResponse(state=result.get("state", ""),
                                   already=bool(result.get("already")), peer_address=peer)

    @unary
    async def DecommissionNode(self, request, context):  # noqa: N802
        if request.cancel:
            result = await self._metadata.propose(RecommissionNode(node_id=request.node_id),
                                                  _timeout_s(request.timeout_ms))
            raise_result(result)
            return mpb.DecommissionNodeResponse(state=result.get("state", ""))
        membership = self._controller.metadata_membership()
        voters = set(membership.voters) if membership is not None else set()
        problem = voter_removal_problem(voters, request.node_id, alive=self._replicas.alive,
                                        force=request.force)
        if problem is not None:
            raise E.PolicyViolationError(f"not decommissioning node {request.node_id}: "
                                         f"{problem}")
        result = await self._metadata.propose(DecommissionNode(node_id=request.node_id),
                                              _timeout_s(request.timeout_ms))
        raise_result(result)
        return mpb.DecommissionNodeResponse(state=result.get("state", ""),
                                            already=bool(result.get("already")))

    @unary
    async def DescribeMembership(self, request, context):  # noqa: N802
        return describe(self._config, self._metadata, self._replicas, self._controller)


def describe(config: NodeConfig, metadata: Any, replicas: Any,
             controller: MembershipController) -> mpb.DescribeMembershipResponse:
    """Every node this node knows of, removed ones included, with its state and what it holds."""
    state: MetadataState = metadata.state
    membership = controller.metadata_membership()
    voters = set(membership.voters) if membership is not None else set()
    learners = set(membership.learners) if membership is not None else set()
    leads: dict[int, int] = {}
    for group, hint in replicas.leader_hints.items():
        if group != METADATA_GROUP:
            leads[hint.leader_id] = leads.get(hint.leader_id, 0) + 1
    peers = controller.peer_addresses()
    leader = metadata.leader_id
    out = mpb.DescribeMembershipResponse(metadata_leader_id=leader if leader is not None else -1)
    for node_id in sorted(set(config.peers) | set(state.nodes) | set(state.members)):
        member = state.members.get(node_id)
        current = node_state(state, node_id) or NodeState.ACTIVE  # --peers, not registered yet
        out.members.append(mpb.MemberInfo(
            node_id=node_id,
            address=state.nodes.get(node_id) or (member.address if member else "")
            or config.peers.get(node_id, ""),
            peer_address=(config.peer_addresses.get(node_id) if node_id == config.node_id
                          else peers.get(node_id, member.peer_address if member else "")) or "",
            state=current.value,
            metadata_role="voter" if node_id in voters else
            "learner" if node_id in learners else "none",
            alive=replicas.alive(node_id) if current is not NodeState.REMOVED else False,
            replicas=len(replicas_on(state, node_id)), leaderships=leads.get(node_id, 0),
            metadata_voter_wanted=bool(member and member.metadata_voter)))
    return out


class NodeMembershipPeerService(membership_pb2_grpc.NodeMembershipPeerServicer):
    """Join: a new node started with --join asks for the cluster it was admitted to."""

    def __init__(self, config: NodeConfig, metadata: Any,
                 controller: MembershipController) -> None:
        self._config = config
        self._metadata = metadata
        self._controller = controller
        self._refusals: dict[tuple[int, str], float] = {}

    @unary
    async def Join(self, request, context):  # noqa: N802
        state: MetadataState = self._metadata.state
        member = state.members.get(request.node_id)
        why = None
        if request.cluster_id and request.cluster_id != self._config.cluster_id:
            why = (f"it belongs to cluster {request.cluster_id!r}, this is "
                   f"{self._config.cluster_id!r}")
        elif member is None or member.state is NodeState.REMOVED:
            why = ("it was removed from this cluster" if member is not None else
                   "it was not admitted: run `tidelog cluster add-node "
                   f"{request.node_id} --address {request.address}` first")
        elif member.address != request.address:
            why = (f"it was admitted at {member.address}, it says it is at {request.address} "
                   "(its --advertise)")
        if why is not None:
            self._log_refusal(request.node_id, request.address, why)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {request.node_id} may not join: {why}")
        membership = self._controller.metadata_membership()
        assert membership is not None
        peers = dict(self._controller.peer_addresses())
        peers[self._config.node_id] = self._config.peer_addresses.get(
            self._config.node_id) or peers.get(self._config.node_id, "")
        answer = mpb.JoinResponse(
            cluster_id=self._config.cluster_id, metadata_voters=sorted(membership.voters),
            metadata_learners=sorted(membership.learners),
            membership_index=membership.index)
        for node_id, address in sorted(peers.items()):
            if node_id == request.node_id:
                continue
            answer.peers.append(mpb.JoinPeer(
                node_id=node_id, peer_address=address,
                address=state.nodes.get(node_id) or self._config.peers.get(node_id, "")))
        log.info("node %d (%s) joins: told members %s", request.node_id, request.address,
                 sorted(peers))
        return answer

    def _log_refusal(self, node_id: int, address: str, why: str) -> None:
        now = time.monotonic()
        if now - self._refusals.get((node_id, address), -1e9) >= REFUSAL_LOG_INTERVAL_S:
            self._refusals[(node_id, address)] = now
            log.warning("refused the join of node %d (%s): %s", node_id, address, why)
