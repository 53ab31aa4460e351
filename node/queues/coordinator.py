"""The queue coordinator inside a Node: the asyncio shell around one `QueueCore` per queue.

The coordinator of queue Q is the leader of `__queue_state` partition `xxh3_64(Q) % N`; it holds
the cores of every queue of the partitions it leads. For each request, in this order:

    leadership + loaded check → read data (I/O, awaits) → core inputs (offer, acquire, settle...;
    synchronous: they mutate memory and return deltas) → add the deltas to the partition's
    pending writes, in the same synchronous step → wait until committed → answer.

Group commit (node/queues/state_writes.py): the pending writes of one event-loop pass, from
every request of the pass, are proposed as ONE batch (one record per queue) by a flush the
first of them schedules for the next pass; so N concurrent settles cost one Raft entry, not N.

Invariant (what makes replay exact): every in-memory change of a core is added to the pending
writes before the event loop runs anything else, and the flush proposes them in that order, so
the log order of the state records is the order the changes were made in, and a snapshot
(taken at the flush) covers exactly the deltas with seq <= its seq. A write that fails because
leadership moved drops every core of the partition (the memory may be ahead of the log) and
fails every request waiting on it; the new leader replays.

Becoming leader of a partition: wait until the new term's first entry is committed (the log then
holds everything ever acknowledged), replay the partition (`QueueReplay`), then serve; until then
COORDINATOR_NOT_AVAILABLE (retriable). Losing leadership drops the cores: NOT_COORDINATOR.

Records are read from the data partitions by `PartitionReader` (local replica or the leader) and
offered to the core on Receive; Receive answers with the raw batches covering what it acquired.
A Receive with nothing available long-polls until new data, a settlement that frees records, the
core's next event (a lock expiry, a backoff or delay ending) or its max_wait_ms. A tick loop
commits lock expiries that dead-letter, and starts each queue's dead-letter work
(node/queues/dead_letter_driver.py; dlq_depth.py counts the DLQ for stats).

`__queue_state` is created by the first FindQueueCoordinator (any node), with
`TIDELOG_QUEUE_STATE_PARTITIONS` partitions (default 16), replication factor min(3, nodes) and
cleanup.policy=compact.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.groups.errors import CoordinatorNotAvailableError, NotCoordinatorError
from tidelog.node.groups.offsets_log import partition_for
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command, CreateTopic, DeleteTopic
from tidelog.node.queues import state_log as sl
from tidelog.node.queues.config import QueueConfig, QueueConfigError
from tidelog.node.queues.core import DEDUP_IDS_MAX, QueueCore
from tidelog.node.queues.dead_letter_driver import DeadLetterDriver, compacted_topic_problem
from tidelog.node.queues.dead_letters import (
    Writer,
    redrive_partition,
)
from tidelog.node.queues.dlq_depth import DlqCount, count_dead_letters, high_watermarks
from tidelog.node.queues.model import Acquired, OfferedRecord, QueueStats, Settle, SettleKind
from tidelog.node.queues.reader import PartitionReader, decode_offered
from tidelog.node.queues.state_writes import PendingWrites, StateGroup
from tidelog.node.queues.wire import (
    WRITE_TIMEOUT_S,
    check_consumer,
    config_from_wire,
    config_to_wire,
    merge_acquired,
    messages_within,
    settle_result,
    settlement_problem,
    stats_to_wire,
    timeout_s_of,
)
from tidelog.node.raft import NotLeader, ProposalDropped
from tidelog.node.replica import Replica, ReplicaLostLeadership
from tidelog.node.state_replay import replay_committed
from tidelog.node.topics import partition_group
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import queue_pb2 as qpb
from tidelog.proto.batch import Codec, encode_batch, validate_batch

__all__ = ["QUEUE_STATE_TOPIC", "QueueCoordinator", "QueueHost"]

log = logging.getLogger(__name__)

QUEUE_STATE_TOPIC = sl.QUEUE_STATE_TOPIC
QUEUE_STATE_PARTITIONS = int(os.environ.get("TIDELOG_QUEUE_STATE_PARTITIONS", "16"))
QUEUE_STATE_CONFIGS = {"cleanup.policy": "compact", "segment.bytes": str(16 * 1024 * 1024),
                       "segment.ms": str(3600 * 1000)}
SNAPSHOT_EVERY = sl.SNAPSHOT_EVERY  # delta records between snapshots at most (compaction)
# State batches of one partition proposed and not yet committed, at most; the writes made
# meanwhile wait and go out together when the oldest commits (group commit under load: one
# batch per Raft round instead of one per request; without load each write goes at once).
FLUSHES_IN_FLIGHT = int(os.environ.get("TIDELOG_QUEUE_FLUSHES_IN_FLIGHT", "2"))
TICK_INTERVAL_S = 0.1
TOPICS_CHECK_INTERVAL_S = 2.0
FILL_READ_BYTES = 256 * 1024
REMOTE_POLL_S = 0.1          # a partition read from another node is polled at most this often
RECEIVE_MESSAGES_MAX = 10_000
RECEIVE_WAIT_MS_MAX = 30_000
RECEIVE_BYTES_DEFAULT = 4 * 1024 * 1024
SETTLEMENTS_MAX = 10_000
PEEK_MESSAGES_MAX = 10_000
DEDUP_CLOCK_SLACK_MS = 60_000   # ids read back from this much before the window (clock skew)


# What a write's caller waits for: (last offset, term), or the pass's flush that gives it.
Waiter = tuple[int, int] | asyncio.Future[tuple[int, int]]


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A failed flush nobody awaited (its request failed before) is not an unhandled error."""
    if not future.cancelled():
        future.exception()


def _now_ms() -> int:
    return int(time.time() * 1000)


class QueueHost(Protocol):
    """What the queue coordinator needs of its node, and nothing else."""

    @property
    def node_id(self) -> int: ...

    @property
    def batch_bytes_max(self) -> int: ...

    @property
    def state(self) -> MetadataState: ...

    def node_ids(self) -> list[int]: ...

    def leader_of(self, group: str) -> tuple[int, str] | None: ...

    def local_replica(self, group: str) -> Replica | None: ...

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...

    async def wait_for_leaders(self, names: list[str], timeout_s: float) -> None: ...

    async def produce(self, request: pb.ProduceRequest) -> pb.ProduceResponse: ...


@dataclass(slots=True, eq=False)
class _Decoded:
    """Records of one partition decoded but not offered yet (the window was full)."""

    records: list[OfferedRecord]
    pos: int            # the next record to offer
    read_to: int        # the offset after the last position the read examined
    next_offset: int    # the core's read offset these records continue from


def _offset_of(record: OfferedRecord) -> int:
    return record.offset


@dataclass(slots=True, eq=False)
class _Queue:
    """One queue this node coordinates."""

    name: str
    core: QueueCore
    seq: int                       # of the last state record proposed
    since_snapshot: int            # delta records proposed since the last snapshot
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    deleted: bool = False
    dlq_task: asyncio.Task[None] | None = field(default=None, repr=False)
    dlq_retry_at: float = 0.0
    remote_read_at: dict[TopicPartition, float] = field(default_factory=dict)
    decoded: dict[TopicPartition, _Decoded] = field(default_factory=dict)
    record_bytes: float = 0.0      # stored bytes per record, averaged over reads (max_bytes)
    dlq_counts: dict[int, DlqCount] = field(default_factory=dict)
    # Loaded by a new coordinator: the dedup ids of records already below `start` are read
    # back from the topics (the dedup window's worth) before anything is offered.
    ids_pending: bool = False
    ids_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def notify(self) -> None:
        """Wake every long-poll waiting on this queue (each took the event before checking)."""
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(slots=True, eq=False)
class _Partition:
    """A `__queue_state` partition this node leads (or is loading)."""

    partition: int
    replica: Replica
    term: int
    queues: dict[str, _Queue] | None = None  # None while loading
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    # (last offset, term) of the newest state write proposed: an answer that rests on state
    # already changed in memory but proposed by an earlier request (a retried settlement
    # answered from the memory of recent ones) waits for it to commit first.
    last_proposed: tuple[int, int] | None = None
    # Group commit (node/queues/state_writes.py): the writes of this event-loop pass, proposed
    # as one batch by a flush scheduled for the next pass; `flushed` resolves to its
    # (last offset, term) for every request that added to it.
    pending: PendingWrites = field(default_factory=PendingWrites)
    flushed: asyncio.Future[tuple[int, int]] | None = field(default=None, repr=False)
    flush_scheduled: bool = False
    uncommitted: int = 0    # flushes proposed and not committed yet (at most FLUSHES_IN_FLIGHT)


class QueueCoordinator:
    def __init__(self, host: QueueHost) -> None:
        self.host = host
        self.reader = PartitionReader(host)
        self.writer = Writer(host.produce, self._leader_address)
        self._dead_letters = DeadLetterDriver(host, self.reader, self.writer, self._write,
                                              self._ensure_dlq_topic)
        self._partitions: dict[int, _Partition] = {}
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._creating: asyncio.Task[None] | None = None

    # ============================================================== leadership (soft state)

    def on_soft_state(self, replica: Replica) -> None:
        partition = self._state_partition_of(replica.group)
        if partition is None:
            return
        current = self._partitions.get(partition)
        if replica.is_leader:
            if current is not None and current.term == replica.term:
                return
            self._drop(partition)
            entry = _Partition(partition=partition, replica=replica, term=replica.term)
            self._partitions[partition] = entry
            entry.task = asyncio.get_running_loop().create_task(
                self._load(entry), name=f"load-queue-state-{partition}")
        elif current is not None:
            self._drop(partition)
            log.info("no longer coordinator of %s-%d", QUEUE_STATE_TOPIC, partition)

    def _drop(self, partition: int) -> None:
        entry = self._partitions.pop(partition, None)
        if entry is None:
            return
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        self._fail_pending(entry, NotCoordinatorError(
            f"node {self.host.node_id} lost leadership of {QUEUE_STATE_TOPIC}-{partition} "
            "before writing; find the coordinator again"))
        for queue in (entry.queues or {}).values():
            queue.deleted = True
            if queue.dlq_task is not None and not queue.dlq_task.done():
                queue.dlq_task.cancel()
            queue.notify()

    async def _load(self, entry: _Partition) -> None:
        replica = entry.replica
        started = time.monotonic()
        try:
            replay = sl.QueueReplay()

            def feed(key: bytes | None, value: bytes | None) -> None:
                if key is not None:
                    replay.feed(key, value)

            records = await replay_committed(replica, entry.term, feed)
            if records is None:
                return
            if self._partitions.get(entry.partition) is not entry or not replica.is_leader:
                return
            entry.queues = {
                name: _Queue(name=name, core=core, seq=seq,
                             # The next write is a snapshot: how many deltas follow the
                             # replayed one is not tracked across leaders.
                             since_snapshot=SNAPSHOT_EVERY,
                             ids_pending=core.config.dedup_window_ms >= 0)
                for name, (core, seq) in replay.result().items()}
            log.info("coordinator of %s-%d loaded: %d records, %d queues in %.0f ms",
                     QUEUE_STATE_TOPIC, entry.partition, records, len(entry.queues),
                     (time.monotonic() - started) * 1000)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("loading %s-%d failed; its queues are unavailable on this node",
                          QUEUE_STATE_TOPIC, entry.partition)
            self._drop(entry.partition)

    # ================================================================== periodic work

    async def run(self) -> None:
        """Lock expiries, dead-letter jobs and partition changes, for every loaded queue."""
        last_topics_check = 0.0
        try:
            while True:
                await asyncio.sleep(TICK_INTERVAL_S)
                check_topics = time.monotonic() - last_topics_check >= TOPICS_CHECK_INTERVAL_S
                if check_topics:
                    last_topics_check = time.monotonic()
                for entry in list(self._partitions.values()):
                    for queue in list((entry.queues or {}).values()):
                        try:
                            await self._tick_queue(entry, queue, check_topics)
                        except E.BrokerError as exc:
                            log.debug("queue %s tick: %s", queue.name, exc.message)
        finally:
            await self.reader.close()
            await self.writer.close()

    async def _tick_queue(self, entry: _Partition, queue: _Queue, check_topics: bool) -> None:
        if queue.deleted:
            return
        now = _now_ms()
        deltas = queue.core.tick(now)
        if check_topics:
            deltas.extend(self._partition_changes(queue))
        if deltas:
            await self._write(entry, queue, deltas)
            queue.notify()
        if (queue.dlq_task is None or queue.dlq_task.done()) \
                and time.monotonic() >= queue.dlq_retry_at and queue.core.has_dead_letter_work():
            queue.dlq_task = asyncio.get_running_loop().create_task(
                self._dead_letters.run(entry, queue), name=f"dlq-{queue.name}")

    def _partition_changes(self, queue: _Queue) -> list[Any]:
        """Partitions added to the queue's topics start at their log start."""
        new: dict[TopicPartition, int] = {}
        for topic_name in queue.core.config.topics:
            topic = self.host.state.topics.get(topic_name)
            if topic is None:
                continue
            for p in range(topic.partitions):
                tp = TopicPartition(topic_name, p)
                if tp not in queue.core.partitions:
                    new[tp] = 0
        return queue.core.set_partitions(new) if new else []

    # ===================================================================== requests

    async def find_coordinator(self, request: qpb.FindQueueCoordinatorRequest
                               ) -> pb.FindCoordinatorResponse:
        if not request.queue:
            raise E.InvalidRequestError("queue name is empty")
        topic = self.host.state.topics.get(QUEUE_STATE_TOPIC)
        if topic is None:
            await self._ensure_state_topic()
            topic = self.host.state.topics.get(QUEUE_STATE_TOPIC)
            if topic is None:
                raise CoordinatorNotAvailableError(f"{QUEUE_STATE_TOPIC} is being created; retry")
        partition = partition_for(request.queue, topic.partitions)
        leader = self.host.leader_of(partition_group(topic.topic_id, partition))
        if leader is None:
            raise CoordinatorNotAvailableError(
                f"{QUEUE_STATE_TOPIC}-{partition} has no leader yet; retry shortly")
        leader_id, address = leader
        return pb.FindCoordinatorResponse(node_id=leader_id, address=address,
                                          partition=partition)

    async def create_queue(self, request: qpb.CreateQueueRequest) -> qpb.CreateQueueResponse:
        timeout_s = timeout_s_of(request.timeout_ms)
        config = config_from_wire(request.config)
        for name in (*config.topics, config.dlq_topic):
            if name.startswith("__"):
                raise E.InvalidQueueConfigError(
                    f"{name!r} is an internal topic; it cannot be a queue's topic or "
                    "dead-letter topic")
        topics = []
        for name in config.topics:
            topic = self.host.state.topics.get(name)
            if topic is None:
                raise E.UnknownTopicError(f"topic {name!r} does not exist; create it first")
            topics.append(topic)
        entry, queues = self._partition_for(config.name)
        existing = queues.get(config.name)
        if existing is not None:
            if request.if_not_exists:
                return qpb.CreateQueueResponse(config=config_to_wire(existing.core.config))
            raise E.QueueExistsError(f"queue {config.name!r} already exists")
        if problem := compacted_topic_problem(self.host.state, config.dlq_topic):
            raise E.InvalidQueueConfigError(problem)
        await self._ensure_dlq_topic(config, timeout_s)
        starts: dict[TopicPartition, int] = {}
        for topic in topics:
            for p in range(topic.partitions):
                tp = TopicPartition(topic.name, p)
                log_start, high_watermark = await self.reader.bounds(tp)
                starts[tp] = log_start if config.start == "earliest" else high_watermark
        entry, queues = self._partition_for(config.name)  # the awaits may have moved it
        existing = queues.get(config.name)
        if existing is not None:
            if request.if_not_exists:
                return qpb.CreateQueueResponse(config=config_to_wire(existing.core.config))
            raise E.QueueExistsError(f"queue {config.name!r} already exists")
        queue = _Queue(name=config.name, core=QueueCore(config, starts), seq=0,
                       since_snapshot=SNAPSHOT_EVERY)
        queues[config.name] = queue
        await self._write(entry, queue, [], timeout_s, snapshot=True)
        log.info("queue %s created over %s (dead letters to %s)", config.name,
                 ",".join(config.topics), config.dlq_topic)
        return qpb.CreateQueueResponse(config=config_to_wire(config))

    async def alter_queue(self, request: qpb.AlterQueueRequest) -> qpb.AlterQueueResponse:
        entry, queue = self._queue_for(request.queue)
        try:
            config = queue.core.config.with_changes(dict(request.set))
        except QueueConfigError as exc:
            raise E.InvalidQueueConfigError(str(exc)) from None
        if config.dlq_topic.startswith("__"):
            raise E.InvalidQueueConfigError(f"{config.dlq_topic!r} is an internal topic")
        if config.dlq_topic != queue.core.config.dlq_topic:
            if problem := compacted_topic_problem(self.host.state, config.dlq_topic):
                raise E.InvalidQueueConfigError(problem)
            await self._ensure_dlq_topic(config)
            entry, queue = self._queue_for(request.queue)
        await self._write(entry, queue, queue.core.set_config(config))
        queue.notify()
        return qpb.AlterQueueResponse(config=config_to_wire(queue.core.config))

    async def delete_queue(self, request: qpb.DeleteQueueRequest) -> qpb.DeleteQueueResponse:
        entry, queue = self._queue_for(request.queue)
        dlq_topic = queue.core.config.dlq_topic
        assert entry.queues is not None
        entry.queues.pop(queue.name, None)
        queue.deleted = True
        if queue.dlq_task is not None and not queue.dlq_task.done():
            queue.dlq_task.cancel()
        queue.notify()
        await self._propose_and_wait(entry, [(k, None) for k in sl.tombstone_keys(queue.name)])
        if request.delete_dead_letter_topic and dlq_topic in self.host.state.topics:
            result = await self.host.propose(DeleteTopic(name=dlq_topic))
            if "error" in result and result.get("code") != pb.UNKNOWN_TOPIC_OR_PARTITION:
                raise E.BrokerError(f"queue deleted; its dead-letter topic {dlq_topic!r} was "
                                    f"not: {result.get('message')}")
        log.info("queue %s deleted", queue.name)
        return qpb.DeleteQueueResponse()

    def list_queues(self) -> qpb.ListQueuesResponse:
        response = qpb.ListQueuesResponse()
        now = _now_ms()
        for entry in self._partitions.values():
            if entry.queues is None or not entry.replica.is_leader:
                continue
            for queue in sorted(entry.queues.values(), key=lambda q: q.name):
                stats = queue.core.stats(now, self._high_watermarks(queue))
                response.queues.append(qpb.ListedQueue(
                    name=queue.name, topics=queue.core.config.topics,
                    key_ordered=queue.core.config.key_ordered,
                    coordinator_id=self.host.node_id, depth=stats.depth,
                    in_flight=stats.in_flight))
        return response

    async def describe_queue(self, request: qpb.DescribeQueueRequest
                             ) -> qpb.DescribeQueueResponse:
        stats = await self.fresh_stats(request.queue)
        entry, queue = self._queue_for(request.queue)
        return qpb.DescribeQueueResponse(config=config_to_wire(queue.core.config),
                                         stats=stats_to_wire(stats),
                                         coordinator_id=self.host.node_id)

    async def fresh_stats(self, name: str) -> QueueStats:
        """The stats of `tidelog queue stats` (DescribeQueue) and of the queue metrics
        (node/metrics/queues.py). Reads what is new first (so read offsets are past control
        batches), and counts the dead letters after the redrive cursor (dlq_depth counts
        records, not offsets)."""
        entry, queue = self._queue_for(name)
        reads = await self._gather_reads(queue)
        entry, queue = self._queue_for(name)
        await self._write(entry, queue, self._offer(queue, reads, _now_ms()))
        await count_dead_letters(self.host.state, self.reader, queue.core, queue.dlq_counts)
        entry, queue = self._queue_for(name)
        return queue.core.stats(_now_ms(), self._high_watermarks(queue))

    def coordinated_queues(self) -> list[str]:
        """The loaded queues this node coordinates now (it leads their state partition)."""
        return sorted(name for entry in self._partitions.values()
                      if entry.queues is not None and entry.replica.is_leader
                      for name, queue in entry.queues.items() if not queue.deleted)

    async def receive(self, request: qpb.ReceiveRequest) -> qpb.ReceiveResponse:
        check_consumer(request.consumer_id)
        if not 1 <= request.max_messages <= RECEIVE_MESSAGES_MAX:
            raise E.InvalidRequestError(f"max_messages {request.max_messages}: must be within "
                                        f"1..{RECEIVE_MESSAGES_MAX}")
        if request.max_wait_ms < 0 or request.max_bytes < 0:
            raise E.InvalidRequestError("max_wait_ms and max_bytes must not be negative")
        entry, queue = self._queue_for(request.queue)
        deadline = time.monotonic() + min(request.max_wait_ms, RECEIVE_WAIT_MS_MAX) / 1000
        while True:
            changed = queue.changed
            reads = await self._gather_reads(queue)
            entry, queue = self._queue_for(request.queue)  # the reads may have awaited
            now = _now_ms()
            deltas = self._offer(queue, reads, now)
            acquired, more = queue.core.acquire(request.consumer_id, messages_within(
                request.max_messages, request.max_bytes or RECEIVE_BYTES_DEFAULT,
                queue.record_bytes), now)
            deltas.extend(more)
            remaining = deadline - time.monotonic()
            if acquired or remaining <= 0:
                waiter = self._propose(entry, queue, deltas)
                response = await self._receive_response(queue, acquired)
                await self._await_commit(entry, waiter)
                return response
            if deltas:
                await self._write(entry, queue, deltas)
            await self._wait_for_change(queue, changed, remaining, now)

    async def settle(self, request: qpb.SettleRequest) -> qpb.SettleResponse:
        check_consumer(request.consumer_id)
        if len(request.settlements) > SETTLEMENTS_MAX:
            raise E.InvalidRequestError(f"{len(request.settlements)} settlements in one request; "
                                        f"at most {SETTLEMENTS_MAX}")
        timeout_s = timeout_s_of(request.timeout_ms)
        entry, queue = self._queue_for(request.queue)
        response = qpb.SettleResponse()
        items: list[Settle] = []
        indexes: list[int] = []
        partitions = queue.core.partitions
        for index, s in enumerate(request.settlements):
            problem = settlement_problem(s, partitions)
            if problem:
                response.results.append(qpb.SettleResult(
                    index=index, error=pb.INVALID_REQUEST, error_message=problem))
                continue
            items.append(Settle(
                tp=TopicPartition(s.topic, s.partition), first=s.first_offset,
                last=s.last_offset, delivery_count=s.delivery_count,
                kind=SettleKind(s.action), delay_ms=s.delay_ms, reason=s.reason,
                extend_ms=s.extend_ms))
            indexes.append(index)
        if items:
            outcomes, deltas = queue.core.settle(request.consumer_id, items, _now_ms())
            # No deltas: answered from state an earlier, maybe uncommitted, write made (a retry
            # answered OK from the memory of recent settlements): that write commits first.
            waiter = self._propose(entry, queue, deltas) or self._not_committed(entry)
            for outcome in outcomes:
                result = settle_result(indexes[outcome.index], outcome,
                                        items[outcome.index].kind)
                if result is not None:
                    response.results.append(result)
            await self._await_commit(entry, waiter, timeout_s)
            if deltas:
                queue.notify()
        response.results.sort(key=lambda r: r.index)
        return response

    async def peek(self, request: qpb.PeekRequest) -> qpb.PeekResponse:
        if not 0 <= request.max_messages <= PEEK_MESSAGES_MAX:
            raise E.InvalidRequestError(f"max_messages {request.max_messages}: must be within "
                                        f"0..{PEEK_MESSAGES_MAX} (0: 10)")
        entry, queue = self._queue_for(request.queue)
        reads = await self._gather_reads(queue)
        entry, queue = self._queue_for(request.queue)
        now = _now_ms()
        deltas = self._offer(queue, reads, now)
        available = queue.core.peek(request.max_messages or 10, now)
        waiter = self._propose(entry, queue, deltas)
        response = qpb.PeekResponse()
        for item in merge_acquired(available):
            response.partitions.append(qpb.PeekedPartition(
                topic=item.tp.topic, partition=item.tp.partition,
                batches=await self.reader.batches_covering(
                    item.tp, [(f, la) for f, la, _ in item.ranges]),
                available=[qpb.AcquiredRange(first_offset=f, last_offset=la, delivery_count=c)
                           for f, la, c in item.ranges]))
        await self._await_commit(entry, waiter)
        return response

    async def purge(self, request: qpb.PurgeRequest) -> qpb.PurgeResponse:
        entry, queue = self._queue_for(request.queue)
        reads = await self._gather_reads(queue)
        entry, queue = self._queue_for(request.queue)
        now = _now_ms()
        deltas = self._offer(queue, reads, now)
        purged, more = queue.core.purge(now, self._high_watermarks(queue))
        deltas.extend(more)
        await self._write(entry, queue, deltas)
        queue.notify()
        return qpb.PurgeResponse(purged=purged)

    async def redrive(self, request: qpb.RedriveRequest) -> qpb.RedriveResponse:
        if request.max_messages < 0:
            raise E.InvalidRequestError("max_messages must not be negative (0: no limit)")
        if request.from_offset < -1 or request.to_offset < -1:
            raise E.InvalidRequestError("from_offset and to_offset: an offset, or -1")
        if 0 <= request.to_offset < request.from_offset:
            raise E.InvalidRequestError(f"to_offset {request.to_offset} is below from_offset "
                                        f"{request.from_offset}")
        _, queue = self._queue_for(request.queue)
        dlq_topic = queue.core.config.dlq_topic
        dlq = self.host.state.topics.get(dlq_topic)
        if dlq is None:
            raise E.UnknownTopicError(f"dead-letter topic {dlq_topic!r} does not exist")
        if request.dlq_partition < -1 or request.dlq_partition >= dlq.partitions:
            raise E.InvalidRequestError(f"dlq_partition {request.dlq_partition}: {dlq_topic!r} "
                                        f"has partitions 0..{dlq.partitions - 1} (-1: all)")
        targets = [request.dlq_partition] if request.dlq_partition >= 0 else \
            list(range(dlq.partitions))
        total = 0
        for p in targets:
            remaining = request.max_messages - total if request.max_messages else 0
            if request.max_messages and remaining <= 0:
                break
            entry, queue = self._queue_for(request.queue)
            cursor = queue.core.redrive_cursor(p)
            start = request.from_offset if request.from_offset >= 0 else cursor
            result = await redrive_partition(
                reader=self.reader, writer=self.writer, queue=queue.name, dlq_topic=dlq_topic,
                partition=p, from_offset=start, to_offset=request.to_offset,
                max_messages=remaining)
            total += result.redriven
            entry, queue = self._queue_for(request.queue)
            cursor_now = queue.core.redrive_cursor(p)
            # The cursor means "every dead letter below it was redriven": a range that starts
            # past it leaves the letters before it waiting, so it does not move the cursor.
            new_cursor = max(cursor_now, result.cursor) if start <= cursor_now else cursor_now
            if new_cursor != queue.core.redrive_cursor(p) or result.redriven:
                await self._write(entry, queue, queue.core.set_redrive_cursor(
                    p, new_cursor, result.redriven))
        return qpb.RedriveResponse(redriven=total)

    # ====================================================================== helpers

    async def _gather_reads(self, queue: _Queue
                            ) -> list[tuple[TopicPartition, int, bytes, int]]:
        """I/O only: committed data after each partition's read offset, from the cache or the
        source, for the partitions whose decoded records are used up. (tp, offset asked,
        data, log start); nothing of the core changes here (but the dedup ids a new coordinator
        reads back first)."""
        if queue.ids_pending:
            if queue.ids_task is None:
                queue.ids_task = asyncio.get_running_loop().create_task(
                    self._read_ids(queue), name=f"dedup-ids-{queue.name}")
            await asyncio.shield(queue.ids_task)
        out = []
        for tp, offset in queue.core.reads_wanted().items():
            decoded = queue.decoded.get(tp)
            if decoded is not None and decoded.next_offset == offset:
                continue
            data = self.reader.cached_from(tp, offset, FILL_READ_BYTES)
            if data:
                out.append((tp, offset, data, -1))
                continue
            replica = self.reader.local_replica(tp)
            if replica is not None:
                if offset < replica.log.log_start_offset:
                    out.append((tp, offset, b"", replica.log.log_start_offset))
                    continue
                if offset >= replica.high_watermark:
                    continue
            else:
                now = time.monotonic()
                if now - queue.remote_read_at.get(tp, 0.0) < REMOTE_POLL_S and \
                        offset >= self.reader.high_watermark(tp):
                    continue
                queue.remote_read_at[tp] = now
            try:
                result = await self.reader.read(tp, offset, FILL_READ_BYTES)
            except E.BrokerError as exc:
                log.debug("queue %s: %s-%d not readable now: %s", queue.name, tp.topic,
                          tp.partition, exc.message)
                continue
            out.append((tp, offset, result.data, result.log_start))
        return out

    async def _read_ids(self, queue: _Queue) -> None:
        """Put back the dedup ids of the records already done below `start` (a new coordinator
        only re-offers from `start`): each partition is read from the offset of the window's
        horizon (time index) up to `start`, at most DEDUP_IDS_MAX records in all. A partition
        that cannot be read now keeps its hole (logged; at-least-once still holds)."""
        core = queue.core
        started = time.monotonic()
        horizon = _now_ms() - core.config.dedup_window_ms - DEDUP_CLOCK_SLACK_MS
        budget = DEDUP_IDS_MAX
        try:
            for tp in core.partitions:
                end = core.start_offset(tp)
                try:
                    offset = await self.reader.offset_for_time(tp, horizon)
                    while offset is not None and offset < end and budget > 0:
                        result = await self.reader.read(tp, offset, FILL_READ_BYTES)
                        if offset < result.log_start:
                            offset = result.log_start
                            continue
                        records, read_to = decode_offered(result.data, offset)
                        if read_to <= offset:
                            break
                        core.remember_ids(r for r in records
                                          if r.offset < end and r.timestamp_ms >= horizon)
                        budget -= len(records)
                        offset = read_to
                except E.BrokerError as exc:
                    log.warning("queue %s: dedup ids of %s-%d below its start not read back "
                                "(%s): duplicates of records done before the failover may be "
                                "delivered", queue.name, tp.topic, tp.partition, exc.message)
        except Exception:
            log.exception("queue %s: reading its dedup ids back failed", queue.name)
        finally:
            queue.ids_pending = False
        log.debug("queue %s: dedup ids read back in %.0f ms", queue.name,
                  (time.monotonic() - started) * 1000)

    @staticmethod
    def _offer(queue: _Queue, reads: Sequence[tuple[TopicPartition, int, bytes, int]],
               now: int) -> list[Any]:
        """Synchronous: offer what was read (and what is left decoded from earlier reads) to
        the core, as far as its window has room. Records are decoded once: what the window
        cannot take yet waits in `queue.decoded`, not re-read and re-decoded next time."""
        core = queue.core
        deltas: list[Any] = []
        wanted = core.reads_wanted()
        for tp, offset, data, log_start in reads:
            if wanted.get(tp) != offset:
                continue  # another request offered it meanwhile
            if log_start > offset:
                queue.decoded.pop(tp, None)
                deltas.extend(core.log_start_moved(tp, log_start))
                continue
            records, read_to = decode_offered(data, offset)
            if records:
                size = len(data) / len(records)
                queue.record_bytes = size if not queue.record_bytes else \
                    0.8 * queue.record_bytes + 0.2 * size
            if read_to > offset:
                queue.decoded[tp] = _Decoded(records=records, pos=0, read_to=read_to,
                                             next_offset=offset)
        window = core.config.max_in_flight
        for tp, offset in wanted.items():
            decoded = queue.decoded.get(tp)
            if decoded is None:
                continue
            if decoded.next_offset != offset:  # purged, truncated: read again from there
                del queue.decoded[tp]
                continue
            limit = core.start_offset(tp) + window
            records = decoded.records
            end = bisect.bisect_left(records, limit, lo=decoded.pos, key=_offset_of)
            read_to = records[end].offset if end < len(records) else decoded.read_to
            if read_to <= offset:
                continue
            deltas.extend(core.offer(tp, records[decoded.pos:end], read_to, now))
            if end >= len(records):
                del queue.decoded[tp]
            else:
                decoded.pos = end
                decoded.next_offset = read_to  # the core's read offset now
        return deltas

    async def _receive_response(self, queue: _Queue, acquired: Sequence[Acquired]
                                ) -> qpb.ReceiveResponse:
        response = qpb.ReceiveResponse()
        for item in merge_acquired(acquired):
            batches = await self.reader.batches_covering(
                item.tp, [(f, la) for f, la, _ in item.ranges])
            response.partitions.append(qpb.ReceivedPartition(
                topic=item.tp.topic, partition=item.tp.partition, batches=batches,
                acquired=[qpb.AcquiredRange(first_offset=f, last_offset=la, delivery_count=c)
                          for f, la, c in item.ranges],
                lock_deadline_ms=item.lock_deadline_ms))
        return response

    async def _wait_for_change(self, queue: _Queue, changed: asyncio.Event, remaining: float,
                               now_ms: int) -> None:
        timeout = remaining
        next_ms = queue.core.next_event_ms(now_ms)
        if next_ms is not None:
            timeout = min(timeout, max(0.0, (next_ms - now_ms) / 1000) + 0.001)
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(changed.wait())]
        remote = False
        for tp, offset in queue.core.reads_wanted().items():
            replica = self.reader.local_replica(tp)
            if replica is None:
                remote = True
            else:
                waits.append(asyncio.ensure_future(_data_beyond(replica, offset, timeout)))
        if remote:
            timeout = min(timeout, REMOTE_POLL_S)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _partition_for(self, name: str) -> tuple[_Partition, dict[str, _Queue]]:
        if not name:
            raise E.InvalidRequestError("queue name is empty")
        topic = self.host.state.topics.get(QUEUE_STATE_TOPIC)
        if topic is None:
            raise CoordinatorNotAvailableError(
                f"{QUEUE_STATE_TOPIC} does not exist yet; call FindQueueCoordinator first")
        partition = partition_for(name, topic.partitions)
        entry = self._partitions.get(partition)
        if entry is None or not entry.replica.is_leader:
            raise NotCoordinatorError(
                f"node {self.host.node_id} is not the coordinator of queue {name!r} "
                f"({QUEUE_STATE_TOPIC}-{partition}); find the coordinator again")
        if entry.queues is None:
            raise CoordinatorNotAvailableError(
                f"the coordinator of queue {name!r} is loading its state; retry shortly")
        return entry, entry.queues

    def _queue_for(self, name: str) -> tuple[_Partition, _Queue]:
        entry, queues = self._partition_for(name)
        queue = queues.get(name)
        if queue is None or queue.deleted:
            raise E.QueueNotFoundError(f"queue {name!r} does not exist")
        return entry, queue

    def _propose(self, entry: _Partition, queue: _Queue, deltas: Sequence[Any],
                 snapshot: bool = False) -> Waiter | None:
        """Synchronous: the deltas (or a snapshot that covers them) join this pass's write of
        the partition (group commit). Returns what to wait for, None when nothing to write."""
        if not deltas and not snapshot:
            return None
        entry.pending.add(queue, deltas, snapshot)
        return self._flush_soon(entry)

    def _propose_records(self, entry: _Partition, records: Sequence[tuple[bytes, bytes | None]]
                         ) -> Waiter:
        entry.pending.add_records(records)
        return self._flush_soon(entry)

    def _flush_soon(self, entry: _Partition) -> asyncio.Future[tuple[int, int]]:
        """The flush the writes just added go out with: at the end of this pass, or, while
        FLUSHES_IN_FLIGHT earlier ones are not committed yet, when the oldest of them is."""
        if entry.flushed is None:
            entry.flushed = asyncio.get_running_loop().create_future()
            entry.flushed.add_done_callback(_retrieved)
        self._schedule_flush(entry)
        return entry.flushed

    def _schedule_flush(self, entry: _Partition) -> None:
        if entry.flush_scheduled or entry.flushed is None \
                or entry.uncommitted >= FLUSHES_IN_FLIGHT:
            return
        entry.flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._flush, entry)

    async def _flush_committed(self, entry: _Partition, last: int, term: int) -> None:
        """Counts a flush out of the ones in flight once it commits (or can no longer: its
        waiters see why), and lets the writes that waited behind it go."""
        try:
            await entry.replica.wait_committed(last, term, WRITE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the requests waiting on it report the failure
            pass
        finally:
            entry.uncommitted -= 1
            if self._partitions.get(entry.partition) is entry:
                self._schedule_flush(entry)

    def _flush(self, entry: _Partition) -> None:
        """The writes pending as one proposed batch, in the order they were made."""
        entry.flush_scheduled = False
        future, entry.flushed = entry.flushed, None
        if future is None or future.done():
            return
        groups = entry.pending.take()
        if not groups:
            future.set_exception(CoordinatorNotAvailableError("nothing to write; retry"))
            return
        replica = entry.replica
        term = replica.term
        try:
            last = self._propose_groups(entry, groups)
        except (NotLeader, ProposalDropped):
            error: Exception = NotCoordinatorError(
                f"node {self.host.node_id} lost leadership of {QUEUE_STATE_TOPIC}-"
                f"{entry.partition} while writing; find the coordinator again")
            if self._partitions.get(entry.partition) is entry:
                self._drop(entry.partition)
            future.set_exception(error)
            return
        except Exception as exc:
            # The cores are ahead of the log now (and a seq would be missing): reload them.
            log.exception("%s-%d: a state write could not be proposed; reloading",
                          QUEUE_STATE_TOPIC, entry.partition)
            future.set_exception(CoordinatorNotAvailableError(
                f"{QUEUE_STATE_TOPIC}-{entry.partition}: state write failed ({exc}); the "
                "coordinator is reloading, retry shortly"))
            if self._partitions.get(entry.partition) is entry:
                self._drop(entry.partition)
                if replica.is_leader:
                    self.on_soft_state(replica)
            return
        entry.last_proposed = (last, term)
        entry.uncommitted += 1
        task = asyncio.get_running_loop().create_task(
            self._flush_committed(entry, last, term), name=f"queue-state-flush-{entry.partition}")
        self._flush_tasks.add(task)   # the loop keeps only a weak reference
        task.add_done_callback(self._flush_tasks.discard)
        future.set_result((last, term))

    def _propose_groups(self, entry: _Partition, groups: Sequence[StateGroup]) -> int:
        records: list[tuple[bytes, bytes | None]] = []
        for group in groups:
            queue = group.queue
            if queue is None:
                records.extend(group.records)
                continue
            queue.seq += 1
            if group.last_of_queue and (group.snapshot
                                        or queue.since_snapshot + 1 >= SNAPSHOT_EVERY):
                records.append((sl.snapshot_key(queue.name),
                                sl.encode_snapshot(queue.seq, queue.core.snapshot())))
                queue.since_snapshot = 0
            else:
                records.append((sl.delta_key(queue.name, queue.seq),
                                sl.encode_deltas(queue.seq, group.deltas)))
                queue.since_snapshot += 1
        now = _now_ms()
        limit = self.host.batch_bytes_max
        batch = encode_batch([(k, v, (), now) for k, v in records], codec=Codec.LZ4)
        if len(batch) <= limit or len(records) == 1:
            batches = [batch]
        else:  # too big together: one batch per record, still one proposal
            batches = [encode_batch([(k, v, (), now)], codec=Codec.LZ4) for k, v in records]
        proposed = [(b, validate_batch(b, max_bytes=limit)) for b in batches]
        return entry.replica.propose(proposed)[-1][1]

    def _fail_pending(self, entry: _Partition, error: Exception) -> None:
        future, entry.flushed = entry.flushed, None
        entry.pending.take()
        if future is not None and not future.done():
            future.set_exception(error)

    @staticmethod
    def _not_committed(entry: _Partition) -> Waiter | None:
        """This pass's write if there is one, else the newest write proposed in this term if
        it is not committed yet (a committed one needs no wait, and its entry may since have
        been compacted)."""
        if entry.flushed is not None:
            return entry.flushed
        last = entry.last_proposed
        return last if last is not None and entry.replica.commit_index < last[0] else None

    async def _await_commit(self, entry: _Partition, waiter: Waiter | None,
                            timeout_s: float = WRITE_TIMEOUT_S) -> None:
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Future):
            waiter = await asyncio.shield(waiter)   # proposed at the end of this pass
        last, term = waiter
        try:
            await entry.replica.wait_committed(last, term, timeout_s)
        except (NotLeader, ProposalDropped, ReplicaLostLeadership):
            self._lost(entry)
        except TimeoutError:
            raise E.RequestTimedOutError(
                f"{QUEUE_STATE_TOPIC}-{entry.partition}: not committed within {timeout_s:.1f} s;"
                " it may still commit") from None

    async def _write(self, entry: _Partition, queue: _Queue, deltas: Sequence[Any],
                     timeout_s: float = WRITE_TIMEOUT_S, snapshot: bool = False) -> None:
        await self._await_commit(entry, self._propose(entry, queue, deltas, snapshot), timeout_s)

    async def _propose_and_wait(self, entry: _Partition,
                                records: Sequence[tuple[bytes, bytes | None]]) -> None:
        await self._await_commit(entry, self._propose_records(entry, records))

    def _lost(self, entry: _Partition) -> Any:
        if self._partitions.get(entry.partition) is entry:
            self._drop(entry.partition)
        raise NotCoordinatorError(
            f"node {self.host.node_id} lost leadership of {QUEUE_STATE_TOPIC}-{entry.partition} "
            "while writing; find the coordinator again")

    def _high_watermarks(self, queue: _Queue) -> dict[TopicPartition, int]:
        return high_watermarks(self.host.state, self.reader, queue.core, queue.dlq_counts)

    def _leader_address(self, topic: str, partition: int) -> str | None:
        """For Writer: "" when this node leads the partition, else its leader's client
        address, None when no leader is known."""
        info = self.host.state.topics.get(topic)
        if info is None:
            raise E.UnknownTopicError(f"topic {topic!r} does not exist")
        group = partition_group(info.topic_id, partition)
        replica = self.host.local_replica(group)
        if replica is not None and replica.is_leader:
            return ""
        leader = self.host.leader_of(group)
        if leader is None or leader[0] == self.host.node_id or not leader[1]:
            return None
        return leader[1]

    def _state_partition_of(self, group: str) -> int | None:
        topic = self.host.state.topics.get(QUEUE_STATE_TOPIC)
        if topic is None or "/" not in group:
            return None
        topic_id, _, partition = group.partition("/")
        if topic_id != str(topic.topic_id):
            return None
        return int(partition)

    async def _ensure_state_topic(self) -> None:
        if self._creating is None or self._creating.done():
            self._creating = asyncio.get_running_loop().create_task(self._create_state_topic())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._creating), 15)

    async def _create_state_topic(self) -> None:
        nodes = sorted(self.host.node_ids())
        result = await self.host.propose(CreateTopic(
            name=QUEUE_STATE_TOPIC, partitions=QUEUE_STATE_PARTITIONS,
            replication_factor=min(3, len(nodes)),
            configs=tuple(sorted(QUEUE_STATE_CONFIGS.items())), node_ids=tuple(nodes)))
        if "error" not in result:
            log.info("created %s with %d partitions", QUEUE_STATE_TOPIC, QUEUE_STATE_PARTITIONS)
        await self.host.wait_for_leaders([QUEUE_STATE_TOPIC], 10.0)

    async def _ensure_dlq_topic(self, config: QueueConfig, timeout_s: float = 10.0) -> None:
        """The dead-letter topic: the first topic's partitions and replication factor; an
        existing one is used as it is."""
        if config.dlq_topic in self.host.state.topics:
            return
        first = self.host.state.topics.get(config.topics[0])
        if first is None:
            raise E.UnknownTopicError(f"topic {config.topics[0]!r} does not exist")
        result = await self.host.propose(CreateTopic(
            name=config.dlq_topic, partitions=first.partitions,
            replication_factor=len(first.replicas[0]) if first.replicas else 1,
            node_ids=tuple(sorted(self.host.node_ids()))), timeout_s)
        if "error" in result and result.get("code") != pb.TOPIC_ALREADY_EXISTS:
            raise E.InvalidQueueConfigError(
                f"dead-letter topic {config.dlq_topic!r} could not be created: "
                f"{result.get('message')}")
        await self.host.wait_for_leaders([config.dlq_topic], min(timeout_s, 10.0))


async def _data_beyond(replica: Replica, offset: int, timeout_s: float) -> None:
    """Until the replica's high watermark passes `offset` (or the timeout). Checked before each
    wait, in the same step as the wait clears the replica's event, so data committed between
    the caller's check and this task's start is not missed."""
    deadline = time.monotonic() + timeout_s
    while replica.high_watermark <= offset:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await replica.wait_for_data(left)
