"""The Tidelog node: lifecycle and wiring of its parts. Each part sees the others only through a
narrow Protocol:

- `MetadataService` (node/metadata_service.py): the metadata Raft group, its state machine and
  proposals (forwarded to the metadata leader);
- `ReplicaManager` (node/replica_manager.py): local partition replicas matched to the metadata,
  Raft traffic in and out, leaders of every group, ticks, leader balancing and hand-over;
- `ClientApi` (node/client_api.py): the Broker operations (topics, produce, fetch, offsets);
- `GroupCoordinator` (node/groups/coordinator.py), `QueueCoordinator` (node/queues/coordinator.py),
  the log cleaner (node/cleaner.py) and retention (node/retention.py).

Two gRPC listeners: clients reach Broker (and Health) on `--listen`; peers reach Cluster (Raft
streams, metadata forwarding) on `--peer-listen`, which clients must never reach.

Data flow of a produce (acks=all): Broker.Produce → every batch checked against its records and
every producer sequence planned (all or nothing) → RaftCore.propose on the partition leader →
drive loop appends to the PartitionLog and fsyncs (group commit) → AppendEntries over the peer
streams → followers append and fsync before answering → commit index covers the batch → the
request is answered with its offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tidelog.node.cleaner import run_cleaner
from tidelog.node.client_api import ClientApi
from tidelog.node.config import NodeConfig
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.groups.coordinator import GroupCoordinator
from tidelog.node.listeners import ListenerInterceptor
from tidelog.node.membership import (
    LiveNodeIds,
    MembershipController,
    join_cluster,
    load_join_record,
    store_join_record,
)
from tidelog.node.membership_drain import ReassignmentMover
from tidelog.node.membership_service import NodeMembershipPeerService, NodeMembershipService
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command
from tidelog.node.metadata_service import METADATA_GROUP, MetadataService
from tidelog.node.metrics.collectors import node_collectors
from tidelog.node.metrics.exporter import MetricsExporter
from tidelog.node.queues.coordinator import QueueCoordinator
from tidelog.node.queues.host import NodeQueueHost
from tidelog.node.queues.service import QueuesService
from tidelog.node.reassignment import ReassignmentDriver
from tidelog.node.replica import Replica
from tidelog.node.replica_manager import ReplicaManager
from tidelog.node.retention import run_retention
from tidelog.node.security.cert_auth import PeerAuthInterceptor
from tidelog.node.security.channels import CHANNEL_OPTIONS, PeerDialer
from tidelog.node.security.channels import install as install_peer_dialer
from tidelog.node.security.interceptors import client_interceptors
from tidelog.node.security.quota_service import add_quotas_service
from tidelog.node.security.service import add_security_service
from tidelog.node.security.tls import client_listener_requires_cert, server_credentials
from tidelog.node.service import BrokerService, ClusterService, add_servicer
from tidelog.node.storage import ensure_directory
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto import membership_pb2 as mpb
from tidelog.proto import queue_pb2 as qpb

__all__ = ["METADATA_GROUP", "REPLICAS_HEALTH_SERVICE", "Node"]

log = logging.getLogger(__name__)

REPLICAS_HEALTH_SERVICE = "tidelog.v1.Replicas"
REPLICA_HEALTH_INTERVAL_S = 0.2


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.id = config.node_id
        self.data_dir = Path(config.data_dir)
        committer = GroupCommitter()
        # The lambdas break the construction cycle: each part calls the other only once running.
        self.metadata = MetadataService(
            config, committer=committer,
            send=lambda group, message: self.replicas.send_raft(group, message),
            on_soft_state=lambda replica: self.replicas.on_soft_state(replica),
            on_applied=lambda: self.replicas.schedule_reconcile())
        self.replicas = ReplicaManager(config, data_dir=self.data_dir, committer=committer,
                                       metadata=self.metadata, on_soft_state=self._on_soft_state,
                                       is_member=lambda node_id: self.membership.is_member(
                                           node_id))
        # The node set, joining, draining and leaving (node/membership.py).
        self._stopping = asyncio.Event()
        self.membership = MembershipController(
            config, metadata=self.metadata, replicas=self.replicas,
            mover=ReassignmentMover(self.metadata, lambda: self.membership.placement_nodes()),
            on_removed=self._stopping.set)
        self.api = ClientApi(config, metadata=self.metadata, replicas=self.replicas)
        # Leaders move their partitions' groups to reassignment targets.
        self.reassignments = ReassignmentDriver(self.replicas, self.metadata.propose)
        self.groups = GroupCoordinator(_GroupsHost(self.metadata, self.replicas, config,
                                                   self.membership.placement_nodes))
        self.queues = QueueCoordinator(
            NodeQueueHost(self.metadata, self.replicas, self.api, config))
        self._server: grpc.aio.Server | None = None  # clients: Broker, Health
        self._peer_server: grpc.aio.Server | None = None  # peers only: Cluster, Health
        self._listener_servers: list[grpc.aio.Server] = []  # named listeners (node/listeners.py)
        self._health_servicer = health.aio.HealthServicer()
        self.metrics = MetricsExporter(config)  # GET /metrics (docs/metrics.md)
        self._tasks: list[asyncio.Task[None]] = []
        # Every node-to-node channel (Raft, forwarded proposals, queue produce/fetch) dials the
        # peer listener through this dialer (node/security/channels.py).
        self._peer_dialer = PeerDialer(config, nodes=lambda: self.metadata.state.nodes,
                                       peers=self.membership.peer_addresses)
        if config.security.tls:
            client_listener_requires_cert(config.security)  # a ConfigError before anything runs
        install_peer_dialer(self._peer_dialer)

    @property
    def state(self) -> MetadataState:
        return self.metadata.state

    # ================================================================ lifecycle

    async def start(self) -> None:
        # Durably (defect 8): each new directory's name is fsynced in its parent, so a power loss
        # right after start cannot take the whole data directory with it.
        ensure_directory(self.data_dir / "partitions")
        await self._join_if_new()
        joined = self.membership.joined
        self.metadata.open(self.data_dir,
                           bootstrap=joined.bootstrap_membership(self.id) if joined else None)
        self.membership.refresh_links()
        # Peer-only RPCs (Raft streams, metadata forwarding) never share the client port. The
        # Broker is served there too, to nodes only (Node:<id>, no client interceptors): the
        # queue coordinator's produce and fetch to partition leaders need no user or ACL.
        security = self.config.security
        self._peer_server = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=[
            PeerAuthInterceptor(LiveNodeIds(lambda: self.membership.member_ids() | {self.id}),
                                tls=security.tls)])
        add_servicer(self._peer_server, ClusterService(self.replicas, self.metadata),
                     cpb.DESCRIPTOR.services_by_name["Cluster"])
        add_servicer(self._peer_server, BrokerService(self.api, self.groups),
                     pb.DESCRIPTOR.services_by_name["Broker"])
        add_servicer(self._peer_server, NodeMembershipPeerService(
            self.config, self.metadata, self.membership),
            mpb.DESCRIPTOR.services_by_name["NodeMembershipPeer"])
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, self._peer_server)
        # The default client listener (--listen), then one server per named listener
        # (node/listeners.py): the same services and interceptors, each call marked with its
        # listener so that addresses handed out are those of the caller's network.
        interceptors = client_interceptors(self.config, self.metadata)
        self._server = self._client_server(interceptors, self.config.listen)
        self._listener_servers = [
            self._client_server([ListenerInterceptor(listener.name), *interceptors],
                                listener.listen)
            for listener in self.config.listeners]
        if self._peer_dialer.tls is None:
            self._peer_server.add_insecure_port(self.config.peer_listen_address)
        else:  # TLS on every listener; peers always present a certificate of our CA (mTLS)
            self._peer_server.add_secure_port(self.config.peer_listen_address, server_credentials(
                self._peer_dialer.tls, require_client_auth=True))
        await self._peer_server.start()
        await self._server.start()
        for server in self._listener_servers:
            await server.start()
        self.metrics.start(node_collectors(self))
        self.metadata.start()
        self.replicas.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.replicas.tick_loop(), name="ticks"),
            loop.create_task(self.metadata.register_loop(), name="register"),
            loop.create_task(self.replicas.announce_loop(), name="announce"),
            loop.create_task(self.replicas.balance_loop(), name="balance"),
            loop.create_task(self.membership.run(), name="membership"),
            loop.create_task(self.reassignments.run(), name="reassignments"),
            loop.create_task(self.groups.run(), name="groups"),
            loop.create_task(self.queues.run(), name="queues"),
            loop.create_task(run_cleaner(self.replicas), name="cleaner"),
            loop.create_task(run_retention(self.replicas), name="retention"),
            loop.create_task(self._replica_health_loop(), name="replica-health"),
        ]
        await self._health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health_servicer.set("tidelog.v1.Broker", health_pb2.HealthCheckResponse.SERVING)
        log.info("node %d listening on %s (advertised %s%s; peers on %s; %s), peers %s, "
                 "data in %s", self.id, self.config.listen, self.config.advertise,
                 "".join(f"; listener {li.name} on {li.listen}, advertised {li.advertise}"
                         for li in self.config.listeners),
                 self.config.peer_listen_address,
                 "TLS" if security.tls else "plaintext",
                 ",".join(f"{k}={v}" for k, v in sorted(self.config.peers.items())), self.data_dir)

    async def _join_if_new(self) -> None:
        """A node started with --join: the seed's answer from an earlier start (join.json), or
        ask the seeds now, waiting until this node is admitted (node/membership.py)."""
        if not self.config.join:
            return
        record = load_join_record(self.data_dir)
        if record is None:
            log.info("node %d joins the cluster of %s", self.id, ",".join(self.config.join))
            record = await join_cluster(self.config, self.config.join,
                                        self._peer_dialer.channel_to_address)
            store_join_record(self.data_dir, record)
        self.membership.joined = record

    def _client_server(self, interceptors: list[grpc.aio.ServerInterceptor],
                       address: str) -> grpc.aio.Server:
        """A server of the client services (Broker, Queues, Quotas, Security, Health) bound to
        `address`, with TLS when the node has it."""
        server = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=interceptors)
        add_servicer(server, BrokerService(self.api, self.groups),
                     pb.DESCRIPTOR.services_by_name["Broker"])
        add_servicer(server, QueuesService(self.queues),
                     qpb.DESCRIPTOR.services_by_name["Queues"])
        add_quotas_service(server, self.metadata)
        add_servicer(server, NodeMembershipService(self.config, self.metadata, self.replicas,
                                                   self.membership),
                     mpb.DESCRIPTOR.services_by_name["NodeMembership"])
        add_security_service(server, self.config, self.metadata)
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, server)
        if self._peer_dialer.tls is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, server_credentials(
                self._peer_dialer.tls,
                require_client_auth=client_listener_requires_cert(self.config.security)))
        return server

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        log.info("node %d shutting down: handing over leadership first", self.id)
        await self.stop(graceful=True)

    async def stop(self, graceful: bool = True) -> None:
        if graceful:
            await self.replicas.hand_over_leadership()
        with contextlib.suppress(Exception):
            await self._health_servicer.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.metrics.stop()
        for server in self._listener_servers:
            await server.stop(grace=1.0)
        if self._server is not None:
            await self._server.stop(grace=1.0)
        if self._peer_server is not None:
            await self._peer_server.stop(grace=1.0)
        await self.replicas.close()
        await self.metadata.close()
        log.info("node %d stopped", self.id)

    # ================================================================ wiring

    def _on_soft_state(self, replica: Replica) -> None:
        if replica is self.metadata.replica:
            self.metadata.on_soft_state(replica)
        self.groups.on_soft_state(replica)
        self.queues.on_soft_state(replica)

    async def _replica_health_loop(self) -> None:
        """Health service "tidelog.v1.Replicas": SERVING while no local replica has stopped."""
        serving = None
        while True:
            now_serving = not self.replicas.stopped()
            if now_serving != serving:
                serving = now_serving
                await self._health_servicer.set(
                    REPLICAS_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(REPLICA_HEALTH_INTERVAL_S)


class _GroupsHost:
    """The group coordinator's view of the node (groups.coordinator.CoordinatorHost)."""

    def __init__(self, metadata: MetadataService, replicas: ReplicaManager,
                 config: NodeConfig, node_ids: Callable[[], list[int]]) -> None:
        self._metadata = metadata
        self._replicas = replicas
        self.node_id = config.node_id
        self.batch_bytes_max = config.batch_bytes_max
        self._node_ids = node_ids  # where new replicas may go (node/membership.py)

    @property
    def state(self) -> MetadataState:
        return self._metadata.state

    def node_ids(self) -> list[int]:
        return list(self._node_ids())

    def leader_of(self, group: str) -> tuple[int, str] | None:
        return self._replicas.leader_of(group)

    def local_replica(self, group: str) -> Replica | None:  # group lag reads (groups/lag.py)
        return self._replicas.partitions.get(group)

    async def propose(self, command: Command, timeout_s: float = 10.0) -> dict[str, Any]:
        return await self._metadata.propose(command, timeout_s)

    async def wait_for_leaders(self, names: list[str], timeout_s: float) -> None:
        await self._replicas.wait_for_leaders(names, timeout_s)
