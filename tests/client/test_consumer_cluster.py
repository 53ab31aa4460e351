"""Issue 15, the sync consumer against one real 3-node cluster (module-scoped):

* a fetch reply whose bytes are damaged for one partition (planted in the real reply on its way
  from gRPC to the real fetcher) fails that partition alone, on every poll until a seek;
* close() while a commit_async callback uses the consumer; re-subscribing; wakeup();
  (de)serializers;
* poll(timeout_s) keeps its timeout with the node the client asks first paused (last: it
  disturbs the cluster).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition, errors
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto import batch as codec

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

SPREAD = "spread"  # 4 partitions over 3 nodes: two of them share a leader
SPREAD_PARTITIONS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("consumer"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "1"}) as running:
        with Admin(running.bootstrap) as admin:
            admin.create_topic(SPREAD, partitions=SPREAD_PARTITIONS, replication_factor=3)
            for name in ("one", "two", "plain"):
                admin.create_topic(name, partitions=1, replication_factor=3)
        yield running


def produce(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> None:
    with Producer(bootstrap, linger_ms=50) as producer:
        for value in values:
            producer.send(topic, value, partition=partition)
        producer.flush(30)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- planted damage in a real fetch reply ---------------------------------------------------


class PlantedReply:
    """A gRPC Fetch future whose response has `damage` applied to one partition's bytes."""

    def __init__(self, inner: Any, damage: Callable[[Any], bool]) -> None:
        self._inner, self._damage = inner, damage

    def result(self, timeout: float | None = None) -> Any:
        response = self._inner.result(timeout)
        copy = type(response)()
        copy.CopyFrom(response)
        self._damage(copy)
        return copy

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._inner.add_done_callback(lambda _f: fn(self))

    def cancel(self) -> bool:
        return bool(self._inner.cancel())


def plant_once(monkeypatch: pytest.MonkeyPatch, consumer: Consumer, tp: TopicPartition,
               corrupt: Callable[[bytes], bytes]) -> list[int]:
    """Damage tp's bytes in the first Fetch reply that carries some; returns [times damaged]."""
    connections = consumer._connections  # noqa: SLF001 - the seam the planted fault uses
    real = connections.call_async
    done = [0]

    def damage(response: Any) -> bool:
        for result in response.partitions:
            if (result.topic, result.partition) == (tp.topic, tp.partition) and result.batches \
                    and not done[0]:
                result.batches = corrupt(result.batches)
                done[0] += 1
        return bool(done[0])

    def call_async(address: str, method: str, request: Any, **kw: Any) -> Any:
        future = real(address, method, request, **kw)
        return PlantedReply(future, damage) if method == "Fetch" else future

    monkeypatch.setattr(connections, "call_async", call_async)
    return done


def impossible_size(data: bytes) -> bytes:
    """The first batch's batch_length says 0: the batch walk itself cannot go on."""
    return data[:8] + struct.pack(">i", 0) + data[12:]


def flipped_record_byte(data: bytes) -> bytes:
    """The last byte of the first batch flipped: the header reads fine, the checksum fails."""
    size = codec.decode_header(data).size
    return data[: size - 1] + bytes([data[size - 1] ^ 0xFF]) + data[size:]


def poll_collect(consumer: Consumer, want: dict[TopicPartition, int], timeout_s: float, *,
                 until_raised: bool = False,
                 ) -> tuple[dict[TopicPartition, list[bytes]], list[errors.CorruptRecordError]]:
    got: dict[TopicPartition, list[bytes]] = {tp: [] for tp in want}
    raised: list[errors.CorruptRecordError] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(len(got[tp]) < n for tp, n in want.items()):
        if until_raised and raised:
            break
        try:
            for r in consumer.poll(timeout_s=0.3):
                got.setdefault(r.topic_partition, []).append(r.value)
        except errors.CorruptRecordError as exc:
            raised.append(exc)
    return got, raised


def test_a_partition_whose_reply_cannot_be_walked_fails_alone_and_until_sought(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    leaders = {p: cluster.settled_leader_of(SPREAD, p) for p in range(SPREAD_PARTITIONS)}
    a, b = next((p, q) for p in leaders for q in leaders if p < q and leaders[p] == leaders[q])
    bad, good = TopicPartition(SPREAD, a), TopicPartition(SPREAD, b)
    produce(cluster.bootstrap, SPREAD, a, [f"a{i}".encode() for i in range(5)])
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        planted = plant_once(monkeypatch, c, bad, impossible_size)
        c.assign([bad, good])
        c.seek_to_beginning()
        _, raised = poll_collect(c, {bad: 1}, timeout_s=5, until_raised=True)
        assert planted[0] == 1 and raised, "the planted damage never reached poll()"
        # `good` shared that reply: it must be fetched again, its new records arrive
        produce(cluster.bootstrap, SPREAD, b, [f"b{i}".encode() for i in range(3)])
        got, raised_more = poll_collect(c, {good: 3}, timeout_s=10)
        assert got[good] == [b"b0", b"b1", b"b2"], "the other partition of the reply stalled"
        for _ in range(2):  # and the damaged one keeps failing, until a seek
            with pytest.raises(errors.CorruptRecordError) as caught:
                c.poll(timeout_s=0.3)
        error = caught.value
        assert (error.topic, error.partition) == (SPREAD, a) and error.offset >= 0
        assert f"{SPREAD}/{a}" in str(error) and "seek" in str(error)
        c.seek(bad, error.offset)  # the damage was one reply: read on from there
        got, raised_after = poll_collect(c, {bad: 5}, timeout_s=10)
        assert got[bad] == [f"a{i}".encode() for i in range(5)] and not raised_after


def test_a_corrupt_batch_raises_on_every_poll_until_the_user_seeks_past_it(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    tp = TopicPartition("plain", 0)
    produce(cluster.bootstrap, "plain", 0, [f"p{i}".encode() for i in range(4)])
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        plant_once(monkeypatch, c, tp, flipped_record_byte)
        c.assign([tp])
        c.seek_to_beginning()
        raised: list[errors.CorruptRecordError] = []
        deadline = time.monotonic() + 10
        while len(raised) < 3 and time.monotonic() < deadline:
            try:
                records = c.poll(timeout_s=0.3)
            except errors.CorruptRecordError as exc:
                raised.append(exc)
                continue
            assert not raised, f"after raising once, poll() went on with {records}"
        assert len(raised) == 3
        assert {(e.topic, e.partition, e.offset) for e in raised} == {("plain", 0, 0)}
        assert "plain/0" in str(raised[0]) and "seek" in str(raised[0])
        c.seek(tp, raised[0].offset)
        got, again = poll_collect(c, {tp: 4}, timeout_s=10)
        assert got[tp] == [f"p{i}".encode() for i in range(4)] and not again


# --- close, re-subscribe, wakeup, serializers -------------------------------------------------


def test_close_waits_for_a_commit_callback_that_uses_the_consumer(cluster: LocalCluster) -> None:
    tp = TopicPartition("one", 0)
    c = Consumer(cluster.bootstrap, group_id="close-cb", topics=["one"],
                 auto_offset_reset="earliest", enable_auto_commit=False)
    wait_for(lambda: (c.poll(timeout_s=0.2), tp in c.assignment())[1], 30, "the assignment")
    closing = threading.Event()
    seen: list[object] = []

    def callback(offsets: dict[TopicPartition, int], error: BaseException | None) -> None:
        closing.wait(10)
        time.sleep(0.3)  # close() is well inside by now (its own commit, then the pool)
        seen.append(c.position(tp))
        seen.append(c.assignment())

    c.commit_async(callback=callback)
    closer = threading.Thread(target=c.close, daemon=True)
    closer.start()
    closing.set()
    closer.join(15)
    assert not closer.is_alive(), "close() deadlocked with a commit_async callback"
    assert isinstance(seen[0], int) and seen[1] == {tp}, seen
    with pytest.raises(errors.ClientClosed):
        c.poll(timeout_s=0)


def test_subscribing_again_moves_the_member_to_the_new_topics(cluster: LocalCluster) -> None:
    produce(cluster.bootstrap, "two", 0, [b"t0", b"t1"])
    revoked: list[set[TopicPartition]] = []
    with Consumer(cluster.bootstrap, group_id="resub", topics=["one"],
                  auto_offset_reset="earliest", on_revoke=revoked.append) as c:
        wait_for(lambda: (c.poll(timeout_s=0.2), c.assignment())[1]
                 == {TopicPartition("one", 0)}, 30, "the first assignment")
        c.subscribe(["two"])
        values: list[bytes] = []
        wait_for(lambda: (values.extend(r.value for r in c.poll(timeout_s=0.2)
                                        if r.topic == "two"),
                          c.assignment() == {TopicPartition("two", 0)} and len(values) >= 2)[1],
                 30, "the new subscription's partitions and records")
        assert values[:2] == [b"t0", b"t1"]
        assert {TopicPartition("one", 0)} in revoked


def test_wakeup_interrupts_a_blocking_poll_from_another_thread(cluster: LocalCluster) -> None:
    with Consumer(cluster.bootstrap, auto_offset_reset="latest") as c:
        c.assign([TopicPartition("one", 0)])
        c.poll(timeout_s=0.1)
        timer = threading.Timer(0.3, c.wakeup)
        timer.start()
        started = time.monotonic()
        with pytest.raises(errors.WakeupError):
            c.poll(timeout_s=20)
        assert time.monotonic() - started < 3
        timer.join()
        assert c.poll(timeout_s=0.1) == []  # raised once; the consumer goes on


def test_serializers_apply_to_keys_and_values_and_leave_none_alone(
        cluster: LocalCluster) -> None:
    tp = TopicPartition("plain", 0)
    with Consumer(cluster.bootstrap, auto_offset_reset="latest",
                  key_deserializer=bytes.decode, value_deserializer=json.loads) as c:
        c.assign([tp])
        c.position(tp)
        with Producer(cluster.bootstrap, key_serializer=str.upper,
                      value_serializer=json.dumps) as producer:
            producer.send("plain", {"n": 1}, key="k", partition=0)
            producer.send("plain", None, partition=0)
            producer.flush(30)
        got: list[Any] = []
        wait_for(lambda: (got.extend(c.poll(timeout_s=0.2)), len(got) >= 2)[1], 20, "records")
        assert [(r.key, r.value) for r in got] == [("K", {"n": 1}), (None, None)]


def test_other_threads_use_the_consumer_while_a_poll_waits(cluster: LocalCluster) -> None:
    tp = TopicPartition("one", 0)
    with Consumer(cluster.bootstrap, auto_offset_reset="latest") as c:
        c.assign([tp])
        c.poll(timeout_s=0.1)
        poller = threading.Thread(target=c.poll, kwargs={"timeout_s": 3.0})
        poller.start()
        time.sleep(0.2)  # the poll is waiting for records by now
        started = time.monotonic()
        c.pause(tp)
        assert c.assignment() == {tp} and c.paused() == {tp}
        took = time.monotonic() - started
        c.resume(tp)
        poller.join()
    assert took < 0.5, f"assignment()/pause() waited {took:.2f} s for the poll in progress"


# --- a paused node (last: it disturbs the cluster) ----------------------------------------------


def test_poll_keeps_its_timeout_with_the_first_bootstrap_node_paused(
        cluster: LocalCluster) -> None:
    leaders = {p: cluster.settled_leader_of(SPREAD, p) for p in range(SPREAD_PARTITIONS)}
    paused = leaders[0]
    healthy = [TopicPartition(SPREAD, p) for p, node in leaders.items() if node != paused]
    assert healthy, leaders
    bootstrap = ",".join([cluster.node(paused).address,
                          *(n.address for n in cluster.nodes if n.id != paused)])
    with Consumer(bootstrap, auto_offset_reset="earliest", metadata_max_age_ms=200,
                  request_timeout_ms=5000, fetch_max_wait_ms=100) as c:
        c.assign(healthy)
        c.poll(timeout_s=0.2)  # positions known, node `paused` answered the metadata
        cluster.pause(paused)
        try:
            # and a partition the paused node leads: its position (ListOffsets) cannot be had
            c.assign([*healthy, *(TopicPartition(SPREAD, p) for p, node in leaders.items()
                                  if node == paused)])
            times = []
            for _ in range(4):
                started = time.monotonic()
                c.poll(timeout_s=0.4)
                times.append(time.monotonic() - started)
        finally:
            cluster.resume(paused)
    print(f"poll(0.4) with node {paused} paused: {[f'{t:.2f}' for t in times]} s")
    assert max(times) < 0.4 + 0.5, times
