"""Storage engine figures: append, read, group commit and codec throughput, next to the raw disk.

    .venv/bin/python benchmarks/storage_bench.py [--dir DIR] [--seconds S] [--seed N]

Prints a table; asserts nothing about timings (they depend on the machine). The raw disk rate is
measured in the same run on the same directory: sequential os.write of the same batch bytes with
an fdatasync after each (the `always` baseline) or every 100 ms (the `interval` baseline), so the
ratios compare the engine with what the disk can do, not with a number from another day.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tidelog.node.storage import FsyncPolicy, LogConfig, PartitionLog
from tidelog.proto.batch import Codec, decode_records, encode_batch, validate_batch

BATCH_BYTES_TARGET = 64 * 1024
RECORD_BYTES = 1024
GROUP_THREADS = 16


def json_record(rng: random.Random, i: int) -> bytes:
    """About 1 KiB of JSON with realistic variety (ids, numbers, words), so lz4 gets ~2-4x."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    doc: dict[str, object] = {
        "id": f"{rng.getrandbits(64):016x}", "seq": i, "ts": 1_700_000_000_000 + i,
        "user": {"name": rng.choice(words) + str(rng.randint(0, 9999)),
                 "score": rng.random()},
        "tags": [rng.choice(words) for _ in range(6)],
    }
    filler = []
    while len(json.dumps(doc)) + len(" ".join(filler)) < RECORD_BYTES - 30:
        filler.append(rng.choice(words) + f"{rng.randint(0, 99999)}")
    doc["text"] = " ".join(filler)
    return json.dumps(doc).encode()[:RECORD_BYTES].ljust(RECORD_BYTES, b" ")


def make_batches(rng: random.Random, count: int) -> tuple[list[bytes], int]:
    """`count` lz4 batches of ~64 KiB (encoded) each; returns them and records per batch."""
    records = [(None, json_record(rng, i), (), 1_700_000_000_000 + i) for i in range(64)]
    per_batch = 64
    while len(encode_batch(records[:per_batch])) < BATCH_BYTES_TARGET:
        records.append((None, json_record(rng, len(records)), (), 1_700_000_000_000))
        per_batch += 1
    batches = []
    for b in range(count):
        rng.shuffle(records)
        batches.append(encode_batch(records[:per_batch], codec=Codec.LZ4, term=0) if b == 0
                       else encode_batch(records[:per_batch]))
    return batches, per_batch


def timed(seconds: float, step: Callable[[], int]) -> tuple[float, int, int]:
    """Run step() until `seconds` elapse; returns (elapsed s, calls, bytes)."""
    start = time.perf_counter()
    calls = total = 0
    while time.perf_counter() - start < seconds:
        total += step()
        calls += 1
    return time.perf_counter() - start, calls, total


def raw_disk(directory: Path, batches: list[bytes], seconds: float, *,
             sync_every_ms: float | None) -> tuple[float, float]:
    """(MB/s, writes/s) of sequential writes of the batch bytes with fdatasync per write or
    per interval."""
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    i = 0
    last_sync = time.perf_counter()

    def step() -> int:
        nonlocal i, last_sync
        data = batches[i % len(batches)]
        i += 1
        os.write(fd, data)
        if sync_every_ms is None:
            os.fdatasync(fd)
        elif (time.perf_counter() - last_sync) * 1000 >= sync_every_ms:
            os.fdatasync(fd)
            last_sync = time.perf_counter()
        return len(data)

    try:
        elapsed, calls, total = timed(seconds, step)
        os.fdatasync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return total / elapsed / 1e6, calls / elapsed


def engine_append(directory: Path, batches: list[bytes], seconds: float,
                  policy: FsyncPolicy) -> tuple[float, float, PartitionLog]:
    log = PartitionLog.open(directory, LogConfig(fsync=policy))
    i = 0

    def step() -> int:
        nonlocal i
        data = batches[i % len(batches)]
        i += 1
        log.append(data)
        if log.needs_sync(time.time_ns() // 1_000_000):
            log.sync()
        return len(data)

    elapsed, calls, total = timed(seconds, step)
    log.sync()
    return total / elapsed / 1e6, calls / elapsed, log


def engine_read(log: PartitionLog, seconds: float) -> float:
    offset = log.log_start_offset
    end = log.log_end_offset

    def step() -> int:
        nonlocal offset
        data = log.read(offset, 1024 * 1024)
        if not data:
            offset = log.log_start_offset
            return 0
        last = 0
        pos = 0
        while pos < len(data):  # walk to the next offset without the codec's verify pass
            length = int.from_bytes(data[pos + 8: pos + 12], "big")
            last = int.from_bytes(data[pos: pos + 8], "big") + \
                int.from_bytes(data[pos + 31: pos + 35], "big")
            pos += 12 + length
        offset = last + 1 if last + 1 < end else log.log_start_offset
        return len(data)

    elapsed, _, total = timed(seconds, step)
    return total / elapsed / 1e6


def group_commit(directory: Path, batch: bytes, seconds: float, threads: int,
                 fsync_delay_ms: float = 0.0) -> tuple[float, float]:
    """(batches/s, batches per fsync) with `threads` appenders each doing append + sync (ack
    only when durable). fsync_delay_ms > 0 adds a sleep to every fsync: a slower disk."""
    from tidelog.node.storage import OsFileSystem

    class SlowDisk(OsFileSystem):
        def fdatasync(self, fd: int) -> None:
            time.sleep(fsync_delay_ms / 1000)
            super().fdatasync(fd)

    log = PartitionLog.open(directory, LogConfig(),
                            fs=SlowDisk() if fsync_delay_ms else OsFileSystem())
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def appender(t: int) -> None:
        while time.perf_counter() < stop:
            info = log.append(batch)
            durable = log.sync()
            assert durable >= info.log_end_offset
            counts[t] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=appender, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    per_fsync = sum(counts) / max(1, log.sync_count)
    log.close()
    return sum(counts) / elapsed, per_fsync


def group_commit_async(directory: Path, batch: bytes, seconds: float,
                       appenders: int) -> tuple[float, float]:
    """The node's own path: `appenders` asyncio tasks on one event loop, each appending and then
    awaiting tidelog.node.group_commit.GroupCommitter.sync (fsyncs in an executor thread, one at a
    time, each covering every append made while the previous one ran)."""
    import asyncio

    from tidelog.node.group_commit import GroupCommitter

    log = PartitionLog.open(directory, LogConfig())
    committer = GroupCommitter()
    count = 0

    async def appender() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            info = log.append(batch)
            await committer.sync(log)
            assert log.durable_end_offset >= info.log_end_offset
            count += 1

    async def run() -> None:
        await asyncio.gather(*(appender() for _ in range(appenders)))

    start = time.perf_counter()
    stop = start + seconds
    asyncio.run(run())
    elapsed = time.perf_counter() - start
    log.close()
    return count / elapsed, count / max(1, committer.flushes)


def codec_rates(batches: list[bytes], per_batch: int, seconds: float) -> dict[str, float]:
    rng = random.Random(1)
    records = [(None, json_record(rng, i), (), 1_700_000_000_000 + i) for i in range(per_batch)]
    out: dict[str, float] = {}
    elapsed, calls, _ = timed(seconds, lambda: len(encode_batch(records)))
    out["encode lz4 (records/s)"] = calls * per_batch / elapsed
    elapsed, calls, _ = timed(seconds, lambda: len(decode_records(batches[0])))
    out["decode lz4 (records/s)"] = calls * per_batch / elapsed
    elapsed, calls, _ = timed(seconds, lambda: validate_batch(batches[0],
                                                               max_bytes=1 << 24).size)
    out["validate header+checksum (batches/s)"] = calls / elapsed
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="scratch directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)
    print(f"seed {args.seed}; replay: {sys.executable} benchmarks/storage_bench.py "
          f"--seed {args.seed} --seconds {args.seconds}")
    rng = random.Random(args.seed)
    batches, per_batch = make_batches(rng, 32)
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-", dir=args.dir))
    s = args.seconds
    rows: list[tuple[str, str]] = []
    try:
        avg = sum(map(len, batches)) / len(batches)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
              f"{platform.python_version()}, scratch dir {root}")
        print(f"batch: {per_batch} JSON-like records of {RECORD_BYTES} B, lz4, "
              f"{avg / 1024:.1f} KiB encoded")
        raw_mb, raw_wps = raw_disk(root, batches, s, sync_every_ms=None)
        rows.append(("raw write + fdatasync per batch", f"{raw_mb:8.1f} MB/s  {raw_wps:9.0f} /s"))
        app_mb, app_bps, log = engine_append(root / "always", batches, s, FsyncPolicy.always())
        rows.append(("append, fsync always", f"{app_mb:8.1f} MB/s  {app_bps:9.0f} batches/s"))
        rows.append(("  ratio to raw (target >= 0.70)", f"{app_mb / raw_mb:8.2f}"))
        log.close()
        raw_i_mb, _ = raw_disk(root, batches, s, sync_every_ms=100)
        rows.append(("raw write + fdatasync every 100 ms", f"{raw_i_mb:8.1f} MB/s"))
        int_mb, int_bps, log = engine_append(root / "interval", batches, s,
                                             FsyncPolicy.parse("interval:100ms"))
        rows.append(("append, fsync interval:100ms",
                     f"{int_mb:8.1f} MB/s  {int_bps:9.0f} batches/s"))
        rows.append(("  ratio to raw (target >= 0.70)", f"{int_mb / raw_i_mb:8.2f}"))
        read_mb = engine_read(log, s)
        rows.append(("read (1 MiB fetches, checksums verified)", f"{read_mb:8.1f} MB/s"))
        log.close()
        small = encode_batch([(None, json_record(rng, 0), (), 1_700_000_000_000)])
        for label, batch, delay in (("1 KiB", small, 0.0), ("64 KiB", batches[0], 0.0),
                                    ("1 KiB, +5 ms fsync", small, 5.0)):
            single, _ = group_commit(root / "g1", batch, s, threads=1, fsync_delay_ms=delay)
            grouped, per = group_commit(root / "g16", batch, s, threads=GROUP_THREADS,
                                        fsync_delay_ms=delay)
            shutil.rmtree(root / "g1")
            shutil.rmtree(root / "g16")
            rows.append((f"{label} batches, 1 appender, fsync each", f"{single:9.0f} batches/s"))
            rows.append((f"{label} batches, {GROUP_THREADS} appenders, group commit",
                         f"{grouped:9.0f} batches/s  {per:5.1f} batches/fsync"))
            rows.append(("  ratio (target >= 10)", f"{grouped / single:8.1f}"))
        for label, batch in (("1 KiB", small), ("64 KiB", batches[0])):
            single, _ = group_commit_async(root / "a1", batch, s, appenders=1)
            grouped, per = group_commit_async(root / "a16", batch, s, appenders=GROUP_THREADS)
            shutil.rmtree(root / "a1")
            shutil.rmtree(root / "a16")
            rows.append((f"{label} batches, node path (asyncio), 1 appender",
                         f"{single:9.0f} batches/s"))
            rows.append((f"{label} batches, node path (asyncio), {GROUP_THREADS} appenders",
                         f"{grouped:9.0f} batches/s  {per:5.1f} batches/fsync"))
            rows.append(("  ratio (target >= 10)", f"{grouped / single:8.1f}"))
        for name, rate in codec_rates(batches, per_batch, s).items():
            rows.append((f"codec {name}", f"{rate:12.0f}"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
