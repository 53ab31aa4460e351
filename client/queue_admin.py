"""Admin's queue methods (mixed into tidelog.client.admin.Admin): create, alter, delete, list,
describe, purge, redrive, peek.

Every call but ListQueues goes to the queue's coordinator (tidelog.client.queue.QueueCoordinator:
found again and retried while it moves); ListQueues asks every node (each lists the queues it
coordinates) and merges. Settings take seconds in Python (``lock_s``) and travel as the
milliseconds of queue.proto's QueueConfig (``lock_ms``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidelog.client import errors
from tidelog.client.queue import QueueCoordinator, QueueMessage, QueueRpc, decode_partition

if TYPE_CHECKING:
    from tidelog.client.connection import Connections
    from tidelog.client.metadata import Metadata, TopicDescription

__all__ = [
    "QueueAdmin",
    "QueueConfigInfo",
    "QueueDescription",
    "QueueListing",
    "QueuePartitionStats",
    "QueueStats",
    "create_queue_request",
    "queue_settings",
]

#: ListQueues asks every node; one that does not answer within this is skipped (it coordinates
#: nothing reachable right now)
LIST_NODE_TIMEOUT_S = 10.0
#: Python setting (seconds) -> QueueConfig field (ms)
_SECONDS = {"lock_s": "lock_ms", "backoff_initial_s": "backoff_initial_ms",
            "backoff_max_s": "backoff_max_ms", "delay_s": "delay_ms", "ttl_s": "ttl_ms"}
_PLAIN = ("key_ordered", "max_deliveries", "backoff_multiplier", "dead_letter_topic",
          "max_in_flight", "start", "lock_ms", "backoff_initial_ms", "backoff_max_ms",
          "delay_ms", "ttl_ms", "dedup_window_ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfigInfo:
    """A queue's effective configuration (queue.proto QueueConfig, defaults filled in)."""

    name: str
    topics: tuple[str, ...]
    key_ordered: bool
    max_deliveries: int
    lock_ms: int
    backoff_initial_ms: int
    backoff_max_ms: int
    backoff_multiplier: float
    dead_letter_topic: str
    delay_ms: int
    ttl_ms: int
    max_in_flight: int
    start: str
    dedup_window_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {name: (list(v) if isinstance(v := getattr(self, name), tuple) else v)
                for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueListing:
    name: str
    topics: tuple[str, ...]
    key_ordered: bool
    coordinator_id: int
    depth: int
    in_flight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePartitionStats:
    topic: str
    partition: int
    start_offset: int
    read_offset: int
    high_watermark: int  # -1 when unknown
    depth: int
    in_flight: int
    waiting: int
    dead_letter_pending: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """The numbers users monitor (queue.proto QueueStats)."""

    depth: int
    in_flight: int
    oldest_unacked_age_ms: int
    acked_total: int
    delivered_total: int
    redelivered_total: int
    dead_lettered_total: int
    expired_total: int
    dlq_depth: int
    redriven_total: int
    consumers: int
    partitions: tuple[QueuePartitionStats, ...]
    now_ms: int
    deduplicated_total: int = 0
    dead_letters_lost_total: int = 0  # acknowledged by a DLQ partition, then lost by it

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["partitions"] = [{n: getattr(p, n) for n in p.__dataclass_fields__}
                             for p in self.partitions]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDescription:
    config: QueueConfigInfo
    stats: QueueStats
    coordinator_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "stats": self.stats.to_dict(),
                "coordinator_id": self.coordinator_id}


def queue_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Python settings (seconds, None = default) -> QueueConfig fields in wire units; raises
    ConfigError for an unknown name."""
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            continue
        if name == "dedup_window_s":  # seconds, or a negative number: dedup off (-1 on the wire)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
                raise errors.ConfigError(f"{name}: expected seconds > 0, or -1 for off, got "
                                         f"{value!r}")
            out["dedup_window_ms"] = -1 if value < 0 else round(value * 1000)
        elif name in _SECONDS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise errors.ConfigError(f"{name}: expected seconds >= 0, got {value!r}")
            out[_SECONDS[name]] = round(value * 1000)
        elif name in _PLAIN:
            out[name] = value
        else:
            raise errors.ConfigError(
                f"{name}: not a queue setting (known: "
                f"{sorted([*_SECONDS, *_PLAIN, 'dedup_window_s'])})")
    return out


def create_queue_request(name: str, topics: Sequence[str], *, if_not_exists: bool = False,
                         timeout_ms: int = 30_000, **settings: Any) -> Any:
    """The CreateQueueRequest for `name` over `topics` with these Python settings."""
    from tidelog.proto import queue_pb2

    config = queue_pb2.QueueConfig(name=name, topics=list(topics), **queue_settings(settings))
    return queue_pb2.CreateQueueRequest(config=config, if_not_exists=if_not_exists,
                                        timeout_ms=timeout_ms)


class QueueAdmin:
    """The queue methods of Admin. Needs the Admin's _connections, _metadata, _timeout_s,
    config.retry_backoff_ms, create_topic and describe_topics."""

    _connections: Connections
    _metadata: Metadata
    _timeout_s: float
    config: Any

    if TYPE_CHECKING:
        def create_topic(self, name: str, *, partitions: int, replication_factor: int,
                         configs: Mapping[str, str] | None = None, wait: bool = True) -> None: ...

        def describe_topics(self, names: Any = None) -> list[TopicDescription]: ...

    def create_queue(
        self, name: str, topics: Sequence[str] | None = None, *, partitions: int | None = None,
        key_ordered: bool = False, max_deliveries: int | None = None, lock_s: float | None = None,
        backoff_initial_s: float | None = None, backoff_max_s: float | None = None,
        backoff_multiplier: float | None = None, dead_letter_topic: str | None = None,
        delay_s: float | None = None, ttl_s: float | None = None,
        max_in_flight: int | None = None, start: str = "earliest", if_not_exists: bool = False,
        dedup_window_s: float | None = None,
    ) -> QueueConfigInfo:
        """Create a queue over `topics` (default: one topic named like the queue), and its
        dead-letter topic. With `partitions`, missing topics are created first with that many
        partitions (replication factor min(3, nodes)); else they must exist (TopicNotFound).
        None settings take the defaults of queue.proto. Raises QueueAlreadyExists (unless
        if_not_exists: then the existing queue's config is returned), InvalidQueueConfig."""
        names = tuple(topics) if topics else (name,)
        if partitions is not None:
            self._create_missing_topics(names, partitions)
        request = create_queue_request(
            name, names, if_not_exists=if_not_exists, timeout_ms=int(self._timeout_s * 1000),
            key_ordered=key_ordered or None, max_deliveries=max_deliveries, lock_s=lock_s,
            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
            backoff_multiplier=backoff_multiplier, dead_letter_topic=dead_letter_topic,
            delay_s=delay_s, ttl_s=ttl_s, max_in_flight=max_in_flight, start=start,
            dedup_window_s=dedup_window_s)
        return config_info(self._queue_call(name, "CreateQueue", request, whole=True).config)

    def alter_queue(self, name: str, **settings: Any) -> QueueConfigInfo:
        """Change settings (lock_s=60, max_deliveries=5, ...; the names of create_queue, or the
        wire fields such as lock_ms); topics and name cannot change. Returns the new config."""
        from tidelog.proto import queue_pb2

        wire = queue_settings(settings)
        if not wire:
            raise errors.ConfigError("alter_queue: give at least one setting")
        request = queue_pb2.AlterQueueRequest(queue=name, set={k: _wire_text(v)
                                                               for k, v in wire.items()})
        return config_info(self._queue_call(name, "AlterQueue", request).config)

    def delete_queue(self, name: str, delete_dead_letter_topic: bool = False) -> None:
        """Delete the queue's state (its topics stay); raises QueueNotFound."""
        from tidelog.proto import queue_pb2

        self._queue_call(name, "DeleteQueue", queue_pb2.DeleteQueueRequest(
            queue=name, delete_dead_letter_topic=delete_dead_letter_topic))

    def list_queues(self) -> list[QueueListing]:
        """Every queue of the cluster (each node lists those it coordinates; merged here)."""
        from tidelog.proto import queue_pb2

        rpc = self._queue_rpc()
        found: dict[str, QueueListing] = {}
        for address in rpc.node_addresses():
            try:
                response = rpc.call(address, "ListQueues", queue_pb2.ListQueuesRequest(),
                                    timeout_s=min(self._timeout_s, LIST_NODE_TIMEOUT_S))
            except errors.TidelogError:
                continue  # a down node coordinates nothing right now
            for q in response.queues:
                found[q.name] = QueueListing(name=q.name, topics=tuple(q.topics),
                                             key_ordered=q.key_ordered,
                                             coordinator_id=q.coordinator_id, depth=q.depth,
                                             in_flight=q.in_flight)
        return sorted(found.values(), key=lambda q: q.name)

    def describe_queue(self, name: str) -> QueueDescription:
        """Effective config, stats (depth, in flight, oldest unacked age, redeliveries, DLQ
        depth, per partition) and coordinator; raises QueueNotFound."""
        from tidelog.proto import queue_pb2

        response = self._queue_call(name, "DescribeQueue",
                                    queue_pb2.DescribeQueueRequest(queue=name))
        return QueueDescription(config=config_info(response.config),
                                stats=stats_info(response.stats),
                                coordinator_id=response.coordinator_id)

    def purge_queue(self, name: str) -> int:
        """Mark every record not yet done as done (in flight included); returns how many."""
        from tidelog.proto import queue_pb2

        return int(self._queue_call(name, "Purge", queue_pb2.PurgeRequest(queue=name)).purged)

    def redrive_queue(self, name: str, dlq_partition: int | None = None,
                      from_offset: int | None = None, to_offset: int | None = None,
                      max_messages: int | None = None) -> int:
        """Copy dead letters back to their source partitions: every DLQ partition (or one), from
        the redrive cursor (or from_offset) to the end (or to_offset, exclusive), at most
        max_messages. Returns how many were redriven."""
        from tidelog.proto import queue_pb2

        request = queue_pb2.RedriveRequest(
            queue=name, dlq_partition=-1 if dlq_partition is None else dlq_partition,
            from_offset=-1 if from_offset is None else from_offset,
            to_offset=-1 if to_offset is None else to_offset, max_messages=max_messages or 0)
        return int(self._queue_call(name, "Redrive", request).redriven)

    def peek_queue(self, name: str, max_messages: int = 10) -> list[QueueMessage]:
        """Messages available now, without acquiring them (delivery_count = deliveries so far,
        lock_deadline_ms = 0)."""
        from tidelog.proto import queue_pb2

        response = self._queue_call(name, "Peek", queue_pb2.PeekRequest(
            queue=name, max_messages=max_messages))
        out: list[QueueMessage] = []
        for part in response.partitions:
            out += decode_partition(
                name, part.topic, part.partition, part.batches,
                [(r.first_offset, r.last_offset, r.delivery_count) for r in part.available], 0)
        return out

    # --- helpers -----------------------------------------------------------------------------

    def _queue_rpc(self) -> QueueRpc:
        rpc = getattr(self, "_queue_rpc_cached", None)
        if rpc is None:
            rpc = QueueRpc(self._connections, self._metadata, self.config.bootstrap)
            self._queue_rpc_cached = rpc
        return rpc

    def _queue_call(self, name: str, method: str, request: object, *,
                    whole: bool = False) -> Any:
        """`whole`: one attempt may take the whole budget (CreateQueue creates a topic)."""
        coordinator = QueueCoordinator(name, self._queue_rpc(),
                                       backoff_s=self.config.retry_backoff_ms / 1000)
        return coordinator.call(method, request, timeout_s=self._timeout_s,
                                attempt_s=(lambda left: left) if whole else None)

    def _create_missing_topics(self, names: Sequence[str], partitions: int) -> None:
        existing = {t.name for t in self._metadata.describe(None).topics}
        replication = min(3, len(self._metadata.nodes()) or 1)
        for topic in names:
            if topic in existing:
                continue
            with contextlib.suppress(errors.TopicAlreadyExists):  # made meanwhile: fine
                self.create_topic(topic, partitions=partitions, replication_factor=replication)


def config_info(c: Any) -> QueueConfigInfo:
    return QueueConfigInfo(
        name=c.name, topics=tuple(c.topics), key_ordered=c.key_ordered,
        max_deliveries=c.max_deliveries, lock_ms=c.lock_ms,
        backoff_initial_ms=c.backoff_initial_ms, backoff_max_ms=c.backoff_max_ms,
        backoff_multiplier=c.backoff_multiplier, dead_letter_topic=c.dead_letter_topic,
        delay_ms=c.delay_ms, ttl_ms=c.ttl_ms, max_in_flight=c.max_in_flight, start=c.start,
        dedup_window_ms=c.dedup_window_ms)


def stats_info(s: Any) -> QueueStats:
    return QueueStats(
        depth=s.depth, in_flight=s.in_flight, oldest_unacked_age_ms=s.oldest_unacked_age_ms,
        acked_total=s.acked_total, delivered_total=s.delivered_total,
        redelivered_total=s.redelivered_total, dead_lettered_total=s.dead_lettered_total,
        expired_total=s.expired_total, dlq_depth=s.dlq_depth, redriven_total=s.redriven_total,
        consumers=s.consumers, now_ms=s.now_ms, deduplicated_total=s.deduplicated_total,
        dead_letters_lost_total=s.dead_letters_lost_total,
        partitions=tuple(QueuePartitionStats(
            topic=p.topic, partition=p.partition, start_offset=p.start_offset,
            read_offset=p.read_offset, high_watermark=p.high_watermark, depth=p.depth,
            in_flight=p.in_flight, waiting=p.waiting, dead_letter_pending=p.dead_letter_pending)
            for p in s.partitions))


def _wire_text(value: Any) -> str:
    """AlterQueue's map values are strings (node/queues/config.py parses them per field)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
