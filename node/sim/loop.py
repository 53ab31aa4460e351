"""A deterministic asyncio event loop for the simulator: virtual time, a seeded disk executor, and
power cuts that stop one simulated node's code at any await.

Theory of operation. ``SimLoop`` is asyncio's own ``BaseEventLoop`` (so the real ``Replica``,
``GroupCommitter``, ``asyncio.Event``/``wait_for``/``timeout`` run unchanged) with three twins:

* Time. ``time()`` is simulated seconds. When nothing is ready, the selector "waits" by jumping
  the clock to the next timer instead of sleeping, so a simulated minute takes no wall time.
* The executor. ``run_in_executor`` does not use threads: the function runs on the loop thread
  after a seeded disk latency, and its future resolves then. While a Ready's fsync is "in flight"
  the loop keeps delivering messages and ticks to the same replica, as on a node.
* Nodes. Every callback, task step and executor job is tagged with the simulated node whose code
  scheduled it (a ``ContextVar`` that asyncio copies into every task and handle). ``kill(node)``
  marks the node's current incarnation dead: none of its pending callbacks, task steps or disk
  jobs ever runs again, exactly as if the process lost power between two instructions.

Everything random comes from the ``random.Random`` given, so a seed replays exactly. The loop
has no I/O at all (no sockets, no self-pipe): it can only run simulated nodes.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import random
from collections.abc import Callable
from typing import Any

__all__ = ["NODE", "DiskLatency", "SimLoop", "Stalled"]

NODE: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "sim_node", default=None)
"""(node id, incarnation) of the simulated node whose code is running, or None (the harness)."""


class Stalled(Exception):
    """Nothing is scheduled at all: the simulation cannot make progress (a harness bug)."""


class DiskLatency:
    """Seeded latency of one executor job (an fsync, an atomic metadata write)."""

    def __init__(self, rng: random.Random, *, ms_min: float = 0.1, ms_max: float = 4.0) -> None:
        self._rng = rng
        self.ms_min, self.ms_max = ms_min, ms_max

    def next_s(self) -> float:
        return self._rng.uniform(self.ms_min, self.ms_max) / 1000.0


class _Selector:
    """Stands in for the selector: "waiting" advances the virtual clock by the timeout."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise Stalled("nothing is scheduled: every simulated node is idle forever")
        if timeout > 0:
            self._loop._now += timeout
        return []

    def close(self) -> None:
        pass


class SimLoop(asyncio.BaseEventLoop):
    """See the module docstring. Not thread-safe, and not meant to be: one thread runs it."""

    def __init__(self, rng: random.Random, latency: DiskLatency | None = None) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _Selector(self)
        self._clock_resolution = 1e-9
        self.latency = latency or DiskLatency(random.Random(rng.getrandbits(64)))
        self._dead: set[tuple[int, int]] = set()
        self.errors: list[BaseException] = []
        self.executor_jobs = 0

    # -- time ------------------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    # -- nodes -----------------------------------------------------------------------------

    def kill(self, tag: tuple[int, int]) -> None:
        """The node's incarnation lost power: none of its scheduled work runs again."""
        self._dead.add(tag)

    def is_dead(self, tag: tuple[int, int] | None) -> bool:
        return tag is not None and tag in self._dead

    def run_as(self, tag: tuple[int, int], fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` as code of node ``tag``: everything it schedules is tagged so."""
        ctx = contextvars.copy_context()
        ctx.run(NODE.set, tag)
        return ctx.run(fn, *args)

    # -- scheduling (every handle is guarded by its node's liveness) -------------------------

    def call_soon(self, callback: Callable[..., Any], *args: Any,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        tag = context.get(NODE) if context is not None else NODE.get()
        if tag is not None:
            callback = functools.partial(self._guarded, tag, callback)
        return super().call_soon(callback, *args, context=context)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        tag = context.get(NODE) if context is not None else NODE.get()
        if tag is not None:
            callback = functools.partial(self._guarded, tag, callback)
        return super().call_at(when, callback, *args, context=context)

    def _guarded(self, tag: tuple[int, int], callback: Callable[..., Any], *args: Any) -> None:
        if tag not in self._dead:
            callback(*args)

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any,
                             context: contextvars.Context | None = None) -> asyncio.Handle:
        return self.call_soon(callback, *args, context=context)

    # -- the executor twin ---------------------------------------------------------------------

    def run_in_executor(self, executor: Any, func: Callable[..., Any],  # type: ignore[override]
                        *args: Any) -> asyncio.Future[Any]:
        self.executor_jobs += 1
        future: asyncio.Future[Any] = self.create_future()
        tag = NODE.get()

        def run() -> None:
            if future.cancelled() or self.is_dead(tag):
                return
            try:
                result = func(*args)
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
                if not future.cancelled():
                    future.set_exception(exc)
                return
            if not future.cancelled():
                future.set_result(result)

        self.call_later(self.latency.next_s(), run)
        return future

    def set_default_executor(self, executor: Any) -> None:
        raise RuntimeError("the simulated loop runs blocking work itself")

    # -- errors ----------------------------------------------------------------------------

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """A dead incarnation's tasks are dropped unfinished: asyncio complains when they are
        garbage-collected, which is expected. Anything else is a failure of the run."""
        message = str(context.get("message", ""))
        if "was destroyed but it is pending" in message or "never retrieved" in message:
            return
        exc = context.get("exception")
        self.errors.append(exc if isinstance(exc, BaseException) else RuntimeError(message))

    # -- what BaseEventLoop needs from a concrete loop ------------------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def run_until(self, when_s: float) -> None:
        """Run every callback scheduled before ``when_s``, then stop with the clock there."""
        stop = self.call_at(when_s, self.stop)
        try:
            self.run_forever()
        finally:
            stop.cancel()
        self._now = max(self._now, when_s)

    def next_timer_s(self) -> float | None:
        scheduled = [h for h in self._scheduled if not h.cancelled()]
        return heapq.nsmallest(1, scheduled)[0].when() if scheduled else None

