"""Network faults, for real: three namespaces with tiny TCP/UDP echo servers.

Needs root, `ip`, `iptables` and `tc`; skips with the reason otherwise. The grudge shapes and the
cleanup-on-failure path are also tested without root (pure functions, a fake command runner).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from tidelog.chaos import grudge
from tidelog.chaos.grudge import HOST
from tidelog.chaos.netns import NetemUnavailable, NetnsError, Topology, netns_unavailable_reason
from tidelog.chaos.process import ProcessSpec, Supervisor

NODES = ("n0", "n1", "n2")
PORT = 7000
CONNECT_TIMEOUT_S = 0.3

# TCP: echoes lines, except "seen TOKEN" -> "yes"/"no" (did a UDP datagram TOKEN arrive?).
# UDP: remembers the tokens it receives (bounded).
_SERVER = """
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
seen = set()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, port))
    while True:
        data, _ = s.recvfrom(512)
        if len(seen) < 10000: seen.add(data.decode())
def serve(conn):
    with conn, conn.makefile("rw") as f:
        for line in f:
            word = line.split()
            f.write(("yes" if word[1] in seen else "no") + "\\n" if word[:1] == ["seen"]
                    else line)
            f.flush()
threading.Thread(target=udp, daemon=True).start()
srv = socket.create_server((addr, port))
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Connects to each address in parallel; prints {address: reachable}. Optionally sends UDP tokens.
_PROBE = """
import json, socket, sys, threading
targets, port = json.loads(sys.argv[1]), int(sys.argv[2])
timeout, token = float(sys.argv[3]), sys.argv[4]
out = {}
def probe(a):
    try:
        with socket.create_connection((a, port), timeout=timeout) as s:
            s.sendall(b"ping\\n"); out[a] = s.recv(16) == b"ping\\n"
    except OSError:
        out[a] = False
    if token:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(token.encode(), (a, port))
ts = [threading.Thread(target=probe, args=(a,)) for a in targets]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""

_unavailable = netns_unavailable_reason() if sys.platform == "linux" else "needs Linux"
needs_netns = pytest.mark.skipif(_unavailable is not None, reason=f"{_unavailable}")


# --- the grudge shapes (no root needed) ---------------------------------------------------------


def test_isolate_cuts_one_node_both_ways() -> None:
    cut = grudge.isolate("n0", NODES)
    assert cut == {("n0", "n1"), ("n1", "n0"), ("n0", "n2"), ("n2", "n0")}


def test_majority_minority_leaves_a_strict_majority_connected() -> None:
    for seed in range(20):
        nodes = [f"n{i}" for i in range(5)]
        cut = grudge.majority_minority(nodes, random.Random(seed))
        cut_off = {a for a, _ in cut}
        assert len(cut) == 2 * 2 * 3 and len(cut_off) == 5  # 2 vs 3, every pair both ways


def test_bridge_joins_two_cut_halves_through_one_node() -> None:
    nodes = [f"n{i}" for i in range(5)]
    cut = grudge.bridge(nodes, random.Random(7))
    middle = set(nodes) - {a for a, _ in cut}
    assert len(middle) == 1 and len(cut) == 2 * 2 * 2


def test_one_way_is_asymmetric_and_split_rejects_overlap() -> None:
    assert grudge.one_way("n0", "n1") == {("n0", "n1")}
    with pytest.raises(AssertionError):
        grudge.split([["n0", "n1"], ["n1", "n2"]])


# --- cleanup on a failed create (no root needed: a fake runner) ---------------------------------


class FakeHost:
    """Just enough of `ip` and `iptables` to watch what a topology creates and removes."""

    def __init__(self, fail_on: Sequence[str]) -> None:
        self.fail_on = list(fail_on)
        self.netns: set[str] = set()
        self.links: set[str] = set()
        self.forward_rules = 0

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        a = list(argv)
        ok, out = True, ""
        if a[:len(self.fail_on)] == self.fail_on:
            ok = False
        elif a[:3] == ["ip", "netns", "add"]:
            self.netns.add(a[3])
        elif a[:3] == ["ip", "netns", "del"]:
            self.netns.discard(a[3])
        elif a[:3] == ["ip", "netns", "list"]:
            out = "".join(f"{n}\n" for n in self.netns)
        elif a[:3] == ["ip", "link", "add"]:
            self.links.add(a[3])
        elif a[:3] == ["ip", "link", "del"]:
            self.links.discard(a[3])
        elif a[:4] == ["ip", "-o", "link", "show"]:
            out = "".join(f"{i}: {n}: <UP>\n" for i, n in enumerate(self.links))
        elif a[:3] == ["iptables", "-w", "-I"]:
            self.forward_rules += 1
        elif a[:3] == ["iptables", "-w", "-C"]:
            ok = self.forward_rules > 0
        elif a[:3] == ["iptables", "-w", "-D"]:
            self.forward_rules -= 1
        return subprocess.CompletedProcess(a, 0 if ok else 1, out, "" if ok else "boom")


def test_a_failed_create_removes_everything_it_made() -> None:
    fake = FakeHost(fail_on=["ip", "netns", "add", "tl-abc123-n2"])
    topo = Topology(NODES, topology_id="abc123", runner=fake)
    with pytest.raises(NetnsError, match="boom"):
        topo.create()
    assert (fake.netns, fake.links, fake.forward_rules) == (set(), set(), 0)
    topo.destroy()  # idempotent


def test_topology_validates_node_names() -> None:
    with pytest.raises(ValueError):
        Topology(["n0", "n0"])
    with pytest.raises(ValueError):
        Topology(["N0 with spaces"])
    with pytest.raises(ValueError):
        Topology([HOST])


# --- real namespaces ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    logs = tmp_path_factory.mktemp("netns-logs")
    with Topology(NODES) as topo, Supervisor() as sup:
        for name, node in topo.nodes.items():
            sup.start(ProcessSpec(name=name, netns=node.netns, log_path=logs / f"{name}.log",
                                  argv=(sys.executable, "-c", _SERVER, node.address, str(PORT))))
        _wait_listening(topo)
        yield topo


@pytest.fixture
def topo(net: Topology) -> Iterator[Topology]:
    yield net
    net.heal()


def _wait_listening(topo: Topology) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(_reachable(topo, HOST, NODES).values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"echo servers did not start: {_reachable(topo, HOST, NODES)}")


def _reachable(topo: Topology, src: str, dsts: Sequence[str], token: str = "") -> dict[str, bool]:
    return _finish(topo, dsts, _start_probe(topo, src, dsts, token))


def _start_probe(topo: Topology, src: str, dsts: Sequence[str],
                 token: str = "") -> subprocess.Popen[str]:
    addrs = [topo.address(d) for d in dsts]
    argv = [sys.executable, "-c", _PROBE, json.dumps(addrs), str(PORT), str(CONNECT_TIMEOUT_S),
            token]
    if src != HOST:
        argv = topo.exec_argv(src, argv)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def _finish(topo: Topology, dsts: Sequence[str], probe: subprocess.Popen[str]) -> dict[str, bool]:
    out, _ = probe.communicate(timeout=10)
    assert probe.returncode == 0, out
    by_addr = json.loads(out)
    return {d: by_addr[topo.address(d)] for d in dsts}


def _matrix(topo: Topology) -> set[tuple[str, str]]:
    """Every (src, dst) pair among host and nodes with a working TCP connection."""
    targets = {src: [n for n in NODES if n != src] for src in (HOST, *NODES)}
    started = {src: (dsts, _start_probe(topo, src, dsts)) for src, dsts in targets.items()}
    ok = set()
    for src, (dsts, probe) in started.items():
        ok |= {(src, dst) for dst, up in _finish(topo, dsts, probe).items() if up}
    return ok


def _all_pairs() -> set[tuple[str, str]]:
    return {(s, d) for s in (HOST, *NODES) for d in NODES if s != d}


def _seen(topo: Topology, node: str, token: str) -> bool:
    with socket.create_connection((topo.address(node), PORT), timeout=2) as s, \
            s.makefile("rw") as f:
        f.write(f"seen {token}\n")
        f.flush()
        return f.readline().strip() == "yes"


@needs_netns
def test_every_node_and_the_host_reach_each_other(topo: Topology) -> None:
    assert _matrix(topo) == _all_pairs()
    assert topo.host_address.startswith("10.231.")


@needs_netns
def test_isolated_node_is_cut_from_peers_but_not_from_the_host(topo: Topology) -> None:
    topo.partition(grudge.isolate("n0", NODES))
    assert _matrix(topo) == _all_pairs() - {("n0", "n1"), ("n0", "n2"), ("n1", "n0"),
                                             ("n2", "n0")}


@needs_netns
def test_bridge_node_reaches_both_halves_which_cannot_reach_each_other(topo: Topology) -> None:
    topo.partition(grudge.split([["n0"], ["n2"]]))  # n1 is the bridge
    assert _matrix(topo) == _all_pairs() - {("n0", "n2"), ("n2", "n0")}


@needs_netns
def test_one_way_drop_loses_only_one_direction(topo: Topology) -> None:
    topo.partition(grudge.one_way("n0", "n1"))
    # TCP needs both directions, so use UDP datagrams and ask the receivers over TCP.
    _reachable(topo, "n0", ["n1"], token="from-n0")
    _reachable(topo, "n1", ["n0"], token="from-n1")
    assert not _seen(topo, "n1", "from-n0")
    assert _seen(topo, "n0", "from-n1")


@needs_netns
def test_cutting_the_host_makes_a_node_unreachable_for_clients(topo: Topology) -> None:
    topo.partition(grudge.split([[HOST], ["n2"]]))
    assert _reachable(topo, HOST, NODES) == {"n0": True, "n1": True, "n2": False}


@needs_netns
def test_heal_restores_every_link(topo: Topology) -> None:
    topo.partition(grudge.complete_split(NODES))
    assert _matrix(topo) == {(HOST, n) for n in NODES}
    topo.heal()
    assert topo.cuts == frozenset()
    assert _matrix(topo) == _all_pairs()


@needs_netns
def test_total_loss_on_a_flaky_link_then_heal(topo: Topology) -> None:
    topo.degrade("n2", loss_percent=100.0)
    assert _reachable(topo, HOST, NODES) == {"n0": True, "n1": True, "n2": False}
    topo.heal_links()
    assert all(_reachable(topo, HOST, NODES).values())


@needs_netns
def test_delay_uses_netem_or_says_the_kernel_lacks_it(topo: Topology) -> None:
    if not topo.netem_available():
        with pytest.raises(NetemUnavailable, match="sch_netem"):
            topo.degrade("n1", delay_ms=100)
        return
    topo.degrade("n1", delay_ms=100)
    started = time.monotonic()
    assert _reachable(topo, HOST, ["n1"]) == {"n1": True}
    assert time.monotonic() - started >= 0.2  # SYN/SYN-ACK + ping/pong each cross the link


@needs_netns
def test_throttle_installs_a_rate_limit_and_heal_removes_it(topo: Topology) -> None:
    node = topo.nodes["n1"]
    topo.throttle("n1", rate_kbit=512)
    assert "tbf" in topo.run("n1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
    assert "tbf" in subprocess.run(["tc", "qdisc", "show", "dev", node.host_veth],
                                   capture_output=True, text=True).stdout
    assert all(_reachable(topo, HOST, NODES).values())
    topo.heal_links()
    assert "tbf" not in topo.run("n1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout


@needs_netns
def test_destroy_leaves_nothing_behind_even_after_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="test failure"), Topology(["a", "b"]) as topo:
        topo.partition(grudge.isolate("a", ["a", "b"]))
        made = (topo.id, topo.bridge)
        raise RuntimeError("test failure")
    topo_id, bridge = made
    assert f"tl-{topo_id}-" not in _sh(["ip", "netns", "list"])
    links = _sh(["ip", "-o", "link", "show"])
    assert f"tl-v{topo_id}" not in links and bridge not in links
    assert bridge not in _sh(["iptables", "-w", "-S", "FORWARD"])
    topo.destroy()  # a second destroy is harmless


def _sh(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout
