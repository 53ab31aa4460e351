"""A real consumer process for the group tests: `python consumer_worker.py ...`.

It consumes TOPIC in GROUP and appends one JSON line per event to --out, flushed at once, so what
it did survives a kill -9: {"ev": "assign"|"revoke"|"lost", "p": [...], "ts": ...},
{"ev": "recs", "r": [[partition, offset, value], ...]}, {"ev": "commit", "pos": {p: offset}}.
With --manual-commit it commits (synchronously) after writing each poll's records, and in
on_revoke; otherwise auto-commit every --auto-commit-ms. SIGTERM: close() (leave the group).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--session-ms", type=int, default=3000)
    parser.add_argument("--auto-commit-ms", type=int, default=500)
    parser.add_argument("--manual-commit", action="store_true")
    parser.add_argument("--client-id", default="worker")
    args = parser.parse_args()

    from tidelog.client import Consumer

    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def emit(event: dict) -> None:  # type: ignore[type-arg]
        out.write(json.dumps({**event, "ts": time.time()}) + "\n")
        out.flush()

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    consumer: Consumer

    def on_revoke(tps: set) -> None:  # type: ignore[type-arg]
        if args.manual_commit:
            consumer.commit()
        emit({"ev": "revoke", "p": sorted(tp.partition for tp in tps)})

    consumer = Consumer(
        args.bootstrap, group_id=args.group, topics=[args.topic], auto_offset_reset="earliest",
        enable_auto_commit=not args.manual_commit, auto_commit_interval_ms=args.auto_commit_ms,
        session_timeout_ms=args.session_ms, max_poll_interval_ms=30_000,
        client_id=args.client_id,
        on_assign=lambda tps: emit({"ev": "assign", "p": sorted(tp.partition for tp in tps)}),
        on_revoke=on_revoke,
        on_lost=lambda tps: emit({"ev": "lost", "p": sorted(tp.partition for tp in tps)}))
    emit({"ev": "start", "member": consumer._group.member_id if consumer._group else ""})
    while not stopping:
        records = consumer.poll(timeout_s=0.2)
        if not records:
            continue
        emit({"ev": "recs", "r": [[r.partition, r.offset, (r.value or b"").decode()]
                                  for r in records]})
        if args.manual_commit:
            positions = {tp.partition: consumer.position(tp) for tp in consumer.assignment()}
            consumer.commit()
            emit({"ev": "commit", "pos": positions})
    consumer.close()
    emit({"ev": "closed"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
