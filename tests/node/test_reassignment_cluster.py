"""Partition reassignment on a real 4-node cluster (one module cluster): a replica moves onto the
node that has none of the partition while an acks=all producer runs (nothing acknowledged lost,
per-key order kept, the catch-up rate measured on the new node's disk within the throttle),
replication factor 1 -> 3 -> 1, the partition leader killed mid-move, the CLI's plan / execute /
verify, and plans naming an unknown node or topic refused before anything starts."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client.admin import Admin
from tidelog.client.cli import main as cli_main
from tidelog.client.consumer import Consumer
from tidelog.client.producer import Producer
from tidelog.client.records import TopicPartition
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

ENV = {"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2", "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}
NODES = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("reassign"), ENV, nodes=4) as running:
        yield running


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Admin]:
    with Admin(cluster.bootstrap, request_timeout_ms=20_000) as a:
        # Every node in some replica list: the metadata knows each node as a target even before
        # its registration is committed (a node registers a moment after it is healthy; seen
        # once as "node 3 is not a node of this cluster" right after the start).
        a.create_topic("everywhere", partitions=1, replication_factor=len(NODES))
        yield a


def replica_dir(cluster: LocalCluster, node: int, topic: str, partition: int) -> Path | None:
    found = list((cluster.node(node).data_dir / "partitions").glob(f"{topic}-{partition}.*"))
    return found[0] if found else None


def log_bytes(cluster: LocalCluster, node: int, topic: str, partition: int) -> int:
    directory = replica_dir(cluster, node, topic, partition)
    if directory is None:
        return 0
    total = 0
    for f in directory.glob("*.log"):
        with contextlib.suppress(FileNotFoundError):  # a segment deleted meanwhile
            total += f.stat().st_size
    return total


def scrape(cluster: LocalCluster, node: int, name: str) -> float:
    """The sum of a metric's samples on one node's /metrics."""
    import urllib.request

    url = f"http://{cluster.node(node).metrics_address}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def wait_moved(admin: Admin, topic: str, targets: dict[int, tuple[int, ...]],
               timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        current = admin.current_assignment([topic])
        moving = [s for s in admin.list_partition_reassignments([topic])]
        if not moving and all(current[(topic, p)] == t for p, t in targets.items()):
            return
        assert time.monotonic() < deadline, f"not moved in {timeout_s} s: {current} {moving}"
        time.sleep(0.05)


def produce_backlog(cluster: LocalCluster, topic: str, count: int) -> list[bytes]:
    values = [os.urandom(1000) for _ in range(count)]  # incompressible: lz4 cannot shrink it
    with Producer(cluster.bootstrap, linger_ms=20) as producer:
        for value in values:
            producer.send(topic, value, partition=0)
        producer.flush(30)
    return values


def read_all(cluster: LocalCluster, topic: str, partition: int = 0) -> list[tuple[bytes, bytes]]:
    tp = TopicPartition(topic, partition)
    with Admin(cluster.bootstrap) as a:
        end = a.list_offsets({tp: "latest"})[tp]
    out: list[tuple[bytes, bytes]] = []
    with Consumer(cluster.bootstrap) as consumer:
        consumer.assign([tp])
        consumer.seek_to_beginning([tp])
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            out += [(r.key or b"", r.value or b"") for r in consumer.poll(0.5)]
    return out


class KeyedProducer(threading.Thread):
    """acks=all, 8 keys, value = key:seq; records what was acknowledged."""

    def __init__(self, cluster: LocalCluster, topic: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.topic = cluster, topic
        self.stop = threading.Event()
        self.acked: list[tuple[str, int]] = []
        self.failed = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        with Producer(self.cluster.bootstrap, acks="all", linger_ms=5) as producer:
            seq = 0
            while not self.stop.is_set():
                key = f"k{seq % 8}"
                producer.send(self.topic, f"{key}:{seq}".encode(), key=key, partition=0,
                              callback=lambda md, err, k=key, s=seq: self._done(k, s, err))
                seq += 1
                time.sleep(0.01)
            producer.flush(30)

    def _done(self, key: str, seq: int, error: BaseException | None) -> None:
        with self._lock:
            if error is None:
                self.acked.append((key, seq))
            else:
                self.failed += 1


def test_move_onto_the_empty_node_under_acks_all_load(cluster: LocalCluster,
                                                      admin: Admin) -> None:
    """The preferred leader's replica moves to the node without one (so leadership moves too):
    nothing acknowledged is lost, each key's records stay in order, and the bytes the new
    node's log grew by over the catch-up stay within the throttle."""
    admin.create_topic("moves", partitions=1, replication_factor=3)
    (current,) = admin.current_assignment(["moves"]).values()
    outside = next(n for n in NODES if n not in current)
    target = (outside, *current[1:])
    produce_backlog(cluster, "moves", 800)  # about 800 KB to copy
    deadline = time.monotonic() + 5
    while (backlog := max((sizes := {n: log_bytes(cluster, n, "moves", 0)
                                     for n in current}).values())) <= 700_000:
        assert time.monotonic() < deadline, f"the replicas' log bytes after the backlog: {sizes}"
        time.sleep(0.05)
    throttle = 400_000
    writer = KeyedProducer(cluster, "moves")
    writer.start()
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        results = admin.alter_partition_reassignments({("moves", 0): target},
                                                       throttle_bytes_per_s=throttle)
        assert len(results) == 1 and results[0].error is None and not results[0].noop, results
        arrived, t1 = 0, None
        while time.monotonic() - t0 < 30:
            arrived = log_bytes(cluster, outside, "moves", 0)
            if arrived >= backlog:
                t1 = time.monotonic()
                break
            time.sleep(0.02)
        assert t1 is not None, f"the learner got {arrived} of {backlog} bytes in 30 s"
        wait_moved(admin, "moves", {0: target})
    finally:
        writer.stop.set()
        writer.join(30)
    rate = arrived / (t1 - t0)
    print(f"catch-up: {arrived} bytes in {t1 - t0:.2f} s = {rate:.0f} B/s at a {throttle} B/s "
          f"throttle ({rate / throttle:.2f}x); {len(writer.acked)} records acknowledged "
          f"meanwhile, {writer.failed} failed")
    assert rate <= throttle * 1.1, "the catch-up went faster than the throttle"
    assert rate >= throttle * 0.25, "the catch-up crawled far below the throttle"
    assert writer.acked, "the producer got nothing acknowledged during the move"
    throttled = sum(scrape(cluster, n, "tidelog_reassignment_throttled_bytes_total")
                    for n in NODES)
    assert throttled >= 0.9 * backlog, (throttled, backlog)  # the copy went through the bucket
    assert all(scrape(cluster, n, "tidelog_partition_reassignments") == 0 for n in NODES)
    records = read_all(cluster, "moves")
    seen: dict[str, list[int]] = {}
    for key, value in records:
        if key:
            seen.setdefault(key.decode(), []).append(int(value.decode().split(":")[1]))
    lost = [a for a in writer.acked if a[1] not in set(seen.get(a[0], []))]
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
    for key, seqs in seen.items():
        assert seqs == sorted(seqs), f"key {key} out of order"
    deadline = time.monotonic() + 15  # the moved-away node deletes its replica once complete
    while replica_dir(cluster, current[0], "moves", 0) is not None:
        assert time.monotonic() < deadline, "the old replica was not deleted"
        time.sleep(0.1)
    assert replica_dir(cluster, outside, "moves", 0) is not None


def test_replication_factor_one_to_three_and_back(cluster: LocalCluster,
                                                  admin: Admin) -> None:
    admin.create_topic("rf", partitions=1, replication_factor=1)
    values = produce_backlog(cluster, "rf", 50)
    assert cli_main(["--bootstrap", cluster.bootstrap, "topic", "alter", "rf",
                     "--replication-factor", "3"]) == 0
    (grown,) = admin.current_assignment(["rf"]).values()
    assert len(grown) == 1  # committed only at completion
    moving = admin.list_partition_reassignments(["rf"])
    target = moving[0].target if moving else admin.current_assignment(["rf"])[("rf", 0)]
    assert len(target) == 3
    wait_moved(admin, "rf", {0: target})
    (topic,) = admin.describe_topics_from_leaders(["rf"])
    assert sorted(topic.partitions[0].in_sync) == sorted(target)
    assert all(log_bytes(cluster, n, "rf", 0) > 0 for n in target)
    plan = admin.alter_replication_factor("rf", 1)
    (shrunk,) = plan.values()
    assert shrunk == target[:1]  # the preferred leader stays
    wait_moved(admin, "rf", {0: shrunk})
    deadline = time.monotonic() + 15
    while any(replica_dir(cluster, n, "rf", 0) is not None for n in target[1:]):
        assert time.monotonic() < deadline, "the removed replicas were not deleted"
        time.sleep(0.1)
    assert [v for _, v in read_all(cluster, "rf")] == values


def test_a_move_completes_after_its_leader_is_killed(cluster: LocalCluster,
                                                     admin: Admin) -> None:
    admin.create_topic("crash", partitions=1, replication_factor=3)
    (current,) = admin.current_assignment(["crash"]).values()
    outside = next(n for n in NODES if n not in current)
    target = (outside, *current[1:])
    values = produce_backlog(cluster, "crash", 300)
    backlog = max(log_bytes(cluster, n, "crash", 0) for n in current)  # the leader's, at least
    assert backlog > 250_000
    admin.alter_partition_reassignments({("crash", 0): target}, throttle_bytes_per_s=150_000)
    deadline = time.monotonic() + 20
    while (arrived := log_bytes(cluster, outside, "crash", 0)) < backlog * 0.3:
        assert time.monotonic() < deadline, "the learner is not catching up"
        time.sleep(0.02)
    leader = cluster.leader_of("crash", 0)  # the driver of the move (the balancer stays away)
    assert scrape(cluster, leader, "tidelog_reassignment_learner_lag_offsets") > 0
    assert scrape(cluster, leader, "tidelog_partition_reassignments") >= 1
    cluster.kill(leader)  # mid catch-up: the throttle lets no more than 150 KB/s through
    print(f"killed leader {leader} with the learner at {arrived} of {backlog} bytes")
    try:
        with Admin([n.address for n in cluster.nodes if n.id != leader],
                   request_timeout_ms=20_000) as survivors:
            wait_moved(survivors, "crash", {0: target}, timeout_s=45)
            print(f"killed leader {leader} mid-move {current} -> {target}: completed")
    finally:
        cluster.start(leader)
        cluster.wait_healthy(timeout_s=60)
    assert [v for _, v in read_all(cluster, "crash")] == values
    if leader not in target:
        deadline = time.monotonic() + 20  # deleted on its restart (it missed the completion)
        while replica_dir(cluster, leader, "crash", 0) is not None:
            assert time.monotonic() < deadline, "the restarted old replica kept its data"
            time.sleep(0.05)


def test_cli_plan_execute_verify(cluster: LocalCluster, admin: Admin, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    admin.create_topic("cli", partitions=2, replication_factor=2)
    current = admin.current_assignment(["cli"])
    brokers = sorted({n for r in current.values() for n in r} ^ set(NODES))[:1] or [4]
    brokers = sorted(set(brokers) | set(current[("cli", 0)][:1]))
    plan_file = tmp_path / "plan.json"
    boot = ["--bootstrap", cluster.bootstrap]
    assert cli_main([*boot, "partition", "reassign", "--plan", str(plan_file), "--topics",
                     "cli", "--brokers", ",".join(map(str, brokers))]) == 0
    plan = json.loads(plan_file.read_text())
    assert plan["version"] == 1 and plan["partitions"]
    for entry in plan["partitions"]:
        assert set(entry["replicas"]) <= set(brokers)
        assert entry["current"] == list(current[(entry["topic"], entry["partition"])])
    capsys.readouterr()
    assert cli_main([*boot, "partition", "reassign", "--verify", str(plan_file)]) == 1
    assert "not started" in capsys.readouterr().out
    assert cli_main([*boot, "partition", "reassign", "--execute", str(plan_file),
                     "--throttle", "10000000"]) == 0
    assert "started" in capsys.readouterr().out
    # resumable: executing again changes nothing and fails nothing
    assert cli_main([*boot, "partition", "reassign", "--execute", str(plan_file)]) == 0
    capsys.readouterr()
    deadline = time.monotonic() + 30
    while cli_main([*boot, "partition", "reassign", "--verify", str(plan_file),
                    "--output", "json"]) != 0:
        rows = json.loads(capsys.readouterr().out)
        assert {r["state"] for r in rows} <= {"in_progress", "done"}, rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    rows = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in rows] == ["done"] * len(plan["partitions"])
    assert cli_main([*boot, "partition", "reassign", "--verify", str(plan_file)]) == 0
    assert f"all {len(plan['partitions'])} partitions done" in capsys.readouterr().out
    # --rebalance: 2 partitions x 2 replicas over 4 nodes: one replica on each node
    assert cli_main([*boot, "partition", "reassign", "--plan", "-", "--rebalance",
                     "--topics", "cli"]) == 0
    moves = json.loads(capsys.readouterr().out)["partitions"]
    layout = {**admin.current_assignment(["cli"]),
              **{(e["topic"], e["partition"]): tuple(e["replicas"]) for e in moves}}
    assert sorted(n for r in layout.values() for n in r) == list(NODES), layout
    assert len({r[0] for r in layout.values()}) == 2  # two different preferred leaders
    if moves:  # executed, then verified done
        rebalance = tmp_path / "rebalance.json"
        rebalance.write_text(json.dumps({"version": 1, "partitions": moves}))
        assert cli_main([*boot, "partition", "reassign", "--execute", str(rebalance)]) == 0
        wait_moved(admin, "cli", {p: layout[("cli", p)] for _, p in layout})
        assert cli_main([*boot, "partition", "reassign", "--verify", str(rebalance)]) == 0


def test_a_plan_naming_an_unknown_node_or_topic_is_refused(
        cluster: LocalCluster, admin: Admin, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    admin.create_topic("refuse", partitions=1, replication_factor=1)
    before = admin.current_assignment(["refuse"])
    boot = ["--bootstrap", cluster.bootstrap]
    bad_node = tmp_path / "node.json"
    bad_node.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": "refuse", "partition": 0, "replicas": [1, 9]}]}))
    capsys.readouterr()
    assert cli_main([*boot, "partition", "reassign", "--execute", str(bad_node)]) == 2
    err = capsys.readouterr().err
    assert "node 9 is not a node of this cluster" in err and "nothing started" in err
    bad_topic = tmp_path / "topic.json"
    bad_topic.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": "no-such-topic", "partition": 0, "replicas": [1]}]}))
    assert cli_main([*boot, "partition", "reassign", "--execute", str(bad_topic)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main([*boot, "partition", "reassign", "--plan", str(tmp_path / "p.json"),
                     "--topics", "refuse", "--brokers", "1,9"]) == 2
    assert "not a node of this cluster" in capsys.readouterr().err
    # the node refuses it too, for a client that skips the CLI's check
    (result,) = admin.alter_partition_reassignments({("refuse", 0): (1, 9)})
    assert result.error is not None and "node 9 is not a node" in str(result.error)
    assert admin.current_assignment(["refuse"]) == before
    assert not admin.list_partition_reassignments(["refuse"])


def test_cancel_mid_catch_up_goes_back_and_deletes_the_learner(
        cluster: LocalCluster, admin: Admin, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    admin.create_topic("cancel", partitions=1, replication_factor=1)
    (current,) = admin.current_assignment(["cancel"]).values()
    joining = next(n for n in NODES if n not in current)
    values = produce_backlog(cluster, "cancel", 300)
    plan = tmp_path / "cancel.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": "cancel", "partition": 0, "replicas": [*current, joining]}]}))
    boot = ["--bootstrap", cluster.bootstrap]
    assert cli_main([*boot, "partition", "reassign", "--execute", str(plan),
                     "--throttle", "100000"]) == 0
    deadline = time.monotonic() + 20
    while log_bytes(cluster, joining, "cancel", 0) == 0:  # 300 KB at 100 KB/s: 3 s to go
        assert time.monotonic() < deadline, "the learner got nothing"
        time.sleep(0.02)
    capsys.readouterr()
    assert cli_main([*boot, "partition", "reassign", "--cancel", str(plan)]) == 0
    assert "cancelled" in capsys.readouterr().out
    wait_moved(admin, "cancel", {0: current})
    deadline = time.monotonic() + 15
    while replica_dir(cluster, joining, "cancel", 0) is not None:
        assert time.monotonic() < deadline, "the cancelled learner kept its replica"
        time.sleep(0.05)
    assert cli_main([*boot, "partition", "reassign", "--verify", str(plan)]) == 1
    assert "not started" in capsys.readouterr().out  # back where it began: the plan is undone
    assert [v for _, v in read_all(cluster, "cancel")] == values
