"""Queue metrics, exported by the node that coordinates each queue (docs/metrics.md, "Queues").

The numbers are those of `tidelog queue stats`: `QueueCoordinator.fresh_stats`, the DescribeQueue
code path. That path awaits (it reads what is new in the topics, so control batches are not
counted as depth, and counts the dead letters after the redrive cursor), and a scrape-time
collector runs on the event loop and must not await. So a background task refreshes a snapshot
of every coordinated queue's stats every STATS_REFRESH_INTERVAL_S, and a scrape reports that
snapshot: the values are at most one interval (plus one refresh) old; a queue whose refresh
fails keeps its previous stats up to STATS_AGE_MS_MAX old, so a slow round leaves no gap.

The task starts at the first scrape and stops itself after SCRAPE_IDLE_S without one (a node nobody
scrapes does no work for queue metrics, not even reads); the next scrape starts it again, and the
series are back from the scrape after its first refresh (a scrape never waits for one). The node's
stop ends it (`QueueMetrics.stop`, registered with the MetricsExporter): it must not read the
node's closed replicas and readers after that. A scrape
reports only the queues this node coordinates at that moment, so a node that lost a queue's
coordination stops exporting it at once, without waiting for the next refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from tidelog.node import errors as E
from tidelog.node.metrics.on_loop import MetricsFunction
from tidelog.node.queues.model import QueueStats

if TYPE_CHECKING:
    from tidelog.node.queues.coordinator import QueueCoordinator
    from tidelog.node.server import Node

__all__ = ["STATS_REFRESH_INTERVAL_S", "QueueMetrics", "queue_collector"]

log = logging.getLogger(__name__)

STATS_REFRESH_INTERVAL_S = 2.0
SCRAPE_IDLE_S = 300.0          # no scrape for this long (> any sane scrape interval): it stops
REFRESH_QUEUE_TIMEOUT_S = 5.0  # Bound: one queue's stats may take this long, then it is skipped
STATS_AGE_MS_MAX = 10_000      # Bound: the oldest stats a scrape may report (failed refreshes)


class QueueMetrics:
    """The stats snapshot and its refresher (one per node)."""

    def __init__(self, coordinator: QueueCoordinator, *,
                 interval_s: float = STATS_REFRESH_INTERVAL_S) -> None:
        self._coordinator = coordinator
        self._interval_s = interval_s
        self._snapshot: dict[str, QueueStats] = {}
        self._task: asyncio.Task[None] | None = None
        self._scraped_at = time.monotonic()
        self._stopped = False

    def start(self) -> None:
        """Start the refresher on the running loop, unless it runs already or `stop` ran (a
        scrape already in the HTTP thread may still call collect as the node stops)."""
        if self._stopped:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._refresh_loop(), name="metrics-queue-stats")

    async def stop(self) -> None:
        """Cancel the refresher and wait for it; none is started after this."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._snapshot = {}

    def collect(self) -> Iterator[Metric]:
        """On the event loop, at scrape time: the snapshot of the queues coordinated now."""
        self._scraped_at = time.monotonic()
        self.start()
        coordinated = set(self._coordinator.coordinated_queues())
        return iter(families({name: stats for name, stats in self._snapshot.items()
                              if name in coordinated}))

    async def refresh(self) -> None:
        """Replace the snapshot with every coordinated queue's fresh stats. A queue whose stats
        fail this round (it moved, a read timed out) keeps its previous ones while they are at
        most STATS_AGE_MS_MAX old, so one slow round leaves no gap in its series; else it is
        left out until a round succeeds."""
        previous, snapshot = self._snapshot, {}
        for name in self._coordinator.coordinated_queues():
            try:
                snapshot[name] = await asyncio.wait_for(self._coordinator.fresh_stats(name),
                                                        REFRESH_QUEUE_TIMEOUT_S)
                continue
            except (E.BrokerError, TimeoutError) as exc:  # NotCoordinator... are BrokerErrors
                log.debug("queue metrics: no stats for %s this round: %s", name, exc)
            except Exception:  # noqa: BLE001 - a metrics bug must not stop the other queues
                log.exception("queue metrics: the stats of %s failed", name)
            kept = previous.get(name)
            if kept is not None and int(time.time() * 1000) - kept.now_ms <= STATS_AGE_MS_MAX:
                snapshot[name] = kept
        self._snapshot = snapshot

    async def _refresh_loop(self) -> None:
        while time.monotonic() - self._scraped_at < SCRAPE_IDLE_S:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a metrics bug must not take the node down
                log.exception("queue metrics: refresh failed")
            await asyncio.sleep(self._interval_s)
        self._snapshot = {}  # too old to report when scrapes come back


def queue_collector(node: Node) -> tuple[str, MetricsFunction]:
    """The ("queues", function) entry of node_collectors. The refresher starts at the first
    scrape: a node nobody scrapes does no work for queue metrics; the node's stop ends it."""
    metrics = QueueMetrics(node.queues)
    node.metrics.on_stop(metrics.stop)
    return "queues", metrics.collect


def families(snapshot: dict[str, QueueStats]) -> list[Metric]:
    """The metric families of a stats snapshot (queue name -> stats). Names are a contract
    (alert rules, the dashboard and `tidelog top` use them)."""
    depth = GaugeMetricFamily(
        "tidelog_queue_depth", "Messages ready or waiting (backoff, delay), not in flight",
        labels=["queue"])
    in_flight = GaugeMetricFamily(
        "tidelog_queue_in_flight", "Messages locked to a consumer now", labels=["queue"])
    age = GaugeMetricFamily(
        "tidelog_queue_oldest_unacked_age_seconds",
        "Now minus the timestamp of the oldest message not done (0 when none)", labels=["queue"])
    redeliveries = CounterMetricFamily(
        "tidelog_queue_redeliveries", "Deliveries with a delivery count above 1",
        labels=["queue"])
    dead_lettered = CounterMetricFamily(
        "tidelog_queue_dead_lettered", "Messages sent to the dead-letter topic",
        labels=["queue"])
    dead_letters_lost = CounterMetricFamily(
        "tidelog_queue_dead_letters_lost",
        "Dead letters a DLQ partition acknowledged and then lost (data loss)", labels=["queue"])
    dlq_depth = GaugeMetricFamily(
        "tidelog_queue_dlq_depth", "Dead letters after the redrive cursor", labels=["queue"])
    acked = CounterMetricFamily("tidelog_queue_acked", "Messages acked", labels=["queue"])
    for name, s in sorted(snapshot.items()):
        # stats.depth counts every record not done, in flight included (docs/queues.md).
        depth.add_metric([name], max(0, s.depth - s.in_flight))
        in_flight.add_metric([name], s.in_flight)
        age.add_metric([name], s.oldest_unacked_age_ms / 1000)
        redeliveries.add_metric([name], s.redelivered_total)
        dead_lettered.add_metric([name], s.dead_lettered_total)
        dead_letters_lost.add_metric([name], s.dead_letters_lost_total)
        dlq_depth.add_metric([name], s.dlq_depth)
        acked.add_metric([name], s.acked_total)
    return [depth, in_flight, age, redeliveries, dead_lettered, dead_letters_lost, dlq_depth,
            acked]
