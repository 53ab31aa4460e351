"""Which scrape-time collectors a node registers: one line per part (each module owns its series).

Each entry is (name, function run on the event loop at every scrape; see on_loop.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidelog.node.metrics.groups import group_metrics
from tidelog.node.metrics.on_loop import MetricsFunction
from tidelog.node.metrics.partitions import partitions_collector
from tidelog.node.metrics.queues import queue_collector
from tidelog.node.metrics.reassignment import reassignment_metrics
from tidelog.node.metrics.storage import disk_metrics

if TYPE_CHECKING:
    from tidelog.node.server import Node


def node_collectors(node: Node) -> list[tuple[str, MetricsFunction]]:
    """The node's scrape-time collectors. Add a part's collector here, nowhere else."""
    collectors: list[tuple[str, MetricsFunction]] = []
    collectors.append(queue_collector(node))  # queues this node coordinates
    collectors.append(("disk", lambda: disk_metrics(node.data_dir)))
    collectors.append(("groups", lambda: group_metrics(node.groups)))  # groups coordinated here
    collectors.append(("partitions", partitions_collector(node.replicas, node.metadata)))
    collectors.append(("reassignments", lambda: reassignment_metrics(node.replicas)))
    return collectors
