"""Check a Raft message from the wire completely before the core sees it.

Errors split by fault (issue 11, defect 12): a message that fails here is the peer's fault — it is
logged and dropped, and the replica is untouched. Once a message passes, any exception raised
while stepping it is a local fault (say, a CorruptLogError while reading our own log) and stops
that replica with the real reason; it is never reported as "a malformed message".

What is checked: the type and entry kinds are known; the sender is the stream's declared peer and
a member of the group (full mTLS identity is the security issue's job); the message is addressed
to us; terms and indexes are in range; entries ride only on APPEND, are contiguous from the
message's prev index, have terms no later than the message's, and their data is what their kind
requires (an intact, non-control record batch whose offset span is the entry's count; a
membership payload; nothing for a no-op).
"""

from __future__ import annotations

from collections.abc import Collection

from tidelog.node.raft import Entry, EntryKind, Membership, Message
from tidelog.node.raft.messages import MessageType
from tidelog.node.raft_wire import from_wire
from tidelog.node.storage.encryption import ENCRYPTED_ATTRIBUTE
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto.batch import BatchError, validate_batch

INDEX_MAX = 2**62
TERM_MAX = 2**62
ENTRY_BYTES_MAX = 64 * 1024 * 1024  # the transport's gRPC message limit
_KINDS = frozenset(cpb.EntryKind.values())
_TYPES = frozenset(t.value for t in MessageType)


class MalformedRaftMessage(ValueError):  # noqa: N818 - a peer's fault, named for what it is
    """A Raft message no correct peer would send; the message says what is wrong."""


def decode_raft_message(wire: cpb.RaftMessage, *, self_id: int, from_node: int,
                        members: Collection[int]) -> Message:
    """The core's Message for `wire`, or MalformedRaftMessage. Never touches local state."""
    if wire.type not in _TYPES:
        raise MalformedRaftMessage(f"unknown raft message type {wire.type!r}")
    if wire.frm != from_node:
        raise MalformedRaftMessage(
            f"message claims to be from node {wire.frm} on node {from_node}'s stream")
    if wire.frm not in members or wire.frm == self_id:
        raise MalformedRaftMessage(
            f"node {wire.frm} is not a peer in group {wire.group!r} (members "
            f"{sorted(members)})")
    if wire.to != self_id:
        raise MalformedRaftMessage(f"message for node {wire.to} reached node {self_id}")
    _check_range("term", wire.term, 0, TERM_MAX)
    _check_range("log_term", wire.log_term, 0, TERM_MAX)
    for name in ("index", "commit", "reject_hint"):
        _check_range(name, getattr(wire, name), -1, INDEX_MAX)
    if wire.entries and wire.type != MessageType.APPEND.value:
        raise MalformedRaftMessage(f"a {wire.type} message carries entries")
    for entry in wire.entries:
        if entry.kind not in _KINDS:
            raise MalformedRaftMessage(f"unknown entry kind {entry.kind}")
    if wire.has_membership or wire.type == MessageType.INSTALL_LOG_START.value:
        _check_membership(wire)
    try:
        message = from_wire(wire)
    except ValueError as exc:  # Membership refuses a node that is both voter and learner
        raise MalformedRaftMessage(str(exc)) from None
    _check_entries(message)
    return message


def _check_range(name: str, value: int, minimum: int, maximum: int) -> None:
    if not minimum <= value <= maximum:
        raise MalformedRaftMessage(f"{name} {value} is outside [{minimum}, {maximum}]")


def _check_membership(wire: cpb.RaftMessage) -> None:
    if not wire.has_membership or not wire.membership.voters:
        raise MalformedRaftMessage("install_log_start without a membership of voters")
    for node in (*wire.membership.voters, *wire.membership.learners):
        if node < 1:
            raise MalformedRaftMessage(f"membership names node {node}")


def _check_entries(message: Message) -> None:
    expected = message.index + 1
    for entry in message.entries:
        if entry.index != expected:
            raise MalformedRaftMessage(
                f"entry at {entry.index} where {expected} was expected (entries must be "
                "contiguous after the message's prev index)")
        if not 1 <= entry.count <= 2**31:
            raise MalformedRaftMessage(f"entry at {entry.index} covers {entry.count} offsets")
        if not 0 <= entry.term <= message.term:
            raise MalformedRaftMessage(
                f"entry at {entry.index} has term {entry.term}, message term {message.term}")
        _check_entry_data(entry)
        expected = entry.last + 1
    _check_range("last entry", expected - 1, -1, INDEX_MAX)


def _check_entry_data(entry: Entry) -> None:
    match entry.kind:
        case EntryKind.DATA:
            try:
                header = validate_batch(entry.data, max_bytes=ENTRY_BYTES_MAX)
            except BatchError as exc:
                raise MalformedRaftMessage(f"entry at {entry.index}: {exc}") from None
            if header.attributes & ENCRYPTED_ATTRIBUTE:  # storage's stored form, never sent
                raise MalformedRaftMessage(f"entry at {entry.index}: attribute bit 5 is set")
            if header.is_control or header.last_offset_delta + 1 != entry.count:
                raise MalformedRaftMessage(
                    f"entry at {entry.index}: batch spans {header.last_offset_delta + 1} "
                    f"offsets, the entry {entry.count}")
        case EntryKind.CONFIG:
            if entry.count != 1:
                raise MalformedRaftMessage(f"config entry at {entry.index} of count {entry.count}")
            try:
                Membership.decode(entry.data)
            except ValueError as exc:
                raise MalformedRaftMessage(f"config entry at {entry.index}: {exc}") from None
        case EntryKind.NOOP:
            if entry.count != 1 or entry.data:
                raise MalformedRaftMessage(f"no-op entry at {entry.index} is not empty")
