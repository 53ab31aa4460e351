"""The replica defects of issue 11, re-injected by subclassing the real Replica (never by a flag in
shipped code). Each one must be caught by the simulator (tests/sim/test_planted_replica_bugs.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tidelog.node.raft import LogIndex, RaftConfig, Ready
from tidelog.node.replica import Replica
from tidelog.node.replica_state import RAFT_STATE_FILE, MarkerRecord
from tidelog.node.storage import write_checksummed

from tests.raft.bugs import CommitsOldTerms


class StateBeforeLog(Replica):
    """Defect 1: raft.state (term, vote AND commit) is written before the truncation and append it
    depends on, as the old drive loop did. A crash between the two writes restarts the replica
    with a commit index over entries that never committed here."""

    _start_at_once = False  # the defect is in _handle: every Ready goes through it

    async def _handle(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            hs = rd.hard_state
            await self._write_state(term=int(hs.term), vote=hs.vote, commit=int(hs.commit))
        await super()._handle(rd)


class RecoverToFromCommit(Replica):
    """Defect 4: "recover to" recomputed from the lazily saved commit index instead of the durable
    marker: a replica whose torn-tail cut took entries it acknowledged votes again at once."""

    def _recover_to(self, commit: int, marker: MarkerRecord | None) -> Any:
        report = self.log.recovery
        last = self.log.log_end_offset - 1
        self._recovering = bool(report.truncated or report.corrupt) and commit > last
        return commit if self._recovering else None


class LazyCommitOverState(Replica):
    """Defect 6: a commit-only change renames an un-fsynced temp file over raft.state (at most
    every 50 ms here): a power cut can leave a raft.state that fails its checksum."""

    _start_at_once = False  # the defect is in _handle: every Ready goes through it

    _lazy_written_ms = 0

    async def _handle(self, rd: Ready) -> None:
        await super()._handle(rd)
        now = self._clock.monotonic_ms()
        if rd.hard_state is not None and now - self._lazy_written_ms >= 50:
            self._lazy_written_ms = now
            state = dataclasses.replace(self._state, commit=int(rd.hard_state.commit))
            write_checksummed(self.directory / RAFT_STATE_FILE, state.encode(), durable=False,
                              fs=self._fs)


class StateReplacedBeforeWrite(Replica):
    """Defect 7: the in-memory saved state is replaced before the write; when the disk is full
    the write fails, and the retry sees nothing to write and sends the vote anyway."""

    # The defect is in _write_state, which both ways of taking a Ready reach through the drive
    # task; the seed search that catches it was measured with the drive task taking every Ready.
    _start_at_once = False

    async def _write_state(self, **changes: Any) -> None:
        new = dataclasses.replace(self._state, **changes)
        if new == self._state:
            return
        self._state = new
        await self._store_state(new)


class RebuildsRaftConfig(Replica):
    """Defect 11: the replica rebuilds its RaftConfig from a few fields, dropping pre_vote,
    check_quorum, max_committed_bytes and promote_lag_max (they fall back to defaults)."""

    def __init__(self, *, raft_config: RaftConfig, **kwargs: Any) -> None:
        c = raft_config
        rebuilt = RaftConfig(node_id=c.node_id, voters=c.voters, learners=c.learners,
                             election_ticks=c.election_ticks, heartbeat_ticks=c.heartbeat_ticks,
                             max_inflight_msgs=c.max_inflight_msgs,
                             max_append_bytes=c.max_append_bytes)
        super().__init__(raft_config=rebuilt, **kwargs)


class CommitsOldTermsUnguarded(CommitsOldTerms):
    """The Figure-8 bug without the core's own assertion (``_check_commit``), so that the
    simulator's checker, not the core, has to see the committed entry that gets lost."""

    def _check_commit(self, index: LogIndex) -> None:
        pass
