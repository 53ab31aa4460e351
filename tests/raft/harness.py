"""A lockstep harness for unit tests: real cores, MemoryLogs, a network the test controls."""

from __future__ import annotations

import random
from dataclasses import replace

from tidelog.node.raft import (
    HardState,
    LogIndex,
    MemoryLog,
    Message,
    NodeId,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
)


class Harness:
    def __init__(self, n: int = 3, *, learners: tuple[int, ...] = (), **cfg: object) -> None:
        self.ids = [NodeId(i) for i in range(1, n + 1)]
        self.cfg = cfg
        self.logs: dict[NodeId, MemoryLog] = {}
        self.hs: dict[NodeId, HardState] = {}
        self.cores: dict[NodeId, RaftCore] = {}
        self.readies: dict[NodeId, list[Ready]] = {}
        self.inflight: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.down: set[NodeId] = set()
        for i in [*self.ids, *(NodeId(x) for x in learners)]:
            self.logs[i] = MemoryLog()
            self.hs[i] = HardState()
            self.cores[i] = self._new_core(i, learners=learners)

    def _new_core(self, i: NodeId, *, learners: tuple[int, ...] = (), **kw: object) -> RaftCore:
        cfg = RaftConfig(
            node_id=i,
            voters=tuple(self.ids),
            learners=tuple(NodeId(x) for x in learners),
            **self.cfg,  # type: ignore[arg-type]
        )
        self.readies[i] = []
        return RaftCore(cfg, self.logs[i], rng=random.Random(i), hard_state=self.hs[i], **kw)  # type: ignore[arg-type]

    def restart(self, i: int, **kw: object) -> RaftCore:
        self.down.discard(NodeId(i))
        self.cores[NodeId(i)] = self._new_core(NodeId(i), **kw)
        return self.cores[NodeId(i)]

    def process(self, i: NodeId) -> None:
        core = self.cores[i]
        while (rd := core.ready()) is not None:
            self.readies[i].append(rd)
            log = self.logs[i]
            if rd.hard_state is not None:
                self.hs[i] = rd.hard_state
            if rd.reset_log_to is not None:
                log.reset(rd.reset_log_to.start, rd.reset_log_to.term)
            if rd.truncate_after is not None:
                log.truncate_after(rd.truncate_after)
            log.append(rd.entries)
            self.inflight.extend(rd.messages)
            core.advance(rd)

    def deliver(self, rounds: int = 100) -> None:
        for i in self.ids_all():
            if i not in self.down:
                self.process(i)
        for _ in range(rounds):
            if not self.inflight:
                return
            msgs, self.inflight = self.inflight, []
            for m in msgs:
                if m.to in self.down or m.frm in self.down or (m.frm, m.to) in self.cut:
                    continue
                self.cores[m.to].step(m)
                self.process(m.to)

    def ids_all(self) -> list[NodeId]:
        return sorted(self.cores)

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.cores[NodeId(i)].tick()
            self.process(NodeId(i))
            self.deliver()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for i in self.ids_all():
                if i not in self.down:
                    self.cores[i].tick()
            self.deliver()

    def elect(self, i: int) -> RaftCore:
        """Make node i campaign (its own ticks only) until it leads."""
        core = self.cores[NodeId(i)]
        for _ in range(4 * core.config.election_ticks):
            if core.role == Role.LEADER:
                break
            self.tick(i)
        assert core.role == Role.LEADER, f"node {i} did not win: {core.role}"
        self.deliver()
        return core

    def isolate(self, i: int) -> None:
        for j in self.ids_all():
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.cut.clear()

    def entries(self, i: int) -> list[tuple[int, int, int]]:
        """(first offset, last offset, term) of each entry in node i's durable log."""
        return [(e.index, e.last, e.term) for e in self.logs[NodeId(i)].all_entries()]

    def sent(self, i: int) -> list[Message]:
        return [m for rd in self.readies[NodeId(i)] for m in rd.messages]


def with_term(h: HardState, term: int) -> HardState:
    return replace(h, term=term)


__all__ = ["Harness", "LogIndex"]
