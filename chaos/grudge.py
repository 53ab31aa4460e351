"""Network partitions as data: a grudge is the set of directed links to cut (sans-I/O).

A `Grudge` is a frozenset of `(src, dst)` pairs: packets from `src` to `dst` are dropped. A
symmetric cut holds both directions. Building partitions here, as pure functions, keeps the
topology code (`netns.py`) a thin shell that only applies a grudge, and lets the shapes be tested
without root. Names are node names; `HOST` names the workload host (the root namespace), which
the standard shapes leave connected to every node so clients keep talking to both sides.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

__all__ = [
    "HOST",
    "Grudge",
    "bridge",
    "complete_split",
    "isolate",
    "majority_minority",
    "one_way",
    "split",
]

HOST = "host"
Grudge = frozenset[tuple[str, str]]


def one_way(src: str, dst: str) -> Grudge:
    """Drop packets from `src` to `dst` only (an asymmetric partition)."""
    assert src != dst, src
    return frozenset({(src, dst)})


def split(groups: Sequence[Iterable[str]]) -> Grudge:
    """Cut every link between nodes of different groups, both ways; links within a group stay."""
    sets = [frozenset(g) for g in groups]
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert not a & b, f"groups overlap: {sorted(a & b)}"
    return frozenset((x, y) for a in sets for b in sets if a is not b for x in a for y in b)


def isolate(node: str, nodes: Iterable[str]) -> Grudge:
    """Cut `node` off from every other node, both ways."""
    others = [n for n in nodes if n != node]
    return split([[node], others])


def complete_split(nodes: Iterable[str]) -> Grudge:
    """Every node alone."""
    return split([[n] for n in nodes])


def majority_minority(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """A random minority (fewer than half) cut off from the majority, both ways."""
    assert len(nodes) >= 2, nodes
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    minority = len(shuffled) - (len(shuffled) // 2 + 1)
    minority = max(minority, 1)
    return split([shuffled[:minority], shuffled[minority:]])


def bridge(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Two halves that cannot reach each other, joined through one node that reaches both.

    Every node sees a majority (itself + its half + the bridge) and yet the halves are cut: the
    shape that catches leaders elected by nodes that disagree about who is reachable.
    """
    assert len(nodes) >= 3, nodes
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    middle, rest = shuffled[0], shuffled[1:]
    half = len(rest) // 2
    left, right = rest[:half], rest[half:]
    assert middle not in left and middle not in right
    return split([left, right])
