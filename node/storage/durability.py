"""Group commit and the fsync policy's bookkeeping.

Group commit (leader/follower): a thread calling sync() when no fsync is in flight becomes the
leader: it snapshots the log end, fsyncs, publishes the new durable end. Threads arriving while an
fsync is in flight wait for it; when it ends, each one whose appends it covered returns at once,
and the first one still uncovered leads the next fsync, which covers every append made meanwhile.
So N concurrent appenders pay about two fsyncs per round, not N. Bounded: at most one fsync runs
per log, waiters hold no resources but a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.node.storage.config import FsyncMode, FsyncPolicy

__all__ = ["DirtyTracker", "GroupCommitter"]


class GroupCommitter:
    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._in_flight = False  # Invariant: at most one flush runs at a time.
        self.flushes = 0  # completed or failed flush() calls, for metrics and benchmarks

    def run(self, *, is_done: Callable[[], bool], flush: Callable[[], None]) -> None:
        """Return once is_done(); call flush() ourselves only when nobody else is flushing."""
        with self._cv:
            while True:
                if is_done():
                    return
                if not self._in_flight:
                    break
                self._cv.wait()
            self._in_flight = True
        try:
            flush()
        finally:
            with self._cv:
                self._in_flight = False
                self.flushes += 1
                self._cv.notify_all()


@dataclass(slots=True)
class DirtyTracker:
    """What was appended since the last completed sync, for needs_sync(now_ms)."""

    policy: FsyncPolicy
    unsynced_bytes: int = 0
    unsynced_batches: int = 0  # for tidelog_fsync_batches (batches made durable per fsync)
    last_sync_ms: int = 0

    def on_append(self, size_bytes: int) -> None:
        self.unsynced_bytes += size_bytes
        self.unsynced_batches += 1

    def on_sync(self, *, synced_bytes: int, now_ms: int, synced_batches: int = 0) -> None:
        self.unsynced_bytes = max(0, self.unsynced_bytes - synced_bytes)
        self.unsynced_batches = max(0, self.unsynced_batches - synced_batches)
        self.last_sync_ms = now_ms

    def needs_sync(self, now_ms: int) -> bool:
        if self.unsynced_bytes == 0:
            return False
        if self.policy.mode is FsyncMode.ALWAYS:
            return True
        if self.policy.interval_bytes is not None \
                and self.unsynced_bytes >= self.policy.interval_bytes:
            return True
        return self.policy.interval_ms is not None \
            and now_ms - self.last_sync_ms >= self.policy.interval_ms
