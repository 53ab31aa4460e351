"""Produce throughput with encryption at rest on (`tidelog node --encryption-keyring`) against
plaintext storage, in one run on one machine: the issue 13 goal is encrypted >= 80% of plaintext.

    .venv/bin/python benchmarks/at_rest_bench.py [--seconds 5] [--rounds 2] [--in-flight 16]
    .venv/bin/python benchmarks/at_rest_bench.py --storage-only

First the storage engine alone (append and read of the same batches, plaintext and encrypted
alternating: the only code encryption changes), then the clusters.

Each round starts a plaintext 3-node cluster, measures, stops it, then the same cluster with a
keyring (`tidelog keyring create`), so both share the machine's state; rounds alternate the
order to even out drift. acks=all, RF=3, fsync always, 12 partitions, 1 KiB records:

- broker lz4: pre-encoded lz4 batches of 100 records over grpc.aio, `--in-flight` requests
  (the node's cost: every replica seals each batch with AES-256-GCM before writing it);
- broker none: the same batches uncompressed (about 3x the bytes to encrypt per record);
- client: the Python `Producer` (default batching, lz4), what an application sees;
- fetch: every committed batch of the "broker lz4" topic read back from the leaders (each
  encrypted batch authenticated and decrypted on the way out).

Prints msgs/s per mode and the encrypted/plaintext ratio (best round of each), and the CPU time
the three node processes spent per record (user + system, from /proc; median round): on a
shared machine the throughput moves by 2x with other jobs' load, the CPU cost per record much
less, so the CPU ratio is the steadier measure of what encryption costs the nodes. Figures,
never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from tidelog.client import Admin, Producer
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.node.security.keyring import FileKeyring, create_keyring
from tidelog.node.storage import AtRestCipher, FsyncPolicy, LogConfig, PartitionLog
from tidelog.node.tables import render_table
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import Codec, encode_batch, iter_batches

PARTITIONS = 12
RECORD_BYTES = 1024
RECORDS_PER_BATCH = 100
OPTIONS = [("grpc.max_send_message_length", 64 << 20),
           ("grpc.max_receive_message_length", 64 << 20)]
WORKLOADS = ("broker lz4", "broker none", "client (Producer)", "fetch")


def value(i: int) -> bytes:
    body = json.dumps({"id": i, "user": f"user-{i % 997}", "event": "click"})
    return (body + "x" * RECORD_BYTES)[:RECORD_BYTES].encode()


def _leaders(cluster: LocalCluster, topic: str) -> dict[int, str]:
    answer = metadata(cluster.nodes[0].address, [topic])
    nodes = {n.id: n.address for n in answer.nodes}
    return {p.partition: nodes[p.leader_id] for p in answer.topics[0].partitions}


async def broker_produce(cluster: LocalCluster, topic: str, codec: Codec, seconds: float,
                         in_flight: int) -> tuple[float, int]:
    leaders = _leaders(cluster, topic)
    channels: dict[str, grpc.aio.Channel] = {}

    def stub(address: str) -> broker_pb2_grpc.BrokerStub:
        if address not in channels:
            channels[address] = grpc.aio.insecure_channel(address, options=OPTIONS)
        return broker_pb2_grpc.BrokerStub(channels[address])

    now = int(time.time() * 1000)
    batch = encode_batch([(f"key-{i}".encode(), value(i), (), now)
                          for i in range(RECORDS_PER_BATCH)], codec=codec)
    count = 0
    stop_at = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal count
        partition = k % PARTITIONS
        while time.monotonic() < stop_at:
            try:
                await stub(leaders[partition]).Produce(pb.ProduceRequest(
                    topic=topic, partition=partition, batches=batch, timeout_ms=30_000))
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                await asyncio.sleep(0.1)  # leadership moved; rare right after creation
                continue
            count += RECORDS_PER_BATCH

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    rate = count / (time.perf_counter() - started)
    for channel in channels.values():
        await channel.close()
    return rate, count


async def fetch_all(cluster: LocalCluster, topic: str) -> tuple[float, int]:
    records = 0
    started = time.perf_counter()
    for partition, address in _leaders(cluster, topic).items():
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


def client_produce(cluster: LocalCluster, topic: str, seconds: float) -> tuple[float, int]:
    payload = value(0)
    count = 0
    with Producer(cluster.bootstrap) as producer:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for i in range(1000):
                producer.send(topic, value=payload, key=str(i).encode())
            count += 1000
        producer.flush(60)
        return count / (time.perf_counter() - started), count


def node_cpu_s(cluster: LocalCluster) -> float:
    """User + system CPU seconds the cluster's node processes have used so far (Linux)."""
    total = 0
    for node in cluster.nodes:
        fields = Path(f"/proc/{node.pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


class Metered:
    """Rates and node CPU seconds per record of each workload of one cluster."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.rates: list[float] = []
        self.cpu_us_per_record: list[float] = []

    def run(self, workload: Callable[[], tuple[float, int]]) -> None:
        before = node_cpu_s(self.cluster)
        rate, records = workload()
        spent = node_cpu_s(self.cluster) - before
        self.rates.append(rate)
        self.cpu_us_per_record.append(spent / max(records, 1) * 1e6)


def measure(encrypted: bool, directory: Path, seconds: float,
            in_flight: int) -> tuple[list[float], list[float]]:
    extra: tuple[str, ...] = ()
    if encrypted:
        keyring = directory / "keyring.json"
        if not keyring.exists():
            directory.mkdir(parents=True, exist_ok=True)
            create_keyring(keyring)
        extra = ("--encryption-keyring", str(keyring))
    cluster = LocalCluster(3, directory / ("encrypted" if encrypted else "plain"),
                           extra_args=extra)
    with cluster:
        cluster.wait_healthy(60)
        with Admin(cluster.bootstrap) as admin:
            for name in ("lz4", "none", "client"):
                admin.create_topic(name, partitions=PARTITIONS, replication_factor=3)
        time.sleep(3)  # preferred leaders settle before measuring
        meter = Metered(cluster)
        meter.run(lambda: asyncio.run(
            broker_produce(cluster, "lz4", Codec.LZ4, seconds, in_flight)))
        meter.run(lambda: asyncio.run(
            broker_produce(cluster, "none", Codec.NONE, seconds, in_flight)))
        meter.run(lambda: client_produce(cluster, "client", seconds))
        meter.run(lambda: asyncio.run(fetch_all(cluster, "lz4")))
    return meter.rates, meter.cpu_us_per_record


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
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="plaintext+encrypted pairs")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent produce requests")
    parser.add_argument("--storage-only", action="store_true",
                        help="only the storage costs (no cluster)")
    args = parser.parse_args()
    if args.storage_only:
        with tempfile.TemporaryDirectory(prefix="tidelog-at-rest-bench-") as tmp:
            print(render_table(["batch", "append plain", "append encrypted", "read plain",
                                "read encrypted"], storage_costs(Path(tmp))))
        return 0
    results: dict[bool, list[tuple[list[float], list[float]]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="tidelog-at-rest-bench-") as tmp:
        print(f"Storage alone, per batch of {RECORDS_PER_BATCH} x 1 KiB records, us "
              f"(median of 7; load {os.getloadavg()[0]:.1f})")
        print(render_table(["batch", "append plain", "append encrypted", "read plain",
                            "read encrypted"], storage_costs(Path(tmp))), flush=True)
        print()
        for round_number in range(args.rounds):
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for encrypted in order:
                directory = Path(tmp) / f"round-{round_number}"
                results[encrypted].append(measure(encrypted, directory, args.seconds,
                                                  args.in_flight))
                rates, cpu = results[encrypted][-1]
                print(f"round {round_number + 1} {'encrypted' if encrypted else 'plaintext'} "
                      f"(load {os.getloadavg()[0]:.1f}): "
                      + ", ".join(f"{w} {r:,.0f} msgs/s {c:.1f} us/rec" for w, r, c in
                                  zip(WORKLOADS, rates, cpu, strict=True)), flush=True)
    rows = []
    for index, name in enumerate(WORKLOADS):
        plain = max(r[0][index] for r in results[False])
        sealed = max(r[0][index] for r in results[True])
        plain_cpu = statistics.median(r[1][index] for r in results[False])
        sealed_cpu = statistics.median(r[1][index] for r in results[True])
        rows.append([name, f"{plain:,.0f}", f"{sealed:,.0f}", f"{sealed / plain:.0%}",
                     f"{plain_cpu:.1f}", f"{sealed_cpu:.1f}", f"{plain_cpu / sealed_cpu:.0%}"])
    print()
    print(f"1 KiB records, acks=all, RF=3, fsync always, {PARTITIONS} partitions, 3 local "
          f"nodes, {args.in_flight} requests in flight; best of {args.rounds} rounds (msgs/s), "
          "median (node CPU us per record, all three nodes)")
    print(render_table(["workload", "plaintext msgs/s", "encrypted msgs/s", "ratio",
                        "plaintext CPU us/rec", "encrypted CPU us/rec",
                        "plaintext / encrypted CPU"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
