"""Issue 12 queues against real node processes and real consumer processes (kill -9 is real).

One 3-node cluster serves the module (TIDELOG_QUEUE_STATE_PARTITIONS=4 to spare the two CI
cores). Consumers are tests/queues/queue_worker.py subprocesses (tidelog.client.QueueConsumer)
that log every receive and every settlement result, with times, to a JSON-lines file; every
check below reads those logs (one machine, one clock) and the queue's own stats.

Random choices (processing times, keys) come from one seed, printed; replay a run with
TIDELOG_QUEUE_TEST_SEED=<seed>.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

WORKER = Path(__file__).with_name("queue_worker.py")
SEED = int(os.environ.get("TIDELOG_QUEUE_TEST_SEED") or random.SystemRandom().randrange(2**32))
Event = dict[str, Any]
Msg = tuple[int, int]  # (partition, offset)


def rng_for(test: str) -> random.Random:
    """One generator per test, from the module seed: a test replays alone or in the module."""
    print(f"\n{test}: seed {SEED}; replay: TIDELOG_QUEUE_TEST_SEED={SEED} .venv/bin/python -m "
          f"pytest -q tests/queues/test_queue_workers_cluster.py -k {test}")
    return random.Random(f"{SEED}/{test}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("queues"),
                         env={"TIDELOG_QUEUE_STATE_PARTITIONS": "4",
                              "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "4"}) as running:
        yield running


class Worker:
    """One queue_worker.py process, started in its own session, stopped by its PID."""

    def __init__(self, cluster: LocalCluster, queue: str, out: Path, seed: int,
                 *extra: str) -> None:
        self.out = out
        self.consumer_id = out.stem
        self._asked_to_stop = False
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), "--bootstrap", cluster.bootstrap, "--queue", queue,
             "--out", str(out), "--consumer-id", self.consumer_id, "--seed", str(seed), *extra],
            stdout=subprocess.DEVNULL, stderr=open(str(out) + ".err", "wb"),  # noqa: SIM115
            start_new_session=True)

    def events(self, kind: str | None = None) -> list[Event]:
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        events = [json.loads(line) for line in lines if line.endswith("}")]
        return [e for e in events if kind is None or e["ev"] == kind]

    def started(self) -> bool:
        if self.process.poll() is not None:
            err = Path(str(self.out) + ".err").read_text(errors="replace")[-3000:]
            raise AssertionError(f"worker {self.consumer_id} exited "
                                 f"{self.process.returncode}:\n{err}")
        return bool(self.events("start"))

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        self.ask_to_stop()
        self.wait_stopped()

    def ask_to_stop(self) -> None:
        """SIGTERM, once: the worker finishes its batch, settles it and exits."""
        if self.process.poll() is None and not self._asked_to_stop:
            self._asked_to_stop = True
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Every worker a test started is stopped after it: all asked at once, so they close in
    parallel (one after another took 3-5 s of each test's teardown)."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.ask_to_stop()
    for worker in started:
        worker.wait_stopped()


def start_workers(cluster: LocalCluster, queue: str, tmp_path: Path, rng: random.Random,
                  names: list[str], *extra: str) -> list[Worker]:
    started = [Worker(cluster, queue, tmp_path / f"{name}.jsonl", rng.randrange(2**32), *extra)
               for name in names]
    wait_until(lambda: all(w.started() for w in started), 60, f"workers {names} connected")
    return started


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the cluster may be mid-election; keep asking
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} "
                                 f"(last error: {last!r})")
        time.sleep(0.2)


def produce(cluster: LocalCluster, topic: str, messages: list[dict[str, Any]]) -> list[Msg]:
    """Send every message (dict of Producer.send arguments) acks=all; their (partition, offset)
    in send order."""
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        futures = [producer.send(topic, **m) for m in messages]
        producer.flush()
        return [(f.result().partition, f.result().offset) for f in futures]


def read_topic(cluster: LocalCluster, topic: str, partitions: int) -> list[Any]:
    """Every record of the topic up to its end now (a plain assigned consumer, no group)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    out = []
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end {ends}"
            out.extend(consumer.poll(timeout_s=0.5))
    return out


def receives(workers: list[Worker]) -> list[Event]:
    return [{**e, "w": w.consumer_id} for w in workers for e in w.events("recv")]


def acks(workers: list[Worker]) -> list[Event]:
    """The acks that succeeded, each tagged with its worker."""
    return [{**e, "w": w.consumer_id} for w in workers for e in w.events("settle")
            if e["act"] == "ack" and e["ok"]]


def acked_set(workers: list[Worker]) -> set[Msg]:
    return {(e["p"], e["o"]) for e in acks(workers)}


def assert_every_message_acked_exactly_once(workers: list[Worker], produced: list[Msg]) -> None:
    counts = Counter((e["p"], e["o"]) for e in acks(workers))
    extra = set(counts) - set(produced)
    twice = {m: n for m, n in counts.items() if n > 1}
    missing = set(produced) - set(counts)
    assert not (extra or twice or missing), \
        f"acked but never produced: {sorted(extra)[:10]}; acked more than once: " \
        f"{sorted(twice.items())[:10]}; never acked: {sorted(missing)[:10]}"
    failed = [e for w in workers for e in w.events("settle") if not e["ok"]]
    assert not failed, f"settlements that failed: {failed[:5]}"


def assert_queue_idle(admin: Admin, queue: str) -> Any:  # noqa: ANN401 - QueueStats
    stats = admin.describe_queue(queue).stats
    assert (stats.depth, stats.in_flight) == (0, 0), stats
    return stats


def test_eight_workers_on_two_partitions_share_the_work_and_ack_each_message_once(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    rng = rng_for("test_eight_workers")
    admin.create_topic("share", partitions=2, replication_factor=3)
    admin.create_queue("share-q", ["share"])
    workers += start_workers(cluster, "share-q", tmp_path, rng, [f"w{i}" for i in range(8)],
                             "--process-ms-min", "1", "--process-ms-max", "6")
    produced = produce(cluster, "share", [{"value": f"m{i}", "partition": i % 2}
                                          for i in range(1000)])
    wait_until(lambda: acked_set(workers) >= set(produced), 90, "all 1000 messages acked")
    assert_every_message_acked_exactly_once(workers, produced)
    delivered = Counter((e["p"], e["o"]) for e in receives(workers))
    assert set(delivered) == set(produced) and set(delivered.values()) == {1}, \
        "without a fault, each message is delivered once (no lock expired)"
    assert {e["dc"] for e in receives(workers)} == {1}
    per_worker = {w.consumer_id: len(w.events("recv")) for w in workers}
    print(f"messages received per worker: {per_worker}")
    assert all(n > 0 for n in per_worker.values()), f"a worker got nothing: {per_worker}"
    per_partition = {p: {e["w"] for e in receives(workers) if e["p"] == p} for p in (0, 1)}
    assert all(len(ws) >= 2 for ws in per_partition.values()), \
        f"a partition's messages went to one worker only: {per_partition}"
    stats = assert_queue_idle(admin, "share-q")
    assert (stats.acked_total, stats.delivered_total, stats.redelivered_total) == \
        (1000, 1000, 0), stats


def test_a_worker_killed_mid_message_has_its_messages_redelivered_after_the_lock_expires(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    rng = rng_for("test_a_worker_killed")
    lock_s = 2.0
    admin.create_topic("crash", partitions=2, replication_factor=3)
    admin.create_queue("crash-q", ["crash"], lock_s=lock_s, backoff_initial_s=0.2,
                       backoff_max_s=1.0)
    # The victim takes up to 5 messages and "processes" the first one for a minute.
    victim, = start_workers(cluster, "crash-q", tmp_path, rng, ["victim"],
                            "--max-messages", "5", "--process-ms-min", "60000",
                            "--process-ms-max", "60000")
    workers.append(victim)
    go = tmp_path / "go"
    rescuers = start_workers(cluster, "crash-q", tmp_path, rng, ["r0", "r1", "r2"],
                             "--go-file", str(go), "--process-ms-min", "1",
                             "--process-ms-max", "5")
    workers += rescuers
    produced = produce(cluster, "crash", [{"value": f"c{i}", "partition": i % 2}
                                          for i in range(60)])
    wait_until(lambda: victim.events("recv"), 30, "the victim receiving")
    held = {(e["p"], e["o"]): e for e in victim.events("recv")}
    victim.kill()
    killed_at = time.time()
    lock_deadline_s = min(e["lock"] for e in held.values()) / 1000
    assert killed_at < lock_deadline_s, \
        f"the victim was killed {killed_at - lock_deadline_s:.2f} s after its lock expired: " \
        f"the machine is too slow for this test's {lock_s} s lock"
    assert not victim.events("settle"), "killed mid-message: it settled nothing"
    go.touch()
    wait_until(lambda: acked_set(rescuers) >= set(produced), 60, "all 60 messages acked")
    assert_every_message_acked_exactly_once(rescuers, produced)
    again = receives(rescuers)
    for msg, first in held.items():
        redelivered = [e for e in again if (e["p"], e["o"]) == msg]
        assert len(redelivered) == 1 and redelivered[0]["dc"] == 2, (msg, redelivered)
        late_s = redelivered[0]["ts"] - first["lock"] / 1000
        assert 0 <= late_s < 10, f"{msg} redelivered {late_s:.2f} s after its lock deadline"
        print(f"{msg}: redelivered {late_s:.2f} s after the lock deadline "
              f"to {redelivered[0]['w']}")
    others = [e for e in again if (e["p"], e["o"]) not in held]
    assert {e["dc"] for e in others} == {1} and len(others) == len(produced) - len(held)
    stats = assert_queue_idle(admin, "crash-q")
    assert stats.redelivered_total == len(held) and stats.acked_total == len(produced), stats


def test_a_message_failing_every_time_is_dead_lettered_once_after_the_limit_and_redriven(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    rng = rng_for("test_a_message_failing")
    max_deliveries = 3
    admin.create_topic("poison", partitions=1, replication_factor=3)
    admin.create_queue("poison-q", ["poison"], max_deliveries=max_deliveries,
                       backoff_initial_s=0.1, backoff_max_s=0.5, lock_s=10)
    nackers = start_workers(cluster, "poison-q", tmp_path, rng, ["n0", "n1"],
                            "--nack-prefix", "poison", "--process-ms-max", "3")
    workers += nackers
    headers = [("trace", b"t-1"), ("attempt-note", b"\x00bin")]
    messages: list[dict[str, Any]] = [{"value": f"ok{i}"} for i in range(10)]
    messages.insert(5, {"value": "poison", "key": "pk", "headers": headers})
    produced = produce(cluster, "poison", messages)
    poison = produced[5]
    good = produced[:5] + produced[6:]
    wait_until(lambda: len(read_topic(cluster, "poison-q.dlq", 1)) >= 1, 60,
               "the poison message in poison-q.dlq")
    wait_until(lambda: acked_set(nackers) >= set(good), 30, "the good messages acked")
    assert_every_message_acked_exactly_once(nackers, good)
    deliveries = sorted((e for e in receives(nackers) if (e["p"], e["o"]) == poison),
                        key=lambda e: e["ts"])
    assert [e["dc"] for e in deliveries] == list(range(1, max_deliveries + 1)), deliveries
    nacks = [e for w in nackers for e in w.events("settle") if (e["p"], e["o"]) == poison]
    assert len(nacks) == max_deliveries and all(e["act"] == "nack" and e["ok"] for e in nacks)
    time.sleep(1.5)  # any second dead-lettering of it would show by now
    dlq = read_topic(cluster, "poison-q.dlq", 1)
    assert len(dlq) == 1, f"dead-lettered exactly once, got {len(dlq)} records"
    letter = dlq[0]
    assert (letter.key, letter.value) == (b"pk", b"poison")
    got = dict(letter.headers)
    assert got["trace"] == b"t-1" and got["attempt-note"] == b"\x00bin"
    produced_ts = {r.offset: r.timestamp for r in read_topic(cluster, "poison", 1)}
    assert got["tidelog-dlq-queue"] == b"poison-q"
    assert got["tidelog-dlq-reason"], got
    assert got["tidelog-dlq-attempts"] == str(max_deliveries).encode()
    assert got["tidelog-dlq-source-topic"] == b"poison"
    assert got["tidelog-dlq-source-partition"] == b"0"
    assert got["tidelog-dlq-source-offset"] == str(poison[1]).encode()
    assert got["tidelog-dlq-source-timestamp-ms"] == str(produced_ts[poison[1]]).encode()
    first_ms = int(got["tidelog-dlq-first-delivery-ms"])
    last_ms = int(got["tidelog-dlq-last-delivery-ms"])
    assert first_ms <= deliveries[0]["ts"] * 1000 + 50, (first_ms, deliveries[0])
    assert deliveries[-1]["ts"] * 1000 - 5000 <= last_ms <= deliveries[-1]["ts"] * 1000 + 50
    assert first_ms < last_ms
    stats = assert_queue_idle(admin, "poison-q")
    assert (stats.dead_lettered_total, stats.dlq_depth) == (1, 1), stats
    # Redrive: the letter goes back to poison-0 as a new record, and is delivered again.
    for w in nackers:
        w.stop()
    fixer, = start_workers(cluster, "poison-q", tmp_path, rng, ["fixer"])
    workers.append(fixer)
    assert admin.redrive_queue("poison-q") == 1
    wait_until(lambda: any(e["v"] == "poison" for e in acks([fixer])), 30,
               "the redriven message acked")
    back = [e for e in receives([fixer]) if e["v"] == "poison"]
    assert len(back) == 1 and back[0]["o"] > poison[1] and back[0]["dc"] == 1, back
    assert back[0]["k"] == "pk" and back[0]["h"]["trace"] == "t-1", back
    assert admin.redrive_queue("poison-q") == 0, "a second redrive repeats nothing"
    stats = assert_queue_idle(admin, "poison-q")
    assert (stats.dlq_depth, stats.redriven_total) == (0, 1), stats
    assert len(read_topic(cluster, "poison-q.dlq", 1)) == 1


def key_order_violations(workers: list[Worker], by_key: dict[str, list[Msg]]) -> list[str]:
    """Every breach of key order in the workers' logs, given each key's produced messages in
    produce order; every message must have been acked exactly once.

    * acked out of order: sorted by when each ack was sent, a key's offsets are not the
      produced ones;
    * held twice at once: a hold is one delivery, from its receive to the moment its worker
      sent the settlement (t0), or to its lock deadline when it was never settled (a worker
      killed holding it). Each hold of a key must start after the previous one ended, whoever
      held it: a correct server commits the ack (sent after t0) or lets the lock expire before
      it hands out the key's next delivery, which is received before its ts."""
    settled = {(w.consumer_id, e["p"], e["o"], e["dc"]): e["t0"]
               for w in workers for e in w.events("settle")}
    ack_t0 = {(e["p"], e["o"]): e["t0"] for e in acks(workers)}
    found = []
    for key, msgs in by_key.items():
        in_ack_order = sorted(msgs, key=lambda m: ack_t0[m])
        if in_ack_order != msgs:
            found.append(f"{key}: acked as {in_ack_order}, produced as {msgs}")
        holds = sorted(
            (e["ts"], settled.get((e["w"], e["p"], e["o"], e["dc"]), e["lock"] / 1000), e["w"],
             e["o"]) for e in receives(workers) if e["k"] == key)
        for (_, end, who, offset), (start, _, next_who, next_offset) in itertools.pairwise(holds):
            if start <= end:
                found.append(f"{key}: offset {next_offset} received by {next_who} at "
                             f"{start:.4f} while {who} held offset {offset} until {end:.4f}")
    return found


def run_keyed_workload(cluster: LocalCluster, admin: Admin, workers: list[Worker],
                       tmp_path: Path, rng: random.Random, *, queue: str, key_ordered: bool,
                       messages: int) -> dict[str, list[Msg]]:
    """8 workers on a new 2-partition topic, `messages` records over 50 keys, all acked once;
    returns each key's messages in produce order."""
    admin.create_topic(queue.removesuffix("-q"), partitions=2, replication_factor=3)
    admin.create_queue(queue, [queue.removesuffix("-q")], key_ordered=key_ordered)
    workers += start_workers(cluster, queue, tmp_path, rng, [f"k{i}" for i in range(8)],
                             "--process-ms-min", "1", "--process-ms-max", "12")
    keys = [f"key{rng.randrange(50)}" for _ in range(messages)]
    produced = produce(cluster, queue.removesuffix("-q"),
                       [{"value": f"{k}:{i}", "key": k} for i, k in enumerate(keys)])
    by_key: dict[str, list[Msg]] = defaultdict(list)
    for k, msg in zip(keys, produced, strict=True):
        by_key[k].append(msg)
    assert {p for p, _ in produced} == {0, 1}, "the keys cover both partitions"
    wait_until(lambda: acked_set(workers) >= set(produced), 120,
               f"all {messages} messages acked")
    assert_every_message_acked_exactly_once(workers, produced)
    recvs = receives(workers)
    assert {e["dc"] for e in recvs} == {1} and len(recvs) == len(produced)
    return by_key


def test_key_ordered_mode_with_eight_consumers_on_two_partitions_keeps_each_key_in_order(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    rng = rng_for("test_key_ordered_mode_with_eight")
    by_key = run_keyed_workload(cluster, admin, workers, tmp_path, rng, queue="ordered-q",
                                key_ordered=True, messages=1000)
    violations = key_order_violations(workers, by_key)
    assert not violations, f"{len(violations)} breaches of key order, e.g. {violations[:5]}"
    recvs = receives(workers)
    per_worker = {w.consumer_id: len(w.events("recv")) for w in workers}
    per_partition = {p: sorted({e["w"] for e in recvs if e["p"] == p}) for p in (0, 1)}
    print(f"messages per worker: {per_worker}; workers per partition: {per_partition}")
    assert all(n > 0 for n in per_worker.values()), f"a worker got nothing: {per_worker}"
    assert all(len(ws) > 1 for ws in per_partition.values()), per_partition
    stats = assert_queue_idle(admin, "ordered-q")
    assert stats.acked_total == 1000, stats


def test_the_key_order_check_finds_breaches_on_a_queue_without_key_order(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    """The check above is not vacuous: the same workload on an ordinary queue (any record to
    any consumer) breaks it — with 8 workers holding up to 5 records each over 50 keys, two
    records of one key are in flight at once."""
    rng = rng_for("test_the_key_order_check")
    by_key = run_keyed_workload(cluster, admin, workers, tmp_path, rng, queue="unordered-q",
                                key_ordered=False, messages=400)
    violations = key_order_violations(workers, by_key)
    print(f"{len(violations)} breaches found, e.g. {violations[:2]}")
    assert any("held" in v for v in violations), "no key held twice at once: check too weak"


def test_key_ordered_mode_keeps_a_killed_consumers_keys_blocked_until_its_lock_expires(
        cluster: LocalCluster, admin: Admin, workers: list[Worker], tmp_path: Path) -> None:
    """A consumer SIGKILLed while it holds the heads of some keys: nobody gets any record of
    those keys before its lock deadline; then the same heads are redelivered (count 2) and every
    key is still acked in produce order, never held twice at once."""
    rng = rng_for("test_key_ordered_mode_keeps")
    admin.create_topic("ordcrash", partitions=2, replication_factor=3)
    admin.create_queue("ordcrash-q", ["ordcrash"], key_ordered=True, lock_s=2.0,
                       backoff_initial_s=0.2, backoff_max_s=1.0)
    victim, = start_workers(cluster, "ordcrash-q", tmp_path, rng, ["victim"],
                            "--max-messages", "5", "--process-ms-min", "60000",
                            "--process-ms-max", "60000")
    workers.append(victim)
    go = tmp_path / "go"
    rescuers = start_workers(cluster, "ordcrash-q", tmp_path, rng, [f"r{i}" for i in range(4)],
                             "--go-file", str(go), "--process-ms-min", "1",
                             "--process-ms-max", "5")
    workers += rescuers
    keys = [f"key{rng.randrange(20)}" for _ in range(300)]
    produced = produce(cluster, "ordcrash", [{"value": f"{k}:{i}", "key": k}
                                             for i, k in enumerate(keys)])
    by_key: dict[str, list[Msg]] = defaultdict(list)
    for k, msg in zip(keys, produced, strict=True):
        by_key[k].append(msg)
    wait_until(lambda: victim.events("recv"), 30, "the victim receiving")
    held = victim.events("recv")
    victim.kill()
    deadline_s = min(e["lock"] for e in held) / 1000
    assert time.time() < deadline_s, "the victim outlived its lock: machine too slow"
    assert len({e["k"] for e in held}) == len(held), f"one key twice at the victim: {held}"
    go.touch()
    wait_until(lambda: acked_set(rescuers) >= set(produced), 90, "all 300 messages acked")
    assert_every_message_acked_exactly_once(rescuers, produced)
    violations = key_order_violations(workers, by_key)
    assert not violations, f"{len(violations)} breaches of key order, e.g. {violations[:5]}"
    for first in held:
        of_key = sorted((e for e in receives(rescuers) if e["k"] == first["k"]),
                        key=lambda e: e["ts"])
        assert (of_key[0]["o"], of_key[0]["dc"]) == (first["o"], 2), (first, of_key[:2])
        assert of_key[0]["ts"] >= first["lock"] / 1000, (first, of_key[0])
        print(f"{first['k']}: blocked {of_key[0]['ts'] - first['ts']:.2f} s, then offset "
              f"{first['o']} redelivered to {of_key[0]['w']}")
    others = {e["w"] for e in receives(rescuers)}
    assert others == {w.consumer_id for w in rescuers}, f"workers that got work: {others}"
    stats = assert_queue_idle(admin, "ordcrash-q")
    assert stats.redelivered_total == len(held), stats
