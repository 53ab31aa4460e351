"""A real `tidelog node` whose queue coordinator dies (os._exit, no cleanup: like SIGKILL) in the
exactly-once window of dead-lettering: after the dead letter is committed to the DLQ topic and
before `dead_lettered` is committed to __queue_state. Test-only; the switches are files.

In $TIDELOG_TEST_MARKERS (a directory):
- `<queue>.crash`: the next coordinator of <queue> that writes its dead letters exits right after
  (the file is removed first, so its successor does not exit too);
- `<queue>.noscan`: planted bug: the coordinator does not scan the DLQ tail before writing (it
  believes the DLQ holds nothing it does not know of), so a dead letter written by its
  predecessor is written again.
- `<queue>.pause`: the next coordinator of <queue> about to write its dead letters stops itself
  (SIGSTOP: a zombie) just before the write; the test resumes it (SIGCONT) once another
  coordinator has dead-lettered the record, and the zombie's write then goes out;
- `<queue>.nofence`: planted bug: the coordinators write dead letters without the per-queue
  producer epoch, so nothing fences the zombie's late write.

Run as `python dlq_crash_node.py <tidelog node arguments>`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from tidelog.node.queues import coordinator, dead_letters
from tidelog.node.queues.dead_letters import DlqProducer

MARKERS = Path(os.environ["TIDELOG_TEST_MARKERS"])
_write = coordinator.write_dead_letters
_scan = dead_letters._scan
_produce = dead_letters.Writer.produce
_fence = coordinator.QueueCoordinator._dlq_producer


async def crash_after_write(**kwargs: Any) -> Any:
    done = await _write(**kwargs)
    crash = MARKERS / f"{kwargs['queue']}.crash"
    if done and crash.exists():
        crash.unlink()
        os._exit(9)
    return done


async def scan_unless_planted(reader: Any, queue: str, dlq_topic: str, partitions: Any,
                              starts: dict[int, int], scan: Any) -> None:
    if (MARKERS / f"{queue}.noscan").exists():
        scan.known_end = {**(scan.known_end or {}), **{p: 0 for p in partitions}}
        scan.dirty.clear()
        return
    await _scan(reader, queue, dlq_topic, partitions, starts, scan)


async def pause_before_dead_letter(self: Any, topic: str, partition: int, batches: bytes,
                                   **kwargs: Any) -> Any:
    pause = MARKERS / f"{topic.removesuffix('.dlq')}.pause"
    if topic.endswith(".dlq") and pause.exists():
        pause.unlink()
        (MARKERS / f"{topic.removesuffix('.dlq')}.paused-{os.getpid()}").touch()
        os.kill(os.getpid(), signal.SIGSTOP)  # the whole process: Raft, ticks and all
    return await _produce(self, topic, partition, batches, **kwargs)


async def fence_unless_planted(self: Any, queue: str) -> Any:
    if (MARKERS / f"{queue}.nofence").exists():
        return DlqProducer(producer_id=-1, epoch=-1)  # not idempotent: nothing is fenced
    return await _fence(self, queue)


coordinator.write_dead_letters = crash_after_write
dead_letters._scan = scan_unless_planted
dead_letters.Writer.produce = pause_before_dead_letter  # type: ignore[method-assign]
coordinator.QueueCoordinator._dlq_producer = fence_unless_planted  # type: ignore[method-assign]

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main(sys.argv[1:]))
