"""The real node with issue 11's defect 10 planted back (tests only, never shipped).

Before the fix every replica encoded a Raft control batch (a leader's no-op, a membership change)
itself with its own wall clock as the record timestamp, so replicas held different bytes for the
same committed entry. No client read can see that: a fetch is served by one replica, and control
batches are never given to consumers. Only comparing the replicas' stored bytes after the run
(`replica-consistency`) can, which is what tests/chaos/test_scenarios.py requires of it.

Started as `python -m tests.chaos.wallclock_node ARGS...` with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import sys
import time

from tidelog.node import raft_log, replica
from tidelog.node.raft import Entry, EntryKind
from tidelog.proto.batch import ControlType, encode_control_batch

_pure_to_batch = raft_log.to_batch


def _to_batch_with_wall_clock(entry: Entry) -> bytes:
    if entry.kind is EntryKind.DATA:
        return _pure_to_batch(entry)
    control = {EntryKind.NOOP: ControlType.RAFT_NOOP,
               EntryKind.CONFIG: ControlType.RAFT_CONFIG}[entry.kind]
    return encode_control_batch(control, entry.data, timestamp_ms=int(time.time() * 1000),
                                base_offset=entry.index, term=entry.term)


replica.to_batch = _to_batch_with_wall_clock  # the name Replica persists entries through

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main())
