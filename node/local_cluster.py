"""A cluster of real node processes on this machine: used by `tidelog cluster up`, tests and demos.

Each node is a separate OS process (`python -m tidelog.node.main`) with its own data directory and
log file. Processes are only ever signalled by the PIDs this object started.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tidelog.node.config import METRICS_PORT_OFFSET, PEER_PORT_OFFSET, peer_address
from tidelog.node.security.channels import ChannelTls, TlsClientFiles, blocking_channel

HOST = "127.0.0.1"
# Client ports are drawn below the kernel's ephemeral range (32768+ on Linux) so that neither they
# nor their peer ports (+ PEER_PORT_OFFSET) collide with outgoing connections' ports; the metrics
# port (+ METRICS_PORT_OFFSET) sits between them.
PORT_RANGE_LOW = 12_000
PORT_RANGE_HIGH = 32_768 - PEER_PORT_OFFSET
PORT_ATTEMPTS_MAX = 50


def free_ports(count: int, host: str = HOST, *,
               peer_port_offset: int = PEER_PORT_OFFSET) -> list[int]:
    """Client ports free right now whose peer ports (port + peer_port_offset, the default every
    node derives) and metrics ports (port + METRICS_PORT_OFFSET) are free too; all held open
    together so they are distinct."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    rng = random.Random()
    try:
        for _ in range(count * PORT_ATTEMPTS_MAX):
            if len(ports) == count:
                break
            port = rng.randrange(PORT_RANGE_LOW, PORT_RANGE_HIGH)
            pair = []
            candidates = (port, port + peer_port_offset, port + METRICS_PORT_OFFSET)
            for candidate in candidates:
                sock = socket.socket()
                try:
                    sock.bind((host, candidate))
                except OSError:
                    sock.close()
                    break
                pair.append(sock)
            sockets.extend(pair)
            if len(pair) == len(candidates):
                ports.append(port)
        if len(ports) < count:
            raise RuntimeError(f"found only {len(ports)} of {count} free port pairs on {host}")
        return ports
    finally:
        for sock in sockets:
            sock.close()


def metadata(address: str, topics: list[str] | None = None, timeout_s: float = 3.0,
             security: ChannelTls | None = None):
    """One node's Metadata answer (raises grpc.RpcError when it does not answer)."""
    from tidelog.proto import broker_pb2 as pb
    from tidelog.proto import broker_pb2_grpc

    with blocking_channel(address, security) as channel:
        return broker_pb2_grpc.BrokerStub(channel).Metadata(
            pb.MetadataRequest(topics=topics or []), timeout=timeout_s)


@dataclass
class LocalNode:
    id: int
    address: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def peer_address(self) -> str:
        """Its node-to-node listener (Cluster service), derived as every node derives it."""
        return peer_address(self.address, PEER_PORT_OFFSET)

    @property
    def metrics_address(self) -> str:
        """Its Prometheus endpoint (HOST:PORT, GET /metrics), the default every node derives."""
        return peer_address(self.address, METRICS_PORT_OFFSET)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    """N nodes on 127.0.0.1. Use as a context manager; `stop()` ends every process it started."""

    def __init__(
        self,
        nodes: int,
        data_dir: Path,
        *,
        base_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        tls_dir: Path | None = None,
        tls_client_auth: str = "none",
    ) -> None:
        """`tls_dir`: TLS on every node, with the certificates of `tidelog certs dev` in that
        folder (made there, with a client `admin`, when it has no CA yet); `security` is then
        what this object's own checks dial with (the CA and the admin client certificate)."""
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        ports = (
            [base_port + i for i in range(nodes)] if base_port else free_ports(nodes)
        )
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args
        self.env = env or {}
        self.nodes = [
            LocalNode(
                id=i + 1,
                address=f"{HOST}:{port}",
                data_dir=self.data_dir / f"node-{i + 1}",
                log_path=self.data_dir / f"node-{i + 1}.log",
            )
            for i, port in enumerate(ports)
        ]
        self.initial = len(self.nodes)  # the --peers set; later nodes join (add_node)
        self.join_seeds: dict[int, str] = {}  # node id → its --join, for the nodes added
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.tls_client_auth = tls_client_auth
        self.security: TlsClientFiles | None = None
        if self.tls_dir is not None:
            self.security = self._dev_certs(self.tls_dir)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def peers(self) -> str:
        """The initial node set (--peers); nodes added later are not in it: they joined."""
        return ",".join(f"{n.id}={n.address}" for n in self.nodes[:self.initial])

    def add_node(self, *, host: str = HOST, seeds: list[int] | None = None,
                 start: bool = True) -> LocalNode:
        """One more node (the next id), started with `--join` (the client addresses of the
        `seeds`, default every initial node) and advertised as `host`:port, e.g. a DNS name
        as a pod's. It waits until admitted (`tidelog cluster add-node`, Admin.add_node)."""
        (port,) = free_ports(1)
        node_id = len(self.nodes) + 1
        node = LocalNode(id=node_id, address=f"{host}:{port}",
                         data_dir=self.data_dir / f"node-{node_id}",
                         log_path=self.data_dir / f"node-{node_id}.log")
        self.nodes.append(node)
        self.join_seeds[node_id] = ",".join(
            self.node(i).address for i in (seeds or range(1, self.initial + 1)))
        if self.tls_dir is not None:
            from tidelog.node.security.certs import make_dev_certs

            make_dev_certs(self.tls_dir, [node_id], clients=[])
        if start:
            self.start(node_id)
        return node

    def node(self, node_id: int) -> LocalNode:
        return self.nodes[node_id - 1]

    def command(self, node: LocalNode) -> list[str]:
        return [
            sys.executable, "-m", "tidelog.node.main",
            "--id", str(node.id),
            "--listen", node.address,
            "--advertise", node.address,
            *(("--join", self.join_seeds[node.id]) if node.id in self.join_seeds
              else ("--peers", self.peers)),
            "--data-dir", str(node.data_dir),
            *self.tls_args(node),
            *self.extra_args,
        ]

    def tls_args(self, node: LocalNode) -> list[str]:
        if self.tls_dir is None:
            return []
        return ["--tls-cert", str(self.tls_dir / f"node-{node.id}.pem"),
                "--tls-key", str(self.tls_dir / f"node-{node.id}-key.pem"),
                "--tls-ca", str(self.tls_dir / "ca.pem"),
                "--tls-client-auth", self.tls_client_auth]

    def _dev_certs(self, directory: Path) -> TlsClientFiles:
        from tidelog.node.security.certs import make_dev_certs

        wanted = [directory / "ca.pem", directory / "client-admin.pem",
                  *(directory / f"node-{n.id}.pem" for n in self.nodes)]
        if not all(path.is_file() for path in wanted):  # what is there (the CA) is kept
            make_dev_certs(directory, [n.id for n in self.nodes], clients=["admin"])
        return TlsClientFiles(tls_ca=directory / "ca.pem",
                              tls_cert=directory / "client-admin.pem",
                              tls_key=directory / "client-admin-key.pem")

    def start(self, node_id: int | None = None) -> None:
        """Start one node, or every node that is not running."""
        targets = [self.node(node_id)] if node_id else self.nodes
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for node in targets:
            if node.running:
                continue
            node.data_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child
            env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
            node.process = subprocess.Popen(
                self.command(node), stdout=log_file, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
            log_file.close()

    def kill(self, node_id: int) -> None:
        """SIGKILL: the node gets no chance to flush or hand over leadership."""
        self._signal(node_id, signal.SIGKILL)
        self._reap(self.node(node_id), 10.0)

    def terminate(self, node_id: int, timeout_s: float = 15.0) -> None:
        """SIGTERM: graceful shutdown (leadership handed over first)."""
        self._signal(node_id, signal.SIGTERM)
        node = self.node(node_id)
        if not self._reap(node, timeout_s):
            self.kill(node_id)

    def pause(self, node_id: int) -> None:
        self._signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self._signal(node_id, signal.SIGCONT)

    def stop(self, timeout_s: float = 15.0) -> None:
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
                    node.process.terminate()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if not self._reap(node, max(0.1, deadline - time.monotonic())):
                self._signal(node.id, signal.SIGKILL)
                self._reap(node, 5.0)

    def wait_healthy(self, timeout_s: float = 30.0, node_ids: list[int] | None = None) -> None:
        """Block until every (given) running node answers the gRPC health check with SERVING."""
        from tidelog.node.health import check_health

        deadline = time.monotonic() + timeout_s
        targets = [self.node(i) for i in node_ids] if node_ids else self.nodes
        for node in targets:
            while True:
                if not node.running:
                    raise RuntimeError(f"node {node.id} exited; see {node.log_path}")
                if check_health(node.address, timeout_s=1.0, security=self.security):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {node.id} not healthy; see {node.log_path}")
                time.sleep(0.1)

    def leader_of(self, topic: str, partition: int, timeout_s: float = 15.0) -> int:
        """The partition's leader as the running nodes see it (waits for one to be known)."""
        import grpc

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    answer = metadata(node.address, [topic], security=self.security)
                except grpc.RpcError:
                    continue
                leader = answer.topics[0].partitions[partition].leader_id if \
                    answer.topics and answer.topics[0].partitions else -1
                if leader > 0 and self.node(leader).running:
                    # Confirm with the leader itself: it reports offsets only for what it leads.
                    try:
                        own = metadata(self.node(leader).address, [topic],
                                       security=self.security)
                    except grpc.RpcError:
                        continue
                    if own.topics[0].partitions[partition].high_watermark >= 0:
                        return leader
            time.sleep(0.1)
        raise TimeoutError(f"no leader of {topic}-{partition} within {timeout_s} s")

    def settled_leader_of(self, topic: str, partition: int, timeout_s: float = 30.0) -> int:
        """The leader once it is the preferred one (the first replica), i.e. once the leader
        balancer has nothing left to move: tests that aim at one leader start from here."""
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.leader_of(topic, partition, timeout_s)
            running = next(n for n in self.nodes if n.running)
            preferred = metadata(running.address, [topic], security=self.security).topics[0] \
                .partitions[partition].replicas[0]
            if leader == preferred or not self.node(preferred).running:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}-{partition} not led by node {preferred} in time")
            time.sleep(0.1)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _signal(self, node_id: int, sig: signal.Signals) -> None:
        node = self.node(node_id)
        if node.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.process.pid, sig)  # type: ignore[union-attr]

    @staticmethod
    def _reap(node: LocalNode, timeout_s: float) -> bool:
        if node.process is None:
            return True
        try:
            node.process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

