"""Issue 15: records buffered when a program ends without ``close()`` must be delivered (or fail
with a callback), and a ``close()`` interrupted by Ctrl-C must leave the producer closable.

Real subprocesses against a real 1-node cluster: each script is an ordinary user program, and the
node is SIGSTOPped where a test needs delivery held up (a close() long enough to interrupt).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from tidelog.client import Admin, Consumer, TopicPartition
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

RECORDS = 200

PRELUDE = textwrap.dedent("""
    import atexit, sys
    from tidelog.client import Producer
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    outcomes = {"ok": 0, "failed": 0}
    def callback(metadata, error):
        outcomes["failed" if error else "ok"] += 1
    # atexit handlers run after the producer's exit flush (threading's shutdown hooks run first)
    atexit.register(lambda: print("outcomes", outcomes["ok"], outcomes["failed"], flush=True))
""")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("producer-exit"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "1"}, nodes=1) as running:
        yield running


def make_topic(cluster: LocalCluster, name: str) -> str:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(name, partitions=1, replication_factor=1)
    return name


def values_in(cluster: LocalCluster, topic: str, expected: int) -> list[bytes]:
    """Every record of the topic's one partition (reads until `expected`, at most 15 s)."""
    out: list[bytes] = []
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest",
                  fetch_max_wait_ms=100) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(out) < expected:
            out.extend(r.value for r in consumer.poll(timeout_s=0.5))
        out.extend(r.value for r in consumer.poll(timeout_s=0.3))  # and nothing more
    return out


class Script:
    """A user program in a subprocess, driven line by line through stdin/stdout."""

    def __init__(self, body: str, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(body), *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def expect(self, marker: str, timeout_s: float = 30) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # readline blocks; the pytest timeout bounds it
            line = stdout.readline()
            if not line:
                break
            if line.strip() == marker:
                return
        self.process.kill()
        raise AssertionError(f"no {marker!r} line; stderr: {self.process.stderr.read()}")

    def tell(self, line: str = "go") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        try:
            out, err = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"script hung; stdout {out!r} stderr {err!r}") from None
        return self.process.returncode, out, err


def test_records_sent_without_close_are_delivered_at_exit(cluster: LocalCluster) -> None:
    topic = make_topic(cluster, "exit-no-close")
    started = time.monotonic()
    # linger 5 s: nothing would leave before the interpreter ends unless the exit flushes it.
    # The main thread returns first; a worker thread (non-daemon) still sends the second half
    # after that: the exit flush must wait for it, as Python waits for such threads.
    rc, out, err = Script("""
        import threading, time
        producer = Producer(bootstrap, acks="all", linger_ms=5000, delivery_timeout_ms=60_000)
        for i in range(count // 2):
            producer.send(topic, b"%d" % i, callback=callback)
        def later():
            time.sleep(0.3)
            for i in range(count // 2, count):
                producer.send(topic, b"%d" % i, callback=callback)
        threading.Thread(target=later).start()
    """, cluster.bootstrap, topic, str(RECORDS)).finish(60)
    elapsed = time.monotonic() - started
    assert rc == 0, err
    assert f"outcomes {RECORDS} 0" in out, (out, err)  # every callback ran before the end
    assert values_in(cluster, topic, RECORDS) == [b"%d" % i for i in range(RECORDS)]
    assert elapsed < 5, f"the exit flush waited for linger_ms ({elapsed:.1f} s)"


def test_exit_flush_is_bounded_and_fails_what_it_cannot_deliver(cluster: LocalCluster) -> None:
    topic = make_topic(cluster, "exit-bounded")
    script = Script("""
        producer = Producer(bootstrap, acks="all", linger_ms=0, exit_flush_timeout_s=1.0)
        producer.send(topic, b"first").result(15)
        print("ready", flush=True)
        sys.stdin.readline()  # the node is paused now
        for i in range(count):
            producer.send(topic, b"%d" % i, callback=callback)
    """, cluster.bootstrap, topic, str(RECORDS))
    script.expect("ready")
    cluster.pause(1)
    try:
        started = time.monotonic()
        script.tell()
        rc, out, err = script.finish(30)
        elapsed = time.monotonic() - started
    finally:
        cluster.resume(1)
    assert rc == 0, err
    assert f"outcomes 0 {RECORDS}" in out, (out, err)  # each failure reached its callback
    assert elapsed < 1.0 + 6, f"exit took {elapsed:.1f} s with exit_flush_timeout_s=1"


def test_close_interrupted_by_sigint_can_be_called_again(cluster: LocalCluster) -> None:
    topic = make_topic(cluster, "exit-sigint")
    script = Script("""
        producer = Producer(bootstrap, acks="all", linger_ms=0, delivery_timeout_ms=60_000)
        producer.send(topic, b"first").result(15)
        print("ready", flush=True)
        sys.stdin.readline()  # the node is paused now
        for i in range(count):
            producer.send(topic, b"%d" % i, callback=callback)
        try:
            print("closing", flush=True)
            producer.close()
            print("closed at once", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        sys.stdin.readline()  # the node runs again
        producer.close(timeout=30)
        print("closed", outcomes["ok"], outcomes["failed"], flush=True)
    """, cluster.bootstrap, topic, str(RECORDS))
    script.expect("ready")
    cluster.pause(1)
    try:
        script.tell()
        script.expect("closing")
        time.sleep(0.3)  # into close(): it waits for the paused node
        script.process.send_signal(signal.SIGINT)
        script.expect("interrupted")
    finally:
        cluster.resume(1)
    script.tell()
    rc, out, err = script.finish(40)
    assert rc == 0, err
    assert f"closed {RECORDS} 0" in out, (out, err)  # the second close delivered everything
    assert values_in(cluster, topic, RECORDS + 1) == [
        b"first", *(b"%d" % i for i in range(RECORDS))]


def test_an_unclosed_producer_is_collected_and_still_delivers(cluster: LocalCluster) -> None:
    """The exit hook must not keep producers alive: dropped unclosed, one is garbage-collected,
    and its finalizer starts the graceful close (its records still arrive, callbacks run)."""
    import gc
    import threading
    import weakref

    from tidelog.client import Producer

    topic = make_topic(cluster, "exit-collected")
    delivered = threading.Semaphore(0)
    producer = Producer(cluster.bootstrap, linger_ms=5000)
    for i in range(20):
        producer.send(topic, b"%d" % i, callback=lambda m, e: e is None and delivered.release())
    sender = producer._sender
    assert sender is not None
    gone = weakref.ref(producer)
    del producer
    gc.collect()
    assert gone() is None, gc.get_referrers(gone())
    assert all(delivered.acquire(timeout=10) for _ in range(20))  # linger 5 s skipped
    assert sender.finished.wait(10), "the sender of a collected producer never stopped"
