"""What the checker concludes: per-check verdicts with counts, the run's figures, a text table.

Everything here is plain data (frozen dataclasses of ints, floats, strings and tuples) so a result
is JSON-serializable with `results_to_dict` and can be compared across runs.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "CheckName",
    "CheckResult",
    "Gap",
    "Operations",
    "PartitionAvailability",
    "PhaseLatency",
    "Recovery",
    "Results",
    "RunVerdict",
    "Verdict",
    "render_summary",
    "results_to_dict",
    "verdict_line",
]

EXAMPLES_MAX = 10  # Bound: a check keeps at most this many human-readable examples.


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    # The history lacks what the check needs (e.g. no final read, no consumer reads).
    UNKNOWN = "unknown"
    # Informational checks (indeterminate writes) never fail on their own.
    INFO = "info"


class RunVerdict(enum.Enum):
    """The verdict on a whole run. VACUOUS is not a pass: the run could not have failed (nothing
    was acknowledged, or no fault was injected), so it proves nothing. It reads "INVALID
    (vacuous: ...)" in a summary and has its own exit code in `tidelog chaos run`."""

    VALID = "valid"
    INVALID = "invalid"  # a check failed: an anomaly was found
    VACUOUS = "vacuous"


class CheckName(enum.Enum):
    INTEGRITY = "integrity"  # every value read decodes and names a send that was invoked
    LOST = "lost"
    INCONSISTENT_OFFSETS = "inconsistent-offsets"
    DUPLICATES = "duplicates"
    KEY_ORDER = "key-order"
    CONSUMER_ORDER = "consumer-order"
    GROUP_SKIPS = "group-skips"
    INDETERMINATE = "indeterminate"
    ABORTED_READS = "aborted-reads"
    REALTIME_ORDER = "realtime-order"
    INTERNAL_POLL_SKIPS = "internal-poll-skips"  # one poll() jumped over a record
    POLL_SKIPS = "poll-skips"  # two successive polls of one consumer jumped over a record
    NONMONOTONIC_SENDS = "nonmonotonic-sends"  # one producer's acks went backwards on a partition
    REPLICAS = "replica-consistency"  # replicas' committed prefixes byte-identical after heal


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    name: CheckName
    verdict: Verdict
    counts: tuple[tuple[str, int], ...]
    examples: tuple[str, ...] = ()

    def count(self, label: str) -> int:
        return dict(self.counts)[label]


@dataclass(frozen=True, slots=True, kw_only=True)
class Operations:
    attempted: int
    ok: int
    failed: int
    indeterminate: int
    # Invoked but no outcome recorded at all (the workload stopped first): treated as indeterminate
    # by the checks, counted apart here so a workload bug shows.
    no_outcome: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    start_ms: float
    end_ms: float

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionAvailability:
    partition: int
    acks: int
    # Stretches longer than the configured threshold with no ack, within the workload's span.
    gaps_without_ack: tuple[Gap, ...]
    # Stretches during which an observer saw no leader (empty when leaders were never observed).
    gaps_without_leader: tuple[Gap, ...]

    @property
    def unavailable_ms(self) -> float:
        return sum(g.duration_ms for g in self.gaps_without_ack)


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """After one fault stopped (a heal), how long until writes and consumers came back."""

    fault: str
    healed_ms: float
    # None: it never happened before the history ended.
    first_ack_after_ms: float | None
    consumers_caught_up_after_ms: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseLatency:
    """Send latency (invoke to ack) for the sends invoked within one phase between fault edges."""

    start_ms: float
    end_ms: float
    faults: tuple[str, ...]  # active during the phase; empty means healthy
    invoked: int
    acked: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Results:
    operations: Operations
    acked: int
    lost: int
    duplicated: int
    inconsistent: int
    aborted: int
    # Partitions whose replicas hold different bytes for their common committed prefix.
    divergent: int
    # Indeterminate sends that later appeared in a read (recovered) or did not (unrecovered).
    recovered: int
    unrecovered: int
    checks: tuple[CheckResult, ...]
    availability: tuple[PartitionAvailability, ...]
    recoveries: tuple[Recovery, ...]
    phases: tuple[PhaseLatency, ...]
    # Why the run proves nothing (empty when it does): "0 acknowledged writes", "0 faults executed".
    vacuous: tuple[str, ...] = ()

    @property
    def verdict(self) -> RunVerdict:
        """INVALID when a check failed (whatever else), else VACUOUS when the run could not have
        failed, else VALID. UNKNOWN checks are not failures, but the summary shows them."""
        if any(c.verdict is Verdict.FAIL for c in self.checks):
            return RunVerdict.INVALID
        return RunVerdict.VACUOUS if self.vacuous else RunVerdict.VALID

    @property
    def valid(self) -> bool:
        return self.verdict is RunVerdict.VALID

    @property
    def failed_checks(self) -> tuple[CheckName, ...]:
        return tuple(c.name for c in self.checks if c.verdict is Verdict.FAIL)

    def check(self, name: CheckName) -> CheckResult:
        for c in self.checks:
            if c.name is name:
                return c
        raise KeyError(name)


def results_to_dict(results: Results) -> dict[str, Any]:
    """A JSON-ready dict (enums as their values, tuples as lists)."""
    return _jsonable({**asdict(results), "valid": results.valid,
                      "verdict": results.verdict})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        # CheckResult.counts is a tuple of (label, n) pairs: render it as an object.
        if obj and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in obj):
            return {k: _jsonable(v) for k, v in obj}
        return [_jsonable(x) for x in obj]
    return obj


def render_summary(results: Results) -> str:
    """A plain-text report: figures, one row per check, availability and latency tables."""
    ops = results.operations
    lines = [
        f"verdict: {verdict_line(results)}",
        "",
        _table(
            ["attempted", "ok", "failed", "indeterminate", "no outcome"],
            [[ops.attempted, ops.ok, ops.failed, ops.indeterminate, ops.no_outcome]],
        ),
        "",
        _table(
            ["acked", "lost", "duplicated", "inconsistent", "divergent", "aborted", "recovered",
             "unrecovered"],
            [[results.acked, results.lost, results.duplicated, results.inconsistent,
              results.divergent, results.aborted, results.recovered, results.unrecovered]],
        ),
        "",
        _table(
            ["check", "verdict", "counts"],
            [[c.name.value, c.verdict.value.upper(), ", ".join(f"{k}={v}" for k, v in c.counts)]
             for c in results.checks],
        ),
    ]
    for c in results.checks:
        for example in c.examples:
            lines.append(f"  {c.name.value}: {example}")
    if results.availability:
        lines += ["", _table(
            ["partition", "acks", "gaps w/o ack", "unavailable ms", "longest ms", "w/o leader ms"],
            [[a.partition, a.acks, len(a.gaps_without_ack), _ms(a.unavailable_ms),
              _ms(max((g.duration_ms for g in a.gaps_without_ack), default=0.0)),
              _ms(sum(g.duration_ms for g in a.gaps_without_leader))]
             for a in results.availability],
        )]
    if results.recoveries:
        lines += ["", _table(
            ["healed fault", "at ms", "first ack after ms", "consumers caught up after ms"],
            [[r.fault, _ms(r.healed_ms), _ms(r.first_ack_after_ms),
              _ms(r.consumers_caught_up_after_ms)] for r in results.recoveries],
        )]
    if results.phases:
        lines += ["", _table(
            ["phase ms", "faults", "invoked", "acked", "p50 ms", "p99 ms", "p999 ms"],
            [[f"{_ms(p.start_ms)}-{_ms(p.end_ms)}", ",".join(p.faults) or "healthy", p.invoked,
              p.acked, _ms(p.p50_ms), _ms(p.p99_ms), _ms(p.p999_ms)] for p in results.phases],
        )]
    return "\n".join(lines) + "\n"


def verdict_line(results: Results) -> str:
    """VALID; INVALID naming the failed checks; or INVALID (vacuous: why) for a run that could
    not have failed."""
    verdict = results.verdict
    if verdict is RunVerdict.INVALID:
        return "INVALID (failed: " + ", ".join(n.value for n in results.failed_checks) + ")"
    if verdict is RunVerdict.VACUOUS:
        return ("INVALID (vacuous: " + "; ".join(results.vacuous)
                + "; the run could not have failed, so it proves nothing)")
    return "VALID"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for n, row in enumerate(cells):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
