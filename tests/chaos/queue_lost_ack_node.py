"""A deliberately broken node, for proving the queue chaos check can fail (tests only, never
shipped).

Runs the real `tidelog.node.main` after one monkeypatch: the queue coordinator leaves the `Ack`
deltas (and the `Advance` deltas that move a partition's start past acked records, which replay
would refuse without them) out of what it writes to `__queue_state`, and still answers the acks
ok. An ack is then
only in the coordinator's memory until the next snapshot record (written every 32 writes) carries
it; a coordinator killed in between comes back without the acks of its last writes: those
records are still in flight, their locks expire and they are delivered again, although their
consumers were told the ack succeeded. The queue checker must say so
(`queue-redelivered-after-finish`, and `queue-double-finished` once they are acked again).

Started by tests/chaos/test_queue_chaos.py as `python -m tests.chaos.queue_lost_ack_node ARGS...`
with the repository root on PYTHONPATH; the shipped node has no switch for this.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tidelog.node.queues import coordinator
from tidelog.node.queues import deltas as dl

_original_propose = coordinator.QueueCoordinator._propose


def _propose_without_acks(self: coordinator.QueueCoordinator, entry: Any, queue: Any,
                          deltas: Sequence[Any], snapshot: bool = False) -> Any:
    kept = [d for d in deltas if not isinstance(d, dl.Ack | dl.Advance)]
    return _original_propose(self, entry, queue, kept, snapshot)


coordinator.QueueCoordinator._propose = _propose_without_acks  # type: ignore[method-assign]

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main())
