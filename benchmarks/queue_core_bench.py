"""Micro-benchmark of the sans-I/O queue core (not a test): offer + acquire + ack of N records in
batches, one partition or several, plain or key-ordered; also the cost of encoding the deltas
(what the coordinator writes to `__queue_state`) and of a snapshot. Prints records/s.

    .venv/bin/python benchmarks/queue_core_bench.py [--records 100000] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import time

from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.config import QueueConfig
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.deltas import encode_delta
from tidelog.node.queues.model import OfferedRecord, Settle, SettleKind

T0 = 1_700_000_000_000


def run(records: int, batch: int, partitions: int, key_ordered: bool, per_message_acks: bool,
        encode: bool) -> float:
    cfg = QueueConfig(name="bench", topics=("t",), key_ordered=key_ordered)
    tps = [TopicPartition("t", p) for p in range(partitions)]
    core = QueueCore(cfg, {tp: 0 for tp in tps})
    keys = [f"k{i}".encode() for i in range(1000)] if key_ordered else [None]
    now = T0
    done = 0
    encoded = 0
    started = time.perf_counter()
    while done < records:
        now += 1
        out = []
        for tp, offset in core.reads_wanted().items():
            end = min(offset + batch, records // partitions + 1)
            if end > offset:
                out += core.offer(tp, [OfferedRecord(o, now, keys[o % len(keys)])
                                       for o in range(offset, end)], end, now)
        got, deltas = core.acquire("c", batch, now)
        out += deltas
        if not got:
            break
        if per_message_acks:
            items = [Settle(tp=a.tp, first=o, last=o, delivery_count=c, kind=SettleKind.ACK)
                     for a in got for first, last, c in a.ranges for o in range(first, last + 1)]
        else:
            items = [Settle(tp=a.tp, first=first, last=last, delivery_count=c,
                            kind=SettleKind.ACK) for a in got for first, last, c in a.ranges]
        outcomes, deltas = core.settle("c", items, now)
        out += deltas
        assert all(o.ok for o in outcomes)
        done += sum(a.count for a in got)
        if encode:
            encoded += len(json.dumps([encode_delta(d) for d in out]))
    elapsed = time.perf_counter() - started
    assert core.stats(now, {}).acked_total == done
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    print(f"queue core: offer + acquire + ack of {args.records} records, batches of "
          f"{args.batch} (records/s, best of 3)")
    cases = [
        ("1 partition, one settlement per message", 1, False, True, False),
        ("1 partition, range settlements", 1, False, False, False),
        ("1 partition, per message + deltas JSON-encoded", 1, False, True, True),
        ("4 partitions, one settlement per message", 4, False, True, False),
        ("1 partition, key-ordered (1000 keys), per message", 1, True, True, False),
    ]
    for label, partitions, key_ordered, per_message, encode in cases:
        rate = max(run(args.records, args.batch, partitions, key_ordered, per_message, encode)
                   for _ in range(3))
        print(f"  {label:55s} {rate:12,.0f}")


if __name__ == "__main__":
    main()
