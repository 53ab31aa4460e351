"""The secure compose deployment (deploy/docker-compose.secure.yml over docker-compose.yml), for
real from the host: the one-shot `certs` service makes the certificates, every node comes up
healthy with TLS on both listeners (Docker's HEALTHCHECK itself speaks TLS with the node's own
certificate), the peers replicate over mTLS, a TLS client with the admin certificate produces and
consumes, and a plaintext client is refused.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from docker_helpers import COMPOSE_FILE, DEPLOY, ComposeProject
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.client.errors import TidelogError
from tidelog.client.security import ClientSecurity

pytestmark = [pytest.mark.docker, pytest.mark.cluster]

SECURE_FILE = DEPLOY / "docker-compose.secure.yml"


def test_the_secure_compose_cluster_serves_tls_clients_and_refuses_plaintext(
        compose_project: type[ComposeProject], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    certs = tmp_path / "certs"
    project = compose_project(files=[COMPOSE_FILE, SECURE_FILE])
    # Read by compose from the environment (docker_helpers.run passes ours on).
    monkeypatch.setenv("TIDELOG_CERTS_DIR", str(certs))
    monkeypatch.setenv("TIDELOG_CERTS_OWNER", f"{os.getuid()}:{os.getgid()}")
    project.up()
    project.wait_healthy(["node1", "node2", "node3"], timeout_s=120)
    assert stat.S_IMODE(os.stat(certs / "node-1-key.pem").st_mode) == 0o600
    assert os.stat(certs / "node-1-key.pem").st_uid == 10001  # the image's user reads it
    security = ClientSecurity(tls_ca=certs / "ca.pem", tls_cert=certs / "client-admin.pem",
                              tls_key=certs / "client-admin-key.pem")
    with Admin(project.bootstrap, security=security) as admin:
        admin.create_topic("secure", partitions=3, replication_factor=3)
    with Producer(project.bootstrap, security=security) as producer:
        for i in range(60):
            producer.send("secure", value=f"m{i}".encode(), key=f"k{i % 7}".encode())
        producer.flush(60)
    got: list[bytes] = []
    with Consumer(project.bootstrap, auto_offset_reset="earliest", security=security) as consumer:
        consumer.assign([TopicPartition("secure", p) for p in range(3)])
        deadline = time.monotonic() + 60
        while len(got) < 60 and time.monotonic() < deadline:
            got += [record.value for record in consumer.poll(1.0)]
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(60))
    with pytest.raises(TidelogError) as info, \
            Admin(project.bootstrap, request_timeout_ms=3000) as plaintext:
        plaintext.list_topics()
    assert "if the cluster uses TLS, give its CA" in str(info.value)
