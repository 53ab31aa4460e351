"""Liveness figures from a history: gaps without acks or leaders, recovery after heals, latency.

Definitions (all times in ms since the run started):
- The workload span is [first invocation, last invocation]: a partition is expected to ack
  within it; a stretch longer than the threshold with no ack (counting from the span's start and
  to its end) is a gap.
- A leader gap starts at an observation of "no leader" and ends at the next observation of a
  leader (or at the history's end).
- Recovery from a heal (a fault_stop at T): time from T to the first ack at or after T; and time
  until consumers had read, on every partition, up to the highest offset acked by T.
- Phases are the stretches between fault edges (every fault_start and fault_stop time); a send
  belongs to the phase it was invoked in. Latency is invoke-to-ack of acked sends.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

from tidelog.chaos.history import FaultStart, FaultStop
from tidelog.chaos.index import HistoryIndex
from tidelog.chaos.results import Gap, PartitionAvailability, PhaseLatency, Recovery

__all__ = ["partition_availability", "percentile", "phase_latencies", "recoveries"]


def partition_availability(
    ix: HistoryIndex, gap_ms_min: float
) -> tuple[PartitionAvailability, ...]:
    partitions = sorted({a.partition for a in ix.acks.values()}
                        | {i.partition for i in ix.invoked.values() if i.partition is not None}
                        | set(ix.final) | {o.partition for o in ix.leaders})
    if not ix.invoked:
        span = None
    else:
        times = [i.time_ms for i in ix.invoked.values()]
        span = (min(times), max(times))
    acks: dict[int, list[float]] = defaultdict(list)
    for ack in ix.acks.values():
        acks[ack.partition].append(ack.time_ms)
    out = []
    for p in partitions:
        out.append(PartitionAvailability(
            partition=p,
            acks=len(acks[p]),
            gaps_without_ack=_ack_gaps(sorted(acks[p]), span, gap_ms_min),
            gaps_without_leader=_leader_gaps(ix, p),
        ))
    return tuple(out)


def recoveries(ix: HistoryIndex) -> tuple[Recovery, ...]:
    ack_times = sorted(a.time_ms for a in ix.acks.values())
    out = []
    for stop in (f for f in ix.faults if isinstance(f, FaultStop)):
        healed = stop.time_ms
        i = bisect.bisect_left(ack_times, healed)
        first_ack = ack_times[i] - healed if i < len(ack_times) else None
        out.append(Recovery(
            fault=stop.name,
            healed_ms=healed,
            first_ack_after_ms=first_ack,
            consumers_caught_up_after_ms=_caught_up_after(ix, healed),
        ))
    return tuple(out)


def phase_latencies(ix: HistoryIndex) -> tuple[PhaseLatency, ...]:
    if not ix.invoked:
        return ()
    start = min(i.time_ms for i in ix.invoked.values())
    end = max(ix.end_ms, start)
    edges = sorted({f.time_ms for f in ix.faults if start < f.time_ms < end})
    bounds = [start, *edges, end]
    invoked: list[list[float]] = [[] for _ in range(len(bounds) - 1)]
    acked: list[list[float]] = [[] for _ in range(len(bounds) - 1)]
    for sid, inv in ix.invoked.items():
        n = min(max(bisect.bisect_right(bounds, inv.time_ms) - 1, 0), len(invoked) - 1)
        invoked[n].append(inv.time_ms)
        if sid in ix.acks:
            acked[n].append(ix.acks[sid].time_ms - inv.time_ms)
    out = []
    for n in range(len(bounds) - 1):
        lat = sorted(acked[n])
        out.append(PhaseLatency(
            start_ms=bounds[n], end_ms=bounds[n + 1], faults=_active_faults(ix, bounds[n]),
            invoked=len(invoked[n]), acked=len(lat),
            p50_ms=percentile(lat, 0.5), p99_ms=percentile(lat, 0.99),
            p999_ms=percentile(lat, 0.999),
        ))
    return tuple(out)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None for no values."""
    assert 0 < q <= 1, q
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


# --- helpers ------------------------------------------------------------------------------------


def _ack_gaps(times: list[float], span: tuple[float, float] | None,
              gap_ms_min: float) -> tuple[Gap, ...]:
    if span is None:
        return ()
    points = [span[0], *(t for t in times if span[0] <= t <= span[1]), span[1]]
    return tuple(Gap(start_ms=a, end_ms=b) for a, b in zip(points, points[1:], strict=False)
                 if b - a > gap_ms_min)


def _leader_gaps(ix: HistoryIndex, partition: int) -> tuple[Gap, ...]:
    gaps = []
    opened: float | None = None
    for o in sorted((o for o in ix.leaders if o.partition == partition), key=lambda o: o.time_ms):
        if o.leader is None and opened is None:
            opened = o.time_ms
        elif o.leader is not None and opened is not None:
            gaps.append(Gap(start_ms=opened, end_ms=o.time_ms))
            opened = None
    if opened is not None:
        gaps.append(Gap(start_ms=opened, end_ms=ix.end_ms))
    return tuple(gaps)


def _caught_up_after(ix: HistoryIndex, healed_ms: float) -> float | None:
    """Time after the heal until consumers had read up to every partition's last acked offset."""
    if not ix.reads:
        return None
    target: dict[int, int] = {}
    for ack in ix.acks.values():
        if ack.time_ms <= healed_ms:
            target[ack.partition] = max(target.get(ack.partition, -1), ack.offset)
    caught = healed_ms
    for partition, offset in target.items():
        reached = [r.time_ms for r in ix.reads if r.partition == partition and r.offset >= offset]
        if not reached:
            return None
        caught = max(caught, min(reached))
    return caught - healed_ms


def _active_faults(ix: HistoryIndex, at_ms: float) -> tuple[str, ...]:
    active: dict[str, int] = defaultdict(int)
    for f in sorted(ix.faults, key=lambda f: f.time_ms):
        if f.time_ms > at_ms:
            break
        if isinstance(f, FaultStart):
            active[f.name] += 1
        else:
            active[f.name] = max(0, active[f.name] - 1)
    return tuple(sorted(name for name, n in active.items() if n > 0))
