"""The queue coordinator's view of a topic partition's data: committed batches, read locally or
from the partition's leader, with a bounded cache of the raw batches.

Why a cache: Receive answers with the raw stored batches covering the acquired records (the
client decodes them), and the same batches were just read to offer their records to the core, so
the answer is built from bytes already in memory; redeliveries of recent records too. The cache
holds whole batches keyed by (partition, base offset) and is bounded by bytes
(`CACHE_BYTES_MAX`, oldest inserted evicted first); a batch not in it is read again.

Where data comes from: the local replica when this node has one (leader or follower, committed
data only: `Replica.read_committed`), otherwise Broker.Fetch to the partition's leader over gRPC
(the client listener of that node). Both return whole committed batches starting with the one
that contains the offset asked for.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.metadata import MetadataState
from tidelog.node.queues.model import OfferedRecord
from tidelog.node.replica import Replica
from tidelog.node.security.channels import peer_channel
from tidelog.node.storage import StorageError
from tidelog.node.topics import partition_group
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import (
    BatchError,
    Record,
    decode_records,
    decode_records_with,
    iter_batches,
)

__all__ = [
    "DELIVER_AT_HEADER",
    "MESSAGE_ID_HEADER",
    "PartitionReader",
    "ReadResult",
    "ReaderHost",
    "decode_offered",
    "find_record",
]

log = logging.getLogger(__name__)

DELIVER_AT_HEADER = "tidelog-deliver-at-ms"
MESSAGE_ID_HEADER = "tidelog-message-id"
CACHE_BYTES_MAX = 64 * 1024 * 1024
REMOTE_TIMEOUT_S = 5.0


class ReaderHost(Protocol):
    """What the reader needs of its node: topics, local replicas and leaders' addresses."""

    @property
    def state(self) -> MetadataState: ...

    def local_replica(self, group: str) -> Replica | None: ...

    def leader_of(self, group: str) -> tuple[int, str] | None: ...

    @property
    def node_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Whole committed batches from the one holding the offset asked for (b"": nothing there yet
    or the offset is below the log start); the partition's bounds as the source saw them."""

    data: bytes
    log_start: int
    high_watermark: int


class PartitionReader:
    """Owned by the event loop. One per node, shared by every queue."""

    def __init__(self, host: ReaderHost, cache_bytes_max: int = CACHE_BYTES_MAX) -> None:
        self.host = host
        self.cache_bytes_max = cache_bytes_max
        self._cache: OrderedDict[tuple[TopicPartition, int], tuple[int, bytes]] = OrderedDict()
        self._bases: dict[TopicPartition, list[int]] = {}  # sorted cached base offsets
        self._cache_bytes = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._high_watermarks: dict[TopicPartition, int] = {}

    # ------------------------------------------------------------------ reads

    def local_replica(self, tp: TopicPartition) -> Replica | None:
        topic = self.host.state.topics.get(tp.topic)
        if topic is None or not 0 <= tp.partition < topic.partitions:
            return None
        replica = self.host.local_replica(partition_group(topic.topic_id, tp.partition))
        return replica if replica is not None and replica.error is None else None

    def high_watermark(self, tp: TopicPartition) -> int:
        """The latest high watermark known (-1 if never read): the local replica's, else the
        leader's as of the last read."""
        replica = self.local_replica(tp)
        if replica is not None:
            return replica.high_watermark
        return self._high_watermarks.get(tp, -1)

    async def read(self, tp: TopicPartition, offset: int, max_bytes: int, *,
                   leader_only: bool = False) -> ReadResult:
        """Committed batches from `offset`; raises BrokerError (UnknownTopicError,
        LeaderNotAvailableError, ...) when the partition cannot be read right now.

        `leader_only`: what the leader has committed, not what a local follower knows of yet
        (the DLQ scan must not miss a dead letter its predecessor just committed); a local
        leader is used only once it has committed an entry of its own term (before that its
        high watermark may not cover entries of earlier terms that will commit)."""
        replica = self.local_replica(tp)
        if replica is not None and leader_only and not (
                replica.is_leader
                and replica.raft_log.term_at(replica.commit_index) == replica.term):
            if replica.is_leader:
                raise E.LeaderNotAvailableError(
                    f"{tp.topic}-{tp.partition}: its new leader has not committed in its term")
            replica = None
        if replica is not None:
            result = _read_local(replica, offset, max_bytes)
        else:
            result = await self._read_remote(tp, offset, max_bytes)
        self._high_watermarks[tp] = result.high_watermark
        if result.data:
            self._cache_put(tp, result.data)
        return result

    async def bounds(self, tp: TopicPartition) -> tuple[int, int]:
        """(log start, high watermark) of a partition."""
        replica = self.local_replica(tp)
        if replica is not None and replica.is_leader:
            return replica.log.log_start_offset, replica.high_watermark
        result = await self._read_remote(tp, 0, 1) if replica is None else ReadResult(
            b"", replica.log.log_start_offset, replica.high_watermark)
        return result.log_start, result.high_watermark

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """The first offset whose batch holds a timestamp >= timestamp_ms (the time index; the
        leader's by ListOffsets when this node has no replica), None if none."""
        replica = self.local_replica(tp)
        if replica is not None:
            return replica.log.offset_for_timestamp(timestamp_ms)
        topic = self.host.state.topics.get(tp.topic)
        leader = None if topic is None else self.host.leader_of(
            partition_group(topic.topic_id, tp.partition))
        if leader is None or leader[0] == self.host.node_id or not leader[1]:
            raise E.LeaderNotAvailableError(f"{tp.topic}-{tp.partition} has no leader to ask")
        channel = self._channels.get(leader[1])
        if channel is None:
            channel = peer_channel(leader[0])
            self._channels[leader[1]] = channel
        try:
            response = await broker_pb2_grpc.BrokerStub(channel).ListOffsets(
                pb.ListOffsetsRequest(partitions=[pb.ListOffsetsPartition(
                    topic=tp.topic, partition=tp.partition, spec=pb.TIMESTAMP,
                    timestamp_ms=timestamp_ms)]), timeout=REMOTE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise E.LeaderNotAvailableError(
                f"{tp.topic}-{tp.partition}: ListOffsets at node {leader[0]} failed: "
                f"{exc.code().name} {exc.details()}") from None
        (result,) = response.results
        if result.error:
            raise E.LeaderNotAvailableError(f"{tp.topic}-{tp.partition}: {result.error_message}")
        return None if result.offset < 0 else result.offset

    def cached_from(self, tp: TopicPartition, offset: int, max_bytes: int) -> bytes:
        """Cached contiguous batches from the one holding `offset` (b"" if that one is not
        cached): what was prefetched or read before, without I/O."""
        bases = self._bases.get(tp)
        if not bases:
            return b""
        i = bisect.bisect_right(bases, offset) - 1
        if i < 0:
            return b""
        parts: list[bytes] = []
        size = 0
        expected = None
        while i < len(bases) and size < max_bytes:
            base = bases[i]
            last, data = self._cache[(tp, base)]
            if expected is None:
                if last < offset:
                    return b""
            elif base != expected:
                break
            parts.append(data)
            size += len(data)
            expected = last + 1
            i += 1
        return b"".join(parts)

    async def batches_covering(self, tp: TopicPartition,
                               ranges: Sequence[tuple[int, int]]) -> bytes:
        """The raw batches holding every offset of `ranges` ((first, last) inclusive, sorted),
        each batch once, in offset order: from the cache, reading what is missing. A range
        that cannot be read now (its leader is away) is left out: its records' locks expire
        and they are delivered again."""
        out: list[bytes] = []
        seen: set[int] = set()
        for first, last in ranges:
            offset = first
            while offset <= last:
                found = self._cached_batch(tp, offset)
                if found is None:
                    try:
                        result = await self.read(tp, offset, 1 << 20)
                    except E.BrokerError as exc:  # the locks expire; the records come again
                        log.info("%s-%d: offset %d not readable for an answer: %s", tp.topic,
                                 tp.partition, offset, exc.message)
                        break
                    if not result.data:
                        break  # gone (retention) or unreadable: the client gets fewer records
                    found = self._cached_batch(tp, offset)
                    if found is None:  # cache too small to keep it; use the read directly
                        for pos, header in iter_batches(result.data, verify=False):
                            if header.last_offset >= offset:
                                found = (header.base_offset, header.last_offset,
                                         result.data[pos:pos + header.size])
                                break
                    if found is None:
                        break
                base, batch_last, data = found
                if base not in seen:
                    seen.add(base)
                    out.append(data)
                offset = batch_last + 1
        return b"".join(out)

    def forget_below(self, tp: TopicPartition, offset: int) -> None:
        """Evict the cached batches wholly below `offset` (done records: never read again)."""
        bases = self._bases.get(tp)
        while bases:
            key = (tp, bases[0])
            last, data = self._cache[key]
            if last >= offset:
                break
            del self._cache[key]
            self._cache_bytes -= len(data)
            bases.pop(0)

    async def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        self._channels.clear()

    # ------------------------------------------------------------------ internals

    def _cached_batch(self, tp: TopicPartition, offset: int) -> tuple[int, int, bytes] | None:
        bases = self._bases.get(tp)
        if not bases:
            return None
        i = bisect.bisect_right(bases, offset) - 1
        if i < 0:
            return None
        last, data = self._cache[(tp, bases[i])]
        return (bases[i], last, data) if last >= offset else None

    def _cache_put(self, tp: TopicPartition, data: bytes) -> None:
        bases = self._bases.setdefault(tp, [])
        for pos, header in iter_batches(data, verify=False):
            key = (tp, header.base_offset)
            if key in self._cache:
                continue
            batch = data[pos:pos + header.size]
            self._cache[key] = (header.last_offset, batch)
            bisect.insort(bases, header.base_offset)
            self._cache_bytes += len(batch)
        while self._cache_bytes > self.cache_bytes_max and self._cache:
            (old_tp, base), (_, batch) = self._cache.popitem(last=False)
            self._cache_bytes -= len(batch)
            old = self._bases[old_tp]
            old.pop(bisect.bisect_left(old, base))

    async def _read_remote(self, tp: TopicPartition, offset: int, max_bytes: int) -> ReadResult:
        topic = self.host.state.topics.get(tp.topic)
        if topic is None or not 0 <= tp.partition < topic.partitions:
            raise E.UnknownTopicError(f"{tp.topic}-{tp.partition} does not exist")
        leader = self.host.leader_of(partition_group(topic.topic_id, tp.partition))
        if leader is None or leader[0] == self.host.node_id or not leader[1]:
            raise E.LeaderNotAvailableError(f"{tp.topic}-{tp.partition} has no leader to read "
                                            "from right now")
        channel = self._channels.get(leader[1])
        if channel is None:
            channel = peer_channel(leader[0])  # the leader's peer listener, as Node:<id>
            self._channels[leader[1]] = channel
        stub = broker_pb2_grpc.BrokerStub(channel)
        try:
            response = await stub.Fetch(pb.FetchRequest(
                partitions=[pb.FetchPartition(topic=tp.topic, partition=tp.partition,
                                              offset=offset, max_bytes=max_bytes)],
                max_wait_ms=0), timeout=REMOTE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise E.LeaderNotAvailableError(
                f"{tp.topic}-{tp.partition}: fetch from node {leader[0]} failed: "
                f"{exc.code().name} {exc.details()}") from None
        (result,) = response.partitions
        if result.error == pb.OFFSET_OUT_OF_RANGE and 0 <= offset < result.log_start_offset:
            return ReadResult(b"", result.log_start_offset, result.high_watermark)
        if result.error:
            raise E.LeaderNotAvailableError(
                f"{tp.topic}-{tp.partition}: node {leader[0]} answered "
                f"{pb.ErrorCode.Name(result.error)}: {result.error_message}")
        return ReadResult(bytes(result.batches), result.log_start_offset, result.high_watermark)


def _read_local(replica: Replica, offset: int, max_bytes: int) -> ReadResult:
    start = replica.log.log_start_offset
    hw = replica.high_watermark
    if offset < start:
        return ReadResult(b"", start, hw)
    try:
        data = replica.read_committed(offset, max_bytes)
    except StorageError as exc:
        # Retention may have moved the start between the check and the read.
        if offset < replica.log.log_start_offset:
            return ReadResult(b"", replica.log.log_start_offset, hw)
        raise E.StorageRequestError(f"{replica.group}: {exc}") from None
    return ReadResult(data, start, hw)


def _deliver_at_ms(raw: bytes | None) -> int:
    """The header's ASCII decimal ms; anything else is ignored (delivered without delay)."""
    if not raw:
        return 0
    try:
        value = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return 0
    return max(0, value)


def decode_offered(data: bytes, from_offset: int) -> tuple[list[OfferedRecord], int]:
    """The records at or after `from_offset` in whole batches, as the core takes them, and the
    offset after the last position examined (control batches and compaction gaps included).

    Each record is built as an OfferedRecord straight from the decoded fields
    (`decode_records_with`, the same checks as decode_records): building a Record first, then
    the OfferedRecord, was half the cost of a read (the coordinator decodes every record once).

    A batch that fails its checksum ends the decoding early (it is read again next time and
    the node's log reports the damage); records before it are offered."""
    records: list[OfferedRecord] = []
    read_to = from_offset
    try:
        for pos, header in iter_batches(data, verify=False):
            if header.last_offset < from_offset:
                continue
            if not header.is_control:
                _, batch = decode_records_with(data[pos:pos + header.size], _offered)
                if header.base_offset < from_offset:
                    batch = [r for r in batch if r.offset >= from_offset]
                records += batch
            read_to = max(read_to, header.last_offset + 1)
    except BatchError as exc:
        log.warning("queue read stopped at a damaged batch after offset %d: %s", read_to, exc)
    return records, read_to


def _offered(offset: int, timestamp: int, key: bytes | None, _value: bytes | None,
             headers: tuple[tuple[str, bytes | None], ...]) -> OfferedRecord:
    if not headers:
        return OfferedRecord(offset, timestamp, key)
    deliver_at = message_id = _ABSENT
    for name, value in headers:   # the first one of each name counts
        if name == DELIVER_AT_HEADER and deliver_at is _ABSENT:
            deliver_at = value
        elif name == MESSAGE_ID_HEADER and message_id is _ABSENT:
            message_id = value
    return OfferedRecord(offset, timestamp, key,
                         0 if deliver_at is _ABSENT else _deliver_at_ms(deliver_at),
                         None if message_id is _ABSENT else message_id)


_ABSENT: Any = object()


def find_record(data: bytes, offset: int) -> Record | None:
    """The record at `offset` in whole batches (None if absent: compacted away, or control)."""
    for pos, header in iter_batches(data, verify=False):
        if header.base_offset <= offset <= header.last_offset and not header.is_control:
            for record in decode_records(data[pos:pos + header.size]):
                if record.offset == offset:
                    return record
    return None


def iter_records(data: bytes, from_offset: int, to_offset: int) -> Iterable[Record]:
    """Records with from_offset <= offset < to_offset (to_offset < 0: no upper bound)."""
    for pos, header in iter_batches(data, verify=False):
        if header.last_offset < from_offset or header.is_control:
            continue
        if 0 <= to_offset <= header.base_offset:
            return
        for record in decode_records(data[pos:pos + header.size]):
            if record.offset >= from_offset and (to_offset < 0 or record.offset < to_offset):
                yield record
