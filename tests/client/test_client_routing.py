"""client/routing.py `retrying`: the one bounded retry loop the leader-routing calls share."""

from __future__ import annotations

import pytest
from tidelog.client import errors
from tidelog.client.routing import retrying


class Clock:
    """Virtual time: `sleep` advances it, so the loop's deadline arithmetic is exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_retriable_errors_back_off_exponentially_then_succeed() -> None:
    clock = Clock()
    seen: list[errors.TidelogError] = []
    outcomes: list[object] = [errors.NotLeader("moved", leader_id=2),
                              errors.NodeUnavailable("down"), errors.LeaderNotAvailable("vote"),
                              "answer"]
    budgets: list[float] = []

    def attempt(left_s: float) -> str:
        budgets.append(left_s)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    assert retrying(attempt, what="Call", timeout_s=10, backoff_s=0.1, on_retriable=seen.append,
                    clock=clock, sleep=clock.sleep) == "answer"
    assert clock.sleeps == [0.1, 0.2, 0.4]
    assert [type(e).__name__ for e in seen] == ["NotLeader", "NodeUnavailable",
                                               "LeaderNotAvailable"]
    assert budgets == [10, 9.9, 9.7, 9.3]  # each attempt gets the time left


def test_a_non_retriable_error_is_raised_at_once() -> None:
    clock = Clock()

    def attempt(left_s: float) -> None:
        raise errors.TopicNotFound("no such topic")

    with pytest.raises(errors.TopicNotFound):
        retrying(attempt, what="Call", timeout_s=10, backoff_s=0.1, clock=clock,
                 sleep=clock.sleep)
    assert clock.sleeps == []


def test_the_deadline_bounds_the_loop_and_names_the_last_error() -> None:
    clock = Clock()
    tries = []

    def attempt(left_s: float) -> None:
        tries.append(left_s)
        clock.now += 0.25  # each failed call takes a while
        raise errors.NodeUnavailable(f"try {len(tries)}")

    with pytest.raises(errors.Timeout) as caught:
        retrying(attempt, what="CreateTopics", timeout_s=3, backoff_s=0.1, backoff_max_s=1.0,
                 clock=clock, sleep=clock.sleep)
    # the last backoff is cut at the deadline; one last attempt (0.25 s here) runs there
    assert clock.now == pytest.approx(3.25)
    assert max(clock.sleeps) <= 1.0
    assert "CreateTopics did not succeed within 3.0 s" in str(caught.value)
    assert f"try {len(tries)}" in str(caught.value)
