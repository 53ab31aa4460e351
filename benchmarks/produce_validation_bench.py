"""What checking a produced batch against its records costs (node/produce_validation.py).

    .venv/bin/python benchmarks/produce_validation_bench.py [--rounds 15]

Per batch: the header + checksum check alone (what the broker did before issue 11, defect 14),
the codec's full decoder (`decode_records`, which builds every Record), and `validate_produce`
(one lz4 decompression and a framing walk that builds nothing). Best of `--rounds` runs of 20
calls each, so other load on the machine inflates the figures as little as possible. Figures,
never assertions.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from tidelog.node.produce_validation import ProduceLimits, validate_produce
from tidelog.node.tables import render_table
from tidelog.proto.batch import Codec, decode_records, encode_batch, validate_batch


def json_like(size: int, i: int) -> bytes:
    body = json.dumps({"id": i, "user": f"user-{i % 997}", "event": "click", "pad": ""})
    return (body + "x" * max(0, size - len(body)))[:size].encode()


def best_s(call: Callable[[], object], rounds: int, calls: int = 20) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    now = int(time.time() * 1000)
    limits = ProduceLimits(request_bytes_max=8 << 20, batch_bytes_max=8 << 20,
                           timestamp_difference_ms_max=3_600_000)
    rng = random.Random(0)
    cases = [
        ("100 B json-like", [json_like(100, i) for i in range(1000)]),
        ("1 KiB json-like", [json_like(1024, i) for i in range(100)]),
        ("1 KiB random", [rng.randbytes(1024) for _ in range(100)]),
    ]
    rows = []
    for name, values in cases:
        batch = encode_batch([(None, v, (), now) for v in values], codec=Codec.LZ4)
        count = len(values)
        header = best_s(lambda b=batch: validate_batch(b, max_bytes=8 << 20), args.rounds)
        full = best_s(lambda b=batch: decode_records(b), args.rounds)
        ours = best_s(lambda b=batch: validate_produce(b, limits, now), args.rounds)
        rows.append([name, count, len(batch), f"{header * 1e6 / count:.3f}",
                     f"{full * 1e6 / count:.2f}", f"{ours * 1e6 / count:.2f}"])
    print(render_table(["records", "per batch", "batch bytes", "header+checksum us/rec",
                        "decode_records us/rec", "validate_produce us/rec"], rows))


if __name__ == "__main__":
    main()
