"""The server-side assignors: the contract for any input (hypothesis), and the sticky claims."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.node.groups.assignors import Assignor, TopicPartition, assign, movement

TOPICS = ["a", "b", "c"]

subscriptions = st.dictionaries(
    st.sampled_from([f"m{i}" for i in range(8)]),
    st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True),
    min_size=1, max_size=8)
counts = st.fixed_dictionaries({t: st.integers(0, 20) for t in TOPICS})


def owners(result):  # type: ignore[no-untyped-def]
    return {tp: m for m, tps in result.items() for tp in tps}


@pytest.mark.parametrize("assignor", list(Assignor))
@given(subs=subscriptions, partition_counts=counts, seed_subs=subscriptions)
@settings(max_examples=150, deadline=None)
def test_every_subscribed_partition_goes_to_exactly_one_subscribed_member(
        assignor, subs, partition_counts, seed_subs) -> None:  # type: ignore[no-untyped-def]
    # `current` from an earlier, different group shape: stale members and partitions included.
    current = assign(Assignor.UNIFORM, seed_subs, partition_counts)
    result = assign(assignor, subs, partition_counts, current)  # asserts the contract inside
    wanted = {TopicPartition(t, p) for ts in subs.values() for t in ts
              for p in range(partition_counts[t])}
    assert set(owners(result)) == wanted
    assert set(result) == set(subs)


@pytest.mark.parametrize("assignor", list(Assignor))
@given(members=st.integers(1, 8), partitions=st.integers(0, 40))
@settings(max_examples=100, deadline=None)
def test_identical_subscriptions_are_balanced_within_one(assignor, members, partitions) -> None:  # type: ignore[no-untyped-def]
    subs = {f"m{i}": ["a"] for i in range(members)}
    result = assign(assignor, subs, {"a": partitions})
    sizes = [len(tps) for tps in result.values()]
    assert max(sizes) - min(sizes) <= 1


@given(members=st.integers(1, 8), partitions=st.integers(1, 48), data=st.data())
@settings(max_examples=100, deadline=None)
def test_sticky_moves_only_what_balance_requires(members, partitions, data) -> None:  # type: ignore[no-untyped-def]
    subs = {f"m{i}": ["a"] for i in range(members)}
    before = assign(Assignor.STICKY, subs, {"a": partitions})
    assert assign(Assignor.STICKY, subs, {"a": partitions}, before) == before  # stable
    # A member joins: it takes its share and nothing else moves.
    joined = {**subs, "new": ["a"]}
    after = assign(Assignor.STICKY, joined, {"a": partitions}, before)
    assert movement(before, after) == len(after["new"]) == partitions // (members + 1)
    # A member leaves: only its partitions move.
    leaver = data.draw(st.sampled_from(sorted(subs)))
    rest = {m: t for m, t in subs.items() if m != leaver}
    if rest:
        after_leave = assign(Assignor.STICKY, rest, {"a": partitions}, before)
        assert movement({m: before[m] for m in rest}, after_leave) == len(before[leaver])


def test_sticky_twelve_partitions_three_then_four_members() -> None:
    subs = {m: ["t"] for m in ("c1", "c2", "c3")}
    before = assign(Assignor.STICKY, subs, {"t": 12})
    assert sorted(len(v) for v in before.values()) == [4, 4, 4]
    after = assign(Assignor.STICKY, {**subs, "c4": ["t"]}, {"t": 12}, before)
    assert sorted(len(v) for v in after.values()) == [3, 3, 3, 3]
    assert movement(before, after) == 3
    assert all(after[m] <= before[m] for m in subs)


def test_range_gives_contiguous_ranges_per_topic() -> None:
    result = assign(Assignor.RANGE, {"x": ["t"], "y": ["t"]}, {"t": 5})
    assert result["x"] == {TopicPartition("t", p) for p in (0, 1, 2)}
    assert result["y"] == {TopicPartition("t", p) for p in (3, 4)}
