"""CI gate: 1,000 random seeds of the simulator on every push (about a minute on 2 cores).

The long soak is ``make sim-soak`` (``tidelog sim --seeds 100000``). A failure here names the
seed; replay it with ``tidelog sim --seed N --steps 1500``.
"""

from __future__ import annotations

from tidelog.node.sim.runner import format_failure, run_seeds

SEEDS = 1000
STEPS_PER_SEED = 1500  # ~1.5 simulated seconds of faults per seed, then heal + liveness


def test_thousand_seeds_have_no_violation() -> None:
    s = run_seeds(range(SEEDS), steps=STEPS_PER_SEED)
    assert s.seeds == SEEDS and s.commits > 0 and sum(s.faults.values()) > SEEDS
    assert not s.failures, "\n\n".join(format_failure(r) for r in s.failures[:3])
