"""ListOffsets, shared by Consumer (seek_to_*, offsets_for_times, auto_offset_reset) and Admin.

Requests go to each partition's leader (one request per leader); NOT_LEADER and unreachable
leaders refresh the metadata and retry with backoff until the timeout. Grouping by leader and
marking a failure (a NOT_LEADER hint applied at once) are tidelog.client.routing's, shared with
the fetcher and the admin client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from tidelog.client import errors
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.client.records import TopicPartition
from tidelog.client.routing import by_leader, note_failure

__all__ = ["EARLIEST", "LATEST", "TIMESTAMP", "list_offsets"]

# Same numbers as tidelog.v1.OffsetSpec (kept here so callers need not import the proto).
LATEST = 0
EARLIEST = 1
TIMESTAMP = 2


def list_offsets(
    metadata: Metadata, connections: Connections,
    specs: Mapping[TopicPartition, tuple[int, int]], *, timeout_s: float, backoff_s: float,
) -> dict[TopicPartition, int]:
    """{tp: (spec, timestamp_ms)} -> {tp: offset}; offset -1: no record at/after the timestamp."""
    from tidelog.proto import broker_pb2

    deadline = time.monotonic() + timeout_s
    pending = dict(specs)
    found: dict[TopicPartition, int] = {}
    last_error: errors.TidelogError | None = None
    for topic in {tp.topic for tp in pending}:
        metadata.topic(topic, timeout_s=timeout_s)
    while pending:
        for tp in pending:
            description = metadata.cached_topic(tp.topic)
            if description is None:
                raise errors.TopicNotFound(f"topic {tp.topic!r} does not exist")
            if not 0 <= tp.partition < len(description.partitions):
                raise errors.TopicNotFound(
                    f"{tp}: topic {tp.topic!r} has {len(description.partitions)} partitions")
        for leader, tps in by_leader(metadata, pending).items():
            request = broker_pb2.ListOffsetsRequest(partitions=[
                broker_pb2.ListOffsetsPartition(
                    topic=tp.topic, partition=tp.partition, spec=pending[tp][0],
                    timestamp_ms=pending[tp][1])
                for tp in tps
            ])
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
            for result in response.results:
                tp = TopicPartition(result.topic, result.partition)
                if tp not in pending:
                    continue
                if result.error:
                    error = errors.from_code(result.error, result.error_message, subject=str(tp),
                                             leader_id=result.leader_id)
                    if not error.retriable:
                        raise error
                    last_error = error
                    note_failure(metadata, tp, error, leader_id=result.leader_id)
                    continue
                found[tp] = result.offset
                del pending[tp]
        if not pending:
            break
        if time.monotonic() >= deadline:
            raise errors.Timeout(
                f"ListOffsets for {sorted(map(str, pending))} did not succeed within "
                f"{timeout_s:.1f} s (last error: {last_error})")
        time.sleep(backoff_s)
        try:
            metadata.refresh({tp.topic for tp in pending})
        except errors.TidelogError as exc:
            last_error = exc
    return found
