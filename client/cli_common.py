"""Helpers every `tidelog` subcommand may use: one error prefix, and a bounded wait for a cluster.

Error lines: ``tidelog <command>: <what went wrong>`` on stderr (``tidelog topic list: ...``),
the same prefix argparse uses for usage errors of that command, so a person sees one style and
a script can grep one pattern. Without a command (top-level problems) the prefix is
``tidelog:``. Use `error(args, message)` or `fail(args, message, rc)`.

`reach_cluster(args, timeout_s)` runs before every command that needs a cluster (cli.py calls
it; a subcommand opts out with ``set_defaults(needs_cluster=False)``): a dead or mistyped
bootstrap used to make produce/consume hang silently for 30-60 s inside the client's own
retries. It asks every bootstrap address at once for its gRPC health (a short deadline each),
prints one line per failed round on stderr, and gives up with a clear line after `timeout_s`
(with ``--output json``: no progress lines, and the failure as the JSON error object
``{"error": {"type", "code", "message"}}`` that `tidelog queue` prints).
Any answer counts, even NOT_SERVING or UNAUTHENTICATED: the node is there, and the command
itself reports what is wrong more precisely than a probe could.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TextIO

from tidelog.client.security import ClientSecurity

PROBE_ROUNDS = 5  # rounds of probes spread over timeout_s
PROBE_DEADLINE_S_MAX = 1.0  # one Health call; a live node answers in milliseconds


def command_name(args: argparse.Namespace | None) -> str:
    """"topic list" for `tidelog topic list`; "" before a command is known."""
    return str(getattr(args, "command_path", "") or "") if args is not None else ""


def error_prefix(args: argparse.Namespace | None) -> str:
    name = command_name(args)
    return f"tidelog {name}:" if name else "tidelog:"


def error(args: argparse.Namespace | None, message: str, *, file: TextIO | None = None) -> None:
    """Print one error line with the command's prefix on stderr."""
    print(f"{error_prefix(args)} {message}", file=file or sys.stderr, flush=True)


def fail(args: argparse.Namespace | None, message: str, rc: int = 1) -> int:
    """`error()`, then the exit code to return: ``return fail(args, "...")``."""
    error(args, message)
    return rc


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so a command ends
    the same way on both (systemd, docker stop and Kubernetes send SIGTERM): consume closes its
    consumer (final commit, LeaveGroup), produce delivers what it read; main() returns 130.
    Without it Python dies at once: a group member stays ~45 s, buffered records vanish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def split_bootstrap(bootstrap: str) -> list[str]:
    return [part.strip() for part in bootstrap.split(",") if part.strip()]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRound:
    """One round: the first address that answered, or why each did not."""

    answered: str = ""
    failures: tuple[tuple[str, str], ...] = ()  # (address, reason), in bootstrap order

    def reason(self) -> str:
        """The failures in one short phrase: one reason when all agree."""
        reasons = [reason for _, reason in self.failures]
        if len(set(reasons)) == 1:
            return reasons[0]
        return "; ".join(f"{address} {reason}" for address, reason in self.failures)


def probe(addresses: Sequence[str], security: ClientSecurity | None,
          deadline_s: float) -> ProbeRound:
    """Ask every address for its health at once; return as soon as one answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tidelog.client.security import make_channel

    if security is not None and security.username:  # no login for a probe (Health needs none)
        security = replace(security, username="", password="")
        if security == ClientSecurity():
            security = None

    def reason_of(call: grpc.Future) -> str:
        """"" when the node answered, else why not."""
        try:
            call.result()
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return ""  # it answered (NOT_FOUND, UNAUTHENTICATED, ...): someone is there
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return _short_reason(code, details or "", deadline_s)
        except grpc.FutureCancelledError:
            return "cancelled"
        return ""

    # Non-blocking calls, one per address; the first answer ends the round at once (a paused
    # node first in the list must not cost its whole deadline), then every channel is closed,
    # which cancels the calls still waiting.
    done = threading.Condition()
    finished: list[tuple[str, str]] = []
    channels = []
    try:
        for address in addresses:
            try:
                channel = make_channel(address, (), security)
            except ValueError as exc:  # a malformed target
                finished.append((address, f"bad address ({exc})"))
                continue
            channels.append(channel)
            call = health_pb2_grpc.HealthStub(channel).Check.future(
                health_pb2.HealthCheckRequest(), timeout=deadline_s)

            def on_done(call: grpc.Future, address: str = address) -> None:
                reason = reason_of(call)
                with done:
                    finished.append((address, reason))
                    done.notify_all()

            call.add_done_callback(on_done)
        with done:
            done.wait_for(lambda: len(finished) == len(addresses)
                          or any(not reason for _, reason in finished),
                          timeout=deadline_s + 1.0)
            answered = [address for address, reason in finished if not reason]
            reasons = dict(finished)
    finally:
        for channel in channels:
            channel.close()
    if answered:
        return ProbeRound(answered=answered[0])
    failures = [(address, reasons.get(address, f"no answer within {deadline_s:g} s"))
                for address in addresses]
    return ProbeRound(failures=tuple(failures))


def reach_cluster(args: argparse.Namespace, timeout_s: float) -> bool:
    """True once any bootstrap node answers; False (after printing why) when none did within
    `timeout_s`. Prints "... retrying (k/N)" on stderr before each further round."""
    addresses = split_bootstrap(args.bootstrap)
    if not addresses:
        error(args, "no bootstrap address (give --bootstrap HOST:PORT[,HOST:PORT...])")
        return False
    where = ",".join(addresses)
    as_json = getattr(args, "output", "") == "json"  # a script reads stderr: one JSON object
    interval_s = timeout_s / PROBE_ROUNDS
    start = time.monotonic()
    last = ProbeRound()
    for attempt in range(1, PROBE_ROUNDS + 1):
        round_start = time.monotonic()
        last = probe(addresses, getattr(args, "security", None),
                      max(0.05, min(PROBE_DEADLINE_S_MAX, interval_s)))
        if last.answered:
            return True
        if attempt < PROBE_ROUNDS and not as_json:
            error(args, f"no node answers at {where}: {last.reason()}; "
                        f"retrying ({attempt + 1}/{PROBE_ROUNDS})")
        if attempt < PROBE_ROUNDS:
            time.sleep(max(0.0, interval_s - (time.monotonic() - round_start)))
    source = getattr(args, "bootstrap_source", "")
    told = f" (bootstrap from {source})" if source else ""
    message = (f"no node answers at {where}{told}: {last.reason()}; gave up after "
               f"{PROBE_ROUNDS} tries in {time.monotonic() - start:.1f} s. Is the cluster up "
               "(`make run`)? Set the addresses with --bootstrap, TIDELOG_BOOTSTRAP or a "
               "profile (`tidelog profile create`)")
    if as_json:
        print(json.dumps({"error": {"type": "NoBrokersAvailable", "code": 0,
                                    "message": message}}), file=sys.stderr, flush=True)
    else:
        error(args, message)
    return False


def _short_reason(code: object, details: str, deadline_s: float) -> str:
    lowered = details.lower()
    for needle, reason in (("connection refused", "connection refused"),
                           ("dns resolution failed", "unknown host"),
                           ("errors resolving", "unknown host"),
                           ("lookup failed", "unknown host"),
                           ("name or service not known", "unknown host"),
                           ("handshake", "TLS handshake failed"),
                           ("ssl", "TLS handshake failed"),
                           ("timed out", f"no answer within {deadline_s:g} s"),
                           ("deadline", f"no answer within {deadline_s:g} s")):
        if needle in lowered:
            return reason
    if str(code).endswith("DEADLINE_EXCEEDED"):
        return f"no answer within {deadline_s:g} s"
    return details.splitlines()[0][:120] if details else "unavailable"
