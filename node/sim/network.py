"""Simulated network: delay, drop, duplicate, reorder (by random delay), partitions of any shape."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tidelog.node.raft import Message, NodeId


@dataclass(slots=True, kw_only=True)
class NetworkConditions:
    delay_ms_min: int = 1
    delay_ms_max: int = 8
    drop_p: float = 0.0
    duplicate_p: float = 0.0


class SimNetwork:
    """Decides when (and whether, and how often) a message arrives. Partitions are a set of
    blocked directed links, so asymmetric partitions are just one direction blocked."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.conditions = NetworkConditions()
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.dropped = 0
        self.duplicated = 0

    def delivery_delays_ms(self, m: Message) -> list[int]:
        """Delays (ms) of the copies of ``m`` that will arrive; empty if lost."""
        return self.link_delays_ms(m.frm, m.to)

    def link_delays_ms(self, frm: NodeId, to: NodeId) -> list[int]:
        """Delays (ms) of the copies of one message from ``frm`` to ``to`` (a Raft message or a
        node-level liveness beat: both travel the same links); empty if lost."""
        if (frm, to) in self.blocked:
            self.dropped += 1
            return []
        c = self.conditions
        if c.drop_p and self._rng.random() < c.drop_p:
            self.dropped += 1
            return []
        copies = 2 if c.duplicate_p and self._rng.random() < c.duplicate_p else 1
        self.duplicated += copies - 1
        return [self._rng.randint(c.delay_ms_min, c.delay_ms_max) for _ in range(copies)]

    def partition(self, groups: list[set[NodeId]]) -> None:
        """Block every link between different groups (both directions)."""
        for a in groups:
            for b in groups:
                if a is not b:
                    self.blocked |= {(x, y) for x in a for y in b}

    def block_one_way(self, frm: NodeId, to: NodeId) -> None:
        self.blocked.add((frm, to))

    def heal(self) -> None:
        self.blocked.clear()
        self.conditions = NetworkConditions()
