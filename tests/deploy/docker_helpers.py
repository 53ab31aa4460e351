"""Helpers for the tests that drive a Docker engine: commands, free ports, compose projects."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
IMAGE = os.environ.get("TIDELOG_IMAGE", "tidelog:local")
IMAGE_BUILD_S_MAX = 900  # a cold build (debootstrap, wheel downloads) takes about 90 s here


def run(
    cmd: Sequence[str], *, timeout_s: float = 120, check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; on failure the error shows both streams."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, **env} if env else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ComposeProject:
    """One compose project with a unique name and its own host ports; `down -v` removes it all."""

    command: list[str]
    image: str
    files: list[Path]
    nodes: int
    name: str = field(default_factory=lambda: f"tidelogtest{os.getpid()}{secrets.token_hex(3)}")
    ports: list[int] = field(default_factory=list)
    metrics_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ports:
            self.ports = free_ports(self.nodes)
        if not self.metrics_ports:  # the nodes publish GET /metrics too (TIDELOG_METRICS_PORT_N)
            self.metrics_ports = [p for p in free_ports(self.nodes * 2) if p not in self.ports
                                  ][:self.nodes]

    @property
    def env(self) -> dict[str, str]:
        env = {"TIDELOG_IMAGE": self.image, "TIDELOG_ADVERTISE_HOST": "127.0.0.1"}
        env.update({f"TIDELOG_PORT_{i + 1}": str(port) for i, port in enumerate(self.ports)})
        env.update({f"TIDELOG_METRICS_PORT_{i + 1}": str(port)
                    for i, port in enumerate(self.metrics_ports)})
        return env

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def compose(self, *args: str, timeout_s: float = 180,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        return run([*self.command, *files, "-p", self.name, *args], timeout_s=timeout_s,
                   check=check, env=self.env)

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10",
                     timeout_s=300, check=False)

    def container(self, service: str) -> str:
        """The container id of a service (also of a stopped one)."""
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"expected one container for {service}, got {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(run(["docker", "inspect", self.container(service)]).stdout)[0]

    def network(self, name: str) -> str:
        return f"{self.name}_{name}"

    def volumes(self) -> list[str]:
        out = run(["docker", "volume", "ls", "-q", "--filter",
                   f"label=com.docker.compose.project={self.name}"]).stdout
        return sorted(out.split())

    def wait_healthy(self, services: Sequence[str], timeout_s: float = 120) -> None:
        """Until Docker's HEALTHCHECK reports every service healthy; fails with the last probe."""
        deadline = time.monotonic() + timeout_s
        pending = list(services)
        while pending:
            states = {s: self.inspect(s)["State"] for s in pending}
            pending = [s for s, st in states.items()
                       if st.get("Health", {}).get("Status") != "healthy"]
            if not pending:
                return
            if time.monotonic() > deadline:
                detail = {s: {"status": states[s].get("Status"),
                              "health": states[s].get("Health", {}).get("Status"),
                              "last probe": (states[s].get("Health", {}).get("Log") or [{}])[-1]}
                          for s in pending}
                raise AssertionError(f"not healthy within {timeout_s} s: {detail}")
            time.sleep(1)

    def client(self, *args: str, stdin: str | None = None, entrypoint: str = "tidelog",
               timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `tidelog ARGS` (or another entrypoint) in a fresh container of the same image on the
        project's `clients` network: a client in another container, as users run one."""
        cmd = ["docker", "run", "--rm", "-i", "--network", self.network("clients"),
               "--entrypoint", entrypoint, self.image, *args]
        proc = subprocess.run(cmd, input=stdin or "", capture_output=True, text=True,
                              timeout=timeout_s)
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                f"\n--- stderr\n{proc.stderr[-4000:]}")
        return proc

    def dump_logs(self) -> None:
        proc = self.compose("logs", "--no-color", "--tail", "200", check=False)
        print(f"--- logs of compose project {self.name}\n{proc.stdout}{proc.stderr}")
