"""SCRAM-SHA-256 and ACLs on a real 3-node cluster (--authentication scram --authorization
--super-users User:admin): the first user over loopback, UNAUTHENTICATED with a how-to, wrong
passwords, PERMISSION_DENIED naming the resource and operation, ACLs granting and denying (deny
wins), replication to every node, and users/ACLs/sessions across a restart of every node.

One module-scoped cluster; the tests build on each other in file order (users, then ACLs, then
the restart), each asserting what it claims.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tidelog.client import Admin, Consumer, Producer, QueueConsumer, errors
from tidelog.client.auth import AuthenticationFailed
from tidelog.client.security import ClientSecurity, make_channel
from tidelog.client.security_admin import AclEntry
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc

from tests.clusters import running_cluster

ADMIN_PASSWORD = "admin-secret-7Qx"
ALICE_PASSWORD = "alice-secret-9Zk"
ADMIN = ClientSecurity(username="admin", password=ADMIN_PASSWORD)
ALICE = ClientSecurity(username="alice", password=ALICE_PASSWORD)
TOPIC = "orders"
GROUP = "billing"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("auth"), env={
            "TIDELOG_AUTHENTICATION": "scram", "TIDELOG_AUTHORIZATION": "on",
            "TIDELOG_SUPER_USERS": "User:admin", "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "4",
            "TIDELOG_QUEUE_STATE_PARTITIONS": "4"},
    ) as running:
        with Admin(running.bootstrap) as anonymous:  # the first user, over loopback
            anonymous.create_user("admin", ADMIN_PASSWORD)
        with Admin(running.bootstrap, security=ADMIN) as admin:
            admin.create_user("alice", ALICE_PASSWORD)
            admin.create_topic(TOPIC, partitions=1, replication_factor=3)
        yield running


def cli(cluster: LocalCluster, *args: str, stdin: str = "",
        security: ClientSecurity = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIDELOG_USER": security.username,
           "TIDELOG_PASSWORD": security.password}
    return subprocess.run([sys.executable, "-m", "tidelog.client.cli", "--bootstrap",
                           cluster.bootstrap, *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=60)


def broker(cluster: LocalCluster, security: ClientSecurity | None, node: int = 1
           ) -> broker_pb2_grpc.BrokerStub:
    return broker_pb2_grpc.BrokerStub(make_channel(cluster.node(node).address, [], security))


def test_the_first_user_path_closes_once_a_user_exists(cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap) as anonymous, pytest.raises(errors.Unauthorized) as refused:
        anonymous.create_user("eve", "eve-password")
    assert "no credentials" in str(refused.value)
    with Admin(cluster.bootstrap, security=ADMIN) as admin:
        assert [u.name for u in admin.list_users()] == ["admin", "alice"]


def test_a_client_without_credentials_is_told_how_to_authenticate(
        cluster: LocalCluster) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        broker(cluster, None).Metadata(pb.MetadataRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for hint in ("--user", "TIDELOG_USER", "TIDELOG_PASSWORD", "client certificate"):
        assert hint in refused.value.details()
    result = cli(cluster, "topic", "list", security=ClientSecurity())
    assert result.returncode != 0 and "TIDELOG_PASSWORD" in result.stderr


def test_a_wrong_password_is_refused(cluster: LocalCluster) -> None:
    wrong = ClientSecurity(username="alice", password="not-her-password")
    with Admin(cluster.bootstrap, security=wrong) as admin, \
            pytest.raises(AuthenticationFailed, match="authentication failed for user 'alice'"):
        admin.list_topics()
    unknown = ClientSecurity(username="nobody", password="x")
    with pytest.raises(AuthenticationFailed, match="wrong password or unknown user"):
        broker(cluster, unknown).Metadata(pb.MetadataRequest(), timeout=10)


def test_a_user_without_an_acl_gets_permission_denied_naming_resource_and_operation(
        cluster: LocalCluster) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        broker(cluster, ALICE).Produce(pb.ProduceRequest(topic=TOPIC, partition=0), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "User:alice may not WRITE on topic 'orders'" in refused.value.details()
    with Producer(cluster.bootstrap, security=ALICE) as producer, \
            pytest.raises(errors.Unauthorized, match="User:alice may not DESCRIBE on topic"):
        producer.send(TOPIC, b"refused")  # its metadata is refused at once, not after a timeout
    with Admin(cluster.bootstrap, security=ALICE) as admin:
        assert admin.whoami() == "User:alice"
        assert admin.list_topics() == []  # what she may not DESCRIBE is not listed
        with pytest.raises(errors.Unauthorized, match="ALTER on cluster"):
            admin.create_acls([AclEntry(principal="User:alice", resource_type="topic",
                                        resource_name=TOPIC, operation="all")])


def test_after_acl_add_the_user_produces_and_consumes(cluster: LocalCluster) -> None:
    for args in (("--operation", "write", "--operation", "read", "--topic", TOPIC),
                 ("--operation", "read", "--group", GROUP)):
        added = cli(cluster, "acl", "add", "--principal", "User:alice", *args)
        assert added.returncode == 0, added.stderr
    with Producer(cluster.bootstrap, security=ALICE) as producer:
        futures = [producer.send(TOPIC, f"v{i}".encode()) for i in range(5)]
        offsets = [f.result(timeout=30).offset for f in futures]
        assert offsets == list(range(offsets[0], offsets[0] + 5))
    assert consume(cluster, ALICE, 5) == [f"v{i}".encode() for i in range(5)]


def test_deny_wins_over_allow(cluster: LocalCluster) -> None:
    denied = cli(cluster, "acl", "add", "--principal", "User:alice", "--operation", "read",
                 "--topic", "ord", "--prefixed", "--deny")
    assert denied.returncode == 0, denied.stderr
    with pytest.raises(grpc.RpcError) as refused:
        broker(cluster, ALICE, node=2).Fetch(pb.FetchRequest(partitions=[
            pb.FetchPartition(topic=TOPIC, partition=0, offset=0, max_bytes=1024)]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "denied by the ACL 'deny User:alice read on topic:ord (prefixed)'" in \
        refused.value.details()
    removed = cli(cluster, "acl", "remove", "--principal", "User:alice", "--operation", "read",
                  "--topic", "ord", "--prefixed", "--deny")
    assert removed.returncode == 0 and "removed 1" in removed.stdout


def test_a_queue_needs_create_then_read_on_the_queue(cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap, security=ALICE) as admin:
        with pytest.raises(errors.Unauthorized, match="CREATE on queue 'jobs'"):
            admin.create_queue("jobs", [TOPIC])
        with Admin(cluster.bootstrap, security=ADMIN) as grantor:
            grantor.create_acls([AclEntry(principal="User:alice", resource_type="queue",
                                          resource_name="jobs", operation="create")])
        admin.create_queue("jobs", [TOPIC])  # she may read the topic already
    with QueueConsumer(cluster.bootstrap, queue="jobs", security=ALICE) as consumer, \
            pytest.raises(errors.Unauthorized, match="may not READ on queue 'jobs'"):
        consumer.receive(max_messages=10, timeout_s=1.0)
    with Admin(cluster.bootstrap, security=ADMIN) as grantor:
        grantor.create_acls([AclEntry(principal="User:alice", resource_type="queue",
                                      resource_name="jobs", operation="read")])
        grantor.delete_acls([AclEntry(principal="User:alice", resource_type="queue",
                                      resource_name="jobs", operation="create")])
    with QueueConsumer(cluster.bootstrap, queue="jobs", security=ALICE) as consumer:
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            for message in consumer.receive(max_messages=10, timeout_s=1.0):
                got.append(message.value)
                consumer.ack(message).result(timeout=30)
    assert got == [f"v{i}".encode() for i in range(5)]


def test_users_and_acls_replicate_to_every_node(cluster: LocalCluster) -> None:
    listed = cli(cluster, "acl", "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    expected = json.loads(listed.stdout)
    assert len(expected) == 4
    with Admin(cluster.bootstrap, security=ADMIN) as admin:
        for node in cluster.nodes:
            wait_for(lambda n=node: [a.to_dict() for a in admin.list_acls(
                node_address=n.address)] == expected, f"ACLs on node {node.id}")


def test_password_change_ends_old_logins(cluster: LocalCluster) -> None:
    changed = cli(cluster, "user", "passwd", "alice", "--password-stdin",
                  stdin=ALICE_PASSWORD + "-2\n")
    assert changed.returncode == 0, changed.stderr
    with Admin(cluster.bootstrap, security=ALICE) as admin, \
            pytest.raises(AuthenticationFailed):
        admin.whoami()
    back = cli(cluster, "user", "passwd", "alice", "--password-stdin", stdin=ALICE_PASSWORD,
               security=ClientSecurity(username="alice", password=ALICE_PASSWORD + "-2"))
    assert back.returncode == 0, back.stderr  # a user may change its own password


def test_users_acls_and_logins_survive_a_restart_of_every_node(cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap, security=ADMIN) as admin:
        acls_before = admin.list_acls()
    assert len(acls_before) == 4
    producer = Producer(cluster.bootstrap, security=ALICE)
    try:
        producer.send(TOPIC, b"before").result(timeout=30)
        for node in cluster.nodes:
            cluster.terminate(node.id)
        cluster.start()
        cluster.wait_healthy(timeout_s=60)
        # the same client: its tokens died with the nodes, it logs in again by itself
        producer.send(TOPIC, b"after").result(timeout=60)
    finally:
        producer.close()
    assert consume(cluster, ALICE, 2, group="after-restart")[-2:] == [b"before", b"after"]
    with Admin(cluster.bootstrap, security=ADMIN) as admin:
        assert [u.name for u in admin.list_users()] == ["admin", "alice"]
        after = [a for a in admin.list_acls() if a.resource_name != "after-restart"]
        assert after == acls_before


def test_the_metadata_log_holds_stored_keys_not_passwords(cluster: LocalCluster) -> None:
    logs = list(Path(cluster.node(1).data_dir, "metadata").rglob("*.log"))
    data = b"".join(path.read_bytes() for path in logs)
    assert b'"op":"upsert_user"' in data and b'"stored_key"' in data
    for password in (ADMIN_PASSWORD, ALICE_PASSWORD):
        assert password.encode() not in data
    for node in cluster.nodes:  # nor do the node logs show the keys
        text = node.log_path.read_text()
        assert "upsert_user (the credential is not logged)" in text
        assert "server_key" not in text and "stored_key" not in text


# -- helpers -----------------------------------------------------------------------------------


def consume(cluster: LocalCluster, security: ClientSecurity, count: int, *,
            group: str = GROUP) -> list[bytes]:
    if group != GROUP:
        with Admin(cluster.bootstrap, security=ADMIN) as admin:
            admin.create_acls([AclEntry(principal="User:alice", resource_type="group",
                                        resource_name=group, operation="read")])
    values: list[bytes] = []
    with Consumer(cluster.bootstrap, group_id=group, topics=[TOPIC],
                  auto_offset_reset="earliest", security=security) as consumer:
        deadline = time.monotonic() + 60
        while len(values) < count and time.monotonic() < deadline:
            values.extend(r.value for r in consumer.poll(timeout_s=1.0))
    return values


def wait_for(condition, what: str, timeout_s: float = 15.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout_s} s")
        time.sleep(0.2)
