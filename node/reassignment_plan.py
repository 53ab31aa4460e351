"""Reassignment plans: which replicas each partition should have (pure, sans-I/O).

Used by `tidelog partition reassign --plan`, `tidelog topic alter --replication-factor` and the
decommission of a node (`drain_plan`). A plan maps (topic, partition) to a target replica list
(first = preferred leader) and holds only the partitions whose list changes. Every planner makes
few moves: a replica that may stay stays (in its place, so a preferred leader that stays stays
preferred), and new replicas go to the node holding the fewest replicas (ties: the lowest id),
counting every partition given in `current`, not only the moving ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

TopicPartition = tuple[str, int]
Assignment = Mapping[TopicPartition, Sequence[int]]
Plan = dict[TopicPartition, tuple[int, ...]]


class PlanError(ValueError):
    """The plan cannot be made (the operator's input: too few nodes, an unknown partition)."""


def move_plan(current: Assignment, partitions: Iterable[TopicPartition], nodes: Sequence[int],
              replication_factor: int | None = None) -> Plan:
    """Place `partitions` on `nodes` only, each with `replication_factor` replicas (None: as
    many as it has now). Replicas already on `nodes` stay; the others move to the least loaded
    of `nodes`."""
    allowed = list(dict.fromkeys(nodes))
    if not allowed:
        raise PlanError("no nodes to place replicas on")
    load = _load(current, allowed)
    plan: Plan = {}
    for tp in sorted(set(partitions)):
        if tp not in current:
            raise PlanError(f"{tp[0]}-{tp[1]}: no such partition")
        replicas = list(current[tp])
        rf = replication_factor if replication_factor is not None else len(replicas)
        if rf < 1:
            raise PlanError(f"replication factor {rf}: it must be at least 1")
        if rf > len(allowed):
            raise PlanError(f"{tp[0]}-{tp[1]}: replication factor {rf} needs {rf} nodes; "
                            f"only {len(allowed)} given ({', '.join(map(str, allowed))})")
        keep = [n for n in replicas if n in allowed][:rf]
        for n in replicas:
            if n not in keep and n in load:
                load[n] -= 1
        while len(keep) < rf:
            pick = min((n for n in allowed if n not in keep), key=lambda n: (load[n], n))
            keep.append(pick)
            load[pick] += 1
        if keep != replicas:
            plan[tp] = tuple(keep)
    return plan


def drain_plan(current: Assignment, node: int, nodes: Sequence[int]) -> Plan:
    """Move every replica off `node` onto the other `nodes` (the decommission of a node): each
    partition keeps its replication factor. Raises PlanError when too few nodes remain."""
    others = [n for n in nodes if n != node]
    return move_plan(current, [tp for tp, r in current.items() if node in r], others)


def replication_factor_plan(current: Assignment, topic: str, replication_factor: int,
                            nodes: Sequence[int]) -> Plan:
    """Every partition of `topic` with `replication_factor` replicas on `nodes`: growing adds the
    least loaded nodes, shrinking keeps the first replicas (the preferred leader first)."""
    mine = [tp for tp in current if tp[0] == topic]
    if not mine:
        raise PlanError(f"topic {topic!r} has no partitions in the assignment")
    return move_plan(current, mine, nodes, replication_factor)


def rebalance_plan(current: Assignment, nodes: Sequence[int]) -> Plan:
    """Even replicas, then preferred leaders, across `nodes`: replicas on other nodes (dead or
    leaving) move first; then, while two nodes' replica counts differ by more than one, one
    replica moves from the fullest to the emptiest (a partition that has the first and not the
    second); then, the same for preferred leaders, by reordering a partition's list (no data
    moves for that)."""
    allowed = list(dict.fromkeys(nodes))
    layout = {tp: list(r) for tp, r in current.items()}
    stray = [tp for tp, r in layout.items() if any(n not in allowed for n in r)]
    for tp, target in move_plan(layout, stray, allowed).items():
        layout[tp] = list(target)
    for _ in range(sum(len(r) for r in layout.values())):  # each move lowers the spread
        load = _load(layout, allowed)
        hi = max(allowed, key=lambda n: (load[n], -n))
        lo = min(allowed, key=lambda n: (load[n], n))
        if load[hi] - load[lo] <= 1:
            break
        tp = next((tp for tp in sorted(layout) if hi in layout[tp] and lo not in layout[tp]),
                  None)
        if tp is None:
            break
        layout[tp][layout[tp].index(hi)] = lo
    for _ in range(len(layout)):
        leaders = Counter({n: 0 for n in allowed})
        leaders.update(r[0] for r in layout.values() if r and r[0] in leaders)
        hi = max(allowed, key=lambda n: (leaders[n], -n))
        lo = min(allowed, key=lambda n: (leaders[n], n))
        if leaders[hi] - leaders[lo] <= 1:
            break
        tp = next((tp for tp in sorted(layout) if layout[tp][0] == hi and lo in layout[tp]),
                  None)
        if tp is None:
            break
        replicas = layout[tp]
        i = replicas.index(lo)
        replicas[0], replicas[i] = replicas[i], replicas[0]
    return {tp: tuple(r) for tp, r in sorted(layout.items()) if list(current[tp]) != r}


def _load(current: Assignment, nodes: Sequence[int]) -> Counter[int]:
    load: Counter[int] = Counter({n: 0 for n in nodes})
    for replicas in current.values():
        load.update(n for n in replicas if n in load)
    return load
