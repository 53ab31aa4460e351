"""`tidelog demo`: a walkthrough on a throwaway local cluster, showing that no ack is lost.

Starts 3 node processes in a temporary folder, produces keyed messages with acks=all, kills the
leader of a partition with SIGKILL in the middle, keeps producing, replays a partition from an
offset, then reads everything back and prints a table: sent, acknowledged, found, lost.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="walkthrough: produce, kill a leader, replay, check nothing acked was lost",
        description=__doc__.splitlines()[0] + " Needs nothing running; cleans up after itself.")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages to send in all (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's folder")
    parser.set_defaults(func=run)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from tidelog.client import Admin, Consumer, Producer, TopicPartition
    from tidelog.client.errors import TidelogError
    from tidelog.node.local_cluster import LocalCluster
    from tidelog.node.tables import render_table

    if args.messages < 10:
        from tidelog.client.cli_common import fail

        return fail(args, "--messages must be at least 10", 2)
    folder = Path(tempfile.mkdtemp(prefix="tidelog-demo-"))
    cluster = LocalCluster(3, folder)
    try:
        say(f"starting 3 nodes (data and logs in {folder})")
        cluster.start()
        cluster.wait_healthy(60)
        say(f"cluster up: {cluster.bootstrap}")
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic("demo", partitions=3, replication_factor=3)
        say("created topic 'demo': 3 partitions, replication factor 3")

        acked: dict[bytes, tuple[int, int]] = {}  # value → (partition, offset)
        failed = 0
        half = args.messages // 2
        victim = None
        with Producer(cluster.bootstrap, linger_ms=2, delivery_timeout_ms=60_000) as producer:
            futures = []
            for i in range(args.messages):
                value = f"message-{i:06d}".encode()
                futures.append((value, producer.send("demo", value, key=f"user-{i % 10}")))
                if i == half:
                    producer.flush()
                    victim = cluster.leader_of("demo", 0)
                    say(f"sent {half} messages; killing node {victim} (leader of demo-0) "
                        "with SIGKILL")
                    cluster.kill(victim)
            say(f"sent {args.messages} messages; waiting for their acknowledgements")
            producer.flush()
            for value, future in futures:
                try:
                    meta = future.result()
                    acked[value] = (meta.partition, meta.offset)
                except TidelogError:
                    failed += 1
        say(f"{len(acked)} acknowledged, {failed} failed (a failed send was never acknowledged)")

        tp = TopicPartition("demo", 0)
        offsets = sorted(o for p, o in acked.values() if p == 0)
        replay_from = offsets[len(offsets) // 2]
        with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([tp])
            consumer.seek(tp, replay_from)
            replayed = consumer.poll(timeout_s=5.0, max_records=3)
            say(f"replay of demo-0 from offset {replay_from}: " + ", ".join(
                f"{r.offset}={r.value.decode()}" for r in replayed))

            found: dict[bytes, tuple[int, int]] = {}
            tps = consumer.partitions_for("demo")
            consumer.assign(tps)
            consumer.seek_to_beginning()
            deadline = time.monotonic() + 60
            quiet_since = time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - quiet_since < 3:
                records = consumer.poll(timeout_s=0.5)
                if records:
                    quiet_since = time.monotonic()
                for record in records:
                    found[record.value] = (record.partition, record.offset)
                if len(found) >= len(acked) and all(v in found for v in acked):
                    break
        lost = [v for v, where in acked.items() if found.get(v) != where]
        order_ok = _per_key_order_ok(found, args.messages)
        print()
        print(render_table(["sent", "acknowledged", "failed", "read back", "lost",
                            "per-key order"],
                           [[args.messages, len(acked), failed, len(found), len(lost),
                             "kept" if order_ok else "BROKEN"]]))
        print()
        if victim is not None:
            say(f"node {victim} is still down; `tidelog cluster up` restarts nothing behind your "
                "back either")
        return 0 if not lost and order_ok else 1
    finally:
        cluster.stop()
        if args.keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _per_key_order_ok(found: dict[bytes, tuple[int, int]], messages: int) -> bool:
    """Messages of one key were sent in increasing i; their offsets must increase too."""
    by_key: dict[int, list[tuple[int, int]]] = {}
    for value, (_, offset) in found.items():
        i = int(value.split(b"-")[1])
        by_key.setdefault(i % 10, []).append((i, offset))
    return all([o for _, o in sorted(seq)] == sorted(o for _, o in seq)
               for seq in by_key.values())
