"""Client benchmarks: codec alone, producer throughput at several linger/batch settings, consumer.

    python benchmarks/client_bench.py                      # starts a 3-node local cluster
    python benchmarks/client_bench.py --bootstrap H:P,...  # uses a running cluster
    python benchmarks/client_bench.py --codec-only
    python benchmarks/client_bench.py --table --bootstrap H:P,...  # issue 16's producer table

``--table`` runs the issue-16 producer workloads through the public Producer API only (so the
same script measures an older client too, e.g. with PYTHONPATH pointing at an exported tree):
100 B and 1 KiB records with 1000 in flight (a window of futures, like NATS's publish_async) on
1 partition and keyed over 12, then one record at a time with the default settings and with
linger_ms=0. It prints one JSON line per figure (``--label`` tags them) and a table.

Figures are records/s (and MB/s of raw record values). Everything shares this machine's cores:
compare with peers measured in the same run (/work/shared/peers/BASELINES.md), not across machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def bench_codec(records_per_batch: int, value_bytes: int, seconds: float) -> None:
    from tidelog.proto import batch as codec

    value = b"x" * (value_bytes // 2) + bytes(range(256)) * (value_bytes // 512 + 1)
    value = value[:value_bytes]
    records = [(f"key-{i}".encode(), value, (), 1_700_000_000_000 + i)
               for i in range(records_per_batch)]
    for name, c in (("lz4", codec.Codec.LZ4), ("none", codec.Codec.NONE)):
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            encoded = codec.encode_batch(records, codec=c, producer_id=1, producer_epoch=0,
                                         base_sequence=0)
            n += 1
        enc_s = time.perf_counter() - started
        m, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            codec.decode_records(encoded)
            m += 1
        dec_s = time.perf_counter() - started
        print(f"codec {name:4} {records_per_batch} x {value_bytes} B: encode "
              f"{n * records_per_batch / enc_s:,.0f} rec/s, decode "
              f"{m * records_per_batch / dec_s:,.0f} rec/s, batch {len(encoded):,} B")


def bench_send_only(value_bytes: int, count: int) -> None:
    """Producer.send() cost without a cluster reply: the accumulator path alone."""
    from tidelog.client.accumulator import RecordAccumulator
    from tidelog.client.records import TopicPartition

    acc = RecordAccumulator(batch_size=128 * 1024, linger_ms=5, buffer_memory=1 << 34,
                            max_block_ms=1000, delivery_timeout_ms=120_000)
    tp = TopicPartition("t", 0)
    value = b"x" * value_bytes
    started = time.perf_counter()
    for _ in range(count):
        acc.append(tp, None, value, (), 1)
    elapsed = time.perf_counter() - started
    print(f"accumulator append alone: {count / elapsed:,.0f} rec/s")


def bench_producer(bootstrap: str, topic: str, *, count: int, value_bytes: int,
                   linger_ms: float, batch_size: int, partitions: int) -> float:
    from tidelog.client import Producer

    value = b"v" * value_bytes
    with Producer(bootstrap, linger_ms=linger_ms, batch_size=batch_size,
                  buffer_memory=64 * 1024 * 1024) as producer:
        producer.send(topic, b"warm-up").result(60)
        started = time.perf_counter()
        send = producer.send
        futures = [send(topic, value, partition=i % partitions) for i in range(count)]
        producer.flush(300)
        elapsed = time.perf_counter() - started
        failed = sum(1 for f in futures if f.exception(0) is not None)
        requests = producer.metrics()["requests_sent"]
    rate = count / elapsed
    print(f"produce {value_bytes} B linger_ms={linger_ms:<4} "
          f"batch_size={batch_size // 1024:>4} KiB:"
          f" {rate:>10,.0f} rec/s {rate * value_bytes / 1e6:7.1f} MB/s"
          f"  ({count / max(1, requests):,.0f} records/request, {failed} failed)")
    return rate


def bench_one_at_a_time(bootstrap: str, topic: str, count: int) -> None:
    from tidelog.client import Producer

    latencies = []
    with Producer(bootstrap, linger_ms=0) as producer:
        for _ in range(count):
            started = time.perf_counter()
            producer.send(topic, b"x" * 100, partition=0).result(30)
            latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    print(f"produce one at a time (acks=all): p50 {statistics.median(latencies):.2f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} ms")


def bench_consumer(bootstrap: str, topic: str, partitions: int, expected: int) -> None:
    from tidelog.client import Consumer, TopicPartition

    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        started = time.perf_counter()
        n = 0
        while n < expected and time.perf_counter() - started < 300:
            n += len(consumer.poll(timeout_s=1.0, max_records=5000))
        elapsed = time.perf_counter() - started
    print(f"consume from the beginning, {partitions} partitions: {n / elapsed:,.0f} rec/s "
          f"({n:,} records)")


def windowed_produce(bootstrap: str, topic: str, *, count: int, value_bytes: int,
                     keyed: bool, window: int = 1000) -> dict[str, float]:
    """`count` records through Producer.send with at most `window` unacknowledged (the oldest
    future is waited for before the next send): records/s and MB/s of values."""
    from tidelog.client import Producer

    value = (b"v" * value_bytes)
    keys = [b"key-%d" % i for i in range(997)] if keyed else [None]
    with Producer(bootstrap, buffer_memory=64 * 1024 * 1024) as producer:
        for p in range(len(producer.partitions_for(topic))):  # metadata + leaders warm
            producer.send(topic, b"warm-up", partition=p).result(60)
        send = producer.send
        futures = []
        started, cpu_started = time.perf_counter(), time.process_time()
        for i in range(count):
            if i >= window:
                futures[i - window].result(60)
            futures.append(send(topic, value, key=keys[i % len(keys)]))
        producer.flush(300)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started  # every thread of this client process
        failed = sum(1 for f in futures if f.exception(0) is not None)
        requests = producer.metrics()["requests_sent"]
    return {"records_s": count / elapsed, "mb_s": count * value_bytes / elapsed / 1e6,
            "records_per_request": count / max(1, requests), "failed": failed,
            "client_cpu_us_per_record": cpu_s / count * 1e6}


def one_at_a_time(bootstrap: str, topic: str, count: int, **options: float) -> dict[str, float]:
    """send, wait for the acknowledgement, repeat: p50/p99 in ms."""
    from tidelog.client import Producer

    latencies = []
    with Producer(bootstrap, **options) as producer:  # type: ignore[arg-type]
        producer.send(topic, b"warm-up", partition=0).result(60)
        for _ in range(count):
            started = time.perf_counter()
            producer.send(topic, b"x" * 100, partition=0).result(30)
            latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {"p50_ms": statistics.median(latencies),
            "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)], "records_s":
            count / (sum(latencies) / 1000)}


def producer_table(bootstrap: str, *, count: int, label: str, repeat: int = 1) -> None:
    """Issue 16's client-side producer figures (see the module docstring)."""
    from tidelog.client import Admin

    suffix = uuid.uuid4().hex[:6]
    one, twelve = f"bench1-{suffix}", f"bench12-{suffix}"
    with Admin(bootstrap) as admin:
        admin.create_topic(one, partitions=1, replication_factor=3)
        admin.create_topic(twelve, partitions=12, replication_factor=3)
    cases = [
        ("100 B, 1000 in flight, 1 partition", lambda: windowed_produce(
            bootstrap, one, count=count, value_bytes=100, keyed=False)),
        ("100 B, 1000 in flight, keyed over 12", lambda: windowed_produce(
            bootstrap, twelve, count=count, value_bytes=100, keyed=True)),
        ("1 KiB, 1000 in flight, 1 partition", lambda: windowed_produce(
            bootstrap, one, count=count // 2, value_bytes=1024, keyed=False)),
        ("1 KiB, 1000 in flight, keyed over 12", lambda: windowed_produce(
            bootstrap, twelve, count=count // 2, value_bytes=1024, keyed=True)),
        ("100 B one at a time, defaults", lambda: one_at_a_time(bootstrap, one, 300)),
        ("100 B one at a time, linger_ms=0", lambda: one_at_a_time(
            bootstrap, one, 300, linger_ms=0)),
    ]
    print(f"| {label} | records/s | MB/s | records/request | client CPU µs/record | p50 ms "
          "| p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for _ in range(repeat):
        for name, run in cases:
            result = run()
            print(json.dumps({"label": label, "case": name, **result}), file=sys.stderr)
            print(f"| {name} | {result['records_s']:,.0f} | {result.get('mb_s', 0):.1f} | "
                  f"{result.get('records_per_request', 0):,.0f} | "
                  f"{result.get('client_cpu_us_per_record', 0):.1f} | "
                  f"{result.get('p50_ms', 0):.2f} | {result.get('p99_ms', 0):.2f} |",
                  flush=True)


@contextlib.contextmanager
def cluster(bootstrap: str | None) -> Iterator[str | None]:
    if bootstrap:
        yield bootstrap
        return
    try:
        from tidelog.node.local_cluster import LocalCluster
    except ImportError:
        yield None
        return
    data = Path(tempfile.mkdtemp(prefix="tidelog-bench-"))
    try:
        with LocalCluster(3, data) as local:
            local.wait_healthy(60)
            yield local.bootstrap
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--codec-only", action="store_true")
    parser.add_argument("--count", type=int, default=200_000, help="records per producer run")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--table", action="store_true",
                        help="only issue 16's producer table (see the docstring)")
    parser.add_argument("--label", default="this client")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    if args.table:
        with cluster(args.bootstrap) as bootstrap:
            assert bootstrap is not None, "--table needs --bootstrap or tidelog.node"
            producer_table(bootstrap, count=args.count, label=args.label, repeat=args.repeat)
        return 0

    bench_codec(1000, args.value_bytes, 1.0)
    bench_send_only(args.value_bytes, 200_000)
    if args.codec_only:
        print("skipped: producer and consumer (--codec-only)")
        return 0
    with cluster(args.bootstrap) as bootstrap:
        if bootstrap is None:
            print("skipped: producer and consumer (no --bootstrap and no tidelog.node)")
            return 0
        from tidelog.client import Admin

        topic = f"bench-{uuid.uuid4().hex[:6]}"
        with Admin(bootstrap) as admin:
            admin.create_topic(topic, partitions=args.partitions, replication_factor=3)
        total = 0
        for linger_ms, batch_kib in ((0, 16), (5, 128), (20, 512)):
            bench_producer(bootstrap, topic, count=args.count, value_bytes=args.value_bytes,
                           linger_ms=linger_ms, batch_size=batch_kib * 1024,
                           partitions=args.partitions)
            total += args.count + 1  # + its warm-up record
        bench_one_at_a_time(bootstrap, topic, 300)
        total += 300
        bench_consumer(bootstrap, topic, args.partitions, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
