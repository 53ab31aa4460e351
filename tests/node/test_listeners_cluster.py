"""Named client listeners (node/listeners.py) on a real 3-node LocalCluster, no Docker.

Every node serves its default listener (--listen/--advertise 127.0.0.1:P) and a named listener
`alt` on a port of its own, advertised under another spelling (localhost:Q), as a node on two
networks would be. A call that arrives on `alt` must be told every node's `alt` address (Metadata
nodes, FindCoordinator, a NOT_LEADER hint), a call on the default listener the default ones;
and a client given only `alt` addresses produces and consumes, so it follows `alt` addresses to
the leaders.
The test fails on the previous code: a node there refuses --listeners.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import LocalCluster, LocalNode, free_ports
from tidelog.proto import broker_pb2, broker_pb2_grpc

from tests.node.wire import batch_of, create_topic, error_detail, produce

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

TOPIC = "listeners"
PARTITIONS = 3
RECORDS = 30


class TwoListenerCluster(LocalCluster):
    """A LocalCluster whose nodes also serve the named listener `alt` (per-node ports)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(3, directory)
        taken = {int(n.address.rpartition(":")[2]) for n in self.nodes}
        self.alt_ports = [p for p in free_ports(6) if p not in taken][:3]

    def alt_bind(self, node: LocalNode) -> str:
        return f"127.0.0.1:{self.alt_ports[node.id - 1]}"

    def alt_advertised(self, node: LocalNode) -> str:
        return f"localhost:{self.alt_ports[node.id - 1]}"

    def command(self, node: LocalNode) -> list[str]:
        return [*super().command(node), "--listeners", f"alt={self.alt_bind(node)}",
                "--advertised-listeners", f"alt={self.alt_advertised(node)}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoListenerCluster]:
    running = TwoListenerCluster(tmp_path_factory.mktemp("listeners"))
    running.start()
    try:
        running.wait_healthy(timeout_s=60)
        yield running
    finally:
        running.stop()


def _metadata_nodes(address: str) -> dict[int, str]:
    with grpc.insecure_channel(address) as channel:
        response = broker_pb2_grpc.BrokerStub(channel).Metadata(
            broker_pb2.MetadataRequest(), timeout=5)
    return {n.id: n.address for n in response.nodes}


def _wait_for(address: str, expected: dict[int, str], timeout_s: float = 30) -> None:
    """Until `address` answers Metadata with `expected` (nodes register asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while (seen := _metadata_nodes(address)) != expected:
        assert time.monotonic() < deadline, f"{address} answered {seen}, expected {expected}"
        time.sleep(0.2)


def test_metadata_on_each_listener_names_that_listeners_addresses(
    cluster: TwoListenerCluster,
) -> None:
    default = {n.id: n.address for n in cluster.nodes}
    alt = {n.id: cluster.alt_advertised(n) for n in cluster.nodes}
    assert set(default.values()).isdisjoint(alt.values())
    for node in cluster.nodes:
        _wait_for(node.address, default)
        _wait_for(cluster.alt_bind(node), alt)


def test_find_coordinator_answers_with_the_listeners_address(
    cluster: TwoListenerCluster,
) -> None:
    alt = {n.id: cluster.alt_advertised(n) for n in cluster.nodes}
    default = {n.id: n.address for n in cluster.nodes}
    node = cluster.nodes[0]
    deadline = time.monotonic() + 30
    for address, expected in ((cluster.alt_bind(node), alt), (node.address, default)):
        with grpc.insecure_channel(address) as channel:
            stub = broker_pb2_grpc.BrokerStub(channel)
            while True:  # __consumer_offsets is created on the first request
                try:
                    response = stub.FindCoordinator(
                        broker_pb2.FindCoordinatorRequest(group_id="g1"), timeout=5)
                    break
                except grpc.RpcError as error:
                    assert time.monotonic() < deadline, error
                    time.sleep(0.3)
        assert response.address == expected[response.node_id], (address, response)


def test_a_client_given_only_alt_addresses_produces_and_consumes(
    cluster: TwoListenerCluster,
) -> None:
    bootstrap = ",".join(cluster.alt_advertised(n) for n in cluster.nodes)
    with Admin(bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
        assert {n.address for n in admin.list_nodes()} == {
            cluster.alt_advertised(n) for n in cluster.nodes}
    with Producer(bootstrap, acks="all") as producer:
        futures = [producer.send(TOPIC, f"v{i}".encode(), key=f"k{i % 7}".encode())
                   for i in range(RECORDS)]
        acked = {f.result(timeout=30).offset is not None for f in futures}
    assert acked == {True}
    read: list[bytes] = []
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(tps)
        deadline = time.monotonic() + 30
        while len(read) < RECORDS:
            assert time.monotonic() < deadline, f"read {len(read)} of {RECORDS}"
            read.extend(r.value for r in consumer.poll(timeout_s=1.0))
    assert sorted(read) == sorted(f"v{i}".encode() for i in range(RECORDS))


def test_a_not_leader_hint_names_the_leader_on_the_listener_of_the_call(
    cluster: TwoListenerCluster,
) -> None:
    """Produce to a follower: the NOT_LEADER detail's leader_address is the leader's address on
    the listener the produce came in on."""
    first = cluster.nodes[0]
    assert not create_topic(first.address, "hints", 1).results[0].error
    alt = {n.id: cluster.alt_advertised(n) for n in cluster.nodes}
    default = {n.id: n.address for n in cluster.nodes}
    deadline = time.monotonic() + 30
    for via, expected in ((cluster.alt_bind, alt), (lambda n: n.address, default)):
        while True:
            leaders = [p.leader_id for t in broker_pb2_grpc.BrokerStub(
                grpc.insecure_channel(first.address)).Metadata(
                broker_pb2.MetadataRequest(topics=["hints"]), timeout=5).topics
                for p in t.partitions]
            follower = next((n for n in cluster.nodes if leaders and leaders[0] > 0
                             and n.id != leaders[0]), None)
            try:
                if follower is not None:
                    produce(via(follower), "hints", 0, batch_of([b"x"]))
            except grpc.RpcError as error:
                detail = error_detail(error)
                if detail.code == broker_pb2.NOT_LEADER and detail.leader_id > 0:
                    assert detail.leader_address == expected[detail.leader_id], detail
                    break
            assert time.monotonic() < deadline, f"no NOT_LEADER answer (leaders {leaders})"
            time.sleep(0.3)
