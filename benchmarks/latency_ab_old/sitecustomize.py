"""A/B runs of the latency pass (benchmarks/README.md, "Latency pass"): the old code, restored.

Put this directory on the nodes' PYTHONPATH (``--node-env PYTHONPATH=benchmarks/latency_ab_old``
of benchmarks/latency_bench.py or e2e_bench.py) and set ``TIDELOG_AB_OLD=1`` (e.g.
``--ab-env TIDELOG_AB_OLD=1``): the replica then takes every Ready on its drive task and
``wait_committed`` waits through ``wait_for(shield(...))`` as before the pass. Without the
variable nothing changes. ``TIDELOG_ROUND_TRACE`` also loads benchmarks/round_trace (only one
sitecustomize is imported per process). Benchmarks only: never shipped, never in tests.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import runpy
from pathlib import Path

if os.environ.get("TIDELOG_AB_OLD"):
    import tidelog.node.replica as replica_mod

    replica_mod.Replica._start_at_once = False

    async def _old_wait_committed(self, last_offset, term, timeout_s):  # type: ignore[no-untyped-def]
        if self.commit_index >= last_offset:
            self._check_term(last_offset, term)
            return
        future = asyncio.get_running_loop().create_future()
        waiter = replica_mod._CommitWaiter(last_offset, term, future)
        bisect.insort(self._waiters, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout_s)
        finally:
            if waiter in self._waiters and not waiter.future.done():
                self._waiters.remove(waiter)

    replica_mod.Replica.wait_committed = _old_wait_committed  # type: ignore[method-assign]

if os.environ.get("TIDELOG_ROUND_TRACE"):
    runpy.run_path(str(Path(__file__).resolve().parent.parent / "round_trace" / "sitecustomize.py"),
                   run_name="round_trace")
