"""One request to several nodes in turn, the first answer wins (a hedged request).

Why: a paused or partitioned node keeps its TCP connection open and answers nothing, so a call
to it ends only at its deadline. Asking the next node after a short wait, without giving up on
the first, bounds a lookup by the fastest healthy node instead of by the slowest node's timeout.
Only for requests that may safely reach two nodes: Metadata, and InitProducerId without a
transactional id (a spare producer id is harmless). With ``hedge_after_s=None`` the next node is
asked only once the previous one failed (for requests that must not be sent twice).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from tidelog.client import errors
from tidelog.client.connection import Connections

__all__ = ["RoundResult", "first_answer"]

#: a done callback that never comes would be a gRPC bug; never wait past the deadline + this
_CALLBACK_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class RoundResult:
    """How one round went: the answer (address None: nobody answered), why each node that
    failed failed, and the nodes that were slow (timed out, or overtaken by a later node)."""

    answer: Any
    address: str | None
    failures: Mapping[str, errors.TidelogError]
    slow: tuple[str, ...]


def first_answer(
    connections: Connections, addresses: Sequence[str], method: str, request: object, *,
    attempt_s: float, hedge_after_s: float | None, clock: Callable[[], float] = time.monotonic,
) -> RoundResult:
    """Ask `addresses` in order, each with deadline `attempt_s`: the next one as soon as the last
    one failed, or `hedge_after_s` after the last one was asked without an answer. Returns on the
    first answer, or once every address failed. A non-retriable error is raised at once (a node
    answered: the request itself is refused). The calls still running are cancelled on return."""
    cond = threading.Condition()  # an RLock: a callback of an already finished call runs inline
    finished: list[tuple[str, grpc.Future]] = []
    started: dict[str, tuple[float, grpc.Future]] = {}
    pending = list(addresses)
    failures: dict[str, errors.TidelogError] = {}
    slow: list[str] = []

    def on_done(address: str, future: grpc.Future) -> None:
        with cond:
            finished.append((address, future))
            cond.notify_all()

    def launch() -> None:
        address = pending.pop(0)
        try:
            future = connections.call_async(address, method, request, timeout_s=attempt_s)
        except errors.TidelogError as exc:  # a closed pool
            if not exc.retriable:
                raise
            failures[address] = exc
            return
        started[address] = (clock(), future)
        future.add_done_callback(lambda f, a=address: on_done(a, f))

    handled = 0
    last_launch = clock()
    try:
        with cond:
            while True:
                while handled < len(finished):
                    address, future = finished[handled]
                    handled += 1
                    exc = future.exception()
                    if exc is None:
                        winner_at = started[address][0]
                        overtaken = [a for a, (at, f) in started.items() if a != address
                                     and not f.done() and at < winner_at]
                        return RoundResult(answer=future.result(), address=address,
                                           failures=failures, slow=(*slow, *overtaken))
                    error = connections.error_of(exc, address)
                    if not error.retriable:
                        raise error
                    failures[address] = error
                    if isinstance(error, errors.Timeout):
                        slow.append(address)
                running = [a for a in started if a not in failures]
                if not running and not pending:
                    return RoundResult(answer=None, address=None, failures=failures,
                                       slow=tuple(slow))
                now = clock()
                if pending and (not running or (
                        hedge_after_s is not None and now - last_launch >= hedge_after_s)):
                    launch()
                    last_launch = now
                    continue
                if pending and hedge_after_s is not None:
                    cond.wait(max(0.0, last_launch + hedge_after_s - now))
                else:
                    cond.wait(attempt_s + _CALLBACK_GRACE_S)
    finally:
        for _, future in started.values():
            future.cancel()  # a no-op on finished calls
