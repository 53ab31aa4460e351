"""dlq_depth for queue stats: the dead letters after each DLQ partition's redrive cursor.

Counted incrementally from batch headers (control batches are not dead letters), at most
DLQ_COUNT_BYTES_MAX read per call; the core's stats take "redrive cursor + count" as the DLQ
partition's end, so dlq_depth counts records, not offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.metadata import MetadataState
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.reader import PartitionReader
from tidelog.proto.batch import iter_batches

__all__ = ["DLQ_COUNT_BYTES_MAX", "DlqCount", "count_dead_letters", "high_watermarks"]

DLQ_COUNT_BYTES_MAX = 16 * 1024 * 1024


@dataclass(slots=True, eq=False)
class DlqCount:
    """Dead letters in [cursor, position) of one DLQ partition (for dlq_depth)."""

    cursor: int
    position: int
    count: int


def high_watermarks(state: MetadataState, reader: PartitionReader, core: QueueCore,
                    counts: dict[int, DlqCount]) -> dict[TopicPartition, int]:
    """Source partitions' high watermarks; for the DLQ partitions, the redrive cursor plus
    the dead letters counted after it (the core's dlq_depth is their difference), else the
    high watermark (an over-count by the control batches in the DLQ)."""
    out = {tp: reader.high_watermark(tp) for tp in core.partitions}
    dlq = state.topics.get(core.config.dlq_topic)
    if dlq is not None:
        for p in range(dlq.partitions):
            tp = TopicPartition(dlq.name, p)
            counted = counts.get(p)
            cursor = core.redrive_cursor(p)
            if counted is not None and counted.cursor == cursor:
                out[tp] = cursor + counted.count
            else:
                out[tp] = reader.high_watermark(tp)
    return out

async def count_dead_letters(state: MetadataState, reader: PartitionReader, core: QueueCore,
                             counts: dict[int, DlqCount]) -> None:
    """Count the data records after each DLQ partition's redrive cursor, incrementally
    (batch headers only; at most DLQ_COUNT_BYTES_MAX read per call)."""
    dlq = state.topics.get(core.config.dlq_topic)
    if dlq is None:
        return
    budget = DLQ_COUNT_BYTES_MAX
    for p in range(dlq.partitions):
        cursor = core.redrive_cursor(p)
        counted = counts.get(p)
        if counted is None or counted.cursor != cursor:
            counted = DlqCount(cursor=cursor, position=cursor, count=0)
        tp = TopicPartition(dlq.name, p)
        while budget > 0:
            try:
                result = await reader.read(tp, counted.position, 1 << 20)
            except E.BrokerError:
                return
            if counted.position < result.log_start:
                counted.position = result.log_start
                continue
            if not result.data:
                break
            budget -= len(result.data)
            for _, header in iter_batches(result.data, verify=False):
                if header.last_offset < counted.position:
                    continue
                if not header.is_control:
                    counted.count += min(header.record_count,
                                         header.last_offset - counted.position + 1)
                counted.position = header.last_offset + 1
        counts[p] = counted
