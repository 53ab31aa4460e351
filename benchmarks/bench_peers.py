"""Tidelog side by side with NATS JetStream and a RabbitMQ quorum queue, in one sitting (issue 16).

    make bench-peers                       # = .venv/bin/python benchmarks/bench_peers.py
    .venv/bin/python benchmarks/bench_peers.py --quick             # ~3 min: fewer messages
    .venv/bin/python benchmarks/bench_peers.py --runs 3 --output json
    .venv/bin/python benchmarks/bench_peers.py --nodes 5           # 5-node clusters of all three
    .venv/bin/python benchmarks/bench_peers.py --bootstrap h1:9091,h2:9091,h3:9091   # real hosts

The peers are measured by ../shared/peers' own scripts (nats_bench.py, rabbit_bench.py), run as
subprocesses with the peer venv's python; they start and stop their servers on 127.0.0.1 and print
one JSON line per measurement, which this script reads. Tidelog is N real node processes
(node/local_cluster.py; fsync `always`, the default; topics RF=3) loaded through the same loops as
`tidelog bench` (tidelog.client.bench_workloads), with the peers' workloads: 100 B one at a time
(send, wait), 100 B and 1 KiB with 1,000 in flight, 100 B keyed over 12 partitions, and a consume
from the beginning. The systems run one after another (never at once: the box has 2 cores), then
ONE table prints each peer's figure and Tidelog's ratio to it. This script installs nothing:
without the peers it says how to get them (`sudo sh ../shared/peers/install.sh`) and measures
Tidelog alone. With --bootstrap only Tidelog is measured (the peers' scripts run on loopback only).

What an ack means differs (read ../shared/peers/BASELINES.md): NATS 2.9 acks from the page cache
of a quorum (no fsync), RabbitMQ quorum queues and Tidelog (acks=all, fsync always) once fsynced
on a quorum. The peers' scripts replicate to every node (R=N); Tidelog topics keep RF=3 on N nodes.
Figures are medians over --runs. Absolute numbers drift with the machine and its load: quote the
ratios, which come from one sitting, and the load average printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(os.environ.get("PEERBENCH_DIR", ROOT.parent / "shared" / "peers"))
PEER_PYTHON = Path(os.environ.get("PEERBENCH_VENV", "/tmp/peerbench-venv")) / "bin" / "python"
INSTALL_HINT = ("install the peers once, as root: `sh {dir}/install.sh` (Debian packages "
                "nats-server and rabbitmq-server, and a venv with nats-py and pika at "
                "$PEERBENCH_VENV, default /tmp/peerbench-venv)")
KEYED_PARTITIONS = 12


@dataclass(frozen=True, slots=True)
class Workload:
    """One row of the table: how to read each system's figure, and which way is better."""

    key: str
    title: str
    unit: str
    higher_is_better: bool = True


WORKLOADS: tuple[Workload, ...] = (
    Workload("one_p50", "100 B one at a time (send, wait): p50", "ms", higher_is_better=False),
    Workload("one_p99", "100 B one at a time: p99", "ms", higher_is_better=False),
    Workload("one_rate", "100 B one at a time: rate", "msg/s"),
    Workload("one_p50_linger0", "100 B one at a time, linger 0: p50", "ms",
             higher_is_better=False),
    Workload("one_p99_linger0", "100 B one at a time, linger 0: p99", "ms",
             higher_is_better=False),
    Workload("async_100", "100 B, 1000 in flight, 1 partition", "msg/s"),
    Workload("async_1k", "1 KiB, 1000 in flight, 1 partition", "MB/s"),
    Workload("keyed_12", f"100 B, 1000 in flight, keyed over {KEYED_PARTITIONS} partitions "
             "(peers: their one stream)", "msg/s"),
    Workload("consume", "consume from the beginning (100 B)", "msg/s"),
)

# (peer script's "mode", size) -> (workload key, the JSON field holding the figure)
# The peers have no linger: their one synchronous publish is compared with both of Tidelog's
# one-at-a-time rows (the target holds for both). They have no partitions either: the
# keyed row compares with their one stream / queue, as the table does.
_SYNC = [("one_p50", "p50_ms"), ("one_p99", "p99_ms"), ("one_rate", "msgs_s"),
         ("one_p50_linger0", "p50_ms"), ("one_p99_linger0", "p99_ms")]
_ASYNC = [("async_100", "msgs_s"), ("keyed_12", "msgs_s")]
PEER_FIELDS: dict[str, dict[tuple[str, int], list[tuple[str, str]]]] = {
    "nats": {("sync", 100): _SYNC, ("async_w1000", 100): _ASYNC,
             ("async_w1000", 1024): [("async_1k", "MB_s")],
             ("pull_consume", 100): [("consume", "msgs_s")]},
    "rabbitmq": {("sync", 100): _SYNC, ("async_w1000", 100): _ASYNC,
                 ("async_w1000", 1024): [("async_1k", "MB_s")],
                 ("consume_ack1000", 100): [("consume", "msgs_s")]},
}
PEERS: dict[str, tuple[str, str, str]] = {  # name -> (column, script, server binary)
    "nats": ("NATS JetStream R{n}", "nats_bench.py", "nats-server"),
    "rabbitmq": ("RabbitMQ quorum queue ({n} members)", "rabbit_bench.py", "rabbitmq-server"),
}


@dataclass(frozen=True, slots=True)
class Sizes:
    """Message counts and time bounds of one sitting (--quick shrinks them)."""

    one_at_a_time: int
    in_flight: int
    in_flight_1k: int
    max_seconds: float

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        return cls(300, 20_000, 10_000, 10.0) if quick else cls(2_000, 100_000, 50_000, 30.0)


@dataclass(slots=True)
class Figures:
    """Each system's samples per workload key, over the runs."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, system: str, key: str, value: float) -> None:
        self.samples.setdefault(system, {}).setdefault(key, []).append(float(value))

    def median(self, system: str, key: str) -> float | None:
        values = self.samples.get(system, {}).get(key)
        return statistics.median(values) if values else None


def say(message: str) -> None:
    print(f"bench-peers: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- peers

def peer_missing(name: str) -> str:
    """Why this peer cannot run here ("" when it can)."""
    script, binary = PEERS[name][1], PEERS[name][2]
    if not (PEERS_DIR / script).is_file():
        return f"no {PEERS_DIR / script}"
    if not PEER_PYTHON.is_file():
        return f"no peer venv at {PEER_PYTHON.parent.parent}"
    if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
        return f"{binary} is not installed"
    return ""


def run_peer(name: str, nodes: int, runs: int, sizes: Sizes, figures: Figures,
             log_dir: Path) -> None:
    """Run ../shared/peers/<script> once (all runs) and fold its JSON lines into `figures`."""
    script = PEERS[name][1]
    out = log_dir / f"{name}.jsonl"
    log = log_dir / f"{name}.log"
    command = [str(PEER_PYTHON), str(PEERS_DIR / script), "--nodes", str(nodes),
               "--runs", str(runs), "--sizes", "100", "1024",
               "--sync-msgs", str(sizes.one_at_a_time), "--async-msgs", str(sizes.in_flight),
               "--window", "1000", "--max-seconds", str(sizes.max_seconds), "--out", str(out)]
    say(f"{name}: {' '.join(command[1:])} (log {log})")
    started = time.monotonic()
    with log.open("w") as log_file:
        # the same process group: a Ctrl-C reaches the script too, whose finally: stops its
        # servers by PID; we wait for that rather than leave servers behind
        process = subprocess.Popen(command, cwd=log_dir, stdout=log_file,
                                   stderr=subprocess.STDOUT)
        try:
            rc = process.wait()
        except KeyboardInterrupt:
            process.wait(timeout=120)
            raise
    records = [json.loads(line) for line in out.read_text().splitlines()
               if line.strip()] if out.exists() else []
    if rc != 0 or not records:
        figures.notes.append(f"{name}: the script failed (rc {rc}); see {log}")
        say(f"{name}: rc {rc}, {len(records)} measurements; see {log}")
    for record in records:
        for key, field_name in PEER_FIELDS[name].get((record.get("mode"), record.get("size")),
                                                     ()):
            if isinstance(record.get(field_name), int | float):
                figures.add(name, key, record[field_name])
    say(f"{name}: {len(records)} measurements in {time.monotonic() - started:.0f} s")


# ------------------------------------------------------------------------------------ Tidelog

@contextlib.contextmanager
def tidelog_cluster(nodes: int, bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from tidelog.node.local_cluster import LocalCluster

    data = Path(tempfile.mkdtemp(prefix="tidelog-bench-peers-"))
    try:
        with LocalCluster(nodes, data) as cluster:  # fsync always: the node's default
            cluster.wait_healthy(90)
            say(f"tidelog: {nodes} nodes at {cluster.bootstrap} (data {data})")
            yield cluster.bootstrap
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def topic(bootstrap: str, partitions: int) -> Iterator[str]:
    from tidelog.client import Admin

    name = f"peers-{uuid.uuid4().hex[:8]}"
    with Admin(bootstrap) as admin:
        admin.create_topic(name, partitions=partitions, replication_factor=3)
    try:
        yield name
    finally:
        with Admin(bootstrap) as admin:
            admin.delete_topic(name)


def run_tidelog(bootstrap: str, runs: int, sizes: Sizes, figures: Figures) -> None:
    from tidelog.client import bench_workloads as bw

    seconds = sizes.max_seconds

    def produce(name: str, **options: object) -> bw.BenchResult:
        spec = bw.ProduceSpec(topic=name, seconds=seconds, **options)  # type: ignore[arg-type]
        result = bw.run_produce(bootstrap, None, spec)
        if result.errors:
            figures.notes.append(f"tidelog: {result.errors} records failed in {options}")
        return result

    for run in range(1, runs + 1):
        say(f"tidelog: run {run}/{runs}")
        with topic(bootstrap, 1) as name:
            for linger, suffix in ((5.0, ""), (0.0, "_linger0")):
                one = produce(name, size=100, count=sizes.one_at_a_time, in_flight=1,
                              linger_ms=linger)
                assert one.latency is not None
                figures.add("tidelog", f"one_p50{suffix}", one.latency.p50_ms)
                figures.add("tidelog", f"one_p99{suffix}", one.latency.p99_ms)
                if not suffix:
                    figures.add("tidelog", "one_rate", one.msgs_per_s)
            figures.add("tidelog", "async_100",
                        produce(name, size=100, count=sizes.in_flight).msgs_per_s)
            consumed = bw.run_consume(bootstrap, None, bw.ConsumeSpec(
                topic=name, count=10 * sizes.in_flight, seconds=2 * seconds))
            figures.add("tidelog", "consume", consumed.msgs_per_s)
        with topic(bootstrap, 1) as name:
            figures.add("tidelog", "async_1k",
                        produce(name, size=1024, count=sizes.in_flight_1k).mb_per_s)
        with topic(bootstrap, KEYED_PARTITIONS) as name:
            figures.add("tidelog", "keyed_12",
                        produce(name, size=100, count=sizes.in_flight, keys=1000).msgs_per_s)


# -------------------------------------------------------------------------------------- table

def ratio(workload: Workload, tidelog: float | None, peer: float | None) -> str:
    """Tidelog / peer, said so that a reader knows which way is better."""
    if tidelog is None or peer is None or peer <= 0 or tidelog <= 0:
        return "-"
    value = tidelog / peer
    if workload.higher_is_better:
        return f"{value:.2f}x"
    return f"{value:.2f}x the latency"


def number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB/s":
        return f"{value:.1f} MB/s"
    return f"{value:,.0f}/s"


def table_rows(figures: Figures, peers: Sequence[str]) -> list[dict[str, object]]:
    rows = []
    for workload in WORKLOADS:
        tidelog = figures.median("tidelog", workload.key)
        row: dict[str, object] = {"workload": workload.key, "title": workload.title,
                                  "unit": workload.unit,
                                  "higher_is_better": workload.higher_is_better,
                                  "tidelog": tidelog}
        for peer in peers:
            value = figures.median(peer, workload.key)
            row[peer] = value
            row[f"ratio_{peer}"] = (tidelog / value if tidelog and value else None)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, object]], peers: Sequence[str], nodes: int) -> str:
    columns = [PEERS[p][0].format(n=nodes) for p in peers]
    header = ["workload", *columns, f"Tidelog ({nodes} nodes, RF 3)",
              *(f"Tidelog / {c.split(' ')[0]}" for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {w.key: w for w in WORKLOADS}
    for row in rows:
        workload = by_key[str(row["workload"])]
        tidelog = row["tidelog"]
        cells = [workload.title, *(number(row[p], workload.unit) for p in peers),  # type: ignore[arg-type]
                 number(tidelog, workload.unit),  # type: ignore[arg-type]
                 *(ratio(workload, tidelog, row[p]) for p in peers)]  # type: ignore[arg-type]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu": model, "arch": platform.machine(),
            "kernel": platform.release(), "python": platform.python_version()}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of every workload per system; medians (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer messages and 10 s phases (~3 min in all), for a first look")
    parser.add_argument("--nodes", type=int, choices=(3, 5, 7), default=3,
                        help="cluster size of every system (default %(default)s)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT[,...]",
                        help="measure this Tidelog cluster (real hosts) instead of starting "
                        "one; the peers are then skipped (their scripts use loopback only)")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(PEERS),
                        help="leave a peer out (repeatable)")
    parser.add_argument("--output", choices=("table", "json"), default="table")
    parser.add_argument("--log-dir", type=Path,
                        help="keep the peers' logs and JSON lines here (default: a temp dir, "
                        "removed)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    sizes = Sizes.of(args.quick)
    figures = Figures()
    peers: list[str] = []
    if args.bootstrap:
        figures.notes.append("--bootstrap: Tidelog only (the peers' scripts run on loopback)")
    else:
        for name in PEERS:
            if name in args.skip:
                continue
            missing = peer_missing(name)
            if missing:
                note = f"{name} skipped: {missing}; " + INSTALL_HINT.format(dir=PEERS_DIR)
                figures.notes.append(note)
                say(note)
            else:
                peers.append(name)
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = loadavg()
    say(f"load average at the start: {load_start}")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-peers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name in peers:  # one system at a time: the box has 2 cores
            run_peer(name, args.nodes, args.runs, sizes, figures, log_dir)
        with tidelog_cluster(args.nodes, args.bootstrap) as bootstrap:
            run_tidelog(bootstrap, args.runs, sizes, figures)
    except KeyboardInterrupt:
        figures.notes.append("interrupted: the figures so far")
    finally:
        if args.log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    rows = table_rows(figures, peers)
    load_end = loadavg()
    if args.output == "json":
        print(json.dumps({"date": started_at, "machine": machine(), "loadavg_start": load_start,
                          "loadavg_end": load_end, "nodes": args.nodes, "runs": args.runs,
                          "quick": args.quick, "peers": peers, "rows": rows,
                          "samples": figures.samples, "notes": figures.notes}))
        return 0
    info = machine()
    print(f"{started_at}; {info['cores']} cores {info['cpu']} ({info['arch']}), Python "
          f"{info['python']}; load average {load_start} at the start, {load_end} at the end; "
          f"{args.nodes} nodes per system, median of {args.runs} run(s)"
          f"{', --quick' if args.quick else ''}")
    print()
    print(markdown(rows, peers, args.nodes))
    keyed, single = figures.median("tidelog", "keyed_12"), figures.median("tidelog", "async_100")
    if keyed and single:
        print(f"\nTidelog keyed over {KEYED_PARTITIONS} partitions / 1 partition: "
              f"{keyed / single:.2f}x (target: >= 1)")
    for note in figures.notes:
        print(f"\nnote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
