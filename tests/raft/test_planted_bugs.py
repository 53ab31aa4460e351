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
    "CommitsOldTerms": (
        "tests.raft.test_transcripts::test_figure8_transcript_catches_commits_old_terms",
    ),
}


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
