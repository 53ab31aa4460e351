"""Produce throughput with TLS on (both listeners; clients verify the nodes, peers mTLS) against
plaintext, in one run on one machine: the issue 13 goal is TLS >= 80% of plaintext.

    .venv/bin/python benchmarks/tls_bench.py [--seconds 3] [--rounds 6] [--in-flight 16]  (~7 min)

A plaintext and a TLS 3-node cluster (certificates from `tidelog certs dev`) run side by side;
short bursts alternate between them (ABBA order), and each mode's median is reported, so load
from anything else on the machine hits both alike. Two workloads, acks=all, RF=3, fsync always,
12 partitions:

- broker: pre-encoded lz4 batches of 100 x 1 KiB records over grpc.aio, `--in-flight` requests
  (the node's cost: TLS on the client connection and on every replication stream);
- client: the Python `Producer` (1 KiB records, default batching), what an application sees.

This is done twice, once with each cluster started first (two earlier runs with one order each
gave opposite verdicts, 140% and 77%, on a machine shared with other jobs), and the verdict is
the geometric mean of the two TLS/plaintext ratios of the medians. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from produce_load import PARTITIONS, broker_produce, client_produce  # benchmarks/produce_load.py
from tidelog.client import Admin
from tidelog.client.security import ClientSecurity
from tidelog.node.local_cluster import LocalCluster
from tidelog.node.tables import render_table


@dataclass
class Mode:
    name: str
    cluster: LocalCluster
    security: ClientSecurity | None
    broker: list[float] = field(default_factory=list)
    client: list[float] = field(default_factory=list)


def start(tls: bool, directory: Path) -> Mode:
    cluster = LocalCluster(3, directory / ("tls" if tls else "plain"),
                           tls_dir=directory / "certs" if tls else None)
    security = None
    if cluster.security is not None:
        security = ClientSecurity(tls_ca=cluster.security.tls_ca)  # server verified, no mTLS
    cluster.start()
    cluster.wait_healthy(60)
    with Admin(cluster.bootstrap, security=security) as admin:
        for name in ("broker", "client"):
            admin.create_topic(name, partitions=PARTITIONS, replication_factor=3)
    return Mode("TLS" if tls else "plaintext", cluster, security)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def phase(tls_first: bool, directory: Path, args: argparse.Namespace) -> tuple[Mode, Mode]:
    """Both clusters up (in the given order), then alternating bursts; (plaintext, TLS)."""
    modes: list[Mode] = []
    try:
        for tls in ((True, False) if tls_first else (False, True)):
            modes.append(start(tls, directory))
        modes.sort(key=lambda mode: mode.security is not None)  # plaintext, TLS
        time.sleep(3)  # preferred leaders settle before measuring
        for round_number in range(args.rounds):
            order = modes if round_number % 2 == 0 else modes[::-1]
            for mode in order:
                mode.broker.append(asyncio.run(broker_produce(
                    mode.cluster, "broker", args.seconds, args.in_flight,
                    security=mode.security))[0])
            for mode in order:
                mode.client.append(client_produce(mode.cluster, "client", args.seconds,
                                                  security=mode.security)[0])
            print(f"{'TLS' if tls_first else 'plaintext'} started first, round "
                  f"{round_number + 1}: " + ", ".join(
                      f"{m.name} broker {m.broker[-1]:,.0f} client {m.client[-1]:,.0f} msgs/s"
                      for m in modes), flush=True)
    finally:
        for mode in modes:
            mode.cluster.stop()
    plain, tls = modes
    return plain, tls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per burst")
    parser.add_argument("--rounds", type=int, default=6,
                        help="bursts per mode, workload and start order")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent produce requests")
    args = parser.parse_args()
    phases = []
    with tempfile.TemporaryDirectory(prefix="tidelog-tls-bench-") as tmp:
        for tls_first in (False, True):
            phases.append(phase(tls_first, Path(tmp) / f"tls-first-{tls_first}", args))
    rows = []
    for name, pick in ((f"broker (pre-encoded, {args.in_flight} in flight)", "broker"),
                       ("client (Producer)", "client")):
        ratios = []
        for (plain, tls), first in zip(phases, ("plaintext", "TLS"), strict=True):
            p, t = median(getattr(plain, pick)), median(getattr(tls, pick))
            ratios.append(t / p)
            rows.append([name, f"{first} first", f"{p:,.0f}", f"{t:,.0f}", f"{t / p:.0%}"])
        rows.append([name, "both (geometric mean)", "", "", f"{math.prod(ratios) ** 0.5:.0%}"])
    print()
    print(f"Produce 1 KiB records, acks=all, RF=3, fsync always, {PARTITIONS} partitions, "
          f"two 3-node clusters side by side; median of {args.rounds} alternating "
          f"{args.seconds:g} s bursts per start order")
    print(render_table(["workload", "started", "plaintext msgs/s", "TLS msgs/s",
                        "TLS / plaintext"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
