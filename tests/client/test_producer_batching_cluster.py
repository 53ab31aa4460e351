"""The Producer's batching against a real 3-node cluster (RF=3, acks=all): adaptive linger and
the one-request-per-leader ProduceMany path (issue 16).

One module-scoped cluster for every test here; small record counts.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto import batch as codec
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc as pb_grpc

from tests.clusters import running_cluster

#: long enough that a record held for linger_ms would blow every timeout below
LONG_LINGER_MS = 20_000


@pytest.fixture(scope="module")
def batching_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(Path(tmp_path_factory.mktemp("batching")), env={}) as running:
        yield running


def new_topic(cluster: LocalCluster, partitions: int) -> str:
    topic = f"batching-{uuid.uuid4().hex[:8]}"
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(topic, partitions=partitions, replication_factor=3)
    return topic


def read_all(bootstrap: str, topic: str, partitions: int, expected: int
             ) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    """Every record of the topic, per partition in offset order."""
    out: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in range(partitions)}
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        seen = 0
        for _ in range(200):
            for record in consumer.poll(timeout_s=0.5):
                out[record.partition].append((record.key, record.value))
                seen += 1
            if seen >= expected:
                break
    return out


def test_a_lone_record_is_sent_without_waiting_linger_ms(batching_cluster: LocalCluster) -> None:
    """With linger_ms=20 s a record held for its linger could not be acknowledged within 10 s;
    adaptive linger sends it at once because nothing of its partition is in flight."""
    topic = new_topic(batching_cluster, 1)
    with Producer(batching_cluster.bootstrap, linger_ms=LONG_LINGER_MS) as producer:
        metadata = producer.send(topic, b"alone").result(timeout=10)
        assert metadata.offset >= 0
        # and again once the first is answered: the partition is quiet again
        assert producer.send(topic, b"alone again").result(timeout=10).offset > metadata.offset


def test_records_behind_an_in_flight_request_share_batches(
        batching_cluster: LocalCluster) -> None:
    """Under a burst the records sent while a request is in flight leave together when it is
    answered (not after linger_ms=20 s, not one request each)."""
    topic = new_topic(batching_cluster, 1)
    with Producer(batching_cluster.bootstrap, linger_ms=LONG_LINGER_MS) as producer:
        producer.send(topic, b"warm-up").result(timeout=10)
        before = producer.metrics()["requests_sent"]
        futures = [producer.send(topic, b"%d" % i) for i in range(500)]
        offsets = [f.result(timeout=10).offset for f in futures]
        requests = int(producer.metrics()["requests_sent"]) - int(before)  # type: ignore[call-overload]
    assert offsets == sorted(offsets) and len(set(offsets)) == 500
    assert requests <= 25, f"{requests} requests for 500 records sent in a burst"


def encoded_batch(values: list[bytes]) -> bytes:
    now_ms = time.time_ns() // 1_000_000
    records = [(None, v, (), now_ms) for v in values]
    return codec.encode_batch(records, codec=codec.Codec.NONE, producer_id=-1,
                              producer_epoch=-1, base_sequence=-1)


def test_produce_many_answers_each_partition_on_its_own(batching_cluster: LocalCluster) -> None:
    """One call to one node: its own partition is written; an unknown partition, a partition
    another node leads (NOT_LEADER with the leader's address) and a repeated partition fail
    alone, each with its own error."""
    topic = new_topic(batching_cluster, 3)
    leaders = {p: batching_cluster.settled_leader_of(topic, p) for p in range(3)}
    node_id = leaders[0]
    other = next((p for p, n in leaders.items() if n != node_id), None)
    address = next(n.address for n in batching_cluster.nodes if n.id == node_id)
    parts = [pb.ProducePartitionData(topic=topic, partition=0, batches=encoded_batch([b"a", b"b"])),
             pb.ProducePartitionData(topic=topic, partition=99, batches=encoded_batch([b"x"])),
             pb.ProducePartitionData(topic="no-such-topic", partition=0,
                                     batches=encoded_batch([b"x"])),
             pb.ProducePartitionData(topic=topic, partition=0, batches=encoded_batch([b"dup"]))]
    if other is not None:
        parts.append(pb.ProducePartitionData(topic=topic, partition=other,
                                             batches=encoded_batch([b"elsewhere"])))
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.BrokerStub(channel).ProduceMany(
            pb.ProduceManyRequest(acks=pb.ACKS_ALL, timeout_ms=10_000, partitions=parts),
            timeout=30)
    results = list(response.results)
    assert [(r.topic, r.partition) for r in results] == [(p.topic, p.partition) for p in parts]
    written, unknown, no_topic, repeated = results[:4]
    assert written.error.code == pb.NONE
    assert written.response.last_offset == written.response.base_offset + 1
    assert unknown.error.code == pb.UNKNOWN_TOPIC_OR_PARTITION and unknown.error_message
    assert no_topic.error.code == pb.UNKNOWN_TOPIC_OR_PARTITION
    assert repeated.error.code == pb.INVALID_REQUEST
    if other is not None:
        elsewhere = results[4]
        leader_address = next(n.address for n in batching_cluster.nodes
                              if n.id == leaders[other])
        assert elsewhere.error.code == pb.NOT_LEADER and elsewhere.error.retriable
        assert elsewhere.error.leader_address == leader_address
    records = read_all(batching_cluster.bootstrap, topic, 3, 2)
    assert records[0] == [(None, b"a"), (None, b"b")]  # the repeated entry wrote nothing
    assert all(not records[p] for p in (1, 2))


def test_keyed_produce_over_12_partitions_keeps_order_with_one_request_per_leader(
        batching_cluster: LocalCluster) -> None:
    """Keyed records over 12 partitions: a partition's batches travel with other partitions'
    (fewer requests than batches), and each key's records are stored once, in send order."""
    topic = new_topic(batching_cluster, 12)
    keys, per_key = 48, 25
    with Producer(batching_cluster.bootstrap) as producer:
        futures = [producer.send(topic, b"%d" % i, key=b"k%d" % k)
                   for i in range(per_key) for k in range(keys)]
        for future in futures:
            future.result(timeout=30)
        metrics = producer.metrics()
    assert int(metrics["requests_sent"]) < int(metrics["batches_sent"]), metrics  # type: ignore[call-overload]
    records = read_all(batching_cluster.bootstrap, topic, 12, keys * per_key)
    by_key: dict[bytes | None, list[int]] = {}
    for partition_records in records.values():
        for key, value in partition_records:
            by_key.setdefault(key, []).append(int(value or b"-1"))
    assert len(by_key) == keys
    assert all(values == list(range(per_key)) for values in by_key.values())


def test_a_dropped_produce_many_reply_is_retried_without_a_duplicate(
        batching_cluster: LocalCluster, cutting_proxy: Any) -> None:
    """The answer to a ProduceMany carrying two partitions' batches is lost (the node wrote
    them): the idempotent retry is answered as a duplicate, each record is stored once."""
    topic = new_topic(batching_cluster, 6)
    leaders = {p: batching_cluster.settled_leader_of(topic, p) for p in range(6)}
    by_node: dict[int, list[int]] = {}
    for p, n in leaders.items():
        by_node.setdefault(n, []).append(p)
    node_id, partitions = max(by_node.items(), key=lambda item: len(item[1]))
    assert len(partitions) >= 2, f"no node leads two of 6 partitions: {leaders}"
    p0, p1 = partitions[:2]
    leader = next(n.address for n in batching_cluster.nodes if n.id == node_id)
    proxy = cutting_proxy(leader)
    payload = b"x" * 200_000  # big enough to recognise the request by its size
    with Producer(batching_cluster.bootstrap, compression="none",
                  retry_backoff_ms=50) as producer:
        producer._connections.redirect(leader, proxy.address)
        for p in (p0, p1):
            producer.send(topic, b"before", partition=p).result(30)
        proxy.arm(2 * len(payload))
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1.0)  # both sends before the sender thread runs: one request
        try:
            futures = [producer.send(topic, payload, partition=p) for p in (p0, p1)]
        finally:
            sys.setswitchinterval(interval)
        metas = [f.result(60) for f in futures]
        for p in (p0, p1):
            producer.send(topic, b"after", partition=p).result(30)
        assert proxy.cuts == 1
        assert int(producer.metrics()["retries_sent"]) >= 1  # type: ignore[call-overload]
    records = read_all(batching_cluster.bootstrap, topic, 6, 6)
    for p, meta in zip((p0, p1), metas, strict=True):
        assert [v for _, v in records[p]] == [b"before", payload, b"after"], p
        assert meta.partition == p


class OlderNode:
    """A real gRPC server in front of a real node that serves every method but ProduceMany (as
    a node from before it answers: UNIMPLEMENTED), passing the bytes through unchanged."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self.refused = 0
        node = self

        class Passthrough(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                method = details.method
                if method.endswith("/ProduceMany"):
                    node.refused += 1
                    return None
                forward = node._channel.unary_unary(method)

                def call(request: bytes, context: Any) -> bytes:
                    return forward(request, timeout=context.time_remaining(),
                                   metadata=context.invocation_metadata())

                return grpc.unary_unary_rpc_method_handler(call)

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((Passthrough(),))
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def close(self) -> None:
        self._server.stop(grace=None)
        self._channel.close()


def test_a_node_without_produce_many_gets_produce_calls(batching_cluster: LocalCluster) -> None:
    """Its UNIMPLEMENTED answer means nothing was written: the same batches go again as one
    Produce each, once, and the producer stays on Produce for that node."""
    topic = new_topic(batching_cluster, 6)
    leaders = {p: batching_cluster.settled_leader_of(topic, p) for p in range(6)}
    node_id = max(set(leaders.values()), key=list(leaders.values()).count)
    mine = [p for p, n in leaders.items() if n == node_id]
    assert len(mine) >= 2, f"no node leads two of 6 partitions: {leaders}"
    leader = next(n.address for n in batching_cluster.nodes if n.id == node_id)
    older = OlderNode(leader)
    try:
        with Producer(batching_cluster.bootstrap) as producer:
            producer._connections.redirect(leader, older.address)
            for round_ in range(3):
                interval = sys.getswitchinterval()
                sys.setswitchinterval(1.0)  # all of a round's sends before the sender runs
                try:
                    futures_ = [producer.send(topic, b"%d" % round_, partition=p) for p in mine]
                finally:
                    sys.setswitchinterval(interval)
                for future in futures_:
                    future.result(timeout=30)
        assert older.refused == 1  # asked once, then Produce only
    finally:
        older.close()
    records = read_all(batching_cluster.bootstrap, topic, 6, 3 * len(mine))
    for p in mine:
        assert [v for _, v in records[p]] == [b"0", b"1", b"2"], p
