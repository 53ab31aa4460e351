"""Consumer-group lag on the coordinator, in records and in seconds, refreshed in the background.

Why a refresher: the coordinator knows each group's committed offsets, but the partitions may
live on other nodes, and the metrics collectors run on the event loop at scrape time and must not
await. So every `LAG_REFRESH_INTERVAL_S` this task asks, for every committed (group, partition):

- the partition's end (its high watermark): the local replica when this node leads it, else
  ListOffsets(LATEST) to the leader over the peer Broker (the path the queue coordinator uses,
  `node/security/channels.peer_channel`), one request per leader;
- the timestamp of the first record not yet consumed, i.e. the record at the committed offset
  (or the first data record after it: compaction gaps, control batches): ONE batch read at that
  offset (`queues.reader.PartitionReader`: the local replica, or Fetch from the leader, also over
  the peer Broker) and the record's timestamp from its batch (first timestamp + the record's
  delta). Never a scan. A record's offset and timestamp do not change, so the answer is kept
  while the committed offset stays: a lagging partition costs one batch read per commit.

Lag counts records, not offsets: the control batches (a leader's no-op, membership changes, one
offset each) between the committed offset and the end are subtracted, counted by the local
replica of the partition (leader or follower: `Replica.control_records_between`, two bisections
of an in-memory list), as far as its log reaches. A node without a replica of the partition
counts offsets.

The result is `snapshot`, read by the collector (node/metrics/groups.py) and by nothing else.
`lag_seconds` is computed at scrape time against the scrape's clock, so it grows smoothly
between refreshes; the offsets in it are as old as the last refresh (<= interval + its run time).

Bounds: `LAG_PARTITIONS_MAX` (group, partition) pairs per round (the rest are left out, with a
warning once), `TIMESTAMP_READS_PER_ROUND_MAX` batch reads and `READ_BYTES_PER_ROUND_MAX` bytes
read per round (the rest next round; a batch is up to max.message.bytes, 8 MiB by default),
`READ_CONCURRENCY` reads at once, `REMOTE_TIMEOUT_S` per remote call, `ROUND_TIMEOUT_S` per round.
A partition that could not be asked keeps its previous figures while its committed offset is
unchanged, and is left out otherwise.

Idle: after `IDLE_AFTER_S` without a scrape (`wanted()`, called by the collector) the refresher
stops asking and drops its snapshot (old figures must not pass for new ones); the next scrape
wakes it, and that scrape has no lag series yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.reader import PartitionReader, ReaderHost
from tidelog.node.security.channels import peer_channel
from tidelog.node.topics import partition_group
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import BatchError, first_record_timestamp

__all__ = ["GroupLagRefresher", "PartitionLag", "first_record_timestamp"]

log = logging.getLogger(__name__)

LAG_REFRESH_INTERVAL_S = 2.0
LAG_PARTITIONS_MAX = 10_000
TIMESTAMP_READS_PER_ROUND_MAX = 256
READ_BYTES_PER_ROUND_MAX = 64 * 1024 * 1024
READ_CONCURRENCY = 8
REMOTE_TIMEOUT_S = 2.0
ROUND_TIMEOUT_S = 10.0
FOLLOW_READS_MAX = 4  # batch reads past control batches / compaction gaps before giving up
LIST_OFFSETS_CHUNK = 1000  # below the node's request_partitions_max default (1024)
IDLE_AFTER_S = 60.0

CommittedOffsets = Callable[[], Iterable[tuple[str, TopicPartition, int]]]
"""(group, partition, committed offset) of every group this node coordinates, from memory."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionLag:
    """One committed partition of one group, as of a refresh.

    `first_unconsumed_ms`: timestamp of the first record not yet consumed; None when there is
    none below the end (caught up, or only control batches left) or when it is not known yet
    (`timestamp_known` False: the read failed or is still queued)."""

    committed: int
    end_offset: int
    first_unconsumed_ms: int | None
    timestamp_known: bool
    refreshed_ms: int
    control_records: int = 0  # between committed and end_offset: offsets that are not records

    @property
    def lag(self) -> int:
        """Records between the committed offset and the end, control records not counted (never
        negative: a new leader's end can briefly trail a commit made against the old one)."""
        return max(0, self.end_offset - self.committed - self.control_records)

    def lag_seconds(self, now_ms: int) -> float | None:
        """now - the first unconsumed record's timestamp; 0 when caught up; None if unknown.
        Never negative (a producer's clock ahead of ours)."""
        if self.lag == 0 or (self.timestamp_known and self.first_unconsumed_ms is None):
            return 0.0
        if self.first_unconsumed_ms is None:
            return None
        return max(0.0, (now_ms - self.first_unconsumed_ms) / 1000)


class GroupLagRefresher:
    """Owned by the event loop; `run()` is one task of the group coordinator."""

    def __init__(self, host: ReaderHost, committed: CommittedOffsets, *,
                 interval_s: float = LAG_REFRESH_INTERVAL_S) -> None:
        self.host = host
        self._committed = committed
        self.interval_s = interval_s
        self._reader = PartitionReader(host, cache_bytes_max=0)  # timestamps are kept instead
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._timestamps: dict[tuple[TopicPartition, int], int] = {}
        # Invariant: replaced whole (a new dict per round, {} when idle), never changed in place,
        # so a scrape sees one round.
        self.snapshot: dict[tuple[str, TopicPartition], PartitionLag] = {}
        self._warned_partitions_max = False
        self._read_bytes = 0  # read in the current round, against READ_BYTES_PER_ROUND_MAX
        self._wanted_at: float | None = None  # monotonic time of the last scrape
        self._wake = asyncio.Event()

    def wanted(self) -> None:
        """A scrape read the snapshot: keep refreshing (wake up if idle). On the loop."""
        self._wanted_at = time.monotonic()
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                if self._wanted_at is None or \
                        time.monotonic() - self._wanted_at > IDLE_AFTER_S:
                    self.snapshot, self._timestamps = {}, {}
                    self._wake.clear()
                    await self._wake.wait()
                try:
                    await asyncio.wait_for(self.refresh_once(), ROUND_TIMEOUT_S)
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    log.warning("consumer group lag: a refresh took over %.0f s; the figures "
                                "are older than usual", ROUND_TIMEOUT_S)
                except Exception:
                    log.exception("consumer group lag: refresh failed; keeping the last figures")
                await asyncio.sleep(self.interval_s)
        finally:
            await self.close()

    async def refresh_once(self) -> None:
        """One round: end offsets, missing timestamps, a new snapshot."""
        targets = list(itertools.islice(self._committed(), LAG_PARTITIONS_MAX + 1))
        if len(targets) > LAG_PARTITIONS_MAX:
            targets = targets[:LAG_PARTITIONS_MAX]
            if not self._warned_partitions_max:
                log.warning("consumer group lag: more than %d committed partitions; the rest "
                            "get no lag series", LAG_PARTITIONS_MAX)
                self._warned_partitions_max = True
        ends = await self._end_offsets({tp for _, tp, _ in targets})
        wanted = sorted({(tp, offset) for _, tp, offset in targets
                         if tp in ends and offset < ends[tp]
                         and (tp, offset) not in self._timestamps})
        found = await self._read_timestamps(wanted[:TIMESTAMP_READS_PER_ROUND_MAX], ends)
        in_use = {(tp, offset) for _, tp, offset in targets}
        self._timestamps = {key: ts for key, ts in self._timestamps.items() if key in in_use}
        self._timestamps.update((key, ts) for key, ts in found.items() if ts is not None)
        now = _now_ms()
        old, snapshot = self.snapshot, {}
        for group, tp, offset in targets:
            end = ends.get(tp)
            if end is None:  # not asked this round: the last figures, if still about this offset
                previous = old.get((group, tp))
                if previous is not None and previous.committed == offset:
                    snapshot[(group, tp)] = previous
                continue
            key = (tp, offset)
            if offset >= end:
                ts, known = None, True
            elif key in self._timestamps:
                ts, known = self._timestamps[key], True
            elif key in found:  # read: no data record before the end (control batches only)
                ts, known = None, True
            else:
                ts, known = None, False
            replica = self._reader.local_replica(tp)
            controls = replica.control_records_between(offset, end) if replica else 0
            snapshot[(group, tp)] = PartitionLag(committed=offset, end_offset=end,
                                                 first_unconsumed_ms=ts, timestamp_known=known,
                                                 refreshed_ms=now, control_records=controls)
        self.snapshot = snapshot

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        await self._reader.close()

    # ------------------------------------------------------------------ end offsets

    async def _end_offsets(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks: local when this node leads, else from each leader; a partition
        whose leader cannot be asked now is left out."""
        ends: dict[TopicPartition, int] = {}
        remote: dict[int, list[TopicPartition]] = {}
        state = self.host.state
        for tp in tps:
            topic = state.topics.get(tp.topic)
            if topic is None or not 0 <= tp.partition < topic.partitions:
                continue
            group = partition_group(topic.topic_id, tp.partition)
            replica = self._reader.local_replica(tp)
            if replica is not None and replica.is_leader:
                ends[tp] = replica.high_watermark
                continue
            leader = self.host.leader_of(group)
            if leader is None or leader[0] == self.host.node_id:
                continue
            remote.setdefault(leader[0], []).append(tp)
        asks = [self._list_latest(leader_id, chunk) for leader_id, tps_of in remote.items()
                for chunk in _chunks(sorted(tps_of), LIST_OFFSETS_CHUNK)]
        for answer in await asyncio.gather(*asks):
            ends.update(answer)
        return ends

    async def _list_latest(self, leader_id: int, tps: list[TopicPartition]
                           ) -> dict[TopicPartition, int]:
        channel = self._channels.get(leader_id)
        if channel is None:
            channel = peer_channel(leader_id)  # the leader's peer listener, as Node:<id>
            self._channels[leader_id] = channel
        stub = broker_pb2_grpc.BrokerStub(channel)
        try:
            response = await stub.ListOffsets(pb.ListOffsetsRequest(partitions=[
                pb.ListOffsetsPartition(topic=tp.topic, partition=tp.partition, spec=pb.LATEST)
                for tp in tps]), timeout=REMOTE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.debug("consumer group lag: ListOffsets to node %d failed: %s", leader_id,
                      exc.code().name)
            return {}
        return {TopicPartition(r.topic, r.partition): r.offset for r in response.results
                if not r.error and r.offset >= 0}

    # ------------------------------------------------------------------ timestamps

    async def _read_timestamps(self, wanted: list[tuple[TopicPartition, int]],
                               ends: dict[TopicPartition, int]
                               ) -> dict[tuple[TopicPartition, int], int | None]:
        """{(tp, offset): timestamp of the first data record at or after offset, or None when
        there is none below the end}; a read that failed is left out."""
        limit = asyncio.Semaphore(READ_CONCURRENCY)
        self._read_bytes = 0
        out: dict[tuple[TopicPartition, int], int | None] = {}

        async def one(tp: TopicPartition, offset: int) -> None:
            async with limit:
                if self._read_bytes >= READ_BYTES_PER_ROUND_MAX:
                    return  # this round's byte budget is spent: the next round reads it
                try:
                    found, ts = await asyncio.wait_for(
                        self._first_unconsumed(tp, offset, ends[tp]), REMOTE_TIMEOUT_S * 2)
                except (E.BrokerError, BatchError, TimeoutError) as exc:
                    log.debug("consumer group lag: %s-%d offset %d: %s", tp.topic,
                              tp.partition, offset, exc)
                    return
                if found:
                    out[(tp, offset)] = ts

        await asyncio.gather(*(one(tp, offset) for tp, offset in wanted))
        return out

    async def _first_unconsumed(self, tp: TopicPartition, offset: int, end: int
                                ) -> tuple[bool, int | None]:
        """(answered, timestamp): the first data record at or after `offset` below `end`."""
        position = offset
        for _ in range(FOLLOW_READS_MAX):
            result = await self._reader.read(tp, position, 1)
            self._read_bytes += len(result.data)
            if position < result.log_start:  # retention took it: the first kept record is next
                position = result.log_start
                continue
            if not result.data:
                return (position >= end, None)
            ts, position = first_record_timestamp(result.data, position)
            if ts is not None:
                return True, ts
            if position >= end:
                return True, None
        return False, None


def _chunks(items: list[TopicPartition], size: int) -> Iterable[list[TopicPartition]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)
