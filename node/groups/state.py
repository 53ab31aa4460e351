"""The group coordinator's core: membership, target assignment, reconciliation and offsets of
the groups of one `__consumer_offsets` partition. Sans-I/O: time comes in as `now_ms`, and every
change that must survive a coordinator failover comes out as records for the shell to write.

Theory of operation (KIP-848, the "new consumer group protocol", simplified)
-----------------------------------------------------------------------------
* A consumer heartbeats with (member id, member epoch, subscription, the partitions it owns).
  Epoch 0 joins; epoch -1 leaves; any other epoch must be the member's current one (or its
  previous one, when a response was lost).
* The **group epoch** goes up whenever what the assignor sees changes: a member joins, leaves or
  is removed, a subscription changes, a subscribed topic gains partitions. Then the assignor
  computes the **target assignment** at once and the **assignment epoch** = group epoch.
* Each member is brought to its target one step per heartbeat (`_reconcile`). The coordinator
  tracks what each member holds (`assigned`). Invariant: no partition is in two members'
  `assigned` sets — a partition is handed to its new owner only after the old owner said (in a
  heartbeat's owned partitions) that it let go. So the steps are:
  1. if the member holds partitions its target lacks: they are *revoked* (the response leaves
     them out; the member commits, then heartbeats without them) — state UNREVOKED_PARTITIONS;
  2. once it let go, its member epoch becomes the assignment epoch, and it gets every partition
     of its target that nobody else holds; the rest follow as their owners release them —
     state UNRELEASED_PARTITIONS until then, STABLE after.
* A member whose last heartbeat is older than its session timeout, or who does not revoke within
  its rebalance timeout (the consumer's max.poll.interval), is removed (its partitions are free).
* Commits are accepted from a member at its current or previous epoch for partitions it holds;
  an admin commit (epoch -1) only when the group has no members.

Transition table of a member (`_MEMBER_TRANSITIONS`): any other (state, event) is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from tidelog.node.errors import InvalidRequestError
from tidelog.node.groups import offsets_log as ol
from tidelog.node.groups.assignors import (
    MEMBERS_MAX,
    Assignor,
    TopicPartition,
    assign,
)
from tidelog.node.groups.errors import (
    FencedMemberEpochError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    UnknownMemberIdError,
)

__all__ = [
    "CommittedOffset",
    "GroupCoordinatorCore",
    "GroupState",
    "Heartbeat",
    "HeartbeatResult",
    "Member",
    "MemberState",
    "Record",
]

JOIN_EPOCH = 0
LEAVE_EPOCH = -1
SUBSCRIBED_TOPICS_MAX = 1000
HEARTBEAT_INTERVAL_MS_MAX = 5000
HEARTBEAT_INTERVAL_MS_MIN = 100
RECONCILING_HEARTBEAT_INTERVAL_MS = 200  # a member mid-rebalance comes back quickly


class MemberState(Enum):
    STABLE = "stable"
    UNREVOKED_PARTITIONS = "unrevoked_partitions"
    UNRELEASED_PARTITIONS = "unreleased_partitions"


class MemberEvent(Enum):
    REVOKE = "revoke"          # holds partitions outside its target
    REVOKED = "revoked"        # acknowledged the revocation
    WAIT_RELEASE = "wait"      # some target partitions are still held by others
    REACH_TARGET = "target"    # holds exactly its target


_MEMBER_TRANSITIONS: dict[tuple[MemberState, MemberEvent], MemberState] = {
    (MemberState.STABLE, MemberEvent.REVOKE): MemberState.UNREVOKED_PARTITIONS,
    (MemberState.STABLE, MemberEvent.WAIT_RELEASE): MemberState.UNRELEASED_PARTITIONS,
    (MemberState.STABLE, MemberEvent.REACH_TARGET): MemberState.STABLE,
    (MemberState.UNREVOKED_PARTITIONS, MemberEvent.REVOKED): MemberState.STABLE,
    (MemberState.UNRELEASED_PARTITIONS, MemberEvent.REVOKE): MemberState.UNREVOKED_PARTITIONS,
    (MemberState.UNRELEASED_PARTITIONS, MemberEvent.WAIT_RELEASE):
        MemberState.UNRELEASED_PARTITIONS,
    (MemberState.UNRELEASED_PARTITIONS, MemberEvent.REACH_TARGET): MemberState.STABLE,
}


class GroupState(Enum):
    EMPTY = "empty"              # no members (may still have committed offsets)
    RECONCILING = "reconciling"  # some member is not at its target yet
    STABLE = "stable"


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """One ConsumerGroupHeartbeat, as the core sees it."""

    group_id: str
    member_id: str
    member_epoch: int
    subscribed_topics: tuple[str, ...] = ()
    subscribed_regex: str = ""
    assignor: str = ""
    owned: frozenset[TopicPartition] | None = None  # None: not sent (keep what we know)
    session_timeout_ms: int = 45_000
    rebalance_timeout_ms: int = 300_000
    client_id: str = ""
    client_host: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResult:
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: frozenset[TopicPartition]


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """A record for `__consumer_offsets`; value None is a tombstone."""

    key: bytes
    value: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommittedOffset:
    offset: int
    metadata: str
    commit_ms: int


@dataclass(slots=True, kw_only=True)
class Member:
    member_id: str
    member_epoch: int
    previous_member_epoch: int
    subscribed_topics: tuple[str, ...]
    subscribed_regex: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    client_id: str = ""
    client_host: str = ""
    # Invariant: revoking ⊆ assigned; no partition is in two members' `assigned`.
    assigned: frozenset[TopicPartition] = frozenset()
    revoking: frozenset[TopicPartition] = frozenset()
    state: MemberState = MemberState.STABLE
    last_heartbeat_ms: int = 0
    revoke_deadline_ms: int | None = None

    def step(self, event: MemberEvent) -> None:
        nxt = _MEMBER_TRANSITIONS.get((self.state, event))
        assert nxt is not None, f"member {self.member_id}: no transition {self.state} × {event}"
        self.state = nxt

    @property
    def visible_assignment(self) -> frozenset[TopicPartition]:
        """What the member is told it owns: what it holds minus what it must give back."""
        return self.assigned - self.revoking


@dataclass(slots=True, kw_only=True)
class Group:
    group_id: str
    epoch: int = 0
    assignment_epoch: int = 0
    assignor: Assignor = Assignor.STICKY
    members: dict[str, Member] = field(default_factory=dict)
    target: dict[str, frozenset[TopicPartition]] = field(default_factory=dict)
    offsets: dict[TopicPartition, CommittedOffset] = field(default_factory=dict)
    last_change_ms: int = 0

    @property
    def state(self) -> GroupState:
        if not self.members:
            return GroupState.EMPTY
        if all(m.state is MemberState.STABLE and m.member_epoch == self.assignment_epoch
               and m.assigned == self.target.get(m.member_id, frozenset())
               for m in self.members.values()):
            return GroupState.STABLE
        return GroupState.RECONCILING


class GroupCoordinatorCore:
    """All groups of one `__consumer_offsets` partition. Owned by one thread (the event loop)."""

    def __init__(self, *, default_assignor: Assignor = Assignor.STICKY,
                 offsets_retention_ms: int = 7 * 24 * 3600 * 1000,
                 partition_counts: Mapping[str, int] | None = None) -> None:
        self.groups: dict[str, Group] = {}
        self.default_assignor = default_assignor
        self.offsets_retention_ms = offsets_retention_ms
        self.partition_counts: dict[str, int] = dict(partition_counts or {})

    # =================================================================== inputs: heartbeats

    def heartbeat(self, hb: Heartbeat, now_ms: int) -> tuple[HeartbeatResult, list[Record]]:
        """Process one heartbeat; raises UnknownMemberIdError / FencedMemberEpochError /
        InvalidRequestError. The records must be committed before the result is sent."""
        _validate(hb)
        group = self.groups.get(hb.group_id)
        if hb.member_epoch == LEAVE_EPOCH:
            if group is not None and hb.member_id in group.members:
                self._remove_member(group, hb.member_id, now_ms)
                return (HeartbeatResult(member_id=hb.member_id, member_epoch=LEAVE_EPOCH,
                                        heartbeat_interval_ms=0, assignment=frozenset()),
                        [self._snapshot_record(group)])
            return (HeartbeatResult(member_id=hb.member_id, member_epoch=LEAVE_EPOCH,
                                    heartbeat_interval_ms=0, assignment=frozenset()), [])
        if group is None:
            if hb.member_epoch != JOIN_EPOCH:
                raise UnknownMemberIdError(
                    f"member {hb.member_id} is not in group {hb.group_id!r}; join with epoch 0")
            group = self.groups[hb.group_id] = Group(group_id=hb.group_id, last_change_ms=now_ms)
        before = self._snapshot_value(group)
        member = group.members.get(hb.member_id)
        if hb.member_epoch == JOIN_EPOCH:
            if member is not None:  # a rejoin after being fenced: start over
                self._remove_member(group, hb.member_id, now_ms, recompute=False)
            if len(group.members) >= MEMBERS_MAX:
                raise InvalidRequestError(
                    f"group {hb.group_id!r} already has {MEMBERS_MAX} members, the maximum")
            member = Member(member_id=hb.member_id, member_epoch=0, previous_member_epoch=-1,
                            subscribed_topics=hb.subscribed_topics,
                            subscribed_regex=hb.subscribed_regex,
                            session_timeout_ms=hb.session_timeout_ms,
                            rebalance_timeout_ms=hb.rebalance_timeout_ms,
                            client_id=hb.client_id, client_host=hb.client_host)
            group.members[hb.member_id] = member
            if hb.assignor:
                group.assignor = Assignor(hb.assignor)
            self._bump_epoch(group, now_ms)
        else:
            member = self._check_member(group, hb.member_id, hb.member_epoch, hb.owned)
            if (hb.subscribed_topics, hb.subscribed_regex) != (member.subscribed_topics,
                                                               member.subscribed_regex):
                member.subscribed_topics = hb.subscribed_topics
                member.subscribed_regex = hb.subscribed_regex
                self._bump_epoch(group, now_ms)
        member.last_heartbeat_ms = now_ms
        member.session_timeout_ms = hb.session_timeout_ms
        member.rebalance_timeout_ms = hb.rebalance_timeout_ms
        self._reconcile(group, member, hb.owned, now_ms)
        records = [] if self._snapshot_value(group) == before else [self._snapshot_record(group)]
        return self._result(member), records

    def tick(self, now_ms: int) -> list[Record]:
        """Remove members whose session or revocation timed out; expire empty groups."""
        records: list[Record] = []
        for group in list(self.groups.values()):
            expired = [m.member_id for m in group.members.values()
                       if now_ms - m.last_heartbeat_ms > m.session_timeout_ms
                       or (m.revoke_deadline_ms is not None and now_ms > m.revoke_deadline_ms)]
            for member_id in expired:
                self._remove_member(group, member_id, now_ms)
            if expired:
                records.append(self._snapshot_record(group))
            if (not group.members and now_ms - group.last_change_ms > self.offsets_retention_ms
                    and all(now_ms - o.commit_ms > self.offsets_retention_ms
                            for o in group.offsets.values())):
                records.extend(self._delete_group_records(group))
                del self.groups[group.group_id]
        return records

    def set_partition_counts(self, counts: Mapping[str, int], now_ms: int) -> list[Record]:
        """Topic metadata changed: recompute groups whose subscribed topics changed size, and
        drop the offsets of topics that no longer exist (tombstones). A group whose target
        does not cover exactly its subscribed partitions is recomputed too: a coordinator
        loaded after a topic grew starts with the new counts, so comparing counts alone missed
        it and the group never got the new partitions (issue 15)."""
        old, self.partition_counts = self.partition_counts, dict(counts)
        records: list[Record] = []
        for group in self.groups.values():
            topics = self._subscribed_topics(group)
            if any(old.get(t, 0) != counts.get(t, 0) for t in topics) or \
                    not self._target_covers(group, topics):
                self._bump_epoch(group, now_ms)
                records.append(self._snapshot_record(group))
            gone = [tp for tp in group.offsets if tp.topic not in counts]
            for tp in gone:
                del group.offsets[tp]
                records.append(Record(key=ol.encode_key(ol.OffsetKey(
                    group_id=group.group_id, topic=tp.topic, partition=tp.partition)),
                    value=None))
        return records

    # ====================================================================== inputs: offsets

    def validate_commit(self, group_id: str, member_id: str, member_epoch: int,
                        partitions: Iterable[TopicPartition]) -> None:
        """Raise unless this member may commit these partitions now (see the module doc)."""
        group = self.groups.get(group_id)
        if member_epoch < 0:
            if group is not None and group.members:
                raise GroupNotEmptyError(
                    f"group {group_id!r} has {len(group.members)} active members; offsets can "
                    "only be set from outside while it is empty (stop its consumers first)")
            return
        if group is None or member_id not in group.members:
            raise UnknownMemberIdError(f"member {member_id} is not in group {group_id!r}")
        member = group.members[member_id]
        if member_epoch not in (member.member_epoch, member.previous_member_epoch):
            raise FencedMemberEpochError(
                f"member {member_id} of group {group_id!r} committed at epoch {member_epoch}; "
                f"its epoch is {member.member_epoch}")
        foreign = sorted(tp for tp in partitions if tp not in member.assigned)
        if foreign:
            raise FencedMemberEpochError(
                f"member {member_id} of group {group_id!r} does not own "
                f"{', '.join(f'{tp.topic}/{tp.partition}' for tp in foreign[:5])}")

    def commit(self, group_id: str, offsets: Mapping[TopicPartition, CommittedOffset],
               now_ms: int) -> list[Record]:
        """Apply a validated commit (in log order) and return its records."""
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id=group_id)
        group.last_change_ms = now_ms
        records = []
        for tp, committed in sorted(offsets.items()):
            group.offsets[tp] = committed
            records.append(Record(
                key=ol.encode_key(ol.OffsetKey(group_id=group_id, topic=tp.topic,
                                               partition=tp.partition)),
                value=ol.encode_offset_value(ol.OffsetValue(
                    offset=committed.offset, metadata=committed.metadata,
                    commit_ms=committed.commit_ms))))
        return records

    def fetch_offsets(self, group_id: str,
                      partitions: Iterable[TopicPartition] | None = None,
                      ) -> dict[TopicPartition, CommittedOffset]:
        group = self.groups.get(group_id)
        if group is None:
            return {}
        if partitions is None:
            return dict(group.offsets)
        return {tp: group.offsets[tp] for tp in partitions if tp in group.offsets}

    def delete_group(self, group_id: str) -> list[Record]:
        group = self.groups.get(group_id)
        if group is None:
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
        if group.members:
            raise GroupNotEmptyError(
                f"group {group_id!r} has {len(group.members)} active members; stop them first")
        del self.groups[group_id]
        return self._delete_group_records(group)

    # ====================================================================== input: replay

    def replay(self, key: bytes | None, value: bytes | None, now_ms: int) -> None:
        """Apply one committed record of the partition, in log order (a new coordinator)."""
        if key is None:
            return
        decoded = ol.decode_key(key)
        if isinstance(decoded, ol.OffsetKey):
            tp = TopicPartition(decoded.topic, decoded.partition)
            group = self.groups.get(decoded.group_id)
            if value is None:
                if group is not None:
                    group.offsets.pop(tp, None)
                    self._drop_if_empty(group)
                return
            offset = ol.decode_offset_value(value)
            group = group or self.groups.setdefault(decoded.group_id,
                                                    Group(group_id=decoded.group_id))
            group.offsets[tp] = CommittedOffset(offset=offset.offset, metadata=offset.metadata,
                                                commit_ms=offset.commit_ms)
            group.last_change_ms = max(group.last_change_ms, offset.commit_ms)
        elif isinstance(decoded, ol.GroupKey):
            group = self.groups.get(decoded.group_id)
            if value is None:
                if group is not None:
                    group.members.clear()
                    group.target.clear()
                    self._drop_if_empty(group)
                return
            group = group or self.groups.setdefault(decoded.group_id,
                                                    Group(group_id=decoded.group_id))
            _restore_snapshot(group, ol.decode_json(value), now_ms)

    # ========================================================================== observers

    def describe(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    # ============================================================================ helpers

    def _check_member(self, group: Group, member_id: str, epoch: int,
                      owned: frozenset[TopicPartition] | None) -> Member:
        member = group.members.get(member_id)
        if member is None:
            raise UnknownMemberIdError(
                f"member {member_id} is not in group {group.group_id!r} (its session may have "
                "timed out); join again with epoch 0")
        if epoch == member.member_epoch:
            return member
        # A lost response: the member still has the previous epoch, and owns nothing new.
        if epoch == member.previous_member_epoch and owned is not None and \
                owned <= member.assigned:
            return member
        raise FencedMemberEpochError(
            f"member {member_id} of group {group.group_id!r} sent epoch {epoch}; its epoch is "
            f"{member.member_epoch}; join again with epoch 0")

    def _subscribed_topics(self, group: Group) -> set[str]:
        return {t for m in group.members.values() for t in self._topics_of(m)}

    def _topics_of(self, member: Member) -> set[str]:
        topics = {t for t in member.subscribed_topics if t in self.partition_counts}
        if member.subscribed_regex:
            pattern = re.compile(member.subscribed_regex)
            topics.update(t for t in self.partition_counts
                          if not t.startswith("__") and pattern.fullmatch(t))
        return topics

    def _target_covers(self, group: Group, topics: set[str]) -> bool:
        """Whether the target assigns exactly the subscribed topics' partitions (every
        assignor's contract), i.e. it was computed with the current partition counts."""
        if not group.members:
            return True
        targeted = {tp for tps in group.target.values() for tp in tps}
        return targeted == {TopicPartition(t, p) for t in topics
                            for p in range(self.partition_counts.get(t, 0))}

    def _bump_epoch(self, group: Group, now_ms: int) -> None:
        """Membership or subscriptions changed: new group epoch, new target assignment."""
        group.epoch += 1
        group.last_change_ms = now_ms
        subscriptions = {m.member_id: self._topics_of(m) for m in group.members.values()}
        target = assign(group.assignor, subscriptions, self.partition_counts, group.target)
        group.target = {m: frozenset(tps) for m, tps in target.items()}
        group.assignment_epoch = group.epoch

    def _remove_member(self, group: Group, member_id: str, now_ms: int,
                       recompute: bool = True) -> None:
        del group.members[member_id]
        group.target.pop(member_id, None)
        if recompute:
            self._bump_epoch(group, now_ms)

    def _reconcile(self, group: Group, member: Member,
                   owned: frozenset[TopicPartition] | None, now_ms: int) -> None:
        """One step towards the member's target (see the module doc)."""
        target = group.target.get(member.member_id, frozenset())
        if member.revoking:
            if owned is None or owned & member.revoking:
                return  # still waiting for the member to let go
            member.assigned -= member.revoking
            member.revoking = frozenset()
            member.revoke_deadline_ms = None
            member.step(MemberEvent.REVOKED)
        to_revoke = member.assigned - target
        if to_revoke:
            member.revoking = to_revoke
            member.revoke_deadline_ms = now_ms + member.rebalance_timeout_ms
            member.step(MemberEvent.REVOKE)
            return
        if member.member_epoch != group.assignment_epoch:
            member.previous_member_epoch = member.member_epoch
            member.member_epoch = group.assignment_epoch
        held_by_others = {tp for m in group.members.values() if m is not member
                          for tp in m.assigned}
        wanted = target - member.assigned
        free = wanted - held_by_others
        member.assigned |= free
        member.step(MemberEvent.WAIT_RELEASE if wanted - free else MemberEvent.REACH_TARGET)

    def _result(self, member: Member) -> HeartbeatResult:
        interval = min(HEARTBEAT_INTERVAL_MS_MAX,
                       max(HEARTBEAT_INTERVAL_MS_MIN, member.session_timeout_ms // 5))
        if member.state is not MemberState.STABLE:
            interval = min(interval, RECONCILING_HEARTBEAT_INTERVAL_MS)
        return HeartbeatResult(member_id=member.member_id, member_epoch=member.member_epoch,
                               heartbeat_interval_ms=interval,
                               assignment=member.visible_assignment)

    def _drop_if_empty(self, group: Group) -> None:
        if not group.members and not group.offsets:
            self.groups.pop(group.group_id, None)

    def _delete_group_records(self, group: Group) -> list[Record]:
        records = [Record(key=ol.encode_key(ol.OffsetKey(
            group_id=group.group_id, topic=tp.topic, partition=tp.partition)), value=None)
            for tp in sorted(group.offsets)]
        records.append(Record(key=ol.encode_key(ol.GroupKey(group_id=group.group_id)),
                              value=None))
        return records

    def _snapshot_record(self, group: Group) -> Record:
        return Record(key=ol.encode_key(ol.GroupKey(group_id=group.group_id)),
                      value=ol.encode_json(self._snapshot_value(group)))

    @staticmethod
    def _snapshot_value(group: Group) -> dict[str, object]:
        return {
            "epoch": group.epoch, "assignment_epoch": group.assignment_epoch,
            "assignor": group.assignor.value,
            "members": [{
                "id": m.member_id, "epoch": m.member_epoch, "prev": m.previous_member_epoch,
                "topics": list(m.subscribed_topics), "regex": m.subscribed_regex,
                "session_ms": m.session_timeout_ms, "rebalance_ms": m.rebalance_timeout_ms,
                "client_id": m.client_id, "client_host": m.client_host,
                "assigned": _tps_out(m.assigned), "revoking": _tps_out(m.revoking),
                "state": m.state.value,
            } for m in sorted(group.members.values(), key=lambda m: m.member_id)],
            "target": {mid: _tps_out(tps) for mid, tps in sorted(group.target.items())},
        }


def _tps_out(tps: Iterable[TopicPartition]) -> list[list[object]]:
    return [[tp.topic, tp.partition] for tp in sorted(tps)]


def _tps_in(items: Iterable[list[object]]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(str(t), int(p)) for t, p in items)  # type: ignore[call-overload]


def _restore_snapshot(group: Group, snap: dict[str, object], now_ms: int) -> None:
    """Rebuild a group from its latest snapshot. Every member gets a fresh session from `now_ms`
    (the takeover): it had no coordinator to heartbeat to while leadership moved."""
    group.epoch = int(snap["epoch"])  # type: ignore[call-overload]
    group.assignment_epoch = int(snap["assignment_epoch"])  # type: ignore[call-overload]
    group.assignor = Assignor(str(snap["assignor"]))
    group.members = {}
    for m in snap["members"]:  # type: ignore[attr-defined]
        member = Member(
            member_id=m["id"], member_epoch=m["epoch"], previous_member_epoch=m["prev"],
            subscribed_topics=tuple(m["topics"]), subscribed_regex=m["regex"],
            session_timeout_ms=m["session_ms"], rebalance_timeout_ms=m["rebalance_ms"],
            client_id=m.get("client_id", ""), client_host=m.get("client_host", ""),
            assigned=_tps_in(m["assigned"]), revoking=_tps_in(m["revoking"]),
            state=MemberState(m["state"]), last_heartbeat_ms=now_ms)
        if member.revoking:
            member.revoke_deadline_ms = now_ms + member.rebalance_timeout_ms
        group.members[member.member_id] = member
    group.target = {mid: _tps_in(tps) for mid, tps in snap["target"].items()}  # type: ignore[attr-defined]
    group.last_change_ms = max(group.last_change_ms, now_ms)


def _validate(hb: Heartbeat) -> None:
    if not hb.group_id or len(hb.group_id) > ol.GROUP_ID_CHARS_MAX:
        raise InvalidRequestError(
            f"group id must be 1..{ol.GROUP_ID_CHARS_MAX} characters, got {len(hb.group_id)}")
    if not hb.member_id or len(hb.member_id) > 128:
        raise InvalidRequestError("member id must be 1..128 characters (clients make a uuid)")
    if hb.member_epoch < LEAVE_EPOCH:
        raise InvalidRequestError(f"member epoch {hb.member_epoch} is invalid")
    if len(hb.subscribed_topics) > SUBSCRIBED_TOPICS_MAX:
        raise InvalidRequestError(f"at most {SUBSCRIBED_TOPICS_MAX} subscribed topics")
    if hb.member_epoch == JOIN_EPOCH and not hb.subscribed_topics and not hb.subscribed_regex:
        raise InvalidRequestError("a joining member must subscribe to topics or a regex")
    if hb.subscribed_regex:
        try:
            re.compile(hb.subscribed_regex)
        except re.error as exc:
            raise InvalidRequestError(
                f"subscription regex {hb.subscribed_regex!r} is invalid: {exc}") from None
    if hb.assignor and hb.assignor not in {a.value for a in Assignor}:
        raise InvalidRequestError(
            f"unknown assignor {hb.assignor!r}; known: {', '.join(a.value for a in Assignor)}")
    if not 1000 <= hb.session_timeout_ms <= 3_600_000:
        raise InvalidRequestError("session timeout must be between 1 s and 1 h")
    if not 1000 <= hb.rebalance_timeout_ms <= 3_600_000:
        raise InvalidRequestError("rebalance timeout (max poll interval) must be 1 s .. 1 h")
