"""Partition, replication and Raft metrics on a real 3-node cluster: every node's GET /metrics
(node/metrics/partitions.py, node/metrics/raft.py), parsed with prometheus_client's own text
parser, checked against what the test did to the cluster and what the Metadata RPC says.

One module-scoped cluster; each test has its own topic, and a test that kills a node starts it
again before it ends. Counters are compared before/after, never as absolute values.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.local_cluster import LocalCluster, LocalNode, metadata
from tidelog.node.metrics.raft import RaftObserver
from tidelog.node.metrics.registry import REGISTRY
from tidelog.node.raft import (
    Entry,
    EntryKind,
    LogIndex,
    Message,
    MessageType,
    NodeId,
    NotLeader,
    RaftConfig,
    Term,
)
from tidelog.node.replica import Replica
from tidelog.node.storage import LogConfig
from tidelog.proto import broker_pb2 as pb
from tidelog.proto.batch import validate_batch

from tests.clusters import running_cluster
from tests.node.wire import batch_of, create_topic, stub

pytestmark = [pytest.mark.timeout(180)]
cluster_test = pytest.mark.cluster

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

RECORDS_PER_BATCH = 5
BATCHES = 4
UNDER_REPLICATED_WAIT_S = 15.0  # the node's liveness window is 3 s (3 election timeouts)
CAUGHT_UP_WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("partition-metrics"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}) as running:
        yield running


def scrape(node: LocalNode) -> Series:
    """(sample name, labels) -> value of every tidelog_ sample the node serves."""
    with urllib.request.urlopen(f"http://{node.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("tidelog_")}


def get(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def of(topic: str, partition: int = 0) -> dict[str, str]:
    return {"topic": topic, "partition": str(partition)}


def wait_for(what: str, timeout_s: float, check: Callable[[], bool]) -> float:
    """Polls `check` until true; returns the seconds it took (fails after `timeout_s`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


@cluster_test
def test_offsets_and_leadership_match_what_was_produced(cluster: LocalCluster) -> None:
    topic = "metrics-offsets"
    assert create_topic(cluster.nodes[0].address, topic, partitions=2, rf=3) \
        .results[0].error == pb.NONE
    leader_id = cluster.settled_leader_of(topic, 0)
    leader = cluster.node(leader_id)
    before = scrape(leader)
    broker = stub(leader.address)
    last = -1
    for i in range(BATCHES):
        reply = broker.Produce(pb.ProduceRequest(
            topic=topic, partition=0, acks=pb.ACKS_ALL, timeout_ms=10_000,
            batches=batch_of([b"r%d-%d" % (i, j) for j in range(RECORDS_PER_BATCH)])), timeout=15)
        last = reply.last_offset
    after = scrape(leader)

    # The leader answered acks=all: its high watermark covers the last record, and its log ends
    # there (nothing else was written to this partition).
    assert get(after, "tidelog_partition_high_watermark", **of(topic)) == last + 1
    assert get(after, "tidelog_partition_log_end_offset", **of(topic)) == last + 1
    start = get(after, "tidelog_partition_log_start_offset", **of(topic))
    assert start is not None and last + 1 - start >= BATCHES * RECORDS_PER_BATCH
    grew = get(after, "tidelog_partition_size_bytes", **of(topic))
    was = get(before, "tidelog_partition_size_bytes", **of(topic))
    assert grew is not None and was is not None and grew > was
    assert (get(after, "tidelog_partition_segments", **of(topic)) or 0) >= 1
    # The same numbers the Metadata RPC reports from the leader.
    view = metadata(leader.address, [topic]).topics[0].partitions[0]
    assert view.high_watermark == last + 1 and view.log_end_offset == last + 1
    # Rounds of AppendEntries were timed on the leader (one per follower at a time).
    assert (get(after, "tidelog_raft_append_round_trip_seconds_count") or 0) > \
        (get(before, "tidelog_raft_append_round_trip_seconds_count") or 0)

    # Across the nodes (retried while a leadership move settles: the balancer may still be
    # moving partition 1, or an internal topic's partition, to its preferred leader).
    problems: list[str] = []

    def consistent() -> bool:
        problems[:] = cross_node_problems(cluster, topic)
        return not problems

    try:
        wait_for("one consistent view of leadership across the nodes", CAUGHT_UP_WAIT_S,
                 consistent)
    except AssertionError:
        raise AssertionError(f"inconsistent leadership series: {problems}") from None


def cross_node_problems(cluster: LocalCluster, topic: str) -> list[str]:
    """What is wrong with the nodes' leadership series of `topic` (empty when right): each
    partition led by exactly the node Metadata names, in-sync replicas on that leader only,
    one term; per node, partitions_led equal to its leader series, nothing offline, and one
    metadata leader in the cluster."""
    scrapes = {n.id: scrape(n) for n in cluster.nodes}
    answer = metadata(cluster.nodes[0].address, [topic]).topics[0]
    problems = []
    for partition, view in enumerate(answer.partitions):
        labels = of(topic, partition)
        leads = {i: get(s, "tidelog_partition_leader", **labels) for i, s in scrapes.items()}
        if sorted(leads.values()) != [0, 0, 1] or leads[view.leader_id] != 1:
            problems.append(f"partition {partition}: leader series {leads}, Metadata names "
                            f"{view.leader_id}")
        for node_id, s in scrapes.items():
            if get(s, "tidelog_partition_replicas", **labels) != 3:
                problems.append(f"node {node_id}: replicas of {partition} not 3")
            in_sync = get(s, "tidelog_partition_in_sync_replicas", **labels)
            if in_sync != (3 if leads[node_id] == 1 else None):
                problems.append(f"node {node_id}: in-sync of {partition} is {in_sync}")
        terms = {get(s, "tidelog_raft_term", **labels) for s in scrapes.values()}
        if len(terms) != 1 or None in terms:
            problems.append(f"partition {partition}: terms {terms}")
    for node_id, s in scrapes.items():
        led = sum(v for (name, _), v in s.items() if name == "tidelog_partition_leader")
        if get(s, "tidelog_partitions_led") != led:
            problems.append(f"node {node_id}: partitions_led != {led}")
        if get(s, "tidelog_partitions_offline") != 0:
            problems.append(f"node {node_id}: offline {get(s, 'tidelog_partitions_offline')}")
    if sum(get(s, "tidelog_metadata_leader") or 0 for s in scrapes.values()) != 1:
        problems.append("not exactly one metadata leader")
    return problems


@cluster_test
def test_a_killed_follower_makes_the_idle_partition_under_replicated(
        cluster: LocalCluster) -> None:
    """No write after the kill: the follower's match stays at the commit index, so only the
    liveness half of "in sync" (Replica.in_sync_replicas with ReplicaManager.alive) sees it go."""
    topic = "metrics-replication"
    assert create_topic(cluster.nodes[0].address, topic, partitions=1, rf=3) \
        .results[0].error == pb.NONE
    leader = cluster.node(cluster.settled_leader_of(topic, 0))
    wait_for("no under-replicated partition on the leader", CAUGHT_UP_WAIT_S,
             lambda: get(scrape(leader), "tidelog_partitions_under_replicated") == 0)
    # Not the metadata leader: killing it would leave the metadata group (`__metadata`, held by
    # every node) briefly leaderless, and the leader's partitions_offline checked below at 1.
    metadata_leader = metadata(leader.address, []).metadata_leader_id
    follower = next(n for n in cluster.nodes if n.id not in (leader.id, metadata_leader))
    cluster.kill(follower.id)
    try:
        took = wait_for("under-replicated > 0 on the leader", UNDER_REPLICATED_WAIT_S,
                        lambda: (get(scrape(leader), "tidelog_partitions_under_replicated")
                                 or 0) > 0)
        print(f"under-replicated on node {leader.id} {took:.1f} s after killing {follower.id}")
        series = scrape(leader)
        assert get(series, "tidelog_partition_in_sync_replicas", **of(topic)) == 2
        assert get(series, "tidelog_partition_replicas", **of(topic)) == 3
        assert get(series, "tidelog_partitions_offline") == 0  # a majority still leads
        # `topic describe` / `cluster status` show the same in-sync set.
        view = metadata(leader.address, [topic]).topics[0].partitions[0]
        assert follower.id not in view.in_sync and len(view.in_sync) == 2
    finally:
        cluster.start(follower.id)
        cluster.wait_healthy(timeout_s=60)
    took = wait_for("under-replicated back to 0 on the leader", CAUGHT_UP_WAIT_S,
                    lambda: get(scrape(leader), "tidelog_partitions_under_replicated") == 0)
    print(f"back to 0 {took:.1f} s after node {follower.id} was healthy again")
    assert get(scrape(leader), "tidelog_partition_in_sync_replicas", **of(topic)) == 3


@cluster_test
def test_killing_a_leader_counts_an_election_and_leader_changes(cluster: LocalCluster) -> None:
    topic = "metrics-failover"
    assert create_topic(cluster.nodes[0].address, topic, partitions=1, rf=3) \
        .results[0].error == pb.NONE
    victim = cluster.node(cluster.settled_leader_of(topic, 0))
    survivors = [n for n in cluster.nodes if n.id != victim.id]
    before = {n.id: scrape(n) for n in survivors}
    cluster.kill(victim.id)
    try:
        wait_for("a survivor leads the partition", CAUGHT_UP_WAIT_S, lambda: any(
            get(scrape(n), "tidelog_partition_leader", **of(topic)) == 1 for n in survivors))
        after = {n.id: scrape(n) for n in survivors}
        elections = sum((get(after[i], "tidelog_raft_elections_total") or 0)
                        - (get(before[i], "tidelog_raft_elections_total") or 0) for i in after)
        assert elections >= 1, "the new leader's election was not counted"
        for node_id in after:  # each survivor's replica saw the leader move to someone new
            changes = (get(after[node_id], "tidelog_raft_leader_changes_total") or 0) \
                - (get(before[node_id], "tidelog_raft_leader_changes_total") or 0)
            assert changes >= 1, f"node {node_id} counted no leader change"
            assert (get(after[node_id], "tidelog_raft_term", **of(topic)) or 0) > \
                (get(before[node_id], "tidelog_raft_term", **of(topic)) or 0)
    finally:
        cluster.start(victim.id)
        cluster.wait_healthy(timeout_s=60)


def cluster_views(nodes: list[LocalNode]) -> dict[int, Series]:
    """Scrapes of the nodes that answer and export the cluster-wide view (`tidelog_cluster_*`,
    the metadata leader only); each must call itself the metadata leader."""
    views = {}
    for node in nodes:
        try:
            series = scrape(node)
        except OSError:  # stopping or starting
            continue
        if get(series, "tidelog_cluster_nodes") is not None:
            assert get(series, "tidelog_metadata_leader") == 1, f"node {node.id} is no leader"
            views[node.id] = series
    return views


def one_view_with(nodes: list[LocalNode], alive: int, offline: int) -> bool:
    views = cluster_views(nodes)
    return len(views) == 1 and all(
        get(s, "tidelog_cluster_nodes") == 3 and get(s, "tidelog_cluster_nodes_alive") == alive
        and get(s, "tidelog_cluster_partitions_offline") == offline for s in views.values())


@cluster_test
def test_a_partition_whose_only_replica_is_down_is_offline_on_the_metadata_leader(
        cluster: LocalCluster) -> None:
    """RF=1, its node SIGKILLed: no node holds a replica of it any more, so no node's
    `tidelog_partitions_offline` can count it; the metadata leader's cluster view does (a new
    metadata leader's, when the killed node led the metadata group)."""
    topic = "metrics-cluster-offline"
    assert create_topic(cluster.nodes[0].address, topic, partitions=1, rf=1) \
        .results[0].error == pb.NONE
    owner = cluster.node(metadata(cluster.nodes[0].address, [topic])
                         .topics[0].partitions[0].replicas[0])
    survivors = [n for n in cluster.nodes if n.id != owner.id]
    wait_for("one metadata leader's view: 3 nodes alive, nothing offline", CAUGHT_UP_WAIT_S,
             lambda: one_view_with(cluster.nodes, alive=3, offline=0))
    cluster.kill(owner.id)
    try:
        took = wait_for("the partition offline in the metadata leader's view", CAUGHT_UP_WAIT_S,
                        lambda: one_view_with(survivors, alive=2, offline=1))
        print(f"cluster view: offline 1 {took:.1f} s after killing node {owner.id}")
        for node in survivors:  # nobody holds a replica of it: the per-node count misses it
            assert get(scrape(node), "tidelog_partition_leader", **of(topic)) is None
    finally:
        cluster.start(owner.id)
        cluster.wait_healthy(timeout_s=60)
    wait_for("nothing offline once the node is back", CAUGHT_UP_WAIT_S,
             lambda: one_view_with(cluster.nodes, alive=3, offline=0))


def test_a_proposal_to_a_follower_is_counted_as_dropped(tmp_path: Path) -> None:
    """A real Replica that has not won an election refuses proposals (NotLeader), and the
    refusal is counted; the cluster cannot aim one at a follower on purpose (the Produce handler
    answers NOT_LEADER before proposing)."""

    async def propose_to_follower() -> None:
        replica = Replica(group="g", directory=tmp_path / "g", log_config=LogConfig(),
                          raft_config=RaftConfig(node_id=NodeId(1), voters=(NodeId(1), NodeId(2))),
                          committer=GroupCommitter(), send=lambda group, message: None)
        batch = batch_of([b"v"])
        try:
            with pytest.raises(NotLeader):
                replica.propose([(batch, validate_batch(batch, max_bytes=1 << 20))])
        finally:
            await replica.close()

    before = REGISTRY.get_sample_value("tidelog_raft_proposals_dropped_total") or 0
    asyncio.run(propose_to_follower())
    assert REGISTRY.get_sample_value("tidelog_raft_proposals_dropped_total") == before + 1


def test_an_append_round_is_timed_once_per_follower_and_ends_only_on_its_ack() -> None:
    """RaftObserver on real Raft messages: one timed append per (group, follower); a later
    append while it runs is not timed; an ack below it does not end it; a refusal or an ack of
    another term ends it unmeasured; an ack covering it is one observation."""
    observer = RaftObserver()
    leader, follower = NodeId(1), NodeId(2)

    def append(last: int, term: int = 3) -> Message:
        entry = Entry(term=Term(term), index=LogIndex(last), count=1, kind=EntryKind.DATA)
        return Message(type=MessageType.APPEND, frm=leader, to=follower, term=Term(term),
                       entries=(entry,))

    def ack(index: int, term: int = 3, reject: bool = False) -> Message:
        return Message(type=MessageType.APPEND_RESP, frm=follower, to=leader, term=Term(term),
                       index=LogIndex(index), reject=reject)

    def observed() -> float:
        return REGISTRY.get_sample_value("tidelog_raft_append_round_trip_seconds_count") or 0

    start = observed()
    observer.sent("g", append(10))
    observer.sent("g", append(20))  # a round is running for this follower: not timed
    observer.received("g", ack(5))  # below the timed append: still running
    assert observed() == start
    observer.received("g", ack(10))  # covers it
    assert observed() == start + 1
    observer.received("g", ack(20))  # nothing timed any more
    assert observed() == start + 1
    observer.sent("g", append(30))
    observer.received("g", ack(25, reject=True))  # refused: the round ends unmeasured
    observer.received("g", ack(30))
    assert observed() == start + 1
    observer.sent("g", append(40))
    observer.received("g", ack(40, term=4))  # another term: not this round's answer
    observer.received("g", ack(40))
    assert observed() == start + 1
    observer.sent("g", append(50))
    observer.unreachable(int(follower))  # the transport lost it: forgotten
    observer.received("g", ack(50))
    assert observed() == start + 1
