"""A leader answers writes while stepping the acknowledgement that commits them
(`Replica._answer_committed`, issue 12's queue latency work). The simulator must catch the
answer going out too early: planted here, a leader that answers every entry it has appended as
soon as its commit index moves at all — before a majority holds the later ones.
"""

from __future__ import annotations

from tidelog.node.replica import Replica
from tidelog.node.sim.cluster import SimOptions
from tidelog.node.sim.runner import format_failure, run_seeds

STEPS = 1000
SEED_BUDGET = 300


class AnswersBeforeMajority(Replica):
    """Planted: answers up to its own log end instead of up to the core's commit index."""

    def _answer_committed(self) -> None:
        self._resolve_waiters(self.log.log_end_offset - 1)


def test_answering_writes_beyond_the_commit_index_is_caught() -> None:
    summary = run_seeds(range(SEED_BUDGET), steps=STEPS, replica_cls=AnswersBeforeMajority,
                        options=lambda: SimOptions(), stop_on_failure=True)
    assert summary.failures, f"AnswersBeforeMajority survived {summary.seeds} seeds"
    failure = summary.failures[0]
    print(f"AnswersBeforeMajority caught by seed {failure.seed} after {summary.seeds} seeds:")
    print(format_failure(failure))
    assert failure.violation is not None
    assert failure.violation.rule in {"Durability", "State Machine Safety"}, failure.violation
