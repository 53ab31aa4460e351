"""A real cluster for a whole test module: N node processes on 127.0.0.1, always stopped.

Module-scoped fixtures of the cluster tests (groups, queues) differ only in the node environment
they need (fewer internal-topic partitions on 2 CI cores, a faster cleaner), so they share this.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tidelog.node.local_cluster import LocalCluster


@contextmanager
def running_cluster(directory: Path, env: Mapping[str, str], nodes: int = 3,
                    **options: Any) -> Iterator[LocalCluster]:
    """Started and healthy on entry (node logs kept in `directory`); stopped on exit, whatever
    happened. `options` go to LocalCluster (tls_dir, tls_client_auth, extra_args...)."""
    running = LocalCluster(nodes, directory / "cluster", env=dict(env), **options)
    running.start()
    try:
        running.wait_healthy(timeout_s=60)
        yield running
    finally:
        running.stop()


def dev_certs(tmp_path_factory: Any, name: str) -> Path:
    """A dev CA with node certificates for nodes 1-3 and a client certificate for "alice"
    (`tidelog certs dev`), in a fresh directory; its parent is free for the cluster."""
    from tidelog.node.security.certs import make_dev_certs

    directory = tmp_path_factory.mktemp(name) / "certs"
    make_dev_certs(directory, [1, 2, 3], clients=["alice"])
    return directory
