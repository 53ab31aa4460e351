"""What `tidelog bench` reports: latency percentiles and one result per workload (sans-I/O).

Kept apart from the measuring loops (client/bench_workloads.py) and the command
(client/cli_bench.py) so that the figures are computed one way everywhere, and
benchmarks/bench_peers.py prints Tidelog's figures from the same objects the command does.
Percentiles are nearest-rank over every sample (no histogram buckets, no interpolation): a
p99.9 of 1,000 samples is the largest but one, which is what a reader expects from a table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BenchResult", "LatencyKind", "Percentiles", "PERCENTILES", "nearest_rank"]

#: (label, percentile) in the order the table and the JSON show them
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9),
)


class LatencyKind(StrEnum):
    """What a latency sample measures, so a reader never compares an ack with a poll."""

    ACK = "ack"  # send() to the acknowledgement (the record's future resolving)
    POLL = "poll"  # one consumer poll() that returned records
    END_TO_END = "end_to_end"  # send() to the moment a consumer in this process read it


def nearest_rank(ordered: Sequence[float], percentile: float) -> float:
    """The smallest sample with at least `percentile` % of the samples at or below it."""
    if not ordered:
        raise ValueError("no samples")
    # rounded first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point, not 999
    rank = max(1, math.ceil(round(percentile * len(ordered) / 100.0, 9)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latencies in milliseconds."""

    kind: LatencyKind
    samples: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def of_seconds(cls, kind: LatencyKind, samples_s: Iterable[float]) -> Percentiles | None:
        """From samples in seconds; None when there are none (nothing was acknowledged)."""
        ordered = sorted(samples_s)
        if not ordered:
            return None
        p50, p90, p99, p999 = (nearest_rank(ordered, p) * 1000.0 for _, p in PERCENTILES)
        return cls(kind=kind, samples=len(ordered), p50_ms=p50, p90_ms=p90, p99_ms=p99,
                   p999_ms=p999, max_ms=ordered[-1] * 1000.0)

    def values_ms(self) -> tuple[float, float, float, float, float]:
        return self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind.value, "samples": self.samples, "p50_ms": self.p50_ms,
                "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "p99_9_ms": self.p999_ms,
                "max_ms": self.max_ms}


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One workload's outcome. `messages` counts what succeeded (acknowledged, or read);
    `errors` what failed; rates are over `elapsed_s`, from the first send (or poll) to the last
    acknowledgement (or record)."""

    workload: str
    messages: int
    errors: int
    bytes: int
    elapsed_s: float
    latency: Percentiles | None
    interrupted: bool = False

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.elapsed_s / 1e6 if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {"workload": self.workload, "messages": self.messages, "errors": self.errors,
                "bytes": self.bytes, "elapsed_s": round(self.elapsed_s, 6),
                "msgs_per_s": round(self.msgs_per_s, 3), "mb_per_s": round(self.mb_per_s, 6),
                "latency": self.latency.to_json() if self.latency else None,
                "interrupted": self.interrupted}
