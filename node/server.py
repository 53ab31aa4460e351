"""The Tidelog node: hosts the metadata Raft group and the partition replicas, serves gRPC.

Data flow of a produce (acks=all): Broker.Produce → validate batch headers and checksums →
idempotent-producer check → RaftCore.propose on the partition leader → drive loop appends to the
PartitionLog and fsyncs (group commit) → AppendEntries over the peer streams → followers append and
fsync before answering → commit index covers the batch → the request is answered with its offsets.

Metadata (nodes, topics, replica placement, configs, producer ids) is a Raft group of its own whose
voters are the first 3 or 5 nodes; every node applies its committed commands and starts or stops
local partition replicas to match.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tidelog.node import errors as E
from tidelog.node.cleaner import run_cleaner
from tidelog.node.config import NodeConfig
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.groups.coordinator import GroupCoordinator
from tidelog.node.metadata import MetadataState, TopicInfo
from tidelog.node.metadata_commands import (
    AlterConfigs,
    Command,
    CommandError,
    CreateTopic,
    DeleteTopic,
    InitProducer,
    RegisterNode,
    command_op,
    decode_command,
    encode_command,
)
from tidelog.node.produce_validation import ProduceLimits, validate_produce
from tidelog.node.producer_state import Duplicate
from tidelog.node.raft import (
    Entry,
    EntryKind,
    Message,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftConfig,
)
from tidelog.node.raft_validation import MalformedRaftMessage, decode_raft_message
from tidelog.node.raft_wire import to_wire
from tidelog.node.replica import Replica, ReplicaLostLeadership
from tidelog.node.service import BrokerService, ClusterService, add_servicer
from tidelog.node.storage import FsyncPolicy, LogConfig, StorageError
from tidelog.node.topics import effective_configs
from tidelog.node.transport import CHANNEL_OPTIONS, Transport
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto import cluster_pb2_grpc
from tidelog.proto.batch import (
    Codec,
    decode_records,
    encode_batch,
    iter_batches,
    validate_batch,
)

log = logging.getLogger(__name__)

METADATA_GROUP = "__metadata"
LEADER_ANNOUNCE_INTERVAL_S = 2.0
METADATA_PROPOSE_TIMEOUT_S = 10.0
FETCH_BYTES_MAX = 32 * 1024 * 1024  # per Fetch answer; below the 64 MiB gRPC message limit
FETCH_PARTITION_BYTES_DEFAULT = 1024 * 1024
FETCH_WAIT_MS_MAX = 30_000
REPLICAS_HEALTH_SERVICE = "tidelog.v1.Replicas"
REPLICA_HEALTH_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class LeaderHint:
    leader_id: int
    term: int


def partition_group(topic_id: int, partition: int) -> str:
    return f"{topic_id}/{partition}"


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.id = config.node_id
        self.data_dir = Path(config.data_dir)
        self.state = MetadataState()
        self.committer = GroupCommitter()
        self.transport = Transport(self.id, config.peer_addresses, self._on_unreachable)
        self.replicas: dict[str, Replica] = {}
        self.metadata: Replica | None = None
        self.leader_hints: dict[str, LeaderHint] = {}
        self._pending_metadata: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._peer_channels: dict[int, grpc.aio.Channel] = {}
        self._server: grpc.aio.Server | None = None  # clients: Broker, Health
        self._peer_server: grpc.aio.Server | None = None  # peers only: Cluster, Health
        self._health_servicer = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._reconcile_pending = False
        self._reported_dirs: set[str] = set()
        self._deleting: set[str] = set()  # directories of replicas being closed and deleted
        self.groups = GroupCoordinator(self)  # consumer groups: node/groups/

    # ================================================================ lifecycle

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "partitions").mkdir(exist_ok=True)
        self._open_metadata()
        # Peer-only RPCs (Raft streams, metadata forwarding) never share the client port.
        self._peer_server = grpc.aio.server(options=CHANNEL_OPTIONS)
        add_servicer(self._peer_server, ClusterService(self),
                     cpb.DESCRIPTOR.services_by_name["Cluster"])
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, self._peer_server)
        self._peer_server.add_insecure_port(self.config.peer_listen_address)
        self._server = grpc.aio.server(options=CHANNEL_OPTIONS)
        add_servicer(self._server, BrokerService(self), pb.DESCRIPTOR.services_by_name["Broker"])
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, self._server)
        self._server.add_insecure_port(self.config.listen)
        await self._peer_server.start()
        await self._server.start()
        self.transport.start()
        assert self.metadata is not None
        self.metadata.start()
        self._reconcile()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._tick_loop(), name="ticks"),
            loop.create_task(self._register(), name="register"),
            loop.create_task(self._announce_loop(), name="announce"),
            loop.create_task(self._balance_loop(), name="balance"),
            loop.create_task(self.groups.run(), name="groups"),
            loop.create_task(run_cleaner(self), name="cleaner"),
            loop.create_task(self._replica_health_loop(), name="replica-health"),
        ]
        await self._health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health_servicer.set("tidelog.v1.Broker", health_pb2.HealthCheckResponse.SERVING)
        log.info("node %d listening on %s (advertised %s; peers on %s), peers %s, data in %s",
                 self.id, self.config.listen, self.config.advertise,
                 self.config.peer_listen_address,
                 ",".join(f"{k}={v}" for k, v in sorted(self.config.peers.items())), self.data_dir)

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
            await self._hand_over_leadership()
        with contextlib.suppress(Exception):
            await self._health_servicer.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.stop(grace=1.0)
        if self._peer_server is not None:
            await self._peer_server.stop(grace=1.0)
        await self.transport.close()
        for channel in self._peer_channels.values():
            await channel.close()
        for replica in list(self.replicas.values()):
            await replica.close()
        if self.metadata is not None:
            await self.metadata.close()
        log.info("node %d stopped", self.id)

    # ================================================================ replicas

    def _log_config(self, configs: dict[str, str] | None = None) -> LogConfig:
        eff = effective_configs(configs or {})
        retention_ms = int(eff["retention.ms"])
        retention_bytes = int(eff["retention.bytes"])
        return LogConfig(
            segment_bytes_max=int(eff["segment.bytes"]),
            segment_ms_max=int(eff["segment.ms"]),
            batch_bytes_max=max(int(eff["max.message.bytes"]), 1024 * 1024),
            fsync=FsyncPolicy.parse((configs or {}).get("flush.policy", self.config.fsync)),
            retention_ms=retention_ms if retention_ms >= 0 else None,
            retention_bytes=retention_bytes if retention_bytes >= 0 else None,
        )

    def _raft_config(self, voters: Sequence[int], learners: Sequence[int] = ()) -> RaftConfig:
        return RaftConfig(
            node_id=NodeId(self.id), voters=tuple(NodeId(v) for v in voters),
            learners=tuple(NodeId(v) for v in learners),
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
        )

    def _open_metadata(self) -> None:
        voters = list(self.config.metadata_voters)
        learners = [n for n in sorted(self.config.peers) if n not in voters]
        self.metadata = Replica(
            group=METADATA_GROUP, directory=self.data_dir / "metadata",
            log_config=self._log_config(), raft_config=self._raft_config(voters, learners),
            committer=self.committer, send=self._send_raft, on_soft_state=self._on_soft_state,
            apply=self._apply_metadata_entry,
        )
        self._replay_metadata(self.metadata)

    def _replay_metadata(self, replica: Replica) -> None:
        """Apply the committed metadata log from its start (the state is not snapshotted yet)."""
        commit = replica.commit_index
        offset = replica.log.log_start_offset
        while offset <= commit and offset < replica.log.log_end_offset:
            raw = replica.log.read(offset, 1 << 20)
            for pos, header in iter_batches(raw):
                if header.last_offset > commit:
                    offset = commit + 1
                    break
                if not header.is_control:
                    self._apply_metadata_batch(raw[pos:pos + header.size], quiet=True)
                offset = header.last_offset + 1
        log.info("node %d: metadata replayed up to offset %d: %d nodes, %d topics",
                 self.id, commit, len(self.state.nodes), len(self.state.topics))

    def _apply_metadata_entry(self, replica: Replica, entry: Entry) -> None:
        if entry.kind is EntryKind.DATA:
            self._apply_metadata_batch(entry.data, quiet=False)

    def _apply_metadata_batch(self, batch: bytes, *, quiet: bool) -> None:
        for record in decode_records(batch):
            if record.offset <= self.state.applied_index:
                continue
            result = self.state.apply_encoded(record.offset, record.value or b"")
            if not quiet and ("error" in result or b'"register_node"' not in (record.value or b"")):
                log.info("metadata %d: %s → %s", record.offset,
                         (record.value or b"")[:200].decode(errors="replace"), result or "ok")
            future = self._pending_metadata.pop(record.offset, None)
            if future is not None and not future.done():
                future.set_result(result)
        self._schedule_reconcile()

    def _schedule_reconcile(self) -> None:
        if not self._reconcile_pending:
            self._reconcile_pending = True
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self._reconcile)

    def _reconcile(self) -> None:
        """Start replicas the metadata assigns here; delete only those of deleted topics."""
        self._reconcile_pending = False
        wanted: dict[str, tuple[TopicInfo, int]] = {}
        for topic in self.state.topics.values():
            for partition, replicas in enumerate(topic.replicas):
                if self.id in replicas:
                    wanted[partition_group(topic.topic_id, partition)] = (topic, partition)
        for group, (topic, partition) in wanted.items():
            if group not in self.replicas:
                self._start_partition(topic, partition)
        for group in list(self.replicas):
            if group in wanted:
                continue
            topic_id = int(group.split("/")[0])
            if topic_id in self.state.deleted_topic_ids:
                replica = self.replicas.pop(group)
                self._deleting.add(replica.directory.name)
                asyncio.get_running_loop().create_task(self._delete_replica(replica))
        self._sweep_partition_dirs()

    def _sweep_partition_dirs(self) -> None:
        """Directories no running replica owns: delete those of deleted topics (deleted while this
        node was down); report the rest once and leave them alone (quarantine, never remove)."""
        # A replica being deleted still owns its directory until it has closed its files
        # (sweeping it here made that close fail: found by tests/node/test_rpc_fuzz.py).
        running = {r.directory.name for r in self.replicas.values()} | self._deleting
        for entry in (self.data_dir / "partitions").iterdir():
            if entry.name in running or not entry.is_dir():
                continue
            _, _, suffix = entry.name.rpartition(".")
            topic_id = int(suffix) if suffix.isdigit() else None
            if topic_id is not None and topic_id in self.state.deleted_topic_ids:
                shutil.rmtree(entry, ignore_errors=True)
                log.info("deleted %s: its topic was deleted while this node was away", entry.name)
            elif ((topic_id is None or topic_id < self.state.next_topic_id)
                  and entry.name not in self._reported_dirs):
                self._reported_dirs.add(entry.name)
                log.warning("quarantined %s: no topic in the committed metadata accounts for "
                            "it; left on disk untouched for an operator", entry.name)

    def _partition_dir(self, topic: TopicInfo, partition: int) -> Path:
        return self.data_dir / "partitions" / f"{topic.name}-{partition}.{topic.topic_id}"

    def _start_partition(self, topic: TopicInfo, partition: int) -> None:
        group = partition_group(topic.topic_id, partition)
        try:
            replica = Replica(
                group=group, directory=self._partition_dir(topic, partition),
                log_config=self._log_config(topic.configs),
                raft_config=self._raft_config(topic.replicas[partition]),
                committer=self.committer, send=self._send_raft,
                on_soft_state=self._on_soft_state,
            )
        except (StorageError, ValueError, OSError) as exc:  # one bad replica must not stop others
            log.error("cannot open replica %s-%d (%s): %s; left on disk for inspection",
                      topic.name, partition, group, exc)
            return
        self.replicas[group] = replica
        replica.start()
        log.info("started replica of %s-%d (group %s, replicas %s)",
                 topic.name, partition, group, topic.replicas[partition])

    async def _delete_replica(self, replica: Replica) -> None:
        try:
            await replica.close()
            await asyncio.get_running_loop().run_in_executor(
                None, shutil.rmtree, replica.directory, True)
            log.info("deleted replica %s (its topic was deleted)", replica.directory.name)
        except OSError as exc:
            log.error("could not delete replica %s: %s; left on disk", replica.directory, exc)
        finally:
            self.leader_hints.pop(replica.group, None)
            self._deleting.discard(replica.directory.name)

    def _all_replicas(self) -> list[Replica]:
        out = list(self.replicas.values())
        if self.metadata is not None:
            out.append(self.metadata)
        return out

    # ================================================================ raft plumbing

    def _send_raft(self, group: str, message: Message) -> None:
        self.transport.send(message.to, to_wire(group, message))

    def is_peer(self, node_id: int) -> bool:
        """A node of this cluster other than this one (who may open a Raft stream to us)."""
        return node_id in self.config.peers and node_id != self.id

    def receive_raft(self, batch: cpb.RaftBatch) -> None:
        """Step a batch from a peer's stream (the caller checked from_node is that peer).

        Each message is decoded and validated completely first: a bad one is the peer's fault,
        logged and dropped. An exception while stepping a valid one is a local fault: that
        replica stops with the real reason (issue 11, defect 12)."""
        sender = batch.from_node
        self.transport.heard_from(sender)
        for info in batch.leaders:
            if info.leader_id == sender and info.term >= 0 and self._known_group(info.group):
                self._note_leader(info.group, info.leader_id, info.term)
        for wire in batch.messages:
            replica = (self.metadata if wire.group == METADATA_GROUP
                       else self.replicas.get(wire.group))
            if replica is None or replica.error is not None:
                continue  # not created here yet (metadata still applying), or stopped
            try:
                message = decode_raft_message(
                    wire, self_id=self.id, from_node=sender,
                    members=replica.core.membership.members)
            except MalformedRaftMessage as exc:
                log.warning("dropped a malformed raft message from node %d for %s: %s",
                            sender, wire.group, exc)
                continue
            try:
                replica.step(message)
            except Exception as exc:  # our own log or state failed: not the peer's fault
                self._stop_replica(replica, exc, f"stepping {message.type.value} from node "
                                                 f"{sender}")

    def _known_group(self, group: str) -> bool:
        if group == METADATA_GROUP or group in self.replicas:
            return True
        topic_id, sep, partition = group.partition("/")
        if not (sep and topic_id.isdigit() and partition.isdigit()):
            return False
        topic = self.state.topic_by_id(int(topic_id))
        return topic is not None and int(partition) < topic.partitions

    def _stop_replica(self, replica: Replica, exc: BaseException, doing: str) -> None:
        """A local failure: the replica takes no more input (its core may be half-updated, so
        nothing of it may be persisted or sent); produce refuses with STORAGE_ERROR and the
        health service "tidelog.v1.Replicas" reports NOT_SERVING."""
        replica.error = exc
        log.error("replica %s stopped by a local error while %s: %s: %s",
                  self._group_name(replica.group), doing, type(exc).__name__, exc,
                  exc_info=exc)

    async def _replica_health_loop(self) -> None:
        """Health service "tidelog.v1.Replicas": SERVING while no local replica has stopped."""
        serving = None
        while True:
            stopped = [r.group for r in self._all_replicas() if r.error is not None]
            now_serving = not stopped
            if now_serving != serving:
                serving = now_serving
                await self._health_servicer.set(
                    REPLICAS_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(REPLICA_HEALTH_INTERVAL_S)

    def _on_unreachable(self, peer: int) -> None:
        for replica in self._all_replicas():
            replica.report_unreachable(peer)

    def _on_soft_state(self, replica: Replica) -> None:
        leader = replica.leader_id
        if leader is not None:
            self._note_leader(replica.group, leader, replica.term)
        if replica.is_leader:
            log.info("node %d leads %s in term %d", self.id, self._group_name(replica.group),
                     replica.term)
            self.transport.broadcast_leader(
                cpb.LeaderInfo(group=replica.group, leader_id=self.id, term=replica.term))
        elif replica is self.metadata:
            for future in self._pending_metadata.values():
                if not future.done():
                    future.set_exception(E.NotLeaderError(
                        "metadata leadership moved", leader_id=leader))
            self._pending_metadata.clear()
        self.groups.on_soft_state(replica)

    def _note_leader(self, group: str, leader_id: int, term: int) -> None:
        known = self.leader_hints.get(group)
        if known is None or term >= known.term:
            self.leader_hints[group] = LeaderHint(leader_id, term)

    async def _tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if time.monotonic() - next_at > 5 * interval:
                next_at = time.monotonic()  # we were paused; don't replay missed ticks
            for replica in self._all_replicas():
                if replica.error is None:
                    replica.tick()

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(LEADER_ANNOUNCE_INTERVAL_S)
            for replica in self._all_replicas():
                if replica.is_leader:
                    self.transport.broadcast_leader(
                        cpb.LeaderInfo(group=replica.group, leader_id=self.id, term=replica.term))

    async def _balance_loop(self) -> None:
        """Move leadership back to preferred leaders (the first replica) once they are caught up."""
        while True:
            await asyncio.sleep(self.config.leader_balance_interval_ms / 1000)
            for group, replica in list(self.replicas.items()):
                preferred = self._preferred_leader(group)
                if (preferred is None or preferred == self.id or not replica.is_leader
                        or replica.core.lead_transferee is not None):
                    continue
                progress = replica.core.progress.get(NodeId(preferred))
                if progress is None or progress.match < replica.commit_index:
                    continue
                if not self.transport.alive(preferred, within_s=self._liveness_s()):
                    continue
                log.info("moving leadership of %s to preferred leader %d",
                         self._group_name(group), preferred)
                with contextlib.suppress(Exception):
                    replica.transfer_leadership(preferred)

    def _preferred_leader(self, group: str) -> int | None:
        topic_id, partition = (int(x) for x in group.split("/"))
        topic = self.state.topic_by_id(topic_id)
        return topic.replicas[partition][0] if topic else None

    def _liveness_s(self) -> float:
        return 3 * self.config.election_ticks * self.config.tick_ms / 1000

    async def _hand_over_leadership(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_transfer_ms_max / 1000
        for replica in self._all_replicas():
            if not replica.is_leader:
                continue
            target = self._transfer_target(replica)
            if target is not None:
                with contextlib.suppress(Exception):
                    replica.transfer_leadership(target)
        while time.monotonic() < deadline and any(r.is_leader for r in self._all_replicas()
                                                  if self._transfer_target(r) is not None):
            await asyncio.sleep(0.05)

    def _transfer_target(self, replica: Replica) -> int | None:
        best = None
        for node_id, progress in replica.core.progress.items():
            if node_id == self.id or node_id not in replica.core.membership.voters:
                continue
            if progress.match >= replica.commit_index and self.transport.alive(
                    node_id, within_s=self._liveness_s()):
                best = int(node_id)
                break
        return best

    def _group_name(self, group: str) -> str:
        if group == METADATA_GROUP:
            return "metadata"
        topic_id, partition = (int(x) for x in group.split("/"))
        topic = self.state.topic_by_id(topic_id)
        return f"{topic.name}-{partition}" if topic else group

    # ================================================================ metadata proposals

    async def _register(self) -> None:
        """Tell the cluster our client-facing address (retried until the metadata group answers)."""
        while True:
            if self.state.nodes.get(self.id) == self.config.advertise:
                return
            try:
                await self.propose_metadata(
                    RegisterNode(node_id=self.id, address=self.config.advertise))
                log.info("node %d registered as %s", self.id, self.config.advertise)
                return
            except (E.BrokerError, grpc.RpcError, TimeoutError) as exc:
                log.debug("registration not yet possible: %s", exc)
                await asyncio.sleep(0.5)

    async def propose_metadata(self, command: Command,
                               timeout_s: float = METADATA_PROPOSE_TIMEOUT_S) -> dict[str, Any]:
        """Commit a metadata command through the metadata leader, wherever it is."""
        deadline = time.monotonic() + timeout_s
        try:  # the same strict decoder every node applies with: refuse here, not in the log
            payload = encode_command(command)
            decode_command(payload)
        except CommandError as exc:
            raise E.InvalidRequestError(f"invalid {command_op(command)} request: {exc}") from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise E.RequestTimedOutError(
                    f"metadata command {command_op(command)} did not commit within "
                    f"{timeout_s:.0f} s"
                    " (no metadata leader?)")
            assert self.metadata is not None
            try:
                if self.metadata.is_leader:
                    result = await self._propose_metadata_here(payload, remaining)
                    return await self._applied_here(result, deadline)
                leader = self.metadata.leader_id
                if leader is None or leader == self.id:
                    await asyncio.sleep(0.05)
                    continue
                reply = await self._peer_stub(leader).ProposeMetadata(
                    cpb.ProposeMetadataRequest(command=payload, timeout_ms=int(remaining * 1000)),
                    timeout=remaining)
                if reply.not_leader:
                    await asyncio.sleep(0.05)
                    continue
                return await self._applied_here(json.loads(reply.result), deadline)
            except (E.NotLeaderError, grpc.aio.AioRpcError):
                await asyncio.sleep(0.1)

    async def _applied_here(self, result: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Read your writes: answer only once this node has applied the command too, so the
        client's next Metadata call here sees (for example) the topic it just created."""
        index = result.pop("_index", None)
        while index is not None and self.state.applied_index < index:
            if time.monotonic() > deadline:
                raise E.RequestTimedOutError(
                    f"metadata command committed at {index} but node {self.id} has not applied "
                    "it yet")
            await asyncio.sleep(0.01)
        return result

    async def _propose_metadata_here(self, payload: bytes, timeout_s: float) -> dict[str, Any]:
        assert self.metadata is not None
        batch = encode_batch([(None, payload, (), int(time.time() * 1000))], codec=Codec.NONE)
        header = validate_batch(batch, max_bytes=self.config.batch_bytes_max)
        try:
            ((_, last),) = self.metadata.propose([(batch, header)])
        except (NotLeader, ProposalDropped) as exc:
            raise E.NotLeaderError(str(exc), leader_id=self.metadata.leader_id) from None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending_metadata[last] = future
        try:
            result = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise E.RequestTimedOutError(
                f"metadata command at offset {last} not applied within {timeout_s:.1f} s; it may "
                "still commit") from None
        finally:
            self._pending_metadata.pop(last, None)
        return {**result, "_index": last}

    async def propose_metadata_local(
            self, request: cpb.ProposeMetadataRequest) -> cpb.ProposeMetadataResponse:
        """A peer forwards a command: decoded strictly first (by leader and follower alike), so
        nothing enters the metadata log that every node cannot apply."""
        assert self.metadata is not None
        if request.timeout_ms < 0:
            raise E.InvalidRequestError(f"timeout_ms {request.timeout_ms} is negative")
        try:
            command = decode_command(request.command)
        except CommandError as exc:
            raise E.InvalidRequestError(f"invalid metadata command: {exc}") from None
        if not self.metadata.is_leader:
            leader = self.metadata.leader_id
            return cpb.ProposeMetadataResponse(not_leader=True,
                                               leader_id=leader if leader is not None else -1)
        timeout_s = min(max(0.1, (request.timeout_ms or 5000) / 1000), 60.0)
        result = await self._propose_metadata_here(encode_command(command), timeout_s)
        return cpb.ProposeMetadataResponse(result=json.dumps(result).encode())

    def _peer_stub(self, node_id: int) -> cluster_pb2_grpc.ClusterStub:
        channel = self._peer_channels.get(node_id)
        if channel is None:
            channel = grpc.aio.insecure_channel(self.config.peer_addresses[node_id],
                                                options=CHANNEL_OPTIONS)
            self._peer_channels[node_id] = channel
        return cluster_pb2_grpc.ClusterStub(channel)

    @staticmethod
    def _raise_result(result: dict[str, Any]) -> None:
        if "error" in result:
            exc_type = getattr(E, result["error"], E.BrokerError)
            raise exc_type(result.get("message", "metadata command failed"))

    # ================================================================ client API

    def metadata_response(self, topics: list[str], include_internal: bool) -> pb.MetadataResponse:
        assert self.metadata is not None
        leader = self.metadata.leader_id
        response = pb.MetadataResponse(cluster_id=self.config.cluster_id,
                                       metadata_leader_id=leader if leader is not None else -1)
        voters = set(self.config.metadata_voters)
        for node_id, peer_address in sorted(self.config.peers.items()):
            response.nodes.append(pb.NodeInfo(
                id=node_id, address=self.state.nodes.get(node_id, peer_address),
                alive=self.transport.alive(node_id, within_s=self._liveness_s()),
                voter=node_id in voters))
        names = topics or sorted(self.state.topics)
        for name in names:
            topic = self.state.topics.get(name)
            if topic is None:
                response.topics.append(pb.TopicMetadata(
                    name=name, error=pb.UNKNOWN_TOPIC_OR_PARTITION,
                    error_message=f"topic {name!r} does not exist"))
                continue
            if topic.internal and not include_internal and not topics:
                continue
            response.topics.append(self._topic_metadata(topic))
        return response

    def _topic_metadata(self, topic: TopicInfo) -> pb.TopicMetadata:
        out = pb.TopicMetadata(name=topic.name, configs=effective_configs(topic.configs),
                               internal=topic.internal)
        for partition, replicas in enumerate(topic.replicas):
            group = partition_group(topic.topic_id, partition)
            replica = self.replicas.get(group)
            hint = self.leader_hints.get(group)
            meta = pb.PartitionMetadata(
                partition=partition, leader_id=hint.leader_id if hint else -1,
                leader_term=hint.term if hint else 0, replicas=replicas,
                high_watermark=-1, log_end_offset=-1, log_start_offset=-1)
            if replica is not None and replica.is_leader:
                meta.in_sync.extend(replica.in_sync_replicas())
                meta.high_watermark = replica.high_watermark
                meta.log_end_offset = replica.log.log_end_offset
                meta.log_start_offset = replica.log.log_start_offset
            out.partitions.append(meta)
        return out

    async def create_topics(self, request: pb.CreateTopicsRequest) -> pb.CreateTopicsResponse:
        response = pb.CreateTopicsResponse()
        timeout_s = _timeout_s(request.timeout_ms, 10_000)
        if len(request.topics) > self.config.request_partitions_max:
            raise E.InvalidRequestError(
                f"{len(request.topics)} topics in one request; the maximum is "
                f"{self.config.request_partitions_max}")
        created = []
        for spec in request.topics:
            try:
                result = await self.propose_metadata(CreateTopic(
                    name=spec.name, partitions=spec.partitions,
                    replication_factor=spec.replication_factor,
                    configs=tuple(sorted(spec.configs.items())),
                    node_ids=tuple(sorted(self.config.peers)),
                    validate_only=request.validate_only,
                ), timeout_s)
            except E.InvalidRequestError as exc:
                result = {"error": type(exc).__name__, "code": exc.code, "message": exc.message}
            response.results.append(_topic_result(spec.name, result))
            if "error" not in result and not request.validate_only:
                created.append(spec.name)
        await self._wait_for_leaders(created, min(timeout_s, 10.0))
        return response

    async def _wait_for_leaders(self, names: list[str], timeout_s: float) -> None:
        """Best effort: answer CreateTopics once every new partition has a leader."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            missing = [
                1 for name in names if (t := self.state.topics.get(name)) is not None
                for p in range(t.partitions)
                if partition_group(t.topic_id, p) not in self.leader_hints
            ]
            if not missing:
                return
            await asyncio.sleep(0.05)

    async def delete_topics(self, request: pb.DeleteTopicsRequest) -> pb.DeleteTopicsResponse:
        response = pb.DeleteTopicsResponse()
        timeout_s = _timeout_s(request.timeout_ms, 10_000)
        if len(request.topics) > self.config.request_partitions_max:
            raise E.InvalidRequestError(
                f"{len(request.topics)} topics in one request; the maximum is "
                f"{self.config.request_partitions_max}")
        for name in request.topics:
            try:
                result = await self.propose_metadata(DeleteTopic(name=name), timeout_s)
            except E.InvalidRequestError as exc:
                result = {"error": type(exc).__name__, "code": exc.code, "message": exc.message}
            response.results.append(_topic_result(name, result))
        return response

    def describe_configs(self, request: pb.DescribeConfigsRequest) -> pb.DescribeConfigsResponse:
        response = pb.DescribeConfigsResponse()
        for name in request.topics or sorted(self.state.topics):
            topic = self.state.topics.get(name)
            if topic is None:
                response.topics.append(pb.TopicConfigs(
                    name=name, error=pb.UNKNOWN_TOPIC_OR_PARTITION,
                    error_message=f"topic {name!r} does not exist"))
            else:
                response.topics.append(pb.TopicConfigs(
                    name=name, configs=effective_configs(topic.configs)))
        return response

    async def alter_configs(self, request: pb.AlterConfigsRequest) -> pb.AlterConfigsResponse:
        result = await self.propose_metadata(AlterConfigs(
            name=request.topic, set=tuple(sorted(request.set.items())),
            delete=tuple(request.delete), validate_only=request.validate_only))
        self._raise_result(result)
        return pb.AlterConfigsResponse(result=_topic_result(request.topic, result))

    async def init_producer_id(
            self, request: pb.InitProducerIdRequest) -> pb.InitProducerIdResponse:
        """Kafka's InitProducerId: a fresh id at epoch 0, or, for a known producer (its id and
        epoch, or its transactional id), the same id at the next epoch, which fences every
        older instance of it (committed through metadata, so every node agrees)."""
        if request.producer_id < 0:
            raise E.InvalidRequestError(f"producer_id {request.producer_id} is negative "
                                        "(0: ask for a new producer id)")
        result = await self.propose_metadata(InitProducer(
            producer_id=request.producer_id or -1,
            producer_epoch=request.producer_epoch if request.producer_id else -1,
            transactional_id=request.transactional_id))
        self._raise_result(result)
        return pb.InitProducerIdResponse(producer_id=result["producer_id"],
                                         producer_epoch=result["producer_epoch"])

    # ---------------------------------------------------------------- produce

    def _topic(self, name: str) -> TopicInfo:
        topic = self.state.topics.get(name)
        if topic is None:
            raise E.UnknownTopicError(f"topic {name!r} does not exist")
        return topic

    def _replica_for(self, topic_name: str, partition: int) -> tuple[TopicInfo, Replica]:
        topic = self._topic(topic_name)
        if not 0 <= partition < topic.partitions:
            raise E.UnknownTopicError(
                f"topic {topic_name!r} has partitions 0..{topic.partitions - 1}, not {partition}")
        group = partition_group(topic.topic_id, partition)
        replica = self.replicas.get(group)
        if replica is None or not replica.is_leader:
            hint = self.leader_hints.get(group)
            leader_id = replica.leader_id if replica is not None else (
                hint.leader_id if hint else None)
            if leader_id is None or leader_id == self.id:
                raise E.LeaderNotAvailableError(
                    f"{topic_name}-{partition} has no leader right now; retry shortly")
            raise E.NotLeaderError(
                f"node {self.id} is not the leader of {topic_name}-{partition}; "
                f"node {leader_id} is",
                leader_id=leader_id, leader_address=self.state.nodes.get(
                    leader_id, self.config.peers.get(leader_id, "")))
        return topic, replica

    async def produce(self, request: pb.ProduceRequest) -> pb.ProduceResponse:
        if request.acks not in (pb.ACKS_ALL, pb.ACKS_LEADER):
            raise E.InvalidRequestError(
                f"acks {request.acks} is unknown; use ACKS_ALL (0) or ACKS_LEADER (1)")
        timeout_s = _timeout_s(request.timeout_ms, 30_000)
        topic, replica = self._replica_for(request.topic, request.partition)
        if replica.storage_error is not None:
            raise E.DiskFullRequestError(
                f"{request.topic}-{request.partition}: node {self.id} is out of disk space; "
                "writes are refused until space returns")
        if replica.error is not None:
            raise E.StorageRequestError(
                f"{request.topic}-{request.partition}: replica on node {self.id} stopped after a "
                f"storage failure: {replica.error}")
        configs = effective_configs(topic.configs)
        limits = ProduceLimits(
            request_bytes_max=self.config.batch_bytes_max,
            batch_bytes_max=int(configs["max.message.bytes"]),
            timestamp_difference_ms_max=int(configs["message.timestamp.difference.max.ms"]))
        # All or nothing: every batch is checked, and every producer sequence planned, before
        # any is proposed; the new ones are then proposed in one call.
        batches = validate_produce(request.batches, limits, int(time.time() * 1000))
        planned = replica.producers.check_request(
            [b.header for b in batches],
            lambda pid: self.state.producer_epochs.get(pid, -1))
        term = replica.term
        fresh = [(b.data, b.header) for b, dup in zip(batches, planned, strict=True)
                 if dup is None]
        try:
            proposed = iter(replica.propose(fresh) if fresh else [])
        except (NotLeader, ProposalDropped):
            raise self._not_leader(request.topic, request.partition, replica) from None
        offsets: list[tuple[int, int]] = []
        dups: list[tuple[int, Duplicate]] = []  # (producer id, earlier attempt)
        for b, dup in zip(batches, planned, strict=True):
            if dup is None:
                offsets.append(next(proposed))
            else:
                dups.append((b.header.producer_id, dup))
                offsets.append((dup.base_offset, dup.last_offset))
        duplicate = bool(dups)
        last = offsets[-1][1]
        try:
            # A retry is answered with the earlier attempt's offsets only if the entry there is
            # still the one written in the attempt's term: a proposal can be dropped from the log
            # tail in a leadership change while its producer-state record survives, and then
            # those offsets hold another entry (found by `tidelog chaos run pause-leader`).
            last_dup = dups[-1][1] if dups and dups[-1][1].last_offset == last else None
            if last_dup is not None and last_dup.term >= 0:
                wait_term = last_dup.term
            else:
                wait_term = replica.raft_log.term_at(last) if duplicate else term
                wait_term = wait_term if wait_term is not None else term
            if request.acks == pb.ACKS_ALL:
                await replica.wait_committed(last, wait_term, timeout_s)
                for _, dup in dups:  # committed already (below last): checks the term at once
                    if dup.term >= 0:
                        await replica.wait_committed(dup.last_offset, dup.term, timeout_s)
            else:
                await replica.wait_appended(last, wait_term, timeout_s)
        except ReplicaLostLeadership:
            for producer_id, dup in dups:
                if dup.term >= 0 and replica.raft_log.term_at(dup.last_offset) != dup.term:
                    # Stale record: forget it (and later ones) so the retry is written again.
                    replica.producers.forget_from(producer_id, dup.base_offset)
            raise self._not_leader(request.topic, request.partition, replica) from None
        except TimeoutError:
            raise E.RequestTimedOutError(
                f"{request.topic}-{request.partition}: not committed within {timeout_s:.1f} s; "
                "the write may still commit (retry with the same idempotent producer)") from None
        except StorageError as exc:
            raise E.StorageRequestError(f"{request.topic}-{request.partition}: {exc}") from None
        return pb.ProduceResponse(
            base_offset=offsets[0][0], last_offset=last, high_watermark=replica.high_watermark,
            log_start_offset=replica.log.log_start_offset, duplicate=duplicate)

    def _not_leader(self, topic: str, partition: int, replica: Replica) -> E.BrokerError:
        leader = replica.leader_id
        if leader is None or leader == self.id:
            return E.LeaderNotAvailableError(
                f"{topic}-{partition}: leadership is changing; retry shortly")
        return E.NotLeaderError(
            f"node {self.id} is no longer the leader of {topic}-{partition}; node {leader} is",
            leader_id=leader,
            leader_address=self.state.nodes.get(leader, self.config.peers.get(leader, "")))

    # ---------------------------------------------------------------- fetch

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchResponse:
        if len(request.partitions) > self.config.request_partitions_max:
            raise E.InvalidRequestError(
                f"{len(request.partitions)} partitions in one fetch; the maximum is "
                f"{self.config.request_partitions_max}")
        if request.max_wait_ms < 0 or request.max_bytes < 0 or any(
                p.max_bytes < 0 for p in request.partitions):
            raise E.InvalidRequestError(
                "max_wait_ms and max_bytes must not be negative (0: the default)")
        max_wait_s = min(request.max_wait_ms, FETCH_WAIT_MS_MAX) / 1000
        deadline = time.monotonic() + max_wait_s
        while True:
            response, waitable = self._fetch_once(request)
            size = sum(len(p.batches) for p in response.partitions)
            errors = any(p.error for p in response.partitions)
            remaining = deadline - time.monotonic()
            if size >= max(request.min_bytes, 1) or errors or remaining <= 0 or not waitable:
                return response
            waits = [asyncio.ensure_future(r.wait_for_data(remaining)) for r in waitable]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    def _fetch_once(self, request: pb.FetchRequest) -> tuple[pb.FetchResponse, list[Replica]]:
        response = pb.FetchResponse()
        # Clamped to the server's maximum: the answer must fit one gRPC message.
        budget = min(request.max_bytes or FETCH_BYTES_MAX, FETCH_BYTES_MAX)
        waitable = []
        for want in request.partitions:
            result = pb.FetchPartitionResult(topic=want.topic, partition=want.partition,
                                             leader_id=-1, high_watermark=-1, log_start_offset=-1)
            try:
                _, replica = self._replica_for(want.topic, want.partition)
                result.leader_id = self.id
                result.high_watermark = replica.high_watermark
                result.log_start_offset = replica.log.log_start_offset
                # Above the high watermark but within the log is not out of range: a new leader's
                # high watermark can briefly lag the old one's until it commits in its term.
                if not replica.log.log_start_offset <= want.offset <= max(
                        replica.high_watermark, replica.log.log_end_offset):
                    raise E.OffsetOutOfRangeRequestError(
                        f"offset {want.offset} is outside {want.topic}-{want.partition}'s "
                        f"range [{replica.log.log_start_offset}, {replica.high_watermark}]")
                if budget > 0:
                    data = replica.read_committed(
                        want.offset, min(want.max_bytes or FETCH_PARTITION_BYTES_DEFAULT, budget))
                    result.batches = data
                    budget -= len(data)
                if not result.batches:
                    waitable.append(replica)
            except E.BrokerError as exc:
                result.error = exc.code
                result.error_message = exc.message
                if isinstance(exc, E.NotLeaderError) and exc.leader_id is not None:
                    result.leader_id = exc.leader_id
            except StorageError as exc:
                result.error = pb.STORAGE_ERROR
                result.error_message = f"{want.topic}-{want.partition}: {exc}"
            response.partitions.append(result)
        return response, waitable

    # ---------------------------------------------------------------- list offsets

    @staticmethod
    def _offset_for_timestamp(replica: Replica, timestamp_ms: int) -> int | None:
        """The first record (not batch) with timestamp >= timestamp_ms: the index finds the batch,
        then only that one batch is decoded (ListOffsets is not on the hot path)."""
        offset = replica.log.offset_for_timestamp(timestamp_ms)
        while offset is not None and offset < replica.log.log_end_offset:
            raw = replica.log.read(offset, 1)
            for pos, header in iter_batches(raw):
                if header.max_timestamp >= timestamp_ms and not header.is_control:
                    found = _record_offset_for_timestamp(raw[pos:pos + header.size],
                                                         timestamp_ms)
                    if found is not None and found >= offset:
                        return found
                offset = header.last_offset + 1
        return None

    def list_offsets(self, request: pb.ListOffsetsRequest) -> pb.ListOffsetsResponse:
        response = pb.ListOffsetsResponse()
        if len(request.partitions) > self.config.request_partitions_max:
            raise E.InvalidRequestError(
                f"{len(request.partitions)} partitions in one request; the maximum is "
                f"{self.config.request_partitions_max}")
        for want in request.partitions:
            result = pb.ListOffsetsResult(topic=want.topic, partition=want.partition,
                                          offset=-1, leader_id=-1)
            try:
                if want.spec not in (pb.EARLIEST, pb.LATEST, pb.TIMESTAMP):
                    raise E.InvalidRequestError(f"offset spec {want.spec} is unknown")
                _, replica = self._replica_for(want.topic, want.partition)
                result.leader_id = self.id
                if want.spec == pb.EARLIEST:
                    result.offset = replica.log.log_start_offset
                elif want.spec == pb.LATEST:
                    result.offset = replica.high_watermark
                else:
                    found = self._offset_for_timestamp(replica, want.timestamp_ms)
                    result.offset = found if found is not None and \
                        found < replica.high_watermark else -1
            except E.BrokerError as exc:
                result.error = exc.code
                result.error_message = exc.message
                if isinstance(exc, E.NotLeaderError) and exc.leader_id is not None:
                    result.leader_id = exc.leader_id
            response.results.append(result)
        return response


def _timeout_s(timeout_ms: int, default_ms: int) -> float:
    """A request's timeout: 0 means the default; a negative one is refused, not waited."""
    if timeout_ms < 0:
        raise E.InvalidRequestError(f"timeout_ms {timeout_ms} is negative")
    return (timeout_ms or default_ms) / 1000


def _record_offset_for_timestamp(batch: bytes, timestamp_ms: int) -> int | None:
    for record in decode_records(batch):
        if record.timestamp >= timestamp_ms:
            return record.offset
    return None


def _topic_result(name: str, result: dict[str, Any]) -> pb.TopicResult:
    if "error" not in result:
        return pb.TopicResult(name=name)
    return pb.TopicResult(name=name, error=result.get("code", pb.UNKNOWN),
                          error_message=result.get("message", ""))
