"""`tidelog top` in a real pseudo-terminal (pexpect) against a real 3-node cluster: it draws the
nodes, shows a produce rate and a growing end offset while a producer runs, marks a paused node
DOWN and still quits at once, quits on q / Ctrl-C / SIGTERM with the terminal given back (the
alternate screen left, `stty` showing echo and canonical mode again), and says plainly when no
node answers.

The poll itself (tidelog.client.top_data.Gatherer) is checked in-process on the same cluster:
lag in seconds exact against the records' own timestamps, and a paused node bounding a poll by
one RPC deadline (then by the shorter one of a node already seen down).

One cluster serves the module; each test has its own topic and group, and the tests that pause
a node resume it before they end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.client.top_data import DOWN_NODE_TIMEOUT_S, Gatherer
from tidelog.client.top_model import NodeState
from tidelog.node.local_cluster import LocalCluster, free_ports

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

TIDELOG = str(Path(sys.executable).with_name("tidelog"))
ROWS, COLUMNS = 50, 170
#: q must end the program within this, even while a poll waits on a paused node
QUIT_S_MAX = 3.0
#: stty -a after a clean exit: canonical mode and echo are back on ("-icanon" would mean not)
#: between two cells of a row: spaces and the colour codes of styled cells (their padding inside)
GAP = r"(?:\s|\x1b\[[\d;]*m)+"
RESTORED = re.compile(r"(?<![-\w])icanon\b.*?(?<![-\w])echo\b", re.S)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("top"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}) as running:
        yield running


@pytest.fixture
def topic(cluster: LocalCluster) -> str:
    name = f"top-{uuid.uuid4().hex[:6]}"
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(name, partitions=2, replication_factor=3)
    return name


class BackgroundProducer:
    """Sends a record every few ms until stopped: what `top` must see as a produce rate."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._producer = Producer(bootstrap, linger_ms=5)
        self._topic = topic
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(10):
                self._producer.send(self._topic, value=b"x" * 20)
                self.sent += 1
            self._producer.flush(timeout=10)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._producer.close(timeout=10)


def row(*cells: str) -> str:
    """A regex for a table row whose cells are these regexes."""
    return GAP.join(cells)


def spawn_top(bootstrap: str, *extra: str) -> pexpect.spawn:
    """`tidelog top` then `stty -a` in one shell on a pty, so the test sees the terminal's
    settings as the program left them."""
    command = " ".join([TIDELOG, "top", "--bootstrap", bootstrap, *extra])
    # The trap keeps the shell alive through the Ctrl-C sent to the whole foreground group (a
    # trap with a command, unlike an ignored signal, is not inherited by tidelog).
    script = f"trap 'true' INT; {command}; echo TOP-EXIT=$?; stty -a"
    # Ctrl-C makes the tty discard output still queued (ISIG without NOFLSH), which can cut a
    # UTF-8 box character that the program wrote whole: decode what arrives leniently.
    return pexpect.spawn("/bin/sh", ["-c", script],
                         dimensions=(ROWS, COLUMNS), encoding="utf-8", codec_errors="replace",
                         timeout=20,
                         env={"TERM": "xterm-256color", "PATH": "/usr/bin:/bin",
                              "LANG": "C.UTF-8"})


def expect_exit(child: pexpect.spawn, code: int, within_s: float) -> str:
    """The program's exit code and the terminal restored; returns what it drew last."""
    started = time.monotonic()
    child.expect(r"TOP-EXIT=(\d+)", timeout=within_s)
    took = time.monotonic() - started
    drawn = child.before
    assert int(child.match.group(1)) == code, drawn[-2000:]
    child.expect(pexpect.EOF, timeout=10)
    settings = child.before
    assert took <= within_s
    assert "\x1b[?1049l" in drawn, "the alternate screen was not left"
    assert RESTORED.search(settings), f"terminal not restored: {settings!r}"
    assert "Traceback" not in drawn, drawn[-2000:]
    return drawn


def test_top_draws_nodes_shows_the_rate_and_offsets_moving_and_quits_on_q(
        cluster: LocalCluster, topic: str) -> None:
    with Consumer(cluster.bootstrap, group_id=f"{topic}-g", topics=[topic],
                  auto_offset_reset="earliest") as consumer:
        with Producer(cluster.bootstrap) as producer:
            for i in range(20):
                producer.send(topic, value=b"%d" % i)
        deadline = time.monotonic() + 20
        got = 0
        while got < 5 and time.monotonic() < deadline:
            got += len(consumer.poll(timeout_s=0.5, max_records=5))
        consumer.commit()
    background = BackgroundProducer(cluster.bootstrap, topic)
    child = spawn_top(cluster.bootstrap, "--interval", "0.5")
    try:
        child.expect("Nodes")
        for n in cluster.nodes:  # every node drawn, up
            child.expect(row(str(n.id), re.escape(n.address), "up"))
        topic_row = row(topic, "2", r"([\d,]+)", r"([\d,.]+)/s")
        child.expect(topic_row)
        first_end = int(child.match.group(1).replace(",", ""))
        deadline = time.monotonic() + 15
        while True:  # a later frame: the end offsets grew and the rate is above zero
            child.expect(topic_row)
            end, rate = int(child.match.group(1).replace(",", "")), float(
                child.match.group(2).replace(",", ""))
            if end > first_end and rate > 0:
                break
            assert time.monotonic() < deadline, f"no update: end {end}, rate {rate}"
        child.expect(row(f"{topic}-g", topic, r"\d", r"[\d,]+"))  # the group's lag rows
        child.send("q")
        expect_exit(child, 0, QUIT_S_MAX)
    finally:
        child.close(force=True)
        background.stop()


@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("sigterm", 128 + 15)])
def test_top_exits_cleanly_on_ctrl_c_and_sigterm(cluster: LocalCluster, how: str,
                                                 code: int) -> None:
    child = spawn_top(cluster.bootstrap)
    try:
        child.expect("Nodes")
        if how == "ctrl-c":
            child.sendintr()
        else:  # the shell's child is tidelog: signal it, not the shell
            pid = int(subprocess.check_output(["pgrep", "-P", str(child.pid)]).split()[0])
            subprocess.run(["kill", "-TERM", str(pid)], check=True)
        expect_exit(child, code, QUIT_S_MAX)
    finally:
        child.close(force=True)


def test_top_marks_a_paused_node_down_and_still_quits_at_once(cluster: LocalCluster) -> None:
    paused = cluster.node(3)
    child = spawn_top(cluster.bootstrap, "--interval", "0.5")
    try:
        child.expect(row("3", re.escape(paused.address), "up"))
        cluster.pause(3)
        try:
            child.expect(row("3", re.escape(paused.address), "DOWN"), timeout=10)
            child.expect(r"nodes 2/3 up", timeout=5)
            time.sleep(0.3)  # likely inside a poll that waits on the paused node
            child.send("q")
            expect_exit(child, 0, QUIT_S_MAX)
        finally:
            cluster.resume(3)
    finally:
        child.close(force=True)
    cluster.wait_healthy(timeout_s=30)


def test_top_says_so_when_no_node_answers() -> None:
    nowhere = f"127.0.0.1:{free_ports(1)[0]}"
    child = spawn_top(nowhere, "--interval", "0.3")
    try:
        child.expect("NO NODE ANSWERS")
        child.expect(re.escape(nowhere))
        child.send("q")
        expect_exit(child, 0, QUIT_S_MAX)
    finally:
        child.close(force=True)
    once = subprocess.run([TIDELOG, "top", "--bootstrap", nowhere, "--once"],
                          capture_output=True, text=True, timeout=30)
    assert once.returncode == 1 and "NO NODE ANSWERS" in once.stdout, once


def test_top_once_json_is_one_snapshot_with_rates(cluster: LocalCluster, topic: str) -> None:
    background = BackgroundProducer(cluster.bootstrap, topic)
    try:
        while background.sent < 20:
            time.sleep(0.05)
        done = subprocess.run([TIDELOG, "top", "--bootstrap", cluster.bootstrap, "--once",
                               "--output", "json", "--interval", "0.5"],
                              capture_output=True, text=True, timeout=30)
    finally:
        background.stop()
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [(n["id"], n["state"]) for n in data["nodes"]] == [(1, "up"), (2, "up"), (3, "up")]
    assert sum(n["leaders"] for n in data["nodes"]) == len(data["partitions"])
    assert data["rates"]["produce_by_topic"][topic] > 0
    ends = [p["end_offset"] for p in data["partitions"] if p["topic"] == topic]
    assert len(ends) == 2 and sum(ends) >= 20


def test_gatherer_lag_seconds_are_now_minus_the_first_unconsumed_records_timestamp(
        cluster: LocalCluster, topic: str) -> None:
    for partition in (0, 1):  # no leader moving meanwhile (its NOOP would lag partition 1)
        cluster.settled_leader_of(topic, partition)
    base_ms = int(time.time() * 1000) - 600_000  # ten minutes ago, a second apart
    with Producer(cluster.bootstrap) as producer:
        futures = [producer.send(topic, value=b"%d" % i, partition=0, timestamp=base_ms + i * 1000)
                   for i in range(10)]
        producer.send(topic, value=b"p1", partition=1).result(timeout=10)
        offsets = [f.result(timeout=10).offset for f in futures]
    group = f"{topic}-lag"
    with Admin(cluster.bootstrap) as admin:
        ends = admin.list_offsets({TopicPartition(topic, 0): "latest",
                                   TopicPartition(topic, 1): "latest"})
        admin.alter_group_offsets(group, {TopicPartition(topic, 0): offsets[4],
                                          TopicPartition(topic, 1): ends[TopicPartition(topic, 1)]})
    gatherer = Gatherer(cluster.bootstrap, rpc_timeout_s=2.0)
    try:
        snapshot = gatherer.take()
        again = gatherer.take()  # the timestamp now comes from the cache: the same figure
    finally:
        gatherer.close()
    lags = {g.partition: g for g in snapshot.lags if g.group == group}
    assert set(lags) == {0, 1}, snapshot.problems
    assert lags[0].committed == offsets[4]
    assert lags[0].lag_records == ends[TopicPartition(topic, 0)] - offsets[4]
    assert lags[0].lag_seconds == (snapshot.wall_ms - (base_ms + 4000)) / 1000
    assert (lags[1].lag_records, lags[1].lag_seconds) == (0, 0.0)
    cached = next(g for g in again.lags if g.group == group and g.partition == 0)
    assert cached.lag_seconds == (again.wall_ms - (base_ms + 4000)) / 1000


def test_gatherer_poll_is_bounded_while_a_node_is_paused(cluster: LocalCluster) -> None:
    rpc_timeout_s = 1.0
    gatherer = Gatherer(cluster.bootstrap, rpc_timeout_s=rpc_timeout_s)
    try:
        assert all(n.state is NodeState.UP for n in gatherer.take().nodes)
        cluster.pause(2)
        try:
            first, second = gatherer.take(), gatherer.take()
        finally:
            cluster.resume(2)
    finally:
        gatherer.close()
    for snapshot in (first, second):
        assert [n.state for n in snapshot.nodes] == [NodeState.UP, NodeState.DOWN, NodeState.UP]
    print(f"polls with node 2 paused: {first.poll_s:.2f} s, then {second.poll_s:.2f} s")
    # Metadata waits one deadline for the paused node; the other phases ask only nodes that
    # answered, unless a coordinator was there (one more deadline). Then the short deadline.
    slack_s = 1.0  # two loaded CI cores
    assert first.poll_s <= 2 * rpc_timeout_s + slack_s
    assert second.poll_s <= DOWN_NODE_TIMEOUT_S + rpc_timeout_s + slack_s
    cluster.wait_healthy(timeout_s=30)
