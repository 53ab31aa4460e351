"""Check a produce request's batches completely before any of them is proposed.

A checksum proves the bytes were not damaged, not that the header tells the truth (issue 11,
defect 14: a checksum-valid batch claiming 1000 records with last_offset_delta 2^31-1 burned 2^31
offsets and planted a batch no consumer could read). So each batch is decompressed and its record
framing parsed once, here, with the codec's public decoder, and the header must agree with what
the record area holds:

- record_count = the records present, and their offset deltas are exactly 0, 1, ..., count - 1
  (= last_offset_delta): a producer's batch has no holes (only compaction makes them, later);
- first_timestamp is the first record's, max_timestamp the largest; every timestamp lies within
  message.timestamp.difference.max.ms of the broker's clock (Kafka's name and meaning);
- the producer fields are coherent (no id: no epoch, no sequence; an id: both set);
- no control batches (those are the leader's own).

Cost: one lz4 decompression and one Python pass over the records per produced batch, bounded by
max.message.bytes (compressed) and DECOMPRESSED_BYTES_MAX (decompressed). Figures in
benchmarks/README.md (produce validation).

The request is all-or-nothing: `validate_produce` raises before returning if any batch is bad,
so the caller proposes either every batch or none.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidelog.node import errors as E
from tidelog.proto.batch import (
    DECOMPRESSED_BYTES_MAX,
    BatchHeader,
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    decode_records,
    iter_batches,
    validate_batch,
)

INT16_MAX = 2**15 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ProduceLimits:
    """What one topic allows; from its effective configs and the node's config."""

    request_bytes_max: int  # the node's limit on a whole produce request
    batch_bytes_max: int  # the topic's max.message.bytes
    timestamp_difference_ms_max: int  # message.timestamp.difference.max.ms
    decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidBatch:
    data: bytes
    header: BatchHeader


def validate_produce(data: bytes, limits: ProduceLimits, now_ms: int) -> list[ValidBatch]:
    """Every batch of a produce request, checked; raises a BrokerError naming the first fault."""
    if not data:
        raise E.InvalidBatchRequestError("the produce request carries no batch")
    if len(data) > limits.request_bytes_max:
        raise E.MessageTooLargeError(
            f"produce request of {len(data)} bytes is over the node's limit of "
            f"{limits.request_bytes_max} bytes")
    out = []
    try:
        for index, (pos, header) in enumerate(iter_batches(data, verify=False)):
            batch = data[pos:pos + header.size]
            out.append(ValidBatch(data=batch, header=_validate_one(index, batch, limits, now_ms)))
    except BatchTooLargeError as exc:
        raise E.MessageTooLargeError(str(exc)) from None
    except CorruptBatchError as exc:
        raise E.CorruptBatchRequestError(f"corrupt batch: {exc}") from None
    except InvalidBatchError as exc:
        raise E.InvalidBatchRequestError(f"invalid batch: {exc}") from None
    return out


def _validate_one(index: int, batch: bytes, limits: ProduceLimits, now_ms: int) -> BatchHeader:
    header = validate_batch(batch, max_bytes=limits.batch_bytes_max)
    where = f"batch {index} of the request"
    if header.is_control:
        raise E.InvalidBatchRequestError(f"{where}: producers may not send control batches")
    _check_producer_fields(where, header)
    records = decode_records(batch, decompressed_bytes_max=limits.decompressed_bytes_max)
    if header.last_offset_delta != header.record_count - 1:
        raise E.InvalidBatchRequestError(
            f"{where}: last_offset_delta {header.last_offset_delta} but {header.record_count} "
            "records (a produced batch covers exactly its records' offsets)")
    for delta, record in enumerate(records):
        if record.offset - header.base_offset != delta:
            raise E.InvalidBatchRequestError(
                f"{where}: record {delta} has offset delta {record.offset - header.base_offset}")
    timestamps = [r.timestamp for r in records]
    if timestamps[0] != header.first_timestamp or max(timestamps) != header.max_timestamp:
        raise E.InvalidBatchRequestError(
            f"{where}: header timestamps (first {header.first_timestamp}, max "
            f"{header.max_timestamp}) disagree with its records")
    bound = limits.timestamp_difference_ms_max
    for ts in (min(timestamps), header.max_timestamp):
        if abs(ts - now_ms) > bound:
            raise E.InvalidTimestampError(
                f"{where}: timestamp {ts} is {abs(ts - now_ms)} ms away from the broker's "
                f"clock; message.timestamp.difference.max.ms is {bound}")
    return header


def _check_producer_fields(where: str, header: BatchHeader) -> None:
    if header.producer_id == -1:
        if header.producer_epoch != -1 or header.base_sequence != -1:
            raise E.InvalidBatchRequestError(
                f"{where}: no producer id, yet epoch {header.producer_epoch} and sequence "
                f"{header.base_sequence} (both must be -1)")
        return
    if header.producer_id < 0:
        raise E.InvalidBatchRequestError(f"{where}: producer id {header.producer_id}")
    if not 0 <= header.producer_epoch <= INT16_MAX or header.base_sequence < 0:
        raise E.InvalidBatchRequestError(
            f"{where}: producer {header.producer_id} with epoch {header.producer_epoch} and "
            f"sequence {header.base_sequence} (both must be >= 0)")
