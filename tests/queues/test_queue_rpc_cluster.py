"""The tidelog.v1.Queues service on real 3-node clusters, driven by raw gRPC stubs (no client
library in between: these are the wire behaviours the client relies on).

One cluster serves the module (small internal topics to spare the two CI cores); the failover
test kills the coordinator with SIGKILL and restarts it before it ends.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from tidelog.client import Admin, Producer
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc, queue_pb2_grpc
from tidelog.proto import queue_pb2 as qpb
from tidelog.proto.batch import decode_records, iter_batches

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

RETRIABLE = (pb.NOT_COORDINATOR, pb.COORDINATOR_NOT_AVAILABLE, pb.REQUEST_TIMED_OUT)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("queues"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "4"}) as running:
        yield running


def detail_of(exc: grpc.RpcError) -> pb.ErrorDetail | None:
    for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "tidelog-error-bin":
            return pb.ErrorDetail.FromString(value)
    return None


class Queues:
    """Raw stubs; every call goes to the queue's coordinator, found again on NOT_COORDINATOR /
    COORDINATOR_NOT_AVAILABLE (what a client must do)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.channels: dict[str, grpc.Channel] = {}

    def stub(self, address: str) -> queue_pb2_grpc.QueuesStub:
        if address not in self.channels:
            self.channels[address] = grpc.insecure_channel(address)
        return queue_pb2_grpc.QueuesStub(self.channels[address])

    def coordinator(self, queue: str, timeout_s: float = 60.0, attempt_s: float = 20.0
                    ) -> pb.FindCoordinatorResponse:
        """`attempt_s` bounds the wait on each node: a SIGSTOPped node is still `running` and
        holds every call to it until the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            for node in self.cluster.nodes:
                if not node.running:
                    continue
                try:
                    return self.stub(node.address).FindQueueCoordinator(
                        qpb.FindQueueCoordinatorRequest(queue=queue), timeout=attempt_s)
                except grpc.RpcError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no coordinator for {queue} within {timeout_s} s")
            time.sleep(0.2)

    def call(self, method: str, request: Any, queue: str, timeout_s: float = 60.0,
             attempt_s: float = 40.0) -> Any:
        """Retried on the coordinator's move for `timeout_s`, each attempt given `attempt_s`
        (short ones only for idempotent calls while a node is paused: a deadline is retried)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.coordinator(queue, timeout_s, min(attempt_s, 20.0))
            try:
                return getattr(self.stub(found.address), method)(request, timeout=attempt_s)
            except grpc.RpcError as exc:
                detail = detail_of(exc)
                retriable = (detail is not None and detail.code in RETRIABLE) or \
                    exc.code() in (grpc.StatusCode.UNAVAILABLE,  # type: ignore[attr-defined]
                                   grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retriable or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


@pytest.fixture
def queues(cluster: LocalCluster) -> Iterator[Queues]:
    q = Queues(cluster)
    yield q
    q.close()


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    delivery_count: int
    lock_deadline_ms: int


def messages_of(response: Any) -> list[Msg]:
    """Decode the raw batches; keep only the acquired offsets (what a client does)."""
    out = []
    for part in response.partitions:
        counts = {}
        for r in part.acquired:
            for offset in range(r.first_offset, r.last_offset + 1):
                counts[offset] = r.delivery_count
        data = part.batches
        for pos, header in iter_batches(data):
            if header.is_control:
                continue
            for record in decode_records(data[pos:pos + header.size]):
                if record.offset in counts:
                    out.append(Msg(part.topic, part.partition, record.offset, record.key,
                                   record.value, record.headers, counts.pop(record.offset),
                                   part.lock_deadline_ms))
        assert not counts, f"acquired offsets without a record in the batches: {sorted(counts)}"
    return out


def receive(queues: Queues, queue: str, consumer: str, max_messages: int = 100,
            wait_ms: int = 500) -> list[Msg]:
    return messages_of(queues.call("Receive", qpb.ReceiveRequest(
        queue=queue, consumer_id=consumer, max_messages=max_messages, max_wait_ms=wait_ms),
        queue))


def settle(queues: Queues, queue: str, consumer: str, msgs: list[Msg], action: int,
           **extra: Any) -> qpb.SettleResponse:
    return queues.call("Settle", qpb.SettleRequest(queue=queue, consumer_id=consumer, settlements=[
        qpb.Settlement(topic=m.topic, partition=m.partition, first_offset=m.offset,
                       last_offset=m.offset, delivery_count=m.delivery_count, action=action,
                       **extra) for m in msgs]), queue)


def receive_until(queues: Queues, queue: str, consumer: str, count: int, timeout_s: float = 30,
                  ack: bool = True) -> list[Msg]:
    got: list[Msg] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count}"
        msgs = receive(queues, queue, consumer, max_messages=count - len(got), wait_ms=1000)
        if ack and msgs:
            result = settle(queues, queue, consumer, msgs, qpb.ACK)
            assert not result.results, result
        got.extend(msgs)
    return got


def create_queue(queues: Queues, name: str, topics: list[str], **config: Any
                 ) -> qpb.QueueConfig:
    return queues.call("CreateQueue", qpb.CreateQueueRequest(
        config=qpb.QueueConfig(name=name, topics=topics, **config)), name).config


def produce(cluster: LocalCluster, topic: str, records: list[tuple[bytes | None, bytes,
            list[tuple[str, bytes]]]], partition: int = 0) -> None:
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        for key, value, headers in records:
            producer.send(topic, value=value, key=key, headers=headers, partition=partition)
        producer.flush()


def read_topic(cluster: LocalCluster, topic: str, partition: int,
               timeout_s: float = 20.0) -> list[Any]:
    """Every committed record of a partition, read from its leader with raw Fetch (again from
    the start if leadership moves meanwhile: the balancer moves new partitions' leaders)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _read_from_leader(cluster, topic, partition)
        except (grpc.RpcError, _Moved):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class _Moved(Exception):
    pass


def _read_from_leader(cluster: LocalCluster, topic: str, partition: int) -> list[Any]:
    leader = cluster.leader_of(topic, partition)
    out = []
    offset = 0
    with grpc.insecure_channel(cluster.node(leader).address) as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        while True:
            response = stub.Fetch(pb.FetchRequest(partitions=[pb.FetchPartition(
                topic=topic, partition=partition, offset=offset, max_bytes=1 << 20)]),
                timeout=10)
            (part,) = response.partitions
            if part.error:
                raise _Moved(part.error_message)
            if not part.batches:
                return out
            for pos, header in iter_batches(part.batches):
                if not header.is_control:
                    out.extend(r for r in decode_records(part.batches[pos:pos + header.size])
                               if r.offset >= offset)
                offset = header.last_offset + 1


def expect_error(call: Callable[[], Any], status: grpc.StatusCode, code: int) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == status, info.value  # type: ignore[attr-defined]
    detail = detail_of(info.value)
    assert detail is not None and detail.code == code, detail
    return info.value.details()  # type: ignore[attr-defined,no-any-return]


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# ============================================================================ tests


def test_create_describe_list_delete(cluster: LocalCluster, admin: Admin,
                                     queues: Queues) -> None:
    admin.create_topic("adm", partitions=2, replication_factor=3)
    config = create_queue(queues, "adm-q", ["adm"], lock_ms=5000)
    assert config.dead_letter_topic == "adm-q.dlq" and config.max_deliveries == 10
    assert config.lock_ms == 5000 and config.backoff_initial_ms == 1000
    assert config.max_in_flight == 5000 and config.start == "earliest"
    meta = [t for t in _metadata(cluster, ["adm-q.dlq"]).topics if t.name == "adm-q.dlq"]
    assert meta and len(meta[0].partitions) == 2 and len(meta[0].partitions[0].replicas) == 3
    expect_error(lambda: queues.call("CreateQueue", qpb.CreateQueueRequest(
        config=qpb.QueueConfig(name="adm-q", topics=["adm"])), "adm-q"),
        grpc.StatusCode.ALREADY_EXISTS, pb.QUEUE_ALREADY_EXISTS)
    again = queues.call("CreateQueue", qpb.CreateQueueRequest(
        config=qpb.QueueConfig(name="adm-q", topics=["adm"], lock_ms=9999), if_not_exists=True),
        "adm-q")
    assert again.config.lock_ms == 5000, "if_not_exists keeps the existing config"

    def described_by_its_coordinator() -> Any:
        """DescribeQueue, once it names the coordinator FindQueueCoordinator names (the leader
        balancer may move it between the two calls right after the cluster starts)."""
        answer = queues.call("DescribeQueue", qpb.DescribeQueueRequest(queue="adm-q"), "adm-q")
        return answer if answer.coordinator_id == queues.coordinator("adm-q").node_id else None

    described = wait_until(described_by_its_coordinator, 30, "DescribeQueue naming the coordinator")
    assert described.config.topics == ["adm"]
    assert {(p.topic, p.partition) for p in described.stats.partitions} == {("adm", 0),
                                                                             ("adm", 1)}

    def every_listing_names_the_coordinator() -> bool:
        """ListQueues on each node names the queue once, with the coordinator FindQueueCoordinator
        names. Asked until they agree: right after the cluster starts, the leader balancer may
        move the queue's __queue_state partition (its coordinator) between two of the calls."""
        now = queues.coordinator("adm-q").node_id
        listed = [q for node in cluster.nodes for q in queues.stub(node.address).ListQueues(
            qpb.ListQueuesRequest(), timeout=10).queues]
        return [(q.name, q.coordinator_id) for q in listed if q.name == "adm-q"] == \
            [("adm-q", now)]

    wait_until(every_listing_names_the_coordinator, 30, "ListQueues naming the coordinator")
    altered = queues.call("AlterQueue", qpb.AlterQueueRequest(
        queue="adm-q", set={"max_deliveries": "4"}), "adm-q")
    assert altered.config.max_deliveries == 4
    expect_error(lambda: queues.call("AlterQueue", qpb.AlterQueueRequest(
        queue="adm-q", set={"topics": "x"}), "adm-q"),
        grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_QUEUE_CONFIG)
    queues.call("DeleteQueue", qpb.DeleteQueueRequest(queue="adm-q"), "adm-q")
    expect_error(lambda: queues.call("DescribeQueue", qpb.DescribeQueueRequest(queue="adm-q"),
                                     "adm-q"), grpc.StatusCode.NOT_FOUND, pb.QUEUE_NOT_FOUND)
    # Refused configs: an internal topic, a missing topic, an out-of-range value.
    expect_error(lambda: create_queue(queues, "bad-q", ["__consumer_offsets"]),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_QUEUE_CONFIG)
    expect_error(lambda: create_queue(queues, "bad-q", ["no-such-topic"]),
                 grpc.StatusCode.NOT_FOUND, pb.UNKNOWN_TOPIC_OR_PARTITION)
    message = expect_error(lambda: create_queue(queues, "bad-q", ["adm"], max_deliveries=-3),
                           grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_QUEUE_CONFIG)
    assert "max_deliveries" in message


def _metadata(cluster: LocalCluster, topics: list[str]) -> Any:
    from tidelog.node.local_cluster import metadata

    return metadata(cluster.nodes[0].address, topics)


def test_receive_ack_delivers_each_record_once_with_its_body(
        cluster: LocalCluster, admin: Admin, queues: Queues) -> None:
    admin.create_topic("work", partitions=2, replication_factor=3)
    create_queue(queues, "work-q", ["work"])
    for p in range(2):
        produce(cluster, "work", [(f"k{i}".encode(), f"p{p}-v{i}".encode(),
                                   [("h", f"{i}".encode())]) for i in range(25)], partition=p)
    got = receive_until(queues, "work-q", "c1", 50)
    assert sorted(m.value for m in got) == sorted(
        f"p{p}-v{i}".encode() for p in range(2) for i in range(25))
    assert all(m.delivery_count == 1 for m in got)
    one = next(m for m in got if m.value == b"p1-v7")
    assert one.key == b"k7" and ("h", b"7") in one.headers
    assert one.lock_deadline_ms > time.time() * 1000
    assert receive(queues, "work-q", "c2", wait_ms=300) == []
    stats = queues.call("DescribeQueue", qpb.DescribeQueueRequest(queue="work-q"),
                        "work-q").stats
    assert stats.acked_total == 50 and stats.depth == 0 and stats.in_flight == 0
    # A long-poll is woken by new data well before its max_wait.
    started = time.monotonic()
    later = threading.Timer(0.5, produce, args=(cluster, "work", [(None, b"late", [])]))
    later.start()
    msgs = receive(queues, "work-q", "c2", wait_ms=10_000)
    later.join()
    assert [m.value for m in msgs] == [b"late"] and time.monotonic() - started < 5


def test_partitions_without_a_local_replica_are_read_from_their_leader(
        cluster: LocalCluster, admin: Admin, queues: Queues) -> None:
    """RF 1 over 3 nodes: the coordinator holds one partition at most; the others are read
    with Broker.Fetch from their leaders (and their long-polls are woken by polling)."""
    admin.create_topic("remote", partitions=3, replication_factor=1)
    create_queue(queues, "remote-q", ["remote"])
    for p in range(3):
        produce(cluster, "remote", [(None, f"r{p}-{i}".encode(), []) for i in range(10)],
                partition=p)
    got = receive_until(queues, "remote-q", "c", 30)
    assert sorted(m.value for m in got) == sorted(f"r{p}-{i}".encode() for p in range(3)
                                                  for i in range(10))
    coordinator = queues.coordinator("remote-q").node_id
    leaders = {cluster.leader_of("remote", p) for p in range(3)}
    assert leaders - {coordinator}, "every partition on the coordinator: nothing read remotely"
    remote_partition = next(p for p in range(3) if cluster.leader_of("remote", p) != coordinator)
    later = threading.Timer(0.5, produce, args=(cluster, "remote", [(None, b"late", [])]),
                            kwargs={"partition": remote_partition})
    later.start()
    msgs = receive(queues, "remote-q", "c", wait_ms=10_000)
    later.join()
    assert [(m.partition, m.value) for m in msgs] == [(remote_partition, b"late")]


def test_lock_expiry_redelivers_with_count_2_and_fences_the_old_holder(
        cluster: LocalCluster, admin: Admin, queues: Queues) -> None:
    admin.create_topic("expiry", partitions=1, replication_factor=3)
    create_queue(queues, "expiry-q", ["expiry"], lock_ms=1000, backoff_initial_ms=0,
                 backoff_max_ms=0)
    produce(cluster, "expiry", [(None, b"x", [])])
    (first,) = receive_until(queues, "expiry-q", "slow", 1, ack=False)
    assert first.delivery_count == 1
    (again,) = receive_until(queues, "expiry-q", "fast", 1, ack=False, timeout_s=10)
    assert (again.offset, again.delivery_count, again.value) == (first.offset, 2, b"x")
    late = settle(queues, "expiry-q", "slow", [first], qpb.ACK)
    assert [(r.index, r.error) for r in late.results] == [(0, pb.LOCK_LOST)]
    extended = settle(queues, "expiry-q", "fast", [again], qpb.EXTEND, extend_ms=20_000)
    assert [r.index for r in extended.results] == [0] and extended.results[0].error == pb.NONE
    assert extended.results[0].lock_deadline_ms > time.time() * 1000 + 15_000
    assert not settle(queues, "expiry-q", "fast", [again], qpb.ACK).results


def test_nack_backoff_is_applied_by_the_server(cluster: LocalCluster, admin: Admin,
                                               queues: Queues) -> None:
    admin.create_topic("backoff", partitions=1, replication_factor=3)
    create_queue(queues, "backoff-q", ["backoff"], backoff_initial_ms=2000,
                 backoff_max_ms=2000)
    produce(cluster, "backoff", [(None, b"retry-me", [])])
    (m,) = receive_until(queues, "backoff-q", "c", 1, ack=False)
    nacked_at = time.monotonic()
    assert not settle(queues, "backoff-q", "c", [m], qpb.NACK, delay_ms=-1).results
    assert receive(queues, "backoff-q", "c", wait_ms=800) == [], "redelivered before the backoff"
    (again,) = receive_until(queues, "backoff-q", "c", 1, ack=False, timeout_s=10)
    waited = time.monotonic() - nacked_at
    assert again.delivery_count == 2 and 1.5 <= waited < 6, waited
    # An explicit delay of 0 makes it available at once; RELEASE does not count an attempt.
    assert not settle(queues, "backoff-q", "c", [again], qpb.NACK, delay_ms=0).results
    (third,) = receive(queues, "backoff-q", "c", wait_ms=2000)
    assert third.delivery_count == 3
    assert not settle(queues, "backoff-q", "c", [third], qpb.RELEASE).results
    (fourth,) = receive(queues, "backoff-q", "c", wait_ms=2000)
    assert fourth.delivery_count == 3


def dlq_headers(record: Any) -> dict[str, bytes]:
    return {k: v for k, v in record.headers if k.startswith("tidelog-dlq-")}


def test_max_deliveries_dead_letters_body_key_headers_exactly_once(
        cluster: LocalCluster, admin: Admin, queues: Queues) -> None:
    admin.create_topic("poison", partitions=2, replication_factor=3)
    create_queue(queues, "poison-q", ["poison"], max_deliveries=3, backoff_initial_ms=0,
                 backoff_max_ms=0)
    produce(cluster, "poison", [(b"pk", b"poison body", [("trace", b"t-1")])], partition=1)
    counts = []
    for _ in range(3):
        (m,) = receive_until(queues, "poison-q", "c", 1, ack=False, timeout_s=10)
        counts.append(m.delivery_count)
        assert not settle(queues, "poison-q", "c", [m], qpb.NACK, delay_ms=0).results
    assert counts == [1, 2, 3]
    assert receive(queues, "poison-q", "c", wait_ms=1000) == []
    dead = wait_until(lambda: read_topic(cluster, "poison-q.dlq", 1), 20, "the dead letter")
    time.sleep(2)  # a second copy would have been written by now
    dead = read_topic(cluster, "poison-q.dlq", 1) + read_topic(cluster, "poison-q.dlq", 0)
    assert len(dead) == 1, dead
    (record,) = dead
    assert record.key == b"pk" and record.value == b"poison body"
    assert ("trace", b"t-1") in record.headers
    h = dlq_headers(record)
    assert h["tidelog-dlq-queue"] == b"poison-q"
    assert h["tidelog-dlq-reason"] == b"max deliveries"
    assert h["tidelog-dlq-attempts"] == b"3"
    assert h["tidelog-dlq-source-topic"] == b"poison"
    assert h["tidelog-dlq-source-partition"] == b"1"
    assert int(h["tidelog-dlq-source-offset"]) == m.offset
    assert int(h["tidelog-dlq-first-delivery-ms"]) <= int(h["tidelog-dlq-last-delivery-ms"])
    assert int(h["tidelog-dlq-source-timestamp-ms"]) > 0
    stats = queues.call("DescribeQueue", qpb.DescribeQueueRequest(queue="poison-q"),
                        "poison-q").stats
    assert stats.dead_lettered_total == 1 and stats.depth == 0 and stats.dlq_depth == 1


def test_reject_then_redrive_brings_the_message_back_once(
        cluster: LocalCluster, admin: Admin, queues: Queues) -> None:
    admin.create_topic("rej", partitions=1, replication_factor=3)
    create_queue(queues, "rej-q", ["rej"])
    produce(cluster, "rej", [(b"rk", b"reject me", [("a", b"1")])])
    (m,) = receive_until(queues, "rej-q", "c", 1, ack=False)
    assert not settle(queues, "rej-q", "c", [m], qpb.REJECT, reason="bad input").results
    (dead,) = wait_until(lambda: read_topic(cluster, "rej-q.dlq", 0), 20, "the dead letter")
    assert dlq_headers(dead)["tidelog-dlq-reason"] == b"bad input"
    assert dlq_headers(dead)["tidelog-dlq-attempts"] == b"1"
    def dlq_depth() -> int:
        return queues.call("DescribeQueue", qpb.DescribeQueueRequest(queue="rej-q"),
                           "rej-q").stats.dlq_depth

    assert dlq_depth() == 1
    redriven = queues.call("Redrive", qpb.RedriveRequest(
        queue="rej-q", dlq_partition=-1, from_offset=-1, to_offset=-1), "rej-q")
    assert redriven.redriven == 1
    assert dlq_depth() == 0
    (back,) = receive_until(queues, "rej-q", "c", 1, timeout_s=20)
    assert (back.key, back.value, back.delivery_count) == (b"rk", b"reject me", 1)
    assert ("a", b"1") in back.headers and not dlq_headers(back)
    assert back.offset > m.offset
    again = queues.call("Redrive", qpb.RedriveRequest(
        queue="rej-q", dlq_partition=-1, from_offset=-1, to_offset=-1), "rej-q")
    assert again.redriven == 0, "the cursor moved past the redriven dead letter"


def test_a_ranged_redrive_past_the_cursor_leaves_the_earlier_letters_to_redrive(
        cluster: LocalCluster, admin: Admin, queues: Queues) -> None:
    """Found by reading the code: redriving [3, end) moved the cursor to the end, so a plain
    redrive afterwards never reached the letters below 3 (it returned 0, not 2)."""
    admin.create_topic("ranged", partitions=1, replication_factor=3)
    create_queue(queues, "ranged-q", ["ranged"])
    produce(cluster, "ranged", [(b"k", f"bad {i}".encode(), []) for i in range(3)])
    got = receive_until(queues, "ranged-q", "c", 3, ack=False)
    assert not settle(queues, "ranged-q", "c", got, qpb.REJECT, reason="bad").results
    letters = wait_until(lambda: len(read_topic(cluster, "ranged-q.dlq", 0)) == 3 and
                         read_topic(cluster, "ranged-q.dlq", 0), 20, "three dead letters")
    last = max(r.offset for r in letters)

    def redrive(from_offset: int) -> int:
        return queues.call("Redrive", qpb.RedriveRequest(
            queue="ranged-q", dlq_partition=0, from_offset=from_offset, to_offset=-1),
            "ranged-q").redriven

    assert redrive(last) == 1
    assert redrive(-1) == 3, "the plain redrive starts at the cursor, below the ranged one"
    assert redrive(-1) == 0


def test_key_order_delay_header_and_ttl(cluster: LocalCluster, admin: Admin,
                                        queues: Queues) -> None:
    admin.create_topic("keyed", partitions=1, replication_factor=3)
    create_queue(queues, "keyed-q", ["keyed"], key_ordered=True)
    produce(cluster, "keyed", [(b"A", b"a1", []), (b"A", b"a2", []), (b"B", b"b1", [])])
    first = receive_until(queues, "keyed-q", "c1", 2, ack=False)
    assert sorted(m.value for m in first) == [b"a1", b"b1"], "one record per key in flight"
    assert receive(queues, "keyed-q", "c2", wait_ms=500) == [], "a2 waits for a1"
    a1 = next(m for m in first if m.value == b"a1")
    assert not settle(queues, "keyed-q", "c1", [a1], qpb.ACK).results
    (a2,) = receive(queues, "keyed-q", "c2", wait_ms=3000)
    assert a2.value == b"a2"

    admin.create_topic("later", partitions=1, replication_factor=3)
    create_queue(queues, "later-q", ["later"])
    at_ms = int(time.time() * 1000) + 2000
    produce(cluster, "later", [(None, b"scheduled", [("tidelog-deliver-at-ms",
                                                      str(at_ms).encode())])])
    assert receive(queues, "later-q", "c", wait_ms=800) == [], "delivered before deliver-at"
    (m,) = receive(queues, "later-q", "c", wait_ms=5000)
    assert m.value == b"scheduled" and time.time() * 1000 >= at_ms - 50

    admin.create_topic("ttl", partitions=1, replication_factor=3)
    create_queue(queues, "ttl-q", ["ttl"], ttl_ms=300, delay_ms=1000)
    produce(cluster, "ttl", [(b"tk", b"too late", [])])
    assert receive(queues, "ttl-q", "c", wait_ms=1500) == []
    (dead,) = wait_until(lambda: read_topic(cluster, "ttl-q.dlq", 0), 20, "the expired record")
    assert dead.value == b"too late"
    assert dlq_headers(dead)["tidelog-dlq-reason"] == b"expired"


def test_malformed_requests_get_clear_errors(cluster: LocalCluster, admin: Admin,
                                             queues: Queues) -> None:
    admin.create_topic("mal", partitions=1, replication_factor=3)
    create_queue(queues, "mal-q", ["mal"])

    def receive_raw(**fields: Any) -> Any:
        return queues.call("Receive", qpb.ReceiveRequest(**fields), fields.get("queue", "x"))

    expect_error(lambda: receive_raw(queue="nope-q", consumer_id="c", max_messages=1),
                 grpc.StatusCode.NOT_FOUND, pb.QUEUE_NOT_FOUND)
    assert "consumer_id" in expect_error(
        lambda: receive_raw(queue="mal-q", consumer_id="", max_messages=1),
        grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    for bad in (0, 10_001):
        expect_error(lambda bad=bad: receive_raw(queue="mal-q", consumer_id="c",
                                                 max_messages=bad),
                     grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    too_many = [qpb.Settlement(topic="mal", partition=0, first_offset=i, last_offset=i,
                               delivery_count=1) for i in range(10_001)]
    expect_error(lambda: queues.call("Settle", qpb.SettleRequest(
        queue="mal-q", consumer_id="c", settlements=too_many), "mal-q"),
        grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    bad_items = [
        qpb.Settlement(topic="mal", partition=0, first_offset=5, last_offset=4,
                       delivery_count=1),
        qpb.Settlement(topic="mal", partition=0, first_offset=-1, last_offset=4,
                       delivery_count=1),
        qpb.Settlement(topic="other", partition=0, first_offset=1, last_offset=1,
                       delivery_count=1),
        qpb.Settlement(topic="mal", partition=0, first_offset=1, last_offset=1,
                       delivery_count=0),
        qpb.Settlement(topic="mal", partition=0, first_offset=1, last_offset=1,
                       delivery_count=1),  # well formed, but not held: LOCK_LOST
    ]
    result = queues.call("Settle", qpb.SettleRequest(queue="mal-q", consumer_id="c",
                                                     settlements=bad_items), "mal-q")
    assert [(r.index, r.error) for r in result.results] == [
        (0, pb.INVALID_REQUEST), (1, pb.INVALID_REQUEST), (2, pb.INVALID_REQUEST),
        (3, pb.INVALID_REQUEST), (4, pb.LOCK_LOST)]
    assert all(r.error_message for r in result.results)
    expect_error(lambda: queues.call("Settle", qpb.SettleRequest(
        queue="mal-q", consumer_id="", settlements=bad_items[4:]), "mal-q"),
        grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    expect_error(lambda: queues.call("Redrive", qpb.RedriveRequest(
        queue="mal-q", dlq_partition=7, from_offset=-1, to_offset=-1), "mal-q"),
        grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    # A node that is not the coordinator says so (retriable), with the detail.
    found = queues.coordinator("mal-q")
    other = next(n for n in cluster.nodes if n.id != found.node_id)
    expect_error(lambda: queues.stub(other.address).DescribeQueue(
        qpb.DescribeQueueRequest(queue="mal-q"), timeout=10),
        grpc.StatusCode.UNAVAILABLE, pb.NOT_COORDINATOR)


def test_coordinator_failover_keeps_acks_and_redelivers_old_locks(
        cluster: LocalCluster, admin: Admin, queues: Queues) -> None:
    admin.create_topic("fail", partitions=2, replication_factor=3)
    create_queue(queues, "fail-q", ["fail"], lock_ms=4000)
    for p in range(2):
        produce(cluster, "fail", [(None, f"{p}-{i}".encode(), []) for i in range(30)],
                partition=p)
    acked = receive_until(queues, "fail-q", "a", 20)
    locked = receive_until(queues, "fail-q", "b", 10, ack=False)
    acked_values = {m.value for m in acked}
    locked_values = {m.value for m in locked}
    victim = queues.coordinator("fail-q").node_id
    cluster.kill(victim)
    try:
        rest: list[Msg] = []
        deadline = time.monotonic() + 90
        while len({m.value for m in rest}) < 40:
            assert time.monotonic() < deadline, f"only {len(rest)} after failover"
            msgs = receive(queues, "fail-q", "c", wait_ms=1000)
            if msgs:
                assert not settle(queues, "fail-q", "c", msgs, qpb.ACK).results
            rest.extend(msgs)
        assert queues.coordinator("fail-q").node_id != victim
        values = [m.value for m in rest]
        assert not acked_values & set(values), "an acked record was delivered again"
        assert len(values) == len(set(values)) == 40
        assert set(values) | acked_values == {f"{p}-{i}".encode() for p in range(2)
                                              for i in range(30)}
        assert {m.delivery_count for m in rest if m.value in locked_values} == {2}
        assert {m.delivery_count for m in rest if m.value not in locked_values} == {1}
    finally:
        cluster.start(victim)
        cluster.wait_healthy(timeout_s=60)


# ====================================================== the dead-letter exactly-once window

CRASH_NODE = Path(__file__).with_name("dlq_crash_node.py")


class CrashWindowCluster(LocalCluster):
    """Real nodes run through tests/queues/dlq_crash_node.py (switches are marker files)."""

    def command(self, node: Any) -> list[str]:
        base = super().command(node)
        assert base[1:3] == ["-m", "tidelog.node.main"], base
        return [sys.executable, str(CRASH_NODE), *base[3:]]


@dataclass(frozen=True)
class Window:
    """The two window tests' cluster and its marker directory."""

    cluster: CrashWindowCluster
    markers: Path


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Window]:
    """One CrashWindowCluster for both window tests (a start and a stop fewer); their queues,
    topics and markers have names of their own, and each test leaves every node running."""
    directory = tmp_path_factory.mktemp("window")
    markers = directory / "markers"
    markers.mkdir()
    cluster = CrashWindowCluster(3, directory / "cluster", env={
        "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2", "TIDELOG_QUEUE_STATE_PARTITIONS": "4",
        "TIDELOG_TEST_MARKERS": str(markers)})
    cluster.start()
    try:
        cluster.wait_healthy(timeout_s=60)
        yield Window(cluster, markers)
    finally:
        cluster.stop()


def whole_again(cluster: LocalCluster) -> None:
    """Every node resumed (SIGCONT is harmless to a running one), started and healthy."""
    for node in cluster.nodes:
        cluster.resume(node.id)
    cluster.start()
    cluster.wait_healthy(timeout_s=60)


def test_a_dead_letter_lands_once_when_its_coordinator_dies_before_committing_it(
        window: Window) -> None:
    """The coordinator exits right after the DLQ write is committed and before `dead_lettered`
    is: its successor finds the dead letter in the DLQ tail and does not write it again. With
    the scan skipped (planted bug, `<queue>.noscan`) the same run writes it twice."""
    cluster, markers = window.cluster, window.markers
    queues = Queues(cluster)
    try:
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic("win", partitions=1, replication_factor=3)
        cases = (("once-q", False), ("twice-q", True))
        for name, _ in cases:
            create_queue(queues, name, ["win"])
        produce(cluster, "win", [(b"wk", b"window body", [("x", b"y")])])
        copies = {}
        for name, planted in cases:
            (markers / f"{name}.crash").touch()
            if planted:
                (markers / f"{name}.noscan").touch()
            (m,) = receive_until(queues, name, "c", 1, ack=False)
            assert not settle(queues, name, "c", [m], qpb.REJECT, reason="poison").results
            # (Leadership may move between nodes until then: whichever coordinator writes it.)
            victim = wait_until(lambda: next((n.id for n in cluster.nodes if not n.running), 0),
                                30, f"{name}'s coordinator exiting in the window")
            assert not (markers / f"{name}.crash").exists()
            wait_until(lambda name=name: queues.call("DescribeQueue", qpb.DescribeQueueRequest(
                queue=name), name).stats.dead_lettered_total == 1, 60,
                f"{name}'s dead letter committed by the next coordinator")
            assert queues.coordinator(name).node_id != victim
            time.sleep(1.5)  # a late second copy would be there by now
            copies[name] = read_topic(cluster, f"{name}.dlq", 0)
            cluster.start(victim)
            cluster.wait_healthy(timeout_s=60)
        (once,) = copies["once-q"]
        assert (once.key, once.value) == (b"wk", b"window body")
        assert dlq_headers(once)["tidelog-dlq-reason"] == b"poison"
        # Without the tail scan every coordinator that takes over writes the dead letter again:
        # twice, or more when leadership moved once more before it settled (a CI run saw 3).
        assert len(copies["twice-q"]) >= 2, "planted bug not caught: without the DLQ tail " \
            "scan the dead letter should have been written again by the next coordinator"
    finally:
        queues.close()
        whole_again(cluster)


def _queue_apart_from_its_dlq_leader(queues: Queues, cluster: LocalCluster, prefix: str,
                                     topic: str) -> tuple[str, int]:
    """A new queue whose coordinator is not the (settled) leader of its DLQ partition 0, so a
    zombie coordinator's late write reaches a live DLQ leader (the case fencing is for)."""
    for i in range(12):
        name = f"{prefix}{i}-q"
        create_queue(queues, name, [topic])
        found = queues.coordinator(name)
        coordinator = cluster.settled_leader_of("__queue_state", found.partition)
        if coordinator != cluster.settled_leader_of(f"{name}.dlq", 0):
            return name, coordinator
    raise AssertionError("every queue's coordinator also led its DLQ partition")


def test_a_paused_coordinator_cannot_write_a_dead_letter_after_its_successor_did(
        window: Window) -> None:
    """The coordinator stops (SIGSTOP) just before its DLQ write; a successor takes the queue
    over, bumps the queue's DLQ producer epoch, scans, writes the dead letter and commits it;
    then the zombie resumes and sends its write: PRODUCER_FENCED, so one copy. Planted bug
    (`<queue>.nofence`: no producer epoch): the same run lands two copies.

    While the zombie is stopped every call is given 5 s an attempt (DescribeQueue and
    FindQueueCoordinator are idempotent, so a deadline is retried): with the 20 s and 40 s
    defaults, a call that reached the stopped node first waited that long for nothing."""
    cluster, markers = window.cluster, window.markers
    queues = Queues(cluster)
    try:
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic("zomb", partitions=1, replication_factor=3)
        produce(cluster, "zomb", [(b"zk", b"zombie body", [])])
        copies = {}
        for prefix, planted in (("fenced", False), ("unfenced", True)):
            name, coordinator = _queue_apart_from_its_dlq_leader(queues, cluster, prefix, "zomb")
            (markers / f"{name}.pause").touch()
            if planted:
                (markers / f"{name}.nofence").touch()
            (m,) = receive_until(queues, name, "c", 1, ack=False)
            assert not settle(queues, name, "c", [m], qpb.REJECT, reason="poison").results
            paused = wait_until(lambda name=name: list(markers.glob(f"{name}.paused-*")), 30,
                                f"{name}'s coordinator stopping before its DLQ write")
            pid = int(paused[0].name.rsplit("-", 1)[1])
            zombie = next(n.id for n in cluster.nodes if n.pid == pid)
            wait_until(lambda name=name: queues.call("DescribeQueue", qpb.DescribeQueueRequest(
                queue=name), name, timeout_s=90, attempt_s=5).stats.dead_lettered_total == 1, 90,
                f"{name}'s dead letter committed by the next coordinator")
            assert queues.coordinator(name, attempt_s=5).node_id != zombie
            cluster.resume(zombie)
            time.sleep(3)  # the zombie's write goes out at once when it resumes
            copies[name] = read_topic(cluster, f"{name}.dlq", 0)
            cluster.wait_healthy(timeout_s=60)
        fenced, unfenced = copies.values()
        assert len(fenced) == 1, fenced
        assert (fenced[0].key, fenced[0].value) == (b"zk", b"zombie body")
        assert len(unfenced) == 2, "planted bug not caught: without the producer epoch the " \
            "zombie's late write should have landed a second copy"
    finally:
        queues.close()
        whole_again(cluster)
