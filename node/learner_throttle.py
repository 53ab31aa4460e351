"""The catch-up throttle: what a leader sends a LEARNER of a reassigning partition is paced by a
token bucket, in the shell in front of the transport (never in the sans-I/O Raft core).

Why here: a replica joining a partition as a learner first receives the whole log; unthrottled,
that copy competes with the producers' replication for the disk and the network (Kafka's
`leader.replication.throttled.rate`, rpk's `--throttle`). Raft tolerates delay and loss, so
the shell may hold messages back: each (group, learner) stream is a FIFO (order kept, so an
empty append never overtakes the entries it follows and sends the learner into a probe), and a
message leaves only once the bucket holds its entries' bytes ("pay before send": the bytes on
the wire over any window are at most rate × window + one burst). An append of many entries is
split at entry boundaries into appends of about `chunk_s` seconds of bytes each (each a valid
append: the previous chunk's last entry is its prev), so the learner advances, and acknowledges,
steadily rather than once per 1 MiB. Messages without entries (heartbeats, probes) cost nothing
but wait their turn. Voters are never throttled: the throttle can slow a move, never the commit
of produced records.

Bounds: at most `queued_bytes_max` bytes wait per stream; a message beyond that is dropped (the
leader resends after the learner's next answer: Raft's loss tolerance); the bucket holds at most
`burst_s` seconds of tokens while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tidelog.node.metrics.reassignment import THROTTLED_BYTES
from tidelog.node.raft import Entry, LogIndex, Message

log = logging.getLogger(__name__)

QUEUED_BYTES_MAX = 8 * 1024 * 1024
BURST_S = 0.05
CHUNK_S = 0.1
CHUNK_BYTES_MIN = 16 * 1024


@dataclass(slots=True)
class _Stream:
    rate: int  # bytes/s, > 0
    tokens: float = 0.0
    updated: float = 0.0
    queue: deque[tuple[Message, int]] = field(default_factory=deque)
    queued_bytes: int = 0
    sent_bytes: int = 0  # entry bytes released so far (for tests and status)
    dropped: int = 0
    timer: asyncio.TimerHandle | None = None


def entry_bytes(message: Message) -> int:
    return sum(len(e.data) for e in message.entries)


def split_append(message: Message, chunk_bytes: int) -> list[Message]:
    """The message as appends of at most `chunk_bytes` of entries each (one entry at least),
    each one's prev being the last entry of the one before: what the leader would have sent
    with a smaller max_append_bytes."""
    if len(message.entries) < 2 or entry_bytes(message) <= chunk_bytes:
        return [message]
    parts: list[Message] = []
    prev_index, prev_term = message.index, message.log_term
    chunk: list[Entry] = []
    size = 0
    for entry in message.entries:
        if chunk and size + len(entry.data) > chunk_bytes:
            parts.append(dataclasses.replace(message, index=prev_index, log_term=prev_term,
                                             entries=tuple(chunk)))
            prev_index, prev_term = LogIndex(chunk[-1].last), chunk[-1].term
            chunk, size = [], 0
        chunk.append(entry)
        size += len(entry.data)
    parts.append(dataclasses.replace(message, index=prev_index, log_term=prev_term,
                                     entries=tuple(chunk)))
    return parts


class LearnerThrottle:
    """Owned by the event loop. `rate_of(group, node)`: the bytes/s for messages of `group` to
    `node` (0: not throttled, sent at once)."""

    def __init__(self, send: Callable[[str, Message], None],
                 rate_of: Callable[[str, int], int], *,
                 clock: Callable[[], float] = time.monotonic,
                 queued_bytes_max: int = QUEUED_BYTES_MAX, burst_s: float = BURST_S) -> None:
        self._send = send
        self._rate_of = rate_of
        self._clock = clock
        self._queued_bytes_max = queued_bytes_max
        self._burst_s = burst_s
        self._streams: dict[tuple[str, int], _Stream] = {}

    def send(self, group: str, message: Message) -> None:
        key = (group, int(message.to))
        rate = self._rate_of(group, int(message.to))
        stream = self._streams.get(key)
        if rate <= 0:
            if stream is not None:  # no longer throttled (promoted, completed): drain in order
                self._close(key, stream)
            self._send(group, message)
            return
        if stream is None:
            stream = self._streams[key] = _Stream(rate=rate, updated=self._clock())
            log.info("throttling catch-up of %s to learner %d at %d bytes/s", group,
                     message.to, rate)
        stream.rate = rate
        for part in split_append(message, max(CHUNK_BYTES_MIN, int(rate * CHUNK_S))):
            cost = entry_bytes(part)
            if cost and stream.queued_bytes + cost > self._queued_bytes_max:
                stream.dropped += 1  # the leader resends after the learner's next answer
                break  # the rest would only leave a gap the learner refuses
            stream.queue.append((part, cost))
            stream.queued_bytes += cost
        self._pump(key)

    def sent_bytes(self, group: str, node: int) -> int:
        stream = self._streams.get((group, node))
        return stream.sent_bytes if stream is not None else 0

    def close(self) -> None:
        for stream in self._streams.values():
            if stream.timer is not None:
                stream.timer.cancel()
        self._streams.clear()

    def _pump(self, key: tuple[str, int]) -> None:
        stream = self._streams.get(key)
        if stream is None:
            return
        stream.timer = None
        now = self._clock()
        while stream.queue:
            message, cost = stream.queue[0]
            cap = max(stream.rate * self._burst_s, cost)
            stream.tokens = min(cap, stream.tokens + (now - stream.updated) * stream.rate)
            stream.updated = now
            if stream.tokens < cost:
                delay = (cost - stream.tokens) / stream.rate
                with contextlib.suppress(RuntimeError):  # no loop: closing
                    stream.timer = asyncio.get_running_loop().call_later(
                        delay, self._pump, key)
                return
            stream.tokens -= cost
            stream.queue.popleft()
            stream.queued_bytes -= cost
            stream.sent_bytes += cost
            if cost:
                THROTTLED_BYTES.inc(cost)
            self._send(key[0], message)
        cap = stream.rate * self._burst_s
        stream.tokens = min(stream.tokens, cap)

    def _close(self, key: tuple[str, int], stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
        del self._streams[key]
        while stream.queue:
            message, _ = stream.queue.popleft()
            self._send(key[0], message)
