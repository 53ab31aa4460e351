"""A consumer group's lag in records and in seconds, client-side (Admin.list_group_lag, the
`tidelog group` CLI).

Lag in seconds is now minus the timestamp of the first record the group has not consumed: the
record at its committed offset (or the first data record after it, past compaction gaps and
control batches). One Fetch per leader asks every partition at its committed offset for ONE
batch (max_bytes 1: the node answers the whole batch holding that offset) and the leader's high
watermark, so the end offset and the timestamp come from the same answer. Never a scan: at most
`FOLLOW_READS_MAX` batches per partition. An answer holds at most `FETCH_BYTES_MAX` (the node
always sends the first partition's batch whole, and nothing for the partitions after the budget
ran out), so partitions answered without a batch are asked again, fewer at a time.

Lag counts records, not offsets: the leader's answer at the committed offset also says how many
control records (a leader's no-op, membership changes: one offset each, no data) lie between it
and the high watermark (`control_records`), and they are subtracted. Compaction gaps are still
counted, as Kafka counts them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from tidelog.client import errors
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.records import TopicPartition
from tidelog.client.routing import result_error

__all__ = ["PartitionLag", "first_record_timestamp", "first_unconsumed"]

FOLLOW_READS_MAX = 4
EMPTY_ANSWERS_MAX = 16  # a leader's answer with no batch below its end: its byte budget ran out
FETCH_BYTES_MAX = 1024 * 1024  # per answer: `tidelog top` asks every second; one batch is enough
PARTITIONS_PER_FETCH_MAX = 1000  # below the node's request_partitions_max default (1024)
_OFFSET_OUT_OF_RANGE = 13  # tidelog.v1.ErrorCode OFFSET_OUT_OF_RANGE


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionLag:
    """One partition of a group. `lag_seconds` is 0.0 when caught up and None only when the
    first unconsumed record could not be found within FOLLOW_READS_MAX batches."""

    committed: int
    end_offset: int  # the leader's high watermark
    lag: int  # records between committed and end_offset (control records not counted), >= 0
    first_unconsumed_timestamp_ms: int | None
    lag_seconds: float | None

    def to_dict(self) -> dict[str, object]:
        return {"committed": self.committed, "log_end": self.end_offset, "lag": self.lag,
                "lag_seconds": self.lag_seconds,
                "first_unconsumed_timestamp_ms": self.first_unconsumed_timestamp_ms}


def lag_of(committed: int, end_offset: int, timestamp_ms: int | None, found: bool,
           now_ms: int, control_records: int = 0) -> PartitionLag:
    """The figures of one partition: `found` False means the timestamp is unknown;
    `control_records` between committed and end_offset are not records and not lag."""
    lag = max(0, end_offset - committed - control_records)
    if lag == 0 or (found and timestamp_ms is None):
        seconds: float | None = 0.0
    elif timestamp_ms is None:
        seconds = None
    else:
        seconds = max(0.0, (now_ms - timestamp_ms) / 1000)
    return PartitionLag(committed=committed, end_offset=end_offset, lag=lag,
                        first_unconsumed_timestamp_ms=timestamp_ms if lag else None,
                        lag_seconds=seconds)


def first_unconsumed(
    metadata: Metadata, connections: Connections, committed: Mapping[TopicPartition, int], *,
    timeout_s: float, backoff_s: float,
) -> dict[TopicPartition, PartitionLag]:
    """{tp: committed offset} -> {tp: PartitionLag}; NOT_LEADER and unreachable leaders refresh
    the metadata and retry with backoff until the timeout (then errors.Timeout)."""
    from tidelog.proto import broker_pb2

    deadline = time.monotonic() + timeout_s
    positions = dict(committed)
    reads = dict.fromkeys(committed, 0)
    empties = dict.fromkeys(committed, 0)
    controls: dict[TopicPartition, int] = {}  # from the first answer at the committed offset
    out: dict[TopicPartition, PartitionLag] = {}
    last_error: errors.TidelogError | None = None
    for topic in {tp.topic for tp in positions}:
        metadata.topic(topic, timeout_s=timeout_s)

    def done(tp: TopicPartition, end: int, ts: int | None, found: bool) -> None:
        out[tp] = lag_of(committed[tp], end, ts, found, int(time.time() * 1000),
                         controls.get(tp, 0))
        del positions[tp]

    while positions:
        stalled = False  # some partition could not be asked: back off, refresh, ask again
        by_leader: dict[str, list[TopicPartition]] = {}
        for tp in positions:
            leader = metadata.leader_address(tp.topic, tp.partition)
            if leader is None:
                metadata.mark_stale(tp.topic)
                stalled = True
                continue
            by_leader.setdefault(leader, []).append(tp)
        for leader, tps in _chunked(by_leader):
            request = broker_pb2.FetchRequest(max_wait_ms=0, max_bytes=FETCH_BYTES_MAX, partitions=[
                broker_pb2.FetchPartition(topic=tp.topic, partition=tp.partition,
                                          offset=positions[tp], max_bytes=1) for tp in tps])
            try:
                response = connections.call(leader, "Fetch", request,
                                            timeout_s=max(0.1, deadline - time.monotonic()))
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                last_error, stalled = exc, True
                for tp in tps:
                    metadata.mark_stale(tp.topic)
                continue
            for result in response.partitions:
                tp = TopicPartition(result.topic, result.partition)
                if tp not in positions:
                    continue
                position = positions[tp]
                if result.error == _OFFSET_OUT_OF_RANGE and result.high_watermark >= 0:
                    if position < result.log_start_offset:  # retention: the first kept record
                        positions[tp] = result.log_start_offset
                    else:  # at or past the end (a commit ahead of a new leader's watermark)
                        done(tp, result.high_watermark, None, True)
                    continue
                if result.error:
                    last_error, stalled = result_error(metadata, tp, result), True
                    continue
                end = result.high_watermark
                if position == committed[tp]:
                    controls[tp] = result.control_records
                if position >= end:
                    done(tp, end, None, True)
                    continue
                if not result.batches:  # the answer's byte budget went to other partitions:
                    empties[tp] += 1    # asked again, with fewer partitions beside it
                    if empties[tp] >= EMPTY_ANSWERS_MAX:
                        done(tp, end, None, False)
                    continue
                ts, after = first_record_timestamp(bytes(result.batches), position)
                reads[tp] += 1
                if ts is not None or after >= end:
                    done(tp, end, ts, True)
                elif reads[tp] >= FOLLOW_READS_MAX:
                    done(tp, end, None, False)
                else:
                    positions[tp] = after
        if not positions:
            break
        if time.monotonic() >= deadline:
            raise errors.Timeout(
                f"Fetch for the lag of {sorted(map(str, positions))} did not succeed within "
                f"{timeout_s:.1f} s (last error: {last_error})")
        if stalled:
            time.sleep(backoff_s)
            try:
                metadata.refresh({tp.topic for tp in positions})
            except errors.TidelogError as exc:
                last_error = exc
    return out


def _chunked(by_leader: dict[str, list[TopicPartition]]
             ) -> list[tuple[str, list[TopicPartition]]]:
    return [(leader, tps[i:i + PARTITIONS_PER_FETCH_MAX]) for leader, tps in by_leader.items()
            for i in range(0, len(tps), PARTITIONS_PER_FETCH_MAX)]


def first_record_timestamp(data: bytes, offset: int) -> tuple[int | None, int]:
    """(timestamp of the first data record at or after `offset` in these whole batches, or None;
    the offset after the last batch looked at). Only the batch holding it is decoded: its
    timestamp is the batch's first timestamp plus the record's delta."""
    from tidelog.proto import batch as codec

    position = offset
    try:
        for pos, header in codec.iter_batches(data):
            if header.last_offset < offset:
                continue
            if not header.is_control:
                for record in codec.decode_records(data[pos:pos + header.size]):
                    if record.offset >= offset:
                        return record.timestamp, record.offset
            position = max(position, header.last_offset + 1)
    except codec.CorruptBatchError as exc:
        raise errors.CorruptBatch(f"a fetched batch is damaged: {exc}") from None
    except codec.BatchError as exc:
        raise errors.InvalidBatch(f"a fetched batch is malformed: {exc}") from None
    return None, position
