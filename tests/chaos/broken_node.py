"""A deliberately broken node, for proving the chaos harness can fail (tests only, never shipped).

Runs the real `tidelog.node.main` after one monkeypatch: a leader answers acks=all produce
requests as soon as the batch is in its own log, before a majority has it (acks sent before
commit). An isolated leader then acknowledges writes that the majority never sees and that are
truncated when the partition heals: lost acknowledged data, which the checker must report.

`TIDELOG_TEST_REPLICATION_DELAY_MS=N` also holds back every APPEND that carries entries of a
partition (not of the metadata group) for N ms before it leaves the leader: a slow replication
link, which needs no root and no network fault. It does not make the node wrong by itself (Raft
tolerates delay); it widens the window in which the acks-before-commit bug can bite, so a
kill -9 of the leader reliably loses what only the leader held (the kill-leader proof that runs
without root, on 127.0.0.1).

Started by tests/chaos/test_scenarios.py as `python -m tests.chaos.broken_node ARGS...` with the
repository root on PYTHONPATH; the shipped node has no switch for this.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from tidelog.node import replica
from tidelog.node.raft import MessageType

REPLICATION_DELAY_S = int(os.environ.get("TIDELOG_TEST_REPLICATION_DELAY_MS", "0")) / 1000


async def _acked_before_commit(self: replica.Replica, last_offset: int, term: int,
                               timeout_s: float) -> None:
    await self.wait_appended(last_offset, term, timeout_s)


replica.Replica.wait_committed = _acked_before_commit  # type: ignore[method-assign]

_original_init = replica.Replica.__init__


def _init_with_slow_replication(self: replica.Replica, *args: Any, **kwargs: Any) -> None:
    send = kwargs["send"]
    partition = "/" in kwargs["group"]  # "<topic id>/<partition>"; the metadata group has none

    def delayed(*message_args: Any) -> None:
        message = message_args[-1]
        if partition and message.type is MessageType.APPEND and message.entries:
            asyncio.get_running_loop().call_later(REPLICATION_DELAY_S, send, *message_args)
        else:
            send(*message_args)

    _original_init(self, *args, **{**kwargs, "send": delayed})


if REPLICATION_DELAY_S > 0:
    replica.Replica.__init__ = _init_with_slow_replication  # type: ignore[method-assign]

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main())
