"""`tidelog top`: a live terminal view of the cluster, redrawn every --interval seconds.

Three parts that never wait on each other: a poller thread takes snapshots
(tidelog.client.top_data, every RPC with a deadline), the main thread reads keys without blocking
(stdin in cbreak mode, select with a timeout) and redraws with rich's Live on the alternate
screen (tidelog.client.top_view). So `q` quits at once even while a poll waits on a dead node,
and the screen shows the last snapshot with its time meanwhile. The terminal is given back in
`finally` whatever ends the loop: q, Ctrl-C (exit 130), SIGTERM (exit 143), or an exception.

`--once` polls twice, --interval apart (the rates need two), prints that one screen (or, with
`--output json`, the snapshot and its rates) and exits: 0, or 1 when no node answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidelog.client.top_data import Gatherer
    from tidelog.client.top_model import Snapshot

#: how often the main thread looks at the keyboard and the poller's slot
KEY_POLL_S = 0.05
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGINT = 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "top", help="a live view of nodes, leaders, rates, lags and queues (q quits)",
        description="Redraw nodes (up or down, leaders), topics (end offsets, produce and "
        "consume rates), the biggest consumer-group lags (records and seconds) and the queues "
        "(depth, oldest unacked age) every --interval seconds. q quits.")
    # Also after the command (`tidelog top --bootstrap H:P`); absent, the global flag's value.
    parser.add_argument("--bootstrap", default=argparse.SUPPRESS,
                        help="HOST:PORT[,...] of any nodes (as the global --bootstrap)")
    parser.add_argument("--interval", type=_positive, default=1.0, metavar="S",
                        help="seconds between polls (default %(default)s)")
    parser.add_argument("--rpc-timeout", type=_positive, default=1.0, metavar="S",
                        help="deadline of each call to a node (default %(default)s): a dead "
                        "node costs at most this per poll")
    parser.add_argument("--once", action="store_true",
                        help="poll twice, --interval apart, print one screen and exit "
                        "(exit 1 when no node answers)")
    parser.add_argument("--output", choices=("text", "json"), default="text",
                        help="with --once: json prints the snapshot and its rates")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tidelog.client.top_data import Gatherer

    if args.output == "json" and not args.once:
        from tidelog.client.cli_common import fail

        return fail(args, "--output json needs --once", 2)
    gatherer = Gatherer(args.bootstrap, security=args.security, rpc_timeout_s=args.rpc_timeout)
    try:
        if args.once:
            return _once(gatherer, args)
        return _live(gatherer, args.interval)
    finally:
        gatherer.close()


def _once(gatherer: Gatherer, args: argparse.Namespace) -> int:
    from rich.console import Console
    from tidelog.client.top_model import rates, snapshot_to_dict
    from tidelog.client.top_view import render

    first = gatherer.take()
    previous, current = None, first
    if first.reachable:
        time.sleep(args.interval)
        previous, current = first, gatherer.take()
    if args.output == "json":
        print(json.dumps(snapshot_to_dict(current, rates(previous, current)), indent=2))
    else:
        # highlight=False: rich would colour every number and address in the cells by itself
        console = Console(soft_wrap=False, highlight=False)
        console.print(render(previous, current, height=10_000, footer=""))
    return 0 if current.reachable else 1


def _live(gatherer: Gatherer, interval_s: float) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text
    from tidelog.client.top_view import render

    poller = _Poller(gatherer, interval_s)
    console = Console(highlight=False)
    # Ctrl-C and SIGTERM only note the exit code; the loop ends between two frames. Raised in
    # the middle of a redraw, KeyboardInterrupt cut the frame inside a UTF-8 character.
    signalled: list[int] = []
    previous_handlers = {sig: signal.signal(sig, _noting_exit_code(signalled))
                         for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        poller.start()
        with _cbreak(sys.stdin) as keys, Live(
                Text(f"tidelog top: asking {', '.join(gatherer.bootstrap)} ...  q quits"),
                console=console, screen=True, auto_refresh=False,
                redirect_stdout=False, redirect_stderr=False) as live:
            shown: tuple[int, Any] = (-1, None)
            drawn_at = 0.0
            while True:
                if any(k in "qQ" for k in keys(KEY_POLL_S)):
                    return 0
                if signalled:
                    return signalled[0]
                if poller.error is not None and not poller.is_alive():
                    raise poller.error
                version, pair = poller.latest()
                size = console.size
                now = time.monotonic()
                if pair is not None and ((version, size) != shown or now - drawn_at >= 1.0):
                    live.update(render(*pair, height=size.height), refresh=True)
                    shown, drawn_at = (version, size), now
    except KeyboardInterrupt:  # before the handlers were in place
        return EXIT_SIGINT
    finally:
        poller.stop()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


class _Poller(threading.Thread):
    """Takes a snapshot every interval and keeps the latest two (the view's rates need both)."""

    def __init__(self, gatherer: Gatherer, interval_s: float) -> None:
        super().__init__(name="tidelog-top-poller", daemon=True)
        self._gatherer = gatherer
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._version = 0
        self._pair: tuple[Snapshot | None, Snapshot] | None = None
        self.error: Exception | None = None

    def latest(self) -> tuple[int, tuple[Snapshot | None, Snapshot] | None]:
        with self._lock:
            return self._version, self._pair

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        previous: Snapshot | None = None
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                current = self._gatherer.take()
            except Exception as exc:  # a bug (the cluster's failures are in the snapshot):
                with self._lock:  # the main thread raises it after giving the terminal back
                    self.error = exc
                return
            with self._lock:
                self._pair = (previous if previous is not None and previous.reachable else None,
                              current)
                self._version += 1
            previous = current
            self._stopping.wait(max(0.0, self._interval_s - (time.monotonic() - started)))


@contextlib.contextmanager
def _cbreak(stream: Any) -> Iterator[Any]:
    """A `keys(timeout_s) -> str` reader of the keys pressed meanwhile ("" when none). On a
    terminal, stdin goes to cbreak mode (keys arrive one by one, unechoed; Ctrl-C still
    interrupts) and its settings come back on exit; elsewhere no key ever comes."""
    fd = stream.fileno() if stream is not None and stream.isatty() else None
    if fd is None:
        def wait_only(timeout_s: float) -> str:
            time.sleep(timeout_s)
            return ""
        yield wait_only
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)

        def read(timeout_s: float) -> str:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            if not ready:
                return ""
            return os.read(fd, 64).decode(errors="replace")
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _noting_exit_code(signalled: list[int]) -> Callable[[int, FrameType | None], None]:
    """A signal handler that appends the exit code the signal stands for (130 for SIGINT, as a
    shell reports Ctrl-C; 143 for SIGTERM)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        signalled.append(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
    return handler


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value
