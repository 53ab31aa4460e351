"""`tidelog top`'s pure parts on synthetic snapshots: rates from two snapshots, the order of the
biggest lags and queues, how the terminal's rows are shared, and the drawn screen itself (what
it says about down nodes, an unreachable cluster, and rows that did not fit)."""

from __future__ import annotations

import io
import json
import random
import re

import pytest
from rich.console import Console
from tidelog.client.top_model import (
    GroupLag,
    NodeState,
    NodeView,
    PartitionView,
    QueueView,
    Snapshot,
    biggest_lags,
    biggest_queues,
    rates,
    snapshot_to_dict,
)
from tidelog.client.top_view import allot, format_duration, render


def node(node_id: int, state: NodeState = NodeState.UP, leaders: int = 1) -> NodeView:
    return NodeView(id=node_id, address=f"127.0.0.1:{9090 + node_id}", state=state, voter=True,
                    leaders=leaders, peers_see_alive=state is NodeState.UP,
                    problem="" if state is NodeState.UP else "no answer: Timeout")


def part(topic: str, partition: int, end: int, *, internal: bool = False, leader: int = 1,
         in_sync: tuple[int, ...] = (1, 2, 3)) -> PartitionView:
    return PartitionView(topic=topic, partition=partition, internal=internal, leader_id=leader,
                         replicas=(1, 2, 3), in_sync=in_sync, end_offset=end)


def lag(group: str, topic: str, partition: int, committed: int, end: int,
        seconds: float | None) -> GroupLag:
    return GroupLag(group=group, topic=topic, partition=partition, committed=committed,
                    end_offset=end, lag_records=max(0, end - committed), lag_seconds=seconds)


def queue(name: str, depth: int, age_s: float | None, acked: int | None = 0) -> QueueView:
    return QueueView(name=name, coordinator_id=1, depth=depth, in_flight=0,
                     oldest_unacked_age_s=age_s, dlq_depth=0, acked_total=acked, consumers=1)


def snap(taken_s: float, *, nodes: tuple[NodeView, ...] = (node(1), node(2), node(3)),
         partitions: tuple[PartitionView, ...] = (), lags: tuple[GroupLag, ...] = (),
         queues: tuple[QueueView, ...] = (), problems: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(taken_s=taken_s, wall_ms=1_700_000_000_000 + int(taken_s * 1000),
                    poll_s=0.02, cluster_id="c1", metadata_leader_id=1, nodes=nodes,
                    partitions=partitions, lags=lags, queues=queues, problems=problems)


def screen(renderable: object, width: int = 120, height: int = 40) -> list[str]:
    console = Console(file=io.StringIO(), width=width, height=height, record=True,
                      color_system=None, legacy_windows=False)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().rstrip("\n").split("\n")]


# --- rates ---------------------------------------------------------------------------------------

def test_produce_rate_is_the_end_offsets_delta_over_the_time_between_snapshots() -> None:
    before = snap(10.0, partitions=(part("a", 0, 100), part("a", 1, 50), part("b", 0, 7)))
    after = snap(12.0, partitions=(part("a", 0, 300), part("a", 1, 90), part("b", 0, 7)))
    r = rates(before, after)
    assert r.produce_by_topic == {"a": (200 + 40) / 2.0, "b": 0.0}
    assert r.produce_total == 120.0


def test_internal_topics_and_unknown_end_offsets_make_no_produce_rate() -> None:
    before = snap(0.0, partitions=(part("__consumer_offsets", 0, 10, internal=True),
                                   part("a", 0, 10), part("a", 1, -1)))
    after = snap(1.0, partitions=(part("__consumer_offsets", 0, 500, internal=True),
                                  part("a", 0, 15), part("a", 1, 999)))
    assert rates(before, after).produce_by_topic == {"a": 5.0}


def test_an_end_offset_that_went_back_gives_no_rate_instead_of_a_negative_one() -> None:
    before = snap(0.0, partitions=(part("a", 0, 1000), part("a", 1, 10), part("b", 0, 1)))
    after = snap(1.0, partitions=(part("a", 0, 3), part("a", 1, 20), part("b", 0, 4)))
    assert rates(before, after).produce_by_topic == {"b": 3.0}


def test_consume_rate_sums_committed_offset_moves_per_topic_over_groups() -> None:
    before = snap(0.0, lags=(lag("g1", "a", 0, 10, 100, 5.0), lag("g2", "a", 0, 0, 100, 9.0),
                             lag("g1", "b", 0, 5, 5, 0.0)))
    after = snap(4.0, lags=(lag("g1", "a", 0, 30, 100, 2.0), lag("g2", "a", 0, 20, 100, 8.0),
                            lag("g1", "b", 0, 5, 5, 0.0), lag("g3", "a", 0, 50, 100, 1.0)))
    r = rates(before, after)
    assert r.consume_by_topic == {"a": (20 + 20) / 4.0, "b": 0.0}  # g3 is new: no delta yet


def test_queue_ack_rate_comes_from_acked_totals() -> None:
    before = snap(0.0, queues=(queue("jobs", 5, 1.0, acked=100), queue("x", 0, 0.0, acked=None)))
    after = snap(0.5, queues=(queue("jobs", 5, 1.0, acked=150), queue("x", 0, 0.0, acked=3)))
    assert rates(before, after).acks_by_queue == {"jobs": 100.0}


def test_first_snapshot_has_no_rates() -> None:
    r = rates(None, snap(1.0, partitions=(part("a", 0, 10),)))
    assert r.produce_total is None and r.consume_total is None
    lines = screen(render(None, snap(1.0, partitions=(part("a", 0, 10),)), height=40))
    assert "produce -  consume -" in lines[0]


# --- order ---------------------------------------------------------------------------------------

def test_biggest_lags_by_seconds_then_records_unknown_seconds_last_no_zero_lags() -> None:
    lags = [lag("g", "t", 0, 0, 10, 5.0), lag("g", "t", 1, 0, 1000, None),
            lag("g", "t", 2, 0, 3, 60.0), lag("g", "t", 3, 9, 9, 0.0),
            lag("g", "t", 4, 0, 50, 5.0), lag("g", "t", 5, 0, 2000, None)]
    assert [g.partition for g in biggest_lags(lags)] == [2, 4, 0, 5, 1]


def test_biggest_queues_by_oldest_unacked_age_then_depth() -> None:
    queues = [queue("a", 10, 1.0), queue("b", 99, None), queue("c", 1, 30.0), queue("d", 50, 1.0)]
    assert [q.name for q in biggest_queues(queues)] == ["c", "d", "a", "b"]


# --- layout --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("budget", "wants", "given"), [
    (30, [2, 100, 3], [2, 25, 3]),      # short tables keep theirs, the long one takes the rest
    (9, [100, 100, 100], [3, 3, 3]),
    (10, [0, 100, 100], [0, 5, 5]),     # an empty table takes nothing
    (2, [5, 5, 5], [1, 1, 1]),          # too small: one row each all the same
    (100, [4, 5, 6], [4, 5, 6]),        # never more than wanted
])
def test_allot_shares_rows(budget: int, wants: list[int], given: list[int]) -> None:
    assert allot(budget, wants) == given


def test_allot_random_never_over_budget_or_wants() -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    for _ in range(500):
        wants = [rng.randrange(0, 60) for _ in range(3)]
        budget = rng.randrange(0, 120)
        given = allot(budget, wants)
        floor = [min(w, 1) for w in wants]
        assert all(f <= g <= w for f, g, w in zip(floor, given, wants, strict=True))
        assert sum(given) <= max(budget, sum(floor))
        if sum(given) < budget:
            assert given == wants  # rows are left over only when every table is whole


def busy_cluster() -> tuple[Snapshot, Snapshot]:
    topics = [f"topic-{i:02d}" for i in range(50)]
    parts0 = tuple(part(t, p, 1000) for t in topics for p in range(2))
    parts1 = tuple(part(t, p, 1000 + (i + 1) * 10, in_sync=(1, 2) if i == 3 else (1, 2, 3))
                   for i, t in enumerate(topics) for p in range(2))
    lags = tuple(lag(f"g{i % 7}", topics[i % 50], i % 2, 0, 100 + i, float(i))
                 for i in range(200))
    queues = tuple(queue(f"q{i:02d}", i, float(i)) for i in range(30))
    nodes = (node(1, leaders=60), node(2, NodeState.DOWN, leaders=0), node(3, leaders=40))
    return (snap(0.0, nodes=nodes, partitions=parts0),
            snap(2.0, nodes=nodes, partitions=parts1, lags=lags, queues=queues,
                 problems=("group g9: Timeout: no answer",)))


@pytest.mark.parametrize("width", [80, 170])
def test_screen_fits_the_terminal_and_says_how_many_rows_did_not(width: int) -> None:
    before, after = busy_cluster()
    for height in (24, 40, 60):
        lines = screen(render(before, after, height=height), width=width, height=height)
        assert max(len(line) for line in lines) <= width
        assert len(lines) <= height, (height, len(lines))
        more = [int(m) for line in lines for m in re.findall(r"\.\.\. (\d+) more", line)]
        shown_topics = sum(1 for line in lines if re.match(r"topic-\d\d ", line))
        shown_lags = sum(1 for line in lines if re.match(r"g\d ", line))
        shown_queues = sum(1 for line in lines if re.match(r"q\d\d ", line))
        assert sorted(more) == sorted([50 - shown_topics, 200 - shown_lags, 30 - shown_queues])
        # all three want more than fits: each gets an equal share (its "more" row included)
        assert max(shown_topics, shown_lags, shown_queues) - min(
            shown_topics, shown_lags, shown_queues) <= 1


def test_screen_marks_the_down_node_and_shows_rates_lags_and_ages() -> None:
    before, after = busy_cluster()
    lines = screen(render(before, after, height=300), height=300)  # every row fits
    text = "\n".join(lines)
    assert "nodes 2/3 up" in lines[0]
    assert re.search(r"^2 +127\.0\.0\.1:9092 +DOWN +- .*no answer: Timeout", text, re.M)
    assert re.search(r"^1 +127\.0\.0\.1:9091 +up +60 ", text, re.M)
    # topic-49 grew by 500 records per partition in 2 s: the fastest, drawn first
    first_topic = next(line for line in lines if line.startswith("topic-"))
    assert re.match(r"topic-49 +2 +3,000 +500\.0/s", first_topic)
    assert re.search(r"^topic-03 .* 2$", text, re.M)  # under-replicated: both partitions
    first_lag = next(line for line in lines if re.match(r"g\d ", line))
    assert re.match(r"g3 +topic-49 +1 +299 +3m19s", first_lag)  # 199 s: the biggest
    first_queue = next(line for line in lines if re.match(r"q\d\d ", line))
    assert first_queue.startswith("q29 ") and "29.0s" in first_queue
    assert "group g9: Timeout: no answer" in text


def test_screen_says_plainly_when_no_node_answers() -> None:
    down = snap(5.0, nodes=(node(1, NodeState.DOWN), node(2, NodeState.DOWN)),
                problems=("no node answered: tried 127.0.0.1:9091, 127.0.0.1:9092",))
    assert not down.reachable
    text = "\n".join(screen(render(None, down, height=30)))
    assert "NO NODE ANSWERS" in text
    assert "no node answered: tried 127.0.0.1:9091, 127.0.0.1:9092" in text
    assert "node 2 127.0.0.1:9092: down (no answer: Timeout)" in text
    assert "Topics" not in text


def test_snapshot_as_json_has_states_and_rates() -> None:
    before, after = busy_cluster()
    data = json.loads(json.dumps(snapshot_to_dict(after, rates(before, after))))
    assert data["reachable"] is True
    assert [n["state"] for n in data["nodes"]] == ["up", "down", "up"]
    assert data["rates"]["produce_by_topic"]["topic-49"] == 500.0
    assert len(data["lags"]) == 200 and len(data["queues"]) == 30


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "?"), (0.0, "0.0s"), (59.94, "59.9s"), (61, "1m01s"), (3599, "59m59s"),
    (3660, "1h01m"), (90_000, "1d01h")])
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
