"""Every planted core bug in tests/raft/bugs.py is caught by some test: a planted bug that no
check sees marks a blind spot. The registry names the tests; this file checks that the registry is
complete and that each named test exists (each of those tests asserts that its check fails)."""

from __future__ import annotations

import importlib
import inspect

from tidelog.node.raft import RaftCore

from tests.raft import bugs

CAUGHT_BY: dict[str, tuple[str, ...]] = {
    "ForgetsVote": (
        "tests.raft.test_core_sweep::test_the_sweep_catches_a_planted_bug",
        "tests.raft.test_sim::test_checker_catches_unpersisted_vote",
    ),
    "VotesForStaleLogs": (
        "tests.raft.test_transcripts::test_vote_restriction_transcript_catches_votes_for_stale_logs",
        "tests.raft.test_sim::test_checker_catches_votes_for_stale_logs",
    ),
    "AcksDiscardedEntries": (
        "tests.raft.test_planted_bugs::test_core_test_catches_acks_of_discarded_entries",
    ),
    "CommitsOldTerms": (
        "tests.raft.test_transcripts::test_figure8_transcript_catches_commits_old_terms",
        "tests.raft.test_planted_bugs::test_simulator_catches_commits_old_terms_within_the_seed_budget",
    ),
}


def test_core_test_catches_acks_of_discarded_entries() -> None:
    """The scenario of test_paper's truncation test, run with the planted bug: the stale
    acknowledgement to the old leader is sent."""
    from tests.raft.test_paper import acks_after_truncation

    assert (2, 1, 1) in acks_after_truncation(bugs.AcksDiscardedEntries)
    assert (2, 1, 1) not in acks_after_truncation()


def _planted() -> set[str]:
    return {
        name
        for name, obj in inspect.getmembers(bugs, inspect.isclass)
        if issubclass(obj, RaftCore) and obj is not RaftCore and obj.__module__ == bugs.__name__
    }


def test_every_planted_bug_is_in_the_registry() -> None:
    assert _planted() == set(CAUGHT_BY), "add the new bug class and the test that catches it"


def test_every_registered_test_exists() -> None:
    for bug, tests in CAUGHT_BY.items():
        assert tests, f"{bug} is caught by nothing"
        for ref in tests:
            module, func = ref.split("::")
            assert callable(getattr(importlib.import_module(module), func, None)), ref


SIM_SEED_BUDGET = 300  # well inside the CI gate's 1,000 seeds; found at seed 33 when written


def test_simulator_catches_commits_old_terms_within_the_seed_budget() -> None:
    """The Figure-8 bug run through the simulator (run_seeds, as the CI gate runs it) is caught
    within the budget: the core's own-term commit invariant fails where it would commit."""
    from tidelog.node.sim.runner import format_failure, run_seeds

    s = run_seeds(
        range(SIM_SEED_BUDGET), steps=1500, core_cls=bugs.CommitsOldTerms, stop_on_failure=True
    )
    assert s.failures, f"CommitsOldTerms survived {SIM_SEED_BUDGET} seeds"
    print(format_failure(s.failures[0]))
    assert "an entry of an older term" in str(s.failures[0].violation)
