"""Majority quorums: the commit index and the vote outcome of one voter set."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import Enum

from tidelog.node.raft.types import NO_INDEX, LogIndex, NodeId


class VoteResult(Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    return n // 2 + 1


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, LogIndex]) -> LogIndex:
    """The largest index that a majority of ``voters`` have (missing voters count as -1)."""
    if not voters:
        return NO_INDEX
    acked = sorted((match.get(v, NO_INDEX) for v in voters), reverse=True)
    return acked[majority(len(voters)) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    q = majority(len(voters))
    if granted >= q:
        return VoteResult.WON
    if rejected > len(voters) - q:
        return VoteResult.LOST
    return VoteResult.PENDING
