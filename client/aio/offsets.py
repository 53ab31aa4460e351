"""ListOffsets for the asyncio client: the sync client's client/offsets.py loop, awaited, with
its sans-I/O steps (check_partitions, list_offsets_request, apply_list_offsets, not_listed) and
client/routing.py's by_leader / note_failure.

One request per leader; NOT_LEADER and unreachable leaders refresh the metadata and retry with
backoff until the timeout. Shared by AIOConsumer (seek_to_*, offsets_for_times,
auto_offset_reset) and AIOAdmin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from tidelog.client import errors
from tidelog.client.aio.metadata import AioMetadata
from tidelog.client.offsets import (
    EARLIEST,
    LATEST,
    TIMESTAMP,
    apply_list_offsets,
    check_partitions,
    list_offsets_request,
    not_listed,
)
from tidelog.client.records import TopicPartition
from tidelog.client.routing import by_leader, note_failure

__all__ = ["EARLIEST", "LATEST", "TIMESTAMP", "list_offsets"]


async def list_offsets(metadata: AioMetadata, specs: Mapping[TopicPartition, tuple[int, int]],
                       *, timeout_s: float, backoff_s: float) -> dict[TopicPartition, int]:
    """{tp: (spec, timestamp_ms)} -> {tp: offset}; -1: no record at/after the timestamp."""
    deadline = time.monotonic() + timeout_s
    pending = dict(specs)
    found: dict[TopicPartition, int] = {}
    last_error: errors.TidelogError | None = None
    for topic in {tp.topic for tp in pending}:
        await metadata.topic_async(topic, timeout_s=timeout_s)
    while pending:
        check_partitions(metadata, pending)
        grouped = by_leader(metadata, pending)
        calls = {leader: metadata.aio.call(
            leader, "ListOffsets", list_offsets_request(tps, pending),
            timeout_s=max(0.1, deadline - time.monotonic()))
            for leader, tps in grouped.items()}
        answers = await asyncio.gather(*calls.values(), return_exceptions=True)
        for tps, answer in zip(grouped.values(), answers, strict=True):
            if isinstance(answer, errors.TidelogError):
                if not answer.retriable:
                    raise answer
                last_error = answer
                for tp in tps:
                    note_failure(metadata, tp, answer)
                continue
            if isinstance(answer, BaseException):
                raise answer
            last_error = apply_list_offsets(metadata, answer, pending, found) or last_error
        if not pending:
            break
        if time.monotonic() >= deadline:
            raise not_listed(pending, timeout_s, last_error)
        await asyncio.sleep(backoff_s)
        try:
            await metadata.refresh_async({tp.topic for tp in pending})
        except errors.TidelogError as exc:
            last_error = exc
    return found
