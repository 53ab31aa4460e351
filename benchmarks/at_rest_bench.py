"""Produce throughput with encryption at rest on (`tidelog node --encryption-keyring`) against
plaintext storage, in one run on one machine: the issue 13 goal is encrypted >= 80% of plaintext.

    .venv/bin/python benchmarks/at_rest_bench.py [--seconds 3] [--rounds 4] [--in-flight 16]
    .venv/bin/python benchmarks/at_rest_bench.py --storage-only

First the storage engine alone (append and read of the same batches, plaintext and encrypted
alternating: the only code encryption changes). Then a plaintext and an encrypted 3-node cluster
(a keyring from `tidelog keyring create`) run side by side, and short bursts alternate between
them (ABBA order), so load from anything else on the machine hits both alike; done once with
each cluster started first, the verdict being the geometric mean of the two encrypted/plaintext
ratios of the medians (as benchmarks/tls_bench.py does). acks=all, RF=3, fsync always, 12
partitions, 1 KiB records:

- broker lz4: pre-encoded lz4 batches of 100 records over grpc.aio, `--in-flight` requests
  (the node's cost: every replica seals each batch with AES-256-GCM before writing it);
- broker none: the same batches uncompressed (~50x the bytes to encrypt per batch);
- client: the Python `Producer` (default batching, lz4), what an application sees;
- fetch (once per cluster, after the bursts): everything "broker lz4" wrote, read back from
  the leaders (each encrypted batch authenticated and decrypted on the way out).

Each burst also records the CPU time the three node processes spent per record (user + system,
from /proc). Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from produce_load import (  # benchmarks/produce_load.py
    OPTIONS,
    PARTITIONS,
    RECORDS_PER_BATCH,
    broker_produce,
    client_produce,
    leaders,
    value,
)
from tidelog.client import Admin
from tidelog.node.local_cluster import LocalCluster
from tidelog.node.security.keyring import FileKeyring, create_keyring
from tidelog.node.storage import AtRestCipher, FsyncPolicy, LogConfig, PartitionLog
from tidelog.node.tables import render_table
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import Codec, encode_batch, iter_batches


async def fetch_all(cluster: LocalCluster, topic: str) -> tuple[float, int]:
    records = 0
    started = time.perf_counter()
    for partition, address in leaders(cluster, topic).items():
        async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
            stub = broker_pb2_grpc.BrokerStub(channel)
            offset = 0
            while True:
                reply = await stub.Fetch(pb.FetchRequest(partitions=[pb.FetchPartition(
                    topic=topic, partition=partition, offset=offset, max_bytes=4 << 20)],
                    max_wait_ms=0, max_bytes=4 << 20))
                data = reply.partitions[0].batches
                if not data:
                    break
                for _, header in iter_batches(data, verify=False):
                    if not header.is_control:
                        records += header.record_count
                    offset = header.last_offset + 1
    return records / (time.perf_counter() - started), records


def node_cpu_s(cluster: LocalCluster) -> float:
    """User + system CPU seconds the cluster's node processes have used so far (Linux)."""
    total = 0
    for node in cluster.nodes:
        fields = Path(f"/proc/{node.pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Mode:
    name: str
    cluster: LocalCluster
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)

    def burst(self, workload: str, run: Callable[[], tuple[float, int]]) -> None:
        before = node_cpu_s(self.cluster)
        rate, records = run()
        spent = node_cpu_s(self.cluster) - before
        self.rates.setdefault(workload, []).append(rate)
        self.cpu_us.setdefault(workload, []).append(spent / max(records, 1) * 1e6)


def start(encrypted: bool, directory: Path) -> Mode:
    extra: tuple[str, ...] = ()
    if encrypted:
        keyring = directory / "keyring.json"
        directory.mkdir(parents=True, exist_ok=True)
        create_keyring(keyring)
        extra = ("--encryption-keyring", str(keyring))
    cluster = LocalCluster(3, directory / ("encrypted" if encrypted else "plain"),
                           extra_args=extra)
    cluster.start()
    cluster.wait_healthy(60)
    with Admin(cluster.bootstrap) as admin:
        for name in ("lz4", "none", "client"):
            admin.create_topic(name, partitions=PARTITIONS, replication_factor=3)
    return Mode("encrypted" if encrypted else "plaintext", cluster)


def phase(encrypted_first: bool, directory: Path, args: argparse.Namespace) -> tuple[Mode, Mode]:
    """Both clusters up (in the given order), then alternating bursts; (plaintext, encrypted)."""
    modes: list[Mode] = []
    try:
        for encrypted in ((True, False) if encrypted_first else (False, True)):
            modes.append(start(encrypted, directory))
        modes.sort(key=lambda mode: mode.name == "encrypted")  # plaintext, encrypted
        time.sleep(3)  # preferred leaders settle before measuring
        for round_number in range(args.rounds):
            order = modes if round_number % 2 == 0 else modes[::-1]
            for workload, codec in (("broker lz4", Codec.LZ4), ("broker none", Codec.NONE)):
                for mode in order:
                    mode.burst(workload, lambda m=mode, c=codec: asyncio.run(broker_produce(
                        m.cluster, c.name.lower(), args.seconds, args.in_flight, codec=c)))
            for mode in order:
                mode.burst("client", lambda m=mode: client_produce(m.cluster, "client",
                                                                   args.seconds))
            print(f"{'encrypted' if encrypted_first else 'plaintext'} first, round "
                  f"{round_number + 1} (load {os.getloadavg()[0]:.1f}): " + "; ".join(
                      f"{m.name} " + ", ".join(f"{w} {r[-1]:,.0f}" for w, r in m.rates.items())
                      for m in modes), flush=True)
        for mode in modes:  # once: everything "broker lz4" wrote, read back
            mode.burst("fetch", lambda m=mode: asyncio.run(fetch_all(m.cluster, "lz4")))
    finally:
        for mode in modes:
            mode.cluster.stop()
    plain, sealed = modes
    return plain, sealed


def storage_costs(directory: Path, repeats: int = 7, batches: int = 500) -> list[list[str]]:
    """Per-batch cost of PartitionLog.append (fsync policy interval: no fsync in the loop) and
    of reading it back, plaintext and encrypted alternating, median of `repeats`: the only code
    encryption changes, measured without the cluster's noise."""
    keyring = directory / "storage-keyring.json"
    create_keyring(keyring)
    cipher = AtRestCipher(FileKeyring(keyring))
    rows = []
    for codec in (Codec.LZ4, Codec.NONE):
        batch = encode_batch([(f"key-{i}".encode(), value(i), (), int(time.time() * 1000))
                              for i in range(RECORDS_PER_BATCH)], codec=codec)
        timings: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for repeat in range(repeats):
            for encrypted in (False, True):
                config = dataclasses.replace(
                    LogConfig(fsync=FsyncPolicy.parse("interval:1h")),
                    encryption=cipher if encrypted else None)
                log = PartitionLog.open(directory / f"log-{codec.name}-{encrypted}-{repeat}",
                                        config)
                started = time.perf_counter()
                for _ in range(batches):
                    log.append(batch, term=1)
                appended = time.perf_counter()
                offset = 0
                while offset < log.log_end_offset:
                    data = log.read(offset, 1 << 20)
                    for _, header in iter_batches(data, verify=False):
                        offset = header.last_offset + 1
                done = time.perf_counter()
                log.close()
                timings[encrypted].append(((appended - started) / batches * 1e6,
                                           (done - appended) / batches * 1e6))
        plain_append, plain_read = (statistics.median(t[i] for t in timings[False])
                                    for i in (0, 1))
        sealed_append, sealed_read = (statistics.median(t[i] for t in timings[True])
                                      for i in (0, 1))
        rows.append([f"{codec.name.lower()} ({len(batch):,} B)", f"{plain_append:.1f}",
                     f"{sealed_append:.1f}", f"{plain_read:.1f}", f"{sealed_read:.1f}"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per burst")
    parser.add_argument("--rounds", type=int, default=4,
                        help="bursts per mode, workload and start order")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent produce requests")
    parser.add_argument("--storage-only", action="store_true",
                        help="only the storage costs (no cluster)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidelog-at-rest-bench-") as tmp:
        print(f"Storage alone, per batch of {RECORDS_PER_BATCH} x 1 KiB records, us "
              f"(median of 7; load {os.getloadavg()[0]:.1f})")
        print(render_table(["batch", "append plain", "append encrypted", "read plain",
                            "read encrypted"], storage_costs(Path(tmp))), flush=True)
        if args.storage_only:
            return 0
        phases = [phase(first, Path(tmp) / f"encrypted-first-{first}", args)
                  for first in (False, True)]
    rows = []
    for workload in ("broker lz4", "broker none", "client", "fetch"):
        ratios = []
        for (plain, sealed), first in zip(phases, ("plaintext", "encrypted"), strict=True):
            p, e = (statistics.median(m.rates[workload]) for m in (plain, sealed))
            pc, ec = (statistics.median(m.cpu_us[workload]) for m in (plain, sealed))
            ratios.append(e / p)
            rows.append([workload, f"{first} first", f"{p:,.0f}", f"{e:,.0f}", f"{e / p:.0%}",
                         f"{pc:.1f} / {ec:.1f}"])
        rows.append([workload, "both (geometric mean)", "", "",
                     f"{math.prod(ratios) ** 0.5:.0%}", ""])
    print()
    print(f"Produce 1 KiB records, acks=all, RF=3, fsync always, {PARTITIONS} partitions, two "
          f"3-node clusters side by side; median of {args.rounds} alternating "
          f"{args.seconds:g} s bursts per start order")
    print(render_table(["workload", "started", "plaintext msgs/s", "encrypted msgs/s",
                        "encrypted / plaintext", "node CPU us/record plain / encrypted"],
                       rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
