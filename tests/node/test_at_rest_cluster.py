"""Encryption at rest on a real 3-node cluster (issue 13): `tidelog node --encryption-keyring`.

One module-scoped cluster. The first test produces records carrying a distinctive marker (in
keys, values and headers, lz4 and uncompressed, so compression cannot hide plaintext), commits
a group offset whose metadata carries a second marker (__consumer_offsets is encrypted too),
consumes the records back, and searches every file under every node's data directory: no
marker anywhere, while the same bytes opened offline with the keyring do hold the records (so
the search is not vacuous). The second test stops a follower, alters one ciphertext byte in two
of its partitions (one plainly, one with both xxh3 checksums recomputed, so only AES-GCM can
notice), restarts it: the node reports the damage, cuts and quarantines it, refills from its
peers, and afterwards every replica holds the same logical log (digests of the plaintext).
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.node.security.keyring import FileKeyring, create_keyring
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.node.storage.digest import committed_prefix_digest
from tidelog.node.storage.encryption import AtRestCipher, is_encrypted
from tidelog.proto.batch import HEADER_SIZE, decode_records, iter_batches

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

MARKER = b"AT-REST-MARKER-c0ffee-91"
GROUP_MARKER = "GROUP-META-MARKER-5e11"
TOPIC = "secrets"
RECORDS_PER_CODEC = 30
CIPHERTEXT_START = HEADER_SIZE + 5 + 12  # envelope version + key id, then the nonce


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keyring") / "keyring.json"
    create_keyring(path)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, keyring: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("at-rest"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_ENCRYPTION_KEYRING": str(keyring)}) as running:
        yield running


def _produce(bootstrap: str, start: int, count: int, compression: str) -> None:
    with Producer(bootstrap, linger_ms=2, compression=compression) as producer:
        for i in range(start, start + count):
            producer.send(TOPIC, MARKER + b" value %d" % i, key=MARKER + b" key %d" % i,
                          partition=i % 2, headers=[("h", MARKER)])
        producer.flush(60)


def _consume_all(bootstrap: str, expected: int) -> list[bytes]:
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < expected and time.monotonic() < deadline:
            values += [r.value for r in consumer.poll(1.0)]
        return values


def _open_offline(directory: Path, keyring: Path) -> PartitionLog:
    config = dataclasses.replace(LogConfig(),
                                 encryption=AtRestCipher(FileKeyring(keyring)))
    return PartitionLog.open(directory, config)


def _partition_dir(node_data: Path, partition: int) -> Path:
    return next((node_data / "partitions").glob(f"{TOPIC}-{partition}.*"))


def test_no_plaintext_reaches_the_disk_and_consumers_get_the_records(
        cluster: LocalCluster, keyring: Path, tmp_path: Path) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=2, replication_factor=3)
    _produce(cluster.bootstrap, 0, RECORDS_PER_CODEC, "none")
    _produce(cluster.bootstrap, RECORDS_PER_CODEC, RECORDS_PER_CODEC, "lz4")
    values = _consume_all(cluster.bootstrap, 2 * RECORDS_PER_CODEC)
    assert sorted(values) == sorted(MARKER + b" value %d" % i
                                    for i in range(2 * RECORDS_PER_CODEC))
    with Consumer(cluster.bootstrap, group_id=GROUP_MARKER, topics=[TOPIC],
                  auto_offset_reset="earliest", enable_auto_commit=False) as grouped:
        deadline = time.monotonic() + 30
        while not grouped.poll(1.0) and time.monotonic() < deadline:
            pass
        grouped.commit(metadata=GROUP_MARKER)

    found = [path for node in cluster.nodes for path in node.data_dir.rglob("*")
             if path.is_file() and (MARKER in path.read_bytes()
                                    or GROUP_MARKER.encode() in path.read_bytes())]
    assert found == [], f"plaintext on disk in {found}"

    # Not vacuous: a copy of one replica, opened with the keyring, holds the records.
    copy = tmp_path / "copy"
    shutil.copytree(_partition_dir(cluster.nodes[0].data_dir, 0), copy)
    log = _open_offline(copy, keyring)
    try:
        data = log.read(log.log_start_offset, 1 << 20)
        assert MARKER in data
        stored = (copy / f"{log.segment_base_offsets[0]:020d}.log").read_bytes()
        assert all(is_encrypted(stored, pos) for pos, _ in iter_batches(stored))
    finally:
        log.close()


def _tamper(segment: Path, *, rehash: bool) -> int:
    """Flip one ciphertext byte of the first data batch in `segment`; its base offset."""
    data = bytearray(segment.read_bytes())
    pos, header = next((p, h) for p, h in iter_batches(data) if not h.is_control)
    data[pos + CIPHERTEXT_START + 3] ^= 0x10
    if rehash:  # what a tamperer who knows the format does: only AES-GCM can notice
        struct.pack_into(">Q", data, pos + 61,
                         xxhash.xxh3_64_intdigest(data[pos + 77:pos + header.size]))
        struct.pack_into(">Q", data, pos + 69, xxhash.xxh3_64_intdigest(data[pos:pos + 69]))
    segment.write_bytes(bytes(data))
    return header.base_offset


def _in_sync(cluster: LocalCluster, node_id: int, timeout_s: float = 60) -> None:
    """Until each partition's leader counts `node_id` in sync (its match at the commit)."""
    deadline = time.monotonic() + timeout_s
    for partition in (0, 1):
        while True:
            leader = cluster.settled_leader_of(TOPIC, partition)
            answer = metadata(cluster.node(leader).address, [TOPIC])
            view = [p for t in answer.topics if t.name == TOPIC for p in t.partitions]
            if node_id in view[partition].in_sync:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node_id} not back in sync on partition {partition}")
            time.sleep(0.3)


def test_a_tampered_replica_reports_it_serves_nothing_wrong_and_refills(
        cluster: LocalCluster, keyring: Path) -> None:
    leader = cluster.settled_leader_of(TOPIC, 0)
    victim = next(n for n in cluster.nodes if n.id != leader)
    cluster.terminate(victim.id)
    tampered = {}
    for partition, rehash in ((0, True), (1, False)):
        directory = _partition_dir(victim.data_dir, partition)
        segment = sorted(directory.glob("*.log"))[0]
        tampered[partition] = _tamper(segment, rehash=rehash)
    cluster.start(victim.id)
    cluster.wait_healthy(timeout_s=60, node_ids=[victim.id])
    _produce(cluster.bootstrap, 1000, 10, "none")  # the log moves on while it refills
    _in_sync(cluster, victim.id)

    text = victim.log_path.read_text(errors="replace")
    assert "fails AES-GCM authentication under key id 1" in text
    assert "records checksum mismatch" in text
    assert text.count("cut the log from offset") >= 2
    for partition in (0, 1):
        assert list((_partition_dir(victim.data_dir, partition) / "quarantine").iterdir())

    # Consumers read the whole partition through the cluster: every record intact.
    values = _consume_all(cluster.bootstrap, 2 * RECORDS_PER_CODEC + 10)
    assert sorted(values) == sorted([MARKER + b" value %d" % i
                                     for i in range(2 * RECORDS_PER_CODEC)]
                                    + [MARKER + b" value %d" % i for i in range(1000, 1010)])
    cluster.stop()
    for partition in (0, 1):
        logs = [_open_offline(_partition_dir(n.data_dir, partition), keyring)
                for n in cluster.nodes]
        try:
            # A leader elected while the nodes stop one by one may add a NOOP that not every
            # node received: compare the prefix all of them hold.
            upto = min(log.log_end_offset for log in logs) - 1
            assert upto > tampered[partition]
            digests = {committed_prefix_digest(log, upto) for log in logs}
            assert len(digests) == 1, f"partition {partition}: replicas differ"
            refilled = logs[[n.id for n in cluster.nodes].index(victim.id)]
            values = _values(refilled)
            assert len(values) == RECORDS_PER_CODEC + 5 and all(
                v.startswith(MARKER) for v in values), f"partition {partition}: {len(values)}"
        finally:
            for log in logs:
                log.close()


def _values(log: PartitionLog) -> list[bytes]:
    """Every data record's value in the log, read (decrypted, authenticated) offline."""
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1 << 20)
        for pos, header in iter_batches(data):
            if not header.is_control:
                out += [r.value or b"" for r in decode_records(data[pos:pos + header.size])]
            offset = header.last_offset + 1
    return out
