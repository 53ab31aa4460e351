"""The Queues wire: QueueConfig/QueueStats <-> protobuf, and the request checks the coordinator
makes before anything reaches its core (each a clear INVALID_REQUEST, never an exception from
deep inside)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.config import QueueConfig, QueueConfigError
from tidelog.node.queues.model import Acquired, SettleKind, SettleOutcome
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import queue_pb2 as qpb

WRITE_TIMEOUT_S = 10.0
RANGE_RECORDS_MAX = 100_000
REASON_CHARS_MAX = 1000
CONSUMER_ID_CHARS_MAX = 255


_CONFIG_FIELDS = ("key_ordered", "max_deliveries", "lock_ms", "backoff_initial_ms",
                  "backoff_max_ms", "backoff_multiplier", "dead_letter_topic", "delay_ms",
                  "ttl_ms", "max_in_flight", "start", "dedup_window_ms")


def config_from_wire(wire: qpb.QueueConfig) -> QueueConfig:
    """Zero / empty fields take the default; an invalid value is INVALID_QUEUE_CONFIG."""
    kwargs: dict[str, Any] = {}
    for name in _CONFIG_FIELDS:
        value = getattr(wire, name)
        if value:
            kwargs[name] = value
    try:
        return QueueConfig(name=wire.name, topics=tuple(wire.topics), **kwargs)
    except QueueConfigError as exc:
        raise E.InvalidQueueConfigError(str(exc)) from None


def config_to_wire(config: QueueConfig) -> qpb.QueueConfig:
    """Effective values (dead_letter_topic resolved)."""
    out = qpb.QueueConfig(name=config.name, topics=config.topics)
    for name in _CONFIG_FIELDS:
        setattr(out, name, getattr(config, name))
    out.dead_letter_topic = config.dlq_topic
    return out


def stats_to_wire(stats: Any) -> qpb.QueueStats:
    out = qpb.QueueStats(
        depth=stats.depth, in_flight=stats.in_flight,
        oldest_unacked_age_ms=stats.oldest_unacked_age_ms, acked_total=stats.acked_total,
        delivered_total=stats.delivered_total, redelivered_total=stats.redelivered_total,
        dead_lettered_total=stats.dead_lettered_total, expired_total=stats.expired_total,
        dlq_depth=stats.dlq_depth, redriven_total=stats.redriven_total,
        consumers=stats.consumers, now_ms=stats.now_ms,
        deduplicated_total=stats.deduplicated_total,
        dead_letters_lost_total=stats.dead_letters_lost_total)
    for p in stats.partitions:
        out.partitions.append(qpb.QueuePartitionStats(
            topic=p.topic, partition=p.partition, start_offset=p.start_offset,
            read_offset=p.read_offset, high_watermark=p.high_watermark, depth=p.depth,
            in_flight=p.in_flight, waiting=p.waiting,
            dead_letter_pending=p.dead_letter_pending))
    return out


def merge_acquired(items: Sequence[Acquired]) -> list[Acquired]:
    """One entry per partition (ranges in offset order)."""
    by_tp: dict[TopicPartition, list[Acquired]] = {}
    for item in items:
        by_tp.setdefault(item.tp, []).append(item)
    out = []
    for tp, group in by_tp.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        ranges = tuple(sorted(r for g in group for r in g.ranges))
        out.append(Acquired(tp=tp, ranges=ranges,
                            lock_deadline_ms=min(g.lock_deadline_ms for g in group)))
    return out


def messages_within(max_messages: int, max_bytes: int, record_bytes: float) -> int:
    """max_bytes as a count of records (at least one), from the queue's average stored record
    size: approximate, since an answer carries whole batches."""
    if record_bytes <= 0:
        return max_messages
    return max(1, min(max_messages, int(max_bytes / record_bytes)))


def check_consumer(consumer_id: str) -> None:
    if not consumer_id:
        raise E.InvalidRequestError("consumer_id is empty (the client makes one, e.g. a uuid)")
    if len(consumer_id) > CONSUMER_ID_CHARS_MAX:
        raise E.InvalidRequestError(f"consumer_id is longer than {CONSUMER_ID_CHARS_MAX} "
                                    "characters")


def settlement_problem(s: qpb.Settlement, partitions: Mapping[TopicPartition, Any] | Any
                        ) -> str:
    """Why one settlement is malformed ("" if it is not): answered INVALID_REQUEST for it."""
    if TopicPartition(s.topic, s.partition) not in partitions:
        return f"{s.topic}-{s.partition} is not a partition of this queue"
    if s.first_offset < 0 or s.last_offset < s.first_offset:
        return f"range [{s.first_offset}, {s.last_offset}] is empty or negative"
    if s.last_offset - s.first_offset + 1 > RANGE_RECORDS_MAX:
        return (f"range [{s.first_offset}, {s.last_offset}] spans more than "
                f"{RANGE_RECORDS_MAX} records")
    if s.delivery_count < 1:
        return f"delivery_count {s.delivery_count}: deliveries are counted from 1"
    if s.action not in qpb.SettleAction.values():
        return f"action {s.action} is unknown"
    if s.action == qpb.NACK and s.delay_ms < -1:
        return f"delay_ms {s.delay_ms}: -1 (the queue's backoff) or a delay"
    if s.action == qpb.EXTEND and s.extend_ms <= 0:
        return f"extend_ms {s.extend_ms}: EXTEND needs a positive duration"
    if len(s.reason) > REASON_CHARS_MAX:
        return f"reason of {len(s.reason)} characters; at most {REASON_CHARS_MAX}"
    return ""


def settle_result(index: int, outcome: SettleOutcome, kind: SettleKind
                   ) -> qpb.SettleResult | None:
    if not outcome.ok:
        return qpb.SettleResult(index=index,
                                error=pb.LOCK_LOST if outcome.lock_lost else pb.INVALID_REQUEST,
                                error_message=outcome.message)
    if kind is SettleKind.EXTEND:
        return qpb.SettleResult(index=index, lock_deadline_ms=outcome.lock_deadline_ms)
    return None


def timeout_s_of(timeout_ms: int) -> float:
    if timeout_ms < 0:
        raise E.InvalidRequestError(f"timeout_ms {timeout_ms} is negative")
    return (timeout_ms or WRITE_TIMEOUT_S * 1000) / 1000
