"""A real cluster for a whole test module: N node processes on 127.0.0.1, always stopped.

Module-scoped fixtures of the cluster tests (groups, queues) differ only in the node environment
they need (fewer internal-topic partitions on 2 CI cores, a faster cleaner), so they share this.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tidelog.node.local_cluster import LocalCluster


@contextmanager
def running_cluster(directory: Path, env: Mapping[str, str], nodes: int = 3
                    ) -> Iterator[LocalCluster]:
    """Started and healthy on entry (node logs kept in `directory`); stopped on exit, whatever
    happened."""
    running = LocalCluster(nodes, directory / "cluster", env=dict(env))
    running.start()
    try:
        running.wait_healthy(timeout_s=60)
        yield running
    finally:
        running.stop()
