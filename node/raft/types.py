"""Vocabulary of the Raft core: positions, entries, hard state, roles, membership, errors.

Positions are record offsets (as in Redpanda). An entry is one record batch covering ``count``
consecutive offsets ``[index, index + count - 1]``; its Raft position is its LAST offset
(``Entry.last``). Every position the protocol talks about (prev_log_index, match, commit) is the
last offset of some entry, i.e. an entry *boundary*. An empty log has last index ``log_start - 1``
(initially -1, with log start 0 and term 0 at index -1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import NewType

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)
"""A record offset used as a Raft position (the last offset of an entry)."""

NO_INDEX = LogIndex(-1)
ZERO_TERM = Term(0)
ZERO_INDEX = LogIndex(0)


class EntryKind(Enum):
    DATA = "data"  # an opaque record batch from a producer; the core never parses ``data``
    NOOP = "noop"  # the control batch a new leader appends to commit entries of older terms
    CONFIG = "config"  # a membership change; ``data`` is ``Membership.encode()``


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One record batch in the Raft log. Invariant: ``count >= 1``; NOOP/CONFIG have count 1."""

    term: Term
    index: LogIndex  # first offset
    count: int
    kind: EntryKind
    data: bytes = b""

    @property
    def last(self) -> LogIndex:
        """The entry's Raft position: its last offset."""
        return LogIndex(self.index + self.count - 1)

    @property
    def size_bytes(self) -> int:
        """Approximate wire size, used to bound append batches."""
        return len(self.data) + 32


@dataclass(frozen=True, slots=True, kw_only=True)
class HardState:
    """What must be durable before any message that depends on it is sent.

    Term and vote are written atomically (one record, one fsync): a replica that forgot its vote
    could vote twice in a term. ``commit`` is persisted so that the commit index never moves
    backwards across a restart.
    """

    term: Term = Term(0)
    vote: NodeId | None = None
    commit: LogIndex = NO_INDEX


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftState:
    """Volatile state the runtime may want to observe; never persisted."""

    role: Role
    leader: NodeId | None
    term: Term


_MEMBERSHIP_MAGIC_V1 = b"TLM1"  # before issue 11: no index; still decoded (index NO_INDEX)
_MEMBERSHIP_MAGIC = b"TLM2"
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


@dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """The voters and learners of a Raft group. Changes one server at a time (see docs/raft.md).

    ``index`` is the offset of the CONFIG entry this membership comes from (NO_INDEX: the
    bootstrap membership, or one persisted before issue 11). A replica applies only CONFIG entries
    above it, so a membership installed with a log start (which can be newer than CONFIG entries
    that follow the log start) never goes back to an older one (issue 11, defect 3). The runtime
    persists ``encode()`` (which includes the index) and restores it with
    ``RaftConfig.with_membership``.

    Byte layout of ``encode()`` (also the ``data`` of a CONFIG entry), big-endian:

    ======  =====================  ==================================
    offset  size                   field
    ======  =====================  ==================================
    0       4                      magic b"TLM2"
    4       2                      number of voters V
    6       2                      number of learners L
    8       8                      index (signed; -1 = NO_INDEX)
    16      8 * V                  voter ids, ascending
    ...     8 * L                  learner ids, ascending
    ======  =====================  ==================================

    The older b"TLM1" layout lacks the index field (voters follow at offset 8); ``decode``
    accepts it and reports ``index == NO_INDEX``. A CONFIG entry's own offset is authoritative
    for its index (the core sets it when it reads the entry).
    """

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()
    index: LogIndex = NO_INDEX

    def __post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError(f"a node cannot be voter and learner: {self.voters & self.learners}")
        if self.index < NO_INDEX:
            raise ValueError(f"membership index {self.index} is below {NO_INDEX}")

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def encode(self) -> bytes:
        voters, learners = sorted(self.voters), sorted(self.learners)
        parts = [_MEMBERSHIP_MAGIC, _U16.pack(len(voters)), _U16.pack(len(learners))]
        parts.append(_I64.pack(self.index))
        parts.extend(_U64.pack(n) for n in (*voters, *learners))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        magic = data[:4]
        if magic not in (_MEMBERSHIP_MAGIC, _MEMBERSHIP_MAGIC_V1) or len(data) < 8:
            raise ValueError("not a membership payload")
        (nv,), (nl,) = _U16.unpack_from(data, 4), _U16.unpack_from(data, 6)
        head, index = 8, NO_INDEX
        if magic == _MEMBERSHIP_MAGIC:
            if len(data) < 16:
                raise ValueError("membership payload has the wrong length")
            head, index = 16, LogIndex(_I64.unpack_from(data, 8)[0])
        if len(data) != head + 8 * (nv + nl):
            raise ValueError("membership payload has the wrong length")
        ids = [NodeId(_U64.unpack_from(data, head + 8 * i)[0]) for i in range(nv + nl)]
        return cls(voters=frozenset(ids[:nv]), learners=frozenset(ids[nv:]), index=index)


# --- errors, split by fault ------------------------------------------------------------------


class RaftError(Exception):
    """A request the core refused; the caller can act on the message."""


class NotLeader(RaftError):
    def __init__(self, leader_hint: NodeId | None) -> None:
        super().__init__(f"not the leader; try node {leader_hint}")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader is transferring leadership; retry on the new leader."""


class ConfigChangeRejected(RaftError):
    """A membership change that would be unsafe now (pending change, not caught up, ...)."""


class RemoteProtocolError(Exception):
    """A peer sent a message no correct Raft peer sends (a second leader in our term, entries
    over our committed prefix, an acknowledgement of entries we never had). The core refused it
    before changing anything; the runtime drops the message and logs it loudly. Not a
    ``RaftError``: the fault is the peer's (or a safety violation elsewhere), not the caller's."""
