"""Consumer-group metrics on a real 3-node cluster: the coordinator's /metrics and
`tidelog group describe|list --output json` show lag in records and in seconds.

The topic has 3 partitions at replication factor 1 (one leader per node), so the coordinator
hosts at most one of them: its lag refresher must ask the other leaders over the peer Broker.
Records are produced with timestamps set by the test, so lag in seconds is known exactly:
scrape time minus the first unconsumed record's timestamp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tidelog.client import Admin, Consumer, Producer, TopicPartition, group_lag
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

TOPIC = "lagged"
GROUP = "lag-g"
PARTITIONS = 3
BEHIND_S = 30  # the unconsumed records are stamped this far in the past


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("group-metrics"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "4"}) as running:
        yield running


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Admin]:
    with Admin(cluster.bootstrap) as client:
        yield client


@dataclass(frozen=True, slots=True)
class Scrape:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    before_s: float  # wall clock just before and just after the scrape
    after_s: float

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def scrape(cluster: LocalCluster, node_id: int) -> Scrape:
    before = time.time()
    with urllib.request.urlopen(f"http://{cluster.node(node_id).metrics_address}/metrics",
                                timeout=10) as response:
        text = response.read().decode()
    after = time.time()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return Scrape(samples, before, after)


def wait_for(what: str, probe: Callable[[], object], timeout_s: float = 15.0) -> object:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # noqa: BLE001 - mid-refresh or mid-election: ask again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def cli(cluster: LocalCluster, *args: str) -> object:
    done = subprocess.run([sys.executable, "-m", "tidelog.client.cli", "--bootstrap",
                           cluster.bootstrap, "group", *args, "--output", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def coordinator_of(admin: Admin) -> int:
    """Asked each time: the leader balancer may move __consumer_offsets leaders early on."""
    return admin.describe_group(GROUP).coordinator_id


def partition_labels(p: int) -> dict[str, str]:
    return {"group": GROUP, "topic": TOPIC, "partition": str(p)}


def produce(cluster: LocalCluster, per_partition: int, first_ms: int) -> None:
    """`per_partition` records on each partition, the i-th stamped first_ms + i s (apart, so a
    lag in seconds taken from the batch's max timestamp, or the wrong record, is seconds off)."""
    with Producer(cluster.bootstrap, linger_ms=5) as producer:
        for p in range(PARTITIONS):
            for i in range(per_partition):
                producer.send(TOPIC, value=f"{p}-{i}", partition=p,
                              timestamp=first_ms + i * 1000)
        producer.flush()


def poll_all(consumer: Consumer, count: int) -> None:
    got = 0
    deadline = time.monotonic() + 20
    while got < count:
        assert time.monotonic() < deadline, f"consumed {got} of {count} records"
        got += len(consumer.poll(0.5))
    assert got == count


@pytest.fixture(scope="module")
def paused(cluster: LocalCluster, admin: Admin) -> Iterator[tuple[Consumer, int]]:
    """A member that consumed and committed everything, then stopped polling while records
    stamped BEHIND_S in the past arrived: (consumer, first unconsumed record's ms)."""
    admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=1)
    produce(cluster, 2, int(time.time() * 1000))
    consumer = Consumer(cluster.bootstrap, group_id=GROUP, topics=[TOPIC],
                        auto_offset_reset="earliest", enable_auto_commit=False,
                        session_timeout_ms=10_000)
    try:
        poll_all(consumer, 2 * PARTITIONS)
        consumer.commit()
        first_ms = int(time.time() * 1000) - BEHIND_S * 1000
        produce(cluster, 4, first_ms)
        yield consumer, first_ms
    finally:
        consumer.close()


def test_lag_and_lag_seconds_grow_while_paused_and_are_zero_once_committed(
        cluster: LocalCluster, admin: Admin, paused: tuple[Consumer, int]) -> None:
    consumer, first_ms = paused
    leaders = {p.leader_id for p in admin.describe_topics([TOPIC])[0].partitions}
    assert len(leaders) == PARTITIONS, "one leader per node: the coordinator lacks two of them"
    # Offsets count the leader's Raft no-op too: the committed offset is read, not assumed.
    committed = {tp.partition: c.offset for tp, c in admin.list_group_offsets(GROUP).items()}
    assert sorted(committed) == list(range(PARTITIONS))

    def lagging(expected: int) -> Scrape | None:
        got = scrape(cluster, coordinator_of(admin))
        ok = all(got.value("tidelog_consumer_group_lag", **partition_labels(p)) == expected
                 for p in range(PARTITIONS))
        return got if ok else None

    first = wait_for("lag 4 on every partition", lambda: lagging(4))
    assert isinstance(first, Scrape)
    for p in range(PARTITIONS):
        assert first.value("tidelog_consumer_group_committed_offset",
                           **partition_labels(p)) == committed[p]
        seconds = first.value("tidelog_consumer_group_lag_seconds", **partition_labels(p))
        assert seconds is not None
        # Exactly the scrape's clock minus the first unconsumed record's timestamp.
        assert first.before_s - first_ms / 1000 - 0.01 <= seconds \
            <= first.after_s - first_ms / 1000 + 0.01, (p, seconds)
        assert seconds >= BEHIND_S
    assert first.value("tidelog_consumer_group_members", group=GROUP) == 1
    assert (first.value("tidelog_consumer_group_rebalances_total", group=GROUP) or 0) >= 1
    assert (first.value("tidelog_consumer_groups") or 0) >= 1

    # While the member stays paused, both grow: lag in seconds with time, lag with new records.
    time.sleep(1.0)
    produce(cluster, 2, int(time.time() * 1000))
    later = wait_for("lag 6 on every partition", lambda: lagging(6))
    assert isinstance(later, Scrape)
    for p in range(PARTITIONS):
        before = first.value("tidelog_consumer_group_lag_seconds", **partition_labels(p))
        now = later.value("tidelog_consumer_group_lag_seconds", **partition_labels(p))
        assert before is not None and now is not None and now >= before + 1.0, (p, before, now)

    # The CLI computes the same figures itself (committed offset + one batch fetched there).
    asked = time.time()
    described = cli(cluster, "describe", GROUP)
    answered = time.time()
    assert isinstance(described, dict)
    rows = {row["partition"]: row for row in described["partitions"]}
    assert sorted(rows) == list(range(PARTITIONS))
    for p, row in rows.items():
        assert (row["committed"], row["log_end"], row["lag"]) == (
            committed[p], committed[p] + 6, 6), row
        assert row["first_unconsumed_timestamp_ms"] == first_ms
        assert asked - first_ms / 1000 - 0.01 <= row["lag_seconds"] \
            <= answered - first_ms / 1000 + 0.01, row
    assert described["total"]["lag"] == 6 * PARTITIONS
    listed = {g["group"]: g for g in cli(cluster, "list")}  # type: ignore[union-attr]
    assert listed[GROUP]["lag"] == 6 * PARTITIONS
    assert listed[GROUP]["lag_seconds"] >= BEHIND_S

    # The member resumes, consumes everything and commits: both fall to 0.
    poll_all(consumer, 6 * PARTITIONS)
    consumer.commit()
    caught_up = wait_for("lag 0 on every partition", lambda: lagging(0))
    assert isinstance(caught_up, Scrape)
    for p in range(PARTITIONS):
        assert caught_up.value("tidelog_consumer_group_lag_seconds", **partition_labels(p)) == 0
        assert caught_up.value("tidelog_consumer_group_committed_offset",
                               **partition_labels(p)) == committed[p] + 6
    described = cli(cluster, "describe", GROUP)
    assert isinstance(described, dict)
    assert all((row["lag"], row["lag_seconds"]) == (0, 0.0) for row in described["partitions"])


def test_only_the_coordinator_exports_a_group_and_a_join_counts_a_rebalance(
        cluster: LocalCluster, admin: Admin, paused: tuple[Consumer, int]) -> None:
    coordinator = coordinator_of(admin)
    for node in cluster.nodes:
        if node.id != coordinator:
            others = scrape(cluster, node.id)
            assert others.value("tidelog_consumer_group_members", group=GROUP) is None
            assert others.value("tidelog_consumer_group_lag", **partition_labels(0)) is None
    before = scrape(cluster, coordinator).value("tidelog_consumer_group_rebalances_total",
                                                group=GROUP)
    assert before is not None
    second = Consumer(cluster.bootstrap, group_id=GROUP, topics=[TOPIC],
                      enable_auto_commit=False, session_timeout_ms=10_000)
    try:
        second.poll(0.5)
        joined = wait_for("two members", lambda: scrape(cluster, coordinator_of(admin)).value(
            "tidelog_consumer_group_members", group=GROUP) == 2)
        assert joined
        after = scrape(cluster, coordinator_of(admin)).value(
            "tidelog_consumer_group_rebalances_total", group=GROUP)
        assert after is not None and after > before
    finally:
        second.close()


def test_partitions_left_out_of_an_answer_by_its_byte_budget_are_asked_again(
        cluster: LocalCluster, admin: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 1.2 MB batches on one leader exceed one Fetch answer's budget (the client asks for
    1 MiB): the node sends the first partition's batch and none for the next. Every partition
    still gets its exact timestamp, on the coordinator's /metrics (one partition per read) and
    from Admin.list_group_lag (asked again); giving up at the first empty answer loses one."""
    topic, group, partitions = "wide", "wide-g", 4
    admin.create_topic(topic, partitions=partitions, replication_factor=1)
    leaders = Counter(p.leader_id for p in admin.describe_topics([topic])[0].partitions)
    assert max(leaders.values()) >= 2, leaders  # 4 partitions on 3 nodes
    stamp = int(time.time() * 1000) - BEHIND_S * 1000
    with Producer(cluster.bootstrap) as producer:
        for p in range(partitions):
            producer.send(topic, value=os.urandom(1_200_000), partition=p,
                          timestamp=stamp + p * 1000)
        producer.flush()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    admin.alter_group_offsets(group, dict.fromkeys(tps, 0))  # 0: the leader's no-op, then ours

    asked = time.time()
    lags = admin.list_group_lag(group)
    answered = time.time()
    assert sorted(lags) == tps
    for tp, lag in lags.items():
        first_ms = stamp + tp.partition * 1000
        assert lag.lag >= 1 and lag.first_unconsumed_timestamp_ms == first_ms, (tp, lag)
        assert lag.lag_seconds is not None
        assert asked - first_ms / 1000 - 0.01 <= lag.lag_seconds \
            <= answered - first_ms / 1000 + 0.01, (tp, lag)

    def exported() -> Scrape | None:
        got = scrape(cluster, admin.describe_group(group).coordinator_id)
        labels = [{"group": group, "topic": topic, "partition": str(p)}
                  for p in range(partitions)]
        ok = all(got.value("tidelog_consumer_group_lag_seconds", **one) is not None
                 for one in labels)
        return got if ok else None

    metrics = wait_for("lag in seconds of every wide partition", exported)
    assert isinstance(metrics, Scrape)
    for p in range(partitions):
        first_ms = stamp + p * 1000
        seconds = metrics.value("tidelog_consumer_group_lag_seconds", group=group, topic=topic,
                                partition=str(p))
        assert seconds is not None
        assert metrics.before_s - first_ms / 1000 - 0.01 <= seconds \
            <= metrics.after_s - first_ms / 1000 + 0.01, (p, seconds)

    monkeypatch.setattr(group_lag, "EMPTY_ANSWERS_MAX", 1)  # planted: no second ask
    starved = admin.list_group_lag(group)
    assert any(lag.lag_seconds is None for lag in starved.values()), starved
