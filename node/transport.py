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
                 on_unreachable: Callable[[int], None]) -> None:
        self.self_id = self_id
        self.peer_id = peer_id
        self.address = address
        self._on_unreachable = on_unreachable
        self._queue: deque[cpb.RaftMessage] = deque()
        self._leaders: dict[str, cpb.LeaderInfo] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.stats = LinkStats()
        self.connected = False

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

    async def _run(self) -> None:
        backoff_ms = 50
        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
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
                while self._queue or self._leaders:
                    batch = cpb.RaftBatch(from_node=self.self_id)
                    if self._leaders:
                        batch.leaders.extend(self._leaders.values())
                        self._leaders = {}
                    size = 0
                    while self._queue and size < BATCH_BYTES_MAX:
                        message = self._queue.popleft()
                        size += sum(len(e.data) for e in message.entries) + 64
                        batch.messages.append(message)
                    await call.write(batch)
                    if not self.connected:
                        log.info("link to node %d (%s) up", self.peer_id, self.address)
                    self.connected = True
                    self.stats.sent_batches += 1
                    self.stats.sent_messages += len(batch.messages)
        finally:
            call.cancel()


class Transport:
    """All outbound links of this node, and the bookkeeping of who we heard from recently."""

    def __init__(self, self_id: int, peers: dict[int, str],
                 on_unreachable: Callable[[int], None]) -> None:
        self.self_id = self_id
        self.links = {
            peer_id: PeerLink(self_id, peer_id, address, on_unreachable)
            for peer_id, address in peers.items()
            if peer_id != self_id
        }
        self.last_heard_s: dict[int, float] = {}

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()))

    def send(self, to: int, message: cpb.RaftMessage) -> None:
        link = self.links.get(to)
        if link is not None:
            link.send(message)

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


def _short(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
