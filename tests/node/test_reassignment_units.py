"""Reassignment without a cluster: the metadata commands and their apply, the leader's next step
(driven to completion over a model group, with failovers), the plans, the catch-up throttle."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest
from tidelog.node.errors import InvalidReplicationFactorError
from tidelog.node.learner_throttle import LearnerThrottle, split_append
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    AlterPartitionReassignment,
    CommandError,
    CompletePartitionReassignment,
    CreateTopic,
    DecommissionNode,
    DeleteTopic,
    RegisterNode,
    decode_command,
    encode_command,
)
from tidelog.node.raft import Entry, EntryKind, LogIndex, Message, MessageType, NodeId, Term
from tidelog.node.reassignment_plan import (
    PlanError,
    drain_plan,
    move_plan,
    rebalance_plan,
    replication_factor_plan,
)
from tidelog.node.reassignment_state import PartitionReassignment, decode_reassignments
from tidelog.node.reassignment_steps import CommitHistory, GroupView, StepKind, next_step

# -- commands ----------------------------------------------------------------------------------


def test_commands_round_trip_and_decode_strictly() -> None:
    for command in (
        AlterPartitionReassignment(topic="t", partition=2, target=(4, 1), throttle_bytes_per_s=9),
        AlterPartitionReassignment(topic="t", partition=0, cancel=True),
        CompletePartitionReassignment(topic_id=3, partition=1, target=(1, 2, 3)),
    ):
        assert decode_command(encode_command(command)) == command
    bad = [
        b'{"op":"alter_partition_reassignment","topic":"t","partition":0,"target":[1],'
        b'"cancel":true,"throttle_bytes_per_s":0}',  # cancel with a target
        b'{"op":"alter_partition_reassignment","topic":"t","partition":0,"target":[],'
        b'"cancel":false,"throttle_bytes_per_s":0}',  # neither
        b'{"op":"alter_partition_reassignment","topic":"t","partition":true,"target":[1],'
        b'"cancel":false,"throttle_bytes_per_s":0}',  # a bool is not an int
        b'{"op":"alter_partition_reassignment","topic":"t","partition":0,"target":[1],'
        b'"cancel":false,"throttle_bytes_per_s":-1}',
        b'{"op":"complete_partition_reassignment","topic_id":1,"partition":0,"target":[]}',
        b'{"op":"complete_partition_reassignment","topic_id":1,"partition":0,"target":[1],'
        b'"x":1}',
    ]
    for data in bad:
        with pytest.raises(CommandError):
            decode_command(data)


# -- the state machine -------------------------------------------------------------------------


def _state(nodes: int = 4) -> MetadataState:
    state = MetadataState()
    for n in range(1, nodes + 1):
        state.apply(state.applied_index + 1, RegisterNode(node_id=n, address=f"h:{n}"))
    state.apply(state.applied_index + 1, CreateTopic(name="t", partitions=2,
                                                     replication_factor=3, node_ids=(1, 2, 3)))
    return state


def _apply(state: MetadataState, command: object) -> dict:
    return state.apply(state.applied_index + 1, command)  # type: ignore[arg-type]


def test_reassignment_begins_completes_and_refuses_stale_completion() -> None:
    state = _state()
    topic = state.topics["t"]
    original = list(topic.replicas[0])
    target = (4, *original[1:])
    assert "error" not in _apply(state, AlterPartitionReassignment(
        topic="t", partition=0, target=target, throttle_bytes_per_s=1000))
    r = state.reassignments[f"{topic.topic_id}/0"]
    assert (r.target, r.original, r.throttle_bytes_per_s) == (target, tuple(original), 1000)
    assert set(r.involved) == set(original) | {4}
    assert topic.replicas[0] == original  # unchanged until the group reaches the target
    stale = _apply(state, CompletePartitionReassignment(topic_id=topic.topic_id, partition=0,
                                                        target=tuple(original)))
    assert stale["error"] == "InvalidRequestError" and topic.replicas[0] == original
    done = _apply(state, CompletePartitionReassignment(topic_id=topic.topic_id, partition=0,
                                                       target=target))
    assert "error" not in done and topic.replicas[0] == list(target)
    assert not state.reassignments
    again = _apply(state, AlterPartitionReassignment(topic="t", partition=0, target=target))
    assert again.get("noop") and not state.reassignments  # already there: resumes nothing


def test_refusals_name_what_is_wrong() -> None:
    state = _state()
    unknown_node = _apply(state, AlterPartitionReassignment(topic="t", partition=0,
                                                            target=(1, 9)))
    assert unknown_node["error"] == "InvalidRequestError"
    assert "node 9 is not a node of this cluster" in unknown_node["message"]
    assert _apply(state, AlterPartitionReassignment(topic="nope", partition=0, target=(1,))
                  )["error"] == "UnknownTopicError"
    assert "no partition 7" in _apply(state, AlterPartitionReassignment(
        topic="t", partition=7, target=(1,)))["message"]
    twice = _apply(state, AlterPartitionReassignment(topic="t", partition=0, target=(1, 1)))
    assert twice["code"] == InvalidReplicationFactorError.code
    assert "no reassignment in progress" in _apply(state, AlterPartitionReassignment(
        topic="t", partition=0, cancel=True))["message"]
    assert not state.reassignments
    _apply(state, DecommissionNode(node_id=4))
    draining = _apply(state, AlterPartitionReassignment(topic="t", partition=0,
                                                        target=(1, 2, 4)))
    assert "node 4 is being decommissioned" in draining["message"]
    assert not state.reassignments


def test_cancel_targets_the_original_and_keeps_every_involved_node() -> None:
    state = _state()
    topic = state.topics["t"]
    original = tuple(topic.replicas[1])
    _apply(state, AlterPartitionReassignment(topic="t", partition=1, target=(4, *original[1:])))
    _apply(state, AlterPartitionReassignment(topic="t", partition=1, cancel=True))
    r = state.reassignments[f"{topic.topic_id}/1"]
    assert r.target == original and r.cancelled and 4 in r.involved  # 4 keeps its data
    _apply(state, DeleteTopic(name="t"))
    assert not state.reassignments  # a deleted topic's moves end with it


def test_snapshot_form_round_trips_strictly() -> None:
    r = PartitionReassignment(topic_id=1, partition=0, target=(4, 2), original=(1, 2),
                              involved=(1, 2, 4), throttle_bytes_per_s=5)
    assert decode_reassignments([r.to_wire()]) == {r.group: r}
    with pytest.raises(ValueError):
        decode_reassignments([{**r.to_wire(), "involved": [1, 2]}])  # must hold the target
    with pytest.raises(ValueError):
        decode_reassignments([r.to_wire(), r.to_wire()])


# -- the leader's steps, over a model group ----------------------------------------------------


class ModelGroup:
    """A group whose changes commit at once and whose learners catch up after `lag` rounds."""

    def __init__(self, voters: set[int], rng: random.Random) -> None:
        self.voters, self.learners = set(voters), set[int]()
        self.leader = min(voters)
        self.rng = rng
        self.behind: dict[int, int] = {}  # learner → rounds until caught up
        self.commit = 100

    def view(self) -> GroupView:
        match = {n: self.commit for n in self.voters | self.learners}
        for n, rounds in self.behind.items():
            match[n] = self.commit - 10 * rounds
        return GroupView(leader=self.leader, voters=frozenset(self.voters),
                         learners=frozenset(self.learners), change_pending=False,
                         commit=self.commit, match=match, caught_up_at=self.commit)

    def round(self, target: tuple[int, ...]) -> StepKind:
        step = next_step(self.view(), target)
        before = self.voters | self.learners
        match step.kind:
            case StepKind.ADD_LEARNER:
                self.learners.add(step.node)
                self.behind[step.node] = self.rng.randrange(4)
            case StepKind.PROMOTE:
                assert self.behind.get(step.node, 0) == 0, "promoted a learner behind commit"
                self.learners.discard(step.node)
                self.voters.add(step.node)
            case StepKind.REMOVE:
                assert step.node != self.leader, "the leader removed itself"
                self.voters.discard(step.node)
                self.learners.discard(step.node)
            case StepKind.TRANSFER:
                assert step.node in self.voters and step.node in target
                self.leader = step.node
            case StepKind.WAIT | StepKind.COMPLETE:
                pass
        assert len((self.voters | self.learners) ^ before) <= 1, "more than one server changed"
        self.behind = {n: max(0, r - 1) for n, r in self.behind.items() if n in self.learners}
        return step.kind


@pytest.mark.parametrize("seed", range(40))
def test_steps_reach_any_target_through_failovers(seed: int) -> None:
    """Random original and target over 5 nodes, the leader failing over to a random voter
    between steps: the group reaches the target one server at a time, never promotes a
    lagging learner, and never has fewer voters than min(original, target) mid-way."""
    rng = random.Random(seed)
    print(f"seed {seed}: pytest 'tests/node/test_reassignment_units.py::"
          f"test_steps_reach_any_target_through_failovers[{seed}]'")
    nodes = [1, 2, 3, 4, 5]
    original = rng.sample(nodes, rng.randint(1, 3))
    target = tuple(rng.sample(nodes, rng.randint(1, 4)))
    group = ModelGroup(set(original), rng)
    floor = min(len(original), len(target))
    for _ in range(100):
        if rng.random() < 0.2:
            group.leader = rng.choice(sorted(group.voters))  # failover: the next leader resumes
        if group.round(target) is StepKind.COMPLETE:
            break
        assert len(group.voters) >= floor
    else:
        raise AssertionError(f"no completion: {group.voters} {group.learners} -> {target}")
    assert group.voters == set(target) and not group.learners


def test_a_pending_change_waits_and_a_lagging_learner_is_not_promoted() -> None:
    view = GroupView(leader=1, voters=frozenset({1, 2, 3}), learners=frozenset({4}),
                     change_pending=True, commit=50, match={1: 50, 2: 50, 3: 50, 4: 10},
                     caught_up_at=45)
    assert next_step(view, (1, 2, 4)).kind is StepKind.WAIT
    lagging = GroupView(leader=1, voters=view.voters, learners=view.learners,
                        change_pending=False, commit=50, match=view.match, caught_up_at=45)
    step = next_step(lagging, (1, 2, 4))
    assert step.kind is StepKind.WAIT and "learner 4 at 10" in step.describe()
    # caught up to where the commit was a round ago (45), though not to the commit now (50)
    near = dataclasses.replace(lagging, match={**view.match, 4: 46})
    assert next_step(near, (1, 2, 4)).kind is StepKind.PROMOTE


# -- plans -------------------------------------------------------------------------------------


CURRENT = {("a", 0): (1, 2, 3), ("a", 1): (2, 3, 1), ("a", 2): (3, 1, 2), ("b", 0): (1, 2)}


def test_move_plan_keeps_what_may_stay_and_fills_the_least_loaded() -> None:
    plan = move_plan(CURRENT, [("a", 0), ("a", 1)], [1, 2, 4])
    assert plan == {("a", 0): (1, 2, 4), ("a", 1): (2, 1, 4)}
    assert move_plan(CURRENT, [("a", 0)], [1, 2, 3]) == {}  # nothing to change: not in it
    with pytest.raises(PlanError, match="needs 3 nodes"):
        move_plan(CURRENT, [("a", 0)], [1, 2])
    with pytest.raises(PlanError, match="no such partition"):
        move_plan(CURRENT, [("zz", 0)], [1, 2, 3])


def test_drain_plan_moves_every_replica_off_the_node() -> None:
    plan = drain_plan(CURRENT, 3, [1, 2, 3, 4])
    assert set(plan) == {("a", 0), ("a", 1), ("a", 2)}
    assert all(3 not in r and len(r) == 3 and 4 in r for r in plan.values())
    assert plan[("a", 2)][0] == 1  # the next replica becomes preferred
    with pytest.raises(PlanError):
        drain_plan(CURRENT, 3, [1, 2, 3])  # RF 3 cannot live on 2 nodes


def test_replication_factor_plan_grows_and_shrinks() -> None:
    grown = replication_factor_plan({("t", 0): (2,), ("u", 0): (1,)}, "t", 3, [1, 2, 3])
    assert grown == {("t", 0): (2, 3, 1)}  # 3 before 1: 1 already holds u-0
    assert replication_factor_plan({("t", 0): (2, 3, 1)}, "t", 1, [1, 2, 3]) == {("t", 0): (2,)}


def test_rebalance_evens_replicas_and_leaders_with_few_moves() -> None:
    current = {("t", p): (1, 2) for p in range(4)}
    plan = rebalance_plan(current, [1, 2, 3, 4])
    layout = {**current, **plan}
    counts = {n: sum(n in r for r in layout.values()) for n in (1, 2, 3, 4)}
    leaders = {n: sum(r[0] == n for r in layout.values()) for n in (1, 2, 3, 4)}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert max(leaders.values()) - min(leaders.values()) <= 1, leaders
    moved = sum(len(set(layout[tp]) - set(current[tp])) for tp in current)
    assert moved == 4  # 8 replicas over 4 nodes: exactly 4 must move
    assert rebalance_plan(layout, [1, 2, 3, 4]) == {}  # balanced: nothing to do
    off_dead = rebalance_plan({("t", 0): (1, 5)}, [1, 2])
    assert off_dead == {("t", 0): (1, 2)}


# -- the throttle ------------------------------------------------------------------------------


def _append(to: int, index: int, size: int) -> Message:
    entries = (Entry(term=Term(1), index=LogIndex(index), count=1, kind=EntryKind.DATA,
                     data=b"x" * size),) if size else ()
    return Message(type=MessageType.APPEND, frm=NodeId(1), to=NodeId(to), term=Term(1),
                   index=LogIndex(index - 1), entries=entries)


def test_throttle_paces_learners_in_order_and_leaves_others_alone() -> None:
    rate = 1_000_000

    async def run() -> tuple[list[tuple[float, int, int]], float]:
        sent: list[tuple[float, int, int]] = []
        start = time.monotonic()
        throttle = LearnerThrottle(
            lambda g, m: sent.append((time.monotonic() - start, int(m.to), int(m.index))),
            lambda g, node: rate if node == 4 else 0)
        for i in range(10):
            throttle.send("1/0", _append(4, i + 1, 50_000))
            throttle.send("1/0", _append(2, i + 1, 50_000))
        throttle.send("1/0", _append(4, 11, 0))  # no entries: free, but behind the others
        while len([s for s in sent if s[1] == 4]) < 11:
            await asyncio.sleep(0.01)
        return sent, time.monotonic() - start

    sent, elapsed = asyncio.run(run())
    to_voter = [s for s in sent if s[1] == 2]
    to_learner = [s for s in sent if s[1] == 4]
    assert all(t < 0.05 for t, _, _ in to_voter)  # voters are never held back
    assert [i for _, _, i in to_learner] == list(range(11))  # FIFO (index = prev offset)
    # 500 KB at 1 MB/s, paid before each send: not before 0.5 s (and not much after)
    print(f"learner: 500000 bytes in {elapsed:.3f} s at a {rate} B/s throttle")
    assert 0.5 <= to_learner[-1][0] < 1.5


def test_throttle_drops_beyond_its_bound_and_drains_when_lifted() -> None:
    async def run() -> tuple[list[int], list[int]]:
        sent: list[int] = []
        rate = {"value": 1000}
        throttle = LearnerThrottle(lambda g, m: sent.append(int(m.index)),
                                   lambda g, node: rate["value"], queued_bytes_max=100_000)
        for i in range(5):
            throttle.send("1/0", _append(4, i + 1, 40_000))  # the third does not fit
        await asyncio.sleep(0)
        before = list(sent)
        rate["value"] = 0  # promoted: what waits goes at once, in order, then the new one
        throttle.send("1/0", _append(4, 6, 10))
        return before, sent

    before, after = asyncio.run(run())
    assert before == []
    assert after == [0, 1, 5]  # indexes are prev (index - 1); 3, 4, 5 were dropped


def test_a_long_append_to_a_learner_is_split_into_valid_chunks() -> None:
    entries = tuple(Entry(term=Term(2), index=LogIndex(10 + i), count=1, kind=EntryKind.DATA,
                          data=b"x" * 30_000) for i in range(7))
    message = Message(type=MessageType.APPEND, frm=NodeId(1), to=NodeId(4), term=Term(2),
                      index=LogIndex(9), log_term=Term(1), entries=entries, commit=LogIndex(16))
    parts = split_append(message, 100_000)
    assert [len(p.entries) for p in parts] == [3, 3, 1]
    assert [e for p in parts for e in p.entries] == list(entries)
    assert (parts[0].index, parts[0].log_term) == (9, 1)  # the original prev
    for before, after in zip(parts, parts[1:], strict=False):
        assert (after.index, after.log_term) == (before.entries[-1].last, Term(2))
    assert all(p.commit == 16 and p.term == 2 for p in parts)
    assert split_append(message, 10**9) == [message]


# -- authorization -----------------------------------------------------------------------------


def test_moving_replicas_needs_alter_and_listing_moves_describe_on_the_cluster() -> None:
    from tidelog.node.security.acl import AclBinding
    from tidelog.node.security.authz import first_denial
    from tidelog.node.security.principal import Principal, PrincipalKind
    from tidelog.proto import broker_pb2 as pb

    alice = Principal(PrincipalKind.USER, "alice")

    def denial(method: str, request: object, *ops: str) -> str | None:
        state = MetadataState()
        state.acls = {AclBinding.from_wire({
            "principal": "User:alice", "resource_type": "cluster", "pattern_type": "literal",
            "resource_name": "cluster", "operation": op, "permission": "allow"}) for op in ops}
        return first_denial(f"/tidelog.v1.Broker/{method}", request, alice, state,
                            frozenset())

    alter = pb.AlterPartitionReassignmentsRequest(
        partitions=[pb.PartitionReassignmentSpec(topic="t", partition=0, target=[1])])
    listing = pb.ListPartitionReassignmentsRequest()
    refused = denial("AlterPartitionReassignments", alter)
    assert refused is not None and "alter" in refused.lower() and "cluster" in refused.lower()
    assert denial("AlterPartitionReassignments", alter, "describe") is not None
    assert denial("AlterPartitionReassignments", alter, "alter") is None
    assert denial("ListPartitionReassignments", listing) is not None
    assert denial("ListPartitionReassignments", listing, "describe") is None


def test_the_catch_up_bar_is_the_commit_index_of_a_second_ago_in_this_term() -> None:
    history = CommitHistory()
    assert history.bar(0.0, 3, 100, 1.0) == 100  # nothing older: the commit now
    assert history.bar(0.5, 3, 150, 1.0) == 100
    assert history.bar(1.1, 3, 210, 1.0) == 100  # at 1.1 s, 0.0 s is the newest >= 1 s old
    assert history.bar(1.6, 3, 250, 1.0) == 150  # and at 1.6 s, 0.5 s
    assert history.bar(2.2, 3, 300, 1.0) == 210
    assert history.bar(2.3, 4, 305, 1.0) == 305  # a new term starts over


@pytest.mark.parametrize("name", ["reassignment_steps.py", "reassignment_plan.py",
                                  "reassignment_state.py"])
def test_the_planning_and_stepping_modules_are_sans_io(name: str) -> None:
    import ast
    import pathlib

    from tests.raft.test_tidy import FORBIDDEN, _runtime_imports

    path = pathlib.Path(__file__).resolve().parents[2] / "node" / name
    imported = _runtime_imports(ast.parse(path.read_text()))
    assert not imported & FORBIDDEN, f"{name} imports {sorted(imported & FORBIDDEN)}"


def test_a_node_placed_on_but_not_registered_yet_is_a_valid_target() -> None:
    """Topics are placed on --peers; a node registers a moment after it starts. A reassignment
    right after the start must not call it unknown (seen on the test cluster), node 9 still is."""
    state = MetadataState()
    for n in (1, 2, 3):
        _apply(state, RegisterNode(node_id=n, address=f"h:{n}"))
    _apply(state, CreateTopic(name="t", partitions=1, replication_factor=1, node_ids=(1,)))
    _apply(state, CreateTopic(name="u", partitions=4, replication_factor=1,
                              node_ids=(1, 2, 3, 4)))
    assert "error" not in _apply(state, AlterPartitionReassignment(topic="t", partition=0,
                                                                   target=(1, 4)))
    refused = _apply(state, AlterPartitionReassignment(topic="u", partition=0, target=(9,)))
    assert "node 9 is not a node of this cluster (known nodes: 1, 2, 3, 4)" in refused["message"]
