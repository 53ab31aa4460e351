"""RaftCore: the sans-I/O Raft state machine of one replica of one partition.

Theory of operation. Inputs are method calls: ``step(message)``, ``tick()``, ``propose*``,
``transfer_leadership``, membership changes and ``report_unreachable``. The core never performs
I/O; everything it wants done comes out of ``ready()`` as one ``Ready`` record, whose fields say
in their docstrings what the caller must do and in which order. ``advance(ready)`` tells the core
that all of it was done; it is also the durability event ("entries up to X are durable"), which
lets the leader count itself towards commit (entries are durable on the leader and a majority
before commit) and moves the applied index.

Roles change in one place (``_become_*``), and each role's step function is one ``match`` on the
message type that ends in ``assert_never``. Time is counted in ticks; the randomized election
timeout comes from the injected ``random.Random``.

Deviations from the paper, each for a reason written beside the code: PreVote and CheckQuorum
(Ongaro §9.6, §6.2), quiescence of idle groups (CockroachDB's; ``config.quiesce``), membership
applied at commit (etcd) with single-server changes and the "commit an entry of your own term
first" rule, positions as record offsets, and the damaged-log recovery rule (a replica that lost
acknowledged entries neither votes nor campaigns until a leader elected by others has given them
back).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, assert_never

from tidelog.node.raft.config import RaftConfig
from tidelog.node.raft.log import LogReader, LogStart, RaftLog
from tidelog.node.raft.messages import Message, MessageType
from tidelog.node.raft.progress import Inflights, Progress, ProgressState
from tidelog.node.raft.quorum import VoteResult, committed_index, vote_result
from tidelog.node.raft.types import (
    NO_INDEX,
    ZERO_TERM,
    ConfigChangeRejected,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Membership,
    NodeId,
    NotLeader,
    ProposalDropped,
    RaftError,
    RemoteProtocolError,
    Role,
    SoftState,
    Term,
)

if TYPE_CHECKING:
    from random import Random  # injected and seeded by the caller; never the module-level one


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """Work for the runtime, to be done in field order, then ``advance(ready)``."""

    hard_state: HardState | None
    """1. If set, persist atomically (term, vote and commit in one write + fsync), together with
    ``membership`` if that is set too. Nothing in ``messages`` may be sent before this is durable:
    a vote sent and then forgotten by a crash lets a replica vote twice in one term."""
    membership: Membership | None
    """1. If set, the membership changed (a CONFIG entry committed, or a log-start reset carried
    one): persist it with ``hard_state`` and pass it as RaftConfig voters/learners on restart."""
    reset_log_to: LogStart | None
    """2. If set, delete the whole log; the next entry starts at ``reset_log_to.start``, and the
    log must report ``term_at(start - 1) == reset_log_to.term``. Apply before the fields below."""
    truncate_after: LogIndex | None
    """3. If set, delete every entry ending after this offset (a conflicting uncommitted suffix).
    Never below the commit index. Apply before appending ``entries``."""
    entries: tuple[Entry, ...]
    """4. Append to the log and make durable (fsync) BEFORE sending ``messages``: a follower's
    acknowledgement and a leader's own count towards commit both promise durability."""
    messages: tuple[Message, ...]
    """5. Send after 1-4 are durable. Order between messages does not matter; loss is tolerated."""
    commit_index: LogIndex
    """The current commit index (always set). The high watermark is ``commit_index + 1``."""
    committed_entries: tuple[Entry, ...]
    """6. Entries newly committed and durable here, to apply in order (at most
    ``max_committed_bytes``; more follow). CONFIG entries are already applied by the core."""
    soft_state: SoftState | None
    """Role, leader or term changed (volatile; for routing NotLeader hints and metrics)."""
    recovered: bool
    """A damaged log was refilled: once 1-4 are durable, clear the runtime's "recover to" marker."""


class RaftCore:
    """One Raft replica. Not thread-safe; drive it from one task."""

    def __init__(
        self,
        config: RaftConfig,
        log: LogReader,
        *,
        rng: Random,
        hard_state: HardState | None = None,
        recover_to: LogIndex | None = None,
    ) -> None:
        """``log`` is the durable log; ``hard_state`` the last persisted one (None: fresh).

        ``recover_to``: the runtime found this replica's log damaged (checksum mismatch, or a tail
        shorter than what it had acknowledged); pass the highest offset it had acknowledged. The
        replica then neither votes (nor pre-votes) nor campaigns until a leader has given it a log
        matching the leader's up to ``recover_to``; ``Ready.recovered`` reports the end.
        """
        hs = hard_state or HardState()
        self.id = config.node_id
        self.config = config
        self._rng = rng
        self.log = RaftLog(log)
        self.membership = config.membership
        self.term: Term = hs.term
        self.vote: NodeId | None = hs.vote
        last = self.log.last_index()
        # A damaged replica may have lost committed entries: clamp (the checker exempts it).
        self.commit: LogIndex = LogIndex(max(min(hs.commit, last), self.log.log_start() - 1))
        self._applied: LogIndex = self.commit
        self._recover_to = recover_to
        self._recovered_pending = False
        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_ticks = config.election_ticks
        self._votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self._lead_transferee: NodeId | None = None
        # CONFIG entries in the log above the commit index: applied when committed.
        self._pending_configs: list[tuple[LogIndex, Membership]] = []
        self._scan_uncommitted_configs()
        self._msgs: list[Message] = []
        self._bcast_pending = False
        self._prev_hs = hs
        self._prev_soft = self.soft_state()
        self._prev_membership = self.membership
        self._outstanding: Ready | None = None
        self._quiesced = False
        self._timeout_overridden = False  # campaign_after: for the next timeout only
        self._become_follower(self.term, None)

    # ------------------------------------------------------------------ public inputs

    def tick(self) -> None:
        """One unit of logical time passed. A quiesced group's time stands still: the leader
        sends no heartbeats and followers run no election timer until something wakes them."""
        if self._quiesced:
            return
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def step(self, m: Message) -> None:
        """A message from a peer arrived (in any order, possibly duplicated or stale).

        Raises ``RemoteProtocolError``, having changed nothing, for a message no correct peer
        sends (see ``_check_remote``); the runtime drops it and logs it."""
        assert m.to == self.id, f"message for {m.to} stepped into {self.id}"
        self._check_remote(m)
        if self._quiesced and m.type != MessageType.QUIESCE:
            self._unquiesce()  # any message wakes the group (a campaign, a reply, an append)
        if m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE) and self._in_lease(m):
                return  # CheckQuorum lease: a live leader exists; ignore disruptive campaigns
            if m.type == MessageType.PRE_VOTE:
                pass  # never change term on a pre-vote
            elif m.type == MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term; counted below
            elif m.type in (
                MessageType.APPEND,
                MessageType.HEARTBEAT,
                MessageType.INSTALL_LOG_START,
                MessageType.QUIESCE,
            ):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.QUIESCE):
                # Tell a stale leader (e.g. returning from a partition) about the newer term, so
                # it steps down; with PreVote it would otherwise never learn (Ongaro §9.6).
                self._send(MessageType.APPEND_RESP, m.frm)
            elif m.type == MessageType.PRE_VOTE:
                self._send(MessageType.PRE_VOTE_RESP, m.frm, reject=True)
            return
        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(m)
            return
        match self.role:
            case Role.LEADER:
                self._step_leader(m)
            case Role.CANDIDATE | Role.PRE_CANDIDATE:
                self._step_candidate(m)
            case Role.FOLLOWER:
                self._step_follower(m)
            case _:
                assert_never(self.role)

    def propose(self, data: bytes, count: int = 1) -> LogIndex:
        """Append one DATA batch of ``count`` records; returns its first offset.
        Raises NotLeader or ProposalDropped (leadership transfer in progress)."""
        return self.propose_many([(data, count)])[0]

    def propose_many(self, batches: Sequence[tuple[bytes, int]]) -> list[LogIndex]:
        self._check_can_propose()
        firsts: list[LogIndex] = []
        entries: list[Entry] = []
        nxt = self.log.last_index() + 1
        for data, count in batches:
            if count < 1:
                raise RaftError(f"a batch covers at least one offset, got count={count}")
            firsts.append(LogIndex(nxt))
            entries.append(
                Entry(
                    term=self.term, index=LogIndex(nxt), count=count, kind=EntryKind.DATA, data=data
                )
            )
            nxt += count
        if entries:
            self._append_own(entries)
        return firsts

    def transfer_leadership(self, to: NodeId) -> None:
        """Hand leadership to ``to`` (graceful shutdown, balancing): catch it up, then TimeoutNow.
        Proposals are refused until the transfer ends; it is abandoned after an election timeout."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id:
            return
        if to not in self.membership.voters:
            raise RaftError(f"node {to} is not a voter; cannot transfer leadership to it")
        if self._lead_transferee == to:
            return
        self._wake_if_quiesced()
        self._lead_transferee = to
        self._election_elapsed = 0
        if self.progress[to].match == self.log.last_index():
            self._send(MessageType.TIMEOUT_NOW, to)
        else:
            self._send_append(to)

    def add_learner(self, node: NodeId) -> LogIndex:
        """Propose adding ``node`` as a non-voting learner; returns the CONFIG entry's offset."""
        if node in self.membership.members:
            raise ConfigChangeRejected(f"node {node} is already a member")
        m = self.membership
        return self._propose_config(Membership(voters=m.voters, learners=m.learners | {node}))

    def promote(self, node: NodeId) -> LogIndex:
        """Propose making a caught-up learner a voter (one server at a time)."""
        m = self.membership
        if node not in m.learners:
            raise ConfigChangeRejected(f"node {node} is not a learner")
        self._check_leader()
        pr = self.progress.get(node)
        if pr is None or pr.match < self.commit - self.config.promote_lag_max:
            match = pr.match if pr else NO_INDEX
            raise ConfigChangeRejected(
                f"learner {node} has not caught up (match {match}, commit {self.commit})"
            )
        return self._propose_config(
            Membership(voters=m.voters | {node}, learners=m.learners - {node})
        )

    def remove(self, node: NodeId) -> LogIndex:
        """Propose removing a voter or learner. The leader cannot remove itself: transfer first."""
        m = self.membership
        if node not in m.members:
            raise ConfigChangeRejected(f"node {node} is not a member")
        if node == self.id:
            raise ConfigChangeRejected("the leader cannot remove itself; transfer leadership first")
        if m.voters == {node}:
            raise ConfigChangeRejected("cannot remove the last voter")
        return self._propose_config(
            Membership(voters=m.voters - {node}, learners=m.learners - {node})
        )

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport failed to deliver to ``peer``: stop pipelining, probe again.

        A pending log-start install counts as failed (etcd's ReportSnapshot(failure); the
        success case needs no report: the follower's APPEND_RESP ends SNAPSHOT). The install is
        sent again after the next heartbeat reply."""
        pr = self.progress.get(peer)
        if self.role != Role.LEADER or pr is None:
            return
        self._wake_if_quiesced()  # heartbeats again: CheckQuorum must see whether it still leads
        match pr.state:
            case ProgressState.REPLICATE:
                pr.become_probe()
            case ProgressState.SNAPSHOT:
                pr.install_failed()
            case ProgressState.PROBE:
                pass
            case _:
                assert_never(pr.state)

    def campaign_after(self, ticks: int) -> None:
        """Run the next election timeout as ``ticks`` ticks instead of a random one (a follower
        only). Timing only, so always safe. The node uses it for a group created a moment
        ago: its preferred leader (the first replica) campaigns after a tick or two and the
        others wait several timeouts, so a topic of 1,000 partitions elects each leader once,
        where it belongs, instead of a random one that the leader balancer then moves."""
        if self.role == Role.FOLLOWER and ticks >= 1:
            self._election_elapsed = 0
            self._randomized_election_ticks = ticks
            self._timeout_overridden = True

    def wake(self) -> None:
        """The runtime's node-level liveness says this group may need its timers again (the
        node of a member stopped answering, or its link went down): resume ticking. A no-op
        unless quiesced. Followers then campaign as usual if the leader is really gone."""
        self._wake_if_quiesced()

    # ------------------------------------------------------------------ Ready / advance

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._bcast_pending
            or self.log.has_unpersisted()
            or self._hard_state() != self._prev_hs
            or self.membership != self._prev_membership
            or self.soft_state() != self._prev_soft
            or self._recovered_pending
            or self._applied < min(self.commit, self.log.persisted_index())
        )

    def ready(self) -> Ready | None:
        """The next batch of work, or None. Call ``advance`` before the next ``ready``; steps and
        ticks in between are allowed."""
        assert self._outstanding is None, "advance() the previous Ready first"
        if not self.has_ready():
            return None
        self._flush_broadcast()
        hs = self._hard_state()
        soft = self.soft_state()
        reset, trunc, entries = self.log.take_ready()
        rd = Ready(
            hard_state=hs if hs != self._prev_hs else None,
            membership=self.membership if self.membership != self._prev_membership else None,
            reset_log_to=reset,
            truncate_after=trunc,
            entries=entries,
            messages=tuple(self._msgs),
            commit_index=self.commit,
            committed_entries=self._committed_to_apply(),
            soft_state=soft if soft != self._prev_soft else None,
            recovered=self._recovered_pending,
        )
        self._msgs = []
        self._recovered_pending = False
        self._prev_soft = soft
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime did everything ``rd`` says (persisted, sent, applied)."""
        assert rd is self._outstanding, "advance() takes the Ready returned by ready()"
        self._outstanding = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.membership is not None:
            self._prev_membership = rd.membership
        last = rd.entries[-1] if rd.entries else None
        self.log.stable_to(last.last if last else None, last.term if last else None)
        if rd.committed_entries:
            self._applied = LogIndex(max(self._applied, rd.committed_entries[-1].last))
        if rd.reset_log_to is not None:
            self._applied = LogIndex(max(self._applied, rd.reset_log_to.start - 1))
        if self.role == Role.LEADER and self._maybe_commit():
            self._bcast_pending = True

    # ------------------------------------------------------------------ observers

    def soft_state(self) -> SoftState:
        return SoftState(role=self.role, leader=self.leader, term=self.term)

    @property
    def recovering(self) -> bool:
        return self._recover_to is not None

    @property
    def quiesced(self) -> bool:
        """Idle and asleep: ``tick`` does nothing until a message, a proposal or ``wake``."""
        return self._quiesced

    @property
    def applied(self) -> LogIndex:
        return self._applied

    @property
    def lead_transferee(self) -> NodeId | None:
        return self._lead_transferee

    def _hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.commit)

    # ------------------------------------------------------------------ role changes

    def _reset(self, term: Term) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        # Randomized in [election_ticks, 2 * election_ticks) to split votes rarely (§5.2).
        self._randomized_election_ticks = self.config.election_ticks + self._rng.randrange(
            self.config.election_ticks
        )
        self._votes = {}
        self._lead_transferee = None
        self._bcast_pending = False
        self._quiesced = False

    def _become_follower(self, term: Term, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader
        self.progress = {}

    def _become_pre_candidate(self) -> None:
        # PreVote (Ongaro §9.6): term and vote stay unchanged until a majority would vote for us.
        assert self.role != Role.LEADER
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {}

    def _become_candidate(self) -> None:
        assert self.role != Role.LEADER
        self._reset(Term(self.term + 1))
        self.role = Role.CANDIDATE
        self.vote = self.id

    def _become_leader(self) -> None:
        assert self.role == Role.CANDIDATE
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        nxt = LogIndex(self.log.last_index() + 1)
        self.progress = {
            p: Progress(
                next=nxt, inflights=Inflights(self.config.max_inflight_msgs), recent_active=True
            )
            for p in self.membership.members
            if p != self.id
        }
        # §5.4.2 / §8: a leader commits entries of earlier terms only by committing one of its own;
        # the NOOP (control batch) does that at once. A leader that already knows its whole log
        # committed (a fresh partition's empty log; an idle one handed or failed over) has nothing
        # to commit and may skip it (config.noop_on_committed_log False): safety never rested on
        # the NOOP, since only entries of the current term are counted (_maybe_commit), and a
        # membership change still waits for a committed entry of this term (_propose_config
        # writes the NOOP then). docs/raft.md, "The leader's no-op".
        if self.config.noop_on_committed_log or self.commit < self.log.last_index():
            self._append_noop()
        else:
            self._bcast_pending = True  # empty appends at once: followers learn the new leader

    # ------------------------------------------------------------------ per-role step functions

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        match m.type:
            case MessageType.APPEND_RESP:
                if pr is not None:
                    pr.recent_active = True
                    self._handle_append_resp(m, pr)
            case MessageType.HEARTBEAT_RESP:
                if pr is not None:
                    pr.recent_active = True
                    self._handle_heartbeat_resp(m, pr)
            case (
                MessageType.APPEND
                | MessageType.HEARTBEAT
                | MessageType.INSTALL_LOG_START
                | MessageType.QUIESCE
            ):
                raise AssertionError("unreachable: _check_remote refuses a second leader")
            case (
                MessageType.PRE_VOTE_RESP
                | MessageType.VOTE_RESP
                | MessageType.TIMEOUT_NOW
                | MessageType.PRE_VOTE
                | MessageType.VOTE
            ):
                pass  # stale or irrelevant to a leader
            case _:
                assert_never(m.type)

    def _step_candidate(self, m: Message) -> None:
        match m.type:
            case MessageType.APPEND:
                self._become_follower(m.term, m.frm)
                self._handle_append(m)
            case MessageType.HEARTBEAT:
                self._become_follower(m.term, m.frm)
                self._handle_heartbeat(m)
            case MessageType.INSTALL_LOG_START:
                self._become_follower(m.term, m.frm)
                self._handle_install_log_start(m)
            case MessageType.QUIESCE:
                self._become_follower(m.term, m.frm)
                self._handle_quiesce(m)
            case MessageType.PRE_VOTE_RESP | MessageType.VOTE_RESP:
                wanted = (
                    MessageType.PRE_VOTE_RESP
                    if self.role == Role.PRE_CANDIDATE
                    else MessageType.VOTE_RESP
                )
                if m.type != wanted:
                    return
                self._votes.setdefault(m.frm, not m.reject)
                match vote_result(self.membership.voters, self._votes):
                    case VoteResult.WON:
                        if self.role == Role.PRE_CANDIDATE:
                            self._campaign(pre_vote=False, transfer=False)
                        else:
                            self._become_leader()
                    case VoteResult.LOST:
                        self._become_follower(self.term, None)
                    case VoteResult.PENDING:
                        pass
                    case _:
                        assert_never(vote_result)
            case (
                MessageType.APPEND_RESP
                | MessageType.HEARTBEAT_RESP
                | MessageType.TIMEOUT_NOW
                | MessageType.PRE_VOTE
                | MessageType.VOTE
            ):
                pass
            case _:
                assert_never(m.type)

    def _step_follower(self, m: Message) -> None:
        match m.type:
            case MessageType.APPEND:
                self._election_elapsed, self.leader = 0, m.frm
                self._handle_append(m)
            case MessageType.HEARTBEAT:
                self._election_elapsed, self.leader = 0, m.frm
                self._handle_heartbeat(m)
            case MessageType.INSTALL_LOG_START:
                self._election_elapsed, self.leader = 0, m.frm
                self._handle_install_log_start(m)
            case MessageType.QUIESCE:
                self._election_elapsed, self.leader = 0, m.frm
                self._handle_quiesce(m)
            case MessageType.TIMEOUT_NOW:
                # Leadership transfer: campaign at once, skipping PreVote and the lease (§3.10).
                if self._promotable():
                    self._campaign(pre_vote=False, transfer=True)
            case (
                MessageType.APPEND_RESP
                | MessageType.HEARTBEAT_RESP
                | MessageType.PRE_VOTE_RESP
                | MessageType.VOTE_RESP
                | MessageType.PRE_VOTE
                | MessageType.VOTE
            ):
                pass
            case _:
                assert_never(m.type)

    # ------------------------------------------------------------------ elections

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_ticks:
            self._election_elapsed = 0
            if self._timeout_overridden:
                # campaign_after set this timeout only: a pre-candidate campaigns again after a
                # random timeout as usual (at 2 ticks, a pre-vote round slower than that under
                # load would restart forever: 33 leaders of 1,000 after 2 min at load ~25).
                self._timeout_overridden = False
                self._randomized_election_ticks = self.config.election_ticks + \
                    self._rng.randrange(self.config.election_ticks)
            self._campaign(pre_vote=self.config.pre_vote, transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                # CheckQuorum (§6.2): a leader cut off from a majority steps down, so clients
                # stop waiting on it and the lease held by followers stays meaningful.
                self._become_follower(self.term, None)
                return
            self._lead_transferee = None  # a transfer that did not finish in time is abandoned
        self._tick_installs()
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            if self._can_quiesce():
                self._quiesce()
                return
            for p, pr in self.progress.items():
                self._send(MessageType.HEARTBEAT, p, commit=LogIndex(min(pr.match, self.commit)))

    # ------------------------------------------------------------------ quiescence

    def _can_quiesce(self) -> bool:
        """Idle (docs/raft.md, "Quiescence"): every entry committed, durable and applied here,
        every follower matched to our last entry with nothing in flight and heard from in this
        CheckQuorum window (a silent follower keeps the group awake), no transfer or membership
        change under way, nothing waiting to be sent."""
        if not self.config.quiesce or self._lead_transferee is not None:
            return False
        if self._pending_configs or self._bcast_pending or self._msgs:
            return False
        last = self.log.last_index()
        if (self.commit != last or self.log.persisted_index() != last
                or self._applied < last or self.log.has_unpersisted()):
            return False
        return all(
            pr.match == last and pr.state == ProgressState.REPLICATE and not len(pr.inflights)
            and pr.recent_active
            for pr in self.progress.values()
        )

    def _quiesce(self) -> None:
        """One QUIESCE per follower (our last entry and the commit index, which equal), then
        sleep. A lost QUIESCE is harmless: that follower times out, and its campaign wakes us."""
        last = self.log.last_index()
        term = self.log.term_at(last)
        assert term is not None
        for p in sorted(self.progress):
            self._send(MessageType.QUIESCE, p, index=last, log_term=term, commit=self.commit)
        self._quiesced = True

    def _handle_quiesce(self, m: Message) -> None:
        """A follower sleeps only when its log holds the leader's last entry (then it commits to
        the leader's commit, as an empty append would). Otherwise it answers as to an empty
        append; that answer wakes the leader, which repairs this log as usual."""
        if m.index >= self.commit and self.log.matches(m.index, m.log_term):
            self._commit_to(self.log.boundary_at_or_before(LogIndex(min(m.commit, m.index))))
            if self._recover_to is not None:
                self._handle_append(dataclasses.replace(m, type=MessageType.APPEND))
                return  # a recovering replica answers (and stays awake) until it is repaired
            self._quiesced = True
            return
        self._handle_append(dataclasses.replace(m, type=MessageType.APPEND))

    def _wake_if_quiesced(self) -> None:
        if self._quiesced:
            self._unquiesce()

    def _unquiesce(self) -> None:
        """Time runs again from zero: a follower waits a full election timeout for the leader's
        heartbeats, and a leader must hear from a majority within the next CheckQuorum window
        (it heard nothing while asleep, so no one counts as recently active)."""
        self._quiesced = False
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        for pr in self.progress.values():
            pr.recent_active = False

    def _tick_installs(self) -> None:
        # A dropped INSTALL_LOG_START gets no reply and no transport error; without this bound
        # the follower would stay in SNAPSHOT until the leader changes (issue 11, defect 2).
        for pr in self.progress.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.install_elapsed += 1
                if pr.install_elapsed >= self.config.election_ticks:
                    pr.install_failed()

    def _quorum_active(self) -> bool:
        active = {self.id: True}
        for p, pr in self.progress.items():
            active[p] = pr.recent_active
            pr.recent_active = False
        return vote_result(self.membership.voters, active) == VoteResult.WON

    def _promotable(self) -> bool:
        return self.id in self.membership.voters and self._recover_to is None

    def _in_lease(self, m: Message) -> bool:
        return (
            self.config.check_quorum
            and not m.transfer
            and self.leader is not None
            and self._election_elapsed < self.config.election_ticks
        )

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_term, kind = Term(self.term + 1), MessageType.PRE_VOTE
        else:
            self._become_candidate()
            vote_term, kind = self.term, MessageType.VOTE
        self._votes[self.id] = True
        if vote_result(self.membership.voters, self._votes) == VoteResult.WON:
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return
        for v in sorted(self.membership.voters):
            if v != self.id:
                self._msgs.append(
                    Message(
                        type=kind,
                        frm=self.id,
                        to=v,
                        term=vote_term,
                        index=self.log.last_index(),
                        log_term=self.log.last_term(),
                        transfer=transfer,
                    )
                )

    def _handle_vote_request(self, m: Message) -> None:
        resp = (
            MessageType.PRE_VOTE_RESP if m.type == MessageType.PRE_VOTE else MessageType.VOTE_RESP
        )
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.leader is None)
            or (m.type == MessageType.PRE_VOTE and m.term > self.term)
        )
        if (
            can_vote
            and self._recover_to is None  # a damaged log may lack entries it acknowledged
            and self.log.is_up_to_date(m.index, m.log_term)  # §5.4.1 election restriction
        ):
            # Granted responses carry the request's term so a pre-candidate counts them.
            self._msgs.append(Message(type=resp, frm=self.id, to=m.frm, term=m.term))
            if m.type == MessageType.VOTE:
                self._election_elapsed = 0
                self.vote = m.frm  # persisted (Ready.hard_state) before this reply is sent
        else:
            self._send(resp, m.frm, reject=True)

    # ------------------------------------------------------------------ replication (leader)

    def _append_noop(self) -> None:
        nxt = LogIndex(self.log.last_index() + 1)
        self._append_own([Entry(term=self.term, index=nxt, count=1, kind=EntryKind.NOOP)])

    def _append_own(self, entries: list[Entry]) -> None:
        self._wake_if_quiesced()  # a proposal, a no-op or a membership change
        self.log.append(entries)
        self._note_configs(entries)
        self._bcast_pending = True
        if self.role == Role.LEADER and len(self.membership.voters) == 1:
            pass  # a single voter commits on advance(), once its own write is durable

    def _flush_broadcast(self) -> None:
        if not self._bcast_pending:
            return
        self._bcast_pending = False
        if self.role != Role.LEADER:
            return
        for p in sorted(self.progress):
            self._send_append(p)

    def _send_append(self, to: NodeId, *, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev = LogIndex(pr.next - 1)
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            # The follower needs entries retention removed: move it to our log start (the log
            # equivalent of InstallSnapshot). Everything before the log start is committed.
            start = self.log.log_start()
            assert prev < start - 1, f"next-1={prev} is not an entry boundary on the leader"
            start_term = self.log.term_at(LogIndex(start - 1))
            assert start_term is not None
            self._send(
                MessageType.INSTALL_LOG_START,
                to,
                index=LogIndex(start - 1),
                log_term=start_term,
                membership=self.membership,
                commit=self.commit,
            )
            pr.become_snapshot(LogIndex(start - 1))
            return True
        ents = (
            self.log.entries(pr.next, self.config.max_append_bytes)
            if pr.next <= self.log.last_index()
            else []
        )
        if not ents and not send_if_empty:
            return False
        self._send(
            MessageType.APPEND,
            to,
            index=prev,
            log_term=prev_term,
            entries=tuple(ents),
            commit=self.commit,
        )
        match pr.state:
            case ProgressState.REPLICATE:
                if ents:
                    pr.next = LogIndex(ents[-1].last + 1)  # pipelining: optimistic next
                    pr.inflights.add(ents[-1].last)
            case ProgressState.PROBE:
                pr.probe_sent = True
            case ProgressState.SNAPSHOT:
                raise AssertionError("paused progress sent an append")
            case _:
                assert_never(pr.state)
        return True

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            # Fast backtracking (§5.3): jump to the last boundary whose term is <= the hint term.
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self.log.find_conflict_by_term(hint, m.log_term)
            else:  # the follower's own offset: retry from a boundary of OUR log at or before it
                hint = self.log.boundary_at_or_before(hint)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        # A probe acknowledged at the match we already had (etcd does the same) also ends the
        # probe: a leader that skipped its NOOP on an empty log hears an ack of offset -1.
        if not pr.maybe_update(m.index) and not (
                pr.state == ProgressState.PROBE and m.index == pr.match):
            return
        match pr.state:
            case ProgressState.PROBE:
                pr.become_replicate()
            case ProgressState.SNAPSHOT:
                # etcd: whatever log start the follower actually reached, once it can be caught
                # up from our log, replicate (via probe, which accounts for the install).
                if pr.match + 1 >= self.log.log_start():
                    pr.become_probe()
                    pr.become_replicate()
            case ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            case _:
                assert_never(pr.state)
        if self._maybe_commit():
            self._bcast_pending = True
            if self.role != Role.LEADER or m.frm not in self.progress:
                return  # the commit applied a membership change that removed us or the peer
        elif was_paused and not self._bcast_pending:  # a pending broadcast sends it anyway
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self._lead_transferee and pr.match == self.log.last_index():
            self._send(MessageType.TIMEOUT_NOW, m.frm)

    def _handle_heartbeat_resp(self, m: Message, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self.log.last_index():
            self._send_append(m.frm)

    def _maybe_commit(self) -> bool:
        match = {p: pr.match for p, pr in self.progress.items()}
        match[self.id] = self.log.persisted_index()  # the leader counts only its durable log
        q = committed_index(self.membership.voters, match)
        # §5.4.2: count replicas only for entries of the current term (Figure 8).
        if q > self.commit and self.log.term_at(q) == self.term:
            self._commit_to(q)
            return True
        return False

    # ------------------------------------------------------------------ replication (follower)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.commit:
            self._send(MessageType.APPEND_RESP, m.frm, index=self.commit)
            return
        if not self.log.matches(m.index, m.log_term):
            hint = LogIndex(min(m.index, self.log.last_index()))
            hint, hint_term = self.log.find_conflict_by_term(hint, m.log_term)
            self._send(
                MessageType.APPEND_RESP,
                m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=hint_term,
            )
            return
        last_new = m.entries[-1].last if m.entries else m.index
        for i, e in enumerate(m.entries):
            if self.log.term_at(e.last) != e.term:
                # An entry with the same last offset and term is the same entry (Log Matching);
                # anything else conflicts from here on.
                assert e.index > self.commit, "unreachable: _check_remote refuses this"
                new = list(m.entries[i:])
                self._retract_acks_after(LogIndex(e.index - 1))
                self._pending_configs = [(x, c) for x, c in self._pending_configs if x < e.index]
                self.log.append(new)
                self._note_configs(new)
                break
        self._commit_to(self.log.boundary_at_or_before(LogIndex(min(m.commit, last_new))))
        self._send(MessageType.APPEND_RESP, m.frm, index=LogIndex(last_new))
        if self._recover_to is not None and last_new >= self._recover_to:
            self._finish_recovery()

    def _handle_heartbeat(self, m: Message) -> None:
        # m.commit <= what the leader knows we match; clamp anyway in case our log lost a tail,
        # and to one of our entry boundaries: we acknowledge our commit index, and a leader
        # takes an acknowledgement only at a boundary (found by tests/raft/test_core_sweep.py).
        upto = LogIndex(min(m.commit, self.log.last_index()))
        self._commit_to(self.log.boundary_at_or_before(upto))
        self._send(MessageType.HEARTBEAT_RESP, m.frm)

    def _handle_install_log_start(self, m: Message) -> None:
        if m.index <= self.commit:
            self._send(MessageType.APPEND_RESP, m.frm, index=self.commit)
            return
        if self.log.matches(m.index, m.log_term):
            self._commit_to(m.index)  # our log already agrees up to the leader's log start
            self._send(MessageType.APPEND_RESP, m.frm, index=self.commit)
        else:
            self.log.reset(LogStart(start=LogIndex(m.index + 1), term=m.log_term))
            self._retract_acks_after(self.commit)  # all uncommitted entries are gone
            self._pending_configs = []
            # The leader's membership is committed and comes from a CONFIG entry at
            # ``m.membership.index``, possibly above the log start: entries up to that index that
            # we receive next are older and must not be applied again (issue 11, defect 3). Ours
            # can be newer only if a new leader has not learned the commit yet: keep ours then.
            # Index NO_INDEX (a leader that persisted its membership before issue 11) is adopted
            # as before, and the CONFIG entries above the log start are replayed.
            new = m.membership
            if new is not None and (new.index == NO_INDEX or new.index >= self.membership.index):
                self.membership = new
            self.commit = m.index
            self._applied = LogIndex(max(self._applied, m.index))
            self._send(MessageType.APPEND_RESP, m.frm, index=m.index)
        if self._recover_to is not None and m.index >= self._recover_to:
            self._finish_recovery()

    def _check_remote(self, m: Message) -> None:
        """Refuse, before any state changes, what no correct peer sends; the node's message
        validation (node/raft_validation.py) has already refused malformed structure, and the
        structural checks here only keep the core intact if it is skipped."""
        why = self._remote_violation(m)
        if why is not None:
            raise RemoteProtocolError(f"{m.type.value} from {m.frm} in term {m.term}: {why}")

    def _remote_violation(self, m: Message) -> str | None:
        if m.frm == self.id:
            return "a message from ourselves"
        if m.entries and m.type != MessageType.APPEND:
            return "entries on a message that carries none"
        nxt = m.index + 1
        for e in m.entries:
            if e.index != nxt or e.count < 1 or e.term > m.term:
                return f"entry {e.index}..{e.last}/t{e.term} breaks the append's structure"
            if e.kind == EntryKind.CONFIG:
                try:
                    Membership.decode(e.data)
                except ValueError as exc:
                    return f"config entry at {e.index}: {exc}"
            nxt = e.last + 1
        if m.type == MessageType.INSTALL_LOG_START and (
            m.membership is None or not m.membership.voters
        ):
            return "a log-start install without a membership"
        if m.term != self.term:
            return None
        if self.role == Role.LEADER and m.type in (
            MessageType.APPEND,
            MessageType.HEARTBEAT,
            MessageType.INSTALL_LOG_START,
            MessageType.QUIESCE,
        ):
            return f"a second leader in our term (we, {self.id}, lead it)"
        if self.role == Role.LEADER and m.type == MessageType.APPEND_RESP and not m.reject:
            last, start = self.log.last_index(), self.log.log_start()
            if m.index > last or (m.index >= start - 1 and self.log.term_at(m.index) is None):
                return f"acknowledges {m.index}, which is not an entry boundary of our log"
        if (
            m.type == MessageType.APPEND
            and m.index >= self.commit
            and self.log.matches(m.index, m.log_term)
        ):
            for e in m.entries:  # the first conflicting entry, as _handle_append finds it
                if self.log.term_at(e.last) != e.term:
                    if e.index <= self.commit:
                        return f"overwrites our committed offset {e.index}"
                    break
        return None

    def _retract_acks_after(self, cut: LogIndex) -> None:
        # An acknowledgement still queued here goes out only after the next Ready is persisted,
        # and that Ready now removes the entries after ``cut``: sent, it would promise entries we
        # no longer have (to the leader that sent them, which could count them towards commit).
        # Dropping a message is always allowed; the leader retries.
        self._msgs = [
            x
            for x in self._msgs
            if not (x.type == MessageType.APPEND_RESP and not x.reject and x.index > cut)
        ]

    def _finish_recovery(self) -> None:
        self._recover_to = None
        self._recovered_pending = True

    # ------------------------------------------------------------------ commit & membership

    def _commit_to(self, index: LogIndex) -> None:
        if index <= self.commit:
            return
        # §5.4.2 / Figure 8, as an invariant: a leader moves its commit index only to an entry of
        # its own term (older ones commit with it). _maybe_commit follows the rule; this catches
        # any path that breaks it (the planted CommitsOldTerms) before a committed entry is lost.
        self._check_commit(index)
        self.commit = index
        while self._pending_configs and self._pending_configs[0][0] <= index:
            _, membership = self._pending_configs.pop(0)
            self._apply_membership(membership)

    def _check_commit(self, index: LogIndex) -> None:
        assert self.role != Role.LEADER or self.log.term_at(index) == self.term, (
            f"leader {self.id} would commit {index} (term {self.log.term_at(index)}), an entry "
            f"of an older term than {self.term}"
        )

    def _apply_membership(self, m: Membership) -> None:
        # Applied at commit (as etcd); safe because only one change is pending at a time and each
        # change moves one voter, so old and new majorities intersect.
        self.membership = m
        if self.role != Role.LEADER:
            return
        if self.id not in m.voters:
            # Only reachable by a removed node that won an election under the old membership
            # before learning of its removal: it commits the removal, then steps down.
            self._become_follower(self.term, None)
            return
        nxt = LogIndex(self.log.last_index() + 1)
        for p in m.members - {self.id} - set(self.progress):
            self.progress[p] = Progress(
                next=nxt, inflights=Inflights(self.config.max_inflight_msgs), recent_active=True
            )
        for p in set(self.progress) - m.members:
            del self.progress[p]
        if self._lead_transferee is not None and self._lead_transferee not in m.voters:
            self._lead_transferee = None
        self._bcast_pending = True

    def _note_configs(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.kind == EntryKind.CONFIG and e.last > self.membership.index:
                self._pending_configs.append((e.last, _config_of(e)))

    def _scan_uncommitted_configs(self) -> None:
        nxt = self.log.log_start()
        # Committed CONFIG entries are already in config.membership; replay them in case the
        # runtime crashed between persisting the commit and the membership (idempotent).
        while nxt <= self.log.last_index():
            ents = self.log.entries(LogIndex(nxt), 1 << 20)
            if not ents:
                break
            for e in ents:
                if e.kind != EntryKind.CONFIG or e.last <= self.membership.index:
                    continue  # older than the membership we were given (installed, or applied)
                if e.last <= self.commit:
                    self.membership = _config_of(e)
                else:
                    self._pending_configs.append((e.last, _config_of(e)))
            nxt = ents[-1].last + 1

    def _propose_config(self, new: Membership) -> LogIndex:
        self._check_can_propose()
        if self.log.term_at(self.commit) != self.term:
            # Ongaro's single-server-change bug: a new leader must commit an entry of its own
            # term before changing membership, or two leaders could use non-overlapping majorities.
            # A leader that skipped its NOOP (its log was all committed) appends it now, so the
            # retry does not wait for a client's write.
            if self.log.term_at(self.log.last_index()) != self.term:
                self._append_noop()
            raise ConfigChangeRejected(
                "the leader has not committed an entry of its term yet; retry"
            )
        if self._pending_configs:
            raise ConfigChangeRejected(
                f"a membership change is pending at {self._pending_configs[0][0]}"
            )
        index = LogIndex(self.log.last_index() + 1)
        data = dataclasses.replace(new, index=index).encode()
        self._append_own(
            [Entry(term=self.term, index=index, count=1, kind=EntryKind.CONFIG, data=data)]
        )
        return index

    # ------------------------------------------------------------------ helpers

    def _check_leader(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)

    def _check_can_propose(self) -> None:
        self._check_leader()
        if self._lead_transferee is not None:
            raise ProposalDropped(f"leadership is moving to node {self._lead_transferee}")

    def _committed_to_apply(self) -> tuple[Entry, ...]:
        hi = min(self.commit, self.log.persisted_index())
        if self._applied >= hi:
            return ()
        ents = self.log.entries(LogIndex(self._applied + 1), self.config.max_committed_bytes)
        return tuple(e for e in ents if e.last <= hi)

    def _send(
        self,
        kind: MessageType,
        to: NodeId,
        *,
        index: LogIndex = NO_INDEX,
        log_term: Term = ZERO_TERM,
        entries: tuple[Entry, ...] = (),
        commit: LogIndex = NO_INDEX,
        reject: bool = False,
        reject_hint: LogIndex = NO_INDEX,
        membership: Membership | None = None,
    ) -> None:
        self._msgs.append(
            Message(
                type=kind,
                frm=self.id,
                to=to,
                term=self.term,
                index=index,
                log_term=log_term,
                entries=entries,
                commit=commit,
                reject=reject,
                reject_hint=reject_hint,
                membership=membership,
            )
        )


def _config_of(e: Entry) -> Membership:
    """The membership a CONFIG entry carries; the entry's own offset is its index."""
    return dataclasses.replace(Membership.decode(e.data), index=e.last)
