"""The live progress of `tidelog bench` on stderr: one line redrawn in place on a terminal,
else a plain log line every few seconds (a CI log or a file must not fill with carriage
returns). It runs in its own thread and only reads a Counters snapshot, so it never slows
the loop it reports on; stdout stays for the final table or JSON.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from tidelog.client.bench_workloads import Counters

__all__ = ["Progress", "progress_line"]

TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 5.0


def progress_line(label: str, messages: int, nbytes: int, errors: int, elapsed_s: float) -> str:
    rate = messages / elapsed_s if elapsed_s > 0 else 0.0
    mb_s = nbytes / elapsed_s / 1e6 if elapsed_s > 0 else 0.0
    failed = f"  {errors:,} errors" if errors else ""
    return (f"{label}: {messages:,} msgs  {rate:,.0f} msg/s  {mb_s:,.2f} MB/s  "
            f"elapsed {elapsed_s:.1f} s{failed}")


class Progress:
    """`with Progress("produce", counters):` shows the rate until the block ends."""

    def __init__(self, label: str, counters: Counters, *, stream: TextIO | None = None,
                 enabled: bool = True, interval_s: float | None = None) -> None:
        self.label = label
        self.counters = counters
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0
        self.interval_s = interval_s or (TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S)

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="bench-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self.tty and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            line = progress_line(self.label, *self.counters.snapshot())
            if self.tty:
                self.stream.write("\r" + line.ljust(self._width))
                self._width = max(self._width, len(line))
            else:
                self.stream.write(f"tidelog bench: {line}\n")
            self.stream.flush()
