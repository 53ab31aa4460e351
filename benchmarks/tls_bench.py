"""Produce throughput with TLS on (both listeners; clients verify the nodes, peers mTLS) against
plaintext, in one run on one machine: the issue 13 goal is TLS >= 80% of plaintext.

    .venv/bin/python benchmarks/tls_bench.py [--seconds 5] [--rounds 2] [--in-flight 16]

Each round starts a plaintext 3-node cluster, measures, stops it, then the same with TLS
(certificates from `tidelog certs dev`), so the two share the machine's state; rounds alternate
to even out drift. Two workloads, acks=all, RF=3, fsync always, 12 partitions:

- broker: pre-encoded lz4 batches of 100 x 1 KiB records over grpc.aio, `--in-flight` requests
  (the node's cost: TLS on the client connection and on every replication stream);
- client: the Python `Producer` (1 KiB records, default batching), what an application sees.

Prints msgs/s per mode and the TLS/plaintext ratio (best round of each). Figures, never
assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
from tidelog.client import Admin, Producer
from tidelog.client.security import ClientSecurity, channel_credentials
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.node.tables import render_table
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import encode_batch

PARTITIONS = 12
RECORD_BYTES = 1024
RECORDS_PER_BATCH = 100
OPTIONS = [("grpc.max_send_message_length", 64 << 20),
           ("grpc.max_receive_message_length", 64 << 20)]


def value(i: int) -> bytes:
    body = json.dumps({"id": i, "user": f"user-{i % 997}", "event": "click"})
    return (body + "x" * RECORD_BYTES)[:RECORD_BYTES].encode()


async def broker_produce(cluster: LocalCluster, security: ClientSecurity | None, topic: str,
                         seconds: float, in_flight: int) -> float:
    answer = metadata(cluster.nodes[0].address, [topic], security=cluster.security)
    nodes = {n.id: n.address for n in answer.nodes}
    leaders = {p.partition: nodes[p.leader_id] for p in answer.topics[0].partitions}
    channels: dict[str, grpc.aio.Channel] = {}

    def stub(address: str) -> broker_pb2_grpc.BrokerStub:
        if address not in channels:
            channels[address] = (
                grpc.aio.insecure_channel(address, options=OPTIONS) if security is None else
                grpc.aio.secure_channel(address, channel_credentials(security), options=OPTIONS))
        return broker_pb2_grpc.BrokerStub(channels[address])

    now = int(time.time() * 1000)
    batch = encode_batch([(f"key-{i}".encode(), value(i), (), now)
                          for i in range(RECORDS_PER_BATCH)])
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
    return rate


def client_produce(cluster: LocalCluster, security: ClientSecurity | None, topic: str,
                   seconds: float) -> float:
    payload = value(0)
    count = 0
    with Producer(cluster.bootstrap, security=security) as producer:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for i in range(1000):
                producer.send(topic, value=payload, key=str(i).encode())
            count += 1000
        producer.flush(60)
        return count / (time.perf_counter() - started)


def measure(tls: bool, directory: Path, seconds: float, in_flight: int) -> tuple[float, float]:
    cluster = LocalCluster(3, directory / ("tls" if tls else "plain"),
                           tls_dir=directory / "certs" if tls else None)
    security = None
    if cluster.security is not None:
        security = ClientSecurity(tls_ca=cluster.security.tls_ca)  # server verified, no mTLS
    with cluster:
        cluster.wait_healthy(60)
        with Admin(cluster.bootstrap, security=security) as admin:
            for name in ("broker", "client"):
                admin.create_topic(name, partitions=PARTITIONS, replication_factor=3)
        time.sleep(3)  # preferred leaders settle before measuring
        broker = asyncio.run(broker_produce(cluster, security, "broker", seconds, in_flight))
        client = client_produce(cluster, security, "client", seconds)
    return broker, client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="plaintext+TLS pairs")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent produce requests")
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="tidelog-tls-bench-") as tmp:
        for round_number in range(args.rounds):
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for tls in order:
                directory = Path(tmp) / f"round-{round_number}"
                results[tls].append(measure(tls, directory, args.seconds, args.in_flight))
                broker, client = results[tls][-1]
                print(f"round {round_number + 1} {'TLS' if tls else 'plaintext'}: broker "
                      f"{broker:,.0f} msgs/s, client {client:,.0f} msgs/s", flush=True)
    rows = []
    for index, name in ((0, f"broker (pre-encoded, {args.in_flight} in flight)"),
                        (1, "client (Producer)")):
        plain = max(r[index] for r in results[False])
        tls = max(r[index] for r in results[True])
        rows.append([name, f"{plain:,.0f}", f"{tls:,.0f}", f"{tls / plain:.0%}",
                     f"{plain * RECORD_BYTES / 1e6:,.1f} / {tls * RECORD_BYTES / 1e6:,.1f}"])
    print()
    print(f"Produce 1 KiB records, acks=all, RF=3, fsync always, {PARTITIONS} partitions, "
          f"3 local nodes; best of {args.rounds} rounds")
    print(render_table(["workload", "plaintext msgs/s", "TLS msgs/s", "TLS / plaintext",
                        "MB/s plain / TLS"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
