"""CI gate: 1,000 seeds of the real-replica simulator on every push, over two worker processes.

Each seed runs the node's Replica, PartitionLog and GroupCommitter over SimFileSystem with power
cuts, crashes, partitions, failing fsyncs, a full disk, bit flips, retention, transfers and
membership changes, then heals and checks liveness and durability. Half of the seeds run with
quiescence on (``tidelog sim --quiesce``: idle groups sleep, node-level liveness beats wake
them; the client pauses now and then so the group sleeps while the faults go on). Figures
(docs/raft.md, "Simulator"): about 0.2 s per seed on one idle core. The long soak is
``make sim-soak`` (``tidelog sim --seeds 100000 --jobs 2``). A failure names the seed; replay it
with ``tidelog sim --seed N`` (plus ``--quiesce`` for the second half).
"""

from __future__ import annotations

import os

from tidelog.node.sim.runner import (
    DEFAULT_STEPS,
    Summary,
    format_failure,
    quiesce_options,
    run_seeds,
)

SEEDS = 1000
JOBS = 2 if (os.cpu_count() or 1) >= 2 else 1


def test_thousand_seeds_have_no_violation() -> None:
    s = Summary()
    for part in (run_seeds(range(SEEDS // 2), steps=DEFAULT_STEPS, jobs=JOBS),
                 run_seeds(range(SEEDS // 2, SEEDS), steps=DEFAULT_STEPS, jobs=JOBS,
                           options=quiesce_options)):
        s.seeds += part.seeds
        s.commits += part.commits
        for k, v in part.faults.items():
            s.faults[k] = s.faults.get(k, 0) + v
        s.failures += part.failures
    assert s.seeds == SEEDS and s.commits > 10 * SEEDS and sum(s.faults.values()) > 5 * SEEDS
    for kind in ("power cut", "crash", "partition", "failing fsync", "disk full", "bit flip",
                 "retention", "membership change", "leadership transfer"):
        assert s.faults.get(kind, 0) > 0, f"no {kind!r} fault in {SEEDS} seeds: {s.faults}"
    assert not s.failures, "\n\n".join(format_failure(r) for r in s.failures[:3])
