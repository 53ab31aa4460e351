"""Node membership without processes: the metadata commands' rules, the node set, the metadata
group's next membership change and the voter-removal guard (node/membership*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tidelog.node.config import NodeConfig
from tidelog.node.membership import (
    ChangeKind,
    JoinedPeer,
    JoinRecord,
    MetadataChange,
    member_ids,
    next_metadata_change,
    peer_addresses,
    placement_nodes,
    voter_removal_problem,
)
from tidelog.node.membership_state import NodeState, node_state
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    AddNode,
    CreateTopic,
    DecommissionNode,
    RecommissionNode,
    RegisterNode,
    RemoveNode,
    decode_command,
    encode_command,
)
from tidelog.node.raft import Membership, NodeId
from tidelog.proto import broker_pb2 as pb


class Log:
    """Applies commands at increasing indexes, as the metadata group would."""

    def __init__(self) -> None:
        self.state = MetadataState()
        self.index = 0

    def __call__(self, command: object) -> dict:
        self.index += 1
        return self.state.apply(self.index, command)  # type: ignore[arg-type]


def three_nodes() -> Log:
    log = Log()
    for n in (1, 2, 3):
        log(RegisterNode(node_id=n, address=f"h{n}:9091"))
    return log


def config(node_id: int = 1) -> NodeConfig:
    return NodeConfig(node_id=node_id, listen="127.0.0.1:9091", advertise="127.0.0.1:9091",
                      peers={1: "h1:9091", 2: "h2:9091", 3: "h3:9091"},
                      data_dir=Path("/nonexistent"))


@pytest.mark.parametrize("command", [
    AddNode(node_id=4, address="tidelog-3.tidelog:9091", peer_address="tidelog-3.tidelog:19091",
            metadata_voter=True),
    DecommissionNode(node_id=3), RemoveNode(node_id=3, force=True), RecommissionNode(node_id=3)])
def test_membership_commands_round_trip_through_the_strict_decoder(command: object) -> None:
    assert decode_command(encode_command(command)) == command  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [
    b'{"op":"add_node","node_id":4,"address":"no-port","peer_address":"h:1"}',
    b'{"op":"add_node","node_id":0,"address":"h:1","peer_address":"h:2"}',
    b'{"op":"add_node","node_id":4,"address":"h:1","peer_address":"h 2:2"}',
    b'{"op":"remove_node","node_id":3,"force":"yes"}',
])
def test_malformed_membership_commands_are_refused(raw: bytes) -> None:
    assert MetadataState().apply_encoded(0, raw)["code"] == pb.INVALID_REQUEST


def test_a_node_goes_joining_active_draining_removed() -> None:
    log = three_nodes()
    assert log(AddNode(node_id=4, address="h4:9091", peer_address="h4:19091")) == {
        "state": "joining"}
    assert node_state(log.state, 4) is NodeState.JOINING
    assert 4 not in placement_nodes(config(), log.state)  # not before it registered
    log(RegisterNode(node_id=4, address="h4:9091"))
    assert node_state(log.state, 4) is NodeState.ACTIVE
    assert placement_nodes(config(), log.state) == [1, 2, 3, 4]
    assert log(DecommissionNode(node_id=4)) == {"state": "draining"}
    assert placement_nodes(config(), log.state) == [1, 2, 3]
    assert log(DecommissionNode(node_id=4))["already"] is True
    assert log(RemoveNode(node_id=4))["state"] == "removed"
    assert 4 not in log.state.nodes and 4 not in member_ids(config(), log.state)
    # Final: the id is never admitted again, and the old process cannot register back.
    assert log(AddNode(node_id=4, address="h4:9091", peer_address="h4:19091"))["code"] == \
        pb.INVALID_REQUEST
    assert log(RegisterNode(node_id=4, address="h4:9091"))["code"] == pb.INVALID_REQUEST
    assert 4 not in log.state.nodes


def test_draining_nodes_get_no_new_replicas() -> None:
    log = three_nodes()
    log(AddNode(node_id=4, address="h4:9091", peer_address="h4:19091"))
    log(RegisterNode(node_id=4, address="h4:9091"))
    log(DecommissionNode(node_id=2))
    log(CreateTopic(name="t", partitions=6, replication_factor=3, node_ids=(1, 2, 3, 4)))
    assert all(2 not in replicas for replicas in log.state.topics["t"].replicas)


def test_a_node_still_holding_replicas_is_not_removed_without_force() -> None:
    log = three_nodes()
    log(AddNode(node_id=4, address="h4:9091", peer_address="h4:19091"))
    log(RegisterNode(node_id=4, address="h4:9091"))
    log(CreateTopic(name="t", partitions=4, replication_factor=2, node_ids=(1, 2, 3, 4)))
    assert log(RemoveNode(node_id=4))["code"] == pb.INVALID_REQUEST  # not draining yet
    log(DecommissionNode(node_id=4))
    refused = log(RemoveNode(node_id=4))
    assert refused["code"] == pb.INVALID_REQUEST and "still holds" in refused["message"]
    assert log(RemoveNode(node_id=4, force=True))["replicas_left"] > 0


def test_decommission_is_refused_when_too_few_nodes_would_hold_a_partition() -> None:
    log = three_nodes()
    log(CreateTopic(name="t", partitions=1, replication_factor=3, node_ids=(1, 2, 3)))
    refused = log(DecommissionNode(node_id=3))
    assert refused["code"] == pb.INVALID_REQUEST and "3 replicas" in refused["message"]
    assert node_state(log.state, 3) is NodeState.ACTIVE


def test_add_node_is_idempotent_but_refuses_another_address_or_a_known_node() -> None:
    log = three_nodes()
    add = AddNode(node_id=4, address="h4:9091", peer_address="h4:19091")
    log(add)
    assert log(add)["already"] is True
    # Still joining (never registered): admitting it again fixes a mistyped address.
    assert log(AddNode(node_id=4, address="h44:9091", peer_address="h44:19091"))[
        "moved_from"] == "h4:9091"
    assert log.state.members[4].address == "h44:9091"
    log(RegisterNode(node_id=4, address="h44:9091"))
    assert log(AddNode(node_id=4, address="elsewhere:9091", peer_address="h4:19091"))["code"] \
        == pb.INVALID_REQUEST
    assert log(AddNode(node_id=2, address="h2:9091", peer_address="h2:19091"))["code"] == \
        pb.INVALID_REQUEST


def test_peer_addresses_come_from_peers_then_admission_then_the_seed_then_registration() -> None:
    log = three_nodes()
    log(AddNode(node_id=4, address="h4:9091", peer_address="h4:7000"))
    log(RegisterNode(node_id=5, address="h5:9091"))  # registered, no --peers entry, no AddNode
    joined = JoinRecord(cluster_id="c", voters=(1, 2, 3), learners=(), membership_index=7,
                        peers=(JoinedPeer(node_id=6, address="h6:9091", peer_address="h6:1"),))
    assert peer_addresses(config(), log.state, joined) == {
        1: "h1:19091", 2: "h2:19091", 3: "h3:19091", 4: "h4:7000", 5: "h5:19091", 6: "h6:1"}


def test_a_joining_node_bootstraps_its_metadata_replica_as_a_learner() -> None:
    joined = JoinRecord(cluster_id="c", voters=(1, 2, 3), learners=(5,), membership_index=7,
                        peers=())
    assert joined.bootstrap_membership(4) == Membership(
        voters=frozenset(map(NodeId, (1, 2, 3))), learners=frozenset(map(NodeId, (4, 5))),
        index=7)
    assert JoinRecord.decode(joined.encode()) == joined


def membership(voters: tuple[int, ...], learners: tuple[int, ...] = ()) -> Membership:
    return Membership(voters=frozenset(map(NodeId, voters)),
                      learners=frozenset(map(NodeId, learners)))


def test_the_metadata_leader_adds_admitted_nodes_as_learners_and_promotes_only_when_asked() -> None:
    log = three_nodes()
    log(AddNode(node_id=4, address="h4:9091", peer_address="h4:19091"))
    log(AddNode(node_id=5, address="h5:9091", peer_address="h5:19091", metadata_voter=True))
    everyone = (lambda n: True)  # noqa: E731
    change = next_metadata_change(log.state, membership((1, 2, 3)), leader_id=1,
                                  caught_up=everyone)
    assert change == MetadataChange(ChangeKind.ADD_LEARNER, 4)
    now = membership((1, 2, 3), (4, 5))
    assert next_metadata_change(log.state, now, leader_id=1, caught_up=everyone) is None
    log(RegisterNode(node_id=5, address="h5:9091"))
    assert next_metadata_change(log.state, now, leader_id=1, caught_up=lambda n: n != 5) is None
    assert next_metadata_change(log.state, now, leader_id=1, caught_up=everyone) == \
        MetadataChange(ChangeKind.PROMOTE, 5)


def test_a_removed_node_leaves_the_metadata_group_and_a_leader_hands_over_first() -> None:
    log = three_nodes()
    log(RegisterNode(node_id=4, address="h4:9091"))
    log(DecommissionNode(node_id=1))
    everyone = (lambda n: True)  # noqa: E731
    group = membership((1, 2, 3), (4,))
    # A draining metadata leader hands over to a caught-up voter that is not draining.
    assert next_metadata_change(log.state, group, leader_id=1, caught_up=everyone) == \
        MetadataChange(ChangeKind.TRANSFER_LEADERSHIP, 2)
    log(RemoveNode(node_id=1))
    assert next_metadata_change(log.state, group, leader_id=1, caught_up=everyone) == \
        MetadataChange(ChangeKind.TRANSFER_LEADERSHIP, 2)
    assert next_metadata_change(log.state, group, leader_id=2, caught_up=everyone) == \
        MetadataChange(ChangeKind.REMOVE, 1)


def test_removing_a_voter_is_refused_below_three_voters_or_without_a_live_majority() -> None:
    up = (lambda n: True)  # noqa: E731
    assert voter_removal_problem([1, 2, 3, 4, 5], 5, alive=up, force=False) is None
    assert voter_removal_problem([1, 2, 3], 4, alive=up, force=False) is None  # a learner
    assert "fewer than 3" in voter_removal_problem([1, 2, 3], 3, alive=up, force=False)
    assert voter_removal_problem([1, 2, 3], 3, alive=up, force=True) is None
    problem = voter_removal_problem([1, 2, 3, 4, 5], 5, alive=lambda n: n in (1, 5), force=True)
    assert problem is not None and "majority" in problem


def test_the_drain_moves_every_partition_off_the_node_except_those_already_moving() -> None:
    from tidelog.node.membership_drain import drain_moves
    from tidelog.node.metadata_commands import AlterPartitionReassignment

    log = three_nodes()
    log(AddNode(node_id=4, address="h4:9091", peer_address="h4:19091"))
    log(RegisterNode(node_id=4, address="h4:9091"))
    log(CreateTopic(name="t", partitions=4, replication_factor=3, node_ids=(1, 2, 3)))
    log(DecommissionNode(node_id=3))
    moves = drain_moves(log.state, 3, placement_nodes(config(), log.state))
    # Every partition had node 3; its slot goes to node 4, the others keep their places.
    assert moves == {("t", p): (*[n for n in r if n != 3], 4)
                     for p, r in enumerate(log.state.topics["t"].replicas)}
    first = sorted(moves)[0]
    log(AlterPartitionReassignment(topic="t", partition=first[1], target=moves[first]))
    assert first not in drain_moves(log.state, 3, placement_nodes(config(), log.state))


def test_a_cancelled_decommission_makes_the_node_placeable_again() -> None:
    log = three_nodes()
    log(AddNode(node_id=4, address="h4:9091", peer_address="h4:19091"))
    log(RegisterNode(node_id=4, address="h4:9091"))
    assert log(RecommissionNode(node_id=4))["code"] == pb.INVALID_REQUEST  # not draining
    log(DecommissionNode(node_id=4))
    assert 4 not in placement_nodes(config(), log.state)
    assert log(RecommissionNode(node_id=4)) == {"state": "active"}
    assert placement_nodes(config(), log.state) == [1, 2, 3, 4]
    log(DecommissionNode(node_id=4))
    log(RemoveNode(node_id=4))
    assert log(RecommissionNode(node_id=4))["code"] == pb.INVALID_REQUEST  # removed is final
