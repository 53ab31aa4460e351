"""Metadata commands: strict decoding, old log shapes, and deterministic rejection on apply.

Issue 11, defect 13: a malformed command in the metadata log raised JSONDecodeError/KeyError in
apply and stopped the metadata replica on every node. Now any bytes at all are either a typed
command or a rejected no-op, the same on every node.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    AllocateProducerId,
    AlterConfigs,
    CommandError,
    CreateTopic,
    DeleteTopic,
    InitProducer,
    RegisterNode,
    decode_command,
    encode_command,
)
from tidelog.proto import broker_pb2 as pb

names = st.text(min_size=0, max_size=40)
config_pairs = st.dictionaries(st.sampled_from(["retention.ms", "segment.ms", "x"]),
                               st.text(max_size=8), max_size=3).map(
                                   lambda d: tuple(sorted(d.items())))
commands = st.one_of(
    st.builds(RegisterNode, node_id=st.integers(1, 2**31 - 1), address=names),
    st.builds(CreateTopic, name=names, partitions=st.integers(-5, 5000),
              replication_factor=st.integers(-5, 9), configs=config_pairs,
              node_ids=st.none() | st.lists(st.integers(1, 9), max_size=5).map(tuple),
              validate_only=st.booleans()),
    st.builds(DeleteTopic, name=names),
    st.builds(AlterConfigs, name=names, set=config_pairs,
              delete=st.lists(names, max_size=3).map(tuple), validate_only=st.booleans()),
    st.builds(AllocateProducerId),
    st.builds(InitProducer, producer_id=st.integers(-1, 2**40),
              producer_epoch=st.integers(-1, 2**15 - 1), transactional_id=names),
)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_every_command_survives_its_wire_form(command) -> None:  # type: ignore[no-untyped-def]
    assert decode_command(encode_command(command)) == command


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
ops = st.sampled_from(["register_node", "create_topic", "delete_topic", "alter_configs",
                       "allocate_producer_id", "init_producer", "launch"])
command_like = st.builds(lambda op, body: json.dumps({**body, "op": op}).encode(), ops,
                         st.dictionaries(st.sampled_from(
                             ["name", "partitions", "replication_factor", "configs", "node_ids",
                              "validate_only", "node_id", "address", "set", "delete",
                              "producer_id", "producer_epoch", "transactional_id", "extra"]),
                             json_values, max_size=6))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200), command_like))
def test_any_bytes_are_a_command_or_a_rejected_no_op_the_same_on_every_node(raw: bytes) -> None:
    """Never an exception out of apply: two replicas reach the same result and state."""
    states = [MetadataState(), MetadataState()]
    for state in states:
        state.apply(0, RegisterNode(node_id=1, address="a:1"))
        state.apply(1, CreateTopic(name="t", partitions=1, replication_factor=1))
    results = [state.apply_encoded(2, raw) for state in states]
    assert results[0] == results[1]
    assert states[0] == states[1]
    assert states[0].applied_index == 2
    try:
        decode_command(raw)
    except CommandError:
        assert results[0]["code"] == pb.INVALID_REQUEST
        assert "t" in states[0].topics and len(states[0].topics) == 1  # nothing changed


@pytest.mark.parametrize("raw", [
    b'{"op":"create_topic"}',  # the request that stopped every node's metadata replica
    b"not json",
    b"[]",
    b'{"op":"register_node","node_id":true,"address":"a:1"}',  # a bool is not an id
    b'{"op":"register_node","node_id":1,"address":"a:1","admin":true}',  # unknown field
    b'{"op":"create_topic","name":"t","partitions":1.5,"replication_factor":1}',
    b'{"op":"alter_configs","name":"t","set":{"retention.ms":1}}',  # config values are strings
    b'{"op":"init_producer","producer_id":-2}',
    b"\xff\xfe",
])
def test_malformed_commands_are_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(CommandError) as info:
        decode_command(raw)
    assert str(info.value)


def test_commands_as_older_nodes_wrote_them_still_decode() -> None:
    """The JSON shapes already in metadata logs on disk (written before the typed commands)."""
    old = [
        {"op": "register_node", "node_id": 2, "address": "127.0.0.1:9092"},
        {"op": "create_topic", "name": "t", "partitions": 3, "replication_factor": 3,
         "configs": {"retention.ms": "1000"}, "node_ids": [1, 2, 3], "validate_only": False},
        {"op": "delete_topic", "name": "t"},
        {"op": "alter_configs", "name": "t", "set": {}, "delete": ["retention.ms"],
         "validate_only": True},
        {"op": "allocate_producer_id"},
    ]
    decoded = [decode_command(json.dumps(c, separators=(",", ":"), sort_keys=True).encode())
               for c in old]
    assert decoded[1] == CreateTopic(name="t", partitions=3, replication_factor=3,
                                     configs=(("retention.ms", "1000"),), node_ids=(1, 2, 3))
    assert [type(c) for c in decoded] == [RegisterNode, CreateTopic, DeleteTopic, AlterConfigs,
                                          AllocateProducerId]


def test_init_producer_bumps_the_epoch_and_refuses_a_stale_instance() -> None:
    """Kafka's InitProducerId (KIP-98/KIP-360): same identity, next epoch; an instance that is
    not the latest may not bump (it would fence the live one)."""
    state = MetadataState()
    first = state.apply(0, InitProducer(transactional_id="orders"))
    assert first == {"producer_id": 1, "producer_epoch": 0}
    second = state.apply(1, InitProducer(transactional_id="orders"))
    assert second == {"producer_id": 1, "producer_epoch": 1}
    by_id = state.apply(2, InitProducer(producer_id=1, producer_epoch=1))
    assert by_id == {"producer_id": 1, "producer_epoch": 2}
    stale = state.apply(3, InitProducer(producer_id=1, producer_epoch=0))
    assert stale["code"] == pb.PRODUCER_FENCED
    unknown = state.apply(4, InitProducer(producer_id=99, producer_epoch=0))
    assert unknown["code"] == pb.INVALID_REQUEST
    fresh = state.apply(5, AllocateProducerId())
    assert fresh == {"producer_id": 2, "producer_epoch": 0}
