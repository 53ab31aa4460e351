"""A replica begins a Ready while stepping the message (or proposal) that made it (issue 16).

Real Replicas on real files with the node's GroupCommitter. When the drive task is idle, the
append, a leader's AppendEntries and the fsync request happen before ``step``/``propose``
returns (each used to wait one pass of the event loop for the drive task); the acknowledgement
still leaves only once the log and the durable marker are on disk. And a produce waiter that
times out forgets only itself, never another request waiting for the same offset.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tidelog.node.group_commit import GroupCommitter
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
from tidelog.node.storage import LogConfig
from tidelog.proto.batch import decode_header

from .wire import batch_of

pytestmark = pytest.mark.timeout(60)


def _replica(directory: Path, node: int, voters: tuple[int, ...],
             send: list[tuple[Message, int]] | None = None) -> Replica:
    replica: Replica

    def record(group: str, message: Message) -> None:
        assert send is not None
        last = replica._marker.last  # what was durable on disk when the message left
        send.append((message, last.durable_upto if last is not None else -1))

    replica = Replica(group="7/0", directory=directory, log_config=LogConfig(),
                      raft_config=RaftConfig(node_id=NodeId(node),
                                             voters=tuple(NodeId(v) for v in voters)),
                      committer=GroupCommitter(), send=record, seed=1)
    return replica


async def _lead(replica: Replica) -> None:
    replica.start()
    for _ in range(300):
        if replica.is_leader and replica.high_watermark == replica.log.log_end_offset:
            return
        replica.tick()
        await asyncio.sleep(0.01)
    raise AssertionError("no leader")


def test_a_follower_appends_and_starts_its_fsync_while_stepping_and_acks_once_durable(
        tmp_path: Path) -> None:
    async def run() -> None:
        sent: list[tuple[Message, int]] = []
        follower = _replica(tmp_path, 2, (1, 2, 3), sent)
        follower.start()
        await asyncio.sleep(0.05)  # the drive task is idle, waiting for work
        data = batch_of([b"one"])
        follower.step(Message(type=MessageType.APPEND, frm=NodeId(1), to=NodeId(2),
                              term=Term(1), index=LogIndex(-1), log_term=Term(0),
                              entries=(Entry(term=Term(1), index=LogIndex(0), count=1,
                                             kind=EntryKind.DATA, data=data),)))
        # Before any await: appended, and the fsync job already handed to the executor.
        assert follower.log.log_end_offset == 1
        assert follower._committer._flushing
        assert not any(m.type is MessageType.APPEND_RESP for m, _ in sent)
        for _ in range(500):
            if any(m.type is MessageType.APPEND_RESP for m, _ in sent):
                break
            await asyncio.sleep(0.01)
        acks = [(m, durable) for m, durable in sent if m.type is MessageType.APPEND_RESP]
        assert acks and acks[0][0].index == 0 and not acks[0][0].reject
        assert acks[0][1] >= 0, "acknowledged before the marker recorded offset 0 as durable"
        assert follower.log.durable_end_offset == 1
        await follower.close()

    asyncio.run(run())


def test_a_leader_appends_a_proposal_before_propose_returns(tmp_path: Path) -> None:
    async def run() -> None:
        leader = _replica(tmp_path, 1, (1,), [])
        await _lead(leader)
        await asyncio.sleep(0.05)
        end = leader.log.log_end_offset
        batch = batch_of([b"a", b"b"])
        ((first, last),) = leader.propose([(batch, decode_header(batch))])
        assert (first, last) == (end, end + 1)
        assert leader.log.log_end_offset == end + 2  # appended, no loop pass needed
        await leader.wait_committed(last, leader.term, 10)
        await leader.close()

    asyncio.run(run())


def test_a_waiter_that_times_out_leaves_another_waiter_for_the_same_offset(
        tmp_path: Path) -> None:
    async def run() -> None:
        leader = _replica(tmp_path, 1, (1,), [])
        await _lead(leader)
        offset, term = leader.log.log_end_offset, leader.term
        patient = asyncio.create_task(leader.wait_committed(offset, term, 10))
        await asyncio.sleep(0)  # registered first
        with pytest.raises(TimeoutError):
            await leader.wait_committed(offset, term, 0.01)
        batch = batch_of([b"x"])
        leader.propose([(batch, decode_header(batch))])
        await asyncio.wait_for(patient, 5)  # was removed in its place, and waited 10 s
        await leader.close()

    asyncio.run(run())
