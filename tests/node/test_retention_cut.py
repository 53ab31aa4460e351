"""node/retention.py's cut on a real follower Replica over real files, fed by its leader's
APPEND messages: retention never removes entries that are not applied (docs/raft.md: up to
min(applied, persisted)), even when whole sealed segments of them are past retention.bytes; it
cuts at an entry boundary; once everything is applied it cuts at the first kept segment, through
Replica.truncate_prefix, and the new log start and its term survive a restart. Which policy
applies comes from the topic configs: compaction-only and keep-forever topics are never cut.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.producer_snapshot import PRODUCER_SNAPSHOT_FILE
from tidelog.node.raft import (
    Entry,
    EntryKind,
    LogIndex,
    Message,
    MessageType,
    NodeId,
    RaftConfig,
    Term,
)
from tidelog.node.replica import Replica
from tidelog.node.retention import RetentionPolicy, policy_of, retention_cut
from tidelog.node.storage import LogConfig

from .wire import batch_of

pytestmark = pytest.mark.timeout(60)

SIZE_ONLY = RetentionPolicy(retention_ms=None, retention_bytes=1)


def _open(directory: Path) -> Replica:
    return Replica(group="7/0", directory=directory,
                   log_config=LogConfig(segment_bytes_max=4096, batch_bytes_max=4096),
                   raft_config=RaftConfig(node_id=NodeId(1), voters=(NodeId(1), NodeId(2))),
                   committer=GroupCommitter(), send=lambda group, message: None, seed=1)


def _append(entries: tuple[Entry, ...], prev: int, commit: int) -> Message:
    """What leader 2 (term 1) sends: the real core of replica 1 handles it."""
    return Message(type=MessageType.APPEND, frm=NodeId(2), to=NodeId(1), term=Term(1),
                   index=LogIndex(prev), log_term=Term(1 if prev >= 0 else 0),
                   entries=entries, commit=LogIndex(commit))


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_retention_cuts_only_what_is_applied_at_an_entry_boundary(tmp_path: Path) -> None:
    async def run() -> None:
        replica = _open(tmp_path)
        replica.start()
        # 12 entries of 2 records (~2 KiB each, incompressible): sealed segments of 1-2 entries
        entries = tuple(Entry(term=Term(1), index=LogIndex(2 * i), count=2, kind=EntryKind.DATA,
                              data=batch_of([os.urandom(1000), os.urandom(1000)]))
                        for i in range(12))
        replica.step(_append(entries, prev=-1, commit=-1))
        await _until(lambda: replica.core.log.persisted_index() == 23)
        segments = replica.log.segment_base_offsets
        assert len(segments) >= 4, segments
        assert replica.core.applied == -1
        assert retention_cut(replica, SIZE_ONLY, now_ms=0) is None  # nothing applied yet

        replica.step(_append((), prev=23, commit=10))  # offset 10 is inside the 6th entry
        await _until(lambda: replica.core.applied >= 9)
        assert replica.core.applied == 9  # the entry ending at 9: commit moves by entries
        upto = retention_cut(replica, SIZE_ONLY, now_ms=0)
        assert upto == 9, (upto, segments)  # clamped to applied, an entry boundary
        await replica.truncate_prefix(upto)
        assert replica.log.log_start_offset == 10

        replica.step(_append((), prev=23, commit=23))
        await _until(lambda: replica.core.applied == 23)
        kept = replica.log.segment_base_offsets[-1]
        assert retention_cut(replica, SIZE_ONLY, now_ms=0) == kept - 1
        await replica.truncate_prefix(kept - 1)
        assert replica.log.segment_base_offsets == [kept]
        assert retention_cut(replica, SIZE_ONLY, now_ms=0) is None  # the active one stays
        assert (tmp_path / PRODUCER_SNAPSHOT_FILE).exists()
        await replica.close()

        replica = _open(tmp_path)  # raft.state and the log agree on the new start
        assert replica.log.log_start_offset == kept
        assert replica.raft_log.term_at(kept - 1) == 1
        await replica.close()

    asyncio.run(run())


def test_only_delete_topics_with_a_limit_are_cut() -> None:
    assert policy_of({}) == RetentionPolicy(retention_ms=604800000, retention_bytes=None)
    assert policy_of({"retention.ms": "-1"}) is None
    assert policy_of({"cleanup.policy": "compact", "retention.ms": "1"}) is None
    assert policy_of({"cleanup.policy": "compact,delete", "retention.bytes": "5"}) == \
        RetentionPolicy(retention_ms=604800000, retention_bytes=5)
