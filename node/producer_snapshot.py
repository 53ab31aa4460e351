"""`producers.snapshot`: the idempotent-producer state of the batches retention deleted.

A replica rebuilds its producer table from the batch headers in its log when it opens or its
log tail is cut. Once retention deletes a producer's every batch, the log no longer knows it: a
retry (or a zombie's copy) of a deleted batch would be appended again and a gap in its
sequences accepted. So before Replica.truncate_prefix moves the log start (raft.state first,
then the log), it writes this file: the table of the batches below the new start (Kafka keeps
such `.snapshot` files at segment boundaries). Rebuilding restores it and replays the log from
its `start` on.

A snapshot whose `start` lies below the log start is stale (the log was reset to a leader's log
start, INSTALL_LOG_START): it is ignored, and the replica knows only the producers of its log,
as a Kafka follower that truncates fully. One file per replica, rewritten at every cut (atomic,
durable, checksummed: node/storage/metafile.py); a damaged one is ignored with a warning.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tidelog.node.producer_state import RECENT_BATCHES_MAX, BatchRecord, ProducerEntry
from tidelog.node.storage import CorruptFileError
from tidelog.node.storage.fs import OS_FS, FileSystem
from tidelog.node.storage.metafile import read_checksummed, write_checksummed

__all__ = ["PRODUCER_SNAPSHOT_FILE", "ProducerSnapshot", "read_snapshot", "write_snapshot"]

log = logging.getLogger(__name__)

PRODUCER_SNAPSHOT_FILE = "producers.snapshot"


@dataclass(frozen=True, slots=True)
class ProducerSnapshot:
    start: int
    """The state of every batch ending before this offset."""
    producers: dict[int, ProducerEntry]

    def encode(self) -> bytes:
        return json.dumps({"start": self.start, "producers": [
            [pid, e.epoch, [[r.first_sequence, r.last_sequence, r.base_offset, r.last_offset,
                             r.term] for r in e.recent]]
            for pid, e in sorted(self.producers.items())]}).encode()

    @classmethod
    def decode(cls, data: bytes) -> ProducerSnapshot:
        d = json.loads(data)
        producers = {
            int(pid): ProducerEntry(epoch=int(epoch), recent=deque(
                (BatchRecord(*map(int, r)) for r in records), maxlen=RECENT_BATCHES_MAX))
            for pid, epoch, records in d["producers"]}
        return cls(start=int(d["start"]), producers=producers)


def write_snapshot(directory: Path, snapshot: ProducerSnapshot, fs: FileSystem = OS_FS) -> None:
    """Atomic and durable (blocking: run it off the event loop)."""
    write_checksummed(directory / PRODUCER_SNAPSHOT_FILE, snapshot.encode(), fs=fs)


def read_snapshot(directory: Path, fs: FileSystem = OS_FS) -> ProducerSnapshot | None:
    path = directory / PRODUCER_SNAPSHOT_FILE
    try:
        data = read_checksummed(path, fs=fs)
        return ProducerSnapshot.decode(data) if data is not None else None
    except (CorruptFileError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: ignoring a damaged producer snapshot (%s): producers whose batches "
                    "retention deleted are forgotten", path, exc)
        return None
