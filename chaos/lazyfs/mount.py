"""The harness's side of one LazyFS: start its process, wait for the mount, cut, unmount.

`LazyMount` runs `python -m tidelog.chaos.lazyfs` under a `Supervisor` (signals by PID, ours
only). `stop()` is idempotent and always leaves nothing mounted: SIGTERM (libfuse unmounts
itself), then `fusermount3 -u` while the mount is still there (`-uz` as a last resort), then
SIGKILL of the process if it is still alive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tidelog.chaos.lazyfs.control import ControlError, request
from tidelog.chaos.process import ProcessSpec, ProcessState, Supervisor

__all__ = ["LazyFSError", "LazyMount", "is_mounted", "lazyfs_unavailable_reason"]

MOUNT_TIMEOUT_S = 20.0
THREADS = "multi"  # libfuse loop of every LazyMount ("single": one thread), see bench.py
STOP_GRACE_S = 10.0


class LazyFSError(RuntimeError):
    """A LazyFS could not be mounted or controlled (the message says why, with its log)."""


def lazyfs_unavailable_reason() -> str | None:
    """Why no LazyFS can be mounted here (None: it can)."""
    if os.geteuid() != 0:
        return "FUSE mounts need root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian: apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401 - loads libfuse3
    except (ImportError, OSError, AttributeError) as exc:
        return f"mfusepy/libfuse3 unavailable (pip install tidelog[chaos]; Debian: fuse3): {exc}"
    return None


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as table:
            return any(_unescape(line.split()[1]) == target for line in table if line.strip())
    except OSError:
        return os.path.ismount(path)


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


class LazyMount:
    def __init__(self, backing: Path, mountpoint: Path, *, control: Path, log_path: Path,
                 supervisor: Supervisor | None = None, name: str = "lazyfs",
                 threads: str | None = None) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.control = Path(control)
        self.log_path = Path(log_path)
        self.name = name
        self.threads = threads or THREADS
        self._supervisor = supervisor or Supervisor()
        self._started = False

    def __enter__(self) -> LazyMount:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def mounted(self) -> bool:
        """From the mount table, not stat(): a FUSE mount whose process died answers ENOTCONN,
        and `os.path.ismount` then says False while the mount is still there."""
        return is_mounted(self.mountpoint)

    def start(self, timeout_s: float = MOUNT_TIMEOUT_S) -> None:
        if self.mounted:
            raise LazyFSError(f"{self.mountpoint} is already a mount point")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        argv = (sys.executable, "-m", "tidelog.chaos.lazyfs", str(self.backing),
                str(self.mountpoint), "--control", str(self.control), "--threads", self.threads)
        process = self._supervisor.start(ProcessSpec(
            name=self.name, argv=argv, log_path=self.log_path, env={"PYTHONUNBUFFERED": "1"}))
        self._started = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.state is ProcessState.EXITED:
                self.stop()
                raise LazyFSError(f"lazyfs for {self.mountpoint} exited "
                                  f"({process.returncode}): {self._log_tail()}")
            if self.mounted:
                try:
                    request(self.control, "ping", timeout_s=2)
                    return
                except (OSError, ControlError):
                    pass
            time.sleep(0.05)
        self.stop()
        raise LazyFSError(f"lazyfs did not mount {self.mountpoint} within {timeout_s:.0f} s: "
                          f"{self._log_tail()}")

    def cut(self, *, torn_seed: int | None = None) -> dict[str, Any]:
        """Power cut: drop every unsynced write and name change. The caller has already killed
        every process using the mount."""
        line = "cut" if torn_seed is None else f"cut torn {torn_seed}"
        reply = request(self.control, line)
        reply.pop("ok", None)
        return reply

    def sync(self) -> None:
        request(self.control, "sync")

    def stats(self) -> dict[str, Any]:
        reply = request(self.control, "stats")
        reply.pop("ok", None)
        return reply

    def stop(self) -> None:
        """Unmount and stop the process, whatever state it is in. Idempotent."""
        if not self._started:
            return
        try:
            process = self._supervisor.get(self.name)
        except KeyError:
            process = None
        if process is not None and process.state is not ProcessState.EXITED:
            process.terminate()
            process.wait(STOP_GRACE_S)
        for args in (["-u"], ["-u"], ["-uz"]):
            if not self.mounted:
                break
            subprocess.run(["fusermount3", *args, str(self.mountpoint)], capture_output=True,
                           timeout=15)
            time.sleep(0.2)
        if process is not None and process.state is not ProcessState.EXITED:
            process.kill()
            process.wait(STOP_GRACE_S)
        self._started = False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"
