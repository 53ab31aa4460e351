"""Issue 13, TLS and mTLS, against real node processes: one 3-node cluster with TLS on both
listeners and client certificates required (`--tls-client-auth required`), shared by the module.

What each test shows: TLS clients produce, consume and use a queue (whose coordinator fetches from
partition leaders over the peer listener, as Node:<id>); a plaintext client, a client that does
not trust the CA and a client without a certificate are refused with a message saying why; a node
with a certificate from another CA never joins and its handshakes fail; a valid peer certificate
cannot speak as another node (forged from_node); a rotated node certificate is served to new
connections without a restart.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tidelog.client import Admin, Consumer, Producer, QueueConsumer, TopicPartition
from tidelog.client.errors import TidelogError
from tidelog.client.security import ClientSecurity
from tidelog.node.local_cluster import LocalCluster, LocalNode, free_ports, metadata
from tidelog.node.security.certs import issue_node, load_or_make_ca, make_dev_certs
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto import cluster_pb2_grpc

from tests.clusters import dev_certs, running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ENV = {"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2", "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dev_certs(tmp_path_factory, "tls")


@pytest.fixture(scope="module")
def cluster(certs: Path) -> Iterator[LocalCluster]:
    with running_cluster(certs.parent, ENV, tls_dir=certs, tls_client_auth="required") as running:
        yield running


def alice(certs: Path, **changes: object) -> ClientSecurity:
    fields: dict[str, object] = {"tls_ca": certs / "ca.pem", "tls_cert": certs / "client-alice.pem",
                                 "tls_key": certs / "client-alice-key.pem", **changes}
    return ClientSecurity(**fields)  # type: ignore[arg-type]


def test_a_tls_client_produces_consumes_and_uses_a_queue(cluster: LocalCluster,
                                                         certs: Path) -> None:
    security = alice(certs)
    with Admin(cluster.bootstrap, security=security) as admin:
        admin.create_topic("tls-t", partitions=3, replication_factor=3)
        admin.create_queue("tls-q", ["tls-t"])
    with Producer(cluster.bootstrap, security=security) as producer:
        for i in range(30):
            producer.send("tls-t", value=f"v{i}".encode(), partition=i % 3)
        producer.flush(30)
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest", security=security) as consumer:
        consumer.assign([TopicPartition("tls-t", p) for p in range(3)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            got += [r.value for r in consumer.poll(1.0)]
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(30))
    # One rejected record per partition: the coordinator writes each dead letter to DLQ partition
    # `source % 3`, whose leaders are the three nodes, so at least two of the writes go node to
    # node, to the peer listener over mTLS (the client listener would want a client certificate).
    rejected = {b"v0", b"v1", b"v2"}
    with QueueConsumer(cluster.bootstrap, queue="tls-q", security=security) as queue:
        received: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(received) < 30 and time.monotonic() < deadline:
            for message in queue.receive(max_messages=30, timeout_s=1.0):
                received.append(message.value)
                (queue.reject if message.value in rejected else queue.ack)(message)
        queue.flush(30)
    assert sorted(received) == sorted(f"v{i}".encode() for i in range(30))
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest", security=security) as consumer:
        consumer.assign([TopicPartition("tls-q.dlq", p) for p in range(3)])
        dead: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(dead) < 3 and time.monotonic() < deadline:
            dead += [r.value for r in consumer.poll(1.0)]
    assert sorted(dead) == sorted(rejected)
    logs = "".join(n.log_path.read_text() for n in cluster.nodes)
    assert "client certificate accepted: principal Cert:CN=alice" in logs


def test_a_plaintext_client_is_refused_with_a_hint(cluster: LocalCluster) -> None:
    with pytest.raises(TidelogError) as info, \
            Admin(cluster.bootstrap, request_timeout_ms=3000) as admin:
        admin.list_topics()
    print(info.value)
    assert "if the cluster uses TLS, give its CA" in str(info.value), str(info.value)


def test_a_client_that_does_not_trust_the_ca_is_refused(cluster: LocalCluster, certs: Path,
                                                        tmp_path: Path) -> None:
    other = make_dev_certs(tmp_path / "other", [], clients=["mallory"])
    with pytest.raises(TidelogError) as info, Admin(
            cluster.bootstrap, request_timeout_ms=3000,
            security=alice(certs, tls_ca=other.ca.cert)) as admin:
        admin.list_topics()
    print(info.value)
    assert "TLS handshake failed" in str(info.value), str(info.value)


def test_a_client_without_a_certificate_is_refused_when_mtls_is_required(
        cluster: LocalCluster, certs: Path) -> None:
    no_cert = ClientSecurity(tls_ca=certs / "ca.pem")
    with pytest.raises(TidelogError) as info, Admin(cluster.bootstrap, request_timeout_ms=3000,
                                                    security=no_cert) as admin:
        admin.list_topics()
    print(info.value)
    assert "give one: --tls-cert and --tls-key" in str(info.value), str(info.value)
    with Admin(cluster.bootstrap, security=alice(certs)) as admin:  # the same, with one: fine
        admin.list_topics()  # raises if refused


def peer_channel(cluster: LocalCluster, certs: Path, name: str) -> grpc.Channel:
    """A channel to node 1's PEER listener presenting certs/<name>.pem."""
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(), (certs / f"{name}-key.pem").read_bytes(),
        (certs / f"{name}.pem").read_bytes())
    return grpc.secure_channel(cluster.nodes[0].peer_address, credentials)


def test_a_node_with_a_certificate_from_another_ca_never_joins(
        cluster: LocalCluster, certs: Path, tmp_path: Path) -> None:
    # A 4th node process, its certificate from a foreign CA, dialling the cluster's peers.
    foreign = tmp_path / "foreign"
    make_dev_certs(foreign, [2, 4])
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    peers = ",".join([*(f"{n.id}={n.address}" for n in cluster.nodes), f"4={address}"])

    class Intruder(LocalCluster):
        def command(self, node: LocalNode) -> list[str]:
            command = super().command(node)
            command[command.index("--peers") + 1] = peers
            return command

    intruder = Intruder(1, tmp_path / "intruder", base_port=port, env=ENV)
    intruder.nodes[0].id = 4  # before the certificates: its files are node-4*.pem
    intruder.tls_dir, intruder.security = foreign, intruder._dev_certs(foreign)
    with intruder:
        intruder.wait_healthy(timeout_s=30)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # it keeps trying to register with the cluster
            view = metadata(cluster.nodes[0].address, security=alice(certs))
            assert 4 not in {n.id for n in view.nodes}
            time.sleep(0.5)
    # Its handshake fails even with a certificate that claims an existing node (2) ...
    with peer_channel(cluster, foreign, "node-2") as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... while the real node 2's certificate is served, and a client certificate of our own CA
    # (no node URI) is refused by the peer listener.
    with peer_channel(cluster, certs, "node-2") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with peer_channel(cluster, certs, "client-alice") as channel, \
            pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names no node of this cluster" in (info.value.details() or "")


def test_a_peer_certificate_cannot_speak_as_another_node(cluster: LocalCluster,
                                                         certs: Path) -> None:
    with peer_channel(cluster, certs, "node-2") as channel:
        stub = cluster_pb2_grpc.ClusterStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Exchange(iter([cpb.RaftBatch(from_node=3)]), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "certificate names node 2" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:  # a later batch as well as the first
            stub.Exchange(iter([cpb.RaftBatch(from_node=2), cpb.RaftBatch(from_node=3)]),
                          timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        summary = stub.Exchange(iter([cpb.RaftBatch(from_node=2)]), timeout=5)
        assert summary.batches == 1  # as itself, node 2 is heard


def served_certificate(address: str, certs: Path) -> x509.Certificate:
    """The certificate a NEW TLS connection to `address` is served (stdlib ssl, ALPN h2)."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certs / "client-alice.pem", certs / "client-alice-key.pem")
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_rotated_certificate_is_served_without_a_restart(cluster: LocalCluster,
                                                           certs: Path) -> None:
    node = cluster.nodes[0]
    before = served_certificate(node.address, certs)
    ca_key, ca_cert, _ = load_or_make_ca(certs)
    issue_node(certs, ca_key, ca_cert, 1)  # new key and certificate files, same CA
    expected = x509.load_pem_x509_certificate((certs / "node-1.pem").read_bytes())
    assert expected.serial_number != before.serial_number
    assert served_certificate(node.address, certs).serial_number == expected.serial_number
    assert served_certificate(node.peer_address, certs).serial_number == expected.serial_number
    assert node.running
    # Node 1 still works both ways: clients reach it, and it reaches its peers with its new
    # certificate (a new topic needs the metadata group, which node 1 may lead or follow).
    with Admin(node.address, security=alice(certs)) as admin:
        admin.create_topic("after-rotation", partitions=1, replication_factor=3)


def test_health_and_cluster_status_speak_tls(cluster: LocalCluster, certs: Path) -> None:
    from tidelog.client.health_cli import EXIT_NO_ANSWER, EXIT_SERVING, check
    from tidelog.node.cli import gather_status

    address = cluster.nodes[1].address
    assert check(address, security=alice(certs))[0] == EXIT_SERVING
    assert check(address, security=None)[0] == EXIT_NO_ANSWER  # plaintext: no answer
    status = gather_status(cluster.bootstrap, [], alice(certs))
    assert [n["healthy"] for n in status["nodes"]] == [True, True, True]
