"""A replica counts the control batches in its log, so lag can count records (issue 15).

A real single-voter Replica on real files, with the core's default config (a NOOP at every
election, the paper's rule), elected twice around a restart: NOOP, 3 records, NOOP, 2 records.
The count comes from the appends while running and from the batch headers after a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.raft import NodeId, RaftConfig
from tidelog.node.replica import Replica
from tidelog.node.storage import LogConfig
from tidelog.proto.batch import decode_header

from .wire import batch_of

pytestmark = pytest.mark.timeout(60)


def _open(directory: Path) -> Replica:
    return Replica(group="7/0", directory=directory, log_config=LogConfig(),
                   raft_config=RaftConfig(node_id=NodeId(1), voters=(NodeId(1),)),
                   committer=GroupCommitter(), send=lambda group, message: None, seed=1)


async def _lead_and_write(replica: Replica, records: int) -> int:
    replica.start()
    for _ in range(200):
        if replica.is_leader and replica.high_watermark == replica.log.log_end_offset:
            break
        replica.tick()
        await asyncio.sleep(0.01)
    assert replica.is_leader
    batch = batch_of([f"r{i}".encode() for i in range(records)])
    ((first, last),) = replica.propose([(batch, decode_header(batch))])
    await replica.wait_committed(last, replica.term, 10)
    return first


def test_control_records_are_counted_while_running_and_after_a_restart(tmp_path: Path) -> None:
    async def run() -> None:
        replica = _open(tmp_path)
        assert await _lead_and_write(replica, 3) == 1  # the NOOP took offset 0
        assert replica.control_records_between(0, 4) == 1
        assert replica.records_between(0, 4) == 3
        await replica.close()
        replica = _open(tmp_path)
        assert replica.control_records_between(0, 4) == 1  # rebuilt from the batch headers
        assert await _lead_and_write(replica, 2) == 5
        end = replica.high_watermark
        assert end == 7
        assert replica.control_records_between(0, end) == 2
        assert replica.records_between(0, end) == 5
        assert replica.records_between(1, end) == 5  # from the first record
        assert replica.records_between(4, end) == 2  # from the second NOOP
        assert replica.records_between(5, 5) == 0
        await replica.close()

    asyncio.run(run())
