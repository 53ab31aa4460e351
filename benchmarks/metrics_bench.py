"""Produce throughput and latency with the metrics endpoint on (scraped every second) against off,
in one run on one machine: the issue 14 goal is metrics on >= 95% of metrics off.

    .venv/bin/python benchmarks/metrics_bench.py [--requests 600] [--rounds 8] [--in-flight 16]
        [--scrape-interval 1] [--output table|json]                                    (~3 min)

Two 3-node clusters run side by side, one with `--metrics-listen off` and one with the default
endpoint. A thread here scrapes GET /metrics of every node of the "on" cluster every
`--scrape-interval` seconds while that cluster is under load (what a Prometheus server does;
scraping while the other cluster is measured would only load the machine both share). Each round
sends the same bounded load to each cluster in turn (ABBA order, so drift and other jobs on the
machine hit both alike): `--requests` Produce calls of one pre-encoded lz4 batch of 100 x 1 KiB
records (benchmarks/produce_load.py's batch), acks=all, RF=3, fsync always, 12 partitions,
`--in-flight` at a time over grpc.aio. Reported per mode: the median throughput over rounds, and
p50/p99 of every request's latency as the client saw it; the verdict is the ratio of the medians.

With the endpoint off, the hot-path counters still count (they are plain module objects); what
"off" saves is the HTTP thread, the scrapes and the scrape-time collectors that run on the event
loop. So the in-process cost of the hot-path instruments per request is measured separately
(`hot path`, microseconds per produce and per fsync), to set beside the request's own cost.
Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from produce_load import (  # benchmarks/produce_load.py
    PARTITIONS,
    RECORDS_PER_BATCH,
    aio_channel,
    leaders,
    value,
)
from tidelog.client import Admin
from tidelog.node.local_cluster import LocalCluster
from tidelog.node.tables import render_table
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import Codec, encode_batch

TOPIC = "metered"
MODES = ("off", "on")


@dataclass
class Mode:
    name: str
    cluster: LocalCluster
    rates: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ModeResult:
    mode: str
    median_records_per_s: float
    rates_records_per_s: list[float]
    p50_ms: float
    p99_ms: float
    requests: int


class Scraper:
    """GET /metrics of each address every `interval_s` while `active` is set; counts scrapes,
    bytes and the time each took (the node's cost of a scrape, seen from outside)."""

    def __init__(self, addresses: list[str], interval_s: float) -> None:
        self.addresses = addresses
        self.interval_s = interval_s
        self.active = threading.Event()
        self.scrapes = 0
        self.failures = 0
        self.size_bytes = 0
        self.durations_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.active.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.active.wait()
            if self._stop.is_set():
                return
            due = time.monotonic() + self.interval_s
            for address in self.addresses:
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
                        self.size_bytes = len(reply.read())
                except OSError:
                    self.failures += 1
                    continue
                self.durations_s.append(time.perf_counter() - started)
                self.scrapes += 1
            self._stop.wait(max(0.0, due - time.monotonic()))


def start(name: str, directory: Path) -> Mode:
    extra = ("--metrics-listen", "off") if name == "off" else ()
    cluster = LocalCluster(3, directory / name, extra_args=extra)
    cluster.start()
    try:
        cluster.wait_healthy(60)
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    except BaseException:
        cluster.stop()
        raise
    return Mode(name, cluster)


async def bounded_produce(cluster: LocalCluster, requests: int, in_flight: int
                          ) -> tuple[float, list[float]]:
    """`requests` Produce calls (acks=all) of one 100-record batch, `in_flight` at a time:
    (records/s, each answered request's latency in seconds)."""
    by_partition = leaders(cluster, TOPIC)
    channels = {address: aio_channel(address, None) for address in set(by_partition.values())}
    stubs = {p: broker_pb2_grpc.BrokerStub(channels[a]) for p, a in by_partition.items()}
    now = int(time.time() * 1000)
    batch = encode_batch([(f"key-{i}".encode(), value(i), (), now)
                          for i in range(RECORDS_PER_BATCH)], codec=Codec.LZ4)
    remaining = requests
    latencies: list[float] = []

    async def worker(k: int) -> None:
        nonlocal remaining
        partition = k % PARTITIONS
        while remaining > 0:
            remaining -= 1
            sent = time.perf_counter()
            try:
                await stubs[partition].Produce(pb.ProduceRequest(
                    topic=TOPIC, partition=partition, acks=pb.ACKS_ALL, batches=batch,
                    timeout_ms=30_000))
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                remaining += 1  # leadership moved: the request is sent again
                await asyncio.sleep(0.1)
                continue
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    elapsed = time.perf_counter() - started
    for channel in channels.values():
        await channel.close()
    return len(latencies) * RECORDS_PER_BATCH / elapsed, latencies


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def hot_path_cost(iterations: int = 20_000) -> dict[str, float]:
    """Microseconds the hot-path instruments add, in this process: one produce request through
    observed_produce + record_produced + record_committed (against the bare call), and one
    observe of an fsync's duration and batch count."""
    from tidelog.node.metrics.produce import (
        observed_produce,
        record_committed,
        record_produced,
    )
    from tidelog.node.metrics.storage import FSYNC_BATCHES, FSYNC_SECONDS

    request = pb.ProduceRequest(topic="t", partition=0, acks=pb.ACKS_ALL)
    response = pb.ProduceResponse()

    async def answer(_: pb.ProduceRequest) -> pb.ProduceResponse:
        return response

    async def bare() -> float:
        started = time.perf_counter()
        for _ in range(iterations):
            await answer(request)
        return time.perf_counter() - started

    async def instrumented() -> float:
        started = time.perf_counter()
        for _ in range(iterations):
            proposed = time.perf_counter()
            await observed_produce(answer, request)
            record_committed(proposed)
            record_produced("t", 100, 4096)
        return time.perf_counter() - started

    bare_s = min(asyncio.run(bare()) for _ in range(3))
    instrumented_s = min(asyncio.run(instrumented()) for _ in range(3))
    started = time.perf_counter()
    for _ in range(iterations):
        begun = time.perf_counter()
        FSYNC_SECONDS.observe(time.perf_counter() - begun)
        FSYNC_BATCHES.observe(8)
    fsync_s = time.perf_counter() - started
    return {"produce_us": 1e6 * (instrumented_s - bare_s) / iterations,
            "fsync_us": 1e6 * fsync_s / iterations}


def run(args: argparse.Namespace) -> dict[str, object]:
    modes: dict[str, Mode] = {}
    with tempfile.TemporaryDirectory(prefix="tidelog-metrics-bench-") as tmp:
        scraper: Scraper | None = None
        try:
            for name in MODES:
                modes[name] = start(name, Path(tmp))
            scraper = Scraper([n.metrics_address for n in modes["on"].cluster.nodes],
                              args.scrape_interval)
            scraper.start()
            time.sleep(3)  # preferred leaders settle before measuring
            for mode in modes.values():  # warm-up: connections, first segment files
                asyncio.run(bounded_produce(mode.cluster, args.requests // 4, args.in_flight))
            for round_number in range(args.rounds):
                order = list(MODES) if round_number % 2 == 0 else list(reversed(MODES))
                for name in order:
                    mode = modes[name]
                    if name == "on":
                        scraper.active.set()
                    rate, latencies = asyncio.run(
                        bounded_produce(mode.cluster, args.requests, args.in_flight))
                    scraper.active.clear()
                    mode.rates.append(rate)
                    mode.latencies_s.extend(latencies)
                if args.output == "table":
                    print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(
                        f"{name} {modes[name].rates[-1]:,.0f} records/s" for name in MODES),
                        flush=True)
        finally:
            if scraper is not None:
                scraper.stop()
            for mode in modes.values():
                mode.cluster.stop()
    results = [ModeResult(mode=m.name, median_records_per_s=statistics.median(m.rates),
                          rates_records_per_s=[round(r) for r in m.rates],
                          p50_ms=percentile_ms(m.latencies_s, 0.50),
                          p99_ms=percentile_ms(m.latencies_s, 0.99),
                          requests=len(m.latencies_s)) for m in modes.values()]
    off, on = results
    assert scraper is not None
    return {
        "workload": {"requests_per_round": args.requests, "rounds": args.rounds,
                     "in_flight": args.in_flight, "records_per_request": RECORDS_PER_BATCH,
                     "record_bytes": 1024, "partitions": PARTITIONS, "acks": "all", "rf": 3,
                     "scrape_interval_s": args.scrape_interval},
        "results": [asdict(r) for r in results],
        "ratio_on_off": on.median_records_per_s / off.median_records_per_s,
        "scrapes": {"count": scraper.scrapes, "failures": scraper.failures,
                    "bytes_last": scraper.size_bytes,
                    "p50_ms": percentile_ms(scraper.durations_s, 0.50),
                    "p99_ms": percentile_ms(scraper.durations_s, 0.99)},
        "hot_path_us": hot_path_cost(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600,
                        help="Produce calls per cluster per round (100 records each)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (each: off and on, ABBA)")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent produce requests")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between scrapes of the 'on' cluster's nodes")
    parser.add_argument("--output", choices=["table", "json"], default="table")
    args = parser.parse_args()
    report = run(args)
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return 0
    rows = [[r["mode"], f"{r['median_records_per_s']:,.0f}", f"{r['p50_ms']:.1f}",
             f"{r['p99_ms']:.1f}", str(r["requests"])] for r in report["results"]]
    scrapes = report["scrapes"]
    hot = report["hot_path_us"]
    print()
    print(f"Produce 100 x 1 KiB lz4 batches, acks=all, RF=3, {PARTITIONS} partitions, "
          f"{args.in_flight} in flight, {args.requests} requests per cluster per round, "
          f"{args.rounds} rounds ABBA; two 3-node clusters side by side")
    print(render_table(["metrics", "median records/s", "p50 ms", "p99 ms", "requests"], rows))
    print(f"on / off: {report['ratio_on_off']:.1%}  (goal >= 95%)")
    print(f"scrapes: {scrapes['count']} ({scrapes['failures']} failed), "
          f"{scrapes['bytes_last']:,} bytes each, p50 {scrapes['p50_ms']:.1f} ms, "
          f"p99 {scrapes['p99_ms']:.1f} ms")
    print(f"hot path, in process: {hot['produce_us']:.1f} us per produce request, "
          f"{hot['fsync_us']:.1f} us per fsync")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
