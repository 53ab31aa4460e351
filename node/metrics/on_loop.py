"""Scrape-time collectors that read the node's state on its event loop.

The HTTP endpoint answers in its own thread; the node's state (replicas, groups, queues) belongs to
the asyncio loop and changes under a reader in another thread (a dict resized mid-iteration raises).
So a scrape hands each collector's function to the loop and waits for its result, bounded by a
timeout: a loop too busy to answer in time yields no series for that scrape (and a warning once),
never a stuck scrape.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SCRAPE_ON_LOOP_TIMEOUT_S = 3.0

MetricsFunction = Callable[[], Iterable[Metric]]
"""Runs on the event loop; returns finished metric families (GaugeMetricFamily, ...). Must not
block or await: it reads in-memory state only."""


class OnLoopCollector(Collector):
    """Adapts a `MetricsFunction` to prometheus_client's Collector, running it on `loop`."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, function: MetricsFunction,
                 *, timeout_s: float = SCRAPE_ON_LOOP_TIMEOUT_S) -> None:
        self.name = name
        self._loop = loop
        self._function = function
        self._timeout_s = timeout_s
        self._warned = False

    def collect(self) -> Iterator[Metric]:
        if self._loop.is_closed():
            return iter(())
        result: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def run() -> None:
            if result.set_running_or_notify_cancel():
                try:
                    result.set_result(list(self._function()))
                except Exception as exc:  # noqa: BLE001 - a broken collector must not break /metrics
                    result.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed between the check and the call: node stopping
            return iter(())
        try:
            return iter(result.result(timeout=self._timeout_s))
        except concurrent.futures.TimeoutError:
            result.cancel()
            if not self._warned:
                log.warning("metrics: collector %s got no answer from the event loop in %.1f s; "
                            "its series are left out of this scrape", self.name, self._timeout_s)
                self._warned = True
            return iter(())
        except Exception:
            log.exception("metrics: collector %s failed; its series are left out", self.name)
            return iter(())

    def describe(self) -> Iterable[Metric]:
        return ()  # unchecked collector: its families vary with the node's state
