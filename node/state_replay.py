"""Replay of a coordinator's state partition when this node becomes its leader.

The group coordinator (`__consumer_offsets`) and the queue coordinator (`__queue_state`) keep
their state in a partition they lead and rebuild it the same way on leadership: wait until the
new term's first entry is committed (a Raft leader's entry of its own term commits only with
everything before it, so the committed log then holds every write ever acknowledged), then read
every committed data record from the log start in order and feed it to the state machine.
`local_batches` is the synchronous read of a local log's committed batches that the metadata
group replays at start-up (from its snapshot on, node/metadata_snapshot.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from tidelog.node.replica import Replica
from tidelog.node.storage import PartitionLog
from tidelog.proto.batch import BatchHeader, decode_records, iter_batches

__all__ = ["COMMIT_POLL_S", "READ_BYTES", "local_batches", "replay_committed"]

READ_BYTES = 1 << 20      # per read of the log while replaying
COMMIT_POLL_S = 0.02      # how often the wait for the term's first commit looks again

Feed = Callable[[bytes | None, bytes | None], None]   # (key, value) of one record


def local_batches(plog: PartitionLog, start: int,
                  upto: int) -> Iterator[tuple[BatchHeader, bytes]]:
    """The stored batches of a local log that end at or before `upto` (its commit index), from
    the one holding `start` (clamped to the log start), control batches included, in order:
    the metadata group's replay at start-up (node/metadata_service.py), which runs before the
    event loop serves anything and so reads synchronously."""
    offset = max(start, plog.log_start_offset)
    while offset <= upto and offset < plog.log_end_offset:
        raw = plog.read(offset, READ_BYTES)
        if not raw:
            return
        for pos, header in iter_batches(raw):
            if header.last_offset > upto:
                return
            yield header, raw[pos:pos + header.size]
            offset = header.last_offset + 1


async def replay_committed(replica: Replica, term: int, feed: Feed) -> int | None:
    """Feed every committed data record of `replica`'s log, in offset order, once the leader's
    first entry of `term` is committed. Returns how many records were fed, or None when the
    replica stopped leading in `term` before that commit (the caller then gives up: whoever
    leads next replays). Control batches are skipped; the loop yields to the event loop after
    each read, so a long replay does not hold the node up."""
    target = replica.log.log_end_offset - 1
    while replica.commit_index < target:
        if not replica.is_leader or replica.term != term:
            return None
        await asyncio.sleep(COMMIT_POLL_S)
    offset = replica.log.log_start_offset
    records = 0
    while offset < replica.high_watermark:
        data = replica.read_committed(offset, READ_BYTES)
        if not data:
            break
        for pos, header in iter_batches(data):
            if not header.is_control:
                for record in decode_records(data[pos:pos + header.size]):
                    if record.offset >= offset:
                        feed(record.key, record.value)
                        records += 1
            offset = header.last_offset + 1
        await asyncio.sleep(0)
    return records
