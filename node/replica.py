"""One local replica of one Raft group: the thin I/O shell around RaftCore and a PartitionLog.

The drive loop does exactly what each Ready says, in etcd's order: reset/truncate/append the log →
fsync the log and then the durable "recover to" marker (one group-commit job shared with every
other replica on the node) → persist term, vote and membership (atomic, fsynced; the commit index
recorded with them never above the durable log) → send messages → apply committed entries →
resolve waiters → advance. It makes no protocol decisions; what lives in which file is in
replica_state.py. Produce requests wait on a commit waiter: acks=all answers only when the commit
index covers the batch AND the entry at that offset still has the term it was proposed in, so an
entry replaced after a leadership change is never acknowledged.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import errno
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tidelog.node.clock import SYSTEM_CLOCK, Clock
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.metrics.raft import record_dropped_proposal
from tidelog.node.producer_snapshot import ProducerSnapshot, read_snapshot, write_snapshot
from tidelog.node.producer_state import ProducerStateTable
from tidelog.node.raft import (
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    LogReader,
    Message,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
    Term,
)
from tidelog.node.raft_log import PartitionRaftLog, to_batch
from tidelog.node.replica_state import (
    DurableMarker,
    MarkerRecord,
    RaftStateFile,
    read_state,
    write_state,
)
from tidelog.node.storage import (
    DamagePolicy,
    DiskFullError,
    FsyncMode,
    LogConfig,
    PartitionLog,
    StorageError,
)
from tidelog.node.storage.dirs import ensure_directory
from tidelog.node.storage.fs import OS_FS, FileSystem
from tidelog.proto.batch import BatchHeader, iter_batches

log = logging.getLogger(__name__)

DISK_FULL_RETRY_S = 1.0


class CoreFactory(Protocol):
    """RaftCore's constructor; tests pass a subclass with a planted bug."""

    def __call__(self, config: RaftConfig, log: LogReader, *, rng: random.Random,
                 hard_state: HardState | None = None,
                 recover_to: LogIndex | None = None) -> RaftCore: ...


@dataclass(order=True)
class _CommitWaiter:
    last_offset: int
    term: int = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


@dataclass(slots=True)
class _StartedReady:
    """A Ready whose first, synchronous part (truncate, append, a leader's early send, the fsync
    asked for) ran at once in ``step``/``propose``; the drive task does the rest."""

    ready: Ready
    send_early: bool = False
    synced: asyncio.Future[None] | None = None
    done: bool = False  # the first part ran without an error
    error: BaseException | None = None  # it failed: the drive task raises this


class ReplicaLostLeadership(Exception):
    """The write may or may not commit later: this replica is no longer the leader."""


class Replica:
    """A Raft group replica hosted by this node. Owned by the event loop."""

    def __init__(
        self,
        *,
        group: str,
        directory: Path,
        log_config: LogConfig,
        raft_config: RaftConfig,
        committer: GroupCommitter,
        send: Callable[[str, Message], None],
        on_soft_state: Callable[[Replica], None] = lambda r: None,
        apply: Callable[[Replica, Entry], None] | None = None,
        before_log_reset: Callable[[int, int], Awaitable[None]] | None = None,
        seed: int | None = None,
        fs: FileSystem = OS_FS,
        clock: Clock = SYSTEM_CLOCK,
        core_factory: CoreFactory = RaftCore,
        disk_full_retry_s: float = DISK_FULL_RETRY_S,
    ) -> None:
        """``fs``/``clock``: the seams the simulator replaces with its twins (tidelog.node.sim);
        ``core_factory``: tests pass a RaftCore subclass with a planted bug;
        ``before_log_reset(start, term)``: awaited before a log reset (INSTALL_LOG_START) is
        recorded, so a state machine can first make durable the state of the entries the reset
        drops (the metadata group fetches the leader's snapshot: node/metadata_service.py)."""
        self.group = group
        self.directory = directory
        self._fs = fs
        self._clock = clock
        self._disk_full_retry_s = disk_full_retry_s
        ensure_directory(directory, fs=fs)  # durably: the name lives in its parent
        self.log = _open_log(directory, log_config, fs, clock)
        self._sync_always = log_config.fsync.mode is FsyncMode.ALWAYS
        state = read_state(directory, fs)
        state = self._finish_log_start(state)
        self._marker = DurableMarker(directory, fs)
        membership = state.membership or raft_config.membership
        # Every field the caller gave is kept (pre_vote, check_quorum, limits); only the
        # membership comes from disk, where the core reported it (defect 11 of issue 11).
        config = raft_config.with_membership(membership) if state.membership is not None \
            else raft_config
        prefix_term = state.prefix_term if state.log_start in (-1, self.log.log_start_offset) \
            else 0  # the start moved without its term being recorded: claim the oldest term
        self.raft_log = PartitionRaftLog(self.log, prefix_term=prefix_term)
        marker = self._marker.last
        commit = max(state.commit, marker.commit if marker is not None else -1)
        recover_to = self._recover_to(commit, marker)
        self.core = core_factory(
            config, self.raft_log, rng=random.Random(seed),
            hard_state=HardState(term=Term(state.term),
                                 vote=NodeId(state.vote) if state.vote is not None else None,
                                 commit=LogIndex(commit)),
            recover_to=recover_to,
        )
        self._state = dataclasses.replace(state, membership=membership)
        self._committer = committer
        self._durable = _LogAndMarker(self.log, self._marker)
        self._send = send
        self._on_soft_state = on_soft_state
        self._apply = apply
        self._before_log_reset = before_log_reset
        self.producers = ProducerStateTable()
        self._producers_upto = -1  # producer table reflects the log up to this offset
        # Base offsets of the control batches (Raft NOOP, CONFIG; one offset each) in the log,
        # ascending: lag counts records, not offsets (records_between). Rebuilt from the batch
        # headers with the producer table, kept up to date by every append. A few per leader
        # change: small.
        self._control_offsets: list[int] = []
        self._rebuild_producer_state()
        self.commit_index = self.core.commit
        self._waiters: list[_CommitWaiter] = []
        self._data_changed = asyncio.Event()
        self._appended = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Invariant: _busy from the moment a Ready is taken until it is advanced; _started is
        # a Ready taken (and begun) by step/propose that the drive task has not picked up yet.
        self._busy = False
        self._started: _StartedReady | None = None
        self._closed = False
        self.error: BaseException | None = None
        self.storage_error: BaseException | None = None  # set while the disk is full
        self._state_lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._drive(), name=f"raft-{self.group}")
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        self._fail_waiters(ReplicaLostLeadership(f"replica {self.group} is closing"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        started, self._started = self._started, None
        if started is not None and started.synced is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await started.synced  # nobody else waits for it: let the fsync finish
        commit = self.core.commit
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._close_files, commit))

    def _close_files(self, commit: int) -> None:
        """Leave the latest commit index behind (durably, never above the durable log)."""
        with contextlib.suppress(OSError, StorageError):
            durable_end = self.log.sync()
            upto = self._durable.promise(durable_end - 1, recovering=self._recovering)
            commit = min(commit, durable_end - 1)
            last = self._marker.last
            if last is None or (last.durable_upto, last.commit) != (upto, commit):
                self._marker.write(durable_upto=upto, commit=commit)
        self._marker.close()
        self.log.close()

    async def truncate_prefix(self, upto: int) -> None:
        """Retention: drop the entries ending at or before the entry boundary ``upto``, which
        must be applied. The producer state of the deleted batches is written first
        (producers.snapshot), then the new log start and its term in raft.state, so a crash
        between those and the log's cut is finished on restart. Both under the state lock: a
        log reset (INSTALL_LOG_START) or another cut that got there first makes this one moot."""
        term = self.raft_log.term_at(upto)
        assert term is not None and upto <= self.core.applied, (upto, term, self.core.applied)
        async with self._state_lock:
            if self._state.log_start > upto:
                return
            snapshot = ProducerSnapshot(upto + 1, self.producers.snapshot_below(upto + 1))
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(write_snapshot, self.directory, snapshot, self._fs))
            await self._store_state(dataclasses.replace(
                self._state, log_start=upto + 1, prefix_term=int(term), reset=False))
        self.log.truncate_prefix(upto + 1)  # on the loop: the core reads the log start live
        self.raft_log.prefix_term = int(term)
        del self._control_offsets[:bisect.bisect_left(self._control_offsets, upto + 1)]

    # -- inputs ---------------------------------------------------------------------------------

    def step(self, message: Message) -> None:
        """A local storage error while stepping (the core reads the log) stops the replica:
        the core may be half-updated, only a restart from disk is safe."""
        if self.error is not None:
            return
        try:
            self.core.step(message)
        except StorageError as exc:
            self._stop(exc)
            return
        if self.core.commit > self.commit_index and self.core.role is Role.LEADER:
            self._answer_committed()
        self._start_ready()

    def _answer_committed(self) -> None:
        """A leader answers writes as soon as its core's commit index covers them (stepping the
        acknowledgements that made a majority), not one Ready later: the Ready that reports the
        new commit index can only be taken once the current one is done, which includes the
        leader's own fsync. Committed means durable on a majority, which may be two followers
        while the leader's own fsync is still running (thesis §10.2.1); the 16-consumer queue
        benchmark showed rounds held 10-17 ms by a slow local fsync this way. The high watermark
        moves with it, so a write answered here is readable here at once (from the page cache;
        committed entries are applied locally only once durable here, by the Ready). Only entries
        this replica has appended count (the term check reads them from the local log)."""
        upto = min(int(self.core.commit), self.log.log_end_offset - 1)
        if upto > self.commit_index:
            self.commit_index = upto
            self._resolve_waiters()
            self._data_changed.set()

    def tick(self) -> None:
        if self.error is not None:
            return
        try:
            self.core.tick()
        except StorageError as exc:
            self._stop(exc)
            return
        self._wake.set()

    def _stop(self, exc: BaseException) -> None:
        self.error = exc
        log.error("replica %s stopped: %s", self.group, exc)
        self._fail_waiters(exc)
        self._wake.set()  # the drive loop sees the error and returns

    def report_unreachable(self, peer: int) -> None:
        self.core.report_unreachable(NodeId(peer))

    def propose(self, batches: list[tuple[bytes, BatchHeader]]) -> list[tuple[int, int]]:
        """Propose data batches (leader only); returns (base, last) offsets. Raises NotLeader."""
        try:
            firsts = self.core.propose_many([(b, h.last_offset_delta + 1) for b, h in batches])
        except (NotLeader, ProposalDropped):
            record_dropped_proposal()
            raise
        offsets = []
        for first, (_, header) in zip(firsts, batches, strict=True):
            last = first + header.last_offset_delta
            self.producers.record(header, first, self.core.term)
            self._producers_upto = max(self._producers_upto, last)
            offsets.append((first, last))
        self._start_ready()
        return offsets

    def transfer_leadership(self, to: int) -> None:
        self.core.transfer_leadership(NodeId(to))
        self._wake.set()

    def add_learner(self, node: int) -> int:
        """Propose a membership change (leader only); returns the CONFIG entry's offset."""
        index = self.core.add_learner(NodeId(node))
        self._wake.set()
        return index

    def promote(self, node: int) -> int:
        index = self.core.promote(NodeId(node))
        self._wake.set()
        return index

    def remove(self, node: int) -> int:
        index = self.core.remove(NodeId(node))
        self._wake.set()
        return index

    async def wait_committed(self, last_offset: int, term: int, timeout_s: float) -> None:
        """Until the commit index covers last_offset with the entry still of `term`."""
        if self.commit_index >= last_offset:
            self._check_term(last_offset, term)
            return
        waiter = _CommitWaiter(last_offset, term, asyncio.get_running_loop().create_future())
        bisect.insort(self._waiters, waiter)
        try:
            # The future itself is awaited, under asyncio.timeout: the task resumes one loop pass
            # after the commit resolves it. wait_for(shield(future)) took three (the shield's
            # callback, then wait_for's own waiter, then the task), each a full pass of a loop
            # busy with peer streams and other requests, on every write's answer path.
            async with asyncio.timeout(timeout_s):
                await waiter.future
        finally:
            if not waiter.future.done() or waiter.future.cancelled():
                # Timed out or cancelled: forget this waiter (by identity; waiters compare by
                # offset, and another request may wait for the same one).
                self._waiters = [w for w in self._waiters if w is not waiter]

    async def wait_appended(self, last_offset: int, term: int, timeout_s: float) -> None:
        """Until the local log holds last_offset (acks=leader: appended, not yet replicated)."""
        async with asyncio.timeout(timeout_s):
            while self.log.log_end_offset <= last_offset:
                if not self.is_leader:
                    raise ReplicaLostLeadership(f"{self.group}: leadership moved")
                self._appended.clear()
                await self._appended.wait()
        self._check_term(last_offset, term)

    async def wait_for_data(self, timeout_s: float) -> None:
        """Until the high watermark moves (or the timeout): the long-poll of Fetch."""
        self._data_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._data_changed.wait(), timeout_s)

    # -- observers ------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    @property
    def leader_id(self) -> int | None:
        return self.core.leader

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def high_watermark(self) -> int:
        return self.commit_index + 1

    def in_sync_replicas(self, alive: Callable[[int], bool] = lambda node: True) -> list[int]:
        """Replicas whose match is at the commit index and that `alive` says were heard from
        recently (the leader's view; the node passes its liveness view, ReplicaManager.alive:
        a stopped follower of an idle partition keeps its match and would look in sync)."""
        if not self.is_leader:
            return []
        out = {int(self.core.id)}
        for node_id, progress in self.core.progress.items():
            if progress.match >= self.commit_index and alive(int(node_id)):
                out.add(int(node_id))
        return sorted(out)

    def records_between(self, start: int, end: int) -> int:
        """Offsets in [start, end) that hold records, i.e. without the control batches (a
        leader's NOOP, membership changes): what a consumer at `start` still has to read up to
        `end` (compaction gaps aside). Only this log's part of the range is known: control
        batches beyond its end are not counted. Two bisections."""
        return max(0, end - start) - self.control_records_between(start, end)

    def control_records_between(self, start: int, end: int) -> int:
        """Control batches (one offset each) of this log in [start, end)."""
        if end <= start:
            return 0
        controls = self._control_offsets
        return bisect.bisect_left(controls, end) - bisect.bisect_left(controls, start)

    def read_committed(self, offset: int, max_bytes: int) -> bytes:
        """Whole committed batches from the one containing offset, at most ~max_bytes."""
        hw = self.high_watermark
        if offset >= hw:
            return b""
        raw = self.log.read(offset, max_bytes)
        end = 0
        for pos, header in iter_batches(raw, verify=False):
            if header.last_offset >= hw:
                break
            end = pos + header.size
        return raw[:end] if end < len(raw) else raw

    # -- the drive loop -------------------------------------------------------------------------

    async def _drive(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self.error is not None:
                return
            try:
                while True:
                    started, self._started = self._started, None
                    ready = started.ready if started is not None else self.core.ready()
                    if ready is None:
                        break
                    self._busy = True
                    await self._handle_until_done(ready, started)
                    self.core.advance(ready)
                    self._busy = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a storage failure: stop this replica, keep the node up
                self.error = exc
                log.exception("replica %s stopped: %s", self.group, exc)
                self._fail_waiters(exc)
                return

    def _start_ready(self) -> None:
        """Starting a Ready at once: when the drive task is idle, the Ready a step or a proposal
        made is taken here and its synchronous part done before returning — the log append, a
        leader's AppendEntries (they go out before its own fsync) and the request for the
        fsync — and the drive task does the rest (fsync wait, raft.state, sends, apply,
        advance) in the same order as always. Waking the drive task first cost one pass of the
        event loop between a follower's receipt of an append and its fsync, and between a
        proposal and its AppendEntries: 0.4-0.8 ms each at the median on the shared 2 cores
        (benchmarks/README.md, "One record at a time"). While the drive task is busy, steps and
        proposals gather into its next Ready as before (batching under load). A log reset
        awaits raft.state first: that Ready is left whole to the drive task."""
        self._wake.set()
        if (self._busy or self._task is None or self._closed or self.error is not None
                or not self._start_at_once or not _on_the_loop()):
            return
        try:
            ready = self.core.ready()
        except Exception as exc:  # the core reads the log: a storage failure stops the replica
            self._stop(exc)
            return
        if ready is None:
            return
        self._busy = True
        started = self._started = _StartedReady(ready)
        if ready.reset_log_to is not None:
            return
        try:
            started.send_early, started.synced = self._persist_log(ready, reshaped=False)
            started.done = True
        except Exception as exc:  # the drive task raises it (a full disk: retried from the top)
            started.error = exc

    #: Tests that plant a defect by overriding ``_handle`` switch this off (tests/sim/planted.py)
    _start_at_once = True

    async def _handle_until_done(self, rd: Ready, started: _StartedReady | None = None) -> None:
        """A full disk is waited out, not fatal: the Ready is retried (it is idempotent, see
        _handle) until space returns; meanwhile produce requests are refused with DISK_FULL.
        Any other storage error stops the replica (a failed fsync leaves the page cache in an
        unknown state: the log must be reopened and recovered)."""
        while True:
            try:
                if started is not None:
                    first, started = started, None  # a retry goes from the top
                    await self._finish(rd, first)
                else:
                    await self._handle(rd)
            except (DiskFullError, OSError) as exc:
                if not isinstance(exc, DiskFullError) and exc.errno != errno.ENOSPC:
                    raise
                if self.storage_error is None:
                    log.warning("%s: disk full, refusing writes until space returns: %s",
                                self.group, exc)
                self.storage_error = exc
                await asyncio.sleep(self._disk_full_retry_s)
                continue
            if self.storage_error is not None:
                log.info("%s: disk space is back, writes resume", self.group)
                self.storage_error = None
            return

    async def _handle(self, rd: Ready) -> None:
        """Persist order (docs/raft.md, "Persist order"): log reset (its start recorded in
        raft.state first) -> truncate -> append -> fsync the log and then the durable marker ->
        raft.state (term, vote, membership; a commit never above the durable log) -> send ->
        apply. Idempotent, so a disk-full retry runs it again from the top."""
        reshaped = False
        if rd.reset_log_to is not None:
            await self._reset_log(rd)
            reshaped = True
        send_early, synced = self._persist_log(rd, reshaped=reshaped)
        await self._persist_rest(rd, send_early, synced)

    async def _finish(self, rd: Ready, started: _StartedReady) -> None:
        """The rest of a Ready begun by _start_ready (its reset-free first part is done)."""
        if started.error is not None:
            raise started.error
        if not started.done:  # a log reset: nothing was begun
            await self._handle(rd)
            return
        await self._persist_rest(rd, started.send_early, started.synced)

    def _persist_log(self, rd: Ready, *, reshaped: bool
                     ) -> tuple[bool, asyncio.Future[None] | None]:
        """Truncate, append, a leader's early send, and the fsync of log + marker asked for
        (not waited for); returns (sent early, the fsync's future)."""
        if rd.truncate_after is not None:
            self.log.truncate_after(rd.truncate_after)
            self._rebuild_producer_state()
            reshaped = True
        if rd.entries:
            reshaped = self._append(rd.entries) or reshaped
        # A leader may send AppendEntries before its own fsync (Raft thesis §10.2.1): the core
        # counts the leader towards commit only after advance(), i.e. once its log is durable,
        # so the disk write and the replication round trip overlap. Everything else a replica
        # says (votes, append acknowledgements) promises durability and waits for the fsync.
        send_early = self.core.role is Role.LEADER and not self._vote_changed(rd)
        if send_early:
            self._send_all(rd.messages)
        synced = None
        if (rd.entries or reshaped) and (
                self._sync_always or self.log.needs_sync(self._clock.wall_ms())):
            synced = self._sync_log_and_marker(rd)
        return send_early, synced

    async def _persist_rest(self, rd: Ready, send_early: bool,
                            synced: asyncio.Future[None] | None) -> None:
        if synced is not None:
            await synced
        await self._persist_hard_state(rd)
        if rd.recovered:
            self._recovering = False  # the refilled log is durable: the marker may come down
        if not send_early:
            self._send_all(rd.messages)
        if rd.soft_state is not None:
            if rd.soft_state.role is not Role.LEADER:
                self._appended.set()
                self._fail_waiters(ReplicaLostLeadership(
                    f"{self.group}: leadership moved to node {rd.soft_state.leader}"))
            self._on_soft_state(self)
        if self._apply is not None:
            for entry in rd.committed_entries:
                self._apply(self, entry)
        if rd.commit_index > self.commit_index:  # a leader may have moved it while stepping
            self.commit_index = rd.commit_index
            self._resolve_waiters()
            self._data_changed.set()

    def _append(self, entries: tuple[Entry, ...]) -> bool:
        """Append to the page cache; True if a conflicting tail was cut on the way."""
        cut = False
        for entry in entries:
            if entry.index < self.log.log_end_offset:
                if self.raft_log.term_at(entry.last) == entry.term:
                    continue  # appended by an attempt that failed (same index and term)
                # Entries overwrite what they conflict with (as etcd's Storage.Append): the
                # core dropped an unstable tail that an earlier Ready had already written
                # here while messages were stepped during its await, so it sends no
                # truncate_after for it (found by `tidelog chaos run pause-leader`).
                self.log.truncate_after(entry.index - 1)
                self._rebuild_producer_state()
                cut = True
            info = self.log.append(to_batch(entry), term=entry.term, base_offset=entry.index)
            assert info.base_offset == entry.index
            if entry.kind is not EntryKind.DATA:
                self._control_offsets.append(entry.index)  # appends ascend; cuts rebuild
            if entry.kind is EntryKind.DATA and entry.last > self._producers_upto:
                self._record_producer(entry)
        self._appended.set()
        return cut

    def _sync_log_and_marker(self, rd: Ready) -> asyncio.Future[None]:
        """Ask for the fsync of the log, then the durable record of what this replica may now
        acknowledge (the "recover to" marker), in one group-commit job; both before any
        message. Done when the future is."""
        upto = self._durable.promise(self.log.log_end_offset - 1, recovering=self._recovering)
        self._durable.next = (upto, min(rd.commit_index, self.log.log_end_offset - 1))
        return self._committer.submit(self._durable)

    def _vote_changed(self, rd: Ready) -> bool:
        hs = rd.hard_state
        return hs is not None and (hs.term, hs.vote) != (self._state.term, self._state.vote)

    async def _persist_hard_state(self, rd: Ready) -> None:
        """Term, vote and membership: durable before any message is sent (a vote sent and then
        forgotten lets a replica vote twice in one term). Written after the log, so the commit
        recorded with them never covers an entry that is not durable here."""
        membership = rd.membership if rd.membership != self._state.membership else None
        if not self._vote_changed(rd) and membership is None:
            return
        hs = rd.hard_state or self.core_hard_state()
        await self._write_state(
            term=int(hs.term), vote=hs.vote, membership=membership or self._state.membership,
            commit=min(int(hs.commit), self.log.durable_end_offset - 1))

    async def _reset_log(self, rd: Ready) -> None:
        """The new log start and its term are recorded first; a crash before the log reset
        is finished on restart (_finish_log_start)."""
        start = rd.reset_log_to
        assert start is not None
        if self._before_log_reset is not None:
            await self._before_log_reset(int(start.start), int(start.term))
        hs = rd.hard_state or self.core_hard_state()
        await self._write_state(
            term=int(hs.term), vote=hs.vote, membership=rd.membership or self._state.membership,
            commit=min(int(hs.commit), start.start - 1), log_start=int(start.start),
            prefix_term=int(start.term), reset=True)
        await asyncio.get_running_loop().run_in_executor(None, self.log.reset, start.start)
        self.raft_log.prefix_term = start.term
        self._rebuild_producer_state()

    async def _write_state(self, **changes: Any) -> None:
        """Atomic, durable; ``self._state`` changes only once the write succeeded, so a
        disk-full retry writes it again instead of sending a vote that is not on disk
        (defect 7 of issue 11)."""
        async with self._state_lock:
            new = dataclasses.replace(self._state, **changes)
            if new == self._state:
                return
            await self._store_state(new)

    async def _store_state(self, new: RaftStateFile) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(write_state, self.directory, new, self._fs))
        self._state = new

    def _send_all(self, messages: tuple[Message, ...]) -> None:
        for message in messages:
            self._send(self.group, message)

    def core_hard_state(self) -> HardState:
        return HardState(term=self.core.term, vote=self.core.vote, commit=self.core.commit)

    # -- helpers --------------------------------------------------------------------------------

    def _resolve_waiters(self, upto: int | None = None) -> None:
        """Answer the waiters up to `upto` (default: the commit index of the last Ready)."""
        upto = self.commit_index if upto is None else upto
        done = bisect.bisect_right(self._waiters, upto, key=lambda w: w.last_offset)
        ready, self._waiters = self._waiters[:done], self._waiters[done:]
        for waiter in ready:
            if waiter.future.done():
                continue
            try:
                self._check_term(waiter.last_offset, waiter.term)
                waiter.future.set_result(None)
            except ReplicaLostLeadership as exc:
                waiter.future.set_exception(exc)

    def _check_term(self, last_offset: int, term: int) -> None:
        if last_offset < self.log.log_start_offset:
            return  # deleted by retention, which deletes applied entries only: never replaced
        if self.raft_log.term_at(last_offset) != term:
            raise ReplicaLostLeadership(
                f"{self.group}: the entry at offset {last_offset} was replaced after a "
                "leadership change"
            )

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    def _record_producer(self, entry: Entry) -> None:
        from tidelog.proto.batch import decode_header

        header = decode_header(entry.data)
        self.producers.record(header, entry.index, entry.term)
        self._producers_upto = entry.last

    def _rebuild_producer_state(self) -> None:
        """From the batch headers in the log (no decompression): after open or truncation."""
        replay_from = self._restore_producers()
        self._control_offsets = []
        if self.log.log_end_offset == self.log.log_start_offset:
            self._producers_upto = self.log.log_end_offset - 1
            return
        for header in self.log.iter_headers(self.log.log_start_offset):
            if not header.is_control:
                if header.base_offset >= replay_from:  # older ones are in the snapshot
                    self.producers.record(header, header.base_offset, header.term)
            else:
                self._control_offsets.append(header.base_offset)
        self._producers_upto = self.log.log_end_offset - 1

    def _restore_producers(self) -> int:
        """The producer table of the batches retention deleted (producers.snapshot, ignored
        when stale: the log was reset past it); returns the offset the log replays from."""
        snapshot = read_snapshot(self.directory, self._fs)
        start = self.log.log_start_offset
        if snapshot is None or snapshot.start < start:
            self.producers.clear()
            return start
        self.producers.restore(snapshot.producers)
        return snapshot.start

    def _finish_log_start(self, state: RaftStateFile) -> RaftStateFile:
        """raft.state records a log reset or a retention cut before the log does it: finish a
        cut that a crash interrupted."""
        start = state.log_start
        if start <= self.log.log_start_offset:
            return state
        if state.reset or start > self.log.log_end_offset:
            log.warning("%s: finishing an interrupted log reset to %d", self.group, start)
            self.log.reset(start)
        else:
            self.log.truncate_prefix(start)
        return state

    def _recover_to(self, commit: int, marker: MarkerRecord | None) -> LogIndex | None:
        """A log shorter than what this replica promised as durable lost entries it may have
        acknowledged (a bit flip in the last second is cut as a torn tail; a damaged sealed
        segment is quarantined): it must get them back from a leader before voting again."""
        last = self.log.log_end_offset - 1
        report = self.log.recovery
        if marker is None:  # written by a version without the marker: the commit is all we know
            damaged = report.truncated or report.corrupt or report.cut_from_offset is not None
            promised = commit if damaged else -1
        else:
            promised = max(marker.durable_upto, commit)
        self._recovering = promised > last
        if not self._recovering:
            return None
        log.warning("%s: log lost entries it had promised (up to %d, log ends at %d); "
                    "recovering from peers before voting", self.group, promised, last)
        return LogIndex(promised)

    def describe(self) -> dict[str, Any]:
        return {
            "group": self.group, "role": self.core.role.value, "leader": self.leader_id,
            "term": self.term, "log_start": self.log.log_start_offset,
            "log_end": self.log.log_end_offset, "high_watermark": self.high_watermark,
        }


class _LogAndMarker:
    """What one group-commit job makes durable for a replica: its log, then its marker."""

    def __init__(self, plog: PartitionLog, marker: DurableMarker) -> None:
        self.log = plog
        self.marker = marker
        self.next: tuple[int, int] | None = None  # (durable_upto, commit) to record after sync

    def promise(self, upto: int, *, recovering: bool) -> int:
        """The marker never comes down while the replica recovers lost entries."""
        last = self.marker.last
        return max(upto, last.durable_upto) if recovering and last is not None else upto

    def sync(self) -> int:
        end = self.log.sync()
        if self.next is not None:
            upto, commit = self.next
            last = self.marker.last
            if last is None or (last.durable_upto, last.commit) != (upto, commit):
                self.marker.write(durable_upto=upto, commit=commit)
        return end


def _on_the_loop() -> bool:
    """Called from a callback of the running loop (always on a node; the simulator's workload
    may step and propose from outside its loop, where the drive task does all the work)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _open_log(directory: Path, config: LogConfig, fs: FileSystem, clock: Clock) -> PartitionLog:
    """A replica can refill from its peers, so damage is cut out (the damaged file kept in
    quarantine/) instead of refusing to open (defect 5); every sealed segment's checksums are
    read once at start, so bit rot in old data is found before this replica serves or votes."""
    return PartitionLog.open(directory, config, now_ms=clock.wall_ms, fs=fs,
                             on_damage=DamagePolicy.QUARANTINE, verify_sealed=True)
