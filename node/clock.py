"""The clock seam: everything in the node's I/O shell that reads time takes a `Clock`.

`SYSTEM_CLOCK` reads the real clocks; the deterministic simulator passes a twin whose time is the
simulated event loop's (tidelog.node.sim.loop), so a run replays exactly from its seed. No module
of the replica path calls time.time() or time.monotonic() itself.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic_ms(self) -> int:
        """Milliseconds on a clock that never goes backwards (intervals, deadlines)."""
        ...

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch (timestamps stored in the log, fsync intervals)."""
        ...


class SystemClock:
    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


SYSTEM_CLOCK: Clock = SystemClock()
