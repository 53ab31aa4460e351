"""Admin's node membership methods (mixed into tidelog.client.admin.Admin; proto/membership.proto,
docs/operations.md "Add and remove nodes"): admit a node, decommission one, describe them all.

`add_node` admits a node that is (or will be) started with `tidelog node --join`; until then the
cluster refuses it. `decommission_node` marks a node draining: it answers at once; the cluster
then moves its leaderships and replicas away and removes it (`describe_members` shows how far it
got; `wait_removed` waits for the end).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tidelog.client import errors
from tidelog.client.routing import call_first_answering

if TYPE_CHECKING:
    from tidelog.client.config import AdminConfig
    from tidelog.client.connection import Connections
    from tidelog.client.metadata import Metadata

__all__ = ["MemberInfo", "MembershipAdmin"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo:
    node_id: int
    address: str
    peer_address: str
    state: str  # joining | active | draining | removed
    metadata_role: str  # voter | learner | none
    alive: bool
    replicas: int  # partition replicas assigned to it
    leaderships: int  # partitions it leads
    metadata_voter_wanted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MembershipAdmin:
    """Mixin: needs the Admin's `config`, `_connections`, `_metadata` and `_timeout_s`."""

    config: AdminConfig
    _connections: Connections
    _metadata: Metadata
    _timeout_s: float

    def add_node(self, node_id: int, address: str, *, peer_address: str = "",
                 metadata_voter: bool = False) -> str:
        """Admit node `node_id` at client address `address` (HOST:PORT, as it advertises
        itself); `peer_address` defaults to the port + the peer port offset. Returns its state
        ('joining' until it has registered). Idempotent for the same address."""
        from tidelog.proto import membership_pb2

        response = self._membership_call("AddNode", membership_pb2.AddNodeRequest(
            node_id=node_id, address=address, peer_address=peer_address,
            metadata_voter=metadata_voter, timeout_ms=int(self._timeout_s * 1000)))
        return str(response.state)

    def decommission_node(self, node_id: int, *, force: bool = False) -> str:
        """Start draining node `node_id` (idempotent). Refused (PolicyViolation) when it is a
        metadata voter whose removal would leave fewer than 3 voters (unless `force`) or no
        live majority of them."""
        from tidelog.proto import membership_pb2

        response = self._membership_call("DecommissionNode",
                                         membership_pb2.DecommissionNodeRequest(
                                             node_id=node_id, force=force,
                                             timeout_ms=int(self._timeout_s * 1000)))
        return str(response.state)

    def recommission_node(self, node_id: int) -> str:
        """Cancel the decommission of a draining node: it is active again (reassignments the
        drain started go on; `alter_partition_reassignments` with cancel stops them). Returns
        'active'."""
        from tidelog.proto import membership_pb2

        response = self._membership_call("DecommissionNode",
                                         membership_pb2.DecommissionNodeRequest(
                                             node_id=node_id, cancel=True,
                                             timeout_ms=int(self._timeout_s * 1000)))
        return str(response.state)

    def describe_members(self, *, node_address: str | None = None
                         ) -> tuple[int, list[MemberInfo]]:
        """(metadata leader id or -1, every node the answering node knows, removed included)."""
        from tidelog.proto import membership_pb2

        response = self._membership_call("DescribeMembership",
                                         membership_pb2.DescribeMembershipRequest(),
                                         address=node_address)
        return response.metadata_leader_id, [
            MemberInfo(node_id=m.node_id, address=m.address, peer_address=m.peer_address,
                       state=m.state, metadata_role=m.metadata_role, alive=m.alive,
                       replicas=m.replicas, leaderships=m.leaderships,
                       metadata_voter_wanted=m.metadata_voter_wanted)
            for m in response.members]

    def wait_member_state(self, node_id: int, states: tuple[str, ...], *,
                          timeout_s: float) -> MemberInfo:
        """Poll until node `node_id` is in one of `states` (e.g. ('removed',)); raises Timeout
        with where it stands."""
        deadline = time.monotonic() + timeout_s
        last: MemberInfo | None = None
        while True:
            _, members = self.describe_members()
            last = next((m for m in members if m.node_id == node_id), last)
            if last is not None and last.state in states:
                return last
            if time.monotonic() >= deadline:
                where = (f"{last.state}, {last.replicas} replicas, {last.leaderships} "
                         f"leaderships, metadata {last.metadata_role}") if last else "unknown"
                raise errors.Timeout(f"node {node_id} not {'/'.join(states)} within "
                                     f"{timeout_s:.0f} s (now: {where})")
            time.sleep(0.2)

    def _membership_call(self, method: str, request: Any, *, address: str | None = None) -> Any:
        """On the first node that answers, retrying retriable failures until the timeout (any
        node takes a change: it forwards it to the metadata leader)."""
        from tidelog.proto import membership_pb2_grpc

        return call_first_answering(
            self._connections, membership_pb2_grpc.NodeMembershipStub, method, request,
            candidates=lambda: [address] if address else list(dict.fromkeys(
                [*self.config.bootstrap, *(n.address for n in self._metadata.nodes())])),
            subject="membership", timeout_s=self._timeout_s,
            backoff_s=self.config.retry_backoff_ms / 1000)
