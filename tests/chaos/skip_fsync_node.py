"""A deliberately broken node that never fsyncs, for proving the power-cut harness can fail.

Runs the real `tidelog.node.main` after monkeypatching the storage layer's fsyncs to no-ops:
the file-system seam's `fsync`, `fdatasync` and `fsync_directory` (node/storage/fs.py), and, as
a backstop for any storage module that still calls them directly, `os.fsync` / `os.fdatasync`.
Everything else is the shipped node: it answers acks=all exactly as before, only nothing it
acknowledges is on the disk. A kill -9 cannot tell (the page cache survives it); a power cut on
LazyFS must: the node comes back without the records it acknowledged, and when every replica
lost them the checker reports lost acknowledged records.

Started by tests/chaos/test_power_cut.py as `python -m tests.chaos.skip_fsync_node ARGS...` with
the repository root on PYTHONPATH; the shipped node has no switch for this.
"""

from __future__ import annotations

import os
import sys

from tidelog.node.storage import fs


def _skipped(*_args: object, **_kwargs: object) -> None:
    return None


for _name in ("fsync", "fdatasync", "fsync_directory"):
    if hasattr(fs.OsFileSystem, _name):
        setattr(fs.OsFileSystem, _name, _skipped)
os.fsync = _skipped  # type: ignore[assignment]
os.fdatasync = _skipped  # type: ignore[assignment]

if __name__ == "__main__":
    from tidelog.node.main import main

    print("skip_fsync_node: every fsync is a no-op in this node (test build)", file=sys.stderr)
    sys.exit(main())
