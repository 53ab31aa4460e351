"""The node supervisor, with harmless `python -c` children."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from tidelog.chaos.process import ProcessSpec, ProcessState, Supervisor

# Prints a counter every 20 ms; exits 0 on SIGTERM after saying so.
_TICKER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("bye", flush=True), sys.exit(0)))
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"""


def _spec(tmp_path: Path, name: str = "n1", code: str = _TICKER, **kw) -> ProcessSpec:
    return ProcessSpec(name=name, argv=(sys.executable, "-c", code),
                       log_path=tmp_path / f"{name}.log", **kw)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_sigterm_stops_the_child_cleanly_and_logs_go_to_the_file(tmp_path: Path) -> None:
    with Supervisor() as sup:
        p = sup.start(_spec(tmp_path))
        time.sleep(0.2)
        assert p.state is ProcessState.RUNNING
        assert p.terminate()
        assert p.wait(5) == 0
    log = (tmp_path / "n1.log").read_text()
    assert log.startswith("0\n") and log.endswith("bye\n")


def test_sigkill_is_a_crash(tmp_path: Path) -> None:
    with Supervisor() as sup:
        p = sup.start(_spec(tmp_path))
        assert p.kill()
        assert p.wait(5) == -signal.SIGKILL
        assert p.state is ProcessState.EXITED
        assert not p.kill()  # exited and reaped: never signal a PID that may be reused


def test_pause_freezes_output_and_resume_continues(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    with Supervisor() as sup:
        p = sup.start(_spec(tmp_path))
        time.sleep(0.2)
        p.pause()
        assert p.state is ProcessState.PAUSED
        time.sleep(0.05)  # let any line in flight land
        frozen = _lines(log)
        time.sleep(0.2)
        assert _lines(log) == frozen
        p.resume()
        time.sleep(0.2)
        assert _lines(log) > frozen


def test_env_is_passed_and_a_name_can_restart_after_exit(tmp_path: Path) -> None:
    code = "import os; print(os.environ['TIDELOG_NODE_ID'])"
    with Supervisor() as sup:
        first = sup.start(_spec(tmp_path, code=code, env={"TIDELOG_NODE_ID": "7"}))
        assert first.wait(5) == 0
        second = sup.start(_spec(tmp_path, code=code, env={"TIDELOG_NODE_ID": "8"}))
        assert second.wait(5) == 0
    assert (tmp_path / "n1.log").read_text() == "7\n8\n"


def test_starting_a_running_name_twice_is_refused(tmp_path: Path) -> None:
    with Supervisor() as sup:
        sup.start(_spec(tmp_path))
        with pytest.raises(ValueError, match="still running"):
            sup.start(_spec(tmp_path))


def test_stop_all_ends_paused_and_sigterm_ignoring_children(tmp_path: Path) -> None:
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ignoring', flush=True); time.sleep(60)")
    with Supervisor() as sup:
        a = sup.start(_spec(tmp_path, "a"))
        b = sup.start(_spec(tmp_path, "b", code=stubborn))
        # Wait until the child really ignores SIGTERM: on a loaded machine Python's start-up
        # can take longer than any fixed sleep.
        log_b = tmp_path / "b.log"
        deadline = time.monotonic() + 20
        while not (log_b.exists() and "ignoring" in log_b.read_text()):
            assert time.monotonic() < deadline, "the stubborn child never started"
            time.sleep(0.05)
        a.pause()
        started = time.monotonic()
        sup.stop_all(grace_s=0.5)
        assert time.monotonic() - started < 3
    assert a.returncode == 0  # resumed, then handled SIGTERM
    assert b.returncode == -signal.SIGKILL
