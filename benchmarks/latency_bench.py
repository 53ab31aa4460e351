"""One record at a time: produce latency on a real 3-node cluster, acks=all, RF=3, fsync always.

    .venv/bin/python benchmarks/latency_bench.py [--count 2000] [--producer] [--trace /tmp/tr]
        [--profile DIR] [--node-env KEY=VALUE] [--bootstrap H:P]

Sends one 100 B record, waits for the answer, sends the next (issue 16's first target): over
grpc.aio with a pre-encoded batch (the server's share: what benchmarks/README.md's round trace
follows), and with `--producer` also through the client's Producer with linger_ms=0.
`--trace PREFIX` puts benchmarks/round_trace on the nodes' PYTHONPATH with TIDELOG_ROUND_TRACE
set and prints benchmarks/round_trace_report.py's phase table after the run; `--profile DIR`
runs py-spy (raw, `--gil` unless `--profile-idle`) on every node during the grpc.aio run and
prints each node's top functions by own and inclusive samples. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import encode_batch

HERE = Path(__file__).resolve().parent


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


async def leader_of(bootstrap: str, topic: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = metadata(bootstrap.split(",")[0], [topic])
        nodes = {n.id: n.address for n in answer.nodes}
        partition = answer.topics[0].partitions[0] if answer.topics else None
        if partition is not None and partition.leader_id > 0:
            return nodes[partition.leader_id]
        await asyncio.sleep(0.2)
    raise TimeoutError("no leader")


async def raw_run(bootstraps: list[str], topic: str, count: int, warmup: int
                  ) -> list[list[float]]:
    """Pre-encoded one-record batches, one request in flight; latencies in ms per cluster.
    With several clusters the requests alternate between them (A, B, A, B...), so each sees
    the same load from the rest of the machine: an A/B comparison in one sitting."""
    batch = encode_batch([(b"k", b"x" * 100, (), int(time.time() * 1000))])
    stubs = []
    channels = []
    for bootstrap in bootstraps:
        async with grpc.aio.insecure_channel(bootstrap.split(",")[0]) as channel:
            await broker_pb2_grpc.BrokerStub(channel).CreateTopics(pb.CreateTopicsRequest(
                topics=[pb.TopicSpec(name=topic, partitions=1, replication_factor=3)],
                timeout_ms=30_000))
    await asyncio.sleep(3)  # preferred leaders settle
    for bootstrap in bootstraps:
        channels.append(grpc.aio.insecure_channel(await leader_of(bootstrap, topic)))
        stubs.append(broker_pb2_grpc.BrokerStub(channels[-1]))
    latencies: list[list[float]] = [[] for _ in bootstraps]
    request = pb.ProduceRequest(topic=topic, partition=0, batches=batch, timeout_ms=30_000)
    retries = 0
    for i in range(warmup + count):
        for k, out in enumerate(latencies):
            started = time.perf_counter()
            try:
                await stubs[k].Produce(request)
            except grpc.aio.AioRpcError as exc:  # leadership moved (a loaded machine)
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                retries += 1
                await asyncio.sleep(0.2)
                channels[k] = grpc.aio.insecure_channel(await leader_of(bootstraps[k], topic))
                stubs[k] = broker_pb2_grpc.BrokerStub(channels[k])
                continue
            if i >= warmup:
                out.append((time.perf_counter() - started) * 1000)
    if retries:
        print(f"{retries} requests met a leader change and were not counted")
    for channel in channels:
        await channel.close()
    return latencies


def producer_run(bootstrap: str, topic: str, count: int, warmup: int) -> list[float]:
    from tidelog.client import Producer

    latencies: list[float] = []
    with Producer(bootstrap, linger_ms=0) as producer:
        for i in range(warmup + count):
            started = time.perf_counter()
            producer.send(topic, b"x" * 100, partition=0).result(30)
            if i >= warmup:
                latencies.append((time.perf_counter() - started) * 1000)
    return latencies


@contextlib.contextmanager
def profiling(out_dir: Path | None, pids: list[int], idle: bool) -> Iterator[None]:
    if out_dir is None or not pids:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    for i, pid in enumerate(pids):
        command = [py_spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
                   "--nonblocking", "-o", str(out_dir / f"node{i + 1}.txt")]
        if not idle:
            command.append("--gil")
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for process in processes:
            process.send_signal(2)  # SIGINT: py-spy writes its file
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def top_functions(path: Path, n: int = 14) -> tuple[int, list[str], list[str]]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(FileNotFoundError), open(path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [f.strip() for f in stack.split(";") if f.strip()]
            frames = [f.replace("/work/main/", "").split("/site-packages/")[-1] for f in frames]
            frames = [f.split("/lib/python3.11/")[-1] for f in frames]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    def fmt(counter: Counter[str]) -> list[str]:
        return [f"{100 * c / max(total, 1):5.1f}%  {name}" for name, c in counter.most_common(n)]
    return total, fmt(own), fmt(inclusive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--producer", action="store_true", help="also the Producer, linger 0")
    parser.add_argument("--trace", help="round trace prefix (benchmarks/round_trace)")
    parser.add_argument("--profile", type=Path, help="py-spy every node into this directory")
    parser.add_argument("--profile-idle", action="store_true", help="samples off the GIL too")
    parser.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--bootstrap", help="use a running cluster")
    parser.add_argument("--ab-env", action="append", default=[], metavar="KEY=VALUE",
                        help="also start a second cluster with this added to its nodes' "
                             "environment (e.g. a sitecustomize that restores old code) and "
                             "alternate the requests between the two")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.node_env)
    if args.trace:
        env["TIDELOG_ROUND_TRACE"] = args.trace
        # after --node-env's entries: a sitecustomize there comes first and may load this one
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH", ""), str(HERE / "round_trace")) if p)
    with open("/proc/loadavg") as handle:
        print(f"load average at the start: {handle.read().split()[:3]}", flush=True)
    with contextlib.ExitStack() as stack:
        pids: list[int] = []
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tidelog-lat-"))
            cluster = stack.enter_context(LocalCluster(
                3, Path(tmp), extra_args=("--fsync", "always"), env=env))
            cluster.wait_healthy(60)
            bootstrap = cluster.bootstrap
            pids = [n.pid for n in cluster.nodes if n.pid]
        bootstraps = [bootstrap]
        if args.ab_env:
            b_env = {**env, **dict(item.split("=", 1) for item in args.ab_env)}
            tmp_b = stack.enter_context(tempfile.TemporaryDirectory(prefix="tidelog-lat-b-"))
            cluster_b = stack.enter_context(LocalCluster(
                3, Path(tmp_b), extra_args=("--fsync", "always"), env=b_env))
            cluster_b.wait_healthy(60)
            bootstraps.append(cluster_b.bootstrap)
        topic = f"latency-{int(time.time())}"
        with profiling(args.profile, pids, args.profile_idle):
            started = time.perf_counter()
            raw = asyncio.run(raw_run(bootstraps, topic, args.count, args.warmup))
            raw_s = time.perf_counter() - started
        rows = [("grpc.aio, pre-encoded", raw[0])]
        if args.ab_env:
            rows.append((f"same, B: {' '.join(args.ab_env)}", raw[1]))
        if args.producer:
            rows.append(("Producer, linger_ms=0",
                         producer_run(bootstrap, topic, args.count, args.warmup)))
        print(f"\none 100 B record at a time, acks=all, RF=3, fsync always ({args.count} each, "
              f"after {args.warmup} warm-up; grpc.aio run {raw_s:.1f} s)")
        print(f"{'client':40s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
        for name, values in rows:
            p = percentiles(values)
            print(f"{name:40s} {p['p50']:8.2f} {p['p90']:8.2f} {p['p99']:8.2f} {p['max']:8.2f}")
        if args.profile and pids:
            for i in range(len(pids)):
                total, own, inclusive = top_functions(args.profile / f"node{i + 1}.txt")
                print(f"\nnode{i + 1}: {total} samples; own:")
                print("\n".join(own))
                print("inclusive:")
                print("\n".join(inclusive))
    if args.trace:
        subprocess.run([sys.executable, str(HERE / "round_trace_report.py"), args.trace],
                       check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
