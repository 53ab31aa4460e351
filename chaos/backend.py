"""Where the nodes under test run, and the real faults a backend can inject into them.

Theory of operation. A backend starts N unmodified node processes (the same program users run,
`python -m tidelog.node.main` or the release image) and offers fault *primitives* on them: kill,
start, terminate, pause/resume, partitions (a `Grudge`), lossy/slow links, and filling a node's
disk. Faults are applied from outside the node — signals, iptables, tc, a full filesystem — never
through a switch in the node's code. Scenarios (`nemesis.py`) combine the primitives; a backend
says which it supports through `capabilities`, so a scenario that needs one it lacks is refused
with the reason rather than silently weakened.

`LocalBackend`, as root with `ip`/`iptables` (see `netns.netns_unavailable_reason`): each node in
its own network namespace (`netns.Topology`), listening on its namespace address (10.231.S.x:9091);
the workload in the root namespace reaches every node across the bridge, and partitions are
iptables DROP rules inside the namespaces, so the client keeps a path to both sides (as clients in
another rack would). With `disk_bytes_max`, each node's data directory is a tmpfs of that size, so
"disk full" is a real ENOSPC. With `power_loss`, each node's data directory is a LazyFS mount
(`tidelog.chaos.lazyfs`, its own process per node) over a backing directory, so a power cut
(SIGKILL + drop every write and name change not fsynced) loses what a real power loss would.
Without root: nodes on 127.0.0.1 and only process faults.

`DockerBackend` lives in `docker_backend.py`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tidelog.chaos.grudge import Grudge
from tidelog.chaos.lazyfs import LazyMount, lazyfs_unavailable_reason
from tidelog.chaos.process import ProcessSpec, ProcessState, Supervisor
from tidelog.chaos.secure import ChaosSecurity

__all__ = [
    "Backend",
    "BackendError",
    "Capability",
    "LocalBackend",
    "node_names",
]

NODE_PORT = 9091  # every node listens on this port inside its own namespace
STOP_GRACE_S = 10.0
FILLER_NAME = "chaos-disk-filler"
_FILL_CHUNK_BYTES = 1 << 20
_FILL_BYTES_MAX = 1 << 34  # bound: never write more than this into a filler, whatever df says


class Capability(enum.Enum):
    PROCESS = "process"  # kill -9, SIGTERM, pause/resume, restart
    PARTITION = "partition"  # iptables partitions (any grudge)
    LOSS = "loss"  # lossy links
    DELAY = "delay"  # delayed links (tc netem)
    DISK = "disk"  # a node's data directory can fill up
    POWER = "power"  # power cut: kill -9 and lose every write not fsynced (LazyFS data dirs)
    MEMBERSHIP = "membership"  # spare node slots: start one with --join; retire a removed node


class BackendError(RuntimeError):
    """The backend could not do what was asked (message says what and why)."""


class Backend(Protocol):
    """What the nemesis and the workload need from a place that runs nodes."""

    name: str
    # The CURRENT members, "n1".."nN" at start (node id = the number); a backend with
    # Capability.MEMBERSHIP adds admitted spares and drops retired (removed) nodes.
    nodes: tuple[str, ...]
    capabilities: frozenset[Capability]
    description: str  # one line for the report: how nodes run and how faults are made

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def client_address(self, node: str) -> str: ...
    def is_running(self, node: str) -> bool: ...
    def kill(self, node: str) -> None: ...
    def terminate(self, node: str) -> None: ...
    def start_node(self, node: str) -> None: ...
    def pause(self, node: str) -> None: ...
    def resume(self, node: str) -> None: ...
    def partition(self, grudge: Grudge) -> None: ...
    def heal_partitions(self) -> None: ...
    def degrade(self, node: str, *, loss_percent: float, delay_ms: int) -> None: ...
    def heal_links(self) -> None: ...
    def fill_disk(self, node: str) -> None: ...
    def free_disk(self, node: str) -> None: ...
    def power_cut(self, nodes: Sequence[str], *,
                  torn_seed: int | None = None) -> dict[str, dict[str, object]]: ...
    def log_paths(self) -> dict[str, Path]: ...
    def data_dir(self, node: str) -> Path:
        """The node's data directory, readable on this host once the node is stopped (the
        harness digests replicas offline after the run)."""
        ...


def node_names(count: int) -> tuple[str, ...]:
    return tuple(f"n{i + 1}" for i in range(count))


def node_id(node: str) -> int:
    return int(node[1:])


class LocalBackend:
    """Nodes as processes on this machine: in namespaces as root, else on 127.0.0.1."""

    name = "local"

    def __init__(
        self,
        node_count: int,
        work_dir: Path,
        *,
        spares: int = 0,
        use_netns: bool | None = None,
        disk_bytes_max: int | None = None,
        power_loss: bool = False,
        node_module: str = "tidelog.node.main",
        node_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        security: ChaosSecurity | None = None,
    ) -> None:
        """`security`: TLS, SCRAM and ACLs on every node (`chaos run --secure`); the
        certificates are made at `start`, once the nodes' addresses are known. `spares`: node
        slots beyond the first `node_count` (addresses, namespaces and data dirs made, and a
        process started with `--join` that waits to be admitted): `start_spare` takes one,
        `admit` makes it a member once the cluster admitted it, `retire` drops a
        decommissioned node from the members."""
        from tidelog.chaos.netns import netns_unavailable_reason

        if node_count < 1:
            raise ValueError("need at least one node")
        if spares < 0:
            raise ValueError("spares must be >= 0")
        self.slots = node_names(node_count + spares)
        self.nodes = self.slots[:node_count]
        self.initial = self.nodes
        self._spares = list(self.slots[node_count:])
        self._join_seeds: dict[str, str] = {}  # started with --join: the seeds it was given
        self._retired: set[str] = set()  # removed from the cluster: never started again
        self.work_dir = Path(work_dir)
        self._node_module = node_module
        self._node_args = tuple(node_args)
        self._env = {"PYTHONUNBUFFERED": "1", **(env or {})}
        self.security = security
        self.netns_reason = netns_unavailable_reason() if use_netns is not False else "disabled"
        self.use_netns = self.netns_reason is None
        if use_netns and not self.use_netns:
            raise BackendError(f"network namespaces unavailable: {self.netns_reason}")
        self.disk_bytes_max = disk_bytes_max if os.geteuid() == 0 else None
        self._topology = None
        self._supervisor = Supervisor()
        self._addresses: dict[str, str] = {}
        self._mounts: list[Path] = []
        self.power_reason = lazyfs_unavailable_reason() if power_loss else "not asked for"
        self._lazy: dict[str, LazyMount] = {}
        self._lazy_supervisor = Supervisor()  # stopped after the nodes, so mounts outlive them
        self._control_dir: Path | None = None
        caps = {Capability.PROCESS, Capability.MEMBERSHIP}
        if self.use_netns:
            caps |= {Capability.PARTITION, Capability.LOSS}
        if self.disk_bytes_max:
            caps.add(Capability.DISK)
        if self.power_reason is None:
            caps.add(Capability.POWER)
        self.capabilities = frozenset(caps)
        # Until start() describes the running cluster: why asked-for faults are missing.
        self.description = (f"power cuts unavailable here: {self.power_reason}"
                            if power_loss and self.power_reason else "")

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Build the network (if any), mount the data dirs (if asked) and start every node."""
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            if self.use_netns:
                from tidelog.chaos.netns import Topology

                self._topology = Topology(list(self.slots))
                self._topology.create()
                for n in self.slots:
                    self._addresses[n] = f"{self._topology.address(n)}:{NODE_PORT}"
                if self._topology.netem_available():
                    self.capabilities = self.capabilities | {Capability.DELAY}
                self.description = (
                    f"local: {len(self.nodes)} node processes, one network namespace each "
                    f"(topology {self._topology.id}, bridge {self._topology.bridge}); partitions "
                    "and loss by iptables in the namespaces; delay "
                    + ("by tc netem" if Capability.DELAY in self.capabilities
                       else "unavailable (kernel without sch_netem)"))
            else:
                from tidelog.node.local_cluster import free_ports

                for n, port in zip(self.slots, free_ports(len(self.slots)), strict=True):
                    self._addresses[n] = f"127.0.0.1:{port}"
                self.description = (
                    f"local: {len(self.nodes)} node processes on 127.0.0.1; NETWORK FAULTS "
                    f"UNAVAILABLE ({self.netns_reason}): process faults only")
            if self._spares:
                self.description += f"; {len(self._spares)} spare node slot(s) for add-node"
            for n in self.slots:
                data = self._data_dir(n)
                data.mkdir(parents=True, exist_ok=True)
                disk = self._disk_dir(n)
                disk.mkdir(parents=True, exist_ok=True)
                if self.disk_bytes_max:
                    _run_checked(["mount", "-t", "tmpfs", "-o",
                                  f"size={self.disk_bytes_max},mode=0755", "tmpfs", str(disk)])
                    self._mounts.append(disk)
                if Capability.POWER in self.capabilities:
                    self._mount_lazyfs(n)
            if self.disk_bytes_max:
                self.description += f"; data dirs on {self.disk_bytes_max >> 20} MiB tmpfs each"
            if Capability.POWER in self.capabilities:
                self.description += ("; data dirs on LazyFS (FUSE): a power cut loses every "
                                     "write and name change not fsynced")
            if self.security is not None:
                self.security.make_certs([self._addresses[n].rsplit(":", 1)[0]
                                          for n in self.slots])
                self.description += "; secure: TLS + mTLS, SCRAM, ACLs"
            for n in self.nodes:
                self.start_node(n)
            # Spares start now too, with --join, and wait to be admitted (the order of start
            # and add-node does not matter, docs/operations.md): a Python start under load
            # takes seconds, which add-node would otherwise wait for.
            for n in self._spares:
                self._join_seeds[n] = ",".join(self._addresses[m] for m in self.initial)
                self.start_node(n)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node we started (by PID), unmount, remove the network. Idempotent."""
        self._supervisor.stop_all(STOP_GRACE_S)
        for lazy in self._lazy.values():  # each unmounts in its own finally-safe stop()
            with contextlib.suppress(Exception):
                lazy.stop()
        self._lazy.clear()
        self._lazy_supervisor.stop_all(STOP_GRACE_S)
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None
        for mount in reversed(self._mounts):
            for _ in range(20):  # bounded: a just-killed process may still hold a file briefly
                if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.25)
        self._mounts.clear()
        if self._topology is not None:
            self._topology.destroy()
            self._topology = None

    def __enter__(self) -> LocalBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- nodes ----------------------------------------------------------------------------------

    def client_address(self, node: str) -> str:
        return self._addresses[node]

    def log_paths(self) -> dict[str, Path]:
        return {n: self.work_dir / f"{n}.log" for n in self.slots}

    def data_dir(self, node: str) -> Path:
        return self._data_dir(node)

    def is_running(self, node: str) -> bool:
        try:
            return self._supervisor.get(node).state is not ProcessState.EXITED
        except KeyError:
            return False

    def start_node(self, node: str) -> None:
        """Start (or restart) a node: an initial one with `--peers` (the initial set), one
        started by `start_spare` with `--join` (a restart reads its join.json). A retired node
        is never started again (it would stop itself anyway: it was removed)."""
        if self.is_running(node) or node in self._retired:
            return
        seeds = self._join_seeds.get(node)
        if seeds is not None:
            membership: tuple[str, ...] = ("--join", seeds)
        else:
            membership = ("--peers", ",".join(f"{node_id(n)}={self._addresses[n]}"
                                              for n in self.initial))
        argv = (sys.executable, "-m", self._node_module, "--id", str(node_id(node)),
                "--listen", self._addresses[node], "--advertise", self._addresses[node],
                *membership, "--data-dir", str(self._data_dir(node)), *self._node_args,
                *(self.security.node_args(node_id(node)) if self.security is not None else ()))
        netns = self._topology.nodes[node].netns if self._topology is not None else None
        self._supervisor.start(ProcessSpec(name=node, argv=argv, log_path=self.log_paths()[node],
                                           env=self._env, netns=netns))

    # --- membership (spare slots) ---------------------------------------------------------------

    def spare(self) -> str | None:
        """The next spare slot (never started), or None when none is left."""
        return self._spares[0] if self._spares else None

    def start_spare(self, node: str) -> None:
        """Take spare `node` for an add-node: it runs with `--join` since `start` (started
        again here if it died), asking the seeds until the cluster admits it
        (Admin.add_node). Not a member until `admit`."""
        if node not in self._spares:
            raise BackendError(f"{node} is not a spare slot")
        self._spares.remove(node)
        self.start_node(node)

    def admit(self, node: str) -> None:
        """The cluster admitted `node`: a member from now on (faults, heal-all, the replica
        comparison include it)."""
        if node not in self.nodes:
            self.nodes = (*self.nodes, node)

    def retire(self, node: str, *, exit_timeout_s: float = STOP_GRACE_S) -> int | None:
        """`node` was removed from the cluster (or never admitted): no longer a member, never
        started again, its data not compared. Returns its exit code (a removed node stops
        itself with 0), or None when it had to be stopped (SIGTERM, then SIGKILL)."""
        self._retired.add(node)
        self.nodes = tuple(n for n in self.nodes if n != node)
        try:
            p = self._supervisor.get(node)
        except KeyError:
            return None
        code = p.wait(exit_timeout_s)
        if code is None:
            self.terminate(node)
        return code

    def kill(self, node: str) -> None:
        p = self._supervisor.get(node)
        p.kill()
        p.wait(STOP_GRACE_S)

    def terminate(self, node: str) -> None:
        p = self._supervisor.get(node)
        p.terminate()
        if p.wait(STOP_GRACE_S * 2) is None:
            p.kill()
            p.wait(STOP_GRACE_S)

    def pause(self, node: str) -> None:
        self._supervisor.get(node).pause()

    def resume(self, node: str) -> None:
        with contextlib.suppress(KeyError):
            self._supervisor.get(node).resume()

    # --- network --------------------------------------------------------------------------------

    def partition(self, grudge: Grudge) -> None:
        self._need(Capability.PARTITION)
        assert self._topology is not None
        self._topology.partition(grudge)

    def heal_partitions(self) -> None:
        if self._topology is not None:
            self._topology.heal_partitions()

    def degrade(self, node: str, *, loss_percent: float, delay_ms: int) -> None:
        self._need(Capability.LOSS)
        assert self._topology is not None
        if Capability.DELAY not in self.capabilities:
            delay_ms = 0
        self._topology.degrade(node, delay_ms=delay_ms, jitter_ms=delay_ms // 4,
                               loss_percent=loss_percent)

    def heal_links(self) -> None:
        if self._topology is not None:
            self._topology.heal_links()

    # --- disk -----------------------------------------------------------------------------------

    def fill_disk(self, node: str) -> None:
        self._need(Capability.DISK)
        fill_filesystem(self._data_dir(node) / FILLER_NAME)

    def free_disk(self, node: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._data_dir(node) / FILLER_NAME).unlink()

    # --- power --------------------------------------------------------------------------------

    def power_cut(self, nodes: Sequence[str], *,
                  torn_seed: int | None = None) -> dict[str, dict[str, object]]:
        """Cut power to `nodes` at once: SIGKILL every one, then drop each one's unsynced writes
        and name changes (torn: a seeded prefix of each file's dirty pages survives). Returns
        what each node's file system dropped. Restart them with `start_node`."""
        self._need(Capability.POWER)
        victims = [self._supervisor.get(n) for n in nodes if self.is_running(n)]
        for p in victims:  # all signals first: the nodes go down together
            p.kill()
        for p in victims:
            p.wait(STOP_GRACE_S)
        # In parallel: each cut outlasts the kernel's 1 s name/attribute cache (lazyfs/fs.py).
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
            cuts = {n: pool.submit(self._lazy[n].cut,
                                   torn_seed=None if torn_seed is None else torn_seed + i)
                    for i, n in enumerate(nodes)}
            return {n: f.result() for n, f in cuts.items()}

    # --- helpers --------------------------------------------------------------------------------

    def _data_dir(self, node: str) -> Path:
        return self.work_dir / f"{node}-data"

    def _disk_dir(self, node: str) -> Path:
        """Where the node's bytes really are: its data dir, or the backing dir under LazyFS."""
        if Capability.POWER in self.capabilities:
            return self.work_dir / f"{node}-disk"
        return self._data_dir(node)

    def _mount_lazyfs(self, node: str) -> None:
        if self._control_dir is None:  # short: a unix socket path has at most 107 bytes
            self._control_dir = Path(tempfile.mkdtemp(prefix="tl-lazyfs-"))
        lazy = LazyMount(self._disk_dir(node), self._data_dir(node),
                         control=self._control_dir / f"{node}.sock",
                         log_path=self.work_dir / f"{node}-lazyfs.log",
                         supervisor=self._lazy_supervisor, name=f"{node}-lazyfs")
        self._lazy[node] = lazy
        lazy.start()

    def _need(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise BackendError(f"the {self.name} backend here cannot inject {capability.value} "
                               f"faults ({self.description})")


def fill_filesystem(path: Path) -> int:
    """Write `path` until its filesystem says ENOSPC; returns the bytes written (bounded)."""
    written = 0
    chunk = b"\0" * _FILL_CHUNK_BYTES
    with path.open("wb", buffering=0) as f:
        size = len(chunk)
        while written < _FILL_BYTES_MAX and size >= 512:
            try:
                written += f.write(chunk[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    return written


def _run_checked(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        raise BackendError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def tool_missing(*tools: str) -> str | None:
    for tool in tools:
        if shutil.which(tool) is None:
            return tool
    return None
