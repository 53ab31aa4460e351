"""A real `tidelog node` whose queue coordinator dies (os._exit, no cleanup: like SIGKILL) in the
exactly-once window of dead-lettering: after the dead letter is committed to the DLQ topic and
before `dead_lettered` is committed to __queue_state. Test-only; the switches are files.

In $TIDELOG_TEST_MARKERS (a directory):
- `<queue>.crash`: the next coordinator of <queue> that writes its dead letters exits right after
  (the file is removed first, so its successor does not exit too);
- `<queue>.noscan`: planted bug: the coordinator does not scan the DLQ tail before writing (it
  believes the DLQ holds nothing it does not know of), so a dead letter written by its
  predecessor is written again.

Run as `python dlq_crash_node.py <tidelog node arguments>`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tidelog.node.queues import coordinator, dead_letters

MARKERS = Path(os.environ["TIDELOG_TEST_MARKERS"])
_write = coordinator.write_dead_letters
_scan = dead_letters._scan


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


coordinator.write_dead_letters = crash_after_write
dead_letters._scan = scan_unless_planted

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main(sys.argv[1:]))
