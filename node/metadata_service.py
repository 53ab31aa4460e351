"""The metadata group on this node: its replica, the state machine, and proposals.

Every node hosts a replica of `__metadata` (voter or learner) and applies its committed commands
to a `MetadataState` in log order. Every `metadata_snapshot_every` applied entries it writes a
snapshot of the applied state and truncates its log below the previous one; at start-up it loads
the newest usable snapshot and replays only the log after it. A node whose log is reset to a
leader's log start (INSTALL_LOG_START), or that has no usable snapshot covering its log start,
fetches a snapshot from the leader (or any peer) first (docs/raft.md "Metadata snapshots").
Commands proposed here go to the metadata leader wherever it is (`Cluster.ProposeMetadata` on the
peer listener) and are answered once applied *here* too (read your writes). Every command is
decoded with the strict decoder before it is proposed, by the proposer and by the leader that
receives a forwarded one, so nothing enters the log that a node cannot apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from tidelog.node.metadata_snapshot import (
    SNAPSHOT_BYTES_MAX,
    MetadataSnapshot,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
    load_newest,
    prune_snapshots,
    write_snapshot_file,
)
from tidelog.node.raft import Entry, EntryKind, LogIndex, Message, NotLeader, ProposalDropped
from tidelog.node.replica import Replica
from tidelog.node.replica_configs import metadata_log_config, raft_config
from tidelog.node.security.channels import peer_channel
from tidelog.node.security.keyring import with_at_rest_encryption
from tidelog.node.state_replay import local_batches
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto import cluster_pb2_grpc
from tidelog.proto.batch import Codec, decode_records, encode_batch, validate_batch

if TYPE_CHECKING:
    from tidelog.node.raft import Membership

log = logging.getLogger(__name__)

METADATA_GROUP = "__metadata"
METADATA_PROPOSE_TIMEOUT_S = 10.0
FORWARDED_TIMEOUT_S_MAX = 60.0
SNAPSHOT_CHUNK_BYTES = 1 << 20      # per FetchMetadataSnapshot answer (gRPC's limit is 4 MiB)
SNAPSHOT_FETCH_TIMEOUT_S = 10.0     # per chunk call
SNAPSHOT_FETCH_RETRY_S = 0.5        # after every peer refused or failed
SERVED_SNAPSHOTS_MAX = 2            # encoded snapshots kept for peers fetching them in chunks


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
        self._directory: Path | None = None
        # The Raft position (last offset, term) of the last entry the state reflects, control
        # entries included: the index a snapshot is taken at. Invariant: applied_index <= it.
        self._applied_entry: tuple[int, int] = (-1, 0)
        self._snapshot_index = -1  # the newest snapshot written or loaded here
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_lock = asyncio.Lock()  # snapshot files: one writer at a time
        # Set while the state lacks entries that the local log no longer holds (no usable
        # snapshot covers the log start): entries are not applied until a peer's snapshot is in.
        self._needs_snapshot_from: int | None = None
        self._catch_up_task: asyncio.Task[None] | None = None
        # Snapshots being sent to peers, by index (several peers may fetch at once).
        self._served: dict[int, bytes] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def open(self, data_dir: Path, bootstrap: Membership | None = None) -> None:
        """`bootstrap`: the metadata group a joining node's seed named, with the node a learner
        (node/membership.py); None: the first voters of --peers, the other nodes learners. A
        membership persisted in raft.state wins over either."""
        voters = list(self.config.metadata_voters)
        learners = [n for n in sorted(self.config.peers) if n not in voters]
        group = raft_config(self.config, voters, learners)
        if bootstrap is not None:
            group = group.with_membership(bootstrap)
        self._directory = data_dir / "metadata"
        self.replica = Replica(
            group=METADATA_GROUP, directory=self._directory,
            log_config=with_at_rest_encryption(metadata_log_config(self.config),
                                               self.config.security.encryption_keyring),
            raft_config=group,
            committer=self._committer, send=self._send, on_soft_state=self._on_soft_state,
            apply=self._apply_entry, before_log_reset=self._before_log_reset,
        )
        self._load_snapshot(self.replica)
        self._replay(self.replica)

    def start(self) -> None:
        assert self.replica is not None
        self.replica.start()
        if self._needs_snapshot_from is not None:
            self._catch_up_task = asyncio.get_running_loop().create_task(
                self._catch_up_from_peer(), name="metadata-snapshot-fetch")

    async def close(self) -> None:
        self._closed = True
        for task in (self._snapshot_task, self._catch_up_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
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

    def _load_snapshot(self, replica: Replica) -> None:
        """The newest snapshot that loads and covers the log start (node/metadata_snapshot.py);
        a damaged one is refused and the next older one tried. None usable: a log that starts
        at 0 replays whole; otherwise a peer's snapshot is needed first (start())."""
        assert self._directory is not None
        covers = replica.log.log_start_offset - 1
        snapshot = load_newest(self._directory, covers=covers)
        if snapshot is not None:
            self._install(snapshot)
            log.info("node %d: metadata snapshot at %d loaded (log %d..%d)", self.config.node_id,
                     snapshot.index, replica.log.log_start_offset, replica.log.log_end_offset)
        elif covers >= 0:
            self._needs_snapshot_from = covers
            log.error("node %d: no usable metadata snapshot covers the metadata log start %d: "
                      "fetching one from a peer before applying the log", self.config.node_id,
                      covers + 1)

    def _replay(self, replica: Replica) -> None:
        """Apply the committed local log after the state's position (the snapshot's, or the log
        start), synchronously."""
        if self._needs_snapshot_from is not None:
            return
        commit = replica.commit_index
        for header, batch in local_batches(replica.log, self._applied_entry[0] + 1, commit):
            if not header.is_control:
                self._apply_batch(batch, quiet=True)
            self._applied_entry = (header.last_offset, header.term)
        log.info("node %d: metadata replayed up to offset %d: %d nodes, %d topics",
                 self.config.node_id, commit, len(self.state.nodes), len(self.state.topics))

    def _apply_entry(self, replica: Replica, entry: Entry) -> None:
        if self._needs_snapshot_from is not None or entry.last <= self._applied_entry[0]:
            return  # waiting for a peer's snapshot (replayed after it), or covered by one
        if entry.kind is EntryKind.DATA:
            self._apply_batch(entry.data, quiet=False)
        self._applied_entry = (entry.last, entry.term)
        self._maybe_snapshot()

    # ------------------------------------------------------------------ snapshots

    def _install(self, snapshot: MetadataSnapshot) -> None:
        """Replace the state with a snapshot's, in one synchronous step."""
        self.state.restore(snapshot.state)
        self._applied_entry = (snapshot.index, snapshot.term)
        self._snapshot_index = max(self._snapshot_index, snapshot.index)

    def _maybe_snapshot(self) -> None:
        every = self.config.metadata_snapshot_every
        index = self._applied_entry[0]
        if every <= 0 or index - self._snapshot_index < every or (
                self._snapshot_task is not None and not self._snapshot_task.done()):
            return
        # Encoded now, on the loop, so it is exactly the state at `index`.
        data = encode_snapshot(MetadataSnapshot(index=index, term=self._applied_entry[1],
                                                state=self.state))
        self._snapshot_index = index
        self._snapshot_task = asyncio.get_running_loop().create_task(
            self._write_and_truncate(index, data), name="metadata-snapshot")

    async def _write_and_truncate(self, index: int, data: bytes) -> None:
        """Write the snapshot (atomic, durable), keep the newest two, then cut the log below the
        older of them: either one plus the log after it rebuilds the state."""
        replica, directory = self.replica, self._directory
        assert replica is not None and directory is not None
        loop = asyncio.get_running_loop()
        try:
            async with self._snapshot_lock:
                await loop.run_in_executor(None, write_snapshot_file, directory, data, index)
                kept = await loop.run_in_executor(None, prune_snapshots, directory)
            log.info("node %d: metadata snapshot at %d written (%d bytes)",
                     self.config.node_id, index, len(data))
            if len(kept) >= 2:
                await self._truncate_below(replica, kept[-1])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a full disk, a closing replica: next time
            log.warning("node %d: metadata snapshot at %d not completed: %s",
                        self.config.node_id, index, exc)

    async def _truncate_below(self, replica: Replica, index: int) -> None:
        """Drop the log entries up to the snapshot at `index` (as retention does: only applied,
        persisted, whole entries; node/retention.py)."""
        core = replica.core
        limit = min(index, core.applied, core.log.persisted_index())
        start = replica.log.log_start_offset
        if limit < start:
            return
        upto = int(core.log.boundary_at_or_before(LogIndex(limit)))
        if upto >= start:
            await replica.truncate_prefix(upto)
            log.info("node %d: metadata log start %d -> %d (below the snapshot at %d)",
                     self.config.node_id, start, upto + 1, index)

    async def _before_log_reset(self, start: int, term: int) -> None:
        """The replica is about to drop its whole log and start at `start` (the leader's log
        start): the entries below are committed but gone here, so their state comes from a
        peer's snapshot, made durable before the reset is recorded (a crash in between restarts
        with the snapshot and the old log). Retried until some node serves one."""
        if self._needs_snapshot_from is None and self._applied_entry[0] >= start - 1:
            return
        await self._fetch_and_install(start - 1)

    async def _catch_up_from_peer(self) -> None:
        """At start-up without a usable snapshot: fetch one, then replay the local log after it
        (the entries committed meanwhile were not applied)."""
        assert self._needs_snapshot_from is not None and self.replica is not None
        await self._fetch_and_install(self._needs_snapshot_from)
        self._replay(self.replica)

    async def _fetch_and_install(self, min_index: int) -> None:
        directory = self._directory
        assert directory is not None
        loop = asyncio.get_running_loop()
        while not self._closed:
            fetched = await self._fetch_snapshot(min_index)
            if fetched is None:
                await asyncio.sleep(SNAPSHOT_FETCH_RETRY_S)
                continue
            snapshot, data = fetched
            async with self._snapshot_lock:
                if self._needs_snapshot_from is None and self._applied_entry[0] >= min_index:
                    return  # another path installed one meanwhile
                await loop.run_in_executor(None, write_snapshot_file, directory, data,
                                           snapshot.index)
                await loop.run_in_executor(
                    None, functools.partial(prune_snapshots, directory, below=min_index))
                self._install(snapshot)
                self._needs_snapshot_from = None
            log.warning("node %d: metadata state installed from a peer's snapshot at %d "
                        "(%d bytes)", self.config.node_id, snapshot.index, len(data))
            self._on_applied()
            return
        raise asyncio.CancelledError

    async def _fetch_snapshot(self, min_index: int) -> tuple[MetadataSnapshot, bytes] | None:
        """A snapshot reaching `min_index` from the leader, else from any other peer; checked
        in full (decode_snapshot) before it is trusted. None: nobody served one."""
        me = self.config.node_id
        leader = self.leader_id
        # The leader first: a joining node knows no other node yet (its --peers is itself).
        peers = [n for n in sorted(set(self.config.peers) | set(self.state.nodes)) if n != me]
        order = ([leader] if leader is not None and leader != me else []) + [
            n for n in peers if n != leader]
        for node_id in order:
            try:
                data = await self._fetch_from(node_id, min_index)
                snapshot = decode_snapshot(data)
            except (grpc.aio.AioRpcError, SnapshotError, TimeoutError) as exc:
                text = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.info("metadata snapshot from node %d refused or failed: %s", node_id, text)
                continue
            if snapshot.index < min_index:
                log.info("node %d sent a metadata snapshot at %d, below %d", node_id,
                         snapshot.index, min_index)
                continue
            return snapshot, data
        return None

    async def _fetch_from(self, node_id: int, min_index: int) -> bytes:
        stub = self._peer_stub(node_id)
        parts: list[bytes] = []
        received, index, total = 0, None, None
        while total is None or received < total:
            request = cpb.MetadataSnapshotRequest(min_index=min_index, offset=received)
            if index is not None:
                request.index = index
            chunk = await stub.FetchMetadataSnapshot(request, timeout=SNAPSHOT_FETCH_TIMEOUT_S)
            if total is None:
                index, total = chunk.index, chunk.total_bytes
                if not 0 < total <= SNAPSHOT_BYTES_MAX:
                    raise SnapshotError(f"node {node_id} offers a snapshot of {total} bytes")
            if (chunk.index, chunk.total_bytes, chunk.offset) != (index, total, received) or (
                    not chunk.data or received + len(chunk.data) > total):
                raise SnapshotError(f"node {node_id} sent an inconsistent chunk at {received}")
            parts.append(chunk.data)
            received += len(chunk.data)
        return b"".join(parts)

    def snapshot_chunk(self, request: cpb.MetadataSnapshotRequest) -> cpb.MetadataSnapshotChunk:
        """Serve this node's applied state to a peer (Cluster.FetchMetadataSnapshot): encoded at
        the first call and kept for the calls that fetch the rest of it."""
        index = self._applied_entry[0]
        if self._needs_snapshot_from is not None or index < request.min_index:
            raise E.LeaderNotAvailableError(
                f"node {self.config.node_id} has applied the metadata log only up to {index} "
                f"(asked for {request.min_index}): ask another node")
        if not request.HasField("index"):
            served_index = index
            if index not in self._served:
                self._served[index] = encode_snapshot(MetadataSnapshot(
                    index=index, term=self._applied_entry[1], state=self.state))
                while len(self._served) > SERVED_SNAPSHOTS_MAX:  # the oldest goes
                    del self._served[min(self._served)]
        elif request.index in self._served:
            served_index = request.index
        else:
            raise E.LeaderNotAvailableError(
                f"node {self.config.node_id} no longer holds the metadata snapshot at "
                f"{request.index}: start again")
        data = self._served[served_index]
        if not 0 <= request.offset < len(data):
            raise E.InvalidRequestError(f"offset {request.offset} outside the snapshot's "
                                        f"{len(data)} bytes")
        return cpb.MetadataSnapshotChunk(
            data=data[request.offset:request.offset + SNAPSHOT_CHUNK_BYTES],
            total_bytes=len(data), index=served_index, offset=request.offset)

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
