"""Which scrape-time collectors a node registers: one line per part (each module owns its series).

Each entry is (name, function run on the event loop at every scrape; see on_loop.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidelog.node.metrics.on_loop import MetricsFunction

if TYPE_CHECKING:
    from tidelog.node.server import Node


def node_collectors(node: Node) -> list[tuple[str, MetricsFunction]]:
    """The node's scrape-time collectors. Add a part's collector here, nowhere else."""
    collectors: list[tuple[str, MetricsFunction]] = []
    return collectors
