"""End-to-end broker benchmark: a real 3-node cluster on 127.0.0.1, acks=all, RF=3, fsync always.

    .venv/bin/python benchmarks/e2e_bench.py [--seconds 5] [--in-flight 16] [--bootstrap H:P]

Produces pre-encoded lz4 batches over grpc.aio (so it measures the brokers, not client encoding)
with 100 B and 1 KiB records to 1 and 12 partitions, then one-record-at-a-time latency, then reads
everything back. Prints msgs/s, MB/s and latency percentiles. Figures, never assertions: absolute
numbers drift between machines; compare runs made on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.node.tables import render_table
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import encode_batch, iter_batches


def json_like_value(size: int, i: int) -> bytes:
    body = json.dumps({"id": i, "user": f"user-{i % 997}", "event": "click", "pad": ""})
    return (body + "x" * max(0, size - len(body)))[:size].encode()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> broker_pb2_grpc.BrokerStub:
        if address not in self.channels:
            self.channels[address] = grpc.aio.insecure_channel(
                address, options=[("grpc.max_send_message_length", 64 << 20),
                                  ("grpc.max_receive_message_length", 64 << 20)])
        return broker_pb2_grpc.BrokerStub(self.channels[address])

    async def create(self, topic: str, partitions: int) -> dict[int, str]:
        first = self.bootstrap.split(",")[0]
        await self.stub(first).CreateTopics(pb.CreateTopicsRequest(topics=[pb.TopicSpec(
            name=topic, partitions=partitions, replication_factor=3)], timeout_ms=30_000))
        await asyncio.sleep(3)  # let preferred leaders settle before measuring
        return await self.leaders(topic)

    async def leaders(self, topic: str) -> dict[int, str]:
        first = self.bootstrap.split(",")[0]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = metadata(first, [topic])
            nodes = {n.id: n.address for n in answer.nodes}
            leaders = {p.partition: p.leader_id for p in answer.topics[0].partitions}
            if all(v > 0 for v in leaders.values()):
                return {p: nodes[n] for p, n in leaders.items()}
            await asyncio.sleep(0.2)
        raise TimeoutError("no leaders")

    async def produce(self, topic: str, leaders: dict[int, str], batch: bytes, records: int,
                      seconds: float, in_flight: int) -> dict[str, float]:
        latencies: list[float] = []
        count = 0
        stop_at = time.monotonic() + seconds

        retries = 0

        async def worker(k: int) -> None:
            nonlocal count, retries
            partition = k % len(leaders)
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    await self.stub(leaders[partition]).Produce(pb.ProduceRequest(
                        topic=topic, partition=partition, batches=batch, timeout_ms=30_000))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    retries += 1  # leadership moved: look the leader up again
                    await asyncio.sleep(0.1)
                    leaders.update(await self.leaders(topic))
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                count += records

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(in_flight)))
        elapsed = time.perf_counter() - started
        return {"msgs_s": count / elapsed, "requests": len(latencies), "retries": retries,
                "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99)}

    async def fetch_all(self, topic: str, leaders: dict[int, str]) -> tuple[float, int]:
        total_bytes = 0
        total_records = 0
        started = time.perf_counter()
        for partition, address in leaders.items():
            offset = 0
            stub = self.stub(address)
            while True:
                reply = await stub.Fetch(pb.FetchRequest(partitions=[pb.FetchPartition(
                    topic=topic, partition=partition, offset=offset, max_bytes=4 << 20)],
                    max_wait_ms=0, max_bytes=4 << 20))
                data = reply.partitions[0].batches
                if not data:
                    break
                total_bytes += len(data)
                for _, header in iter_batches(data, verify=False):
                    if not header.is_control:
                        total_records += header.record_count
                    offset = header.last_offset + 1
        return total_records / (time.perf_counter() - started), total_bytes


async def run(bootstrap: str, seconds: float, in_flight: int) -> None:
    bench = Bench(bootstrap)
    rows = []
    fetch_rows = []
    for size in (100, 1024):
        records = 1000 if size == 100 else 100
        now = int(time.time() * 1000)
        batch = encode_batch([(f"key-{i}".encode(), json_like_value(size, i), (), now)
                              for i in range(records)])
        for partitions in (1, 12):
            topic = f"bench-{size}b-{partitions}p-{int(time.time())}"
            leaders = await bench.create(topic, partitions)
            result = await bench.produce(topic, leaders, batch, records, seconds, in_flight)
            mb_s = result["msgs_s"] * size / 1e6
            rows.append([f"{size} B", partitions, f"{records}/batch", in_flight,
                         f"{result['msgs_s']:,.0f}", f"{mb_s:,.1f}",
                         f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}",
                         result["retries"]])
            print(f"  produced {size} B x {partitions} partitions", flush=True)
            if partitions == 12:
                rate, nbytes = await bench.fetch_all(topic, leaders)
                fetch_rows.append([f"{size} B", partitions, f"{rate:,.0f}",
                                   f"{nbytes / 1e6:,.1f}"])
    topic = f"bench-latency-{int(time.time())}"
    leaders = await bench.create(topic, 1)
    single = encode_batch([(b"k", json_like_value(100, 0), (), int(time.time() * 1000))])
    one = await bench.produce(topic, leaders, single, 1, seconds, 1)
    rows.append(["100 B", 1, "1/batch", 1, f"{one['msgs_s']:,.0f}",
                 f"{one['msgs_s'] * 100 / 1e6:,.2f}", f"{one['p50_ms']:.2f}",
                 f"{one['p99_ms']:.2f}", one["retries"]])
    print()
    print("Produce, acks=all, RF=3, fsync always, 3 local nodes (pre-encoded lz4 batches)")
    print(render_table(["record", "partitions", "batch", "in flight", "msgs/s", "MB/s",
                        "p50 ms", "p99 ms", "retries"], rows))
    print()
    print("Fetch from the beginning (committed batches, one partition at a time)")
    print(render_table(["record", "partitions", "msgs/s", "MB read"], fetch_rows))
    for channel in bench.channels.values():
        await channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent produce requests")
    parser.add_argument("--bootstrap", help="use a running cluster instead of starting one")
    parser.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                        help="added to every started node's environment (e.g. a PYTHONPATH "
                             "with a sitecustomize for an A/B run)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.node_env)
    if args.bootstrap:
        asyncio.run(run(args.bootstrap, args.seconds, args.in_flight))
        return 0
    with tempfile.TemporaryDirectory(prefix="tidelog-bench-") as tmp:
        cluster = LocalCluster(3, Path(tmp), env=env)
        with cluster:
            cluster.wait_healthy(60)
            print(f"started 3 nodes: {cluster.bootstrap}", flush=True)
            asyncio.run(run(cluster.bootstrap, args.seconds, args.in_flight))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
