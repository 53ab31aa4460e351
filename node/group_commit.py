"""Group commit across partitions: one executor job fsyncs every log that asked since the last one.

Replicas `await sync(log)` after appending; while one flush runs, new requests gather into the next,
so under load many partitions' appends share each round of fsyncs and the event loop never blocks on
the disk. Invariant: when `sync(log)` returns, all appended to `log` before the call is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Syncable(Protocol):
    def sync(self) -> int: ...


class GroupCommitter:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._pending: dict[int, Syncable] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing = False
        self.flushes = 0
        self.synced_logs = 0

    async def sync(self, target: Syncable) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending[id(target)] = target
        self._waiters.append(future)
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush_loop())
        await future

    async def run(self, work: Callable[[], object]) -> object:
        """Run blocking work (an atomic metadata write) off the loop."""
        return await asyncio.get_running_loop().run_in_executor(None, work)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters:
                targets = list(self._pending.values())
                waiters = self._waiters
                self._pending, self._waiters = {}, []
                try:
                    await loop.run_in_executor(None, _sync_all, targets)
                except Exception as exc:  # surfaced to every writer that waited on this flush
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                self.flushes += 1
                self.synced_logs += len(targets)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._flushing = False


def _sync_all(targets: list[Syncable]) -> None:
    for target in targets:
        target.sync()
