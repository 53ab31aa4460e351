"""One rule per test, each citing the Raft paper (Ongaro & Ousterhout 2014) or the dissertation."""

from __future__ import annotations

import random

import pytest
from tidelog.node.raft import (
    ConfigChangeRejected,
    Entry,
    EntryKind,
    HardState,
    LogIndex,
    Membership,
    MemoryLog,
    Message,
    MessageType,
    NodeId,
    NotLeader,
    ProgressState,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    RemoteProtocolError,
    Role,
    Term,
)
from tidelog.node.raft.quorum import committed_index

from tests.raft.harness import Harness

# ---------------------------------------------------------------- §5.2 leader election


def test_candidate_with_majority_becomes_leader_and_appends_noop() -> None:
    """§5.2 a candidate that receives votes from a majority leads; §8 it appends a no-op."""
    h = Harness(3)
    lead = h.elect(1)
    assert lead.term == 1 and lead.leader == 1
    assert all(h.cores[NodeId(i)].leader == 1 for i in (2, 3))
    noop = h.logs[NodeId(1)].all_entries()[-1]
    assert noop.kind == EntryKind.NOOP and noop.term == 1 and noop.count == 1
    assert lead.commit == noop.last  # committed once a majority persisted it


def test_randomized_election_timeout_is_within_one_to_two_timeouts() -> None:
    """§5.2 election timeouts are chosen randomly from a fixed interval."""
    seen = set()
    for seed in range(50):
        core = RaftCore(
            RaftConfig(node_id=NodeId(1), voters=(NodeId(1), NodeId(2))),
            MemoryLog(),
            rng=random.Random(seed),
        )
        n = 0
        while core.role == Role.FOLLOWER:
            core.tick()
            n += 1
        seen.add(n)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 3


def test_voter_grants_at_most_one_vote_per_term() -> None:
    """§5.2 each server votes for at most one candidate in a given term (first come)."""
    core = RaftCore(
        RaftConfig(node_id=NodeId(1), voters=(1, 2, 3), pre_vote=False),
        MemoryLog(),
        rng=random.Random(1),
    )  # type: ignore[arg-type]
    for cand in (2, 3):
        core.step(
            Message(
                type=MessageType.VOTE,
                frm=NodeId(cand),
                to=NodeId(1),
                term=Term(5),
                index=LogIndex(-1),
            )
        )
    rd = core.ready()
    assert rd is not None
    resps = {m.to: m.reject for m in rd.messages}
    assert resps == {2: False, 3: True}
    assert rd.hard_state == HardState(term=Term(5), vote=NodeId(2), commit=LogIndex(-1))


def test_vote_is_in_hard_state_of_the_same_ready_as_the_reply() -> None:
    """§5.2 + Figure 2 "persistent state updated before responding": the Ready that carries the
    vote reply also carries the hard state, which the runtime persists before sending."""
    core = RaftCore(RaftConfig(node_id=NodeId(1), voters=(1, 2)), MemoryLog(), rng=random.Random(1))  # type: ignore[arg-type]
    core.step(
        Message(
            type=MessageType.VOTE, frm=NodeId(2), to=NodeId(1), term=Term(3), index=LogIndex(-1)
        )
    )
    rd = core.ready()
    assert (
        rd is not None
        and rd.messages[0].type == MessageType.VOTE_RESP
        and not rd.messages[0].reject
    )
    assert rd.hard_state is not None and rd.hard_state.vote == 2 and rd.hard_state.term == 3


def test_vote_denied_to_candidate_with_stale_log() -> None:
    """§5.4.1 election restriction: deny the vote if the candidate's log is less up to date."""
    h = Harness(3, pre_vote=False, check_quorum=False)
    h.elect(1)
    h.cores[NodeId(1)].propose(b"x", 2)
    h.deliver()
    core = h.cores[NodeId(2)]
    core.step(
        Message(
            type=MessageType.VOTE,
            frm=NodeId(3),
            to=NodeId(2),
            term=Term(9),
            index=LogIndex(0),
            log_term=Term(1),
        )
    )
    h.process(NodeId(2))
    assert h.sent(2)[-1].type == MessageType.VOTE_RESP and h.sent(2)[-1].reject


# ---------------------------------------------------------------- §5.1 terms


def test_leader_steps_down_on_higher_term() -> None:
    """§5.1 if a server's term is stale, it reverts to follower."""
    h = Harness(3)
    lead = h.elect(1)
    lead.step(Message(type=MessageType.APPEND_RESP, frm=NodeId(2), to=NodeId(1), term=Term(7)))
    assert lead.role == Role.FOLLOWER and lead.term == 7 and lead.vote is None


def test_stale_term_append_is_answered_with_current_term() -> None:
    """§5.1 a request with a stale term is rejected; the reply carries the newer term."""
    h = Harness(3)
    h.elect(1)
    f = h.cores[NodeId(2)]
    f.step(Message(type=MessageType.APPEND, frm=NodeId(3), to=NodeId(2), term=Term(0)))
    h.process(NodeId(2))
    assert h.sent(2)[-1].type == MessageType.APPEND_RESP and h.sent(2)[-1].term == 1
    assert f.term == 1 and f.leader == 1  # the stale request changed nothing


# ---------------------------------------------------------------- §5.3 log replication


def test_positions_are_record_offsets_of_batches() -> None:
    """Interface: an entry covers [index, index+count-1]; its Raft position is its last offset."""
    h = Harness(3)
    lead = h.elect(1)  # NOOP at offset 0
    first = lead.propose_many([(b"a", 3), (b"b", 2)])
    h.deliver()
    assert first == [1, 4]
    assert h.entries(2) == [(0, 0, 1), (1, 3, 1), (4, 5, 1)]
    assert lead.commit == 5 and h.cores[NodeId(2)].commit == 5


def test_follower_rejects_append_without_matching_prev_and_leader_backtracks() -> None:
    """§5.3 consistency check; the leader backs up (by term, fast backtracking) and retries."""
    h = Harness(3)
    h.elect(1)
    h.down.add(NodeId(3))
    for k in range(5):
        h.cores[NodeId(1)].propose(b"%d" % k)
    h.deliver()
    h.down.discard(NodeId(3))
    h.tick_all(2)  # heartbeats make the leader notice follower 3 is behind
    assert h.entries(3) == h.entries(1)
    rejects = [m for m in h.sent(3) if m.type == MessageType.APPEND_RESP and m.reject]
    assert rejects, "follower 3 never rejected an append whose prev it lacks"
    rejected = rejects[0].index
    retries = [
        m
        for m in h.sent(1)
        if m.type == MessageType.APPEND and m.to == 3 and m.index < rejected and m.entries
    ]
    assert retries, f"the leader never retried below the rejected prev {rejected}"


def test_follower_truncates_conflicting_uncommitted_suffix() -> None:
    """§5.3 if an existing entry conflicts with a new one, delete it and all that follow."""
    h = Harness(3, pre_vote=False, check_quorum=False)
    h.elect(1)
    h.isolate(1)
    h.cores[NodeId(1)].propose(b"lost", 3)  # only on node 1
    h.deliver()
    h.elect(2)  # nodes 2, 3 elect a new leader in term 2
    h.cores[NodeId(2)].propose(b"kept")
    h.deliver()
    h.heal()
    h.tick_all(3)
    assert h.entries(1) == h.entries(2)
    assert all(e.data != b"lost" for e in h.logs[NodeId(1)].all_entries())
    assert any(rd.truncate_after is not None for rd in h.readies[NodeId(1)])


def test_leader_pipelines_within_inflight_window() -> None:
    """etcd replicate state: at most max_inflight_msgs unacknowledged appends per follower."""
    h = Harness(3, max_inflight_msgs=2)
    lead = h.elect(1)
    h.cut |= {(2, 1), (3, 1)}  # acks are lost
    for k in range(6):
        lead.propose(b"%d" % k)
        h.deliver()
    appends = [m for m in h.sent(1) if m.type == MessageType.APPEND and m.to == 2 and m.entries]
    assert len(appends) == 2 + 1  # the probe that found the match, then a window of 2
    pr = lead.progress[NodeId(2)]
    assert pr.state == ProgressState.REPLICATE and len(pr.inflights) == 2 and pr.is_paused()
    assert lead.log.last_index() > appends[-1].entries[-1].last  # the rest waits for acks


# ---------------------------------------------------------------- §5.4.2 committing earlier terms


def _leader_with_old_term_tail() -> tuple[RaftCore, MemoryLog]:
    """Figure 8 (c): a leader of term 4 whose log ends with an uncommitted entry of term 2."""
    log = MemoryLog()
    log.append([Entry(term=Term(1), index=LogIndex(0), count=1, kind=EntryKind.NOOP)])
    log.append([Entry(term=Term(2), index=LogIndex(1), count=1, kind=EntryKind.DATA, data=b"x")])
    cfg = RaftConfig(node_id=NodeId(1), voters=(NodeId(1), NodeId(2), NodeId(3)), pre_vote=False)
    core = RaftCore(
        cfg, log, rng=random.Random(1), hard_state=HardState(term=Term(3), commit=LogIndex(0))
    )
    while core.role != Role.CANDIDATE:
        core.tick()
    core.step(Message(type=MessageType.VOTE_RESP, frm=NodeId(2), to=NodeId(1), term=core.term))
    assert core.role == Role.LEADER and core.term == 4
    rd = core.ready()
    assert rd is not None
    log.append(rd.entries)  # the term-4 no-op at offset 2
    core.advance(rd)
    return core, log


def test_new_leader_must_commit_own_entry_before_config_change() -> None:
    """Ongaro's single-server-change bug fix: no change until an entry of the term commits."""
    core, _ = _leader_with_old_term_tail()
    with pytest.raises(ConfigChangeRejected, match="committed an entry of its term"):
        core.add_learner(NodeId(9))


def test_figure8_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    """§5.4.2 / Figure 8: with a majority on an old-term entry, the commit index stays put; it
    moves only when an entry of the leader's own term reaches a majority."""
    core, _ = _leader_with_old_term_tail()
    # Follower 2 acknowledges offset 1 (term 2) but not the new no-op at offset 2.
    core.step(
        Message(
            type=MessageType.APPEND_RESP,
            frm=NodeId(2),
            to=NodeId(1),
            term=core.term,
            index=LogIndex(1),
        )
    )
    assert core.commit == 0
    core.step(
        Message(
            type=MessageType.APPEND_RESP,
            frm=NodeId(2),
            to=NodeId(1),
            term=core.term,
            index=LogIndex(2),
        )
    )
    assert core.commit == 2


# --------------------------------------------------------- PreVote / CheckQuorum (§9.6, §6.2)


def test_rejoining_partitioned_node_does_not_depose_healthy_leader() -> None:
    """Dissertation §9.6 PreVote: a node partitioned away cannot disrupt the leader on return."""
    h = Harness(3)
    lead = h.elect(1)
    h.isolate(3)
    h.tick_all(60)  # node 3 keeps pre-campaigning but never increments its term
    assert h.cores[NodeId(3)].term == lead.term
    h.heal()
    h.tick_all(5)
    assert lead.role == Role.LEADER and h.cores[NodeId(3)].leader == 1


def test_leader_without_quorum_steps_down() -> None:
    """Dissertation §6.2 CheckQuorum: a leader that hears from no majority for an election
    timeout steps down."""
    h = Harness(3)
    lead = h.elect(1)
    h.isolate(1)
    h.tick(1, 2 * lead.config.election_ticks)
    assert lead.role == Role.FOLLOWER


def test_follower_in_lease_ignores_disruptive_vote() -> None:
    """§6.2 lease: a follower that heard from a leader recently ignores vote requests."""
    h = Harness(3)
    h.elect(1)
    f = h.cores[NodeId(2)]
    f.step(
        Message(
            type=MessageType.VOTE,
            frm=NodeId(3),
            to=NodeId(2),
            term=Term(9),
            index=LogIndex(99),
            log_term=Term(9),
        )
    )
    assert f.term == 1 and f.vote != 3
    rd = f.ready()
    assert rd is None or not any(m.to == 3 for m in rd.messages)  # ignored: not even a reject


# ---------------------------------------------------------------- §3.10 leadership transfer


def test_leadership_transfer_hands_over_with_timeout_now() -> None:
    """Dissertation §3.10: catch the target up, send TimeoutNow; it campaigns at once."""
    h = Harness(3)
    lead = h.elect(1)
    lead.propose(b"x")
    lead.transfer_leadership(NodeId(2))
    with pytest.raises(ProposalDropped):
        lead.propose(b"y")
    h.deliver()
    assert h.cores[NodeId(2)].role == Role.LEADER and lead.role == Role.FOLLOWER
    assert any(m.type == MessageType.TIMEOUT_NOW for m in h.sent(1))


def test_follower_refuses_proposals_with_leader_hint() -> None:
    """Errors by fault: a follower raises NotLeader carrying the leader it knows."""
    h = Harness(3)
    h.elect(1)
    with pytest.raises(NotLeader) as e:
        h.cores[NodeId(2)].propose(b"x")
    assert e.value.leader_hint == 1


# ---------------------------------------------------------------- §4 membership


def test_add_learner_catch_up_promote_and_remove() -> None:
    """Dissertation §4.2-4.3: one server at a time; a new node joins as a learner first."""
    h = Harness(3, learners=())
    lead = h.elect(1)
    lead.propose(b"data", 5)
    h.deliver()
    h.logs[NodeId(4)] = MemoryLog()
    h.cores[NodeId(4)] = RaftCore(
        RaftConfig(node_id=NodeId(4), voters=tuple(h.ids)), h.logs[NodeId(4)], rng=random.Random(4)
    )
    h.readies[NodeId(4)] = []
    lead.add_learner(NodeId(4))
    h.deliver()
    h.tick_all(2)
    assert lead.membership.learners == {4}
    assert h.entries(4) == h.entries(1)
    assert h.cores[NodeId(4)].role == Role.FOLLOWER and h.cores[NodeId(4)].membership.learners == {
        4
    }
    lead.promote(NodeId(4))
    h.deliver()
    assert lead.membership.voters == {1, 2, 3, 4}
    lead.remove(NodeId(2))
    h.deliver()
    assert lead.membership.voters == {1, 3, 4}
    with pytest.raises(ConfigChangeRejected):
        lead.remove(NodeId(1))  # the leader transfers leadership before leaving


def test_only_one_config_change_pending() -> None:
    """§4.1: a leader proposes the next change only after the previous one committed."""
    h = Harness(3)
    lead = h.elect(1)
    lead.add_learner(NodeId(7))
    with pytest.raises(ConfigChangeRejected, match="pending"):
        lead.add_learner(NodeId(8))


def test_learner_does_not_count_towards_commit_or_campaign() -> None:
    """§4.2.1 learners (non-voting members) neither count towards commit nor campaign."""
    h = Harness(3, learners=(4,))
    lead = h.elect(1)
    h.down |= {NodeId(2), NodeId(3)}  # only the learner can acknowledge
    before = lead.commit
    idx = lead.propose(b"x")
    h.deliver()
    assert h.logs[NodeId(4)].last_index() == idx  # the learner has it ...
    assert lead.commit == before  # ... but leader + learner are no majority of 3 voters
    h.down.clear()
    h.tick(4, 100)
    assert not any(m.type in (MessageType.PRE_VOTE, MessageType.VOTE) for m in h.sent(4))
    assert h.cores[NodeId(4)].role == Role.FOLLOWER


# ---------------------------------------------------------------- log-prefix truncation


def test_lagging_follower_is_moved_to_leaders_log_start() -> None:
    """§7 (InstallSnapshot) for a log: retention removed entries the follower needs, so the
    leader resets the follower's log to its log start."""
    h = Harness(3)
    lead = h.elect(1)
    h.down.add(NodeId(3))
    for k in range(6):
        lead.propose(b"%d" % k, 2)
    h.deliver()
    for i in (1, 2):
        h.logs[NodeId(i)].truncate_prefix(LogIndex(8))
    h.down.discard(NodeId(3))
    h.tick_all(3)
    assert any(m.type == MessageType.INSTALL_LOG_START for m in h.sent(1))
    resets = [rd.reset_log_to for rd in h.readies[NodeId(3)] if rd.reset_log_to is not None]
    assert resets and resets[0].start == 9
    assert h.entries(3) == h.entries(1)
    assert h.cores[NodeId(3)].commit == lead.commit


# ---------------------------------------------------------------- storage faults


def test_damaged_replica_neither_votes_nor_campaigns_until_refilled() -> None:
    """Storage faults (Alagappan et al., PAR): a replica that lost acknowledged entries must not
    vote or lead until a leader elected by others has given them back."""
    h = Harness(3)
    lead = h.elect(1)
    lead.propose(b"acked", 4)
    h.deliver()
    acked = h.logs[NodeId(3)].last_index()
    h.logs[NodeId(3)].truncate_after(LogIndex(0))  # checksum mismatch found at restart
    damaged = h.restart(3, recover_to=acked)
    assert damaged.recovering
    damaged.step(
        Message(
            type=MessageType.VOTE, frm=NodeId(2), to=NodeId(3), term=Term(9), index=LogIndex(-1)
        )
    )
    h.process(NodeId(3))
    assert h.sent(3)[-1].type == MessageType.VOTE_RESP and h.sent(3)[-1].reject
    h.tick(3, 100)  # far past its election timeout
    assert not any(m.type in (MessageType.PRE_VOTE, MessageType.VOTE) for m in h.sent(3))
    assert damaged.role == Role.FOLLOWER
    # Node 3 now has term 9 (from the vote request): its replies depose leader 1, which nodes 1
    # and 2 re-elect without node 3's vote; that leader refills node 3.
    h.tick_all(3)
    h.elect(1)
    h.tick_all(3)
    assert not damaged.recovering
    assert any(rd.recovered for rd in h.readies[NodeId(3)])
    assert h.entries(3) == h.entries(1)


# ---------------------------------------------------------------- config & quorum oracle


def test_config_rejects_heartbeat_not_below_election() -> None:
    with pytest.raises(ValueError, match="must exceed"):
        RaftConfig(node_id=NodeId(1), voters=(NodeId(1),), election_ticks=2, heartbeat_ticks=2)


def test_single_voter_commits_on_its_own_durability() -> None:
    core = RaftCore(
        RaftConfig(node_id=NodeId(1), voters=(NodeId(1),)), MemoryLog(), rng=random.Random(0)
    )
    while core.role != Role.LEADER:
        core.tick()
    idx = core.propose(b"x")
    rd = core.ready()
    assert rd is not None and core.commit < idx  # not durable yet
    core.log.stable.append(rd.entries)  # type: ignore[attr-defined]
    core.advance(rd)
    assert core.commit == idx


def test_committed_index_matches_naive_oracle() -> None:
    """Fast quorum code checked against a dumb oracle (etcd quorum/quick_test.go)."""
    rng = random.Random(7)
    for _ in range(2000):
        n = rng.randint(1, 7)
        voters = [NodeId(i) for i in range(n)]
        match = {v: LogIndex(rng.randint(-1, 20)) for v in voters}
        oracle = max(i for i in range(-1, 21) if sum(m >= i for m in match.values()) > n // 2)
        assert committed_index(voters, match) == oracle


# ---------------------------------------------------------------- issue 11: log-start installs


def _lagging_follower_behind_log_start(h: Harness) -> RaftCore:
    """Node 3 is down while the leader writes and retention removes what node 3 needs."""
    lead = h.elect(1)
    h.down.add(NodeId(3))
    for k in range(6):
        lead.propose(b"%d" % k, 2)
    h.deliver()
    for i in (1, 2):
        h.logs[NodeId(i)].truncate_prefix(LogIndex(8))
    h.down.discard(NodeId(3))
    return lead


def _drop_install_log_starts(h: Harness, node: int) -> list[Message]:
    """Make ``node`` lose every INSTALL_LOG_START addressed to it (as a lossy network would)."""
    core = h.cores[NodeId(node)]
    real_step = core.step
    dropped: list[Message] = []

    def step(m: Message) -> None:
        if m.type == MessageType.INSTALL_LOG_START:
            dropped.append(m)
            return
        real_step(m)

    core.step = step  # type: ignore[method-assign]
    return dropped


def test_lost_log_start_install_is_retried_after_a_bounded_number_of_ticks() -> None:
    """Issue 11 defect 2 (etcd's StateSnapshot must not wedge): an INSTALL_LOG_START the network
    drops leaves the follower's progress in SNAPSHOT; within two election timeouts of ticks the
    leader gives up on it, probes again, resends the install and the follower catches up."""
    h = Harness(3)
    lead = _lagging_follower_behind_log_start(h)
    dropped = _drop_install_log_starts(h, 3)
    h.tick_all(1)
    assert len(dropped) == 1 and lead.progress[NodeId(3)].state == ProgressState.SNAPSHOT
    del h.cores[NodeId(3)].step  # the network heals: the next install arrives
    h.tick_all(2 * lead.config.election_ticks)
    assert lead.role == Role.LEADER
    assert lead.progress[NodeId(3)].state == ProgressState.REPLICATE
    assert h.entries(3) == h.entries(1) and h.cores[NodeId(3)].commit == lead.commit


def test_install_reported_unreachable_is_resent_after_the_next_heartbeat_reply() -> None:
    """Issue 11 defect 2, etcd's ReportSnapshot(failure): the transport reports the follower
    unreachable while an install is pending; the leader leaves SNAPSHOT for PROBE and resends the
    install once a heartbeat reply shows the follower is back, without waiting for the timeout."""
    h = Harness(3)
    lead = _lagging_follower_behind_log_start(h)
    dropped = _drop_install_log_starts(h, 3)
    h.tick_all(1)
    assert len(dropped) == 1
    del h.cores[NodeId(3)].step
    lead.report_unreachable(NodeId(3))
    assert lead.progress[NodeId(3)].state == ProgressState.PROBE
    h.tick_all(2)  # < the election timeout: the report, not the timeout, unwedged it
    assert lead.progress[NodeId(3)].state == ProgressState.REPLICATE
    assert h.entries(3) == h.entries(1) and h.cores[NodeId(3)].commit == lead.commit


def test_installed_membership_never_goes_back_to_older_config_entries() -> None:
    """Issue 11 defect 3: INSTALL_LOG_START carried the leader's current membership, and the
    follower then applied the older CONFIG entries between the log start and the leader's commit:
    its voter set went backwards (node 4 lost its vote). Every membership the follower reports
    after the install, and the one it restarts with, is at least as new as the installed one."""
    h = Harness(4, max_append_bytes=40)  # one entry per append: the follower commits step by step
    lead = h.elect(1)
    h.down.add(NodeId(3))
    for k in range(6):
        lead.propose(b"%d" % k, 2)  # offsets 1..12
    h.deliver()
    lead.remove(NodeId(4))  # CONFIG at 13: voters {1,2,3}
    h.deliver()
    lead.add_learner(NodeId(4))  # CONFIG at 14: learner 4
    h.tick_all(3)  # node 4 catches up as a learner
    lead.promote(NodeId(4))  # CONFIG at 15: voters {1,2,3,4}
    h.deliver()
    assert lead.membership.voters == {1, 2, 3, 4} and lead.commit == 15
    for i in (1, 2, 4):
        h.logs[NodeId(i)].truncate_prefix(LogIndex(8))
    h.down.discard(NodeId(3))
    h.tick_all(3 * lead.config.election_ticks)
    follower = h.cores[NodeId(3)]
    assert h.entries(3) == h.entries(1) and follower.commit == lead.commit
    reported = [rd.membership for rd in h.readies[NodeId(3)] if rd.membership is not None]
    assert reported and all(m.voters == {1, 2, 3, 4} for m in reported), reported
    assert follower.membership.voters == {1, 2, 3, 4}
    # A restart with the persisted membership replays the log's CONFIG entries: none is older.
    restarted = RaftCore(
        RaftConfig(node_id=NodeId(3), voters=(NodeId(1),)).with_membership(reported[-1]),
        h.logs[NodeId(3)],
        rng=random.Random(3),
        hard_state=h.hs[NodeId(3)],
    )
    assert restarted.membership == follower.membership


def test_second_leader_in_our_term_is_refused_and_changes_nothing() -> None:
    """§5.2 Election Safety: at most one leader per term, so an APPEND of our own term reaching a
    leader means a peer (or a safety violation elsewhere) is broken: ``RemoteProtocolError``,
    raised before any state changes, so the runtime can drop the message."""
    h = Harness(3)
    lead = h.elect(1)
    before = (lead.term, lead.role, lead.commit, lead.log.last_index())
    bogus = Message(
        type=MessageType.APPEND, frm=NodeId(2), to=NodeId(1), term=lead.term, index=lead.commit
    )
    with pytest.raises(RemoteProtocolError, match="second leader"):
        lead.step(bogus)
    assert (lead.term, lead.role, lead.commit, lead.log.last_index()) == before
    assert lead.ready() is None


def _follower_with_unpersisted_ack(core_cls: type[RaftCore] = RaftCore) -> RaftCore:
    """Node 1 appended offset 1 (term 1) from leader 2 and queued its acknowledgement; the Ready
    that would persist the entry and then send the ack has not been taken yet."""
    log = MemoryLog()
    log.append([Entry(term=Term(1), index=LogIndex(0), count=1, kind=EntryKind.NOOP)])
    cfg = RaftConfig(node_id=NodeId(1), voters=(NodeId(1), NodeId(2), NodeId(3)))
    core = core_cls(cfg, log, rng=random.Random(1), hard_state=HardState(term=Term(1)))
    data = Entry(term=Term(1), index=LogIndex(1), count=1, kind=EntryKind.DATA, data=b"a")
    core.step(
        Message(
            type=MessageType.APPEND,
            frm=NodeId(2),
            to=NodeId(1),
            term=Term(1),
            index=LogIndex(0),
            log_term=Term(1),
            entries=(data,),
        )
    )
    return core


def acks_after_truncation(core_cls: type[RaftCore] = RaftCore) -> list[tuple[int, int, int]]:
    """(to, term, index) of the acknowledgements in the Ready after a newer leader's append
    truncated an entry whose acknowledgement was still queued."""
    core = _follower_with_unpersisted_ack(core_cls)
    other = Entry(term=Term(2), index=LogIndex(1), count=1, kind=EntryKind.DATA, data=b"b")
    core.step(
        Message(
            type=MessageType.APPEND,
            frm=NodeId(3),
            to=NodeId(1),
            term=Term(2),
            index=LogIndex(0),
            log_term=Term(1),
            entries=(other,),
        )
    )
    rd = core.ready()
    assert rd is not None and rd.entries == (other,)
    return [(m.to, m.term, m.index) for m in rd.messages if m.type == MessageType.APPEND_RESP]


def test_ack_of_entries_a_newer_leader_truncates_in_the_same_ready_is_not_sent() -> None:
    """Figure 2 "respond after persisting": an acknowledgement promises durable entries. When a
    newer leader's append truncates them before the Ready is taken, the Ready would persist the
    truncation and then send the old ack, a lie the old leader could count towards commit."""
    acks = acks_after_truncation()
    assert acks == [(3, 2, 1)], acks  # no (2, 1, 1): that entry is never persisted


def test_ack_of_entries_a_log_start_reset_discards_in_the_same_ready_is_not_sent() -> None:
    """As above, for a log-start reset (INSTALL_LOG_START) that discards the unpersisted entry."""
    core = _follower_with_unpersisted_ack()
    core.step(
        Message(
            type=MessageType.INSTALL_LOG_START,
            frm=NodeId(3),
            to=NodeId(1),
            term=Term(2),
            index=LogIndex(4),
            log_term=Term(2),
            commit=LogIndex(4),
            membership=Membership(voters=frozenset({NodeId(1), NodeId(2), NodeId(3)})),
        )
    )
    rd = core.ready()
    assert rd is not None and rd.reset_log_to is not None and rd.reset_log_to.start == 5
    acks = [(m.to, m.term, m.index) for m in rd.messages if m.type == MessageType.APPEND_RESP]
    assert acks == [(3, 2, 4)], acks
