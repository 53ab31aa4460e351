"""User quotas end to end on a real 3-node cluster with SCRAM authentication: a quota set for
`--user alice` (through the CLI, logged in as admin with the global --user) slows alice's
producer and no one else's. The principal comes from the real authentication interceptor, which
runs before the quota check (node/security/interceptors.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from tidelog.client import Admin, Producer
from tidelog.client.cli import main as cli_main
from tidelog.client.security import ClientSecurity
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

ADMIN = ClientSecurity(username="admin", password="admin-secret-4Rt")
ALICE = ClientSecurity(username="alice", password="alice-secret-8Wq")
QUOTA_BYTES_S = 150_000
VALUE_BYTES = 1000
TOPIC = "user-quota"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("quota-users"), env={
            "TIDELOG_AUTHENTICATION": "scram", "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
            "TIDELOG_QUEUE_STATE_PARTITIONS": "2", "TIDELOG_QUOTA_SAMPLE_MS": "250",
            "TIDELOG_QUOTA_SAMPLES": "4"}) as running:
        with Admin(running.bootstrap) as anonymous:  # the first user, over loopback
            anonymous.create_user(ADMIN.username, ADMIN.password)
        with Admin(running.bootstrap, security=ADMIN) as admin:
            admin.create_user(ALICE.username, ALICE.password)
            admin.create_topic(TOPIC, partitions=1, replication_factor=3)
        yield running


def _produce_for(cluster: LocalCluster, security: ClientSecurity, seconds: float
                 ) -> tuple[float, int]:
    """Bytes per second acknowledged, and how many answers were throttled."""
    with Producer(cluster.bootstrap, security=security, compression="none",
                  batch_size=16 * 1024, buffer_memory=64 * 1024) as producer:
        futures = []
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            futures.append(producer.send(TOPIC, os.urandom(VALUE_BYTES)))
        producer.flush()
        elapsed = time.monotonic() - start
        offsets = [f.result(timeout=30).offset for f in futures]
        assert len(set(offsets)) == len(futures)  # every record acknowledged, once
        return len(futures) * VALUE_BYTES / elapsed, producer.throttle.throttled_responses


def test_a_user_quota_slows_that_user_only(cluster: LocalCluster,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--bootstrap", cluster.bootstrap, "--user", ADMIN.username,
                     "--password", ADMIN.password, "quota", "set", "--user", "alice",
                     "--producer-byte-rate", str(QUOTA_BYTES_S), "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["user"] == "User:alice"
    with Admin(cluster.bootstrap, security=ADMIN) as admin:
        deadline = time.monotonic() + 20
        while not all(admin.describe_quotas(node_address=n.address) for n in cluster.nodes):
            assert time.monotonic() < deadline, "the quota did not reach every node"
            time.sleep(0.1)
    alice_rate, alice_throttled = _produce_for(cluster, ALICE, 3.0)
    admin_rate, admin_throttled = _produce_for(cluster, ADMIN, 1.0)
    print(f"alice {alice_rate:,.0f} B/s ({alice_rate / QUOTA_BYTES_S:.2f}x of her quota, "
          f"{alice_throttled} throttled answers); admin {admin_rate:,.0f} B/s "
          f"({admin_throttled} throttled)")
    assert 0.7 * QUOTA_BYTES_S <= alice_rate <= 1.3 * QUOTA_BYTES_S
    assert alice_throttled > 0
    assert admin_throttled == 0 and admin_rate > 2 * QUOTA_BYTES_S  # no quota for User:admin
