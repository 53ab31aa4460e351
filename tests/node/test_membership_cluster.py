"""Node membership against real node processes (docs/operations.md "Add and remove nodes").

One 3-node cluster for the module, grown and shrunk in order: a 4th node joins while a producer
with acks=all runs (it knows the others only by DNS name, as a new pod would), is placed on; a
node never admitted is refused everywhere; then a node is decommissioned under load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import HOST, LocalCluster, free_ports
from tidelog.node.local_cluster import metadata as node_metadata

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

TOPIC = "load"
PARTITIONS = 3
NAME = "localhost"  # a DNS name, as a pod's peers are known to it
ELECTION_S = 2.0  # one election at the default 10 ticks x 100 ms, randomised up to 2x


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    running = LocalCluster(3, tmp_path_factory.mktemp("membership") / "cluster")
    running.start()
    try:
        running.wait_healthy(timeout_s=60)
        with Admin(running.bootstrap) as admin:
            admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
        yield running
    finally:
        running.stop()


class LoadProducer:
    """acks=all records, one every few ms, each value its own sequence number; remembers what
    was acknowledged and when, so a test can check nothing acked is lost and measure the
    longest time without an acknowledgement."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = Producer(bootstrap, acks="all", linger_ms=2)
        self._topic = topic
        self.acked: dict[int, float] = {}
        self.failed: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._producer.flush(60)
        self._producer.close(30)

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            self._producer.send(self._topic, str(seq).encode(), key=str(seq % 7).encode(),
                                callback=lambda meta, error, seq=seq: self._done(seq, error))
            seq += 1
            time.sleep(0.005)

    def _done(self, seq: int, error: BaseException | None) -> None:
        with self._lock:
            if error is None:
                self.acked[seq] = time.monotonic()
            else:
                self.failed.append(error)

    def longest_gap_s(self) -> float:
        times = sorted(self.acked.values())
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def read_values(bootstrap: str, topic: str, partitions: int, expected: set[int],
                timeout_s: float = 60.0) -> set[int]:
    seen: set[int] = set()
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while not expected <= seen and time.monotonic() < deadline:
            seen |= {int(r.value) for r in consumer.poll(timeout_s=1.0)}
    return seen


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`tidelog ARGS --bootstrap ...` run in this process (its output captured): the real
    command line, without the start-up time of a new interpreter."""
    import contextlib
    import io

    from tidelog.client.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--bootstrap", cluster.bootstrap])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def wait_for(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_fourth_node_joins_under_acks_all_load_and_strangers_are_refused(
        cluster: LocalCluster) -> None:
    """Node 4 joins while acks=all records flow: nothing acknowledged is lost. Meanwhile two
    processes that were never admitted try: one waits at --join (the seed logs the refused
    join), one started with a --peers that makes it a metadata voter beside nodes 1 and 2
    campaigns over Raft streams that they refuse (both sides log it)."""
    strangers = start_strangers(cluster)
    try:
        with LoadProducer(cluster.bootstrap, TOPIC) as load:
            wait_for(lambda: len(load.acked) > 50, 30, "the producer to run")
            # The new node knows the others by name only (--join NAME:PORT), advertises one.
            new = cluster.add_node(host=NAME, start=False)
            cluster.join_seeds[new.id] = ",".join(
                f"{NAME}:{n.address.rpartition(':')[2]}" for n in cluster.nodes[:3])
            cluster.start(new.id)
            wait_for(lambda: logged(new.log_path, "waiting to be admitted"), 30,
                     "node 4 to wait for its admission")
            assert not _healthy(cluster, new.id), "a node must not serve before it is admitted"
            admitted = cli(cluster, "cluster", "add-node", str(new.id), "--address",
                           new.address, "--metadata-voter", "--output", "json")
            assert admitted.returncode == 0, admitted.stderr
            assert json.loads(admitted.stdout)["state"] in ("joining", "active")
            cluster.wait_healthy(timeout_s=60, node_ids=[new.id])
            with Admin(cluster.bootstrap) as admin:
                info = admin.wait_member_state(new.id, ("active",), timeout_s=30)
                assert info.address == new.address
                wait_for(lambda: _role(admin, new.id) == "voter", 30,
                         "node 4 to be promoted to metadata voter")
            # Its metadata is replayed: it answers Metadata with every topic and node.
            own = node_metadata(new.address, [TOPIC])
            assert own.topics[0].name == TOPIC and {n.id for n in own.nodes} == {1, 2, 3, 4}
        assert not load.failed, load.failed[:3]
        acked = set(load.acked)
        assert read_values(cluster.bootstrap, TOPIC, PARTITIONS, acked) >= acked
        check_strangers_refused(cluster, strangers)
    finally:
        for _, proc in strangers:
            with_kill(proc)
    status = cli(cluster, "cluster", "status", "--output", "json")
    states = {n["id"]: n["state"] for n in json.loads(status.stdout)["nodes"]}
    assert states == {1: "active", 2: "active", 3: "active", 4: "active"}, status.stdout
    print(f"\ngrow 3 -> 4: {len(acked)} records acknowledged, 0 lost; longest gap "
          f"{load.longest_gap_s():.3f} s")


def start_strangers(cluster: LocalCluster) -> list[tuple[Path, subprocess.Popen[bytes]]]:
    port_a, port_b = free_ports(2)
    out = []
    for node_id, port, how in (
            (7, port_a, ["--join", cluster.node(1).address]),
            (8, port_b, ["--peers", f"1={cluster.node(1).address},2={cluster.node(2).address},"
                                    f"8={HOST}:{port_b}"])):
        directory = cluster.data_dir / f"stranger-{node_id}"
        directory.mkdir()
        log = open(directory / "node.log", "wb")  # noqa: SIM115 - handed to the child
        out.append((directory / "node.log", subprocess.Popen(
            [sys.executable, "-m", "tidelog.node.main", "--id", str(node_id),
             "--listen", f"{HOST}:{port}", "--data-dir", str(directory / "data"), *how],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})))
        log.close()
    return out


def check_strangers_refused(cluster: LocalCluster,
                            strangers: list[tuple[Path, subprocess.Popen[bytes]]]) -> None:
    (joiner_log, joiner), (intruder_log, _) = strangers
    wait_for(lambda: logged(joiner_log, "waiting to be admitted (tidelog cluster add-node 7"),
             30, "the unadmitted joiner to say what it waits for")
    wait_for(lambda: logged(cluster.node(1).log_path, "refused the join of node 7"), 10,
             "the seed to log the refused join")
    wait_for(lambda: logged(intruder_log, "refused: PERMISSION_DENIED: node 8 is not a peer"),
             30, "the intruder's links to be refused")
    wait_for(lambda: all(logged(n.log_path, "refused raft stream of node 8")
                         for n in cluster.nodes[:2]), 10,
             "nodes 1 and 2 to log the refused streams")
    with Admin(cluster.bootstrap) as admin:
        _, members = admin.describe_members()
    assert {m.node_id for m in members} == {1, 2, 3, 4}
    # Every member opened its link to node 4 from the metadata (no --peers names it).
    assert all(logged(n.log_path, f"link to node 4 ({NAME}:") for n in cluster.nodes[:3])
    assert joiner.poll() is None  # still waiting, and not serving
    assert not _healthy_at(joiner.args[joiner.args.index("--listen") + 1])


def logged(path: Path, text: str) -> bool:
    return path.is_file() and text in path.read_text(errors="replace")


def test_a_decommissioned_node_drains_under_load_and_leaves(cluster: LocalCluster) -> None:
    """Node 3, a metadata voter (4 voters since node 4 joined as one), holds a replica of every
    partition of the loaded topic: they move to node 4, its leaderships move away, it leaves the
    metadata group and stops; acks=all never waits longer than about one election."""
    with LoadProducer(cluster.bootstrap, TOPIC) as load:
        wait_for(lambda: len(load.acked) > 50, 30, "the producer to run")
        started = time.monotonic()
        done = cli(cluster, "cluster", "decommission", "3", "--wait", "--timeout", "120",
                   "--output", "json")
        took_s = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "removed"
        wait_for(lambda: not cluster.node(3).running, 30, "node 3 to stop itself")
        assert cluster.node(3).process.returncode == 0  # a clean stop, not a crash
        before = len(load.acked)
        wait_for(lambda: len(load.acked) > before + 50, 30, "produce to go on without node 3")
    assert not load.failed, load.failed[:3]
    acked = set(load.acked)
    assert read_values(cluster.bootstrap, TOPIC, PARTITIONS, acked) >= acked
    answer = node_metadata(cluster.node(1).address, [TOPIC])
    assert all(3 not in p.replicas and p.leader_id != 3 for p in answer.topics[0].partitions)
    assert 3 not in {n.id for n in answer.nodes}
    wait_for(lambda: all(logged(n.log_path, "link to node 3 (") and logged(
        n.log_path, "closed: it left the cluster") for n in (cluster.node(1), cluster.node(4))),
        10, "the links to node 3 to be closed")
    with Admin(cluster.bootstrap) as admin:
        leader, members = admin.describe_members()
    gone = next(m for m in members if m.node_id == 3)
    assert (gone.state, gone.metadata_role, gone.replicas) == ("removed", "none", 0)
    assert leader != 3
    status = cli(cluster, "cluster", "decommission", "--status", "--output", "json")
    assert [m["node_id"] for m in json.loads(status.stdout)["members"]] == [3]
    overall = json.loads(cli(cluster, "cluster", "status", "--output", "json").stdout)
    assert {n["id"]: n["state"] for n in overall["nodes"]} == {
        1: "active", 2: "active", 3: "removed", 4: "active"}
    assert not [p for p in overall["problems"] if p.startswith("node ")], overall["problems"]
    gap = load.longest_gap_s()
    print(f"\ndecommission of node 3 under load: {took_s:.1f} s, {len(acked)} records "
          f"acknowledged, 0 lost; longest gap between acknowledgements {gap:.3f} s")
    assert gap < ELECTION_S + 1.0, f"produce stalled {gap:.2f} s: longer than one election"


def _healthy(cluster: LocalCluster, node_id: int) -> bool:
    return _healthy_at(cluster.node(node_id).address)


def _healthy_at(address: str) -> bool:
    from tidelog.node.health import check_health

    return check_health(address, timeout_s=1.0)


def _role(admin: Admin, node_id: int) -> str:
    _, members = admin.describe_members()
    return next(m.metadata_role for m in members if m.node_id == node_id)


def with_kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
