"""The nemesis: fault kinds, seeded schedules (pure data), and the thread that executes them.

Theory of operation. A scenario's `schedule(...)` is a pure function of (scenario, duration,
node count, seed): a tuple of `Episode`s — a fault kind, a start time, a duration and a seeded
`pick` used to choose targets. Who the leader is can only be known when the episode starts, so
targets are resolved then (from a Metadata snapshot), and what was hit is written to the history
(`fault_start` / `fault_stop` with the targets). The same seed therefore replays the same kinds at
the same times; the nodes hit by "the leader" follow the cluster.

Each episode runs in its own thread: resolve targets, record `fault_start`, inject, wait until its
end (or until the run is aborted), heal, record `fault_stop`. Healing is in a `finally`, and the
runner additionally heals everything (`heal_all`) at the end, so no fault outlives the run.
Concurrent episodes (scenario `mixed`) never hit one node with two process faults, keep at most a
minority of nodes down at once, and never overlap two network faults (healing partitions clears
all of them).

Power cuts (backends with `Capability.POWER`: data dirs on LazyFS) kill the node and drop every
write and name change it had not fsynced; a seeded half of them are torn (each file keeps a
seeded, page-aligned prefix of its unsynced pages). What each cut dropped is recorded with the
executed fault (`power_cut` in run.json).

Membership episodes (`add-node`, `decommission`, `reassign`; backends with
`Capability.MEMBERSHIP`: spare node slots) are operator changes rather than faults
(membership_ops.py): they run one at a time, in schedule order (each waits for the previous to
finish), while process and network faults go on around them; what each did and how it ended is
`outcome` in its executed entry. Targets, heal-all and the minority count use the backend's
CURRENT members (`Backend.nodes`), which follow the adds and removals.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tidelog.chaos import grudge
from tidelog.chaos.backend import Backend, Capability
from tidelog.chaos.history import FaultStart, FaultStop
from tidelog.chaos.membership_ops import MembershipOps, NoCandidate
from tidelog.chaos.workload import ClusterView, Recorder

if TYPE_CHECKING:
    from tidelog.client.security import ClientSecurity

__all__ = ["Episode", "FaultKind", "Nemesis", "NoTarget", "describe_fault_detail", "requires"]

log = logging.getLogger(__name__)

FLAKY_LOSS_PERCENT = 20.0
FLAKY_DELAY_MS = 50
ROLLING_STEP_TIMEOUT_S = 30.0
KILL_ALL_DOWN_S = 1.0
FOLLOWER_LOOKUPS_MAX = 5  # Metadata snapshots, 0.3 s apart, to learn a partition's replicas


class FaultKind(enum.Enum):
    KILL_RANDOM = "kill-random"
    KILL_LEADER = "kill-leader"
    KILL_METADATA_LEADER = "kill-metadata-leader"
    KILL_ALL = "kill-all"
    PAUSE_RANDOM = "pause-random"
    PAUSE_LEADER = "pause-leader"
    ISOLATE_RANDOM = "isolate-random"
    ISOLATE_LEADER = "isolate-leader"
    MAJORITY_MINORITY = "majority-minority"
    BRIDGE = "bridge"
    ONE_WAY = "one-way"
    FLAKY = "flaky-network"
    ROLLING_RESTART = "rolling-restart"
    DISK_FULL = "disk-full"
    POWER_CUT_FOLLOWER = "power-cut-follower"
    POWER_CUT_LEADER = "power-cut-leader"
    POWER_CUT_ALL = "power-cut-all"
    POWER_CUT_PARTITION = "power-cut-partition"  # isolate a leader, then cut the majority's power
    ADD_NODE = "add-node"  # start a spare with --join, admit it (a metadata voter)
    DECOMMISSION = "decommission"  # drain and remove a member, wait until it has left
    REASSIGN = "reassign"  # move one partition's replicas (onto the newest member if it can)


MEMBERSHIP_KINDS = (FaultKind.ADD_NODE, FaultKind.REASSIGN, FaultKind.DECOMMISSION)


class _Class(enum.Enum):
    PROCESS = "process"  # occupies its target nodes
    NETWORK = "network"  # one at a time
    EXCLUSIVE = "exclusive"  # nothing else at the same time
    MEMBERSHIP = "membership"  # one at a time among themselves; faults may overlap them


_NEEDS: dict[FaultKind, Capability] = {
    FaultKind.ISOLATE_RANDOM: Capability.PARTITION,
    FaultKind.ISOLATE_LEADER: Capability.PARTITION,
    FaultKind.MAJORITY_MINORITY: Capability.PARTITION,
    FaultKind.BRIDGE: Capability.PARTITION,
    FaultKind.ONE_WAY: Capability.PARTITION,
    FaultKind.FLAKY: Capability.LOSS,
    FaultKind.DISK_FULL: Capability.DISK,
    FaultKind.POWER_CUT_FOLLOWER: Capability.POWER,
    FaultKind.POWER_CUT_LEADER: Capability.POWER,
    FaultKind.POWER_CUT_ALL: Capability.POWER,
    FaultKind.POWER_CUT_PARTITION: Capability.POWER,
    **{k: Capability.MEMBERSHIP for k in MEMBERSHIP_KINDS},
}
_ALSO_NEEDS: dict[FaultKind, frozenset[Capability]] = {
    FaultKind.POWER_CUT_PARTITION: frozenset({Capability.PARTITION}),
}

_CLASS: dict[FaultKind, _Class] = {
    FaultKind.KILL_ALL: _Class.EXCLUSIVE,
    FaultKind.ROLLING_RESTART: _Class.EXCLUSIVE,
    FaultKind.POWER_CUT_ALL: _Class.EXCLUSIVE,
    FaultKind.POWER_CUT_PARTITION: _Class.EXCLUSIVE,
    **{k: _Class.NETWORK for k in (FaultKind.ISOLATE_RANDOM, FaultKind.ISOLATE_LEADER,
                                   FaultKind.MAJORITY_MINORITY, FaultKind.BRIDGE,
                                   FaultKind.ONE_WAY, FaultKind.FLAKY)},
    **{k: _Class.MEMBERSHIP for k in MEMBERSHIP_KINDS},
}


def needs(kind: FaultKind) -> Capability:
    """The main capability a fault kind needs (see `requires` for all of them)."""
    return _NEEDS.get(kind, Capability.PROCESS)


def requires(kind: FaultKind) -> frozenset[Capability]:
    """Every capability a fault kind needs (power cut during a partition: power and partition)."""
    return frozenset({needs(kind)}) | _ALSO_NEEDS.get(kind, frozenset())


def fault_class(kind: FaultKind) -> str:
    return _CLASS.get(kind, _Class.PROCESS).value


@dataclass(frozen=True, slots=True, kw_only=True)
class Episode:
    kind: FaultKind
    start_s: float
    duration_s: float
    pick: int  # seeded; chooses targets among the candidates known at start time

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class NoTarget(Exception):
    """The episode has nothing to hit right now (no leader known, every node busy)."""


@dataclass(slots=True)
class _Active:
    name: str
    targets: tuple[str, ...]
    heal: Callable[[], None]
    # Runs after fault_start is recorded (faults that are a procedure: kill-all, rolling restart).
    during: Callable[[], None] | None = None
    # What the fault did beyond its targets (power cuts: what each file system dropped).
    detail: dict[str, object] = field(default_factory=dict)


class Nemesis:
    """Executes a schedule against a backend, recording fault edges in the history."""

    def __init__(self, backend: Backend, view: ClusterView, recorder: Recorder,
                 *, partitions: int, on_change: Callable[[], None] | None = None,
                 topic: str = "", security: ClientSecurity | None = None) -> None:
        self._backend = backend
        self._view = view
        self._rec = recorder
        self._partitions = partitions
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # nodes under a process fault
        self._threads: list[threading.Thread] = []
        self.active: dict[int, str] = {}  # episode number -> "name(targets)", for progress
        self.executed: list[dict[str, object]] = []
        self.skipped: list[str] = []
        self._on_change = on_change or (lambda: None)
        self._membership = MembershipOps(backend, view, topic=topic, security=security)
        self._membership_lock = threading.Lock()  # membership episodes run one at a time

    def run(self, schedule: tuple[Episode, ...], t0: float) -> None:
        """Start each episode at t0 + start_s in its own thread (returns when all have started)."""
        for number, episode in enumerate(schedule):
            wait = t0 + episode.start_s - time.monotonic()
            if wait > 0 and self._abort.wait(wait):
                return
            t = threading.Thread(target=self._episode, args=(number, episode, t0),
                                 name=f"chaos-nemesis-{number}", daemon=True)
            self._threads.append(t)
            t.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def abort(self) -> None:
        """Heal every running episode now (they record their fault_stop)."""
        self._abort.set()

    def heal_all(self) -> None:
        """Belt and braces after the run: every node up and resumed, network and disks healed."""
        b = self._backend
        for step in (b.heal_partitions, b.heal_links):
            with contextlib.suppress(Exception):
                step()
        for n in b.nodes:
            with contextlib.suppress(Exception):
                b.free_disk(n)
            with contextlib.suppress(Exception):
                b.resume(n)
            with contextlib.suppress(Exception):
                b.start_node(n)

    # --- one episode ----------------------------------------------------------------------------

    def _episode(self, number: int, ep: Episode, t0: float) -> None:
        if fault_class(ep.kind) == _Class.MEMBERSHIP.value:
            # Even after the abort (the run's end): an operation waiting for the previous one
            # still runs, bounded by its own timeout, and the runner waits for it (the workload
            # goes on meanwhile); skipping it would make a run that changed nothing.
            with self._membership_lock:
                self._one_episode(number, ep, t0)
            return
        self._one_episode(number, ep, t0)

    def _one_episode(self, number: int, ep: Episode, t0: float) -> None:
        rng = random.Random(ep.pick)
        try:
            active = self._inject(ep.kind, rng, ep.duration_s)
        except (NoTarget, NoCandidate) as exc:
            self.skipped.append(f"{ep.kind.value} at {ep.start_s:.1f}s: {exc}")
            return
        except Exception as exc:  # an injection that failed half-way: heal what we can
            log.exception("injecting %s failed", ep.kind.value)
            self.skipped.append(f"{ep.kind.value} at {ep.start_s:.1f}s failed: {exc}")
            self.heal_all()
            return
        started = self._rec.now_ms()
        self._rec.append(FaultStart(name=active.name, targets=active.targets, time_ms=started))
        self.active[number] = f"{active.name}({','.join(active.targets)})"
        self._on_change()
        try:
            if active.during is not None:
                active.during()
            remaining = t0 + ep.end_s - time.monotonic()
            if remaining > 0:
                self._abort.wait(remaining)
        finally:
            try:
                active.heal()
            finally:
                with self._lock:
                    self._busy.difference_update(active.targets)
                self._rec.append(FaultStop(name=active.name, targets=active.targets,
                                           time_ms=self._rec.now_ms()))
                self.active.pop(number, None)
                self.executed.append({"fault": active.name, "targets": list(active.targets),
                                      "start_ms": round(started, 1),
                                      "stop_ms": round(self._rec.now_ms(), 1),
                                      **active.detail})
                self._on_change()

    def _inject(self, kind: FaultKind, rng: random.Random, duration_s: float) -> _Active:
        b = self._backend
        nodes = list(b.nodes)
        name = kind.value
        if kind in MEMBERSHIP_KINDS:
            return self._membership_op(kind, rng)
        match kind:
            case FaultKind.POWER_CUT_FOLLOWER | FaultKind.POWER_CUT_LEADER:
                node = self._claim(self._target(kind, rng))
                torn = _torn_seed(rng)
                try:
                    cut = b.power_cut([node], torn_seed=torn)
                except BaseException:
                    with self._lock:
                        self._busy.discard(node)
                    raise
                return _Active(name=name, targets=(node,), heal=lambda: b.start_node(node),
                               detail={"power_cut": cut})
            case FaultKind.POWER_CUT_ALL:
                detail: dict[str, object] = {}
                return _Active(name=name, targets=tuple(nodes), heal=lambda: self._start(nodes),
                               during=lambda: self._power_cut_all(nodes, rng, detail),
                               detail=detail)
            case FaultKind.POWER_CUT_PARTITION:
                leader = self._target(FaultKind.ISOLATE_LEADER, rng)
                victim = rng.choice([n for n in nodes if n != leader])
                detail = {}

                def heal() -> None:
                    b.heal_partitions()
                    b.start_node(victim)

                return _Active(name=name, targets=(leader, victim), heal=heal, detail=detail,
                               during=lambda: self._power_cut_in_partition(
                                   leader, victim, nodes, rng, duration_s, detail))
            case FaultKind.KILL_RANDOM | FaultKind.KILL_LEADER | FaultKind.KILL_METADATA_LEADER:
                node = self._claim(self._target(kind, rng))
                b.kill(node)
                return _Active(name=name, targets=(node,), heal=lambda: b.start_node(node))
            case FaultKind.PAUSE_RANDOM | FaultKind.PAUSE_LEADER:
                node = self._claim(self._target(kind, rng))
                b.pause(node)
                return _Active(name=name, targets=(node,), heal=lambda: b.resume(node))
            case FaultKind.KILL_ALL:
                return _Active(name=name, targets=tuple(nodes), heal=lambda: self._start(nodes),
                               during=lambda: self._kill_all(nodes))
            case FaultKind.ROLLING_RESTART:
                return _Active(name=name, targets=tuple(nodes), heal=lambda: self._start(nodes),
                               during=lambda: self._rolling_restart(nodes))
            case FaultKind.DISK_FULL:
                node = self._claim(self._target(kind, rng))
                b.fill_disk(node)
                return _Active(name=name, targets=(node,), heal=lambda: b.free_disk(node))
            case FaultKind.FLAKY:
                node = rng.choice(nodes)
                b.degrade(node, loss_percent=FLAKY_LOSS_PERCENT, delay_ms=FLAKY_DELAY_MS)
                return _Active(name=name, targets=(node,), heal=b.heal_links)
            case _:
                cut, targets = self._grudge(kind, rng, nodes)
                b.partition(cut)
                return _Active(name=name, targets=targets, heal=b.heal_partitions)

    def _membership_op(self, kind: FaultKind, rng: random.Random) -> _Active:
        """Resolve the operation's subject now; `during` carries it out (blocking)."""
        ops = self._membership
        detail: dict[str, object] = {}
        with self._lock:
            busy = set(self._busy)
        match kind:
            case FaultKind.ADD_NODE:
                node = ops.next_spare()
                return _Active(name=kind.value, targets=(node,), heal=_nothing, detail=detail,
                               during=lambda: ops.add_node(node, detail))
            case FaultKind.DECOMMISSION:
                node = ops.decommission_target(rng, busy)
                ops.leaving.add(node)  # before fault_start: no kill may claim it meanwhile
                return _Active(name=kind.value, targets=(node,), heal=_nothing, detail=detail,
                               during=lambda: ops.decommission(node, detail))
            case FaultKind.REASSIGN:
                partition, current, target = ops.reassign_target(rng, self._partitions,
                                                                 busy)
                detail.update(partition=partition, replicas=list(current), target=list(target))
                return _Active(name=kind.value, targets=target, heal=_nothing, detail=detail,
                               during=lambda: ops.reassign(partition, target, detail))
        raise AssertionError(kind)

    def _grudge(self, kind: FaultKind, rng: random.Random,
                nodes: list[str]) -> tuple[grudge.Grudge, tuple[str, ...]]:
        match kind:
            case FaultKind.ISOLATE_RANDOM | FaultKind.ISOLATE_LEADER:
                node = self._target(kind, rng)
                return grudge.isolate(node, nodes), (node,)
            case FaultKind.MAJORITY_MINORITY:
                cut = grudge.majority_minority(nodes, rng)
                return cut, _minority(cut, nodes)
            case FaultKind.BRIDGE:
                cut = grudge.bridge(nodes, rng)
                # targets: the bridge node first, then one half
                touched = {n for pair in cut for n in pair}
                middle = [n for n in nodes if n not in touched]
                return cut, (*middle, *sorted(_minority(cut, nodes)))
            case FaultKind.ONE_WAY:
                src, dst = rng.sample(nodes, 2)
                return grudge.one_way(src, dst), (src, dst)
        raise AssertionError(kind)

    def _target(self, kind: FaultKind, rng: random.Random) -> str:
        """The node to hit: the leader of a seeded partition, the metadata leader, or random."""
        with self._lock:
            free = [n for n in self._backend.nodes
                    if n not in self._busy and self._backend.is_running(n)]
        if kind is FaultKind.POWER_CUT_FOLLOWER:
            return self._follower(rng, free)
        if kind in (FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER, FaultKind.ISOLATE_LEADER,
                    FaultKind.KILL_METADATA_LEADER, FaultKind.POWER_CUT_LEADER):
            snap = self._view.snapshot()
            if kind is FaultKind.KILL_METADATA_LEADER:
                node = snap.metadata_leader
                what = "metadata leader"
            else:
                partition = rng.randrange(self._partitions)
                node = snap.leaders.get(partition, (None, 0))[0]
                what = f"leader of partition {partition}"
            if node is None:
                raise NoTarget(f"no {what} known")
            return node
        if not free:
            raise NoTarget("every node is busy or down")
        return rng.choice(free)

    def _follower(self, rng: random.Random, free: list[str]) -> str:
        """A node that replicates a seeded partition without leading it."""
        partition = rng.randrange(self._partitions)
        leader, replicas = None, ()
        for attempt in range(FOLLOWER_LOOKUPS_MAX):  # a Metadata answer may lack the replicas
            snap = self._view.snapshot()
            leader = snap.leaders.get(partition, (None, 0))[0]
            replicas = snap.replicas.get(partition, ((), ()))[0]
            if leader is not None and replicas:
                break
            if attempt + 1 < FOLLOWER_LOOKUPS_MAX and self._abort.wait(0.3):
                break
        followers = sorted(n for n in replicas if n != leader and n in free)
        if leader is None or not followers:
            raise NoTarget(f"no follower of partition {partition} known (leader {leader}, "
                           f"replicas {list(replicas)})")
        return rng.choice(followers)

    def _claim(self, node: str) -> str:
        """Mark `node` as under a process fault; keeps at most a minority down at once."""
        with self._lock:
            if node in self._busy:
                raise NoTarget(f"{node} is already under a fault")
            if node in self._membership.leaving:
                raise NoTarget(f"{node} is being decommissioned")
            if len(self._busy) + 1 > (len(self._backend.nodes) - 1) // 2:
                raise NoTarget("a minority of nodes is already down")
            self._busy.add(node)
        return node

    def _start(self, nodes: list[str]) -> None:
        for n in nodes:
            self._backend.start_node(n)

    def _kill_all(self, nodes: list[str]) -> None:
        for n in nodes:
            self._backend.kill(n)
        self._abort.wait(KILL_ALL_DOWN_S)
        self._start(nodes)

    def _power_cut_all(self, nodes: list[str], rng: random.Random,
                       detail: dict[str, object]) -> None:
        detail["power_cut"] = self._backend.power_cut(nodes, torn_seed=_torn_seed(rng))
        self._abort.wait(KILL_ALL_DOWN_S)
        self._start(nodes)

    def _power_cut_in_partition(self, leader: str, victim: str, nodes: list[str],
                                rng: random.Random, duration_s: float,
                                detail: dict[str, object]) -> None:
        """Isolate `leader`; a third in, cut power to `victim` (a node of the majority side, so
        that side cannot commit until it is back); a third later restart it, still partitioned.
        The heal flushes the partition."""
        b = self._backend
        b.partition(grudge.isolate(leader, nodes))
        if self._abort.wait(duration_s / 3):
            return
        detail["power_cut"] = b.power_cut([victim], torn_seed=_torn_seed(rng))
        self._abort.wait(duration_s / 3)
        b.start_node(victim)

    def _rolling_restart(self, nodes: list[str]) -> None:
        """SIGTERM each node in turn, start it again, wait until it answers Metadata."""
        b = self._backend
        for n in nodes:
            if self._abort.is_set():
                return
            b.terminate(n)
            b.start_node(n)
            deadline = time.monotonic() + ROLLING_STEP_TIMEOUT_S
            while time.monotonic() < deadline and n not in self._view.snapshot().answered:
                time.sleep(0.2)
            time.sleep(1.0)  # let it rejoin its groups before the next one goes


def describe_fault_detail(executed: dict[str, object]) -> str:
    """What an executed fault did beyond hitting its targets, for the report's fault list:
    for a power cut, what each node's file system dropped; for a membership operation, how it
    ended ("" for other faults)."""
    if "outcome" in executed:
        move = (f"p{executed['partition']} {','.join(executed['replicas'])} -> "  # type: ignore[arg-type]
                f"{','.join(executed['target'])}; " if "partition" in executed else "")  # type: ignore[arg-type]
        return f"  ({move}{executed['outcome']} after {executed.get('took_s', '?')} s)"
    cuts = executed.get("power_cut")
    if not isinstance(cuts, dict):
        return ""
    parts = []
    for node, c in sorted(cuts.items()):
        torn = f", torn: {c['kept_bytes']} B kept" if c.get("torn") else ""
        parts.append(f"{node} dropped {c['dropped_bytes']} B in {c['files']} files, "
                     f"{c['undone_names']} names undone{torn}")
    return "  (" + "; ".join(parts) + ")"


def _nothing() -> None:
    """A membership operation has nothing to heal: it is undone by no one."""


def _torn_seed(rng: random.Random) -> int | None:
    """Half of the power cuts are torn (seeded): a prefix of the unsynced pages survives."""
    seed = rng.getrandbits(32)
    return seed if rng.random() < 0.5 else None


def _minority(cut: grudge.Grudge, nodes: list[str]) -> tuple[str, ...]:
    """The smaller side of a symmetric split (the nodes cut from the first node's side)."""
    first = nodes[0]
    side = {first} | {n for n in nodes if n != first and (first, n) not in cut}
    other = [n for n in nodes if n not in side]
    return tuple(sorted(other if len(other) <= len(side) else side))
