"""The `docker` backend: the compose deployment (deploy/docker-compose.yml), faults from outside.

Theory of operation. The cluster is the deployment users run: `deploy/docker-compose.yml` (plus
`docker-compose.5.yml` for five nodes) with the release image (`$TIDELOG_IMAGE`, default
`tidelog:local`, built by `deploy/offline-image.sh`), under a compose project of our own
(`tlchaos<pid><n>`) with client ports picked free on 127.0.0.1, so it never touches another
project's containers. Faults:

- process: `docker kill -s KILL`, `docker stop` (SIGTERM, then the grace period), `docker start`,
  `docker pause` / `unpause` (cgroup freezer: the same effect as SIGSTOP on every process);
- partitions and loss: iptables rules inside a container's network namespace, entered from the
  host with `nsenter -t PID -n` (the image's processes get no extra capability). Rules live in a
  chain `TLCHAOS` hooked from INPUT; a cut `src -> dst` drops, in dst, packets from src's address
  on the compose `cluster` network (the node-to-node network); the `clients` network that carries
  the published ports is untouched, so the workload on the host reaches both sides. Healing
  flushes the chain. A restarted container has a fresh namespace (no rules), which is also healed.

Cleanup: `docker-compose -p PROJECT down -v` removes our containers, networks and volumes; the
nodes' logs are saved to the work dir first. Only this project's containers are ever targeted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tidelog.chaos.backend import BackendError, Capability, node_id, node_names
from tidelog.chaos.grudge import HOST, Grudge

__all__ = ["DockerBackend", "docker_unavailable_reason"]

COMMAND_TIMEOUT_S = 120.0
CONTAINER_DATA_DIR = "/var/lib/tidelog"  # TIDELOG_DATA_DIR in deploy/docker-compose.yml
STOP_GRACE_S = 30
_CHAIN = "TLCHAOS"
_ids = itertools.count()


def _deploy_dir() -> Path:
    env = os.environ.get("TIDELOG_DEPLOY_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "deploy"


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def docker_unavailable_reason(image: str | None = None) -> str | None:
    """Why the docker backend cannot run here (None when it can)."""
    image = image or os.environ.get("TIDELOG_IMAGE", "tidelog:local")
    if shutil.which("docker") is None:
        return "`docker` is not installed (see /work/shared/ENVIRONMENT.md or .ci/setup-docker.sh)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine answers `docker info`"
    if _compose_command() is None:
        return "neither docker-compose nor `docker compose` is installed"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        return f"image {image} not found: build it with deploy/offline-image.sh"
    if not (_deploy_dir() / "docker-compose.yml").exists():
        return f"no compose file in {_deploy_dir()} (set TIDELOG_DEPLOY_DIR)"
    if os.geteuid() != 0 or shutil.which("nsenter") is None:
        return "network faults need root and nsenter (process faults would still work)"
    return None


class DockerBackend:
    name = "docker"

    def __init__(self, node_count: int, work_dir: Path, *, image: str | None = None) -> None:
        from tidelog.node.local_cluster import free_ports

        if node_count not in (3, 5):
            raise ValueError("the compose deployment has 3 or 5 nodes")
        self.nodes = node_names(node_count)
        self.work_dir = Path(work_dir)
        self.image = image or os.environ.get("TIDELOG_IMAGE", "tidelog:local")
        self.project = f"tlchaos{os.getpid()}{next(_ids)}"
        self._ports = dict(zip(self.nodes, free_ports(node_count), strict=True))
        self._containers: dict[str, str] = {}
        self._compose = _compose_command() or ["docker-compose"]
        files = ["docker-compose.yml"] + (["docker-compose.5.yml"] if node_count == 5 else [])
        self._files = [str(_deploy_dir() / f) for f in files]
        self._started = False
        caps = {Capability.PROCESS}
        if os.geteuid() == 0 and shutil.which("nsenter"):
            caps |= {Capability.PARTITION, Capability.LOSS}
        self.capabilities = frozenset(caps)
        self.description = (
            f"docker: compose project {self.project} ({len(self.nodes)} containers of "
            f"{self.image}); process faults by docker kill/stop/start/pause; partitions and loss "
            "by iptables in the containers' network namespaces (nsenter)")

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        reason = docker_unavailable_reason(self.image)
        if reason and "network faults" not in reason:
            raise BackendError(f"docker backend unavailable: {reason}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        try:
            self._compose_run(["up", "-d"])
            for n in self.nodes:
                out = self._compose_run(["ps", "-q", f"node{node_id(n)}"]).stdout.strip()
                if not out:
                    raise BackendError(f"compose started no container for node{node_id(n)}")
                self._containers[n] = out.splitlines()[0]
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if not self._started:
            return
        for n, cid in self._containers.items():
            with contextlib.suppress(Exception):
                logs = subprocess.run(["docker", "logs", cid], capture_output=True,
                                      timeout=COMMAND_TIMEOUT_S)
                (self.work_dir / f"{n}.log").write_bytes(logs.stdout + logs.stderr)
        for cid in self._containers.values():  # a paused container cannot be stopped
            subprocess.run(["docker", "unpause", cid], capture_output=True)
        self._compose_run(["down", "-v", "--remove-orphans", "-t", "5"], check=False)
        self._containers.clear()
        self._started = False

    def __enter__(self) -> DockerBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- nodes -----------------------------------------------------------------------------------

    def client_address(self, node: str) -> str:
        return f"127.0.0.1:{self._ports[node]}"

    def log_paths(self) -> dict[str, Path]:
        return {n: self.work_dir / f"{n}.log" for n in self.nodes}

    def data_dir(self, node: str) -> Path:
        """A copy of the node's data volume on the host (`docker cp` works on a stopped
        container), taken afresh on each call; stop the node first for a consistent copy."""
        dest = self.work_dir / f"{node}-data"
        shutil.rmtree(dest, ignore_errors=True)
        self._docker(["cp", f"{self._containers[node]}:{CONTAINER_DATA_DIR}", str(dest)])
        return dest

    def is_running(self, node: str) -> bool:
        state = self._inspect(node, "{{json .State}}")
        return bool(state) and json.loads(state).get("Running", False)

    def kill(self, node: str) -> None:
        self._docker(["kill", "-s", "KILL", self._containers[node]])

    def terminate(self, node: str) -> None:
        self._docker(["stop", "-t", str(STOP_GRACE_S), self._containers[node]])

    def start_node(self, node: str) -> None:
        state = json.loads(self._inspect(node, "{{json .State}}") or "{}")
        if state.get("Paused"):
            self._docker(["unpause", self._containers[node]])
        elif not state.get("Running"):
            self._docker(["start", self._containers[node]])

    def pause(self, node: str) -> None:
        self._docker(["pause", self._containers[node]])

    def resume(self, node: str) -> None:
        state = json.loads(self._inspect(node, "{{json .State}}") or "{}")
        if state.get("Paused"):
            self._docker(["unpause", self._containers[node]])

    # --- network ---------------------------------------------------------------------------------

    def partition(self, grudge: Grudge) -> None:
        self._need(Capability.PARTITION)
        for src, dst in sorted(grudge):
            if HOST in (src, dst):
                raise BackendError("the docker backend cuts node-to-node links only")
            self._iptables(dst, ["-A", _CHAIN, "-s", self._cluster_ip(src), "-j", "DROP"])

    def heal_partitions(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(BackendError):
                self._iptables(n, ["-F", _CHAIN], ensure=False)

    def degrade(self, node: str, *, loss_percent: float, delay_ms: int) -> None:
        self._need(Capability.LOSS)
        probability = f"{loss_percent / 100:.6f}"
        for other in self.nodes:
            if other == node:
                continue
            for a, b in ((node, other), (other, node)):
                self._iptables(b, ["-A", _CHAIN, "-s", self._cluster_ip(a), "-m", "statistic",
                                   "--mode", "random", "--probability", probability, "-j",
                                   "DROP"])

    def heal_links(self) -> None:
        self.heal_partitions()

    def fill_disk(self, node: str) -> None:
        raise BackendError("the docker backend has no disk faults (volumes are not size-limited)")

    def free_disk(self, node: str) -> None:
        return None

    def power_cut(self, nodes: object, *,
                  torn_seed: int | None = None) -> dict[str, dict[str, object]]:
        raise BackendError("the docker backend has no power cuts (volumes are not on LazyFS)")

    # --- helpers ---------------------------------------------------------------------------------

    def _need(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise BackendError(f"the docker backend here cannot inject {capability.value} faults")

    def _compose_run(self, args: Sequence[str], *, check: bool = True,
                     ) -> subprocess.CompletedProcess[str]:
        argv = [*self._compose, *itertools.chain.from_iterable(("-f", f) for f in self._files),
                "-p", self.project, *args]
        env = {**os.environ, "TIDELOG_IMAGE": self.image, "TIDELOG_ADVERTISE_HOST": "127.0.0.1",
               **{f"TIDELOG_PORT_{node_id(n)}": str(p) for n, p in self._ports.items()}}
        done = subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=COMMAND_TIMEOUT_S)
        if check and done.returncode != 0:
            raise BackendError(f"`{' '.join(argv)}` failed: {done.stderr.strip()[-800:]}")
        return done

    def _docker(self, args: Sequence[str]) -> str:
        done = subprocess.run(["docker", *args], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise BackendError(f"`docker {' '.join(args)}` failed: {done.stderr.strip()}")
        return done.stdout

    def _inspect(self, node: str, fmt: str) -> str:
        done = subprocess.run(["docker", "inspect", "-f", fmt, self._containers[node]],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        return done.stdout.strip() if done.returncode == 0 else ""

    def _cluster_ip(self, node: str) -> str:
        networks = json.loads(self._inspect(node, "{{json .NetworkSettings.Networks}}") or "{}")
        for name, net in networks.items():
            if name.endswith("_cluster") and net.get("IPAddress"):
                return str(net["IPAddress"])
        raise BackendError(f"{node}: no address on the cluster network ({sorted(networks)})")

    def _iptables(self, node: str, rule: Sequence[str], *, ensure: bool = True) -> None:
        pid = self._inspect(node, "{{.State.Pid}}")
        if not pid or pid == "0":
            raise BackendError(f"{node} is not running; cannot change its network")
        enter = ["nsenter", "-t", pid, "-n", "iptables", "-w"]
        if ensure:
            subprocess.run([*enter, "-N", _CHAIN], capture_output=True)
            if subprocess.run([*enter, "-C", "INPUT", "-j", _CHAIN],
                              capture_output=True).returncode != 0:
                subprocess.run([*enter, "-I", "INPUT", "-j", _CHAIN], capture_output=True)
        done = subprocess.run([*enter, *rule], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise BackendError(f"{node}: `iptables {' '.join(rule)}` failed: "
                               f"{done.stderr.strip()}")
