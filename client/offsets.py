"""ListOffsets, shared by Consumer (seek_to_*, offsets_for_times, auto_offset_reset) and Admin.

Requests go to each partition's leader (one request per leader); NOT_LEADER and unreachable
leaders refresh the metadata and retry with backoff until the timeout. Grouping by leader and
marking a failure (a NOT_LEADER hint applied at once) are tidelog.client.routing's, shared with
the fetcher and the admin client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from tidelog.client import errors
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.records import TopicPartition
from tidelog.client.routing import by_leader, note_failure, result_error

__all__ = ["EARLIEST", "LATEST", "OFFSET_SPECS", "TIMESTAMP", "apply_list_offsets",
           "check_partitions", "list_offsets", "list_offsets_request", "not_listed",
           "wire_specs"]

# Same numbers as tidelog.v1.OffsetSpec (kept here so callers need not import the proto).
LATEST = 0
EARLIEST = 1
TIMESTAMP = 2
OFFSET_SPECS = {"earliest": EARLIEST, "latest": LATEST}


# --- sans-I/O steps, shared with client/aio/offsets.py ---------------------------------------

def wire_specs(specs: Mapping[TopicPartition, str | int]) -> dict[TopicPartition, tuple[int, int]]:
    """{tp: "earliest" | "latest" | timestamp_ms} -> {tp: (spec, timestamp_ms)} (the admin
    clients' list_offsets argument)."""
    wire: dict[TopicPartition, tuple[int, int]] = {}
    for tp, spec in specs.items():
        if isinstance(spec, str):
            if spec not in OFFSET_SPECS:
                raise errors.ConfigError(
                    f"{tp}: offset spec must be 'earliest', 'latest' or a timestamp in ms")
            wire[tp] = (OFFSET_SPECS[spec], 0)
        else:
            wire[tp] = (TIMESTAMP, int(spec))
    return wire


def check_partitions(metadata: Metadata, tps: Iterable[TopicPartition]) -> None:
    """TopicNotFound for a partition the cached metadata does not have."""
    for tp in tps:
        description = metadata.cached_topic(tp.topic)
        if description is None:
            raise errors.TopicNotFound(f"topic {tp.topic!r} does not exist")
        if not 0 <= tp.partition < len(description.partitions):
            raise errors.TopicNotFound(
                f"{tp}: topic {tp.topic!r} has {len(description.partitions)} partitions")


def list_offsets_request(tps: Iterable[TopicPartition],
                         pending: Mapping[TopicPartition, tuple[int, int]]) -> Any:
    from tidelog.proto import broker_pb2

    return broker_pb2.ListOffsetsRequest(partitions=[
        broker_pb2.ListOffsetsPartition(
            topic=tp.topic, partition=tp.partition, spec=pending[tp][0],
            timestamp_ms=pending[tp][1])
        for tp in tps
    ])


def apply_list_offsets(metadata: Metadata, response: Any,
                       pending: dict[TopicPartition, tuple[int, int]],
                       found: dict[TopicPartition, int]) -> errors.TidelogError | None:
    """A ListOffsets answer: each offset found moves from `pending` to `found`; a retriable
    partition error marks the metadata (routing.result_error) and is returned (the last one)."""
    last_error: errors.TidelogError | None = None
    for result in response.results:
        tp = TopicPartition(result.topic, result.partition)
        if tp not in pending:
            continue
        if result.error:
            last_error = result_error(metadata, tp, result)
            continue
        found[tp] = result.offset
        del pending[tp]
    return last_error


def not_listed(pending: Mapping[TopicPartition, object], timeout_s: float,
               last_error: errors.TidelogError | None) -> errors.Timeout:
    return errors.Timeout(
        f"ListOffsets for {sorted(map(str, pending))} did not succeed within "
        f"{timeout_s:.1f} s (last error: {last_error})")



def list_offsets(
    metadata: Metadata, connections: Connections,
    specs: Mapping[TopicPartition, tuple[int, int]], *, timeout_s: float, backoff_s: float,
) -> dict[TopicPartition, int]:
    """{tp: (spec, timestamp_ms)} -> {tp: offset}; offset -1: no record at/after the timestamp."""
    deadline = time.monotonic() + timeout_s
    pending = dict(specs)
    found: dict[TopicPartition, int] = {}
    last_error: errors.TidelogError | None = None
    for topic in {tp.topic for tp in pending}:
        metadata.topic(topic, timeout_s=timeout_s)
    while pending:
        check_partitions(metadata, pending)
        for leader, tps in by_leader(metadata, pending).items():
            request = list_offsets_request(tps, pending)
            try:
                response = connections.call(
                    leader, "ListOffsets", request,
                    timeout_s=max(0.1, deadline - time.monotonic()))
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                last_error = exc
                for tp in tps:
                    note_failure(metadata, tp, exc)
                continue
            last_error = apply_list_offsets(metadata, response, pending, found) or last_error
        if not pending:
            break
        if time.monotonic() >= deadline:
            raise not_listed(pending, timeout_s, last_error)
        time.sleep(backoff_s)
        try:
            metadata.refresh({tp.topic for tp in pending})
        except errors.TidelogError as exc:
            last_error = exc
    return found
