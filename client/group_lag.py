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
from typing import Any

from tidelog.client import errors
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.records import TopicPartition
from tidelog.client.routing import result_error

__all__ = ["LagSearch", "PartitionLag", "first_record_timestamp", "first_unconsumed"]

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


class LagSearch:
    """The sans-I/O part of a group-lag query, shared by Admin and AIOAdmin: which Fetch to send
    to which leader next (`requests`), and what each answer means (`answered`, `failed`). The
    caller does the I/O, marks metadata stale for `leaderless` partitions and for failed calls,
    and backs off then refreshes metadata when `stalled`."""

    def __init__(self, committed: Mapping[TopicPartition, int]) -> None:
        self.committed = dict(committed)
        self.positions = dict(committed)  # partitions still looked for, at the offset to read
        self.out: dict[TopicPartition, PartitionLag] = {}
        self.last_error: errors.TidelogError | None = None
        self.stalled = False  # some partition could not be asked: back off, refresh, ask again
        self._reads = dict.fromkeys(committed, 0)
        self._empties = dict.fromkeys(committed, 0)
        self._controls: dict[TopicPartition, int] = {}  # from the answer at the committed offset

    @property
    def finished(self) -> bool:
        return not self.positions

    def positions_topics(self) -> set[str]:
        """The topics of the partitions still looked for (to refresh their metadata)."""
        return {tp.topic for tp in self.positions}

    def requests(self, metadata: Metadata) -> list[tuple[str, list[TopicPartition], Any]]:
        """[(leader address, its partitions, the FetchRequest)] from the metadata cache (no I/O);
        starts a new round: `stalled` is set again when some partition has no known leader (its
        topic is marked stale)."""
        from tidelog.proto import broker_pb2

        self.stalled = False
        by_leader: dict[str, list[TopicPartition]] = {}
        for tp in self.positions:
            leader = metadata.leader_address(tp.topic, tp.partition)
            if leader is None:
                metadata.mark_stale(tp.topic)
                self.stalled = True
            else:
                by_leader.setdefault(leader, []).append(tp)
        return [(leader, tps, broker_pb2.FetchRequest(
            max_wait_ms=0, max_bytes=FETCH_BYTES_MAX, partitions=[
                broker_pb2.FetchPartition(topic=tp.topic, partition=tp.partition,
                                          offset=self.positions[tp], max_bytes=1)
                for tp in tps]))
            for leader, tps in _chunked(by_leader)]

    def failed(self, metadata: Metadata, tps: list[TopicPartition],
               exc: errors.TidelogError) -> None:
        """The call to these partitions' leader failed: raised again unless retriable; else
        their topics are marked stale and they are asked again next round."""
        if not exc.retriable:
            raise exc
        self.last_error, self.stalled = exc, True
        for tp in tps:
            metadata.mark_stale(tp.topic)

    def answered(self, metadata: Metadata, response: Any, now_ms: int) -> None:
        """One leader's Fetch answer; a non-retriable per-partition error is raised."""
        for result in response.partitions:
            tp = TopicPartition(result.topic, result.partition)
            if tp not in self.positions:
                continue
            position = self.positions[tp]
            if result.error == _OFFSET_OUT_OF_RANGE and result.high_watermark >= 0:
                if position < result.log_start_offset:  # retention: the first kept record
                    self.positions[tp] = result.log_start_offset
                else:  # at or past the end (a commit ahead of a new leader's watermark)
                    self._done(tp, result.high_watermark, None, True, now_ms)
                continue
            if result.error:
                self.last_error, self.stalled = result_error(metadata, tp, result), True
                continue
            end = result.high_watermark
            if position == self.committed[tp]:
                self._controls[tp] = result.control_records
            if position >= end:
                self._done(tp, end, None, True, now_ms)
                continue
            if not result.batches:  # the answer's byte budget went to other partitions:
                self._empties[tp] += 1  # asked again, with fewer partitions beside it
                if self._empties[tp] >= EMPTY_ANSWERS_MAX:
                    self._done(tp, end, None, False, now_ms)
                continue
            ts, after = first_record_timestamp(bytes(result.batches), position)
            self._reads[tp] += 1
            if ts is not None or after >= end:
                self._done(tp, end, ts, True, now_ms)
            elif self._reads[tp] >= FOLLOW_READS_MAX:
                self._done(tp, end, None, False, now_ms)
            else:
                self.positions[tp] = after

    def timeout(self, timeout_s: float) -> errors.Timeout:
        return errors.Timeout(
            f"Fetch for the lag of {sorted(map(str, self.positions))} did not succeed within "
            f"{timeout_s:.1f} s (last error: {self.last_error})")

    def _done(self, tp: TopicPartition, end: int, ts: int | None, found: bool,
              now_ms: int) -> None:
        self.out[tp] = lag_of(self.committed[tp], end, ts, found, now_ms,
                              self._controls.get(tp, 0))
        del self.positions[tp]


def first_unconsumed(
    metadata: Metadata, connections: Connections, committed: Mapping[TopicPartition, int], *,
    timeout_s: float, backoff_s: float,
) -> dict[TopicPartition, PartitionLag]:
    """{tp: committed offset} -> {tp: PartitionLag}; NOT_LEADER and unreachable leaders refresh
    the metadata and retry with backoff until the timeout (then errors.Timeout)."""
    deadline = time.monotonic() + timeout_s
    search = LagSearch(committed)
    for topic in {tp.topic for tp in committed}:
        metadata.topic(topic, timeout_s=timeout_s)
    while not search.finished:
        for leader, tps, request in search.requests(metadata):
            try:
                response = connections.call(leader, "Fetch", request,
                                            timeout_s=max(0.1, deadline - time.monotonic()))
            except errors.TidelogError as exc:
                search.failed(metadata, tps, exc)
                continue
            search.answered(metadata, response, int(time.time() * 1000))
        if search.finished:
            break
        if time.monotonic() >= deadline:
            raise search.timeout(timeout_s)
        if search.stalled:
            time.sleep(backoff_s)
            try:
                metadata.refresh(search.positions_topics())
            except errors.TidelogError as exc:
                search.last_error = exc
    return search.out


def _chunked(by_leader: dict[str, list[TopicPartition]]
             ) -> list[tuple[str, list[TopicPartition]]]:
    return [(leader, tps[i:i + PARTITIONS_PER_FETCH_MAX]) for leader, tps in by_leader.items()
            for i in range(0, len(tps), PARTITIONS_PER_FETCH_MAX)]


def first_record_timestamp(data: bytes, offset: int) -> tuple[int | None, int]:
    """proto/batch.py's first_record_timestamp, its batch errors as the client's errors."""
    from tidelog.proto import batch as codec

    try:
        return codec.first_record_timestamp(data, offset)
    except codec.CorruptBatchError as exc:
        raise errors.CorruptBatch(f"a fetched batch is damaged: {exc}") from None
    except codec.BatchError as exc:
        raise errors.InvalidBatch(f"a fetched batch is malformed: {exc}") from None
