"""The metadata group on this node: its replica, the state machine, and proposals.

Every node hosts a replica of `__metadata` (voter or learner) and applies its committed commands
to a `MetadataState` in log order (at start-up by replaying the log: there is no snapshot yet).
Commands proposed here go to the metadata leader wherever it is (`Cluster.ProposeMetadata` on the
peer listener) and are answered once applied *here* too (read your writes). Every command is
decoded with the strict decoder before it is proposed, by the proposer and by the leader that
receives a forwarded one, so nothing enters the log that a node cannot apply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from tidelog.node import errors as E
from tidelog.node.config import NodeConfig
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    Command,
    CommandError,
    RegisterNode,
    command_op,
    decode_command,
    encode_command,
)
from tidelog.node.raft import Entry, EntryKind, Message, NotLeader, ProposalDropped
from tidelog.node.replica import Replica
from tidelog.node.replica_configs import metadata_log_config, raft_config
from tidelog.node.security.channels import peer_channel
from tidelog.node.security.keyring import with_at_rest_encryption
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto import cluster_pb2_grpc
from tidelog.proto.batch import Codec, decode_records, encode_batch, iter_batches, validate_batch

log = logging.getLogger(__name__)

METADATA_GROUP = "__metadata"
METADATA_PROPOSE_TIMEOUT_S = 10.0
FORWARDED_TIMEOUT_S_MAX = 60.0


class MetadataService:
    """Owned by the event loop. `open()` replays the log; `start()` starts the replica."""

    def __init__(self, config: NodeConfig, *, committer: GroupCommitter,
                 send: Callable[[str, Message], None],
                 on_soft_state: Callable[[Replica], None],
                 on_applied: Callable[[], None]) -> None:
        self.config = config
        self.state = MetadataState()
        self.replica: Replica | None = None
        self._committer = committer
        self._send = send
        self._on_soft_state = on_soft_state
        self._on_applied = on_applied
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}  # offset → its result
        self._peer_channels: dict[int, grpc.aio.Channel] = {}

    # ------------------------------------------------------------------ lifecycle

    def open(self, data_dir: Path) -> None:
        voters = list(self.config.metadata_voters)
        learners = [n for n in sorted(self.config.peers) if n not in voters]
        self.replica = Replica(
            group=METADATA_GROUP, directory=data_dir / "metadata",
            log_config=with_at_rest_encryption(metadata_log_config(self.config),
                                               self.config.security.encryption_keyring),
            raft_config=raft_config(self.config, voters, learners),
            committer=self._committer, send=self._send, on_soft_state=self._on_soft_state,
            apply=self._apply_entry,
        )
        self._replay(self.replica)

    def start(self) -> None:
        assert self.replica is not None
        self.replica.start()

    async def close(self) -> None:
        for channel in self._peer_channels.values():
            await channel.close()
        if self.replica is not None:
            await self.replica.close()

    @property
    def leader_id(self) -> int | None:
        return self.replica.leader_id if self.replica is not None else None

    def on_soft_state(self, replica: Replica) -> None:
        """Leadership of the metadata group moved away: pending proposals will not be answered
        here (they may still commit; the proposer retries through the new leader)."""
        if replica.is_leader:
            return
        for future in self._pending.values():
            if not future.done():
                future.set_exception(E.NotLeaderError(
                    "metadata leadership moved", leader_id=replica.leader_id))
        self._pending.clear()

    # ------------------------------------------------------------------ applying

    def _replay(self, replica: Replica) -> None:
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
                    self._apply_batch(raw[pos:pos + header.size], quiet=True)
                offset = header.last_offset + 1
        log.info("node %d: metadata replayed up to offset %d: %d nodes, %d topics",
                 self.config.node_id, commit, len(self.state.nodes), len(self.state.topics))

    def _apply_entry(self, replica: Replica, entry: Entry) -> None:
        if entry.kind is EntryKind.DATA:
            self._apply_batch(entry.data, quiet=False)

    def _apply_batch(self, batch: bytes, *, quiet: bool) -> None:
        for record in decode_records(batch):
            if record.offset <= self.state.applied_index:
                continue
            value = record.value or b""
            result = self.state.apply_encoded(record.offset, value)
            if not quiet and ("error" in result or b'"register_node"' not in value):
                shown = (b"upsert_user (the credential is not logged)"  # keys stay secret
                         if b'"op":"upsert_user"' in value else value[:200])
                log.info("metadata %d: %s → %s", record.offset,
                         shown.decode(errors="replace"), result or "ok")
            future = self._pending.pop(record.offset, None)
            if future is not None and not future.done():
                future.set_result(result)
        self._on_applied()

    # ------------------------------------------------------------------ proposing

    async def register_loop(self) -> None:
        """Tell the cluster our client-facing address (retried until the metadata group answers)."""
        me, listeners = self.config.node_id, self.config.advertised_listeners
        while True:
            if (self.state.nodes.get(me) == self.config.advertise
                    and self.state.listeners.get(me, {}) == listeners):
                return
            try:
                await self.propose(RegisterNode(node_id=me, address=self.config.advertise,
                                                listeners=tuple(sorted(listeners.items()))))
                log.info("node %d registered as %s%s", me, self.config.advertise,
                         "".join(f", {n}={a}" for n, a in sorted(listeners.items())))
                return
            except (E.BrokerError, grpc.RpcError, TimeoutError) as exc:
                log.debug("registration not yet possible: %s", exc)
                await asyncio.sleep(0.5)

    async def propose(self, command: Command,
                      timeout_s: float = METADATA_PROPOSE_TIMEOUT_S) -> dict[str, Any]:
        """Commit a metadata command through the metadata leader, wherever it is; returns its
        result once applied here ({'error': ..., 'code': ...} when it was refused)."""
        deadline = time.monotonic() + timeout_s
        try:  # the same strict decoder every node applies with: refuse here, not in the log
            payload = encode_command(command)
            decode_command(payload)
        except CommandError as exc:
            raise E.InvalidRequestError(f"invalid {command_op(command)} request: {exc}") from None
        replica = self.replica
        assert replica is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise E.RequestTimedOutError(
                    f"metadata command {command_op(command)} did not commit within "
                    f"{timeout_s:.0f} s (no metadata leader?)")
            try:
                if replica.is_leader:
                    result = await self.propose_here(payload, remaining)
                    return await self._applied_here(result, deadline)
                leader = replica.leader_id
                if leader is None or leader == self.config.node_id:
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

    async def serve_forwarded(
            self, request: cpb.ProposeMetadataRequest) -> cpb.ProposeMetadataResponse:
        """A peer forwards a command: decoded strictly first (by leader and follower alike), so
        nothing enters the metadata log that every node cannot apply."""
        replica = self.replica
        assert replica is not None
        if request.timeout_ms < 0:
            raise E.InvalidRequestError(f"timeout_ms {request.timeout_ms} is negative")
        try:
            command = decode_command(request.command)
        except CommandError as exc:
            raise E.InvalidRequestError(f"invalid metadata command: {exc}") from None
        if not replica.is_leader:
            leader = replica.leader_id
            return cpb.ProposeMetadataResponse(not_leader=True,
                                               leader_id=leader if leader is not None else -1)
        timeout_s = min(max(0.1, (request.timeout_ms or 5000) / 1000), FORWARDED_TIMEOUT_S_MAX)
        result = await self.propose_here(encode_command(command), timeout_s)
        return cpb.ProposeMetadataResponse(result=json.dumps(result).encode())

    async def propose_here(self, payload: bytes, timeout_s: float) -> dict[str, Any]:
        """Propose already-validated command bytes on this node, the metadata leader; the
        result (with "_index", the record's offset) once applied here."""
        replica = self.replica
        assert replica is not None
        batch = encode_batch([(None, payload, (), int(time.time() * 1000))], codec=Codec.NONE)
        header = validate_batch(batch, max_bytes=self.config.batch_bytes_max)
        try:
            ((_, last),) = replica.propose([(batch, header)])
        except (NotLeader, ProposalDropped) as exc:
            raise E.NotLeaderError(str(exc), leader_id=replica.leader_id) from None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[last] = future
        try:
            result = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise E.RequestTimedOutError(
                f"metadata command at offset {last} not applied within {timeout_s:.1f} s; it may "
                "still commit") from None
        finally:
            self._pending.pop(last, None)
        return {**result, "_index": last}

    async def _applied_here(self, result: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Read your writes: answer only once this node has applied the command too, so the
        client's next Metadata call here sees (for example) the topic it just created."""
        index = result.pop("_index", None)
        while index is not None and self.state.applied_index < index:
            if time.monotonic() > deadline:
                raise E.RequestTimedOutError(
                    f"metadata command committed at {index} but node {self.config.node_id} has "
                    "not applied it yet")
            await asyncio.sleep(0.01)
        return result

    def _peer_stub(self, node_id: int) -> cluster_pb2_grpc.ClusterStub:
        channel = self._peer_channels.get(node_id)
        if channel is None:
            channel = peer_channel(node_id)  # the peer listener; mTLS when TLS is on
            self._peer_channels[node_id] = channel
        return cluster_pb2_grpc.ClusterStub(channel)


def raise_result(result: dict[str, Any]) -> None:
    """A refused command's result as the BrokerError it names."""
    if "error" in result:
        exc_type = getattr(E, result["error"], E.BrokerError)
        if not (isinstance(exc_type, type) and issubclass(exc_type, E.BrokerError)):
            exc_type = E.BrokerError
        raise exc_type(result.get("message", "metadata command failed"))
