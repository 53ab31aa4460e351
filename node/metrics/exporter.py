"""The Prometheus endpoint: GET /metrics over HTTP on `--metrics-listen`, served in a thread by
prometheus_client (its WSGI server), reading the node's registry. Plain HTTP, never TLS, even on a
node with TLS (docs/metrics.md, docs/security.md).

Background work that metrics code starts (the queue stats refresher, the loop-lag probe) is
stopped here, at the node's stop: a refresher that outlived the node would read its closed
replicas and readers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from tidelog.node.config import NodeConfig, parse_address
from tidelog.node.errors import ConfigError
from tidelog.node.metrics.loop_lag import measure_loop_lag
from tidelog.node.metrics.on_loop import MetricsFunction, OnLoopCollector
from tidelog.node.metrics.registry import REGISTRY

log = logging.getLogger(__name__)


class MetricsExporter:
    """Owns the endpoint's lifetime and the node's scrape-time collectors on REGISTRY."""

    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._collectors: list[OnLoopCollector] = []
        self._lag_task: asyncio.Task[None] | None = None
        self._on_stop: list[Callable[[], Awaitable[None]]] = []

    def on_stop(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Register the stop of background work a collector starts (it cancels and awaits its
        task, and starts none after). Run by `stop`, after the endpoint and the collectors are
        gone, so no scrape can start the work again."""
        self._on_stop.append(stop)

    @property
    def address(self) -> str | None:
        """HOST:PORT actually served (None when off or not bound)."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self, collectors: list[tuple[str, MetricsFunction]]) -> None:
        """Binds the endpoint and registers the collectors. An address the operator chose that
        cannot be bound is a ConfigError (the node stops); the derived default only warns."""
        address = self._config.metrics_address
        if address is None:
            log.info("metrics endpoint off (--metrics-listen off)")
            return
        loop = asyncio.get_running_loop()
        for name, function in collectors:
            collector = OnLoopCollector(name, loop, function)
            REGISTRY.register(collector)
            self._collectors.append(collector)
        self._lag_task = loop.create_task(measure_loop_lag(), name="metrics-loop-lag")
        host, port = parse_address(address)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            if self._config.metrics_explicit:
                raise ConfigError(f"--metrics-listen {address}: cannot listen: {exc}") from exc
            log.warning("metrics endpoint not started: the default address %s is taken (%s); "
                        "choose one with --metrics-listen HOST:PORT", address, exc)
            return
        log.info("metrics endpoint on http://%s/metrics", address)

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        for collector in self._collectors:
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(collector)
        self._collectors.clear()
        stops, self._on_stop = self._on_stop, []
        for stop in stops:
            try:
                await stop()
            except Exception:  # noqa: BLE001 - one failing stop must not skip the others
                log.exception("metrics: stopping background work failed")
