"""A deliberately broken node, for proving the chaos harness can fail (tests only, never shipped).

Runs the real `tidelog.node.main` after one monkeypatch: a leader answers acks=all produce
requests as soon as the batch is in its own log, before a majority has it (acks sent before
commit). An isolated leader then acknowledges writes that the majority never sees and that are
truncated when the partition heals: lost acknowledged data, which the checker must report.

Started by tests/chaos/test_scenarios.py as `python -m tests.chaos.broken_node ARGS...` with the
repository root on PYTHONPATH; the shipped node has no switch for this.
"""

from __future__ import annotations

import sys

from tidelog.node import replica


async def _acked_before_commit(self: replica.Replica, last_offset: int, term: int,
                               timeout_s: float) -> None:
    await self.wait_appended(last_offset, term, timeout_s)


replica.Replica.wait_committed = _acked_before_commit  # type: ignore[method-assign]

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main())
