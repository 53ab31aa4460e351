"""Dead letters and redrive: the queue coordinator's writes to other topics.

A dead letter is the source record itself (key, value, headers) plus the context headers of
docs/queues.md (`tidelog-dlq-*`, ASCII), written to the queue's dead-letter topic partition
``source partition % dlq partitions`` with acks=all. Exactly once, across coordinator failover:

1. the record's DEAD_PENDING state is committed to `__queue_state` first (by the coordinator);
2. this module writes the dead letter (acks=all);
3. the coordinator commits `dead_lettered` for it.

A coordinator that dies between 2 and 3 leaves a dead letter whose state still says pending; its
successor starts with a scan (`DeadLetterScan`) of the DLQ partitions from the redrive cursor to
the high watermark for the headers naming (queue, source topic, partition, offset) before it
writes anything, and marks what it finds as dead-lettered without writing it again. A write that
fails or times out (it may still commit) also makes the next attempt scan first.

Redrive reads the DLQ from the redrive cursor, copies every record of this queue back to its
source topic and partition (original key, value and headers, the `tidelog-dlq-*` ones dropped),
and the coordinator then moves the cursor past what it examined.

Writes go through the node's own Produce when this node leads the target partition, else
Broker.Produce to the leader over gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc
from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.model import DeadLetterJob
from tidelog.node.queues.reader import PartitionReader, find_record, iter_records
from tidelog.node.security.channels import peer_channel
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import Codec, Record, encode_batch

__all__ = [
    "DLQ_HEADER_PREFIX",
    "DeadLetterScan",
    "DlqProducer",
    "Writer",
    "dead_letter_headers",
    "redrive_partition",
    "write_dead_letters",
]

log = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "tidelog-dlq-"
H_QUEUE = "tidelog-dlq-queue"
H_REASON = "tidelog-dlq-reason"
H_ATTEMPTS = "tidelog-dlq-attempts"
H_TOPIC = "tidelog-dlq-source-topic"
H_PARTITION = "tidelog-dlq-source-partition"
H_OFFSET = "tidelog-dlq-source-offset"
H_TIMESTAMP = "tidelog-dlq-source-timestamp-ms"
H_FIRST = "tidelog-dlq-first-delivery-ms"
H_LAST = "tidelog-dlq-last-delivery-ms"

BATCH_BYTES_MAX = 512 * 1024  # per produced batch; well below max.message.bytes' default
SCAN_READ_BYTES = 1 << 20
PRODUCE_TIMEOUT_MS = 10_000
PRODUCE_ATTEMPTS_MAX = 20
PRODUCE_RETRY_S = 0.25

LocalProduce = Callable[[pb.ProduceRequest], Awaitable[pb.ProduceResponse]]
LeaderAddress = Callable[[str, int], str | None]  # "": this node leads it; None: no leader


class Writer:
    """acks=all writes of ready batches to any partition: locally when this node leads it (the
    node's own Produce path: validation, Raft, commit), else Broker.Produce to the leader."""

    def __init__(self, local_produce: LocalProduce, leader_address: LeaderAddress) -> None:
        self._local = local_produce
        self._leader_address = leader_address
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def produce(self, topic: str, partition: int, batches: bytes, *,
                      once: bool = False) -> pb.ProduceResponse:
        """With `once`, one attempt at the partition's current leader: any failure may still
        have written the batches (a timeout, leadership lost after proposing), so the caller
        must find out before writing them again (dead letters: the DLQ tail scan). Without it,
        retried until a leader accepts (redrive: at-least-once)."""
        request = pb.ProduceRequest(topic=topic, partition=partition, acks=pb.ACKS_ALL,
                                    timeout_ms=PRODUCE_TIMEOUT_MS, batches=batches)
        if once:
            address = self._leader_address(topic, partition)
            if address is None:
                raise E.LeaderNotAvailableError(f"{topic}-{partition} has no leader right now")
            try:
                if not address:
                    return await self._local(request)
                return await self._remote(address, request)
            except _RemoteNotLeader:
                raise E.LeaderNotAvailableError(
                    f"{topic}-{partition}: the write to {address} failed; it may still "
                    "commit") from None
        address = ""
        for _ in range(PRODUCE_ATTEMPTS_MAX):
            try:
                if not address:
                    return await self._local(request)
                return await self._remote(address, request)
            except E.NotLeaderError as exc:
                address = exc.leader_address
            except E.LeaderNotAvailableError:
                address = ""
            except _RemoteNotLeader as exc:
                address = exc.address
            await asyncio.sleep(PRODUCE_RETRY_S)
        raise E.LeaderNotAvailableError(f"{topic}-{partition}: no leader accepted the write")

    async def _remote(self, address: str, request: pb.ProduceRequest) -> pb.ProduceResponse:
        channel = self._channels.get(address)
        if channel is None:
            channel = peer_channel(address)  # the leader's peer listener, as Node:<id>
            self._channels[address] = channel
        try:
            return await broker_pb2_grpc.BrokerStub(channel).Produce(
                request, timeout=PRODUCE_TIMEOUT_MS / 1000 + 5)
        except grpc.aio.AioRpcError as exc:
            detail = _error_detail(exc)
            if detail is not None and detail.code == pb.NOT_LEADER:
                raise _RemoteNotLeader(detail.leader_address) from None
            if detail is not None and detail.retriable or exc.code() in (
                    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _RemoteNotLeader("") from None
            raise E.BrokerError(f"produce to {request.topic}-{request.partition} at {address} "
                                f"failed: {exc.code().name} {exc.details()}") from None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class _RemoteNotLeader(Exception):
    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


def _error_detail(exc: grpc.aio.AioRpcError) -> pb.ErrorDetail | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "tidelog-error-bin":
            try:
                return pb.ErrorDetail.FromString(value)
            except Exception:  # noqa: BLE001 - a peer's bad detail is just no detail
                return None
    return None


def dead_letter_headers(queue: str, job: DeadLetterJob, source_timestamp_ms: int
                        ) -> list[tuple[str, bytes]]:
    """The context headers of one dead letter, ASCII (docs/queues.md)."""
    return [
        (H_QUEUE, queue.encode()),
        (H_REASON, job.reason.encode("utf-8", "replace")),
        (H_ATTEMPTS, str(job.attempts).encode()),
        (H_TOPIC, job.tp.topic.encode()),
        (H_PARTITION, str(job.tp.partition).encode()),
        (H_OFFSET, str(job.offset).encode()),
        (H_TIMESTAMP, str(source_timestamp_ms).encode()),
        (H_FIRST, str(job.first_delivery_ms).encode()),
        (H_LAST, str(job.last_delivery_ms).encode()),
    ]


def _header(record: Record, name: str) -> bytes | None:
    for key, value in record.headers:
        if key == name:
            return value
    return None


def source_of(record: Record, queue: str) -> tuple[TopicPartition, int] | None:
    """(source partition, offset) of a dead letter of `queue`; None for anything else."""
    if _header(record, H_QUEUE) != queue.encode():
        return None
    try:
        topic = (_header(record, H_TOPIC) or b"").decode()
        partition = int(_header(record, H_PARTITION) or b"")
        offset = int(_header(record, H_OFFSET) or b"")
    except (UnicodeDecodeError, ValueError):
        return None
    return TopicPartition(topic, partition), offset


@dataclass(slots=True)
class DeadLetterScan:
    """Per queue: up to where each DLQ partition is known to hold no dead letter this
    coordinator does not know of. `None` = never scanned (a new coordinator): scan from the
    redrive cursor first."""

    known_end: dict[int, int] | None = None
    found: set[tuple[TopicPartition, int]] = field(default_factory=set)
    dirty: set[int] = field(default_factory=set)  # a write failed here: it may still commit


async def _scan(reader: PartitionReader, queue: str, dlq_topic: str, partitions: Iterable[int],
                starts: dict[int, int], scan: DeadLetterScan) -> None:
    """Read each DLQ partition from its start to the high watermark; remember the sources of
    this queue's dead letters found there."""
    known = scan.known_end if scan.known_end is not None else {}
    for p in partitions:
        tp = TopicPartition(dlq_topic, p)
        offset = known.get(p, starts.get(p, 0))
        while True:
            result = await reader.read(tp, offset, SCAN_READ_BYTES, leader_only=True)
            if offset < result.log_start:
                offset = result.log_start
                continue
            if not result.data:
                break
            last = offset
            for record in iter_records(result.data, offset, -1):
                source = source_of(record, queue)
                if source is not None:
                    scan.found.add(source)
                last = record.offset
            offset = max(last + 1, _end_of(result.data, offset))
            await asyncio.sleep(0)
        known[p] = max(offset, known.get(p, 0))
        scan.dirty.discard(p)
    scan.known_end = known


def _end_of(data: bytes, default: int) -> int:
    from tidelog.proto.batch import iter_batches

    end = default
    for _, header in iter_batches(data, verify=False):
        end = header.last_offset + 1
    return end


@dataclass(slots=True)
class DlqProducer:
    """The idempotent producer one coordinator incarnation writes a queue's dead letters with.
    Its epoch is bumped (InitProducerId, through the metadata) when a coordinator takes the
    queue over, BEFORE it scans the DLQ: so a zombie predecessor (paused mid-write, then
    resumed) is refused PRODUCER_FENCED by the DLQ partitions instead of writing a second copy
    after the scan."""

    producer_id: int
    epoch: int
    sequences: dict[int, int] = field(default_factory=dict)  # DLQ partition -> next sequence


async def write_dead_letters(
    *, reader: PartitionReader, writer: Writer, queue: str, dlq_topic: str, dlq_partitions: int,
    jobs: Sequence[DeadLetterJob], redrive_cursors: dict[int, int], scan: DeadLetterScan,
    producer: DlqProducer,
) -> list[DeadLetterJob]:
    """Write the jobs' dead letters (those not already in the DLQ); returns the jobs now in the
    DLQ, to be committed as dead-lettered. Raises BrokerError if a write fails (the jobs stay
    pending; the next attempt scans again first, with a new producer epoch)."""
    assert dlq_partitions > 0
    targets = sorted({job.tp.partition % dlq_partitions for job in jobs})
    if scan.known_end is None or any(p not in scan.known_end or p in scan.dirty
                                     for p in targets):
        await _scan(reader, queue, dlq_topic, targets, redrive_cursors, scan)
    done: list[DeadLetterJob] = []
    by_partition: dict[int, list[tuple[DeadLetterJob, tuple]]] = {}  # type: ignore[type-arg]
    for job in jobs:
        if (job.tp, job.offset) in scan.found:
            done.append(job)
            continue
        data = await reader.batches_covering(job.tp, [(job.offset, job.offset)])
        record = find_record(data, job.offset) if data else None
        key = record.key if record else None
        value = record.value if record else None
        headers = [(k, v) for k, v in record.headers if not k.startswith(DLQ_HEADER_PREFIX)] \
            if record else []
        timestamp = record.timestamp if record else int(time.time() * 1000)
        headers.extend(dead_letter_headers(queue, job, timestamp))
        by_partition.setdefault(job.tp.partition % dlq_partitions, []).append(
            (job, (key, value, headers, int(time.time() * 1000))))
    for p, items in sorted(by_partition.items()):
        for chunk in _chunks(items):
            try:
                sequence = producer.sequences.get(p, 0)
                response = await writer.produce(dlq_topic, p, encode_batch(
                    [r for _, r in chunk], codec=Codec.LZ4, producer_id=producer.producer_id,
                    producer_epoch=producer.epoch,
                    base_sequence=sequence if producer.producer_id >= 0 else -1), once=True)
            except E.BrokerError:
                scan.dirty.add(p)  # it may still commit: scan before writing again
                raise
            producer.sequences[p] = sequence + len(chunk)
            for job, _ in chunk:
                scan.found.add((job.tp, job.offset))
                done.append(job)
            if scan.known_end is not None:
                scan.known_end[p] = max(scan.known_end.get(p, 0), response.last_offset + 1)
    return done


def _chunks(items: list[tuple[DeadLetterJob, tuple]]) -> Iterable[list]:  # type: ignore[type-arg]
    chunk: list = []  # type: ignore[type-arg]
    size = 0
    for item in items:
        _, (key, value, headers, _) = item
        item_size = 64 + len(key or b"") + len(value or b"") + sum(
            len(k) + len(v or b"") for k, v in headers)
        if chunk and size + item_size > BATCH_BYTES_MAX:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


@dataclass(frozen=True, slots=True)
class RedriveResult:
    redriven: int
    cursor: int  # the offset after the last DLQ position examined


async def redrive_partition(
    *, reader: PartitionReader, writer: Writer, queue: str, dlq_topic: str, partition: int,
    from_offset: int, to_offset: int, max_messages: int,
) -> RedriveResult:
    """Copy this queue's dead letters in [from_offset, to_offset) of one DLQ partition back to
    their source partitions (to_offset < 0: the high watermark; max_messages 0: no limit)."""
    tp = TopicPartition(dlq_topic, partition)
    offset = from_offset
    count = 0
    pending: dict[TopicPartition, list[tuple]] = {}  # type: ignore[type-arg]
    while not (0 <= to_offset <= offset or 0 < max_messages <= count):
        result = await reader.read(tp, offset, SCAN_READ_BYTES)
        if offset < result.log_start:
            offset = result.log_start
            continue
        if not result.data:
            break
        end = _end_of(result.data, offset)  # > offset: the read holds the batch of `offset`
        if 0 <= to_offset < end:
            end = to_offset
        for record in iter_records(result.data, offset, end):
            if 0 < max_messages <= count:
                end = record.offset
                break
            source = source_of(record, queue)
            if source is not None:
                headers = [(k, v) for k, v in record.headers
                           if not k.startswith(DLQ_HEADER_PREFIX)]
                pending.setdefault(source[0], []).append(
                    (record.key, record.value, headers, int(time.time() * 1000)))
                count += 1
        offset = end
    for source, records in pending.items():
        for start in range(0, len(records), 500):
            await writer.produce(source.topic, source.partition,
                                 encode_batch(records[start:start + 500], codec=Codec.LZ4))
    return RedriveResult(count, offset)
