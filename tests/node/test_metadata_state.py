"""The metadata state machine, topic rules and idempotent-producer table: pure, no processes."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from tidelog.node.errors import OutOfOrderSequenceError, ProducerFencedError
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    AllocateProducerId,
    AlterConfigs,
    CreateTopic,
    DeleteTopic,
    RegisterNode,
)
from tidelog.node.producer_state import ProducerStateTable
from tidelog.node.topics import assign_replicas, validate_topic_name
from tidelog.proto import broker_pb2 as pb
from tidelog.proto.batch import decode_header, encode_batch


def create(state: MetadataState, index: int, name: str, partitions: int = 3, rf: int = 3,
           **configs: str) -> dict:
    return state.apply(index, CreateTopic(name=name, partitions=partitions,
                                          replication_factor=rf,
                                          configs=tuple(sorted(configs.items())),
                                          node_ids=(1, 2, 3)))


def test_every_replica_applies_the_same_commands_to_the_same_state() -> None:
    commands = [
        RegisterNode(node_id=1, address="a:1"),
        CreateTopic(name="t", partitions=4, replication_factor=2, node_ids=(1, 2, 3)),
        CreateTopic(name="t", partitions=4, replication_factor=2, node_ids=(1, 2, 3)),
        AllocateProducerId(),
        DeleteTopic(name="t"),
    ]
    states = [MetadataState(), MetadataState()]
    results = [[s.apply(i, c) for i, c in enumerate(commands)] for s in states]
    assert results[0] == results[1]
    assert results[0][2]["code"] == pb.TOPIC_ALREADY_EXISTS
    assert states[0] == states[1]
    assert states[0].deleted_topic_ids == {1}


def test_invalid_commands_are_applied_as_errors_not_exceptions() -> None:
    state = MetadataState()
    assert create(state, 0, "bad name")["code"] == pb.INVALID_TOPIC_NAME
    assert create(state, 1, "t", rf=4)["code"] == pb.INVALID_REPLICATION_FACTOR
    assert create(state, 2, "t", partitions=0)["code"] == pb.INVALID_PARTITIONS
    assert create(state, 3, "t", **{"cleanup.policy": "shred"})["code"] == pb.INVALID_CONFIG
    assert create(state, 4, "t", **{"no.such": "1"})["code"] == pb.INVALID_CONFIG
    assert state.topics == {}
    assert state.apply_encoded(5, b'{"op":"launch"}')["code"] == pb.INVALID_REQUEST


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "x" * 250, "é"])
def test_invalid_topic_names_are_refused(name: str) -> None:
    with pytest.raises(Exception, match="topic name"):
        validate_topic_name(name)


def test_placement_spreads_replicas_and_preferred_leaders_evenly() -> None:
    layout = assign_replicas(64, 3, [1, 2, 3], rotation=5)
    preferred = Counter(replicas[0] for replicas in layout)
    assert max(preferred.values()) <= math.ceil(64 / 3)
    assert all(len(set(r)) == 3 for r in layout)
    # Over many topics of one partition, each node is preferred equally often.
    firsts = Counter(assign_replicas(1, 1, [1, 2, 3], rotation=t)[0][0] for t in range(30))
    assert set(firsts.values()) == {10}


def header(pid: int, epoch: int, seq: int, count: int = 2):  # type: ignore[no-untyped-def]
    batch = encode_batch([(None, b"v", (), 0)] * count, producer_id=pid, producer_epoch=epoch,
                         base_sequence=seq)
    return decode_header(batch)


def test_a_retried_batch_is_recognised_and_gets_its_earlier_offsets() -> None:
    table = ProducerStateTable()
    first = header(7, 0, 0)
    assert table.check(first) is None
    table.record(first, base_offset=100)
    dup = table.check(header(7, 0, 0))
    assert dup is not None and (dup.base_offset, dup.last_offset) == (100, 101)
    assert table.check(header(7, 0, 2)) is None  # the next batch in sequence


def test_a_sequence_gap_and_an_old_epoch_are_refused() -> None:
    table = ProducerStateTable()
    table.record(header(7, 1, 0), base_offset=0)
    with pytest.raises(OutOfOrderSequenceError, match="4 but 2 was expected"):
        table.check(header(7, 1, 4))
    with pytest.raises(ProducerFencedError):
        table.check(header(7, 0, 2))
    assert table.check(header(7, 2, 0)) is None  # a new epoch starts over


def test_a_segment_smaller_than_the_largest_batch_is_refused() -> None:
    state = MetadataState()
    result = create(state, 0, "small", **{"segment.bytes": str(1024 * 1024)})
    assert result["code"] == pb.INVALID_CONFIG
    assert "must be at least max.message.bytes" in result["message"]
    ok = create(state, 1, "small", **{"segment.bytes": str(1024 * 1024),
                                      "max.message.bytes": str(512 * 1024)})
    assert "error" not in ok
    altered = state.apply(2, AlterConfigs(name="small",
                                          set=(("max.message.bytes", str(4 * 1024 * 1024)),)))
    assert altered["code"] == pb.INVALID_CONFIG
