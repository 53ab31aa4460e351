"""The real node with a planted fetch bug: it sometimes leaves a batch out of a read (tests only).

`Replica.read_committed` serves whole committed batches from an offset; this node, for one batch
in `SKIP_EVERY` (by base offset), leaves it out of a response that holds more than that batch,
with probability one half (seeded: `TIDELOG_TEST_SKIP_SEED`). A consumer given such a response
jumps over the records of the missing batch: inside one poll() if the batches on both sides came
in the same response, else between two polls. Other reads of the same offsets (the other
consumer, the final read) often get them, so the checker knows data lives there and must report
`internal-poll-skips` / `poll-skips`. Nothing is lost from the log: only reads are wrong.

Started as `python -m tests.chaos.skipping_node ARGS...` with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import os
import random
import sys

from tidelog.node import replica
from tidelog.proto.batch import iter_batches

SKIP_EVERY = 10
_rng = random.Random(int(os.environ.get("TIDELOG_TEST_SKIP_SEED", "0")))
_read_committed = replica.Replica.read_committed


def _read_committed_skipping(self: replica.Replica, offset: int, max_bytes: int) -> bytes:
    raw = _read_committed(self, offset, max_bytes)
    if "/" not in self.group:  # the metadata group: leave it alone
        return raw
    batches = [(pos, header) for pos, header in iter_batches(raw, verify=False)]
    if len(batches) < 2:
        return raw
    kept = [raw[pos:pos + header.size] for pos, header in batches
            if not (header.base_offset % SKIP_EVERY == SKIP_EVERY // 2 and _rng.random() < 0.5)]
    return b"".join(kept) if kept else raw


replica.Replica.read_committed = _read_committed_skipping  # type: ignore[method-assign]

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main())
