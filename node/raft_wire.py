"""Raft messages ↔ protobuf, for the node-to-node stream; entry data travels untouched."""

from __future__ import annotations

from tidelog.node.raft.messages import Message, MessageType
from tidelog.node.raft.types import NO_INDEX, Entry, EntryKind, LogIndex, Membership, NodeId, Term
from tidelog.proto import cluster_pb2 as cpb

_KIND_TO_WIRE = {
    EntryKind.DATA: cpb.ENTRY_DATA,
    EntryKind.NOOP: cpb.ENTRY_NOOP,
    EntryKind.CONFIG: cpb.ENTRY_CONFIG,
}
_KIND_FROM_WIRE = {v: k for k, v in _KIND_TO_WIRE.items()}
_TYPES = {t.value: t for t in MessageType}


def to_wire(group: str, msg: Message) -> cpb.RaftMessage:
    wire = cpb.RaftMessage(
        group=group,
        type=msg.type.value,
        frm=msg.frm,
        to=msg.to,
        term=msg.term,
        index=msg.index,
        log_term=msg.log_term,
        commit=msg.commit,
        reject=msg.reject,
        reject_hint=msg.reject_hint,
        transfer=msg.transfer,
    )
    if msg.entries:
        wire.entries.extend(
            cpb.RaftEntry(term=e.term, index=e.index, count=e.count,
                          kind=_KIND_TO_WIRE[e.kind], data=e.data)
            for e in msg.entries
        )
    if msg.membership is not None:
        wire.has_membership = True
        wire.membership.voters.extend(sorted(msg.membership.voters))
        wire.membership.learners.extend(sorted(msg.membership.learners))
        if msg.membership.index != NO_INDEX:
            wire.membership.index = msg.membership.index
    return wire


def from_wire(wire: cpb.RaftMessage) -> Message:
    """Decode; raises ValueError for a message no correct peer would send."""
    kind = _TYPES.get(wire.type)
    if kind is None:
        raise ValueError(f"unknown raft message type {wire.type!r}")
    entries = tuple(
        Entry(term=Term(e.term), index=LogIndex(e.index), count=e.count,
              kind=_KIND_FROM_WIRE[e.kind], data=e.data)
        for e in wire.entries
    )
    membership = None
    if wire.has_membership:
        membership = Membership(
            voters=frozenset(NodeId(v) for v in wire.membership.voters),
            learners=frozenset(NodeId(v) for v in wire.membership.learners),
            index=LogIndex(wire.membership.index)
            if wire.membership.HasField("index")
            else NO_INDEX,
        )
    return Message(
        type=kind,
        frm=NodeId(wire.frm),
        to=NodeId(wire.to),
        term=Term(wire.term),
        index=LogIndex(wire.index),
        log_term=Term(wire.log_term),
        entries=entries,
        commit=LogIndex(wire.commit),
        reject=wire.reject,
        reject_hint=LogIndex(wire.reject_hint),
        transfer=wire.transfer,
        membership=membership,
    )
