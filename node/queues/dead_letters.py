"""Dead letters and redrive: the queue coordinator's writes to other topics.

A dead letter is the source record itself (key, value, headers) plus the context headers of
docs/queues.md (`tidelog-dlq-*`, ASCII), written to the queue's dead-letter topic partition
``source partition % dlq partitions`` with acks=all. Exactly once, across coordinator failover
and against a paused ("zombie") coordinator, by deterministic batches (node/queues/dlq_ledger.py):

1. the coordinator commits the records' DEAD_PENDING state (settle, tick);
2. it reads the source records (`load_sources`), cuts them into batches (`plan_chunks`) and
   commits each as a `DlqBatch` (records, DLQ partition, base sequence) to `__queue_state`;
3. `write_dlq_batch` sends exactly that batch with the queue's one producer id/epoch and that
   base sequence, retried until the DLQ partition's leader acknowledges it (acks=all): a copy
   already appended, by anyone, is answered as a Duplicate, never appended twice;
4. the coordinator commits `DlqBatchDone`. A successor writes every batch still pending again.

Redrive reads the DLQ from the redrive cursor, copies every record of this queue back to its
source topic and partition (original key, value and headers, the `tidelog-dlq-*` ones dropped),
and the coordinator then moves the cursor past what it examined (at-least-once).

Writes go through the node's own Produce when this node leads the target partition, else
Broker.Produce to the leader over gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from tidelog.node import errors as E
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.producer_state import SEQUENCE_MODULUS
from tidelog.node.queues.model import DeadLetterJob, DlqBatchJob
from tidelog.node.queues.reader import PartitionReader, iter_records
from tidelog.node.security.channels import peer_channel
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import Codec, Record, encode_batch

__all__ = [
    "DLQ_HEADER_PREFIX",
    "Writer",
    "dead_letter_headers",
    "expected_sequence",
    "load_sources",
    "plan_chunks",
    "redrive_partition",
    "write_dlq_batch",
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

    async def produce(self, topic: str, partition: int, batches: bytes) -> pb.ProduceResponse:
        """Retried until a leader accepts (or PRODUCE_ATTEMPTS_MAX): only for writes that may be
        sent twice, i.e. idempotent batches (dead letters) or at-least-once ones (redrive)."""
        request = pb.ProduceRequest(topic=topic, partition=partition, acks=pb.ACKS_ALL,
                                    timeout_ms=PRODUCE_TIMEOUT_MS, batches=batches)
        hint: str | None = None  # a leader address an error named
        for _ in range(PRODUCE_ATTEMPTS_MAX):
            # The leader this node knows of first (no wasted local attempt, no retry sleep
            # before a write that can go out at once); "" or None: this node's own Produce.
            address = hint if hint else self._leader_address(topic, partition) or ""
            hint = None
            try:
                if not address:
                    return await self._local(request)
                return await self._remote(address, request)
            except E.NotLeaderError as exc:
                hint = exc.leader_address
            except (E.LeaderNotAvailableError, E.RequestTimedOutError):
                pass
            except _RemoteNotLeader as exc:
                hint = exc.address
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
            if detail is not None and detail.code == pb.OUT_OF_ORDER_SEQUENCE:
                raise E.OutOfOrderSequenceError(exc.details() or "") from None
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


_EXPECTED = re.compile(r"sent sequence (\d+) but (\d+) was expected next")


def expected_sequence(error: E.BrokerError) -> int | None:
    """The sequence a partition's idempotent-producer check expected, from its refusal
    (node/producer_state.py words it "... sent sequence S but X was expected next"); None
    when the refusal is of another kind (a new epoch not starting at 0)."""
    match = _EXPECTED.search(error.message)
    return int(match.group(2)) if match else None


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


SourceRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]


async def load_sources(reader: PartitionReader, jobs: Sequence[DeadLetterJob]
                       ) -> dict[tuple[TopicPartition, int], Record]:
    """The source records of the jobs that can be read now (one read per partition and range;
    a record gone to retention is simply absent)."""
    by_tp: dict[TopicPartition, list[int]] = {}
    for job in jobs:
        by_tp.setdefault(job.tp, []).append(job.offset)
    out: dict[tuple[TopicPartition, int], Record] = {}
    for tp, offsets in by_tp.items():
        offsets.sort()
        ranges: list[tuple[int, int]] = []
        for off in offsets:
            if ranges and ranges[-1][1] + 1 == off:
                ranges[-1] = (ranges[-1][0], off)
            else:
                ranges.append((off, off))
        data = await reader.batches_covering(tp, ranges)
        wanted = set(offsets)
        for record in iter_records(data, offsets[0], offsets[-1] + 1) if data else ():
            if record.offset in wanted:
                out[(tp, record.offset)] = record
    return out


def dead_letter(queue: str, job: DeadLetterJob, record: Record | None,
                now_ms: int) -> SourceRecord:
    """The DLQ record of one job: the source's key, value and headers (its own tidelog-dlq-*
    ones dropped) plus the context headers. A source lost to retention: no key or value."""
    if record is None:
        return None, None, dead_letter_headers(queue, job, now_ms), now_ms
    headers = [(k, v) for k, v in record.headers if not k.startswith(DLQ_HEADER_PREFIX)]
    headers.extend(dead_letter_headers(queue, job, record.timestamp))
    return record.key, record.value, headers, now_ms


def plan_chunks(jobs: Sequence[DeadLetterJob], sources: dict[tuple[TopicPartition, int], Record],
                records_max: int) -> list[list[DeadLetterJob]]:
    """Consecutive runs of the jobs (sorted by partition, offset), each at most records_max
    records and about BATCH_BYTES_MAX bytes (a single larger record is a batch of its own)."""
    chunks: list[list[DeadLetterJob]] = []
    chunk: list[DeadLetterJob] = []
    size = 0
    for job in sorted(jobs, key=lambda j: (j.tp, j.offset)):
        record = sources.get((job.tp, job.offset))
        item_size = 256 + len(job.reason) + (0 if record is None else (
            len(record.key or b"") + len(record.value or b"")
            + sum(len(k) + len(v or b"") for k, v in record.headers)))
        if chunk and (size + item_size > BATCH_BYTES_MAX or len(chunk) >= records_max):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(job)
        size += item_size
    if chunk:
        chunks.append(chunk)
    return chunks


async def write_dlq_batch(*, reader: PartitionReader, writer: Writer, queue: str,
                          producer: tuple[int, int], batch: DlqBatchJob) -> pb.ProduceResponse:
    """Write one committed dead-letter batch: its records in its order, as ONE batch with the
    queue's producer id/epoch and its base sequence; retried until acknowledged (a copy that
    is already in the DLQ is answered `duplicate`, and not appended again). Raises BrokerError
    when no leader accepts it now (the batch stays pending: write it again later)."""
    sources = await load_sources(reader, batch.jobs)
    now = int(time.time() * 1000)
    records = [dead_letter(queue, job, sources.get((job.tp, job.offset)), now)
               for job in batch.jobs]
    producer_id, epoch = producer
    data = encode_batch(records, codec=Codec.LZ4, producer_id=producer_id,
                        producer_epoch=epoch,
                        base_sequence=batch.base_sequence % SEQUENCE_MODULUS
                        if producer_id >= 0 else -1)
    return await writer.produce(batch.dlq_topic, batch.dlq_partition, data)


def _end_of(data: bytes, default: int) -> int:
    from tidelog.proto.batch import iter_batches

    end = default
    for _, header in iter_batches(data, verify=False):
        end = header.last_offset + 1
    return end


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
