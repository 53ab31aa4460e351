"""Real network faults for the `local` backend: one network namespace per node (needs root).

Theory of operation. `Topology` builds, in the root namespace, a bridge `tl-br<ID>` holding the
host address 10.231.S.1/24, and for each node a namespace `tl-<ID>-<node>` joined to the bridge by
a veth pair (host end `tl-v<ID>-<i>`, namespace end `eth0`, address 10.231.S.(10+i)). The subnet
index S is the lowest whose 10.231.S.0/24 no interface on the machine uses, so concurrent
topologies do not collide. Processes in the root namespace (the workload) reach nodes at their
addresses; nodes reach each other across the bridge. Only these addresses are ever targeted.

Faults live only inside the node namespaces (nothing in the root namespace except one FORWARD
accept rule for our bridge, needed once Docker has set the FORWARD policy to DROP):
- partitions: iptables chains TL-IN (hooked from INPUT) and TL-OUT (from OUTPUT) hold DROP rules
  for a `Grudge` (see grudge.py); a cut `src -> dst` is a rule in dst's TL-IN (or, when dst is the
  host, in src's TL-OUT). Healing flushes the chains.
- flaky links: `tc qdisc netem` (delay, jitter, loss) on both ends of a node's veth when the
  kernel has sch_netem; without it, loss falls back to `iptables -m statistic` DROP rules in
  TL-LINK and delay raises `NetemUnavailable`. `throttle` uses a tbf qdisc (rate limit).

Cleanup is idempotent and checks what exists, so `destroy()` after a half-built `create()`, a
second `destroy()`, or `Topology.destroy_by_id()` after a crash all converge to nothing left.
Processes still running in a namespace keep it alive after `ip netns del`: stop them first
(process.py's Supervisor does, by PID).
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tidelog.chaos.grudge import HOST, Grudge

__all__ = [
    "HOST",
    "NetemUnavailable",
    "NetnsError",
    "NodeHost",
    "Runner",
    "Topology",
    "netns_unavailable_reason",
]

SUBNET_PREFIX = "10.231"  # 10.231.S.0/24: only our own namespaces use these.
NODES_MAX = 200  # node addresses .10 .. .209
COMMAND_TIMEOUT_S = 15.0
_LOCK_PATH = Path("/run/lock/tidelog-netns.lock")
_NS_IFACE = "eth0"
_ids = itertools.count()

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class NetnsError(RuntimeError):
    """A command that sets up or changes the topology failed; the message has its stderr."""


class NetemUnavailable(RuntimeError):
    """This kernel has no sch_netem, so delay cannot be injected (loss still can)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeHost:
    name: str
    netns: str
    address: str
    host_veth: str


def netns_unavailable_reason() -> str | None:
    """Why real namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install -y iproute2 iptables)"
    probe = f"tl-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        ipt = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-w", "-S"],
                             capture_output=True, text=True)
        if ipt.returncode != 0:
            return f"iptables does not work inside a namespace: {ipt.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


class Topology:
    """A bridge plus one namespace per node; a context manager that always cleans up."""

    def __init__(self, nodes: Sequence[str], *, topology_id: str | None = None,
                 runner: Runner = _run) -> None:
        if not 1 <= len(nodes) <= NODES_MAX:
            raise ValueError(f"a topology has 1..{NODES_MAX} nodes, not {len(nodes)}")
        if len(set(nodes)) != len(nodes) or HOST in nodes:
            raise ValueError(f"node names must be unique and not {HOST!r}: {list(nodes)}")
        for n in nodes:
            if not re.fullmatch(r"[a-z0-9]{1,12}", n):
                raise ValueError(f"node name {n!r}: use 1-12 lowercase letters and digits")
        self.id = topology_id or f"{os.getpid() % 0x10000:04x}{next(_ids) % 0x100:02x}"
        assert re.fullmatch(r"[0-9a-f]{6}", self.id), self.id
        self.bridge = f"tl-br{self.id}"
        self._run_cmd = runner
        self._names = tuple(nodes)
        self._subnet: int | None = None
        self._nodes: dict[str, NodeHost] = {}
        self._cut: set[tuple[str, str]] = set()
        self._netem: bool | None = None

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        """Build the bridge and namespaces; on any failure, undo everything and re-raise."""
        assert self._subnet is None, "topology already created"
        atexit.register(self.destroy)
        try:
            with _subnet_lock():
                self._subnet = self._free_subnet()
                self._create_bridge()
            for i, name in enumerate(self._names):
                self._create_node(i, name)
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Remove every namespace, veth, bridge and rule of this topology. Idempotent."""
        atexit.unregister(self.destroy)
        namespaces = set(self._list_netns())
        links = set(self._list_links())
        for i, name in enumerate(self._names):
            ns, veth = self._netns_name(name), self._veth_name(i)
            if ns in namespaces:
                self._try(["ip", "netns", "del", ns])
            if veth in links:
                self._try(["ip", "link", "del", veth])
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        for _ in range(8):  # bounded: we insert the rule once; remove any copies we left
            if self._try(["iptables", "-w", "-C", *rule]).returncode != 0:
                break
            self._try(["iptables", "-w", "-D", *rule])
        if self.bridge in links:
            self._try(["ip", "link", "del", self.bridge])
        self._nodes.clear()
        self._cut.clear()
        self._subnet = None

    @classmethod
    def destroy_by_id(cls, topology_id: str, nodes: Sequence[str]) -> None:
        """Clean up after a crashed run, from its id and node names (printed at creation)."""
        cls(nodes, topology_id=topology_id).destroy()

    # --- addresses and commands ---------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, NodeHost]:
        return dict(self._nodes)

    @property
    def host_address(self) -> str:
        assert self._subnet is not None, "topology not created"
        return f"{SUBNET_PREFIX}.{self._subnet}.1"

    def address(self, name: str) -> str:
        return self.host_address if name == HOST else self._node(name).address

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside node `name`'s namespace (exec'd in place: same PID)."""
        return ["ip", "netns", "exec", self._node(name).netns, *argv]

    def run(self, name: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run a short command in a node's namespace; raises NetnsError when it fails."""
        return self._must(self.exec_argv(name, argv))

    # --- partitions ---------------------------------------------------------------------------

    def partition(self, grudge: Grudge) -> None:
        """Add the grudge's cuts to those in force (use `heal_partitions` to clear them)."""
        for src, dst in sorted(grudge):
            self.address(src), self.address(dst)  # unknown names fail before any change
            if src == dst:
                raise ValueError(f"cannot cut {src} from itself")
            if (src, dst) in self._cut:
                continue
            if dst != HOST:
                self.run(dst, ["iptables", "-w", "-A", "TL-IN", "-s", self.address(src),
                               "-j", "DROP"])
            else:
                self.run(src, ["iptables", "-w", "-A", "TL-OUT", "-d", self.host_address,
                               "-j", "DROP"])
            self._cut.add((src, dst))

    @property
    def cuts(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._cut)

    def heal_partitions(self) -> None:
        for name in self._nodes:
            self.run(name, ["iptables", "-w", "-F", "TL-IN"])
            self.run(name, ["iptables", "-w", "-F", "TL-OUT"])
        self._cut.clear()

    # --- flaky links --------------------------------------------------------------------------

    def netem_available(self) -> bool:
        """Whether the kernel has sch_netem (probed once, on a namespace's loopback)."""
        if self._netem is None:
            first = next(iter(self._nodes))
            probe = self._try(self.exec_argv(first, ["tc", "qdisc", "add", "dev", "lo", "root",
                                                     "netem", "delay", "1ms"]))
            self._netem = probe.returncode == 0
            if self._netem:
                self._try(self.exec_argv(first, ["tc", "qdisc", "del", "dev", "lo", "root"]))
        return self._netem

    def degrade(self, name: str, *, delay_ms: int = 0, jitter_ms: int = 0,
                loss_percent: float = 0.0) -> None:
        """Make node `name`'s link slow and/or lossy, in both directions."""
        if not (0 <= loss_percent <= 100 and delay_ms >= 0 and 0 <= jitter_ms <= delay_ms):
            raise ValueError("need 0 <= loss_percent <= 100 and 0 <= jitter_ms <= delay_ms")
        node = self._node(name)
        if self.netem_available():
            spec = ["netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms",
                    "loss", f"{loss_percent}%"]
            self.run(name, ["tc", "qdisc", "replace", "dev", _NS_IFACE, "root", *spec])
            self._must(["tc", "qdisc", "replace", "dev", node.host_veth, "root", *spec])
            return
        if delay_ms:
            raise NetemUnavailable(
                "this kernel has no sch_netem (CONFIG_NET_SCH_NETEM), so delay cannot be "
                "injected; loss works (iptables statistic) and `throttle` limits the rate")
        if loss_percent:
            probability = f"{loss_percent / 100:.6f}"
            for direction in (["-o", _NS_IFACE], ["-i", _NS_IFACE]):
                chain = "TL-LINK-OUT" if direction[0] == "-o" else "TL-LINK-IN"
                self.run(name, ["iptables", "-w", "-A", chain, *direction, "-m", "statistic",
                                "--mode", "random", "--probability", probability, "-j", "DROP"])

    def throttle(self, name: str, *, rate_kbit: int) -> None:
        """Limit node `name`'s link to `rate_kbit` each way (tbf; replaces any netem)."""
        if rate_kbit <= 0:
            raise ValueError("rate_kbit must be positive")
        spec = ["tbf", "rate", f"{rate_kbit}kbit", "burst", "32kbit", "latency", "400ms"]
        self.run(name, ["tc", "qdisc", "replace", "dev", _NS_IFACE, "root", *spec])
        self._must(["tc", "qdisc", "replace", "dev", self._node(name).host_veth, "root", *spec])

    def heal_links(self) -> None:
        for name, node in self._nodes.items():
            self._try(self.exec_argv(name, ["tc", "qdisc", "del", "dev", _NS_IFACE, "root"]))
            self._try(["tc", "qdisc", "del", "dev", node.host_veth, "root"])
            self.run(name, ["iptables", "-w", "-F", "TL-LINK-OUT"])
            self.run(name, ["iptables", "-w", "-F", "TL-LINK-IN"])

    def heal(self) -> None:
        """Undo every fault: partitions and link degradation."""
        self.heal_partitions()
        self.heal_links()

    # --- helpers ------------------------------------------------------------------------------

    def _node(self, name: str) -> NodeHost:
        try:
            return self._nodes[name]
        except KeyError:
            raise ValueError(f"no node {name!r} in topology {self.id}") from None

    def _netns_name(self, name: str) -> str:
        return f"tl-{self.id}-{name}"

    def _veth_name(self, index: int) -> str:
        return f"tl-v{self.id}-{index}"

    def _create_bridge(self) -> None:
        self._must(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._must(["ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge])
        self._must(["ip", "link", "set", self.bridge, "up"])
        # Docker sets the FORWARD policy to DROP, which also drops bridged traffic when
        # br_netfilter is loaded; accept our own bridge's traffic explicitly.
        self._must(["iptables", "-w", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge,
                    "-j", "ACCEPT"])

    def _create_node(self, index: int, name: str) -> None:
        assert self._subnet is not None
        ns, veth = self._netns_name(name), self._veth_name(index)
        address = f"{SUBNET_PREFIX}.{self._subnet}.{10 + index}"
        self._must(["ip", "netns", "add", ns])
        self._must(["ip", "link", "add", veth, "type", "veth", "peer", "name", _NS_IFACE,
                    "netns", ns])
        self._must(["ip", "link", "set", veth, "master", self.bridge, "up"])
        self._nodes[name] = NodeHost(name=name, netns=ns, address=address, host_veth=veth)
        self.run(name, ["ip", "addr", "add", f"{address}/24", "dev", _NS_IFACE])
        self.run(name, ["ip", "link", "set", _NS_IFACE, "up"])
        self.run(name, ["ip", "link", "set", "lo", "up"])
        for chain, hook in (("TL-IN", "INPUT"), ("TL-OUT", "OUTPUT"),
                            ("TL-LINK-IN", "INPUT"), ("TL-LINK-OUT", "OUTPUT")):
            self.run(name, ["iptables", "-w", "-N", chain])
            self.run(name, ["iptables", "-w", "-A", hook, "-j", chain])

    def _free_subnet(self) -> int:
        shown = self._must(["ip", "-o", "-4", "addr", "show"]).stdout
        used = set()
        for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)", shown):
            addr = ipaddress.IPv4Address(match.group(1))
            if addr in ipaddress.IPv4Network(f"{SUBNET_PREFIX}.0.0/16"):
                used.add(int(str(addr).split(".")[2]))
        for subnet in range(1, 255):
            if subnet not in used:
                return subnet
        raise NetnsError(f"every {SUBNET_PREFIX}.S.0/24 subnet is in use")

    def _list_netns(self) -> Iterable[str]:
        out = self._try(["ip", "netns", "list"]).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def _list_links(self) -> Iterable[str]:
        out = self._try(["ip", "-o", "link", "show"]).stdout
        return [m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.MULTILINE)]

    def _must(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        done = self._run_cmd(argv)
        if done.returncode != 0:
            raise NetnsError(f"`{' '.join(argv)}` failed ({done.returncode}): "
                             f"{(done.stderr or '').strip()}")
        return done

    def _try(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return self._run_cmd(argv)


@contextmanager
def _subnet_lock() -> Iterator[None]:
    """Serialize subnet choice and bridge creation between concurrent topologies."""
    _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
