"""How long a node takes to start with 100 / 1,000 / 10,000 metadata commands behind it, with
and without metadata snapshots (issue 17: "start time does not grow with history").

For each history length and mode it builds a real data directory: a 1-node cluster (real node
process) applies N `set_quota` commands (cheap metadata commands: no partitions) that update
100 quotas round-robin, so the history grows while the state stays the same size (as producer
epoch bumps and config changes do in a long-lived cluster), with
TIDELOG_METADATA_SNAPSHOT_EVERY=1000 (snapshots) or 0 (none: the whole log stays and is
replayed), then stops. Then it measures, on that directory:

* `open`: `MetadataService.open()` in this process (open the metadata log, load the newest
  snapshot, replay the tail), the median of --repeats runs: the part that depends on history;
* `healthy`: the node process started again until it answers Health SERVING (Python start-up,
  the open above, the election of a 1-node group), once.

Prints a table and the load average; asserts nothing (benchmarks/README.md "Metadata start").

    .venv/bin/python benchmarks/metadata_start_bench.py [--counts 100,1000,10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tidelog.client import Admin
from tidelog.node.config import NodeConfig
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.local_cluster import LocalCluster
from tidelog.node.metadata_service import MetadataService
from tidelog.node.metadata_snapshot import list_snapshots
from tidelog.node.replica_state import read_state

EVERY = 1000
THREADS = 8
ENTITIES = 100  # the commands update these many quotas round-robin: history grows, state not


def build(directory: Path, count: int, every: int) -> LocalCluster:
    cluster = LocalCluster(1, directory, env={"TIDELOG_METADATA_SNAPSHOT_EVERY": str(every)})
    cluster.start()
    try:
        cluster.wait_healthy(timeout_s=60)
    except RuntimeError:
        print(cluster.node(1).log_path.read_text()[-4000:])
        cluster.stop()
        raise

    def some(first: int) -> None:
        with Admin(cluster.bootstrap) as admin:
            for i in range(first, count, THREADS):
                admin.set_quota(client_id=f"c{i % ENTITIES}", producer_byte_rate=1000 + i)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(some, range(THREADS)))
    time.sleep(0.5)  # the last snapshot and cut run just after the last apply
    cluster.stop()
    return cluster


def open_ms(data_dir: Path, every: int, quotas: int) -> float:
    config = NodeConfig(node_id=1, listen="127.0.0.1:1", advertise="127.0.0.1:1",
                        peers={1: "127.0.0.1:1"}, data_dir=data_dir,
                        metadata_snapshot_every=every)

    async def once() -> float:
        service = MetadataService(config, committer=GroupCommitter(),
                                  send=lambda group, message: None,
                                  on_soft_state=lambda replica: None, on_applied=lambda: None)
        started = time.perf_counter()
        service.open(data_dir)
        took = (time.perf_counter() - started) * 1000
        assert len(service.state.quotas) == quotas, (len(service.state.quotas), quotas)
        assert service.replica is not None
        await service.replica.close()
        return took

    return asyncio.run(once())


def profile_open(data_dir: Path, every: int, quotas: int, title: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    open_ms(data_dir, every, quotas)
    profiler.disable()
    print(f"\n-- profile of one open, {title}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(8)


def healthy_s(cluster: LocalCluster) -> float:
    started = time.monotonic()
    cluster.start()
    cluster.wait_healthy(timeout_s=120)
    took = time.monotonic() - started
    cluster.stop()
    return took


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one open per row; print where its time goes")
    args = parser.parse_args()
    print(f"load average at start: {loadavg()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="metastart-") as tmp:
        for count in (int(c) for c in args.counts.split(",")):
            for every in (0, EVERY):
                directory = Path(tmp) / f"{count}-{every}"
                started = time.monotonic()
                cluster = build(directory, count, every)
                built_s = time.monotonic() - started
                data_dir = cluster.node(1).data_dir
                meta = data_dir / "metadata"
                log_start = max(0, read_state(meta).log_start)  # -1: never moved
                snapshots = list_snapshots(meta)
                quotas = min(count, ENTITIES)
                open_ms(data_dir, every, quotas)  # warm-up: imports, page cache
                opens = [open_ms(data_dir, every, quotas) for _ in range(args.repeats)]
                if args.profile:
                    profile_open(data_dir, every, quotas, f"{count} commands, every={every}")
                rows.append((count, "on" if every else "off", log_start,
                             snapshots[0] if snapshots else None, statistics.median(opens),
                             healthy_s(cluster), built_s))
    print(f"\n{'commands':>8} {'snapshots':>9} {'log start':>9} {'newest snap':>11} "
          f"{'open ms':>8} {'healthy s':>9} {'build s':>7}")
    for count, mode, start, snap, open_median, healthy, built in rows:
        print(f"{count:>8} {mode:>9} {start:>9} {str(snap):>11} {open_median:>8.1f} "
              f"{healthy:>9.2f} {built:>7.1f}")
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
