"""Storage metrics (docs/metrics.md, "Produce, fetch and storage"): fsync latency, batches made
durable per fsync (the group-commit factor), and the data directory's disk space.

`FSYNC_SECONDS` is observed by the real file system (node/storage/fs.py `OsFileSystem`), so every
fsync/fdatasync of the node is timed: the group committer's (log segments, durable markers) and
the log's own (rolls, closes), and the atomic state-file writes. The simulator's in-memory file
system is not timed. This module imports nothing of node/storage, which imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from tidelog.node.metrics.registry import REGISTRY

FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)
"""0.1 ms .. 10 s: a local SSD fdatasyncs in 0.1-1 ms, a network disk in 2-20 ms; seconds mean a
disk in trouble (and acks=all writes waiting behind it)."""

FSYNC_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

FSYNC_SECONDS = Histogram(
    "tidelog_fsync_seconds", "Duration of each fsync/fdatasync the node makes",
    buckets=FSYNC_BUCKETS_S, registry=REGISTRY)
FSYNC_BATCHES = Histogram(
    "tidelog_fsync_batches",
    "Batches (Raft entries) of one partition log made durable by one fdatasync of it",
    buckets=FSYNC_BATCH_BUCKETS, registry=REGISTRY)


def disk_metrics(data_dir: Path) -> Iterable[Metric]:
    """Scrape time: free and total bytes of the file system holding the data directory. Free is
    what an unprivileged writer may still use (f_bavail), the figure that reaches 0 first."""
    stat = os.statvfs(data_dir)
    free = GaugeMetricFamily(
        "tidelog_disk_free_bytes",
        "Bytes still available to the node on the data directory's file system",
        value=stat.f_bavail * stat.f_frsize)
    total = GaugeMetricFamily(
        "tidelog_disk_total_bytes", "Size of the data directory's file system in bytes",
        value=stat.f_blocks * stat.f_frsize)
    return [free, total]
