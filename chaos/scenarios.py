"""The shipped scenarios, and their schedules as pure functions of (duration, seed, capabilities).

A run's timeline: `warmup` with no fault, then episodes, all healed by `duration - cooldown`, then
a fault-free `cooldown` in which the workload keeps going, so recovery after the last heal is
measured. Single-fault scenarios alternate one fault of their kind with a healthy gap; `mixed`
starts a random kind every few seconds, overlapping (see nemesis.py for what may overlap).

The power-cut scenarios need a backend whose data directories lose unsynced writes (local, as
root, with FUSE: the runner mounts LazyFS for them); `mixed` draws power cuts only from such a
backend, and the runner gives it none (its disk faults use a tmpfs).

The membership scenarios (`membership`, `membership-5`, `membership-7`) need spare node slots
(`Capability.MEMBERSHIP`): they cycle add-node, reassign, decommission back to back, and start
one of their faults (kill the leader; with partitions, a majority/minority split too) in the
middle of each, so every operation runs while a node is down or cut off. `membership_spares`
says how many spare slots a run needs (one per add-node).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tidelog.chaos.backend import Capability
from tidelog.chaos.nemesis import MEMBERSHIP_KINDS, Episode, FaultKind, fault_class, requires

__all__ = ["SCENARIOS", "Scenario", "membership_spares", "missing_capability", "needs_power",
           "schedule"]

SPARES_MAX = 4  # spare slots a membership run starts with at most (one per add-node)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    summary: str
    kinds: tuple[FaultKind, ...]  # for `mixed`: those it draws from (the available ones)
    fault_s_max: float = 15.0  # one episode lasts at most this long
    fault_s_min: float = 3.0
    nodes: int | None = None  # a node count the scenario fixes (None: the run's --nodes)
    # Membership scenarios: their operations, in cycle order (the faults are `kinds`).
    membership: tuple[FaultKind, ...] = ()


_K = FaultKind
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(name="kill-leader", kinds=(_K.KILL_LEADER,),
             summary="kill -9 the leader of a random partition; restart it at heal"),
    Scenario(name="kill-random", kinds=(_K.KILL_RANDOM,),
             summary="kill -9 a random node; restart it at heal"),
    Scenario(name="kill-all", kinds=(_K.KILL_ALL,), fault_s_min=2.0, fault_s_max=4.0,
             summary="kill -9 every node at once, restart them all a second later"),
    Scenario(name="pause-leader", kinds=(_K.PAUSE_LEADER,),
             summary="SIGSTOP the leader of a random partition; SIGCONT at heal"),
    Scenario(name="isolate-leader", kinds=(_K.ISOLATE_LEADER,),
             summary="cut a partition's leader off from every other node (clients still reach "
                     "it)"),
    Scenario(name="majority-minority", kinds=(_K.MAJORITY_MINORITY,),
             summary="split the nodes into a random majority and minority"),
    Scenario(name="bridge", kinds=(_K.BRIDGE,),
             summary="two halves that cannot talk, joined through one node that reaches both"),
    Scenario(name="one-way", kinds=(_K.ONE_WAY,),
             summary="drop packets from one random node to another, one direction only"),
    Scenario(name="flaky-network", kinds=(_K.FLAKY,),
             summary="20% packet loss (and 50 ms delay where tc netem exists) on a random "
                     "node's link"),
    Scenario(name="rolling-restart", kinds=(_K.ROLLING_RESTART,), fault_s_min=5.0,
             summary="SIGTERM and restart every node in turn, waiting for each to answer"),
    Scenario(name="metadata-leader-kill", kinds=(_K.KILL_METADATA_LEADER,),
             summary="kill -9 the metadata Raft group's leader; restart it at heal"),
    Scenario(name="disk-full", kinds=(_K.DISK_FULL,),
             summary="fill a random node's data filesystem (a small tmpfs) to ENOSPC; free it "
                     "at heal"),
    Scenario(name="power-cut-follower", kinds=(_K.POWER_CUT_FOLLOWER,),
             summary="cut power to a follower of a random partition (kill -9, and its file "
                     "system loses every write not fsynced); restart it at heal"),
    Scenario(name="power-cut-leader", kinds=(_K.POWER_CUT_LEADER,),
             summary="cut power to the leader of a random partition; restart it at heal"),
    Scenario(name="power-cut-all", kinds=(_K.POWER_CUT_ALL,), fault_s_min=2.0, fault_s_max=4.0,
             summary="cut power to every node at once, restart them all a second later"),
    Scenario(name="power-cut-partition", kinds=(_K.POWER_CUT_PARTITION,), fault_s_min=6.0,
             summary="isolate a partition's leader, then cut power to a node of the majority "
                     "side and restart it while the partition lasts"),
    Scenario(name="mixed", kinds=tuple(k for k in FaultKind if k not in MEMBERSHIP_KINDS),
             fault_s_min=2.0, fault_s_max=8.0,
             summary="random faults of every available kind at seeded times, overlapping"),
    Scenario(name="membership", kinds=(_K.KILL_LEADER,), membership=MEMBERSHIP_KINDS,
             fault_s_min=3.0, fault_s_max=12.0,
             summary="add a spare node (--join + add-node), move a partition onto it, "
                     "decommission an old node, in a cycle, each while a leader is killed"),
    Scenario(name="membership-5", nodes=5, kinds=(_K.KILL_LEADER, _K.MAJORITY_MINORITY),
             membership=MEMBERSHIP_KINDS, fault_s_min=4.0, fault_s_max=12.0,
             summary="membership on 5 nodes + spares, faults alternating kill-leader and a "
                     "majority/minority split"),
    Scenario(name="membership-7", nodes=7, kinds=(_K.KILL_LEADER, _K.MAJORITY_MINORITY),
             membership=MEMBERSHIP_KINDS, fault_s_min=4.0, fault_s_max=12.0,
             summary="membership on 7 nodes + spares, faults alternating kill-leader and a "
                     "majority/minority split"),
)}


def missing_capability(scenario: Scenario, capabilities: frozenset[Capability]) -> str | None:
    """Why this scenario cannot run on a backend with these capabilities (None: it can)."""
    if scenario.name == "mixed":
        return None if available_kinds(scenario, capabilities) else "no fault kind available"
    wanted = {c.value for k in (*scenario.kinds, *scenario.membership) for c in requires(k)}
    lacking = sorted(wanted - {c.value for c in capabilities})
    return f"needs {', '.join(lacking)} faults" if lacking else None


def needs_power(scenario: Scenario) -> bool:
    """Whether the run must put the data directories on LazyFS (not for `mixed`: see above)."""
    return scenario.name != "mixed" and any(Capability.POWER in requires(k)
                                            for k in scenario.kinds)


def available_kinds(scenario: Scenario,
                    capabilities: frozenset[Capability]) -> tuple[FaultKind, ...]:
    return tuple(k for k in scenario.kinds if requires(k) <= capabilities)


def phases(duration_s: float) -> tuple[float, float]:
    """(warmup, cooldown) seconds for a run of this duration."""
    warmup = min(10.0, max(2.0, 0.1 * duration_s))
    cooldown = min(20.0, max(6.0, 0.2 * duration_s))
    return warmup, cooldown


def schedule(scenario: Scenario, *, duration_s: float, seed: int,
             capabilities: frozenset[Capability]) -> tuple[Episode, ...]:
    """The episodes of one run. Pure: the same arguments always give the same schedule."""
    rng = random.Random(f"tidelog-chaos/{scenario.name}/{seed}")
    warmup, cooldown = phases(duration_s)
    last_end = duration_s - cooldown
    kinds = available_kinds(scenario, capabilities)
    assert kinds, f"{scenario.name}: no available fault kind"
    lo, hi = scenario.fault_s_min, scenario.fault_s_max
    base = min(hi, max(lo, 0.15 * duration_s))
    episodes: list[Episode] = []
    if scenario.membership:
        return _membership_schedule(scenario, kinds, rng, warmup, last_end, base)
    if scenario.name != "mixed":
        gap = min(10.0, max(3.0, 0.1 * duration_s))
        t = warmup
        for _ in range(10_000):  # bounded
            length = min(hi, max(lo, base * rng.uniform(0.75, 1.25)))
            if t + length > last_end:
                break
            episodes.append(Episode(kind=kinds[0], start_s=round(t, 2),
                                    duration_s=round(length, 2), pick=rng.getrandbits(32)))
            t += length + gap * rng.uniform(0.75, 1.25)
        if not episodes:  # a short run still gets one fault
            length = max(1.0, last_end - warmup)
            episodes.append(Episode(kind=kinds[0], start_s=warmup, duration_s=round(length, 2),
                                    pick=rng.getrandbits(32)))
        return tuple(episodes)
    t = warmup
    for _ in range(10_000):
        kind = rng.choice(kinds)
        length = rng.uniform(lo, hi)
        if t + length > last_end:
            break
        if _conflicts(kind, t, t + length, episodes):
            t += rng.uniform(0.5, 2.0)
            continue
        episodes.append(Episode(kind=kind, start_s=round(t, 2), duration_s=round(length, 2),
                                pick=rng.getrandbits(32)))
        t += rng.uniform(1.0, 4.0)
    return tuple(episodes)


def membership_spares(scenario: Scenario, duration_s: float) -> int:
    """Spare node slots a run of this scenario starts with: one per add-node it schedules."""
    if not scenario.membership:
        return 0
    episodes = schedule(scenario, duration_s=duration_s, seed=0,
                        capabilities=frozenset(Capability))
    return min(SPARES_MAX, max(1, sum(e.kind is FaultKind.ADD_NODE for e in episodes)))


def _membership_schedule(scenario: Scenario, kinds: tuple[FaultKind, ...], rng: random.Random,
                         warmup: float, last_end: float, base: float) -> tuple[Episode, ...]:
    """Operations back to back (add, reassign, decommission, add, ...), the number of adds
    bounded by SPARES_MAX; a fault (the kinds in turn) starts a third into each operation and
    lasts half as long. Operations that overrun wait for the previous one (nemesis.py)."""
    episodes: list[Episode] = []
    t = warmup
    adds = 0
    for i in range(10_000):
        op = scenario.membership[i % len(scenario.membership)]
        length = min(scenario.fault_s_max, max(scenario.fault_s_min,
                                               base * rng.uniform(0.9, 1.1)))
        if t + length > last_end or (op is FaultKind.ADD_NODE and adds == SPARES_MAX):
            break
        adds += op is FaultKind.ADD_NODE
        episodes.append(Episode(kind=op, start_s=round(t, 2), duration_s=round(length, 2),
                                pick=rng.getrandbits(32)))
        fault = kinds[i % len(kinds)]
        episodes.append(Episode(kind=fault, start_s=round(t + length / 3, 2),
                                duration_s=round(max(1.5, length / 2), 2),
                                pick=rng.getrandbits(32)))
        t += length + 0.5
    return tuple(sorted(episodes, key=lambda e: e.start_s))


def _conflicts(kind: FaultKind, start: float, end: float, episodes: list[Episode]) -> bool:
    cls = fault_class(kind)
    for e in episodes:
        if e.end_s <= start or e.start_s >= end:
            continue
        other = fault_class(e.kind)
        if "exclusive" in (cls, other) or cls == other == "network":
            return True
    return False
