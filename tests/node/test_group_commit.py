"""The node's asyncio group commit (node/group_commit.py) over real partition logs.

Why these claims: `GroupCommitter` starts the executor job itself and the job calls back into the
loop (no flusher task); the tests pin what callers rely on: a returning `sync()` means durable,
requests made while a flush runs share the next one, a failed fsync fails every writer of its
round (and only those), and later rounds still run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.sim.simfs import SimFileSystem
from tidelog.node.storage import LogConfig, PartitionLog, StorageError
from tidelog.proto.batch import Codec, encode_batch


def _log(directory: Path, fs: SimFileSystem | None = None) -> PartitionLog:
    if fs is None:
        return PartitionLog.open(directory, LogConfig())
    return PartitionLog.open(directory, LogConfig(), fs=fs)


def _append(log: PartitionLog, n: int = 3) -> None:
    for i in range(n):
        log.append(encode_batch([(None, b"v%d" % i, (), 1_700_000_000_000 + i)],
                                codec=Codec.NONE), term=1)


def test_writers_during_a_flush_share_the_next_one_and_each_return_means_durable(
        tmp_path: Path) -> None:
    logs = [_log(tmp_path / f"p{i}") for i in range(4)]
    for log in logs:
        _append(log)
    committer = GroupCommitter()

    async def main() -> None:
        # The first sync starts a flush at once; the other three ask while it runs.
        await asyncio.gather(*(committer.sync(log) for log in logs))

    asyncio.run(main())
    for log in logs:
        assert log.durable_end_offset == log.log_end_offset == 3
        log.close()
    assert (committer.flushes, committer.synced_logs) == (2, 4)


def test_a_failed_fsync_fails_every_writer_of_its_round_and_later_rounds_still_run() -> None:
    fs = SimFileSystem()
    fs.mkdir(Path("/data"))
    alone, second, third = (_log(Path(f"/data/{name}"), fs) for name in ("a", "b", "c"))
    for log in (alone, second, third):
        _append(log)
    committer = GroupCommitter()
    fs.fail_next_fsync()  # the next fsync of any file: the first round's, `alone`'s log

    async def main() -> list[BaseException | None]:
        outcomes = await asyncio.gather(committer.sync(alone), committer.sync(second),
                                        committer.sync(third), return_exceptions=True)
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    outcomes = asyncio.run(main())
    # Round 1: `alone` (started at once, its fsync fails); round 2: the two that asked meanwhile.
    assert isinstance(outcomes[0], StorageError), outcomes
    assert outcomes[1:] == [None, None], outcomes
    assert (committer.flushes, committer.synced_logs) == (1, 2)

    async def again() -> None:
        _append(third, 1)
        await committer.sync(third)

    asyncio.run(again())
    assert third.durable_end_offset == third.log_end_offset == 4
    with pytest.raises(StorageError):
        alone.sync()  # a log whose fsync failed is fenced, never reported durable
