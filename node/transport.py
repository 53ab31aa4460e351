"""Node-to-node Raft transport: one long-lived gRPC client stream per ordered pair of nodes.

Every outbound message (of any Raft group) to peer P goes into P's bounded queue; one sender task
drains the queue into RaftBatch messages, so all heartbeats of a tick and all appends ready at the
same moment share one gRPC message. Raft tolerates loss, so overflow and broken streams drop
messages (counted) instead of blocking the event loop; the stream is reopened with capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tidelog.node.security.channels import peer_channel
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto import cluster_pb2_grpc

log = logging.getLogger(__name__)

QUEUE_MESSAGES_MAX = 20_000
BATCH_BYTES_MAX = 16 * 1024 * 1024
RECONNECT_BACKOFF_MS_MAX = 1000


@dataclass
class LinkStats:
    sent_batches: int = 0
    sent_messages: int = 0
    dropped_messages: int = 0
    reconnects: int = 0


class PeerLink:
    """Outbound stream to one peer."""

    def __init__(self, self_id: int, peer_id: int, address: str,
                 on_unreachable: Callable[[int], None], incarnation: int = 0) -> None:
        self.self_id = self_id
        self.incarnation = incarnation  # on every batch: the peer sees when we restarted
        self.peer_id = peer_id
        self.address = address
        self._on_unreachable = on_unreachable
        self._queue: deque[cpb.RaftMessage] = deque()
        self._leaders: dict[str, cpb.LeaderInfo] = {}
        self._beat = False  # a node-level liveness beat is due (node/liveness.py)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.stats = LinkStats()
        self.connected = False
        self._refusal_logged = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"link-{self.peer_id}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._channel is not None:
            await self._channel.close()

    def send(self, message: cpb.RaftMessage) -> None:
        if len(self._queue) >= QUEUE_MESSAGES_MAX:
            self.stats.dropped_messages += 1
            return
        self._queue.append(message)
        self._wake.set()

    def send_leader(self, info: cpb.LeaderInfo) -> None:
        """Leadership news: only the latest per group is kept, so this queue is bounded too."""
        self._leaders[info.group] = info
        self._wake.set()

    def send_beat(self) -> None:
        """Node-level liveness: a batch goes out even if it carries nothing (quiesced groups
        send no heartbeats; the peer counts any batch as hearing from us)."""
        self._beat = True
        self._wake.set()

    async def _run(self) -> None:
        backoff_ms = 50
        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _refused(exc):
                    if not self._refusal_logged:  # once per link: the reason does not change
                        self._refusal_logged = True
                        log.warning("link to node %d (%s) refused: %s", self.peer_id,
                                    self.address, _short(exc))
                elif self.connected:
                    log.warning("link to node %d (%s) broke: %s", self.peer_id, self.address,
                                _short(exc))
                self.connected = False
            self.stats.dropped_messages += len(self._queue)
            self._queue.clear()
            self._on_unreachable(self.peer_id)
            self.stats.reconnects += 1
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(backoff_ms * 2, RECONNECT_BACKOFF_MS_MAX)
            if self.connected:
                backoff_ms = 50

    async def _stream(self) -> None:
        if self._channel is None:
            self._channel = peer_channel(self.peer_id)  # mTLS when TLS is on
        stub = cluster_pb2_grpc.ClusterStub(self._channel)
        call = stub.Exchange()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue or self._leaders or self._beat:
                    self._beat = False
                    batch = cpb.RaftBatch(from_node=self.self_id, incarnation=self.incarnation)
                    if self._leaders:
                        batch.leaders.extend(self._leaders.values())
                        self._leaders = {}
                    size = 0
                    while self._queue and size < BATCH_BYTES_MAX:
                        message = self._queue.popleft()
                        size += sum(len(e.data) for e in message.entries) + 64
                        batch.messages.append(message)
                    try:
                        await call.write(batch)
                    except asyncio.InvalidStateError:  # the peer ended the stream: say why
                        raise StreamEnded(await call.code(), await call.details()) from None
                    if not self.connected and not self._refusal_logged:
                        log.info("link to node %d (%s) up", self.peer_id, self.address)
                    self.connected = True
                    self.stats.sent_batches += 1
                    self.stats.sent_messages += len(batch.messages)
        finally:
            call.cancel()


class Transport:
    """All outbound links of this node, and the bookkeeping of who we heard from recently."""

    def __init__(self, self_id: int, peers: dict[int, str],
                 on_unreachable: Callable[[int], None], incarnation: int = 0) -> None:
        self.self_id = self_id
        self._on_unreachable = on_unreachable
        self.incarnation = incarnation
        self.links = {
            peer_id: PeerLink(self_id, peer_id, address, on_unreachable, incarnation)
            for peer_id, address in peers.items()
            if peer_id != self_id
        }
        self.last_heard_s: dict[int, float] = {}
        self._started = False
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._started = True
        for link in self.links.values():
            link.start()

    def set_peers(self, peers: dict[int, str]) -> None:
        """The node set changed (node/membership.py): open a link to each new node, close the
        link of each node that left, reopen one whose address changed."""
        for peer_id in [p for p, link in self.links.items()
                        if peers.get(p) != link.address]:
            link = self.links.pop(peer_id)
            log.info("link to node %d (%s) closed: %s", peer_id, link.address,
                     "it left the cluster" if peer_id not in peers else
                     f"its address is now {peers[peer_id]}")
            task = asyncio.get_running_loop().create_task(link.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        for peer_id, address in peers.items():
            if peer_id == self.self_id or peer_id in self.links:
                continue
            link = PeerLink(self.self_id, peer_id, address, self._on_unreachable,
                            self.incarnation)
            self.links[peer_id] = link
            if self._started:
                link.start()
                log.info("link to node %d (%s) opened: it joined the cluster", peer_id, address)

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()), *self._closing)

    def send(self, to: int, message: cpb.RaftMessage) -> None:
        link = self.links.get(to)
        if link is not None:
            link.send(message)

    def beat(self) -> None:
        """One liveness beat to every peer (node/liveness.py)."""
        for link in self.links.values():
            link.send_beat()

    def broadcast_leader(self, info: cpb.LeaderInfo) -> None:
        for link in self.links.values():
            link.send_leader(info)

    def heard_from(self, node_id: int) -> None:
        self.last_heard_s[node_id] = time.monotonic()

    def alive(self, node_id: int, within_s: float) -> bool:
        if node_id == self.self_id:
            return True
        heard = self.last_heard_s.get(node_id)
        return heard is not None and time.monotonic() - heard < within_s


class StreamEnded(Exception):
    """The peer ended our stream with a status (a write found the call finished)."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


def _refused(exc: BaseException) -> bool:
    """The peer answered and said no (we are not a member there, or our certificate is not)."""
    code = exc.code if isinstance(exc, StreamEnded) else \
        exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    return code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _short(exc: BaseException) -> str:
    if isinstance(exc, StreamEnded):
        return str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
