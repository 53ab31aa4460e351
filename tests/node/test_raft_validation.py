"""Raft messages from the wire are checked completely before the core sees them (defect 12).

Whatever a peer sends either decodes to a Message the core can step, or raises
MalformedRaftMessage (the peer's fault); nothing else escapes, so any other exception while
stepping is known to be local.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.node.raft import Entry, EntryKind, LogIndex, Membership, Message, MessageType, NodeId
from tidelog.node.raft import Term as T
from tidelog.node.raft_validation import MalformedRaftMessage, decode_raft_message
from tidelog.node.raft_wire import to_wire
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto.batch import encode_batch

MEMBERS = frozenset({1, 2, 3})


def data_entry(index: int, count: int, term: int = 2) -> Entry:
    batch = encode_batch([(None, b"v", (), 0)] * count)
    return Entry(term=T(term), index=LogIndex(index), count=count, kind=EntryKind.DATA,
                 data=batch)


def append(entries: tuple[Entry, ...] = (), prev: int = 4, term: int = 2) -> cpb.RaftMessage:
    return to_wire("1/0", Message(type=MessageType.APPEND, frm=NodeId(2), to=NodeId(1),
                                  term=T(term), index=LogIndex(prev), log_term=T(1),
                                  entries=entries, commit=LogIndex(3)))


def decode(wire: cpb.RaftMessage) -> Message:
    return decode_raft_message(wire, self_id=1, from_node=2, members=MEMBERS)


def test_what_a_correct_peer_sends_passes_unchanged() -> None:
    entries = (data_entry(5, 3), Entry(term=T(2), index=LogIndex(8), count=1,
                                       kind=EntryKind.NOOP),
               Entry(term=T(2), index=LogIndex(9), count=1, kind=EntryKind.CONFIG,
                     data=Membership(voters=frozenset({NodeId(1), NodeId(2)})).encode()))
    message = decode(append(entries))
    assert message.entries == entries and message.frm == 2 and message.term == 2


def mutate(field: str, value: object) -> cpb.RaftMessage:
    wire = append((data_entry(5, 2),))
    setattr(wire, field, value)
    return wire


@pytest.mark.parametrize(("wire", "reason"), [
    (mutate("type", "smite"), "unknown raft message type"),
    (mutate("frm", 3), "on node 2's stream"),
    (mutate("to", 3), "reached node 1"),
    (mutate("term", -1), "term -1"),
    (mutate("commit", -7), "commit -7"),
    (mutate("index", 9), "where 10 was expected"),
    (append((data_entry(5, 2, term=3),)), "has term 3"),
    (append((data_entry(5, 2), data_entry(8, 1))), "where 7 was expected"),
    (to_wire("1/0", Message(type=MessageType.HEARTBEAT, frm=NodeId(2), to=NodeId(1), term=T(2),
                            entries=(data_entry(0, 1),))), "carries entries"),
    (to_wire("1/0", Message(type=MessageType.INSTALL_LOG_START, frm=NodeId(2), to=NodeId(1),
                            term=T(2))), "without a membership"),
])
def test_a_malformed_message_is_refused_with_its_reason(wire: cpb.RaftMessage,
                                                        reason: str) -> None:
    with pytest.raises(MalformedRaftMessage, match=reason):
        decode(wire)


def test_entry_data_must_match_the_entry() -> None:
    wire = append((data_entry(5, 2),))
    wire.entries[0].count = 1000  # the batch spans 2 offsets
    with pytest.raises(MalformedRaftMessage, match="spans 2 offsets"):
        decode(wire)
    wire = append((data_entry(5, 2),))
    data = wire.entries[0].data
    wire.entries[0].data = data[:-1] + bytes([data[-1] ^ 0xFF])
    with pytest.raises(MalformedRaftMessage, match="checksum"):
        decode(wire)
    wire = append((data_entry(5, 2),))
    wire.entries[0].kind = 7
    with pytest.raises(MalformedRaftMessage, match="unknown entry kind"):
        decode(wire)


def test_a_sender_outside_the_group_is_refused() -> None:
    wire = append()
    wire.frm = 7
    with pytest.raises(MalformedRaftMessage, match="not a peer"):
        decode_raft_message(wire, self_id=1, from_node=7, members=MEMBERS)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_wire_bytes_decode_or_are_refused_never_anything_else(raw: bytes) -> None:
    try:
        wire = cpb.RaftMessage.FromString(raw)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError: not our decoder's input
        return
    wire.frm, wire.to = 2, 1
    with contextlib.suppress(MalformedRaftMessage):
        decode(wire)
