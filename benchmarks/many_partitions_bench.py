"""Many partitions on a few nodes (issue 16): idle CPU, leader balance, RSS, restart time.

    .venv/bin/python benchmarks/many_partitions_bench.py [--partitions 1000] [--nodes 3]
        [--idle-seconds 30] [--profile DIR] [--skip-restart]

Starts a real `--nodes`-node cluster on 127.0.0.1 (fsync `always`), creates ONE topic of
`--partitions` partitions at RF = min(3, nodes), and measures, per node:
* time from CreateTopics until every partition has a leader, and until every leader is the
  preferred one (the first replica: what the leader balancer moves leadership to);
* idle CPU over `--idle-seconds` (utime + stime from /proc/<pid>/stat, in % of one core), taken
  after the leaders are balanced and a 5 s settling pause;
* RSS (VmRSS and VmHWM from /proc/<pid>/status) after the idle window;
* failover: SIGKILL the last node, time until every partition has a leader on the survivors;
* restart: start it again, time until it answers health SERVING, until a Metadata request to it
  shows every partition led, and until it leads its preferred partitions again.

`--profile DIR` runs `py-spy record` on node 1 during the idle window and on the restarted node
for its first 15 s (a separate run: py-spy costs CPU), and writes DIR/idle-node1.txt and
DIR/restart-node3.txt (the top functions by inclusive and self samples).

Every process started is stopped by PID in a `finally:`. Figures, never assertions: the 2 cores
are shared, so compare runs made in one sitting and note the load average printed first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
from tidelog.client.admin import Admin
from tidelog.node.health import check_health
from tidelog.node.local_cluster import LocalCluster, LocalNode, metadata

TOPIC = "many"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 1.0  # a Metadata of 1,000 partitions costs the polled node real CPU: not faster


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def leaders(node: LocalNode) -> list[tuple[int, int]] | None:
    """(leader, preferred) per partition as `node` answers Metadata; None if it does not."""
    try:
        answer = metadata(node.address, [TOPIC], timeout_s=30.0)
    except grpc.RpcError:
        return None
    if not answer.topics:
        return None
    return [(p.leader_id, p.replicas[0]) for p in answer.topics[0].partitions]


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until `check()` holds (polled); raises TimeoutError."""
    start = time.monotonic()
    last_log = start
    while not check():
        now = time.monotonic()
        if now - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        if now - last_log > 10:
            last_log = now
            log(f"waiting for {what}: {now - start:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - start


def all_led(node: LocalNode, partitions: int, alive: set[int]) -> bool:
    got = leaders(node)
    return got is not None and len(got) == partitions and all(lead in alive for lead, _ in got)


def balanced(node: LocalNode, partitions: int) -> bool:
    got = leaders(node)
    return got is not None and len(got) == partitions and all(lead == pref for lead, pref in got)


def code_env(code: Path | None) -> dict[str, str]:
    """`--code DIR`: the nodes import tidelog from DIR (DIR/tidelog/{node,proto,client,chaos},
    e.g. `git archive` of the commit to compare with) instead of this checkout, through a
    sitecustomize.py in DIR that drops the editable install's finder; the benchmark itself and
    its client stay on this checkout. Before/after in one sitting without touching the tree."""
    if code is None:
        return {}
    if not (code / "sitecustomize.py").is_file() or not (code / "tidelog" / "node").is_dir():
        raise SystemExit(f"--code {code}: needs tidelog/node/ and sitecustomize.py")
    return {"PYTHONPATH": str(code)}


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds),
                             "--format", "raw", "--output", str(out), "--rate", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(raw: Path, out: Path, top: int = 30) -> None:
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        self_[frames[-1]] += n
    lines = [f"{total} samples", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}% {f}" for f, n in inclusive.most_common(top)]
    lines += ["self:"] + [f"  {100 * n / total:5.1f}% {f}" for f, n in self_.most_common(top)]
    out.write_text("\n".join(lines) + "\n")
    log(f"profile summary in {out}")


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows: list[tuple[str, str]] = [("load average at start", load)]
    rf = min(3, args.nodes)
    work = Path(tempfile.mkdtemp(prefix="many-partitions-"))
    cluster = LocalCluster(args.nodes, work, extra_args=("--fsync", "always"),
                           env=code_env(args.code))
    try:
        cluster.start()
        cluster.wait_healthy(60)
        first = cluster.nodes[0]
        with Admin(cluster.bootstrap, request_timeout_ms=600_000) as admin:
            started = time.monotonic()
            admin.create_topic(TOPIC, partitions=args.partitions, replication_factor=rf,
                               wait=False)
        created = time.monotonic() - started
        rows.append(("CreateTopics answered", f"{created:.1f} s"))
        ids = {n.id for n in cluster.nodes}
        t = wait_until("every partition led", lambda: all_led(first, args.partitions, ids), 600)
        rows.append(("every partition has a leader", f"{created + t:.1f} s after create"))
        t2 = wait_until("leaders balanced", lambda: balanced(first, args.partitions), 600)
        rows.append(("leaders balanced (all preferred)", f"{created + t + t2:.1f} s after create"))
        time.sleep(5)
        pids = {n.id: n.pid for n in cluster.nodes}
        spy = None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = profile(pids[1], args.idle_seconds, args.profile / "idle-node1.raw")
        before = {i: cpu_seconds(pid) for i, pid in pids.items() if pid}
        t0 = time.monotonic()
        time.sleep(args.idle_seconds)
        wall = time.monotonic() - t0
        for i, pid in pids.items():
            assert pid is not None
            share = 100 * (cpu_seconds(pid) - before[i]) / wall
            rss, hwm = memory_mib(pid)
            rows.append((f"node {i} idle CPU", f"{share:.1f}% of a core"))
            rows.append((f"node {i} RSS / peak", f"{rss:.0f} / {hwm:.0f} MiB"))
        if spy is not None:
            spy.wait(timeout=args.idle_seconds + 60)
            summarize_profile(args.profile / "idle-node1.raw", args.profile / "idle-node1.txt")
        if not args.skip_restart:
            rows += restart(cluster, args.partitions, args.profile)
    except BaseException:
        for node in cluster.nodes:
            with contextlib.suppress(OSError):
                tail = node.log_path.read_text(errors="replace").splitlines()[-15:]
                log(f"--- node {node.id} log tail:\n" + "\n".join(tail))
        raise
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def restart(cluster: LocalCluster, partitions: int,
            profile_dir: Path | None) -> list[tuple[str, str]]:
    rows = []
    victim = cluster.nodes[-1]
    survivor = cluster.nodes[0]
    survivors = {n.id for n in cluster.nodes if n is not victim}
    t0 = time.monotonic()
    cluster.kill(victim.id)
    t = wait_until("failover", lambda: all_led(survivor, partitions, survivors), 120)
    rows.append((f"SIGKILL node {victim.id}: every partition led again", f"{t:.1f} s"))
    time.sleep(2)
    t0 = time.monotonic()
    cluster.start(victim.id)
    spy = None
    if profile_dir is not None and victim.pid is not None:
        spy = profile(victim.pid, 15, profile_dir / f"restart-node{victim.id}.raw")
    ids = {n.id for n in cluster.nodes}
    wait_until("health", lambda: check_health(victim.address, timeout_s=1.0), 300)
    rows.append((f"restart node {victim.id}: health SERVING", f"{time.monotonic() - t0:.1f} s"))
    wait_until("restarted node sees leaders", lambda: all_led(victim, partitions, ids), 300)
    rows.append((f"restart node {victim.id}: Metadata from it shows every partition led",
                 f"{time.monotonic() - t0:.1f} s"))
    wait_until("rebalanced", lambda: balanced(survivor, partitions), 300)
    rows.append((f"restart node {victim.id}: leaders balanced again",
                 f"{time.monotonic() - t0:.1f} s"))
    if spy is not None and profile_dir is not None:
        spy.wait(timeout=120)
        summarize_profile(profile_dir / f"restart-node{victim.id}.raw",
                          profile_dir / f"restart-node{victim.id}.txt")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--idle-seconds", type=int, default=30)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--code", type=Path, default=None,
                        help="run the nodes from this source tree (see code_env)")
    args = parser.parse_args()
    rows = run(args)
    width = max(len(k) for k, _ in rows)
    code = f", nodes from {args.code}" if args.code else ""
    print(f"| figure ({args.partitions} partitions, {args.nodes} nodes{code}) | value |")
    print("|---|---|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
