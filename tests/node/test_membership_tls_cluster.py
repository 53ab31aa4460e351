"""Joining with TLS on (docs/operations.md "Add and remove nodes", docs/security.md): a node may
join only once admitted AND with a node certificate of the cluster's CA; every node-to-node call
of the new member (Join, Raft, forwarded metadata) then runs over mTLS as Node:<id>.

A one-node cluster keeps it cheap: node 2 joins it (admitted, certificate of the CA), node 3 has
a certificate of the CA but is never admitted, node 4 is admitted but presents another CA's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tidelog.client import Admin, Producer
from tidelog.node.health import check_health
from tidelog.node.local_cluster import HOST, LocalCluster, free_ports
from tidelog.node.security.certs import make_dev_certs

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def test_only_an_admitted_node_with_the_clusters_certificate_joins(tmp_path: Path) -> None:
    cluster = LocalCluster(1, tmp_path / "cluster", tls_dir=tmp_path / "tls")
    cluster.start()
    strangers: list[subprocess.Popen[bytes]] = []
    try:
        cluster.wait_healthy(timeout_s=60)
        security = _client_security(cluster)
        foreign = make_dev_certs(tmp_path / "other-ca", [4])
        port_3, port_4 = free_ports(2)
        with Admin(cluster.bootstrap, security=security) as admin:
            new = cluster.add_node()  # certificate of the cluster's CA (LocalCluster makes it)
            admin.add_node(new.id, new.address)
            admin.add_node(4, f"{HOST}:{port_4}")
            make_dev_certs(cluster.tls_dir, [3], clients=[])  # the CA's, never admitted
            strangers = [
                _node(cluster, 3, port_3, cluster.tls_dir / "node-3.pem",
                      cluster.tls_dir / "node-3-key.pem", cluster.tls_dir / "ca.pem"),
                _node(cluster, 4, port_4, foreign.nodes[0].cert, foreign.nodes[0].key,
                      foreign.ca.cert)]
            cluster.wait_healthy(timeout_s=60, node_ids=[new.id])
            info = admin.wait_member_state(new.id, ("active",), timeout_s=30)
            assert info.metadata_role == "learner"
            # Replicated through the new member over mTLS.
            admin.create_topic("both", partitions=1, replication_factor=2)
            with Producer(cluster.bootstrap, security=security, acks="all") as producer:
                producer.send("both", b"x").result(30)
            log_3, log_4 = (cluster.data_dir / f"stranger-{n}.log" for n in (3, 4))
            _wait(lambda: "names no node of this cluster" in _text(log_3), 30,
                  "node 3 (the CA's certificate, not admitted) to be refused")
            _wait(lambda: "peer listener refused certificate CN=node-3" in _text(
                cluster.node(1).log_path), 10, "node 1 to log whom it refused")
            _wait(lambda: "CERTIFICATE_VERIFY_FAILED" in _text(log_4), 30,
                  "node 4 (another CA's certificate) to fail the handshake")
            _, members = admin.describe_members()
        states = {m.node_id: m.state for m in members}
        assert states == {1: "active", 2: "active", 4: "joining"}, states
        for proc in strangers:
            assert proc.poll() is None  # waiting, never let in
        assert not check_health(f"{HOST}:{port_3}", timeout_s=1.0, security=security)
        assert not check_health(f"{HOST}:{port_4}", timeout_s=1.0, security=security)
        assert "joined cluster" not in _text(log_4)
    finally:
        for proc in strangers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        cluster.stop()


def _client_security(cluster: LocalCluster):  # noqa: ANN202 - the client's own type
    from tidelog.client.security import ClientSecurity

    files = cluster.security
    assert files is not None
    return ClientSecurity(tls_ca=files.tls_ca, tls_cert=files.tls_cert, tls_key=files.tls_key)


def _node(cluster: LocalCluster, node_id: int, port: int, cert: Path, key: Path,
          ca: Path) -> subprocess.Popen[bytes]:
    log = open(cluster.data_dir / f"stranger-{node_id}.log", "wb")  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "tidelog.node.main", "--id", str(node_id),
             "--listen", f"{HOST}:{port}", "--join", cluster.node(1).address,
             "--data-dir", str(cluster.data_dir / f"stranger-{node_id}"),
             "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        log.close()


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _wait(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
