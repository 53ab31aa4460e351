"""A simulated Raft group running the REAL I/O shell: ``Replica`` over ``PartitionLog`` over a
``SimFileSystem``, with the node's ``GroupCommitter``, driven by a deterministic event loop.

Theory of operation. Each simulated node has a ``SimFileSystem`` (its disk, which survives the
node) and at most one live incarnation of a ``Replica``, constructed exactly as a node constructs
it. The ``SimLoop`` runs all incarnations' asyncio code in virtual time; their blocking work runs
after a seeded disk latency, so messages and ticks are stepped while a Ready's fsync is in flight.
A crash or power cut kills the incarnation between any two of its callbacks (also in the middle of
``Replica._handle``, between its awaits), then cuts the disk's power (``power_loss``: unsynced
writes and names lost or torn) or just closes its descriptors (``crash``: kill -9). A restart
constructs a NEW ``Replica`` over the same disk; what it then believes (its restored commit index
and log) goes to the checker, and it replays its committed log like the metadata state machine.

Clients propose through ``Replica.propose`` and count a write as acknowledged only when
``Replica.wait_committed`` returns. The nemesis injects process crashes, power cuts (random and
targeted: right after a vote, a new leader, a commit), partitions, lossy links, failing fsyncs,
a full disk, bit flips on a minority, retention, leadership transfers and membership changes.
Everything random comes from one seed, so a run replays exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tidelog.node.group_commit import GroupCommitter
from tidelog.node.liveness import Heard, NodeLiveness, wake_groups
from tidelog.node.raft import (
    Entry,
    EntryKind,
    LogIndex,
    Membership,
    Message,
    MessageType,
    NodeId,
    RaftConfig,
    RaftCore,
    RaftError,
    Role,
)
from tidelog.node.replica import Replica, ReplicaLostLeadership
from tidelog.node.sim.checker import Acked, Checker, SafetyViolation, Seen, Violation
from tidelog.node.sim.loop import DiskLatency, SimLoop
from tidelog.node.sim.network import NetworkConditions, SimNetwork
from tidelog.node.sim.simfs import SimFileSystem
from tidelog.node.storage import LogConfig
from tidelog.proto.batch import Codec, decode_header, decode_records, encode_batch

GROUP = "g"
DATA_DIR = Path("/data/g")
WALL_EPOCH_MS = 1_700_000_000_000
ACK_TIMEOUT_S = 3.0
CHECK_INTERVAL_MS = 250

FAULT_WEIGHTS: dict[str, float] = {
    "crash": 10,
    "power": 12,
    "crash_soon": 8,
    "restart": 22,
    "partition": 10,
    "asymmetric": 5,
    "heal": 15,
    "lossy": 7,
    "fsync_fail": 3,
    "disk_full": 4,
    "bitflip": 5,
    "retention": 6,
    "transfer": 5,
    "membership": 8,
}


@dataclass(slots=True, kw_only=True)
class SimOptions:
    nodes: int = 3
    tick_ms: int = 10
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    faults: bool = True
    fault_interval_ms_max: int = 300
    client_interval_ms_max: int = 30
    membership_changes: bool = True
    trace_len_max: int = 80
    pre_vote: bool = True
    check_quorum: bool = True
    max_append_bytes: int = 4096
    disk_ms_max: float = 4.0
    disk_full_retry_ms: int = 50
    reboot_after_vote_p: float = 0.1
    """Targeted fault: cut a replica's power right after it sent a vote, restart it 1-5 ms later."""
    crash_new_leader_p: float = 0.02
    """Targeted fault: crash a new leader within a few ms (Figure 8's sequences need this)."""
    crash_leader_after_commit_p: float = 0.002
    """Targeted fault: crash a leader within a few ms after its commit index moved."""
    power_cut_after_truncate_p: float = 0.3
    """Targeted fault: cut a replica's power within a disk latency after its log was cut."""
    fault_weights: dict[str, float] = field(default_factory=lambda: dict(FAULT_WEIGHTS))
    core_cls: type[RaftCore] = RaftCore
    replica_cls: type[Replica] = Replica
    """Tests pass a Replica subclass with a planted persist-order bug."""
    quiesce: bool = False
    """Run the node's quiescence: idle groups sleep (RaftConfig.quiesce) and each node sends
    node-level liveness beats (tidelog.node.liveness), which wake the groups of a silent peer."""
    idle_p: float = 0.0
    """Chance that the client pauses after a request for 100 ms..``idle_ms_max``, so that the
    group goes idle (and quiesces) while faults continue."""
    idle_ms_max: int = 1500


@dataclass(slots=True, kw_only=True)
class Stats:
    steps: int = 0
    elections: int = 0
    commits: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1


class SimClock:
    """The Clock seam over the loop's virtual time."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def monotonic_ms(self) -> int:
        return int(self._loop.time() * 1000)

    def wall_ms(self) -> int:
        return WALL_EPOCH_MS + int(self._loop.time() * 1000)


class _WatchedFs(SimFileSystem):
    """The node's disk, telling the nemesis when a log is cut (a Raft truncation): the moment
    at which a wrong persist order turns a power cut into a false commit."""

    def __init__(self, *, seed: int, on_cut: Callable[[], None]) -> None:
        super().__init__(seed=seed)
        self._on_cut = on_cut

    def ftruncate(self, fd: int, length: int) -> None:
        shrinks = length < self.fstat_size(fd)
        super().ftruncate(fd, length)
        if shrinks:
            self._on_cut()


class SimNode:
    def __init__(self, node_id: NodeId, boot: Membership, seed: int,
                 on_cut: Callable[[SimNode], None]) -> None:
        self.id = node_id
        self.fs = _WatchedFs(seed=seed, on_cut=lambda: on_cut(self))
        self.boot = boot
        self.replica: Replica | None = None
        self.incarnation = 0
        self.liveness: NodeLiveness | None = None  # per incarnation, with SimOptions.quiesce
        self.ever_started = False
        self.damaged = False  # bit-flipped and not yet seen repaired by a live incarnation

    def is_damaged(self) -> bool:
        if self.damaged and self.replica is not None and not self.replica.core.recovering:
            self.damaged = False
        return self.damaged

    @property
    def tag(self) -> tuple[int, int]:
        return (int(self.id), self.incarnation)


def seen_of(e: Entry) -> Seen:
    """How the checker identifies an entry: a client batch by its unique record value."""
    if e.kind is EntryKind.DATA:
        key = decode_records(e.data)[0].value or b""
    elif e.kind is EntryKind.CONFIG:
        key = b"config:" + e.data
    else:
        key = b"noop"
    return Seen(index=int(e.index), last=int(e.last), term=int(e.term), key=key)


class Cluster:
    def __init__(self, seed: int, options: SimOptions | None = None) -> None:
        self.seed = seed
        self.opt = options or SimOptions()
        self.rng = random.Random(seed)
        self.loop = SimLoop(self.rng, DiskLatency(random.Random(self.rng.getrandbits(64)),
                                                  ms_max=self.opt.disk_ms_max))
        self.clock = SimClock(self.loop)
        self.net = SimNetwork(random.Random(self.rng.getrandbits(64)))
        self.checker = Checker()
        self.stats = Stats()
        self.trace: deque[str] = deque(maxlen=self.opt.trace_len_max)
        self.violation: Violation | None = None
        n = self.opt.nodes
        ids = [NodeId(i) for i in range(1, n + 1)]
        self.spare = NodeId(n + 1)  # joins and leaves through membership changes
        boot = Membership(voters=frozenset(ids))
        self.nodes = {i: SimNode(i, boot, self.rng.getrandbits(32), self._on_log_cut)
                      for i in [*ids, self.spare]}
        self._client_seq = 0
        # Non-default limits, so that a shell that drops a field of the config it was given is
        # seen (defect 11 of issue 11), and applies come in chunks.
        self._max_committed_bytes = self.rng.choice([300, 1000, 4 << 20])
        self._promote_lag_max = self.rng.randint(0, 4)
        self._log_config = LogConfig(segment_bytes_max=2048, batch_bytes_max=1024,
                                     index_interval_bytes=256)
        for i in ids:
            self._at(0, self._start, self.nodes[i])
        self._at(self.rng.randint(1, 20), self._client)
        self._at(CHECK_INTERVAL_MS, self._periodic_check)
        if self.opt.faults:
            self._at(self.rng.randint(50, self.opt.fault_interval_ms_max), self._fault)

    @property
    def now_ms(self) -> int:
        return int(self.loop.time() * 1000)

    # ------------------------------------------------------------------ running

    def run(self, steps: int) -> None:
        """Run until ``steps`` harness events (ticks, deliveries, client requests, faults) ran."""
        asyncio.set_event_loop(self.loop)
        target = self.stats.steps + steps
        while self.stats.steps < target:
            self._run_for_ms(5)

    def _run_for_ms(self, ms: float) -> None:
        self.loop.run_until(self.loop.time() + ms / 1000)
        if self.loop.errors:
            err = self.loop.errors[0]
            raise err
        if self.violation is not None:
            raise SafetyViolation(self.violation)

    def close(self) -> None:
        """Drop every incarnation (their pending work never runs) and the loop."""
        for node in self.nodes.values():
            if node.replica is not None:
                self.loop.kill(node.tag)
                node.replica = None
        self.loop._ready.clear()
        self.loop._scheduled.clear()
        self.loop.close()
        asyncio.set_event_loop(None)

    def heal(self) -> None:
        """Stop injecting faults, give disks their space back, reconnect, restart members."""
        self.opt.faults = False
        self.net.heal()
        for node in self.nodes.values():
            node.fs.capacity_bytes = None
            if node.replica is None and node.ever_started and self._is_member(node.id):
                self._at(0, self._start, node)
        self.trace.append(f"{self.now_ms:>7} HEAL")

    def leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.replica is not None
                   and n.replica.error is None and n.replica.is_leader]
        return max(leaders, key=lambda n: n.replica.term) if leaders else None  # type: ignore[union-attr]

    def run_until_stable(self, deadline_ms: int) -> bool:
        """Liveness: after heal, a client write is acknowledged (wait_committed) in time."""
        asyncio.set_event_loop(self.loop)
        end = self.now_ms + deadline_ms
        done: list[bool] = []
        next_try = self.now_ms
        while self.now_ms < end and not (done and not self.unrepaired()):
            self._run_for_ms(5)
            lead = self.leader()
            if lead is None or self.now_ms < next_try:
                continue
            next_try = self.now_ms + 100  # retried: a proposal may be dropped (transfer) or lost;
            # and new entries are what a damaged replica is refilled with
            self._propose(lead, b"liveness-%d" % self.now_ms, on_ack=lambda: done.append(True))
        return bool(done)

    def unrepaired(self) -> list[NodeId]:
        """Voters still recovering from a damaged log (they must repair themselves), or
        stopped by a storage error (a failing fsync armed before the heal) and not yet back."""
        return [i for i in sorted(self._membership().voters)
                if (r := self.nodes[i].replica) is not None
                and (r.core.recovering or r.error is not None)]

    def final_check(self) -> None:
        logs = {}
        voters = self._membership().voters
        recovering = 0
        for i in sorted(voters):
            r = self.nodes[i].replica
            if r is None or r.core.recovering or r.error is not None:
                recovering += 1
                continue
            logs[i] = (r.log.log_start_offset, {e.last: e for e in self._entries(r)})
        self.checker.check_final(logs, recovering=recovering, voters=len(voters))

    # ------------------------------------------------------------------ replicas

    def _raft_config(self, node: SimNode) -> RaftConfig:
        m = node.boot
        return RaftConfig(
            node_id=node.id, voters=tuple(sorted(m.voters)), learners=tuple(sorted(m.learners)),
            election_ticks=self.opt.election_ticks, heartbeat_ticks=self.opt.heartbeat_ticks,
            max_inflight_msgs=16, max_append_bytes=self.opt.max_append_bytes,
            pre_vote=self.opt.pre_vote, check_quorum=self.opt.check_quorum,
            max_committed_bytes=self._max_committed_bytes, promote_lag_max=self._promote_lag_max,
            noop_on_committed_log=False,  # as the node's replicas (replica_configs.raft_config)
            quiesce=self.opt.quiesce,
        )

    def _start(self, node: SimNode) -> None:
        if node.replica is not None:
            return
        node.incarnation += 1
        node.ever_started = True
        tag = node.tag
        try:
            replica = self.loop.run_as(tag, self._construct, node)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.ENOSPC):
                raise
            # An injected fault (failing fsync, full disk) hit the open itself: try again later.
            self.trace.append(f"{self.now_ms:>7} n{node.id} cannot open yet: {exc}")
            self._at(self.rng.randint(5, 100), self._start, node)
            return
        except Exception as exc:  # noqa: BLE001 - a replica that cannot reopen its own disk
            self.violation = Violation(
                rule="Restart", detail=f"node {node.id} cannot reopen its replica: "
                                       f"{type(exc).__name__}: {exc}")
            return
        node.replica = replica
        if self.opt.quiesce:
            node.liveness = NodeLiveness(
                [int(i) for i in self.nodes if i != node.id],
                timeout_ticks=self.opt.election_ticks, beat_ticks=self.opt.heartbeat_ticks)
        core = replica.core
        given = self._raft_config(node)
        runs = dataclasses.replace(core.config, voters=given.voters, learners=given.learners,
                                   membership_index=given.membership_index)
        if runs != given:
            self.violation = Violation(rule="Config", detail=f"node {node.id} was given {given} "
                                                            f"but its core runs {core.config}")
        self.trace.append(f"{self.now_ms:>7} start n{node.id}.{node.incarnation} "
                          f"t{core.term} commit={core.commit} log={replica.log.log_start_offset}"
                          f"..{replica.log.log_end_offset} recovering={core.recovering}")
        self._guard(self._on_restart, node, replica)
        self.loop.run_as(tag, replica.start)
        self.loop.run_as(tag, self.loop.call_later, self._tick_s(first=True), self._tick, node,
                         replica)

    def _construct(self, node: SimNode) -> Replica:
        return self.opt.replica_cls(
            group=GROUP, directory=DATA_DIR, log_config=self._log_config,
            raft_config=self._raft_config(node), committer=GroupCommitter(),
            send=lambda _group, m: self._send(node, m),
            on_soft_state=lambda r: self._guard(self._on_soft_state, node, r),
            apply=lambda r, e: self._guard(self._on_apply, node, e),
            seed=self.rng.getrandbits(64), fs=node.fs, clock=self.clock,
            core_factory=self.opt.core_cls, disk_full_retry_s=self.opt.disk_full_retry_ms / 1000,
        )

    def _on_restart(self, node: SimNode, replica: Replica) -> None:
        """What the new incarnation believes: its restored commit index covers its log up to
        there (the metadata state machine replays exactly that at start)."""
        self.checker.on_restart(node.id)
        commit = replica.core.commit
        entries = [e for e in self._entries(replica) if e.last <= commit]
        for e in entries:
            self.checker.on_apply(node.id, e, log_start=replica.log.log_start_offset,
                                  restored=True)
        self.checker.check_log(node.id, replica.log.log_start_offset, self._entries(replica))

    def _kill(self, node: SimNode, why: str, *, power: bool) -> None:
        if node.replica is None:
            return
        self.loop.kill(node.tag)
        node.replica = None
        if power:
            node.fs.power_loss(self.rng)
        else:
            node.fs.crash()
        self.trace.append(f"{self.now_ms:>7} {'POWER CUT' if power else 'CRASH'} n{node.id} "
                          f"({why})")

    def _tick_s(self, *, first: bool = False) -> float:
        ms = self.rng.randint(1, self.opt.tick_ms) if first else self.opt.tick_ms
        return ms / 1000

    def _tick(self, node: SimNode, replica: Replica) -> None:
        """Runs as the node's code: dropped with the incarnation."""
        self.stats.steps += 1
        if replica.error is not None:
            self._at(0, self._replica_failed, node, replica)
            return
        replica.tick()
        if node.liveness is not None:
            self._tick_liveness(node, node.liveness, replica)
        self.loop.call_later(self._tick_s(), self._tick, node, replica)

    def _tick_liveness(self, node: SimNode, liveness: NodeLiveness, replica: Replica) -> None:
        """The node's liveness tick (ReplicaManager.tick_loop does the same): beats out, and
        the quiesced groups of a peer silent for an election timeout woken."""
        tick = liveness.tick()
        if tick.beat:
            for peer in self.nodes:
                if peer != node.id:
                    for delay in self.net.link_delays_ms(node.id, peer):
                        self._at(delay, self._deliver_beat, node.id, node.incarnation, peer)
        for peer in tick.lost:
            if wake_groups([replica], peer):
                self.trace.append(f"{self.now_ms:>7} n{node.id} lost n{peer}: woke the group")

    def _deliver_beat(self, frm: NodeId, incarnation: int, to: NodeId) -> None:
        node = self.nodes[to]
        if node.replica is not None and node.liveness is not None:
            self._heard(node, node.liveness, node.replica, frm, incarnation)

    def _heard(self, node: SimNode, liveness: NodeLiveness, replica: Replica, frm: NodeId,
               incarnation: int) -> None:
        """As ReplicaManager.receive_raft: a peer's new incarnation wakes its groups."""
        if (liveness.heard(int(frm), incarnation) is Heard.RESTARTED
                and wake_groups([replica], int(frm))):
            self.trace.append(f"{self.now_ms:>7} n{node.id} saw n{frm} restart: woke the group")

    def _replica_failed(self, node: SimNode, replica: Replica) -> None:
        """A storage error stopped the replica (a failed fsync fences the log). The node would
        need a restart; after a failed fsync the page cache cannot be trusted, so the
        simulation models that restart as a reboot (power cut), then brings it back."""
        if node.replica is not replica:
            return
        self.trace.append(f"{self.now_ms:>7} n{node.id} stopped: {replica.error!r}")
        self._kill(node, "storage error", power=True)
        self._at(self.rng.randint(5, 100), self._start, node)

    def _send(self, node: SimNode, m: Message) -> None:
        for delay in self.net.delivery_delays_ms(m):
            self._at(delay, self._deliver, m, node.incarnation)
        replica = node.replica
        if (m.frm, m.to) in self.net.blocked and replica is not None and self.rng.random() < 0.1:
            replica.report_unreachable(int(m.to))  # as ReplicaManager._on_unreachable:
            if node.liveness is not None:  # the link is down, so wake that peer's groups
                wake_groups([replica], int(m.to))
        if (m.type is MessageType.VOTE_RESP and not m.reject and self.opt.faults
                and self.rng.random() < self.opt.reboot_after_vote_p):
            self.stats.fault("reboot after vote")
            self._at(self.rng.uniform(0, 1), self._reboot, node, "reboot after vote")

    def _on_log_cut(self, node: SimNode) -> None:
        """Targeted fault: cut power while a truncation's writes are in flight."""
        if self.opt.faults and self.rng.random() < self.opt.power_cut_after_truncate_p:
            self.stats.fault("power cut after truncation")
            self._at(self.rng.uniform(0, self.opt.disk_ms_max), self._reboot, node,
                     "power cut after truncation")

    def _reboot(self, node: SimNode, why: str) -> None:
        if node.replica is None or not self.opt.faults:
            return
        self._kill(node, why, power=True)
        self._at(self.rng.randint(1, 5), self._start, node)

    def _deliver(self, m: Message, incarnation: int) -> None:
        self.stats.steps += 1
        node = self.nodes.get(m.to)
        if node is None or node.replica is None or node.replica.error is not None:
            return
        self.trace.append(f"{self.now_ms:>7} recv {m}")
        replica = node.replica
        if node.liveness is not None:
            self._heard(node, node.liveness, replica, m.frm, incarnation)
        self.loop.run_as(node.tag, replica.step, m)

    def _on_soft_state(self, node: SimNode, replica: Replica) -> None:
        core = replica.core
        self.trace.append(f"{self.now_ms:>7} n{node.id} {core.role.value} t{core.term}")
        if core.role is Role.LEADER:
            self.stats.elections += 1
            if self.opt.faults and self.rng.random() < self.opt.crash_new_leader_p:
                self.stats.fault("targeted crash")
                self._at(self.rng.uniform(0, 5), self._crash_targeted, node, replica)
            def entry_at(last: int) -> Seen | None:
                if core.log.term_at(LogIndex(last)) is None:
                    return None
                ents = core.log.entries(LogIndex(last), 1)
                return seen_of(ents[0]) if ents and ents[0].last == last else None

            self.checker.on_leader(node.id, core.term, entry_at, core.log.log_start())

    def _on_apply(self, node: SimNode, e: Entry) -> None:
        replica = node.replica
        start = replica.log.log_start_offset if replica is not None else 0
        self.checker.on_apply(node.id, seen_of(e), log_start=start)
        if (replica is not None and replica.is_leader and self.opt.faults
                and self.rng.random() < self.opt.crash_leader_after_commit_p):
            self.stats.fault("targeted crash")
            self._at(self.rng.uniform(0, 5), self._crash_targeted, node, replica)

    def _crash_targeted(self, node: SimNode, replica: Replica) -> None:
        if node.replica is replica and self.opt.faults:
            self._kill(node, "targeted", power=self.rng.random() < 0.5)

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        """Callbacks run inside the replica: a violation must stop the run, not the replica."""
        if self.violation is not None:
            return
        try:
            fn(*args)
        except SafetyViolation as exc:
            self.violation = exc.violation

    def _entries(self, replica: Replica) -> list[Seen]:
        rl = replica.raft_log
        return [seen_of(e) for e in rl.entries(rl.log_start(), 1 << 62)]

    def _periodic_check(self) -> None:
        for node in self.nodes.values():
            if node.replica is not None and node.replica.error is None:
                self._guard(self._check_log, node, node.replica)
        self._at(CHECK_INTERVAL_MS, self._periodic_check)

    def _check_log(self, node: SimNode, replica: Replica) -> None:
        self.checker.check_log(node.id, replica.log.log_start_offset, self._entries(replica))

    # ------------------------------------------------------------------ workload

    def _client(self) -> None:
        self.stats.steps += 1
        if self.opt.idle_p and self.rng.random() < self.opt.idle_p:
            self._at(self.rng.randint(100, self.opt.idle_ms_max), self._client)
        else:
            self._at(self.rng.randint(1, self.opt.client_interval_ms_max), self._client)
        leaders = [n for n in self.nodes.values() if n.replica is not None
                   and n.replica.error is None and n.replica.is_leader]
        if not leaders:
            return
        self._client_seq += 1
        self._propose(self.rng.choice(leaders), b"v%d" % self._client_seq)

    def _propose(self, node: SimNode, value: bytes,
                 on_ack: Callable[[], None] | None = None) -> None:
        replica = node.replica
        assert replica is not None
        count = self.rng.randint(1, 3)
        batch = encode_batch([(None, value if i == 0 else b"", (), WALL_EPOCH_MS)
                              for i in range(count)], codec=Codec.NONE)
        term = replica.term
        try:
            [(first, last)] = self.loop.run_as(node.tag, replica.propose,
                                               [(batch, decode_header(batch))])
        except RaftError:
            return
        acked = Acked(index=LogIndex(first), last=LogIndex(last), term=term, key=value)

        async def wait() -> None:
            try:
                await replica.wait_committed(last, term, ACK_TIMEOUT_S)
            except (ReplicaLostLeadership, TimeoutError, RaftError):
                return
            except Exception:  # noqa: BLE001 - a stopped replica fails its waiters
                return
            self.checker.on_ack(acked)
            self.stats.commits += 1
            if on_ack is not None:
                on_ack()

        self.loop.run_as(node.tag, self.loop.create_task, wait())

    # ------------------------------------------------------------------ nemesis

    def _membership(self) -> Membership:
        """The newest membership any live replica has applied (the cluster's current one)."""
        best: Replica | None = None
        for n in self.nodes.values():
            r = n.replica
            if r is not None and (best is None or r.core.commit > best.core.commit):
                best = r
        return best.core.membership if best is not None else next(iter(self.nodes.values())).boot

    def _is_member(self, node_id: NodeId) -> bool:
        return node_id in self._membership().members or node_id == self.spare

    def _at(self, delay_ms: float, fn: Callable[..., None], *args: object) -> None:
        """Schedule harness code (not any node's: it survives every crash)."""
        self.loop.run_as(None, self.loop.call_later, delay_ms / 1000,  # type: ignore[arg-type]
                         self._harness, fn, *args)

    def _harness(self, fn: Callable[..., None], *args: object) -> None:
        self._guard(fn, *args)

    def _fault(self) -> None:
        self.stats.steps += 1
        if not self.opt.faults:
            return
        self._at(self.rng.randint(20, self.opt.fault_interval_ms_max), self._fault)
        names = list(self.opt.fault_weights)
        action = self.rng.choices(names, weights=[self.opt.fault_weights[k] for k in names])[0]
        alive = [n for n in self.nodes.values() if n.replica is not None]
        dead = [n for n in self.nodes.values()
                if n.replica is None and n.ever_started and self._is_member(n.id)]
        voters = self._membership().voters
        members = [self.nodes[i] for i in sorted(voters)]
        match action:
            case "crash" if alive:
                self._kill(self.rng.choice(alive), "nemesis", power=False)
                self.stats.fault("crash")
            case "power" if alive:
                self._kill(self.rng.choice(alive), "nemesis", power=True)
                self.stats.fault("power cut")
            case "crash_soon" if alive:
                node = self.rng.choice(alive)
                self.stats.fault("power cut mid-write")
                self._at(self.rng.uniform(0, self.opt.disk_ms_max), self._crash_targeted, node,
                         node.replica)
            case "restart" if dead:
                self._start(self.rng.choice(dead))
                self.stats.fault("restart")
            case "partition" if len(members) > 1:
                ids = [n.id for n in members]
                self.rng.shuffle(ids)
                cut = self.rng.randint(1, len(ids) - 1)
                self.net.partition([set(ids[:cut]), set(ids[cut:])])
                self.trace.append(f"{self.now_ms:>7} PARTITION {ids[:cut]} | {ids[cut:]}")
                self.stats.fault("partition")
            case "asymmetric" if len(members) > 1:
                a, b = self.rng.sample([n.id for n in members], 2)
                self.net.block_one_way(a, b)
                self.trace.append(f"{self.now_ms:>7} BLOCK {a}->{b}")
                self.stats.fault("asymmetric link")
            case "heal":
                self.net.heal()
                for n in self.nodes.values():
                    n.fs.capacity_bytes = None
                self.trace.append(f"{self.now_ms:>7} heal network and disks")
            case "lossy":
                self.net.conditions = NetworkConditions(
                    delay_ms_max=self.rng.randint(2, 40),
                    drop_p=self.rng.random() * 0.2,
                    duplicate_p=self.rng.random() * 0.1,
                )
                self.trace.append(f"{self.now_ms:>7} NET {self.net.conditions}")
                self.stats.fault("lossy network")
            case "fsync_fail" if alive:
                node = self.rng.choice(alive)
                node.fs.fail_next_fsync(None, errno.EIO)
                self.trace.append(f"{self.now_ms:>7} FSYNC WILL FAIL n{node.id}")
                self.stats.fault("failing fsync")
            case "disk_full" if alive:
                node = self.rng.choice(alive)
                node.fs.capacity_bytes = node.fs.used_bytes() + self.rng.choice([0, 200, 600])
                self._at(self.rng.randint(20, 500), self._disk_space_back, node)
                self.trace.append(f"{self.now_ms:>7} DISK FULL n{node.id}")
                self.stats.fault("disk full")
            case "bitflip":
                self._bit_flip(members)
            case "retention":
                self._retention(alive)
            case "transfer":
                self._transfer(voters)
            case "membership" if self.opt.membership_changes:
                self._change_membership()
            case _:
                pass

    def _disk_space_back(self, node: SimNode) -> None:
        node.fs.capacity_bytes = None

    def _transfer(self, voters: frozenset[NodeId]) -> None:
        lead = self.leader()
        if lead is None or len(voters) < 2:
            return
        to = self.rng.choice(sorted(voters - {lead.id}))
        try:
            self.loop.run_as(lead.tag, lead.replica.transfer_leadership, int(to))  # type: ignore[union-attr]
        except RaftError:
            return
        self.trace.append(f"{self.now_ms:>7} TRANSFER n{lead.id} -> n{to}")
        self.stats.fault("leadership transfer")

    def _bit_flip(self, members: list[SimNode]) -> None:
        """Bit rot on a minority: a bit of the newest durable log data (the last second's
        region, which recovery cuts as a torn tail), then a reboot of that node."""
        if not self._damage_tolerable(len(members), extra=1):
            return
        candidates = [n for n in members if n.replica is not None and not n.is_damaged()]
        if not candidates:
            return
        node = self.rng.choice(candidates)
        replica = node.replica
        assert replica is not None
        segments = sorted(p for p in node.fs.listdir(DATA_DIR) if p.endswith(".log"))
        if not segments:
            return
        self._kill(node, "bit flip", power=True)
        # Half of the time the newest durable bytes (what recovery takes for a torn tail), else
        # anywhere in a random segment (sealed ones too: quarantined on open).
        newest = self.rng.random() < 0.5
        path = DATA_DIR / (segments[-1] if newest else self.rng.choice(segments))
        durable = node.fs.read_durable(path) or b""
        if len(durable) < 64:
            self._at(self.rng.randint(1, 50), self._start, node)
            return
        bit = node.fs.flip_bit(path, self.rng, start=max(0, len(durable) - 256) if newest else 0)
        node.damaged = True
        self.trace.append(f"{self.now_ms:>7} BITFLIP n{node.id} {path.name} bit {bit}")
        self.stats.fault("bit flip")
        self._at(self.rng.randint(1, 50), self._start, node)

    def _damage_tolerable(self, voters: int, *, extra: int) -> bool:
        """Would the healthy replicas still form a majority, even if the spare became a voter?
        Damaged replicas do not vote until repaired, so more damage would only stall the run."""
        damaged = extra + sum(1 for n in self.nodes.values() if n.is_damaged())
        return voters + 1 - damaged >= (voters + 1) // 2 + 1 and voters - damaged >= voters // 2 + 1

    def _retention(self, alive: list[SimNode]) -> None:
        for node in alive:
            replica = node.replica
            assert replica is not None
            core = replica.core
            start = replica.log.log_start_offset
            upto = min(core.applied, core.log.persisted_index(), replica.commit_index)
            if upto - start < 4 or self.rng.random() < 0.5:
                continue
            b = core.log.boundary_at_or_before(LogIndex(self.rng.randint(start, upto)))
            if b >= start:
                self.loop.run_as(node.tag, self.loop.create_task, replica.truncate_prefix(b))
                self.trace.append(f"{self.now_ms:>7} RETAIN n{node.id} from {b + 1}")
                self.stats.fault("retention")

    def _change_membership(self) -> None:
        lead = self.leader()
        if lead is None:
            return
        replica = lead.replica
        assert replica is not None
        core = replica.core
        m = core.membership
        try:
            if self.spare not in m.members:
                self.loop.run_as(lead.tag, replica.add_learner, self.spare)
                spare = self.nodes[self.spare]
                if spare.replica is None:
                    if not spare.ever_started:
                        spare.boot = m
                    self._start(spare)
                what = f"add learner n{self.spare}"
            elif self.spare in m.learners:
                self.loop.run_as(lead.tag, replica.promote, self.spare)
                what = f"promote n{self.spare}"
            else:
                if not self._damage_tolerable(len(m.voters) - 1, extra=0):
                    return
                victim = self.rng.choice(sorted(m.voters - {lead.id}))
                self.loop.run_as(lead.tag, replica.remove, victim)
                self.spare = victim
                what = f"remove n{victim}"
        except RaftError as e:
            self.trace.append(f"{self.now_ms:>7} config change refused: {e}")
            return
        self.trace.append(f"{self.now_ms:>7} CONFIG {what}")
        self.stats.fault("membership change")
