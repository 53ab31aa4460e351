"""`tidelog queue ...` against a real 3-node cluster: every action through the real CLI process,
its JSON and text output and its exit codes; and the QueueConsumer API's implicit queue creation,
lock extension and lock loss against the real coordinator.

One cluster serves the module (a cluster per test cost ~5 s of start and stop each, and the
first queue of each cluster paid for creating `__queue_state` again). The tests stay independent:
each uses its own queue and topic names, compares queue listings with the listing it found on
entry, and a test that kills or pauses a node brings it back before it ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tidelog.client import (
    Admin,
    Consumer,
    LockLostError,
    Producer,
    QueueConsumer,
    TopicPartition,
    errors,
)
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]
QUEUE_STATE_PARTITIONS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Four `__queue_state` partitions instead of 16 (as tests/queues does) to spare the two CI
    cores: which partition a queue lands on does not matter to the CLI."""
    with running_cluster(tmp_path_factory.mktemp("queue-cli"),
                         env={"TIDELOG_QUEUE_STATE_PARTITIONS": str(QUEUE_STATE_PARTITIONS),
                              "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "4"}) as running:
        yield running


def restarted(cluster: LocalCluster, node_id: int) -> None:
    """The module's cluster whole again for the next test: the node started and healthy, and
    every `__queue_state` partition back with its preferred leader, so no coordinator moves
    under the next test."""
    cluster.start(node_id)
    cluster.wait_healthy(timeout_s=60)
    for partition in range(QUEUE_STATE_PARTITIONS):
        cluster.settled_leader_of("__queue_state", partition, timeout_s=60)


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.2)


def dead_letters(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every data record of the dead-letter topic (control batches are skipped by the consumer)."""
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        ends = consumer.end_offsets(consumer.assignment())
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, "the dead-letter topic could not be read"
            out += consumer.poll(timeout_s=0.5)
        return out


class Cli:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def __call__(self, *args: str, stdin: str | None = None, code: int = 0
                 ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "tidelog.client.cli", "--bootstrap",
                               self.bootstrap, "queue", *args], capture_output=True, text=True,
                              input=stdin, timeout=120)
        assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self(*args, "--output", "json", stdin=stdin).stdout)

    def lines(self, *args: str) -> list[dict[str, Any]]:
        out = self(*args, "--output", "json").stdout
        return [json.loads(line) for line in out.splitlines()]

    def stats(self, name: str) -> dict[str, Any]:
        return self.json("stats", name)

    def names(self) -> list[str]:
        """Every queue's name, sorted: `queue list` of the module's shared cluster."""
        return sorted(q["name"] for q in self.json("list"))


def test_every_queue_action_through_the_cli(cluster) -> None:  # noqa: ANN001 - LocalCluster
    cli = Cli(cluster.bootstrap)
    before = cli.names()
    assert "jobs" not in before
    created = cli.json("create", "jobs", "--partitions", "2", "--max-deliveries", "3",
                       "--lock-s", "20", "--backoff-initial-s", "0.2", "--backoff-max-s", "0.5")
    assert created["name"] == "jobs" and created["topics"] == ["jobs"]
    assert (created["max_deliveries"], created["lock_ms"], created["backoff_initial_ms"],
            created["backoff_max_ms"]) == (3, 20_000, 200, 500)
    assert created["dead_letter_topic"] == "jobs.dlq"
    again = cli("create", "jobs", code=1)
    assert "already exists" in again.stderr
    kept = cli.json("create", "jobs", "--if-not-exists", "--lock-s", "99")
    assert kept["lock_ms"] == 20_000, "if-not-exists keeps the existing config"
    assert cli.names() == sorted([*before, "jobs"])
    assert "jobs" in cli("list").stdout and "IN-FLIGHT" in cli("list").stdout

    sent = cli.json("send", "jobs", *[f"m{i}" for i in range(10)], "--header", "kind=test")
    assert sent["sent"] == 10 and sent["topic"] == "jobs" and sent["failed"] == 0
    assert "sent 5 messages" in cli("send", "jobs", stdin="".join(f"s{i}\n" for i in range(5))
                                    ).stdout
    all_values = {f"m{i}" for i in range(10)} | {f"s{i}" for i in range(5)}

    peeked = wait_until(lambda: len(p := cli.lines("peek", "jobs", "--max", "100")) == 15 and p,
                        30, "all 15 messages peekable")
    assert {m["value"] for m in peeked} == all_values
    assert all(m["delivery_count"] == 0 and m["lock_deadline_ms"] == 0 for m in peeked)
    assert {m["headers"].get("kind") for m in peeked if m["value"].startswith("m")} == {"test"}
    assert cli.stats("jobs")["in_flight"] == 0, "peek acquires nothing"

    acked = cli.lines("receive", "jobs", "--max", "5", "--ack")
    assert len(acked) == 5 and all(m["settled"] == "ack" and m["error"] is None for m in acked)
    assert all(m["delivery_count"] == 1 and m["lock_deadline_ms"] > 0 for m in acked)
    stats = cli.stats("jobs")
    assert (stats["acked_total"], stats["depth"], stats["in_flight"]) == (5, 10, 0), stats

    released = cli("receive", "jobs", "--max", "3").stdout.splitlines()  # text: values
    assert len(released) == 3 and set(released) <= all_values - {m["value"] for m in acked}
    stats = cli.stats("jobs")
    assert (stats["depth"], stats["in_flight"]) == (10, 0), stats

    (rejected,) = cli.lines("receive", "jobs", "--reject", "poison")
    assert rejected["settled"] == "reject"
    stats = wait_until(lambda: (s := cli.stats("jobs"))["dead_lettered_total"] == 1 and s, 30,
                       "the rejected message dead-lettered")
    assert stats["depth"] == 9 and stats["dead_letters_lost_total"] == 0, stats
    (letter,) = dead_letters(cluster.bootstrap, "jobs.dlq", 2)
    assert letter.value.decode() == rejected["value"]
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["tidelog-dlq-reason"] == "poison", headers
    assert (headers["tidelog-dlq-source-partition"], headers["tidelog-dlq-source-offset"]) == \
        (str(rejected["partition"]), str(rejected["offset"])), headers

    (nacked,) = cli.lines("receive", "jobs", "--nack", "--delay-s", "0.5")
    assert nacked["settled"] == "nack" and nacked["error"] is None
    redelivered = wait_until(
        lambda: [m for m in cli.lines("peek", "jobs", "--max", "100")
                 if m["offset"] == nacked["offset"] and m["partition"] == nacked["partition"]],
        30, "the nacked message available again")
    assert redelivered[0]["delivery_count"] == 1, "peek: deliveries so far"

    assert cli.json("redrive", "jobs") == {"queue": "jobs", "redriven": 1}
    assert cli.json("redrive", "jobs")["redriven"] == 0, "a second redrive repeats nothing"
    stats = wait_until(lambda: (s := cli.stats("jobs"))["depth"] == 10 and s, 30,
                       "the redriven message back in the queue")
    assert (stats["dlq_depth"], stats["redriven_total"]) == (0, 1), stats
    assert wait_until(lambda: [m for m in cli.lines("peek", "jobs", "--max", "100")
                               if m["value"] == rejected["value"]], 30, "redriven, peekable")

    described = cli.json("describe", "jobs")
    assert described["config"]["name"] == "jobs" and described["config"]["max_deliveries"] == 3
    assert described["coordinator_id"] in {n.id for n in cluster.nodes}
    assert described["stats"]["depth"] == 10
    assert len(described["stats"]["partitions"]) == 2
    assert sum(p["depth"] for p in described["stats"]["partitions"]) == 10
    text = cli("stats", "jobs").stdout
    for column in ("DEPTH", "IN-FLIGHT", "OLDEST-UNACKED-S", "REDELIVERED", "DLQ-DEPTH",
                   "PARTITION", "HIGH-WATERMARK"):
        assert column in text, (column, text)
    assert "max_deliveries" in cli("describe", "jobs").stdout

    altered = cli.json("alter", "jobs", "--lock-s", "60", "--key-ordered")
    assert altered["lock_ms"] == 60_000 and altered["key_ordered"] is True
    assert cli.json("describe", "jobs")["config"]["lock_ms"] == 60_000

    delayed = cli.json("send", "jobs", "later", "--delay-s", "3")
    assert delayed["sent"] == 1
    wait_until(lambda: cli.stats("jobs")["depth"] == 11, 30, "the delayed message counted")
    assert cli.json("purge", "jobs") == {"queue": "jobs", "purged": 11}
    stats = cli.stats("jobs")
    assert (stats["depth"], stats["in_flight"]) == (0, 0), stats
    assert cli.lines("receive", "jobs", "--timeout-s", "1") == []

    assert cli.json("delete", "jobs", "--delete-dead-letter-topic") == {"deleted": "jobs"}
    gone = cli("describe", "jobs", "--output", "json", code=3)
    error = json.loads(gone.stderr)["error"]
    assert error["type"] == "QueueNotFound" and error["code"] == 30, error
    assert cli.names() == before


def test_cli_errors_have_their_exit_codes(cluster) -> None:  # noqa: ANN001
    cli = Cli(cluster.bootstrap)
    before = cli.names()
    for action in (["describe", "nope"], ["stats", "nope"], ["peek", "nope"],
                   ["purge", "nope"], ["redrive", "nope"], ["delete", "nope"],
                   ["alter", "nope", "--lock-s", "5"], ["send", "nope", "x"],
                   ["receive", "nope", "--timeout-s", "1"]):
        done = cli(*action, code=3)
        said = done.stderr.lower()
        assert "nope" in said and ("does not exist" in said or "not found" in said), \
            (action, done.stderr)
    missing_topic = cli("create", "q1", "--topic", "no-such-topic", code=3)
    assert "no-such-topic" in missing_topic.stderr
    cli("create", "q1", "--partitions", "1", "--max-deliveries", "5000", code=2)
    cli("create", "q2", "--partitions", "1", "--backoff-initial-s", "5", "--backoff-max-s", "1",
        code=2)
    cli("receive", "q2", "--delay-s", "1", code=2)
    cli("create", "q3", "--partitions", "0", code=2)
    cli("send", "q3", "x", "--header", "nokv", code=2)
    assert cli.names() == before, "nothing was created by the refused commands"


def test_queue_consumer_creates_its_queue_extends_and_loses_locks(cluster) -> None:  # noqa: ANN001
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic("work", partitions=1, replication_factor=3)
        with Producer(cluster.bootstrap) as producer:
            for i in range(4):
                producer.send("work", f"w{i}".encode(), key=b"k")
            producer.flush(30)
        with pytest.raises(errors.QueueNotFound):
            QueueConsumer(cluster.bootstrap, queue="work-q").receive()
        with QueueConsumer(cluster.bootstrap, queue="work-q", topics=["work"],
                           request_timeout_s=30) as first, \
                QueueConsumer(cluster.bootstrap, queue="work-q") as second:
            got: list = []
            wait_until(lambda: got.extend(first.receive(max_messages=4 - len(got), timeout_s=2))
                       or len(got) == 4, 30, "the implicitly created queue delivers all 4")
            got.sort(key=lambda m: m.offset)
            assert [m.value for m in got] == [b"w0", b"w1", b"w2", b"w3"]
            assert admin.describe_queue("work-q").config.topics == ("work",)
            assert admin.alter_queue("work-q", max_deliveries=4).max_deliveries == 4
            deadline = first.extend(got[0], 30).result(10)
            assert deadline >= int(time.time() * 1000) + 25_000
            first.ack(got[1]).result(10)
            first.ack(got[1]).result(10)  # the same ack again (a retry): answered OK
            for m in got[2:]:
                first.release(m).result(10)
            redelivered: list = []
            wait_until(lambda: redelivered.extend(second.receive(max_messages=4, timeout_s=2))
                       or len(redelivered) >= 2, 30, "the released ones go to the second")
            assert {m.offset for m in redelivered} == {m.offset for m in got[2:]}
            assert all(m.delivery_count == 1 for m in redelivered), "release does not count"
            with pytest.raises(LockLostError):
                first.ack(got[2]).result(10)  # another consumer holds it now
            for m in redelivered:
                second.ack(m).result(10)
            first.ack(got[0]).result(10)
            second.flush(10)
        stats = admin.describe_queue("work-q").stats
        assert (stats.acked_total, stats.depth, stats.in_flight) == (4, 0, 0), stats


def test_dlq_depth_counts_dead_letters_only(cluster) -> None:  # noqa: ANN001
    cli = Cli(cluster.bootstrap)
    cli("create", "dq", "--partitions", "2")
    cli("send", "dq", "x")
    cli("receive", "dq", "--reject", "bad")
    wait_until(lambda: cli.stats("dq")["dead_lettered_total"] == 1, 30, "dead-lettered")
    assert len(dead_letters(cluster.bootstrap, "dq.dlq", 2)) == 1
    assert cli.stats("dq")["dlq_depth"] == 1


def test_settlements_and_receives_follow_the_coordinator_when_its_node_is_killed(
        cluster) -> None:  # noqa: ANN001
    killed: list[int] = []
    try:
        with Admin(cluster.bootstrap) as admin:
            admin.create_queue("moving", partitions=2)
            with Producer(cluster.bootstrap) as producer:
                for i in range(20):
                    producer.send("moving", f"x{i}".encode())
                producer.flush(30)
            with QueueConsumer(cluster.bootstrap, queue="moving", request_timeout_s=60) as consumer:
                got: list = []
                wait_until(lambda: got.extend(consumer.receive(max_messages=10, timeout_s=1))
                           or len(got) >= 10, 30, "10 messages received")
                coordinator = admin.describe_queue("moving").coordinator_id
                killed.append(coordinator)
                cluster.kill(coordinator)
                # the locks went through Raft: the new coordinator knows this consumer holds them
                futures = [consumer.ack(m) for m in got]
                for future in futures:
                    assert future.result(60) is None
                rest: list = []
                wait_until(lambda: rest.extend(consumer.receive(max_messages=10, timeout_s=1))
                           or len(got) + len(rest) >= 20, 60,
                           "the other 10 received from the new coordinator")
                for m in rest:
                    consumer.ack(m)
                consumer.flush(60)
                assert sorted(m.value for m in got + rest) == sorted(
                    f"x{i}".encode() for i in range(20)), "each message once"
                assert all(m.delivery_count == 1 for m in got + rest)
                described = admin.describe_queue("moving")
                assert described.coordinator_id != coordinator
                assert (described.stats.acked_total, described.stats.depth) == (20, 0), \
                    described.stats
    finally:
        for node_id in killed:
            restarted(cluster, node_id)


def test_acks_reach_the_new_coordinator_while_the_old_one_is_paused(cluster) -> None:  # noqa: ANN001
    """A paused node keeps its connections open and answers nothing: one attempt must not
    spend the whole request timeout on it (QueueCoordinator caps an attempt at a third)."""
    with Admin(cluster.bootstrap) as admin:
        admin.create_queue("paused", partitions=1)
        with Producer(cluster.bootstrap) as producer:
            for i in range(5):
                producer.send("paused", f"p{i}".encode())
            producer.flush(30)
        # 15 s: one attempt is capped at max(ATTEMPT_S_MIN = 5 s, a third); without the cap the
        # first attempt would spend all 15 s on the paused node
        with QueueConsumer(cluster.bootstrap, queue="paused", request_timeout_s=15) as consumer:
            got: list = []
            wait_until(lambda: got.extend(consumer.receive(max_messages=5, timeout_s=1))
                       or len(got) >= 5, 30, "5 messages received")
            coordinator = admin.describe_queue("paused").coordinator_id
            cluster.pause(coordinator)
            try:
                started = time.monotonic()
                futures = [consumer.ack(m) for m in got]
                for future in futures:
                    assert future.result(60) is None
                took = time.monotonic() - started
            finally:
                cluster.resume(coordinator)
            assert took < 15, f"acks took {took:.1f} s: the paused node held the whole budget"
            print(f"acks answered {took:.1f} s after pausing the coordinator")
            # the acks were taken by a coordinator that had read nothing yet: its stats must
            # still count them as done (DescribeQueue reads what is new first)
            stats = wait_until(
                lambda: (s := admin.describe_queue("paused").stats).depth == 0 and s, 30,
                "depth 0 after the acks")
            assert stats.acked_total == 5, stats
            assert consumer.receive(max_messages=5, timeout_s=2) == [], "nothing redelivered"



def test_the_dedup_window_discards_a_resent_message_id_and_can_be_turned_off(cluster) -> None:  # noqa: ANN001
    """A producer that retries without idempotence sends the same message twice with one
    tidelog-message-id: the queue delivers it once (SQS FIFO / JetStream Msg-Id semantics)."""
    cli = Cli(cluster.bootstrap)
    assert cli.json("create", "orders", "--partitions", "1")["dedup_window_ms"] == 300_000
    off = cli.json("create", "audit", "--partitions", "1", "--dedup-window-s", "-1")
    assert off["dedup_window_ms"] == -1
    for queue in ("orders", "audit"):
        for value in ("charge 1", "charge 1 again", "charge 2"):
            message_id = "m2" if value == "charge 2" else "m1"
            cli("send", queue, value, "--header", f"tidelog-message-id={message_id}")
    # --max stops a receive at the expected count instead of waiting out its timeout: a resent
    # message id let through would be the second message (one partition, offset order), and the
    # depth would not be 0
    got = cli.lines("receive", "orders", "--max", "2", "--timeout-s", "10", "--ack")
    assert [m["value"] for m in got] == ["charge 1", "charge 2"]
    stats = cli.stats("orders")
    assert stats["deduplicated_total"] == 1 and stats["depth"] == 0
    got = cli.lines("receive", "audit", "--max", "3", "--timeout-s", "10", "--ack")
    assert [m["value"] for m in got] == ["charge 1", "charge 1 again", "charge 2"]
    assert cli.stats("audit")["deduplicated_total"] == 0
    assert "dedup_window_s" in cli("describe", "orders").stdout
