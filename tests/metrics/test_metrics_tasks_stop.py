"""A stopped node leaves no metrics task behind: the queue stats refresher (node/metrics/queues.py)
and the consumer-group lag refresher (node/groups/lag.py) both start at a scrape, and both must be
cancelled and awaited by Node.stop, or they outlive the node and read its closed replicas and
readers. One real Node in this process (real files, a real HTTP scrape)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tidelog.node.config import NodeConfig
from tidelog.node.local_cluster import free_ports
from tidelog.node.server import Node

pytestmark = pytest.mark.timeout(60)

METRICS_TASKS = ("metrics-queue-stats", "groups-lag", "metrics-loop-lag")


def _config(tmp_path: Path) -> NodeConfig:
    port, metrics_port = free_ports(2)
    address = f"127.0.0.1:{port}"
    return NodeConfig(node_id=1, listen=address, advertise=address, peers={1: address},
                      data_dir=tmp_path / "node-1", tick_ms=20,
                      metrics_listen=f"127.0.0.1:{metrics_port}")


async def _until(predicate: Any, timeout_s: float = 20.0) -> None:  # noqa: ANN401
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _pending() -> list[str]:
    current = asyncio.current_task()
    return sorted(task.get_name() for task in asyncio.all_tasks()
                  if task is not current and not task.done())


def test_a_stopped_node_leaves_no_metrics_task_pending(tmp_path: Path) -> None:
    async def run() -> tuple[list[str], list[str]]:
        node = Node(_config(tmp_path))
        await node.start()
        try:
            await _until(lambda: node.metadata.leader_id == 1)
            address = node.metrics.address
            assert address is not None
            await asyncio.to_thread(_scrape, address)  # starts / wakes both refreshers
            await _until(lambda: {"metrics-queue-stats", "groups-lag"} <= set(_pending()))
            running = [name for name in _pending() if name in METRICS_TASKS]
        finally:
            await node.stop(graceful=False)
        return running, _pending()

    running, left = asyncio.run(run())
    assert sorted(running) == sorted(METRICS_TASKS)
    assert left == [], f"tasks still pending after Node.stop: {left}"
