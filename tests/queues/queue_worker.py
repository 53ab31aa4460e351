"""A real queue consumer process for the queue cluster tests: `python queue_worker.py ...`.

It receives from QUEUE with tidelog.client.QueueConsumer and settles each message as told, and
appends one JSON line per event to --out, written and flushed at once so that what it did
survives a kill -9 (all processes run on one machine, so their `time.time()` is one clock):

    {"ev": "start", "consumer": id, "ts": t}
    {"ev": "recv", "t": topic, "p": partition, "o": offset, "k": key, "v": value,
     "h": {header: value}, "dc": delivery_count, "lock": lock_deadline_ms, "ts": t}
    {"ev": "settle", "act": "ack"|"nack", "t", "p", "o", "k", "v", "dc",
     "t0": when ack()/nack() was called, "t1": when its result came, "ok": bool, "err": str}
    {"ev": "closed", "ts": t}

A message is "held" by this worker from its recv line to its settle line's t0: the tests check
lock intervals with those two times (a settlement is sent after t0 and committed before the
server can hand the key to anyone else, so a correct server never lets another worker's recv of
the same key fall inside [recv ts, t0]).

Processing is a sleep of --process-ms-min..--process-ms-max ms per message (drawn from a
random.Random(--seed), printed in the start line); a message whose value starts with
--nack-prefix is nacked (the queue's backoff), every other one acked. With --go-file the worker
connects and logs its start line, then waits for that file before its first receive (so a test
can have it ready, polling, at a moment it chooses). SIGTERM: finish the batch in
hand, flush, close().
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--consumer-id", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max-messages", type=int, default=5)
    parser.add_argument("--receive-timeout-s", type=float, default=0.5)
    parser.add_argument("--process-ms-min", type=float, default=0.0)
    parser.add_argument("--process-ms-max", type=float, default=0.0)
    parser.add_argument("--nack-prefix", default="")
    parser.add_argument("--go-file", default="",
                        help="connect and log start, then wait until this file exists")
    args = parser.parse_args()

    from tidelog.client import QueueConsumer

    rng = random.Random(args.seed)
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with QueueConsumer(args.bootstrap, queue=args.queue, consumer_id=args.consumer_id) as consumer:
        emit({"ev": "start", "consumer": args.consumer_id, "seed": args.seed, "ts": time.time()})
        while args.go_file and not os.path.exists(args.go_file) and not stopping:
            time.sleep(0.01)
        while not stopping:
            messages = consumer.receive(max_messages=args.max_messages,
                                        timeout_s=args.receive_timeout_s)
            received_at = time.time()
            for m in messages:
                emit({"ev": "recv", **_identity(m), "lock": m.lock_deadline_ms,
                      "h": {name: _text(value) for name, value in m.headers},
                      "ts": received_at})
            pending = []
            for m in messages:
                time.sleep(rng.uniform(args.process_ms_min, args.process_ms_max) / 1000)
                nack = bool(args.nack_prefix) and (_text(m.value) or "").startswith(
                    args.nack_prefix)
                t0 = time.time()
                future = consumer.nack(m) if nack else consumer.ack(m)
                pending.append((m, "nack" if nack else "ack", t0, future))
            for m, action, t0, future in pending:
                ok, err = True, ""
                try:
                    future.result(30.0)
                except Exception as exc:  # noqa: BLE001 - every outcome is logged for the test
                    ok, err = False, f"{type(exc).__name__}: {exc}"
                emit({"ev": "settle", "act": action, **_identity(m), "t0": t0,
                      "t1": time.time(), "ok": ok, "err": err})
        consumer.flush(timeout_s=30.0)
    emit({"ev": "closed", "ts": time.time()})
    return 0


def _identity(m: Any) -> dict[str, Any]:  # noqa: ANN401 - a QueueMessage
    return {"t": m.topic, "p": m.partition, "o": m.offset, "k": _text(m.key),
            "v": _text(m.value), "dc": m.delivery_count}


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


if __name__ == "__main__":
    sys.exit(main())
