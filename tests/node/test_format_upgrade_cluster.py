"""The operator's upgrade path for a node whose data was written by batch format v1, end to end
with a real node process: it refuses to start and names the fix; `tidelog storage migrate`
converts the data directory; the node then starts and serves every record it held.

The v1 data is made by the test: a v2 node writes records, stops, and the test rewrites each
stored batch in the documented v1 layout (docs/batch-format.md, "Format v1 and upgrading")."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash
from tidelog.client import Admin, Consumer, Producer, TopicPartition
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto.batch import HEADER_SIZE, decode_header, iter_batches

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def _as_v1(batch: bytes) -> bytes:
    """One v2 batch rewritten in format v1: the same fields and records, v1's 69-byte header."""
    h = decode_header(batch)
    records = batch[HEADER_SIZE:]
    tail = struct.pack(">hiiqqqhi", h.attributes, h.last_offset_delta, h.record_count,
                       h.first_timestamp, h.max_timestamp, h.producer_id, h.producer_epoch,
                       h.base_sequence) + records
    return struct.pack(">qiqbQ", h.base_offset, 69 - 12 + len(records), h.term, 1,
                       xxhash.xxh3_64_intdigest(tail)) + tail


def _downgrade_to_v1(data_dir: Path) -> int:
    """Rewrite every segment below data_dir in format v1, as a v1 node left it; returns how
    many."""
    count = 0
    for segment in sorted(data_dir.rglob("*.log")):
        if not (len(segment.stem) == 20 and segment.stem.isdigit()):
            continue
        data = segment.read_bytes()
        segment.write_bytes(b"".join(_as_v1(data[p:p + h.size]) for p, h in iter_batches(data)))
        for index in (segment.with_suffix(".index"), segment.with_suffix(".timeindex")):
            index.unlink(missing_ok=True)
        count += 1
    return count


def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(values) < expected and time.monotonic() < deadline:
            values += [r.value for r in consumer.poll(timeout_s=1.0)]
        return values


def test_a_v1_node_refuses_to_start_then_migrate_brings_every_record_back(
        tmp_path: Path) -> None:
    cluster = LocalCluster(1, tmp_path / "c")
    node = cluster.node(1)
    values = [b"record-%d" % i for i in range(200)]
    try:
        cluster.start()
        cluster.wait_healthy(timeout_s=60)
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic("orders", partitions=1, replication_factor=1)
        with Producer(cluster.bootstrap, linger_ms=5) as producer:
            for value in values:
                producer.send("orders", value)
            producer.flush(60)
        cluster.stop()
        assert _downgrade_to_v1(node.data_dir) >= 2  # metadata and the partition

        log_start = node.log_path.stat().st_size
        cluster.start()
        assert node.process is not None
        assert node.process.wait(timeout=60) != 0, "a v1 data directory must not be served"
        log_text = node.log_path.read_bytes()[log_start:].decode(errors="replace")
        assert "written by batch format v1" in log_text, log_text[-3000:]
        assert "tidelog storage migrate" in log_text
        assert "Traceback" not in log_text, "the operator gets the message, not a stack trace"

        migrate = subprocess.run(
            [sys.executable, "-m", "tidelog.client.cli", "storage", "migrate",
             str(node.data_dir)], capture_output=True, text=True, timeout=120,
            env={**os.environ})
        assert migrate.returncode == 0, migrate.stderr
        assert "converted to batch format v2" in migrate.stdout

        cluster.start()
        cluster.wait_healthy(timeout_s=60)
        assert _read_all(cluster.bootstrap, "orders", len(values)) == values
    finally:
        cluster.stop()
