"""Event-loop lag: how late a timer fires. Every RPC, Raft round and fsync callback waits behind a
busy loop, so this is the first thing to look at when latency grows (docs/metrics.md)."""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge, Histogram
from tidelog.node.metrics.registry import REGISTRY

LOOP_LAG_INTERVAL_S = 0.25

LOOP_LAG = Histogram(
    "tidelog_event_loop_lag_seconds",
    "How much later than asked a timer on the node's event loop fired",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY)
LOOP_LAG_LAST = Gauge(
    "tidelog_event_loop_lag_last_seconds", "The newest event-loop lag measurement",
    registry=REGISTRY)


async def measure_loop_lag(interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Runs until cancelled: sleeps `interval_s` and records how much longer the sleep took."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - asked - interval_s)
        LOOP_LAG.observe(lag)
        LOOP_LAG_LAST.set(lag)
