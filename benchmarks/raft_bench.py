"""Raft core benchmarks: commit throughput of the core alone, and failover time in the simulator.

    .venv/bin/python benchmarks/raft_bench.py [--entries 20000] [--seeds 200]

1. Throughput: 3 in-memory replicas driven in lockstep (persist = list append, send = function
   call), no faults, one record batch per proposal. Two figures: one proposal per round trip
   (no batching at all), and 64 proposals in flight between Readies (the core batches them into
   one append per follower).
2. Failover: in the simulator (tick 10 ms, election timeout 10 ticks = 100 ms, network 1-8 ms),
   crash the leader and measure simulated time until another replica becomes leader.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from tidelog.node.raft import MemoryLog, NodeId, RaftConfig, RaftCore, Role
from tidelog.node.sim.cluster import Cluster, SimOptions


class Lockstep:
    def __init__(self, n: int = 3) -> None:
        ids = tuple(NodeId(i) for i in range(1, n + 1))
        self.logs = {i: MemoryLog() for i in ids}
        self.cores = {
            i: RaftCore(RaftConfig(node_id=i, voters=ids), self.logs[i], rng=random.Random(i))
            for i in ids
        }
        self.queue: list = []
        while self.cores[NodeId(1)].role != Role.LEADER:
            self.cores[NodeId(1)].tick()
            self.pump()

    def pump(self) -> None:
        for i in self.cores:
            self._process(i)
        while self.queue:
            msgs, self.queue = self.queue, []
            for m in msgs:
                self.cores[m.to].step(m)
                self._process(m.to)

    def _process(self, i: NodeId) -> None:
        core, log = self.cores[i], self.logs[i]
        while (rd := core.ready()) is not None:
            if rd.truncate_after is not None:
                log.truncate_after(rd.truncate_after)
            log.append(rd.entries)
            self.queue.extend(rd.messages)
            core.advance(rd)


def throughput(entries: int, in_flight: int) -> float:
    ls = Lockstep()
    lead = ls.cores[NodeId(1)]
    payload = b"x" * 100
    start = time.perf_counter()
    done = 0
    while done < entries:
        for _ in range(in_flight):
            lead.propose(payload)
        done += in_flight
        ls.pump()
    elapsed = time.perf_counter() - start
    assert lead.commit >= done, (lead.commit, done)
    return done / elapsed


def failover_ms(seed: int) -> int | None:
    c = Cluster(seed, SimOptions(faults=False))
    while c.leader() is None:
        c.step()
    c.run(200)  # settle
    old = c.leader()
    assert old is not None
    crashed_at = c.now_ms
    c._crash(c.nodes[old.id], "benchmark")
    deadline = crashed_at + 10_000
    while c.now_ms < deadline:
        c.step()
        lead = c.leader()
        if lead is not None and lead.id != old.id:
            return c.now_ms - crashed_at
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=20000)
    p.add_argument("--seeds", type=int, default=200)
    args = p.parse_args()
    one = throughput(args.entries // 4, 1)
    batched = throughput(args.entries, 64)
    times = [t for s in range(args.seeds) if (t := failover_ms(s)) is not None]
    opt = SimOptions()
    timeout_ms = opt.election_ticks * opt.tick_ms
    med = statistics.median(times)
    p90 = statistics.quantiles(times, n=10)[-1]
    print(
        "Raft core (3 replicas, in-memory, no faults, 1 record batch per entry, 100-byte batches)"
    )
    print(f"  commit throughput, 1 proposal per round trip:  {one:,.0f} entries/s")
    print(f"  commit throughput, 64 proposals in flight:      {batched:,.0f} entries/s")
    print(
        f"Failover after leader crash ({len(times)}/{args.seeds} seeds, "
        f"election timeout {timeout_ms} ms)"
    )
    print(f"  median time to new leader: {med:.0f} ms = {med / timeout_ms:.2f} election timeouts")
    print(f"  p90: {p90:.0f} ms, max: {max(times)} ms")
    print(f"  python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
