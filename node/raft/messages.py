"""Messages between replicas of one Raft group: plain frozen data, easy to serialize.

One ``Message`` class with a ``MessageType`` (like etcd's raftpb.Message) keeps the wire schema a
single protobuf message. Field meaning per type:

=================  ===========================  ==========================  =====================
type               index                        log_term                    other fields
=================  ===========================  ==========================  =====================
PRE_VOTE, VOTE     candidate's last index       candidate's last term       transfer
*_VOTE_RESP        -                            -                           reject
APPEND             prev_log_index (boundary)    prev_log_term               entries, commit
APPEND_RESP        match (ok) / rejected prev   hint term (reject)          reject, reject_hint
HEARTBEAT          -                            -                           commit
HEARTBEAT_RESP     -                            -                           -
TIMEOUT_NOW        -                            -                           -
INSTALL_LOG_START  leader's log_start - 1       term at that index          membership, commit
QUIESCE            leader's last index          term at that index          commit
=================  ===========================  ==========================  =====================

The reply to INSTALL_LOG_START is an APPEND_RESP (its index is the follower's new match).
QUIESCE is a leader's last heartbeat of an idle group (docs/raft.md, "Quiescence"): a follower
whose log matches at ``index`` commits up to ``commit`` and stops its election timer; one whose
log does not answers as to an empty APPEND, which wakes the leader.
Its ``membership`` is the leader's current (committed) one with ``Membership.index``, the offset of
the CONFIG entry it comes from, which may lie above the log start: the follower applies only
CONFIG entries above that index (issue 11, defect 3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from tidelog.node.raft.types import NO_INDEX, Entry, LogIndex, Membership, NodeId, Term


class MessageType(Enum):
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    APPEND = "append"
    APPEND_RESP = "append_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    TIMEOUT_NOW = "timeout_now"
    INSTALL_LOG_START = "install_log_start"
    QUIESCE = "quiesce"


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    type: MessageType
    frm: NodeId
    to: NodeId
    term: Term
    index: LogIndex = NO_INDEX
    log_term: Term = Term(0)
    entries: tuple[Entry, ...] = ()
    commit: LogIndex = NO_INDEX
    reject: bool = False
    reject_hint: LogIndex = NO_INDEX  # APPEND_RESP reject: a boundary the leader may retry from
    transfer: bool = False  # VOTE/PRE_VOTE: campaign started by TimeoutNow; ignores the lease
    membership: Membership | None = None  # INSTALL_LOG_START: leader's membership (+ its index)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (enums as their values), for the broker's protobuf mapping."""
        d = asdict(self)
        d["type"] = self.type.value
        d["entries"] = [{**asdict(e), "kind": e.kind.value} for e in self.entries]
        if self.membership is not None:
            d["membership"] = {
                "voters": sorted(self.membership.voters),
                "learners": sorted(self.membership.learners),
                "index": self.membership.index,
            }
        return d

    def __str__(self) -> str:  # compact, for simulator traces
        parts = [f"{self.type.value} {self.frm}->{self.to} t{self.term}"]
        if self.type in (MessageType.APPEND, MessageType.INSTALL_LOG_START):
            n = len(self.entries)
            parts.append(f"prev={self.index}/t{self.log_term} n={n} c={self.commit}")
        elif self.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            parts.append(f"last={self.index}/t{self.log_term}")
        elif self.type == MessageType.APPEND_RESP:
            rej = f" REJ hint={self.reject_hint}" if self.reject else ""
            parts.append(f"idx={self.index}{rej}")
        elif self.type in (MessageType.HEARTBEAT, MessageType.QUIESCE):
            parts.append(f"c={self.commit}")
        if self.type in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP):
            parts.append("REJ" if self.reject else "OK")
        return " ".join(parts)
