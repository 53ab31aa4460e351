"""Quiescence of idle groups (docs/raft.md, "Quiescence"): the core's rules one by one on the
lockstep harness, then the real shell in the simulator (Replica, PartitionLog, GroupCommitter,
node-level liveness beats) with the leader crashed, partitioned away and restarted while its
group sleeps; a planted follower that never wakes must be caught by the same scenarios."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from tidelog.node.liveness import Heard, NodeLiveness
from tidelog.node.raft import LogIndex, MessageType, NodeId, RaftCore, Role
from tidelog.node.sim.cluster import Cluster, SimNode, SimOptions

from tests.raft.harness import Harness

SEEDS = range(8)
FAILOVER_BOUND_MS = 1500  # sim: 10 ms ticks, 100 ms election timeout; detect + 2 timeouts + slack


def quiesced_harness() -> Harness:
    h = Harness(3, quiesce=True, heartbeat_ticks=1, election_ticks=10)
    h.elect(1)
    h.cores[NodeId(1)].propose(b"x")
    h.deliver()
    return h


def settle(h: Harness, ticks: int = 6) -> None:
    for _ in range(ticks):
        h.tick(1)
        h.deliver()


# ------------------------------------------------------------------ the core's rules


def test_an_idle_group_sleeps_and_sends_nothing_more() -> None:
    h = quiesced_harness()
    settle(h)
    assert all(c.quiesced for c in h.cores.values()), {i: c.quiesced for i, c in h.cores.items()}
    sent = len(h.sent(1))
    h.tick_all(50)  # five election timeouts
    assert len(h.sent(1)) == sent and all(c.role == Role.FOLLOWER for i, c in h.cores.items()
                                          if i != 1)
    assert h.cores[NodeId(1)].role == Role.LEADER
    assert all(c.commit == h.cores[NodeId(1)].commit for c in h.cores.values())


def test_a_proposal_wakes_the_group_commits_and_it_sleeps_again() -> None:
    h = quiesced_harness()
    settle(h)
    leader = h.cores[NodeId(1)]
    index = leader.propose(b"y")
    assert not leader.quiesced
    h.deliver()
    assert leader.commit == index and not h.cores[NodeId(2)].quiesced
    settle(h)
    assert all(c.quiesced for c in h.cores.values())


def test_quiesce_is_off_unless_configured() -> None:
    h = Harness(3, heartbeat_ticks=1)
    h.elect(1)
    settle(h)
    assert not any(c.quiesced for c in h.cores.values())


def test_no_quiesce_while_a_follower_is_silent() -> None:
    """Once woken (the liveness view lost the follower's node), a leader stays awake while a
    follower does not answer: it must hear from every follower before it sleeps again."""
    h = quiesced_harness()
    settle(h)
    h.down.add(NodeId(3))
    leader = h.cores[NodeId(1)]
    leader.wake()
    for _ in range(30):
        h.tick(1)
    assert not leader.quiesced and leader.role == Role.LEADER
    h.down.clear()
    settle(h, 12)
    assert leader.quiesced


def test_a_follower_whose_log_does_not_match_stays_awake_and_answers() -> None:
    """A QUIESCE at an index the follower does not hold is answered as an empty append (a
    reject), which wakes the leader."""
    h = quiesced_harness()
    settle(h)
    leader = h.cores[NodeId(1)]
    last = leader.log.last_index()
    follower = h.restart(3)  # its log is intact; step a QUIESCE past its end
    from tidelog.node.raft import Message

    follower.step(Message(type=MessageType.QUIESCE, frm=NodeId(1), to=NodeId(3),
                          term=leader.term, index=LogIndex(last + 5), log_term=leader.term,
                          commit=LogIndex(last + 5)))
    assert not follower.quiesced
    rd = follower.ready()
    assert rd is not None
    [answer] = [m for m in rd.messages if m.to == 1]
    assert answer.type == MessageType.APPEND_RESP and answer.reject
    follower.advance(rd)
    leader.step(answer)
    assert not leader.quiesced


def test_any_message_wakes_a_sleeping_replica() -> None:
    h = quiesced_harness()
    settle(h)
    leader = h.cores[NodeId(1)]
    h.restart(2)  # a fresh incarnation: awake, no leader known
    h.tick(2, 25)  # its pre-vote reaches the sleeping leader and follower
    assert not leader.quiesced and not h.cores[NodeId(3)].quiesced
    assert leader.role == Role.LEADER  # the lease: a live leader ignores the campaign
    h.tick_all(3)  # the woken leader heartbeats again
    assert h.cores[NodeId(2)].leader == 1
    settle(h)
    assert all(c.quiesced for c in h.cores.values())


def test_wake_resumes_the_election_timer_and_a_follower_campaigns() -> None:
    h = quiesced_harness()
    settle(h)
    h.down.add(NodeId(1))
    for i in (2, 3):
        h.cores[NodeId(i)].wake()
    h.tick_all(40)
    leaders = [i for i, c in h.cores.items() if c.role == Role.LEADER and i != 1]
    assert leaders, {i: c.role for i, c in h.cores.items()}


def test_a_woken_leader_cut_off_steps_down() -> None:
    h = quiesced_harness()
    settle(h)
    h.isolate(1)
    h.cores[NodeId(1)].wake()
    h.tick(1, 25)
    assert h.cores[NodeId(1)].role != Role.LEADER


def test_node_liveness_loses_a_silent_peer_once_and_sees_restarts() -> None:
    lv = NodeLiveness([2, 3], timeout_ticks=10, beat_ticks=2)
    beats = 0
    lost: list[int] = []
    for _ in range(9):
        t = lv.tick()
        beats += t.beat
        assert lv.heard(2, 7) is Heard.AS_BEFORE
        lost += t.lost
    assert lost == [] and beats == 4
    t = lv.tick()
    assert t.lost == (3,) and not lv.alive(3) and lv.alive(2)
    for _ in range(20):  # reported once
        assert lv.tick().lost == ()
        lv.heard(2, 7)
    assert lv.heard(3, 1) is Heard.BACK and lv.alive(3)
    assert lv.heard(2, 8) is Heard.RESTARTED  # a new process: its groups must be woken
    assert lv.heard(4, 1) is Heard.AS_BEFORE and lv.alive(4)  # a node that joined
    with pytest.raises(ValueError):
        NodeLiveness([2], timeout_ticks=2, beat_ticks=2)


# ------------------------------------------------------------------ the real shell, simulated


class NeverWakes(RaftCore):
    """Planted bug: a follower ignores the node-level liveness wake (it sleeps on when its
    leader's node dies)."""

    def wake(self) -> None:
        if self.role is Role.LEADER:
            super().wake()


def quiet_cluster(seed: int, core_cls: type[RaftCore] = RaftCore) -> Cluster:
    """A faultless cluster whose client stops after a few writes, run until all sleep."""
    opt = SimOptions(faults=False, quiesce=True, membership_changes=False, core_cls=core_cls)
    c = Cluster(seed, opt)
    asyncio.set_event_loop(c.loop)
    c._run_for_ms(300)
    opt.client_interval_ms_max = 10**9  # the client goes quiet (its next request never comes)
    assert run_until(c, lambda: all_quiesced(c), 3000), f"seed {seed}: never quiesced"
    return c


def live(c: Cluster) -> list[SimNode]:
    return [n for n in c.nodes.values() if n.replica is not None and n.id != c.spare]


def all_quiesced(c: Cluster) -> bool:
    nodes = live(c)
    return len(nodes) == 3 and all(n.replica.core.quiesced for n in nodes)  # type: ignore[union-attr]


def run_until(c: Cluster, cond: Callable[[], bool], ms: int) -> bool:
    end = c.now_ms + ms
    while c.now_ms < end:
        c._run_for_ms(5)
        if cond():
            return True
    return False


def propose(c: Cluster, node: SimNode, value: bytes, acked: list[bool]) -> None:
    """A client write, made from the loop as the harness's own client makes it."""
    c._at(0, c._propose, node, value, lambda: acked.append(True))


def new_leader(c: Cluster, among: set[NodeId], above_term: int) -> bool:
    return any(n.replica is not None and n.replica.is_leader and n.replica.term > above_term
               and n.id in among for n in c.nodes.values())


def leader_crash(seed: int, core_cls: type[RaftCore] = RaftCore) -> tuple[bool, int]:
    c = quiet_cluster(seed, core_cls)
    try:
        old = c.leader()
        assert old is not None and old.replica is not None
        term = old.replica.term
        start = c.now_ms
        c._kill(old, "test", power=c.rng.random() < 0.5)
        rest = {n.id for n in live(c)}
        ok = run_until(c, lambda: new_leader(c, rest, term), FAILOVER_BOUND_MS)
        return ok, c.now_ms - start
    finally:
        c.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_leader_crash_while_quiesced_elects_a_new_leader(seed: int) -> None:
    ok, ms = leader_crash(seed)
    print(f"seed {seed}: new leader {ms} ms after the crash")
    assert ok, f"seed {seed}: no new leader {FAILOVER_BOUND_MS} ms after the leader crashed"


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_leader_partitioned_away_while_quiesced(seed: int) -> None:
    c = quiet_cluster(seed)
    try:
        old = c.leader()
        assert old is not None and old.replica is not None
        term = old.replica.term
        rest = {n.id for n in live(c)} - {old.id}
        c.net.partition([{old.id}, rest])
        assert run_until(c, lambda: new_leader(c, rest, term)
                         and not old.replica.is_leader,  # type: ignore[union-attr]
                         FAILOVER_BOUND_MS), f"seed {seed}: no failover across the partition"
        c.net.heal()
        acked: list[bool] = []
        lead = c.leader()
        assert lead is not None
        propose(c, lead, b"after-partition", acked)
        assert run_until(c, lambda: bool(acked), 2000), f"seed {seed}: no commit after heal"
        assert run_until(c, lambda: all_quiesced(c), 3000), f"seed {seed}: never slept again"
        c.final_check()
    finally:
        c.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_sim_restarts_while_quiesced_rejoin_commit_and_sleep_again(seed: int) -> None:
    """A follower's and then the leader's node restarted (power cut) while the group sleeps."""
    c = quiet_cluster(seed)
    try:
        for pick_leader in (False, True):
            lead = c.leader()
            assert lead is not None
            victim = lead if pick_leader else next(n for n in live(c) if n is not lead)
            c._kill(victim, "test", power=True)
            c._run_for_ms(c.rng.randint(5, 400))
            c._at(0, c._start, victim)
            assert run_until(c, lambda: c.leader() is not None, FAILOVER_BOUND_MS)
            acked: list[bool] = []
            propose(c, c.leader(), b"after-restart-%d" % pick_leader, acked)  # type: ignore[arg-type]
            assert run_until(c, lambda a=acked: bool(a), 3000), f"seed {seed}: no commit"
            assert run_until(c, lambda: all_quiesced(c), 3000), f"seed {seed}: never slept"
        c.final_check()
    finally:
        c.close()


def test_planted_follower_that_never_wakes_is_caught() -> None:
    caught = [seed for seed in SEEDS if not leader_crash(seed, NeverWakes)[0]]
    print(f"NeverWakes caught by seeds {caught}")
    assert caught, "a follower that ignores the liveness wake survived every seed"


def test_campaign_after_elects_the_chosen_replica_first() -> None:
    """What the node does for a new group (ReplicaManager._first_election): the preferred
    replica campaigns after two ticks, the others wait several timeouts."""
    h = Harness(3, election_ticks=10)
    h.cores[NodeId(3)].campaign_after(2)
    for i in (1, 2):
        h.cores[NodeId(i)].campaign_after(35)
    h.tick_all(3)
    assert h.cores[NodeId(3)].role == Role.LEADER
    assert [c.role for i, c in h.cores.items() if i != 3] == [Role.FOLLOWER, Role.FOLLOWER]
