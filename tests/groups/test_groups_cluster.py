"""Issue 6 against real node processes and real consumer processes (kill -9 is real).

One 3-node cluster serves the whole module (TIDELOG_OFFSETS_TOPIC_PARTITIONS=8 to spare the two
CI cores); the test that kills a node restarts it before it ends. Consumers are
tests/groups/consumer_worker.py subprocesses that log every record and commit to a file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

WORKER = Path(__file__).with_name("consumer_worker.py")
SESSION_MS = 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("groups"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "8",
                              "TIDELOG_CLEANER_INTERVAL_MS": "1000"}) as running:
        yield running


class Worker:
    def __init__(self, cluster: LocalCluster, group: str, topic: str, out: Path,
                 *extra: str) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), "--bootstrap", cluster.bootstrap, "--group", group,
             "--topic", topic, "--out", str(out), "--session-ms", str(SESSION_MS), *extra],
            stdout=subprocess.DEVNULL, stderr=open(str(out) + ".err", "wb"),  # noqa: SIM115
            start_new_session=True)

    def events(self) -> list[dict]:  # type: ignore[type-arg]
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def records(self) -> list[tuple[int, int, str]]:
        return [tuple(r) for e in self.events() if e["ev"] == "recs" for r in e["r"]]  # type: ignore[misc]

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - the cluster may be mid-failover; keep asking
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} "
                                 f"(last error: {last!r})")
        time.sleep(0.3)


def produce(cluster: LocalCluster, topic: str, values: list[str], partitions: int) -> None:
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        for i, value in enumerate(values):
            producer.send(topic, value=value, partition=i % partitions)
        producer.flush()


def all_committed(admin: Admin, group: str, topic: str, partitions: int) -> bool:
    """The group's committed offsets are the log end of every partition (offset 0 of each
    partition is the Raft no-op of its first leader, so counts do not add up to offsets)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = admin.list_offsets({tp: "latest" for tp in tps})
    committed = admin.list_group_offsets(group, tps)
    return all(tp in committed and committed[tp].offset == ends[tp] for tp in tps)


def stable_assignment(admin: Admin, group: str, members: int) -> dict[str, set[int]] | None:
    g = admin.describe_group(group)
    if g.state != "stable" or len(g.members) != members:
        return None
    return {m.member_id: {tp.partition for tp in m.assignment} for m in g.members}


def check_single_owner(workers: list[Worker]) -> None:
    """From the workers' own logs: a partition is assigned to a new owner only after its old
    owner logged the revocation (one clock: all processes run on this machine)."""
    timeline = sorted((e["ts"], i, e["ev"], p) for i, w in enumerate(workers)
                      for e in w.events() if e["ev"] in ("assign", "revoke", "lost")
                      for p in e["p"])
    owner: dict[int, int] = {}
    for _, who, ev, p in timeline:
        if ev == "assign":
            assert p not in owner, f"partition {p} assigned to worker {who} while worker " \
                                   f"{owner.get(p)} still owned it"
            owner[p] = who
        elif owner.get(p) == who:
            del owner[p]


def test_three_members_share_twelve_partitions_and_a_fourth_takes_one_from_each(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    admin.create_topic("sticky", partitions=12, replication_factor=3)
    for i in range(3):
        workers.append(Worker(cluster, "sticky-g", "sticky", tmp_path / f"w{i}.jsonl"))
    before: dict[str, set[int]] = {}
    wait_until(lambda: (a := stable_assignment(admin, "sticky-g", 3)) is not None
               and before.update(a) is None, 60, "3 stable members")
    assert sorted(len(p) for p in before.values()) == [4, 4, 4]
    workers.append(Worker(cluster, "sticky-g", "sticky", tmp_path / "w3.jsonl"))
    after: dict[str, set[int]] = {}
    wait_until(lambda: (a := stable_assignment(admin, "sticky-g", 4)) is not None
               and after.update(a) is None, 60, "4 stable members")
    assert sorted(len(p) for p in after.values()) == [3, 3, 3, 3]
    for member, partitions in before.items():
        assert after[member] <= partitions and len(partitions - after[member]) == 1
    moved = sum(1 for m, ps in after.items() for p in ps if p not in before.get(m, set()))
    assert moved == 3, "sticky: only the newcomer's three partitions moved"
    check_single_owner(workers)


def test_kill_9_of_a_consumer_moves_its_partitions_after_the_session_timeout_and_skips_nothing(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    admin.create_topic("kill9", partitions=6, replication_factor=3)
    for i in range(3):
        workers.append(Worker(cluster, "kill9-g", "kill9", tmp_path / f"w{i}.jsonl",
                              "--manual-commit"))
    wait_until(lambda: stable_assignment(admin, "kill9-g", 3) is not None
               and all(any(e["ev"] == "assign" for e in w.events()) for w in workers), 60,
               "3 members, each holding its partitions")
    victim = workers[0]
    produce(cluster, "kill9", [f"a{i}" for i in range(1500)], 6)
    wait_until(lambda: victim.records(), 30, "the victim consuming")
    owned: set[int] = set()
    for e in victim.events():
        if e["ev"] == "assign":
            owned |= set(e["p"])
        elif e["ev"] in ("revoke", "lost"):
            owned -= set(e["p"])
    victim_partitions = owned
    assert victim_partitions
    killed_at = time.time()
    victim.kill()
    more = threading.Thread(target=produce, args=(cluster, "kill9",
                                                  [f"b{i}" for i in range(1500)], 6))
    more.start()
    more.join(60)
    expected = {f"a{i}" for i in range(1500)} | {f"b{i}" for i in range(1500)}
    wait_until(lambda: {v for w in workers for _, _, v in w.records()} >= expected, 60,
               "every record consumed by some member")
    # The dead member's partitions went to the survivors, after its session timed out.
    taken = [(e["ts"], p) for w in workers[1:] for e in w.events()
             if e["ev"] == "assign" and e["ts"] > killed_at for p in e["p"]
             if p in victim_partitions]
    assert victim_partitions <= {p for _, p in taken}
    assert min(ts for ts, _ in taken) - killed_at >= SESSION_MS / 1000 * 0.8
    # Duplicates only of records the victim processed after its last commit.
    last_commit: dict[int, int] = {}
    for e in victim.events():
        if e["ev"] == "commit":
            last_commit.update({int(p): o for p, o in e["pos"].items()})
    counts = Counter((p, o) for w in workers for p, o, _ in w.records())
    victim_seen = {(p, o) for p, o, _ in victim.records()}
    for (p, o), n in counts.items():
        if n > 1:
            assert n == 2 and (p, o) in victim_seen and o >= last_commit.get(p, 0), (p, o, n)
    check_single_owner(workers[1:])  # the dead one owns nothing


def test_reset_offsets_by_time_replays_from_there_and_the_cli_shows_the_group(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    admin.create_topic("replay", partitions=2, replication_factor=3)
    produce(cluster, "replay", [f"old{i}" for i in range(100)], 2)
    time.sleep(0.05)
    cut_ms = int(time.time() * 1000)
    time.sleep(0.05)
    produce(cluster, "replay", [f"new{i}" for i in range(40)], 2)
    first = Worker(cluster, "replay-g", "replay", tmp_path / "first.jsonl")
    workers.append(first)
    wait_until(lambda: len(first.records()) >= 140, 60, "everything consumed once")
    wait_until(lambda: all_committed(admin, "replay-g", "replay", 2), 30,
               "auto-commit of everything")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tidelog.client.cli", "--bootstrap",
                               cluster.bootstrap, *args], capture_output=True, text=True,
                              timeout=60)

    refused = cli("group", "reset-offsets", "replay-g", "--topic", "replay", "--to-time",
                  str(cut_ms), "--execute")
    assert refused.returncode == 1 and "active members" in refused.stderr
    described = cli("group", "describe", "replay-g")
    assert described.returncode == 0, described.stderr
    assert "LAG" in described.stdout and "TOTAL" in described.stdout
    assert "replay-g" in cli("group", "list").stdout
    first.stop()
    wait_until(lambda: admin.describe_group("replay-g").state == "empty", 30, "group empty")
    # Taken after the member left: closing commits its position, which may have moved past a
    # trailing control batch (a new leader's no-op) since the auto-commit above.
    committed_all = {tp: o.offset for tp, o in admin.list_group_offsets("replay-g").items()}
    dry = cli("group", "reset-offsets", "replay-g", "--topic", "replay", "--to-time",
              str(cut_ms))
    assert dry.returncode == 0 and "dry run" in dry.stdout, dry.stderr
    assert {tp: o.offset for tp, o in admin.list_group_offsets("replay-g").items()} == \
        committed_all
    done = cli("group", "reset-offsets", "replay-g", "--topic", "replay", "--to-time",
               str(cut_ms), "--execute")
    assert done.returncode == 0, done.stderr
    at_cut = admin.list_offsets({TopicPartition("replay", p): cut_ms for p in range(2)})
    assert {tp: o.offset for tp, o in admin.list_group_offsets("replay-g").items()} == at_cut
    second = Worker(cluster, "replay-g", "replay", tmp_path / "second.jsonl")
    workers.append(second)
    wait_until(lambda: len(second.records()) >= 40, 60, "the replay")
    time.sleep(1.0)
    assert sorted(v for _, _, v in second.records()) == sorted(f"new{i}" for i in range(40))
    second.stop()
    wait_until(lambda: admin.describe_group("replay-g").state == "empty", 30, "group empty")
    # Taken after the member left: closing commits its position, which may have moved past a
    # trailing control batch (a new leader's no-op) since the auto-commit above.
    committed_all = {tp: o.offset for tp, o in admin.list_group_offsets("replay-g").items()}
    consumed = cli("consume", "replay", "--group", "cli-g", "--from-beginning",
                   "--max-messages", "140", "--timeout", "20")
    assert consumed.returncode == 0 and len(consumed.stdout.splitlines()) == 140
    deleted = cli("group", "delete", "replay-g")
    assert deleted.returncode == 0, deleted.stderr
    assert "replay-g" not in cli("group", "list").stdout


def test_kill_9_of_the_coordinator_node_keeps_the_group_and_its_offsets(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    admin.create_topic("cofail", partitions=4, replication_factor=3)
    produce(cluster, "cofail", [f"a{i}" for i in range(400)], 4)
    for i in range(2):
        workers.append(Worker(cluster, "cofail-g", "cofail", tmp_path / f"w{i}.jsonl"))
    wait_until(lambda: all_committed(admin, "cofail-g", "cofail", 4), 60, "all 400 committed")
    before = admin.list_group_offsets("cofail-g")
    coordinator = admin.describe_group("cofail-g").coordinator_id
    cluster.kill(coordinator)
    try:
        produce(cluster, "cofail", [f"b{i}" for i in range(400)], 4)
        wait_until(lambda: {v for w in workers for _, _, v in w.records()}
                   >= {f"b{i}" for i in range(400)}, 60, "consumption after the failover")
        wait_until(lambda: all_committed(admin, "cofail-g", "cofail", 4), 60,
                   "all 800 committed at the new coordinator")
        after = admin.list_group_offsets("cofail-g")
        assert all(after[tp].offset >= before[tp].offset for tp in before)
        group = admin.describe_group("cofail-g")
        assert group.coordinator_id != coordinator and len(group.members) == 2
    finally:
        cluster.start(coordinator)
        cluster.wait_healthy(node_ids=[coordinator])


def test_a_compacted_topic_keeps_the_latest_record_per_key_and_drops_expired_tombstones(
        cluster: LocalCluster, admin: Admin) -> None:
    """100k updates over 1k keys (the last update of 100 keys is a tombstone) → 900 records,
    each its key's latest at its original offset, on a real cluster with the node's cleaner."""
    admin.create_topic("compacted", partitions=1, replication_factor=3, configs={
        "cleanup.policy": "compact", "segment.bytes": str(1024 * 1024), "segment.ms": "1000",
        "max.message.bytes": str(1024 * 1024),  # must fit a segment (see the report)
        "delete.retention.ms": "0"})
    latest: dict[bytes, tuple[int, bytes | None]] = {}
    futures = []
    with Producer(cluster.bootstrap, linger_ms=20) as producer:
        for round_ in range(100):
            for k in range(1000):
                value = None if round_ == 99 and k < 100 else b"v%d-%d" % (k, round_)
                futures.append((b"k%d" % k, value,
                                producer.send("compacted", key=b"k%d" % k, value=value)))
        producer.flush()
        for key, value, future in futures:
            latest[key] = (future.result().offset, value)
        time.sleep(1.5)  # older than segment.ms: the next append seals the segment
        producer.send("compacted", key=b"sentinel", value=b"s").result()
    expected = {key: (offset, value) for key, (offset, value) in latest.items()
                if value is not None}
    assert len(expected) == 900
    tp = TopicPartition("compacted", 0)

    def read_all() -> dict[bytes, tuple[int, bytes | None]]:
        out: dict[bytes, tuple[int, bytes | None]] = {}
        count = 0
        with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            while consumer.position(tp) < end:
                for record in consumer.poll(timeout_s=1.0):
                    if record.key != b"sentinel":
                        out[record.key] = (record.offset, record.value)
                        count += 1
        return out if count == len(out) else {}

    wait_until(lambda: read_all() == expected, 60, "900 live records after compaction")
