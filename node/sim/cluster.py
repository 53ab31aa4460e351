"""A simulated Raft group: real RaftCores, a seeded scheduler, SimNetwork, SimDisks, a client
workload and a nemesis. Everything random comes from one seed, so a run replays exactly.

Time is in simulated milliseconds; each replica ticks every ``tick_ms``. One *step* is one event
taken from the queue (a tick, a delivery, a client proposal or a fault), followed by the
replicas' Ready processing (persist -> send -> advance) and the checker.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from tidelog.node.raft import (
    Entry,
    LogIndex,
    Membership,
    Message,
    MessageType,
    NodeId,
    NotLeader,
    RaftConfig,
    RaftCore,
    RaftError,
    Ready,
    Role,
    Term,
)
from tidelog.node.sim.checker import Acked, Checker
from tidelog.node.sim.disk import SimDisk
from tidelog.node.sim.network import NetworkConditions, SimNetwork

READY_ROUNDS_MAX = 100  # a core that never runs out of Readies is a bug (livelock)


class EventKind(Enum):
    TICK = "tick"
    DELIVER = "deliver"
    CLIENT = "client"
    FAULT = "fault"
    RESTART = "restart"
    CRASH = "crash"


FAULT_WEIGHTS: dict[str, float] = {
    "crash": 15,
    "restart": 20,
    "partition": 10,
    "asymmetric": 5,
    "heal": 15,
    "lossy": 7,
    "bitflip": 5,
    "retention": 8,
    "transfer": 5,
    "membership": 10,
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
    crash_mid_ready_p: float = 0.3
    trace_len_max: int = 60
    pre_vote: bool = True
    check_quorum: bool = True
    max_append_bytes: int = 4096
    reboot_after_vote_p: float = 0.1
    """Targeted fault: crash a replica right after it sent a vote, restart it 1-5 ms later."""
    crash_new_leader_p: float = 0.02
    """Targeted fault: crash a new leader within a few ms (Figure 8's sequences need this)."""
    crash_leader_after_commit_p: float = 0.002
    """Targeted fault: crash a leader within a few ms after its commit index moved."""
    fault_weights: dict[str, float] = field(default_factory=lambda: dict(FAULT_WEIGHTS))
    core_cls: type[RaftCore] = RaftCore


@dataclass(slots=True, kw_only=True)
class Stats:
    steps: int = 0
    elections: int = 0
    commits: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1


@dataclass(slots=True)
class Proposal:
    node: NodeId
    term: Term
    index: LogIndex
    last: LogIndex
    data: bytes


class SimNode:
    def __init__(self, node_id: NodeId, membership: Membership) -> None:
        self.id = node_id
        self.disk = SimDisk(membership)
        self.core: RaftCore | None = None
        self.crash_mid_ready = False
        self.pending: list[Proposal] = []
        self.damaged = False


class Cluster:
    def __init__(self, seed: int, options: SimOptions | None = None) -> None:
        self.seed = seed
        self.opt = options or SimOptions()
        self.rng = random.Random(seed)
        self.now_ms = 0
        self._seq = 0
        self._queue: list[tuple[int, int, EventKind, object]] = []
        self.net = SimNetwork(random.Random(self.rng.getrandbits(64)))
        self.checker = Checker()
        self.stats = Stats()
        self.trace: deque[str] = deque(maxlen=self.opt.trace_len_max)
        n = self.opt.nodes
        ids = [NodeId(i) for i in range(1, n + 1)]
        self.spare = NodeId(n + 1)  # joins and leaves through membership changes
        boot = Membership(voters=frozenset(ids))
        self.nodes = {i: SimNode(i, boot) for i in [*ids, self.spare]}
        self._client_seq = 0
        for i in ids:
            self._start(self.nodes[i])
        self._schedule(self.rng.randint(1, 20), EventKind.CLIENT, None)
        if self.opt.faults:
            self._schedule(
                self.rng.randint(50, self.opt.fault_interval_ms_max), EventKind.FAULT, None
            )

    # ------------------------------------------------------------------ running

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def step(self) -> None:
        t, _, kind, payload = heapq.heappop(self._queue)
        self.now_ms = t
        self.stats.steps += 1
        match kind:
            case EventKind.TICK:
                node = self.nodes[payload]  # type: ignore[index]
                if node.core is not None:
                    node.core.tick()
                    self._schedule(self.opt.tick_ms, EventKind.TICK, node.id)
                    self._process(node)
            case EventKind.DELIVER:
                m: Message = payload  # type: ignore[assignment]
                node = self.nodes[m.to]
                if node.core is not None:
                    self.trace.append(f"{t:>7} recv {m}")
                    node.core.step(m)
                    self._process(node)
            case EventKind.CLIENT:
                self._client()
                self._schedule(
                    self.rng.randint(1, self.opt.client_interval_ms_max), EventKind.CLIENT, None
                )
            case EventKind.CRASH:
                node = self.nodes[payload]  # type: ignore[index]
                if node.core is not None and self.opt.faults:
                    self._crash(node, "targeted")
            case EventKind.RESTART:
                node = self.nodes[payload]  # type: ignore[index]
                if node.core is None and self.opt.faults:
                    self._start(node)
            case EventKind.FAULT if self.opt.faults:
                self._fault()
                self._schedule(
                    self.rng.randint(20, self.opt.fault_interval_ms_max), EventKind.FAULT, None
                )
            case EventKind.FAULT:
                pass  # healed: no more faults

    def heal(self) -> None:
        """Stop injecting faults, restart every replica, reconnect the network."""
        self.opt.faults = False
        self.net.heal()
        for node in self.nodes.values():
            node.crash_mid_ready = False
            if node.core is None and self._is_member(node.id):
                self._start(node)
        self.trace.append(f"{self.now_ms:>7} HEAL")

    def leader(self) -> RaftCore | None:
        leaders = [
            n.core for n in self.nodes.values() if n.core is not None and n.core.role == Role.LEADER
        ]
        return max(leaders, key=lambda c: c.term) if leaders else None

    def run_until_stable(self, deadline_ms: int) -> bool:
        """Liveness: after heal, a leader commits a fresh proposal before ``deadline_ms``."""
        end = self.now_ms + deadline_ms
        marker: Proposal | None = None
        while self.now_ms < end:
            self.step()
            lead = self.leader()
            if lead is None:
                continue
            if marker is None or marker.node != lead.id:
                try:
                    data = b"liveness-%d" % self.now_ms
                    idx = lead.propose(data)
                    marker = Proposal(lead.id, lead.term, idx, idx, data)
                    self._process(self.nodes[lead.id])
                except RaftError:
                    continue
            if lead.commit >= marker.last and lead.log.term_at(marker.last) == marker.term:
                return True
        return False

    def final_check(self) -> None:
        logs = {}
        voters = self._membership().voters
        for i in voters:
            disk = self.nodes[i].disk
            ents = {e.last: (e.term, e.data) for e in disk.log.all_entries()}
            logs[i] = (disk.log.log_start(), ents)
        recovering = sum(1 for i in voters if self.nodes[i].disk.recover_to is not None)
        self.checker.check_final(logs, recovering=recovering)

    # ------------------------------------------------------------------ replicas

    def _config(self, node: SimNode) -> RaftConfig:
        m = node.disk.membership
        return RaftConfig(
            node_id=node.id,
            voters=tuple(sorted(m.voters)),
            learners=tuple(sorted(m.learners)),
            election_ticks=self.opt.election_ticks,
            heartbeat_ticks=self.opt.heartbeat_ticks,
            max_inflight_msgs=16,
            max_append_bytes=self.opt.max_append_bytes,
            pre_vote=self.opt.pre_vote,
            check_quorum=self.opt.check_quorum,
        )

    def _start(self, node: SimNode) -> None:
        recover_to = node.disk.recover_on_restart()
        node.damaged = recover_to is not None
        if node.damaged:
            self.checker.forget_commit(node.id)
        node.core = self.opt.core_cls(
            self._config(node),
            node.disk.log,
            rng=random.Random(self.rng.getrandbits(64)),
            hard_state=node.disk.hard_state,
            recover_to=recover_to,
        )
        self.trace.append(f"{self.now_ms:>7} start n{node.id} recover_to={recover_to}")
        self.checker.on_commit(
            node.id, node.core.commit, [], node.disk.chains, damaged=node.damaged
        )
        self._schedule(self.rng.randint(1, self.opt.tick_ms), EventKind.TICK, node.id)

    def _crash(self, node: SimNode, why: str) -> None:
        node.core = None
        node.pending = []
        node.crash_mid_ready = False
        self.trace.append(f"{self.now_ms:>7} CRASH n{node.id} ({why})")

    def _process(self, node: SimNode) -> None:
        """The runtime shell: persist -> send -> apply -> advance, until nothing is ready."""
        core = node.core
        for _ in range(READY_ROUNDS_MAX):
            if core is None or not core.has_ready():
                return
            rd = core.ready()
            assert rd is not None
            start_chain = self._start_chain(rd)
            if node.crash_mid_ready:
                written = node.disk.write_partial(rd, self.rng, start_chain)
                self.checker.on_append(node.id, written, node.disk.chains)
                self.stats.fault("torn/partial write")
                self._crash(node, "mid-Ready")
                return
            prev_commit = self.checker.node_commit.get(node.id, LogIndex(-1))
            written = node.disk.write(rd, start_chain)
            self.checker.on_append(node.id, written, node.disk.chains)
            for m in rd.messages:
                for delay in self.net.delivery_delays_ms(m):
                    self._schedule(delay, EventKind.DELIVER, m)
                if (m.frm, m.to) in self.net.blocked and self.rng.random() < 0.1:
                    core.report_unreachable(m.to)
            if rd.soft_state is not None:
                self.trace.append(
                    f"{self.now_ms:>7} n{node.id} {rd.soft_state.role.value} t{rd.soft_state.term}"
                )
                if rd.soft_state.role == Role.LEADER:
                    self.stats.elections += 1
                    self._maybe_target(node, self.opt.crash_new_leader_p)
                    self.checker.on_leader(
                        node.id, core.term, node.disk.chains, node.disk.log.log_start()
                    )
            if rd.commit_index != prev_commit:
                if core.role == Role.LEADER:
                    self._maybe_target(node, self.opt.crash_leader_after_commit_p)
                newly = [
                    e
                    for e in node.disk.log.entries(LogIndex(prev_commit + 1), 1 << 62)
                    if e.last <= rd.commit_index
                ]
                self.checker.on_commit(
                    node.id, rd.commit_index, newly, node.disk.chains, damaged=node.damaged
                )
            core.advance(rd)
            self._acknowledge(node)
            voted = any(m.type == MessageType.VOTE_RESP and not m.reject for m in rd.messages)
            if voted and self.opt.faults and self.rng.random() < self.opt.reboot_after_vote_p:
                self._crash(node, "reboot after vote")
                self.stats.fault("reboot after vote")
                self._schedule(self.rng.randint(1, 5), EventKind.RESTART, node.id)
                return
        raise AssertionError(f"node {node.id} still has a Ready after {READY_ROUNDS_MAX} rounds")

    def _maybe_target(self, node: SimNode, p: float) -> None:
        if self.opt.faults and p and self.rng.random() < p:
            self.stats.fault("targeted crash")
            self._schedule(self.rng.randint(0, 5), EventKind.CRASH, node.id)

    def _start_chain(self, rd: Ready) -> int | None:
        if rd.reset_log_to is None:
            return None
        seen = self.checker.committed.get(rd.reset_log_to.start - 1)
        return seen[1] if seen is not None else None

    def _acknowledge(self, node: SimNode) -> None:
        core = node.core
        if core is None or not node.pending:
            return
        keep = []
        for p in node.pending:
            if core.commit >= p.last:
                if core.log.term_at(p.last) == p.term:
                    self.checker.on_ack(Acked(index=p.index, last=p.last, term=p.term, data=p.data))
                    self.stats.commits += 1
            elif core.term == p.term and core.role == Role.LEADER:
                keep.append(p)
        node.pending = keep

    # ------------------------------------------------------------------ workload

    def _client(self) -> None:
        leaders = [
            n for n in self.nodes.values() if n.core is not None and n.core.role == Role.LEADER
        ]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        assert node.core is not None
        self._client_seq += 1
        data = b"v%d" % self._client_seq
        count = self.rng.randint(1, 3)
        try:
            idx = node.core.propose(data, count)
        except (NotLeader, RaftError):
            return
        node.pending.append(Proposal(node.id, node.core.term, idx, LogIndex(idx + count - 1), data))
        self._process(node)

    # ------------------------------------------------------------------ nemesis

    def _membership(self) -> Membership:
        """The newest membership any live replica has applied (the cluster's current one)."""
        best = None
        for n in self.nodes.values():
            if n.core is not None and (best is None or n.core.commit > best.commit):
                best = n.core
        return (
            best.membership if best is not None else next(iter(self.nodes.values())).disk.membership
        )

    def _is_member(self, node_id: NodeId) -> bool:
        return node_id in self._membership().members or node_id == self.spare

    def _fault(self) -> None:
        names = list(self.opt.fault_weights)
        action = self.rng.choices(names, weights=[self.opt.fault_weights[k] for k in names])[0]
        alive = [n for n in self.nodes.values() if n.core is not None]
        dead = [n for n in self.nodes.values() if n.core is None and self._is_member(n.id)]
        voters = self._membership().voters
        members = [self.nodes[i] for i in sorted(voters)]
        match action:
            case "crash" if alive:
                node = self.rng.choice(alive)
                if self.rng.random() < self.opt.crash_mid_ready_p:
                    node.crash_mid_ready = True
                    self.stats.fault("crash mid-write")
                else:
                    self._crash(node, "nemesis")
                    self.stats.fault("crash")
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
                self.trace.append(f"{self.now_ms:>7} heal network")
            case "lossy":
                self.net.conditions = NetworkConditions(
                    delay_ms_max=self.rng.randint(2, 40),
                    drop_p=self.rng.random() * 0.2,
                    duplicate_p=self.rng.random() * 0.1,
                )
                self.trace.append(f"{self.now_ms:>7} NET {self.net.conditions}")
                self.stats.fault("lossy network")
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

    def _transfer(self, voters: frozenset[NodeId]) -> None:
        lead = self.leader()
        if lead is None or len(voters) < 2:
            return
        to = self.rng.choice(sorted(voters - {lead.id}))
        try:
            lead.transfer_leadership(to)
        except RaftError:
            return
        self.trace.append(f"{self.now_ms:>7} TRANSFER n{lead.id} -> n{to}")
        self.stats.fault("leadership transfer")
        self._process(self.nodes[lead.id])

    def _bit_flip(self, members: list[SimNode]) -> None:
        if not self._damage_tolerable(len(members), extra=1):
            return  # only ever a minority of damaged replicas (otherwise data is truly lost)
        candidates = [
            n for n in members if n.disk.recover_to is None and n.disk.corrupt_index is None
        ]
        if not candidates:
            return
        node = self.rng.choice(candidates)
        if node.disk.flip_bit(self.rng):
            self.trace.append(f"{self.now_ms:>7} BITFLIP n{node.id} at {node.disk.corrupt_index}")
            self.stats.fault("bit flip")
            if node.core is not None:
                self._crash(node, "checksum")
            self._start(node)

    def _damage_tolerable(self, voters: int, *, extra: int) -> bool:
        """Would the healthy replicas still form a majority, even if the spare became a voter?
        Damaged replicas do not vote until repaired, so more damage would only stall the run."""
        damaged = extra + sum(
            1
            for n in self.nodes.values()
            if n.disk.recover_to is not None or n.disk.corrupt_index is not None
        )
        return voters + 1 - damaged >= (voters + 1) // 2 + 1 and voters - damaged >= voters // 2 + 1

    def _retention(self, alive: list[SimNode]) -> None:
        for node in alive:
            core = node.core
            assert core is not None
            upto = min(core.applied, core.log.persisted_index())
            if upto - node.disk.log.log_start() < 4 or self.rng.random() < 0.5:
                continue
            target = LogIndex(self.rng.randint(node.disk.log.log_start(), upto))
            b = core.log.boundary_at_or_before(target)
            if b >= node.disk.log.log_start():
                node.disk.retain_from(b)
                self.trace.append(f"{self.now_ms:>7} RETAIN n{node.id} from {b + 1}")
                self.stats.fault("retention")

    def _change_membership(self) -> None:
        lead = self.leader()
        if lead is None:
            return
        m = lead.membership
        try:
            if self.spare not in m.members:
                lead.add_learner(self.spare)
                spare = self.nodes[self.spare]
                if spare.core is None:
                    spare.disk.membership = m
                    self._start(spare)
                what = f"add learner n{self.spare}"
            elif self.spare in m.learners:
                lead.promote(self.spare)
                what = f"promote n{self.spare}"
            else:
                if not self._damage_tolerable(len(m.voters) - 1, extra=0):
                    return
                victim = self.rng.choice(sorted(m.voters - {lead.id}))
                lead.remove(victim)
                self.spare = victim
                what = f"remove n{victim}"
        except RaftError as e:
            self.trace.append(f"{self.now_ms:>7} config change refused: {e}")
            return
        self.trace.append(f"{self.now_ms:>7} CONFIG {what}")
        self.stats.fault("membership change")
        self._process(self.nodes[lead.id])

    # ------------------------------------------------------------------ queue

    def _schedule(self, delay_ms: int, kind: EventKind, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now_ms + delay_ms, self._seq, kind, payload))


def entries_of(core: RaftCore) -> list[Entry]:
    return core.log.entries(core.log.log_start(), 1 << 62)
