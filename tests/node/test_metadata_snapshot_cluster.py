"""Metadata snapshots on a real 3-node cluster (issue 17): snapshot + truncation + restart, and a
follower that was down while the others truncated catching up through snapshot transfer.

Damaged snapshot files on a stopped node: the newest refused (the older one serves), then all of
them (a peer's serves). One module-scoped cluster; TIDELOG_METADATA_SNAPSHOT_EVERY=10 so that a
few dozen quota commands (cheap metadata commands: no partitions) make several snapshots and
cuts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tidelog.client import Admin
from tidelog.client.security_admin import AclEntry
from tidelog.node.local_cluster import LocalCluster, LocalNode, metadata
from tidelog.node.metadata_service import SNAPSHOT_CHUNK_BYTES
from tidelog.node.metadata_snapshot import list_snapshots, snapshot_path
from tidelog.node.replica_state import read_state

from tests.clusters import running_cluster

EVERY = 10
BIG_ACL_COMMANDS, BIG_ACLS_PER_COMMAND = 24, 45
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("metasnap"),
                         {"TIDELOG_METADATA_SNAPSHOT_EVERY": str(EVERY)}) as running:
        yield running


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> float:
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - a node restarting or mid-election: ask again
            pass
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def set_quotas(cluster: LocalCluster, first: int, count: int) -> None:
    with Admin(cluster.bootstrap) as admin:
        for i in range(first, first + count):
            admin.set_quota(client_id=f"c{i}", producer_byte_rate=1000 + i)


def big_acls(cluster: LocalCluster) -> None:
    """ACLs with long resource names: ~1.2 MB of snapshot in a few commands (authorization is
    off in this cluster, so they change nothing else)."""
    with Admin(cluster.bootstrap) as admin:
        for c in range(BIG_ACL_COMMANDS):
            admin.create_acls([
                AclEntry(principal="User:big", resource_type="topic", operation="read",
                         resource_name=f"t{c}-{i}-" + "x" * 1000)
                for i in range(BIG_ACLS_PER_COMMAND)])


def quotas_on(cluster: LocalCluster, node: LocalNode) -> dict[str, int]:
    with Admin(cluster.bootstrap) as admin:
        return {q.entity.client_id: q.limits["producer_byte_rate"]
                for q in admin.describe_quotas(node_address=node.address)}


def damage(path: Path) -> None:
    """One byte changed (never back: damaging twice changes it again)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] = (data[len(data) // 2] + 1) & 0xFF
    path.write_bytes(bytes(data))


def metadata_dir(node: LocalNode) -> Path:
    return node.data_dir / "metadata"


def last_applied(node: LocalNode) -> int:
    """The last metadata offset the node's log says it applied (replayed, or applied live)."""
    text = node.log_path.read_text()
    found = [int(m) for m in re.findall(r"metadata replayed up to offset (-?\d+)", text)]
    found += [int(m) for m in re.findall(r"metadata (\d+): ", text)]
    return max(found)


def not_the_metadata_leader(cluster: LocalCluster) -> LocalNode:
    leader = metadata(cluster.nodes[0].address, []).metadata_leader_id
    return next(n for n in reversed(cluster.nodes) if n.id != leader)


def test_a_restarted_node_starts_from_its_snapshot_with_a_truncated_log(
        cluster: LocalCluster) -> None:
    set_quotas(cluster, 0, 3 * EVERY)
    expected = {f"c{i}": 1000 + i for i in range(3 * EVERY)}
    node = not_the_metadata_leader(cluster)
    wait_for("the quotas applied on the node", lambda: quotas_on(cluster, node) == expected)
    wait_for("two snapshots kept", lambda: len(list_snapshots(metadata_dir(node))) == 2)
    cluster.terminate(node.id)
    snapshots = list_snapshots(metadata_dir(node))
    log_start = read_state(metadata_dir(node)).log_start
    print(f"node {node.id}: snapshots {snapshots}, metadata log start {log_start}")
    assert len(snapshots) == 2 and log_start > 0
    assert log_start - 1 <= min(snapshots)  # the older snapshot still covers the log start
    damage(snapshot_path(metadata_dir(node), max(snapshots)))  # a real bit flip on disk
    seen = len(node.log_path.read_text())
    cluster.start(node.id)
    cluster.wait_healthy(timeout_s=60, node_ids=[node.id])
    wait_for("the same quotas after the restart", lambda: quotas_on(cluster, node) == expected)
    text = node.log_path.read_text()[seen:]
    # The damaged newest is refused, saying why; the older one and the log after it serve.
    assert "refusing metadata snapshot" in text and "checksum mismatch" in text
    assert f"metadata snapshot at {min(snapshots)} loaded" in text


def test_a_node_whose_snapshots_are_all_damaged_gets_one_from_a_peer(
        cluster: LocalCluster) -> None:
    """Its log starts above 0, so the log alone cannot rebuild the state: it must neither load
    half a state nor replay a partial log, but fetch a peer's snapshot first."""
    node = not_the_metadata_leader(cluster)
    expected = quotas_on(cluster, node)
    cluster.terminate(node.id)
    snapshots = list_snapshots(metadata_dir(node))
    assert snapshots and read_state(metadata_dir(node)).log_start > 0
    for index in snapshots:
        damage(snapshot_path(metadata_dir(node), index))
    seen = len(node.log_path.read_text())
    cluster.start(node.id)
    cluster.wait_healthy(timeout_s=60, node_ids=[node.id])
    wait_for("the same quotas from a peer's snapshot",
             lambda: quotas_on(cluster, node) == expected)
    text = node.log_path.read_text()[seen:]
    assert "no usable metadata snapshot covers the metadata log start" in text
    assert "metadata state installed from a peer's snapshot" in text


def test_a_follower_behind_the_truncated_log_catches_up_by_snapshot_transfer(
        cluster: LocalCluster) -> None:
    node = not_the_metadata_leader(cluster)
    cluster.kill(node.id)
    applied = last_applied(node)
    try:
        set_quotas(cluster, 1000, 4 * EVERY)
        big_acls(cluster)  # the snapshot outgrows one FetchMetadataSnapshot chunk (1 MiB)
        others = [n for n in cluster.nodes if n.id != node.id]
        starts = {n.id: 0 for n in others}

        def truncated_past_the_follower() -> bool:
            for n in others:
                starts[n.id] = read_state(metadata_dir(n)).log_start
            return min(starts.values()) > applied + 1

        wait_for("the others' log starts past the follower's log", truncated_past_the_follower)
        print(f"follower {node.id} applied up to {applied}; others' log starts {starts}")
    finally:
        cluster.start(node.id)
    expected = quotas_on(cluster, others[0])
    assert len(expected) == 3 * EVERY + 4 * EVERY
    took = wait_for("the follower's quotas equal the leader's",
                    lambda: quotas_on(cluster, node) == expected, timeout_s=60)
    print(f"node {node.id} caught up {took:.1f} s after its restart")
    installed = re.findall(r"metadata state installed from a peer's snapshot at \d+ \((\d+) "
                           r"bytes\)", node.log_path.read_text())
    assert installed and int(installed[-1]) > SNAPSHOT_CHUNK_BYTES, installed
    with Admin(cluster.bootstrap) as admin:
        assert len(admin.list_acls(node_address=node.address)) == \
            BIG_ACL_COMMANDS * BIG_ACLS_PER_COMMAND
    # It keeps applying new commands after the install.
    set_quotas(cluster, 5000, 2)
    wait_for("a new command applied on the follower",
             lambda: quotas_on(cluster, node).get("c5001") == 6001)
