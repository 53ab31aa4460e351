"""Adding partitions to a topic (issue 15: there was no way to): the metadata command (grow
only, placement like create, the same on every replica) and the group coordinator's side.

The real-cluster test (a topic grown 2 -> 4 under a live producer and group consumer) is in
tests/client/test_cli_admin_cluster.py, on that module's cluster: one cluster for both saves
CI ~10 s.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.node.errors import InvalidPartitionsError
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    CreatePartitions,
    CreateTopic,
    RegisterNode,
    decode_command,
    encode_command,
)
from tidelog.node.topics import assign_replicas
from tidelog.proto import broker_pb2 as pb


def _state(nodes: int = 3) -> MetadataState:
    state = MetadataState()
    for node_id in range(1, nodes + 1):
        state.apply(node_id - 1, RegisterNode(node_id=node_id, address=f"a:{node_id}"))
    return state


def test_create_partitions_grows_like_create_would_have_placed_them() -> None:
    state = _state()
    state.apply(10, CreateTopic(name="t", partitions=2, replication_factor=2))
    assert state.apply(11, CreatePartitions(name="t", total=5)) == {"partitions": 5,
                                                                     "previous": 2}
    topic = state.topics["t"]
    assert topic.replicas == assign_replicas(5, 2, [1, 2, 3], topic.topic_id)
    twin = _state()
    twin.apply(10, CreateTopic(name="t", partitions=2, replication_factor=2))
    twin.apply_encoded(11, encode_command(CreatePartitions(name="t", total=5)))
    assert twin == state  # through its wire form, every replica reaches the same layout


@pytest.mark.parametrize(("total", "reason"), [(3, "can only grow"), (2, "can only grow"),
                                               (0, "can only grow"), (5000, "between 1 and")])
def test_create_partitions_refuses_shrinking_and_too_many(total: int, reason: str) -> None:
    state = _state()
    state.apply(10, CreateTopic(name="t", partitions=3, replication_factor=1))
    before = [list(r) for r in state.topics["t"].replicas]
    result = state.apply(11, CreatePartitions(name="t", total=total))
    assert result["code"] == InvalidPartitionsError.code and reason in result["message"]
    assert state.topics["t"].replicas == before


def test_create_partitions_of_a_missing_topic_and_validate_only() -> None:
    state = _state()
    assert state.apply(10, CreatePartitions(name="nope", total=2))["code"] == \
        pb.UNKNOWN_TOPIC_OR_PARTITION
    state.apply(11, CreateTopic(name="t", partitions=1, replication_factor=1))
    assert state.apply(12, CreatePartitions(name="t", total=4, validate_only=True)) == \
        {"partitions": 1}
    assert state.topics["t"].partitions == 1
    command = CreatePartitions(name="t", total=4, node_ids=(1, 2), validate_only=True)
    assert decode_command(encode_command(command)) == command


@settings(max_examples=200, deadline=None)
@given(st.builds(CreatePartitions, name=st.text(max_size=20), total=st.integers(-5, 5000),
                 node_ids=st.none() | st.lists(st.integers(1, 9), max_size=4).map(tuple),
                 validate_only=st.booleans()),
       st.dictionaries(st.sampled_from(["name", "total", "node_ids", "validate_only", "x"]),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=4),
                       max_size=4))
def test_create_partitions_wire_form_and_any_shape_on_every_replica(
        command: CreatePartitions, body: dict) -> None:
    """Its wire form round-trips; any other body with its op is a command or a rejected no-op,
    the same on two replicas (never an exception out of apply)."""
    assert decode_command(encode_command(command)) == command
    raw = json.dumps({**body, "op": "create_partitions"}).encode()
    states = [_state(), _state()]
    for state in states:
        state.apply(10, CreateTopic(name="t", partitions=1, replication_factor=1))
    results = [state.apply_encoded(11, raw) for state in states]
    assert results[0] == results[1] and states[0] == states[1]
