"""One local replica of one Raft group: the thin I/O shell around RaftCore and a PartitionLog.

The drive loop does exactly what each Ready says, in its order: persist hard state (atomic, fsynced)
→ reset/truncate/append the log → fsync the log (group commit shared with every other replica on
the node) → send messages → apply committed entries → resolve waiters → advance. It makes no
protocol decisions. Produce requests wait on a commit waiter: acks=all answers only when the commit
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
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidelog.node.group_commit import GroupCommitter
from tidelog.node.producer_state import ProducerStateTable
from tidelog.node.raft import (
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Message,
    NodeId,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
    Term,
)
from tidelog.node.raft_log import PartitionRaftLog, to_batch
from tidelog.node.storage import (
    DiskFullError,
    FsyncMode,
    LogConfig,
    PartitionLog,
    read_checksummed,
    write_checksummed,
)
from tidelog.proto.batch import BatchHeader, iter_batches

log = logging.getLogger(__name__)

RAFT_STATE_FILE = "raft.state"
COMMIT_PERSIST_INTERVAL_S = 1.0
DISK_FULL_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class RaftStateFile:
    """term, vote, commit, membership and the term below log start: one checksummed file."""

    term: int = 0
    vote: int | None = None
    commit: int = -1
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    prefix_term: int = 0

    def encode(self) -> bytes:
        return json.dumps({
            "term": self.term, "vote": self.vote, "commit": self.commit,
            "voters": list(self.voters), "learners": list(self.learners),
            "prefix_term": self.prefix_term,
        }).encode()

    @classmethod
    def decode(cls, data: bytes) -> RaftStateFile:
        d = json.loads(data)
        return cls(term=d["term"], vote=d["vote"], commit=d["commit"],
                   voters=tuple(d["voters"]), learners=tuple(d["learners"]),
                   prefix_term=d.get("prefix_term", 0))


@dataclass(order=True)
class _CommitWaiter:
    last_offset: int
    term: int = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


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
        seed: int | None = None,
    ) -> None:
        self.group = group
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log = PartitionLog.open(directory, log_config)
        self._sync_always = log_config.fsync.mode is FsyncMode.ALWAYS
        self._state_path = directory / RAFT_STATE_FILE
        state = self._load_state()
        voters = state.voters or tuple(raft_config.voters)
        learners = state.learners if state.voters else tuple(raft_config.learners)
        config = RaftConfig(
            node_id=raft_config.node_id, voters=tuple(NodeId(v) for v in voters),
            learners=tuple(NodeId(v) for v in learners),
            election_ticks=raft_config.election_ticks, heartbeat_ticks=raft_config.heartbeat_ticks,
            max_inflight_msgs=raft_config.max_inflight_msgs,
            max_append_bytes=raft_config.max_append_bytes,
        )
        self.raft_log = PartitionRaftLog(self.log, prefix_term=state.prefix_term)
        recover_to = self._recover_to(state)
        self.core = RaftCore(
            config, self.raft_log, rng=random.Random(seed),
            hard_state=HardState(term=Term(state.term),
                                 vote=NodeId(state.vote) if state.vote is not None else None,
                                 commit=LogIndex(state.commit)),
            recover_to=recover_to,
        )
        self._state = state
        self._state_written_at = 0.0
        self._committer = committer
        self._send = send
        self._on_soft_state = on_soft_state
        self._apply = apply
        self.producers = ProducerStateTable()
        self._producers_upto = -1  # producer table reflects the log up to this offset
        self._rebuild_producer_state()
        self.commit_index = self.core.commit
        self._waiters: list[_CommitWaiter] = []
        self._data_changed = asyncio.Event()
        self._appended = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.error: BaseException | None = None
        self.storage_error: BaseException | None = None  # set while the disk is full

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._drive(), name=f"raft-{self.group}")
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        if self._state.commit != self.core.commit:  # leave the latest commit index behind
            self._state = dataclasses.replace(self._state, commit=self.core.commit)
            with contextlib.suppress(OSError):
                write_checksummed(self._state_path, self._state.encode())
        self._fail_waiters(ReplicaLostLeadership(f"replica {self.group} is closing"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await asyncio.get_running_loop().run_in_executor(None, self.log.close)

    # -- inputs ---------------------------------------------------------------------------------

    def step(self, message: Message) -> None:
        self.core.step(message)
        self._wake.set()

    def tick(self) -> None:
        self.core.tick()
        self._wake.set()

    def report_unreachable(self, peer: int) -> None:
        self.core.report_unreachable(NodeId(peer))

    def propose(self, batches: list[tuple[bytes, BatchHeader]]) -> list[tuple[int, int]]:
        """Propose data batches (leader only); returns (base, last) offsets. Raises NotLeader."""
        firsts = self.core.propose_many([(b, h.last_offset_delta + 1) for b, h in batches])
        self._wake.set()
        offsets = []
        for first, (_, header) in zip(firsts, batches, strict=True):
            last = first + header.last_offset_delta
            self.producers.record(header, first, self.core.term)
            self._producers_upto = max(self._producers_upto, last)
            offsets.append((first, last))
        return offsets

    def transfer_leadership(self, to: int) -> None:
        self.core.transfer_leadership(NodeId(to))
        self._wake.set()

    async def wait_committed(self, last_offset: int, term: int, timeout_s: float) -> None:
        """Until the commit index covers last_offset with the entry still of `term`."""
        if self.commit_index >= last_offset:
            self._check_term(last_offset, term)
            return
        waiter = _CommitWaiter(last_offset, term, asyncio.get_running_loop().create_future())
        bisect.insort(self._waiters, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout_s)
        finally:
            if waiter in self._waiters and not waiter.future.done():
                self._waiters.remove(waiter)

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

    def in_sync_replicas(self) -> list[int]:
        """Replicas whose match is at the commit index (the leader's view)."""
        if not self.is_leader:
            return []
        out = {int(self.core.id)}
        for node_id, progress in self.core.progress.items():
            if progress.match >= self.commit_index:
                out.add(int(node_id))
        return sorted(out)

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
            try:
                while (ready := self.core.ready()) is not None:
                    await self._handle_until_done(ready)
                    self.core.advance(ready)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a storage failure: stop this replica, keep the node up
                self.error = exc
                log.exception("replica %s stopped: %s", self.group, exc)
                self._fail_waiters(exc)
                return

    async def _handle_until_done(self, rd: Ready) -> None:
        """A full disk is waited out, not fatal: the Ready is retried (it is idempotent, see
        _handle) until space returns; meanwhile produce requests are refused with DISK_FULL.
        Any other storage error stops the replica (a failed fsync leaves the page cache in an
        unknown state: the log must be reopened and recovered)."""
        while True:
            try:
                await self._handle(rd)
            except (DiskFullError, OSError) as exc:
                if not isinstance(exc, DiskFullError) and exc.errno != errno.ENOSPC:
                    raise
                if self.storage_error is None:
                    log.warning("%s: disk full, refusing writes until space returns: %s",
                                self.group, exc)
                self.storage_error = exc
                await asyncio.sleep(DISK_FULL_RETRY_S)
                continue
            if self.storage_error is not None:
                log.info("%s: disk space is back, writes resume", self.group)
                self.storage_error = None
            return

    async def _handle(self, rd: Ready) -> None:
        loop = asyncio.get_running_loop()
        if rd.hard_state is not None or rd.membership is not None or rd.reset_log_to is not None:
            previous = self._state
            hs = rd.hard_state or self.core_hard_state()
            membership = rd.membership or self.core.membership
            prefix_term = (rd.reset_log_to.term if rd.reset_log_to is not None
                           else self._state.prefix_term)
            self._state = RaftStateFile(
                term=hs.term, vote=hs.vote, commit=hs.commit,
                voters=tuple(sorted(membership.voters)),
                learners=tuple(sorted(membership.learners)), prefix_term=prefix_term,
            )
            # Term, vote and membership must be durable before any message is sent; the commit
            # index alone need not be (Raft re-learns it from the leader), so a commit-only change
            # is written without fsync at most every COMMIT_PERSIST_INTERVAL_S: keeps fsyncs (and
            # latency) off the per-write path.
            durable = (rd.membership is not None or rd.reset_log_to is not None
                       or (hs.term, hs.vote) != (previous.term, previous.vote))
            now = time.monotonic()
            if durable or now - self._state_written_at >= COMMIT_PERSIST_INTERVAL_S:
                self._state_written_at = now
                data = self._state.encode()
                await loop.run_in_executor(
                    None, functools.partial(write_checksummed, self._state_path, data,
                                            durable=durable))
        if rd.reset_log_to is not None:
            await loop.run_in_executor(None, self.log.reset, rd.reset_log_to.start)
            self.raft_log.prefix_term = rd.reset_log_to.term
            self._rebuild_producer_state()
        if rd.truncate_after is not None:
            self.log.truncate_after(rd.truncate_after)
            self._rebuild_producer_state()
        if rd.entries:
            for entry in rd.entries:
                if entry.index < self.log.log_end_offset:
                    if self.raft_log.term_at(entry.last) == entry.term:
                        continue  # appended by an attempt that failed (same index and term)
                    # Entries overwrite what they conflict with (as etcd's Storage.Append): the
                    # core dropped an unstable tail that an earlier Ready had already written
                    # here while messages were stepped during its await, so it sends no
                    # truncate_after for it (found by `tidelog chaos run pause-leader`).
                    self.log.truncate_after(entry.index - 1)
                    self._rebuild_producer_state()
                info = self.log.append(to_batch(entry), term=entry.term, base_offset=entry.index)
                assert info.base_offset == entry.index
                if entry.kind is EntryKind.DATA and entry.last > self._producers_upto:
                    self._record_producer(entry)
            self._appended.set()
        # A leader may send AppendEntries before its own fsync (Raft thesis §10.2.1): the core
        # counts the leader towards commit only after advance(), i.e. once its log is durable,
        # so the disk write and the replication round trip overlap. Everything else a replica
        # says (votes, append acknowledgements) promises durability and waits for the fsync.
        send_early = self.core.role is Role.LEADER and rd.hard_state is None
        if send_early:
            self._send_all(rd.messages)
        if rd.entries and (self._sync_always or self.log.needs_sync(int(time.time() * 1000))):
            await self._committer.sync(self.log)
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
        if rd.commit_index != self.commit_index:
            self.commit_index = rd.commit_index
            self._resolve_waiters()
            self._data_changed.set()

    def _send_all(self, messages: tuple[Message, ...]) -> None:
        for message in messages:
            self._send(self.group, message)

    def core_hard_state(self) -> HardState:
        return HardState(term=self.core.term, vote=self.core.vote, commit=self.core.commit)

    # -- helpers --------------------------------------------------------------------------------

    def _resolve_waiters(self) -> None:
        done = bisect.bisect_right(self._waiters, self.commit_index,
                                   key=lambda w: w.last_offset)
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
        self.producers.clear()
        if self.log.log_end_offset == self.log.log_start_offset:
            self._producers_upto = self.log.log_end_offset - 1
            return
        for header in self.log.iter_headers(self.log.log_start_offset):
            if not header.is_control:
                self.producers.record(header, header.base_offset, header.term)
        self._producers_upto = self.log.log_end_offset - 1

    def _load_state(self) -> RaftStateFile:
        data = read_checksummed(self._state_path)
        return RaftStateFile.decode(data) if data is not None else RaftStateFile()

    def _recover_to(self, state: RaftStateFile) -> LogIndex | None:
        """A log that lost entries it had acknowledged must refetch them before voting again."""
        report = self.log.recovery
        last = self.log.log_end_offset - 1
        if (report.truncated or report.corrupt) and state.commit > last:
            log.warning("%s: log lost committed entries (commit %d, log ends at %d); "
                        "recovering from peers before voting", self.group, state.commit, last)
            return LogIndex(state.commit)
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "group": self.group, "role": self.core.role.value, "leader": self.leader_id,
            "term": self.term, "log_start": self.log.log_start_offset,
            "log_end": self.log.log_end_offset, "high_watermark": self.high_watermark,
        }
