"""RaftConfig: one frozen record, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tidelog.node.raft.types import NO_INDEX, LogIndex, Membership, NodeId


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftConfig:
    node_id: NodeId
    voters: tuple[NodeId, ...]
    """Bootstrap membership. After a restart pass the last membership the core reported in
    ``Ready.membership`` (the runtime persists ``Membership.encode()`` with the hard state), with
    ``with_membership``: it sets voters, learners and ``membership_index`` together."""
    learners: tuple[NodeId, ...] = ()
    membership_index: LogIndex = NO_INDEX
    """``Membership.index`` of the restored membership (NO_INDEX at bootstrap): CONFIG entries at
    or below it are older and never applied again."""
    election_ticks: int = 10
    """A follower campaigns after a random timeout in [election_ticks, 2 * election_ticks)."""
    heartbeat_ticks: int = 1
    max_inflight_msgs: int = 256
    """Per-follower window of unacknowledged appends (replicate state); sends pause when full."""
    max_append_bytes: int = 1 << 20
    """Upper bound on one append's entries (at least one entry is always sent)."""
    max_committed_bytes: int = 4 << 20
    """Upper bound on ``Ready.committed_entries``; the rest follow in later Readies."""
    pre_vote: bool = True
    check_quorum: bool = True
    promote_lag_max: int = 0
    """A learner may be promoted once its match is within this many offsets of the commit index."""
    noop_on_committed_log: bool = True
    """A new leader appends its NOOP even when its whole log is already committed (the paper's
    rule, which the transcripts and paper tests follow). False (partition replicas): only when an
    entry of an older term may still need committing, so a fresh topic starts at offset 0 and
    an idle leader change adds no offset (docs/raft.md, "The leader's no-op")."""

    quiesce: bool = False
    """A leader whose group is idle (everything committed, applied here, matched by every
    follower, each heard from recently) sends QUIESCE and stops heartbeating; followers stop
    their election timers. Any message, proposal, transfer or membership change wakes the group;
    the runtime calls ``RaftCore.wake`` when the leader's node stops answering (docs/raft.md,
    "Quiescence"). Off by default (the paper tests and transcripts); on for the node's replicas."""

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1:
            raise ValueError("heartbeat_ticks must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(
                f"election_ticks ({self.election_ticks}) must exceed heartbeat_ticks "
                f"({self.heartbeat_ticks}), or followers time out between heartbeats"
            )
        if self.max_inflight_msgs < 1 or self.max_append_bytes < 1 or self.max_committed_bytes < 1:
            raise ValueError("max_inflight_msgs, max_*_bytes must be >= 1")
        if not self.voters:
            raise ValueError("at least one voter is required")
        if len(set(self.voters)) != len(self.voters) or set(self.voters) & set(self.learners):
            raise ValueError("voters and learners must be distinct node ids")
        if self.promote_lag_max < 0:
            raise ValueError("promote_lag_max must be >= 0")
        if self.membership_index < NO_INDEX:
            raise ValueError(f"membership_index must be >= {NO_INDEX}")

    @property
    def membership(self) -> Membership:
        return Membership(
            voters=frozenset(self.voters),
            learners=frozenset(self.learners),
            index=self.membership_index,
        )

    def with_membership(self, m: Membership) -> RaftConfig:
        """This config with a persisted membership (``Ready.membership``) restored."""
        return replace(
            self,
            voters=tuple(sorted(m.voters)),
            learners=tuple(sorted(m.learners)),
            membership_index=m.index,
        )
