"""A small supervisor for node processes: start, signal, wait, clean up — by PID, ours only.

Every signal goes to the PID of a child this supervisor started, and only while that child has
not been reaped (`Popen.poll()` is None): an unreaped child's PID cannot be reused by another
process, so a signal can never reach a process we did not start. Nothing here kills by name.

A child started in a namespace runs as `ip netns exec NS argv...`; `ip` execs the command in
place, so the PID we hold is the node's own.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NodeProcess", "ProcessSpec", "ProcessState", "Supervisor"]

PROCESSES_MAX = 64
STOP_GRACE_S = 5.0


class ProcessState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"  # SIGSTOP'd by us
    EXITED = "exited"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    log_path: Path
    # Added to (and overriding) the supervisor's own environment.
    env: Mapping[str, str] = field(default_factory=dict)
    netns: str | None = None
    cwd: Path | None = None


class NodeProcess:
    """One started child. Signals are no-ops once it has exited (and been reaped)."""

    def __init__(self, spec: ProcessSpec, popen: subprocess.Popen[bytes]) -> None:
        self.spec = spec
        self.pid = popen.pid
        self._popen = popen
        self._paused = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> ProcessState:
        if self._popen.poll() is not None:
            return ProcessState.EXITED
        return ProcessState.PAUSED if self._paused else ProcessState.RUNNING

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> bool:
        """SIGKILL (a crash: no shutdown code runs). False if it had already exited."""
        return self._signal(signal.SIGKILL)

    def terminate(self) -> bool:
        """SIGTERM (a clean shutdown request); resumes a paused child first so it can act."""
        if self._paused:
            self.resume()
        return self._signal(signal.SIGTERM)

    def pause(self) -> bool:
        """SIGSTOP: the process freezes (a GC pause / VM stall), its sockets stay open."""
        sent = self._signal(signal.SIGSTOP)
        self._paused = self._paused or sent
        return sent

    def resume(self) -> bool:
        sent = self._signal(signal.SIGCONT)
        self._paused = False
        return sent

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after `timeout_s`."""
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def _signal(self, sig: signal.Signals) -> bool:
        if self._popen.poll() is not None:  # reaped: the PID may belong to someone else now
            return False
        os.kill(self.pid, sig)
        return True


class Supervisor:
    """Starts node processes and, on `stop_all` / exit, stops exactly those it started."""

    def __init__(self, *, processes_max: int = PROCESSES_MAX) -> None:
        self._processes: dict[str, NodeProcess] = {}
        self._processes_max = processes_max

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, spec: ProcessSpec) -> NodeProcess:
        """Start `spec`, stdout and stderr appended to its log file.

        A name may be reused once its previous process exited (a restart after a kill).
        """
        previous = self._processes.get(spec.name)
        if previous is not None and previous.state is not ProcessState.EXITED:
            raise ValueError(f"process {spec.name!r} is still running (pid {previous.pid})")
        if previous is None and len(self._processes) >= self._processes_max:
            raise ValueError(f"over {self._processes_max} supervised processes")
        argv: Sequence[str] = spec.argv
        if spec.netns is not None:
            argv = ["ip", "netns", "exec", spec.netns, *argv]
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with spec.log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env}, cwd=spec.cwd,
                # Own session: a Ctrl-C aimed at the harness does not reach the nodes directly;
                # the harness decides how they stop.
                start_new_session=True,
            )
        process = NodeProcess(spec, popen)
        self._processes[spec.name] = process
        return process

    def get(self, name: str) -> NodeProcess:
        return self._processes[name]

    @property
    def processes(self) -> tuple[NodeProcess, ...]:
        return tuple(self._processes.values())

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every live child, wait up to `grace_s` in total, SIGKILL what is left, reap."""
        live = [p for p in self._processes.values() if p.state is not ProcessState.EXITED]
        for p in live:
            p.terminate()
        deadline = time.monotonic() + grace_s
        for p in live:
            if p.wait(max(0.0, deadline - time.monotonic())) is None:
                p.kill()
                p.wait(STOP_GRACE_S)
