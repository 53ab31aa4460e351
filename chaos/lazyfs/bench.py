"""`python -m tidelog.chaos.lazyfs.bench`: a 3-node cluster's produce throughput on LazyFS vs tmpfs.

Why: the power-cut scenarios run every node's data dir on LazyFS (a Python FUSE file system);
this says what that costs against the tmpfs the disk scenarios use and the plain directory the
other scenarios use, with fsync=always (every acknowledged batch fsynced on a majority).

Each variant starts 3 real nodes (LocalBackend, 127.0.0.1), creates a topic (6 partitions, RF 3),
and runs one idempotent acks=all producer sending 100-byte values as fast as its buffer allows
for `--seconds` (or, `--one-at-a-time`, waiting for each acknowledgement: one batch, one
commit round with its fsyncs, per message); it prints acknowledged messages per second, fsyncs
per second and node as LazyFS counted them, and the p50/p99 acknowledgement latency.
Needs root (tmpfs and FUSE mounts). No assertions: figures only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tidelog.chaos.backend import LocalBackend
from tidelog.chaos.lazyfs import mount

VALUE = b"v" * 100
TOPIC = "bench"


def run_variant(name: str, seconds: float, work: Path, *, one_at_a_time: bool) -> dict[str, float]:
    kwargs: dict[str, object] = {}
    if name == "tmpfs":
        kwargs["disk_bytes_max"] = 1 << 30
    elif name.startswith("lazyfs"):
        kwargs["power_loss"] = True
        mount.THREADS = "single" if name == "lazyfs-single" else "multi"
    backend = LocalBackend(3, work / name, use_netns=False, node_args=("--fsync", "always"),
                           **kwargs)  # type: ignore[arg-type]
    from tidelog.client import Admin, Producer

    backend.start()
    try:
        bootstrap = [backend.client_address(n) for n in backend.nodes]
        deadline = time.monotonic() + 60
        while True:
            try:
                with Admin(bootstrap, request_timeout_ms=10_000) as admin:
                    admin.create_topic(TOPIC, partitions=6, replication_factor=3)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        before = _fs_stats(backend)
        latencies: list[float] = []
        lock = threading.Lock()
        producer = Producer(bootstrap, acks="all", idempotent=True, linger_ms=2,
                            buffer_memory=4 << 20)

        def done(started: float) -> object:
            def cb(metadata: object, error: BaseException | None) -> None:
                if error is None:
                    with lock:
                        latencies.append(time.monotonic() - started)
            return cb

        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < seconds:
            now = time.monotonic()
            future = producer.send(TOPIC, VALUE, key=str(sent % 60), callback=done(now))
            sent += 1
            if one_at_a_time:  # each send its own batch: the commit latency, fsyncs included
                future.result(30)
        producer.flush(60)
        elapsed = time.monotonic() - t0
        producer.close(10)
        after = _fs_stats(backend)
        lat = sorted(latencies)
        out = {"acked_per_s": len(lat) / elapsed,
               "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
               "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")}
        if before and after:
            out["fsyncs_per_s_per_node"] = (after - before) / elapsed / len(backend.nodes)
        return out
    finally:
        backend.stop()


def _fs_stats(backend: LocalBackend) -> int | None:
    """Total fsyncs the LazyFS mounts saw (None on other variants)."""
    mounts = getattr(backend, "_lazy", {})
    if not mounts:
        return None
    return sum(int(m.stats()["fsyncs"]) for m in mounts.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--variants", default="dir,tmpfs,lazyfs,lazyfs-single")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="wait for each acknowledgement before the next send")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tl-lazyfs-bench-") as tmp:
        for name in args.variants.split(","):
            figures = run_variant(name, args.seconds, Path(tmp),
                                  one_at_a_time=args.one_at_a_time)
            print(f"{name:<7} " + "  ".join(f"{k}={v:.1f}" for k, v in figures.items()),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
