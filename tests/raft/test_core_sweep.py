"""Hypothesis sweeps of state x input for the Raft core (in the manner of h11/h2's tests).

A core is driven into one of its roles (follower, pre-candidate, candidate, leader, a leader
whose follower needs a log-start install, a replica recovering from a damaged log), then fed an
arbitrary sequence of inputs: messages of every type with arbitrary but bounded and structurally
valid fields (what ``node/raft_validation.py`` lets through: entries contiguous after the prev
index, terms no later than the message's, a decodable membership), ticks, proposals, membership
changes, transfers, unreachable reports, retention, and Readies handled (sometimes with inputs
stepped while a Ready is in flight, as on the node).

After every input: stepping raised nothing but the documented ``RemoteProtocolError`` (and then
changed nothing), the requests raised nothing but ``RaftError``, and the invariants hold: commit
<= last index; commit, term and the applied index never decrease; at most one vote per term;
a leader's match < next <= last + 1 and bounded in-flight windows; each Ready's duties (a vote
grant is sent only with that vote in the hard state persisted first; an acknowledgement only for
entries durable after that Ready; applied entries are committed, durable, contiguous).

Each example prints its seed (``note``); hypothesis prints the failing example and a
``@reproduce_failure`` blob (``print_blob``).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from tidelog.node.raft import (
    NO_INDEX,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Membership,
    MemoryLog,
    Message,
    MessageType,
    NodeId,
    ProgressState,
    RaftConfig,
    RaftCore,
    RaftError,
    Ready,
    RemoteProtocolError,
    Role,
    Term,
)

ME = NodeId(1)
PEERS = (NodeId(2), NodeId(3))
STRANGER = NodeId(9)  # not a member: messages from it must be harmless too
ROLES = ("follower", "pre-candidate", "candidate", "leader", "leader-installing", "recovering")
SWEEP = settings(
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------------ the runtime


@dataclass
class Driver:
    """Plays the runtime for one core and checks every invariant after every input."""

    core: RaftCore
    log: MemoryLog
    hard_state: HardState = field(default_factory=HardState)
    votes: dict[int, NodeId] = field(default_factory=dict)  # term -> the vote ever persisted
    grants: dict[int, NodeId] = field(default_factory=dict)  # term -> the candidate granted
    held: Ready | None = None  # a Ready taken but not yet handled (steps may happen meanwhile)
    held_applied: LogIndex = NO_INDEX
    acked: dict[int, tuple[Message, Term | None]] = field(default_factory=dict)
    """Each queued acknowledgement and the term of the entry it covered when it was made."""
    commit_seen: LogIndex = NO_INDEX
    term_seen: Term = Term(0)
    applied_seen: LogIndex = NO_INDEX

    def __post_init__(self) -> None:
        self.commit_seen, self.term_seen = self.core.commit, self.core.term
        self.applied_seen = self.core.applied

    # --- the Ready contract, as a runtime does it

    def take(self) -> None:
        if self.held is None:
            self.held_applied = self.core.applied  # what the Ready's committed entries follow
            self.held = self.core.ready()

    def handle(self) -> None:
        self.take()
        rd, self.held = self.held, None
        if rd is None:
            return
        committed_before = self.hard_state.commit
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
            if rd.hard_state.vote is not None:
                prior = self.votes.setdefault(rd.hard_state.term, rd.hard_state.vote)
                assert prior == rd.hard_state.vote, f"two votes in term {rd.hard_state.term}"
        if rd.reset_log_to is not None:
            self.log.reset(rd.reset_log_to.start, rd.reset_log_to.term)
        if rd.truncate_after is not None:
            # Never below what was committed before this Ready (the new commit may cover the
            # entries this Ready appends after the truncation).
            assert rd.truncate_after >= committed_before or rd.reset_log_to is not None
            self.log.truncate_after(rd.truncate_after)
        self.log.append(rd.entries)
        self._check_duties(rd)
        self.core.advance(rd)
        self.check()

    def _check_duties(self, rd: Ready) -> None:
        hs = self.hard_state
        for m in rd.messages:
            assert m.frm == ME and m.to != ME, m
            if m.type == MessageType.VOTE_RESP and not m.reject:
                # Durable before sent: this vote, or a later term (the node never votes in
                # m.term again); and one candidate per term.
                assert hs.term > m.term or (hs.term, hs.vote) == (m.term, m.to), (
                    f"vote grant {m} sent but not durable: {hs}"
                )
                granted = self.grants.setdefault(m.term, m.to)
                assert granted == m.to, f"votes for {granted} and {m.to} in term {m.term}"
            if m.type == MessageType.APPEND_RESP and not m.reject and m.index >= 0:
                start = self.log.log_start()
                made = self.acked.pop(id(m), (m, None))[1]
                durable = self.log.term_at(m.index) is not None and made in (
                    None,
                    self.log.term_at(m.index),
                )
                removed = m.index < start - 1 and m.index <= hs.commit  # committed, retained away
                assert durable or removed, (
                    f"{m} acknowledges what is not durable (log {start}..{self.log.last_index()})"
                )
        last = self.held_applied
        for e in rd.committed_entries:
            assert e.index == last + 1 or last < self.log.log_start() - 1 <= e.index, (e, last)
            assert e.last <= rd.commit_index and self.log.term_at(e.last) == e.term, e
            last = e.last

    # --- invariants

    def check(self) -> None:
        c = self.core
        assert c.commit <= c.log.last_index(), (c.commit, c.log.last_index())
        # commit is an entry boundary (or below the log start, where retention removed them)
        assert c.commit < c.log.log_start() - 1 or c.log.term_at(c.commit) is not None, c.commit
        assert c.commit >= self.commit_seen, "commit moved backwards"
        assert c.term >= self.term_seen, "term moved backwards"
        assert c.applied >= self.applied_seen, "applied moved backwards"
        assert c.applied <= c.commit
        if c.vote is not None and c.term in self.votes:
            assert self.votes[c.term] == c.vote, "the core changed its persisted vote"
        self.commit_seen, self.term_seen, self.applied_seen = c.commit, c.term, c.applied
        if c.role == Role.LEADER:
            assert c.leader == ME
            last = c.log.last_index()
            for p, pr in c.progress.items():
                assert p != ME and p in c.membership.members
                assert pr.match < pr.next <= last + 1, (p, pr)
                assert pr.match <= last and len(pr.inflights) <= c.config.max_inflight_msgs
                if pr.state == ProgressState.SNAPSHOT:
                    assert pr.pending_log_start >= 0
        else:
            assert not c.progress


def _snapshot(c: RaftCore) -> tuple[object, ...]:
    return (
        c.term,
        c.vote,
        c.commit,
        c.role,
        c.leader,
        c.log.last_index(),
        c.membership,
        c.applied,
        c.recovering,
    )


# ------------------------------------------------------------------------------ scenarios


def _entry(term: int, index: int, kind: EntryKind = EntryKind.DATA, count: int = 1) -> Entry:
    data = b"d" if kind == EntryKind.DATA else b""
    return Entry(term=Term(term), index=LogIndex(index), count=count, kind=kind, data=data)


def build(role: str, rng: random.Random, core_cls: type[RaftCore] = RaftCore) -> Driver:
    """A core of node 1 in group {1, 2, 3}, driven into ``role`` by real inputs."""
    pre_vote = role == "pre-candidate" or (role != "candidate" and rng.random() < 0.5)
    cfg = RaftConfig(
        node_id=ME,
        voters=(ME, *PEERS),
        pre_vote=pre_vote,
        check_quorum=rng.random() < 0.5,
        election_ticks=4,
        max_inflight_msgs=2,
        max_append_bytes=80,
    )
    log = MemoryLog()
    # A history written by an earlier leader (node 2, term 1): offsets 0..5 in four batches.
    history = [
        _entry(1, 0, EntryKind.NOOP),
        _entry(1, 1, count=2),
        _entry(1, 3, count=2),
        _entry(1, 5),
    ]
    log.append(history)
    hs = HardState(term=Term(1), vote=NodeId(2), commit=LogIndex(2))
    recover_to = LogIndex(5) if role == "recovering" else None
    if role == "recovering":
        log.truncate_after(LogIndex(2))  # damage found at start: the tail is gone
    core = core_cls(cfg, log, rng=rng, hard_state=hs, recover_to=recover_to)
    d = Driver(core, log, hard_state=hs, votes={1: NodeId(2)})
    d.check()
    if role in ("follower", "recovering"):
        core.step(
            Message(type=MessageType.HEARTBEAT, frm=PEERS[0], to=ME, term=Term(1), commit=hs.commit)
        )
        d.handle()
        return d
    while core.role == Role.FOLLOWER:
        core.tick()
    d.handle()
    if role == "pre-candidate":
        assert core.role == Role.PRE_CANDIDATE
        return d
    if core.role == Role.PRE_CANDIDATE:
        core.step(Message(type=MessageType.PRE_VOTE_RESP, frm=PEERS[0], to=ME, term=Term(2)))
        d.handle()
    assert core.role == Role.CANDIDATE
    if role == "candidate":
        return d
    core.step(Message(type=MessageType.VOTE_RESP, frm=PEERS[0], to=ME, term=core.term))
    d.handle()
    assert core.role == Role.LEADER
    last = core.log.last_index()
    ack = Message(type=MessageType.APPEND_RESP, frm=PEERS[0], to=ME, term=core.term, index=last)
    core.step(ack)
    d.handle()
    if role == "leader-installing":
        log.truncate_prefix(LogIndex(min(core.applied, 4)))  # retention removes what 3 lacks
        core.step(
            Message(
                type=MessageType.APPEND_RESP,
                frm=PEERS[1],
                to=ME,
                term=core.term,
                index=LogIndex(core.progress[PEERS[1]].next - 1),
                reject=True,
                reject_hint=LogIndex(-1),
            )
        )
        d.handle()
        assert core.progress[PEERS[1]].state == ProgressState.SNAPSHOT
    return d


# ------------------------------------------------------------------------------ inputs


@st.composite
def entries_after(draw: st.DrawFn, prev: int, term: int) -> tuple[Entry, ...]:
    out: list[Entry] = []
    nxt = prev + 1
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from([EntryKind.DATA, EntryKind.NOOP, EntryKind.CONFIG]))
        count = draw(st.integers(1, 3)) if kind == EntryKind.DATA else 1
        t = draw(st.integers(0, term))
        data = b"d"
        if kind == EntryKind.CONFIG:
            data = draw(memberships()).encode()
        elif kind == EntryKind.NOOP:
            data = b""
        out.append(Entry(term=Term(t), index=LogIndex(nxt), count=count, kind=kind, data=data))
        nxt += count
    return tuple(out)


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    ids = [ME, *PEERS, NodeId(4)]
    voters = draw(st.sets(st.sampled_from(ids), min_size=1, max_size=4))
    rest = [i for i in ids if i not in voters]
    learners = draw(st.sets(st.sampled_from(rest), max_size=2)) if rest else set()
    index = draw(st.integers(-1, 12))
    return Membership(voters=frozenset(voters), learners=frozenset(learners), index=LogIndex(index))


@st.composite
def messages(draw: st.DrawFn, core: RaftCore, kind: MessageType | None = None) -> Message:
    kind = kind or draw(st.sampled_from(list(MessageType)))
    term = draw(st.integers(max(0, core.term - 1), core.term + 2))
    last = core.log.last_index()
    index = draw(st.integers(-1, last + 3))
    entries: tuple[Entry, ...] = ()
    if kind == MessageType.APPEND:
        entries = draw(entries_after(index, term))
    membership = draw(memberships()) if kind == MessageType.INSTALL_LOG_START else None
    return Message(
        type=kind,
        frm=draw(st.sampled_from([*PEERS, PEERS[0], STRANGER])),
        to=ME,
        term=Term(term),
        index=LogIndex(index),
        log_term=Term(draw(st.integers(0, term + 1))),
        entries=entries,
        commit=LogIndex(draw(st.integers(-1, last + 3))),
        reject=draw(st.booleans()),
        reject_hint=LogIndex(draw(st.integers(-1, last + 3))),
        transfer=draw(st.booleans()),
        membership=membership,
    )


def apply_input(d: Driver, data: st.DataObject) -> None:
    c = d.core
    op = data.draw(
        st.sampled_from(
            ["step"] * 6
            + ["tick", "tick", "handle", "handle", "take", "propose", "config", "transfer"]
            + ["unreachable", "retention"]
        ),
        label="op",
    )
    match op:
        case "step":
            m = data.draw(messages(c), label="message")
            before = _snapshot(c)
            queued = len(c._msgs)  # test-only peek: the acks this step queues, and what they cover
            try:
                c.step(m)
            except RemoteProtocolError:
                assert _snapshot(c) == before, "a refused message changed the core"
            for x in c._msgs[queued:]:
                if x.type == MessageType.APPEND_RESP and not x.reject:
                    d.acked[id(x)] = (x, c.log.term_at(x.index))
        case "tick":
            c.tick()
        case "handle":
            d.handle()
        case "take":
            d.take()
        case "propose":
            with contextlib.suppress(RaftError):
                c.propose(b"p", data.draw(st.integers(1, 3), label="count"))
        case "config":
            target = data.draw(st.sampled_from([*PEERS, NodeId(4)]), label="node")
            change = data.draw(st.sampled_from([c.add_learner, c.promote, c.remove]), label="c")
            with contextlib.suppress(RaftError):
                change(target)
        case "transfer":
            with contextlib.suppress(RaftError):
                c.transfer_leadership(data.draw(st.sampled_from(PEERS), label="to"))
        case "unreachable":
            c.report_unreachable(data.draw(st.sampled_from([*PEERS, STRANGER]), label="peer"))
        case "retention":
            if d.held is None:
                upto = min(c.applied, c.log.persisted_index())
                if upto >= d.log.log_start() and d.log.term_at(upto) is not None:
                    d.log.truncate_prefix(upto)
        case _:
            raise AssertionError(op)
    d.check()


@SWEEP
@given(role=st.sampled_from(ROLES), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_any_input_in_any_role_keeps_the_invariants(
    role: str, seed: int, data: st.DataObject
) -> None:
    note(f"role={role} seed={seed}")
    print(f"sweep role={role} seed={seed}")
    d = build(role, random.Random(seed))
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        apply_input(d, data)
    d.handle()


@settings(SWEEP, max_examples=50)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_every_message_type_in_every_role_is_handled(seed: int, data: st.DataObject) -> None:
    """The (role x message type) table is total: one message of each type in each role."""
    note(f"seed={seed}")
    print(f"sweep table seed={seed}")
    for role in ROLES:
        for kind in MessageType:
            d = build(role, random.Random(seed))
            m = data.draw(messages(d.core, kind))
            before = _snapshot(d.core)
            try:
                d.core.step(m)
            except RemoteProtocolError:
                assert _snapshot(d.core) == before
            d.check()
            d.handle()


def test_the_sweep_catches_a_planted_bug() -> None:
    """The sweep can fail: a core that sends its vote without persisting it (ForgetsVote in
    tests/raft/bugs.py) is caught by the Ready-duty check."""
    from tests.raft.bugs import ForgetsVote

    core_cls, caught_by = ForgetsVote, "sent but not durable"

    @settings(SWEEP, max_examples=1000, print_blob=False, phases=[Phase.generate])
    @given(role=st.sampled_from(ROLES), seed=st.integers(0, 2**32 - 1), data=st.data())
    def sweep(role: str, seed: int, data: st.DataObject) -> None:
        d = build(role, random.Random(seed), core_cls)
        for _ in range(data.draw(st.integers(1, 40))):
            apply_input(d, data)
        d.handle()

    with pytest.raises(AssertionError, match=caught_by):
        sweep()


@settings(SWEEP, max_examples=200)
@given(role=st.sampled_from(ROLES), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_wire_round_trip_keeps_every_field(role: str, seed: int, data: st.DataObject) -> None:
    """node/raft_wire.py: Message -> protobuf -> Message is the identity, membership index
    included (absent on the wire = NO_INDEX)."""
    from tidelog.node.raft_wire import from_wire, to_wire

    note(f"role={role} seed={seed}")
    d = build(role, random.Random(seed))
    m = data.draw(messages(d.core))
    assert from_wire(to_wire("g", m)) == m
