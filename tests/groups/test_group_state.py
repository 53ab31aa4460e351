"""The sans-I/O group coordinator core: membership, incremental reconciliation, fencing, timeouts,
offsets, and the replay that rebuilds it on a new coordinator."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.groups.errors import (
    FencedMemberEpochError,
    GroupNotEmptyError,
    UnknownMemberIdError,
)
from tidelog.node.groups.state import (
    CommittedOffset,
    GroupCoordinatorCore,
    GroupState,
    Heartbeat,
)

G = "g"
ROOT = Path(__file__).resolve().parents[2]


def hb(member: str, epoch: int, owned=None, topics=("t",), **kw) -> Heartbeat:  # type: ignore[no-untyped-def]
    return Heartbeat(group_id=G, member_id=member, member_epoch=epoch, subscribed_topics=topics,
                     owned=None if owned is None else frozenset(owned),
                     session_timeout_ms=kw.pop("session_timeout_ms", 3000),
                     rebalance_timeout_ms=kw.pop("rebalance_timeout_ms", 10_000), **kw)


class Client:
    """A well-behaved consumer: owns what it was told, acknowledges revocations at once."""

    def __init__(self, core: GroupCoordinatorCore, member_id: str,
                 topics: tuple[str, ...] = ("t",)) -> None:
        self.core, self.id, self.epoch, self.owned = core, member_id, 0, frozenset()
        self.topics = topics

    def beat(self, now: int) -> None:
        result, _ = self.core.heartbeat(hb(self.id, self.epoch, self.owned, self.topics), now)
        self.epoch, self.owned = result.member_epoch, result.assignment


def assert_single_owner(core: GroupCoordinatorCore) -> None:
    seen: dict[TopicPartition, str] = {}
    for group in core.groups.values():
        for member in group.members.values():
            assert member.revoking <= member.assigned
            for tp in member.assigned:
                assert tp not in seen, f"{tp} held by {seen[tp]} and {member.member_id}"
                seen[tp] = member.member_id


def converge(core: GroupCoordinatorCore, clients: list[Client], now: int, rounds: int = 10) -> None:
    for _ in range(rounds):
        for client in clients:
            client.beat(now)
            assert_single_owner(core)


def test_three_members_get_four_each_and_a_fourth_takes_one_from_each() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 12})
    clients = [Client(core, f"c{i}") for i in range(3)]
    converge(core, clients, 0)
    assert sorted(len(c.owned) for c in clients) == [4, 4, 4]
    assert core.groups[G].state is GroupState.STABLE
    before = {c.id: c.owned for c in clients}
    clients.append(Client(core, "c3"))
    converge(core, clients, 100)
    assert sorted(len(c.owned) for c in clients) == [3, 3, 3, 3]
    assert all(c.owned <= before[c.id] for c in clients[:3])  # sticky: nothing else moved
    assert core.groups[G].state is GroupState.STABLE


def test_a_partition_is_given_to_its_new_owner_only_after_the_old_one_lets_go() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 2})
    a = Client(core, "a")
    a.beat(0)
    assert len(a.owned) == 2
    b = Client(core, "b")
    b.beat(1)
    assert b.owned == frozenset()  # a still holds both
    result, _ = core.heartbeat(hb("a", a.epoch, a.owned), 2)  # a learns what to give up
    assert len(result.assignment) == 1
    b.beat(3)
    assert b.owned == frozenset()  # a has not acknowledged yet
    a.owned = result.assignment
    a.epoch = result.member_epoch
    a.beat(4)  # acknowledges
    b.beat(5)
    assert len(b.owned) == 1 and not (a.owned & b.owned)


def test_session_timeout_removes_the_member_and_frees_its_partitions() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 4})
    a, b = Client(core, "a"), Client(core, "b")
    converge(core, [a, b], 0)
    for now in range(0, 4000, 500):
        a.beat(now)
        core.tick(now)
    assert "b" not in core.groups[G].members
    converge(core, [a], 4000)
    assert len(a.owned) == 4
    with pytest.raises(UnknownMemberIdError):
        b.beat(4100)
    with pytest.raises(UnknownMemberIdError):
        core.validate_commit(G, "b", b.epoch, b.owned)


def test_a_member_that_does_not_revoke_within_its_rebalance_timeout_is_removed() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 2})
    a = Client(core, "a")
    a.beat(0)
    core.heartbeat(hb("b", 0), 1)
    core.heartbeat(hb("a", a.epoch, a.owned, rebalance_timeout_ms=1000), 2)
    with pytest.raises(UnknownMemberIdError):
        for now in range(0, 1500, 100):  # keeps heartbeating but never lets go
            core.heartbeat(hb("a", a.epoch, a.owned, rebalance_timeout_ms=1000), now + 2)
            core.heartbeat(hb("b", core.groups[G].members["b"].member_epoch, ()), now + 2)
            core.tick(now + 2)
    assert "a" not in core.groups[G].members and now >= 1000


def test_stale_epochs_and_foreign_partitions_are_fenced() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 2})
    a, b = Client(core, "a"), Client(core, "b")
    converge(core, [a, b], 0)
    core.validate_commit(G, "a", a.epoch, a.owned)
    with pytest.raises(FencedMemberEpochError):
        core.validate_commit(G, "a", a.epoch + 7, a.owned)
    with pytest.raises(FencedMemberEpochError):
        core.validate_commit(G, "a", a.epoch, b.owned)
    with pytest.raises(FencedMemberEpochError):
        core.heartbeat(hb("a", a.epoch + 7, a.owned), 1)
    with pytest.raises(GroupNotEmptyError):
        core.validate_commit(G, "", -1, a.owned)


def test_leaving_triggers_an_immediate_rebalance() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 4})
    a, b = Client(core, "a"), Client(core, "b")
    converge(core, [a, b], 0)
    result, records = core.heartbeat(hb("b", -1), 1)
    assert result.member_epoch == -1 and records
    a.beat(2)
    assert len(a.owned) == 4


def test_replay_of_the_records_rebuilds_members_assignments_and_offsets() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 6})
    log = []
    clients = [Client(core, f"c{i}") for i in range(3)]
    for _ in range(5):
        for c in clients:
            result, records = core.heartbeat(hb(c.id, c.epoch, c.owned), 0)
            c.epoch, c.owned = result.member_epoch, result.assignment
            log.extend(records)
    tp = sorted(clients[0].owned)[0]
    core.validate_commit(G, "c0", clients[0].epoch, [tp])
    log.extend(core.commit(G, {tp: CommittedOffset(offset=42, metadata="m", commit_ms=5)}, 5))
    fresh = GroupCoordinatorCore(partition_counts={"t": 6})
    for record in log:
        fresh.replay(record.key, record.value, now_ms=1000)
    assert fresh.fetch_offsets(G) == core.fetch_offsets(G)
    old, new = core.groups[G], fresh.groups[G]
    assert {m: x.assigned for m, x in new.members.items()} == \
        {m: x.assigned for m, x in old.members.items()}
    assert new.epoch == old.epoch and new.target == old.target
    for c in clients:  # the members carry on with their epochs at the new coordinator
        result, records = fresh.heartbeat(hb(c.id, c.epoch, c.owned), 1100)
        assert result.assignment == c.owned and not records
    log.extend(fresh.delete_group(G) if not fresh.groups[G].members else [])


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_random_joins_leaves_crashes_and_heartbeats_never_give_a_partition_two_owners(
        seed: int) -> None:
    """Any interleaving of protocol-following clients, crashes and subscription changes."""
    rng = random.Random(seed)
    core = GroupCoordinatorCore(partition_counts={"t": 7, "u": 3})
    clients: dict[str, Client] = {}
    now = 0
    for step in range(150):
        now += rng.randint(1, 400)
        action = rng.random()
        if action < 0.15 and len(clients) < 6:
            cid = f"m{step}"
            clients[cid] = Client(core, cid, rng.choice([("t",), ("t", "u"), ("u",)]))
        elif action < 0.2 and clients:
            cid = rng.choice(sorted(clients))
            core.heartbeat(hb(cid, -1), now)
            del clients[cid]
        elif action < 0.25 and clients:
            del clients[rng.choice(sorted(clients))]  # crash: stops heartbeating
        elif clients:
            client = clients[rng.choice(sorted(clients))]
            try:
                client.beat(now)
            except (UnknownMemberIdError, FencedMemberEpochError):
                client.epoch, client.owned = 0, frozenset()  # lost: rejoin
        core.tick(now)
        assert_single_owner(core)
    # Survivors converge to a balanced, stable group.
    for _ in range(50):  # longer than a session: crashed members are gone by the end
        now += 200
        for client in list(clients.values()):
            try:
                client.beat(now)
            except (UnknownMemberIdError, FencedMemberEpochError):
                client.epoch, client.owned = 0, frozenset()
        core.tick(now)
        assert_single_owner(core)
    if clients and G in core.groups:
        topics = {t for c in clients.values() for t in c.topics}
        assert sum(len(c.owned) for c in clients.values()) == sum(
            {"t": 7, "u": 3}[t] for t in topics)
        assert core.groups[G].state is GroupState.STABLE


def test_the_cores_import_no_io() -> None:
    """STYLE habit 1: the group state machine, assignors and record format are sans-I/O."""
    banned = {"asyncio", "grpc", "time", "os", "random", "socket", "threading"}
    for name in ("state.py", "assignors.py", "offsets_log.py"):
        tree = ast.parse((ROOT / "node" / "groups" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not banned & set(mods), f"{name} imports {mods}"


def test_offsets_of_deleted_topics_are_dropped_with_tombstones() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 2, "gone": 1})
    core.commit(G, {TopicPartition("t", 0): CommittedOffset(offset=1, metadata="", commit_ms=0),
                    TopicPartition("gone", 0): CommittedOffset(offset=9, metadata="",
                                                               commit_ms=0)}, 0)
    records = core.set_partition_counts({"t": 2}, 10)
    assert [r.value for r in records] == [None]
    assert core.fetch_offsets(G) == {TopicPartition("t", 0): CommittedOffset(
        offset=1, metadata="", commit_ms=0)}


def test_an_empty_group_expires_after_the_offsets_retention() -> None:
    core = GroupCoordinatorCore(partition_counts={"t": 1}, offsets_retention_ms=1000)
    a = Client(core, "a")
    a.beat(0)
    core.validate_commit(G, "a", a.epoch, a.owned)
    core.commit(G, {TopicPartition("t", 0): CommittedOffset(offset=5, metadata="",
                                                            commit_ms=0)}, 0)
    core.heartbeat(hb("a", -1), 100)
    assert not core.tick(900) and G in core.groups  # empty, but not old enough
    records = core.tick(2000)
    assert G not in core.groups and all(r.value is None for r in records) and len(records) == 2
