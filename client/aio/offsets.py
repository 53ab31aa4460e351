"""ListOffsets for the asyncio client: the sync client's client/offsets.py loop, awaited.

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
from tidelog.client.offsets import EARLIEST, LATEST, TIMESTAMP
from tidelog.client.records import TopicPartition

__all__ = ["EARLIEST", "LATEST", "TIMESTAMP", "list_offsets"]


async def list_offsets(metadata: AioMetadata, specs: Mapping[TopicPartition, tuple[int, int]],
                       *, timeout_s: float, backoff_s: float) -> dict[TopicPartition, int]:
    """{tp: (spec, timestamp_ms)} -> {tp: offset}; -1: no record at/after the timestamp."""
    from tidelog.proto import broker_pb2

    deadline = time.monotonic() + timeout_s
    pending = dict(specs)
    found: dict[TopicPartition, int] = {}
    last_error: errors.TidelogError | None = None
    for topic in {tp.topic for tp in pending}:
        await metadata.topic_async(topic, timeout_s=timeout_s)
    while pending:
        by_leader: dict[str, list[TopicPartition]] = {}
        for tp in pending:
            description = metadata.cached_topic(tp.topic)
            if description is None:
                raise errors.TopicNotFound(f"topic {tp.topic!r} does not exist")
            if not 0 <= tp.partition < len(description.partitions):
                raise errors.TopicNotFound(
                    f"{tp}: topic {tp.topic!r} has {len(description.partitions)} partitions")
            leader = metadata.leader_address(tp.topic, tp.partition)
            if leader is None:
                metadata.mark_stale(tp.topic)
                continue
            by_leader.setdefault(leader, []).append(tp)
        calls = {leader: metadata.aio.call(
            leader, "ListOffsets", broker_pb2.ListOffsetsRequest(partitions=[
                broker_pb2.ListOffsetsPartition(topic=tp.topic, partition=tp.partition,
                                                spec=pending[tp][0], timestamp_ms=pending[tp][1])
                for tp in tps]), timeout_s=max(0.1, deadline - time.monotonic()))
            for leader, tps in by_leader.items()}
        answers = await asyncio.gather(*calls.values(), return_exceptions=True)
        for tps, answer in zip(by_leader.values(), answers, strict=True):
            if isinstance(answer, errors.TidelogError):
                if not answer.retriable:
                    raise answer
                last_error = answer
                for tp in tps:
                    metadata.mark_stale(tp.topic)
                continue
            if isinstance(answer, BaseException):
                raise answer
            for result in answer.results:
                tp = TopicPartition(result.topic, result.partition)
                if tp not in pending:
                    continue
                if result.error:
                    error = errors.from_code(result.error, result.error_message, subject=str(tp),
                                             leader_id=result.leader_id)
                    if not error.retriable:
                        raise error
                    last_error = error
                    metadata.mark_stale(tp.topic, partition=tp.partition,
                                        leader_id=result.leader_id,
                                        leader_address=metadata.node_address(result.leader_id)
                                        or "")
                    continue
                found[tp] = result.offset
                del pending[tp]
        if not pending:
            break
        if time.monotonic() >= deadline:
            raise errors.Timeout(f"ListOffsets for {sorted(map(str, pending))} did not succeed "
                                 f"within {timeout_s:.1f} s (last error: {last_error})")
        await asyncio.sleep(backoff_s)
        try:
            await metadata.refresh_async({tp.topic for tp in pending})
        except errors.TidelogError as exc:
            last_error = exc
    return found
