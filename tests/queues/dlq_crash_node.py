"""A real `tidelog node` whose queue coordinator dies or stops in the exactly-once window of
dead-lettering. Test-only; the switches are files.

In $TIDELOG_TEST_MARKERS (a directory):
- `<queue>.crash`: the next coordinator of <queue> that writes a dead-letter batch exits
  (os._exit, no cleanup: like SIGKILL) right after the DLQ write is acknowledged and before the
  batch is committed as done (the file is removed first, so its successor does not exit too);
- `<queue>.loseack`: the next dead-letter write of <queue> is made, and then its reply is lost
  (LEADER_NOT_AVAILABLE instead of the answer), so the coordinator writes the batch again;
- `<queue>.pause`: the next coordinator of <queue> about to write its dead letters stops itself
  (SIGSTOP: a zombie) just before the write; the test resumes it (SIGCONT) once another
  coordinator has dead-lettered the record, and the zombie's write then goes out (it also leaves
  the exact batch it was about to send in `<queue>.copy`, so a test can deliver that copy itself
  at any later moment: a write delayed in the network, which the zombie's own resumed task may
  or may not get out before it learns it lost the queue);
- `<queue>.noscan`, `<queue>.nofence`, `<queue>.noidem` (the same planted bug under the names
  of the earlier mechanisms, a DLQ tail scan and a per-takeover producer epoch, which the
  deterministic batches replaced): the coordinators write each dead-letter batch without the
  queue's producer id (not idempotent), so a second copy of a batch (a successor's rewrite, a
  zombie's late write) is appended instead of being answered as a duplicate.

Run as `python dlq_crash_node.py <tidelog node arguments>`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from tidelog.node import errors as E
from tidelog.node.queues import dead_letter_driver, dead_letters

MARKERS = Path(os.environ["TIDELOG_TEST_MARKERS"])
PLANTED = ("noscan", "nofence", "noidem")
_write = dead_letter_driver.write_dlq_batch
_produce = dead_letters.Writer.produce


async def write_then_maybe_crash(**kwargs: Any) -> Any:
    queue = kwargs["queue"]
    if any((MARKERS / f"{queue}.{name}").exists() for name in PLANTED):
        kwargs["producer"] = (-1, -1)  # planted: not idempotent
    response = await _write(**kwargs)
    lose = MARKERS / f"{queue}.loseack"
    if lose.exists():
        lose.unlink()
        raise E.LeaderNotAvailableError("test: the reply of this dead-letter write was lost")
    crash = MARKERS / f"{queue}.crash"
    if crash.exists():
        crash.unlink()
        os._exit(9)
    return response


async def pause_before_dead_letter(self: Any, topic: str, partition: int,
                                   batches: bytes) -> Any:
    pause = MARKERS / f"{topic.removesuffix('.dlq')}.pause"
    if topic.endswith(".dlq") and pause.exists():
        pause.unlink()
        # The exact write it was about to send, for the test to deliver late ("the network").
        (MARKERS / f"{topic.removesuffix('.dlq')}.copy").write_bytes(batches)
        (MARKERS / f"{topic.removesuffix('.dlq')}.paused-{os.getpid()}").touch()
        os.kill(os.getpid(), signal.SIGSTOP)  # the whole process: Raft, ticks and all
    return await _produce(self, topic, partition, batches)


dead_letter_driver.write_dlq_batch = write_then_maybe_crash
dead_letters.Writer.produce = pause_before_dead_letter  # type: ignore[method-assign]

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main(sys.argv[1:]))
