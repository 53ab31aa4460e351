"""Write a chaos run's report folder: history.jsonl, results.json, summary.txt, report.html.

The HTML page is self-contained (inline CSS and SVG, no scripts, no external assets): the verdict,
the summary tables, and a timeline of charts over one time axis, faults shaded across all of them:

- produce: acks per second, failed / indeterminate sends as ticks;
- consume: records read per second (every consumer, group members included);
- send latency, p50 and max per time bucket (by invocation time);
- leader changes per bucket, from the history's `leader_observed` events (the workload's
  observer asks every node for Metadata twice a second and records each partition's leader when
  it changes), and ticks where a partition was seen without a leader;
- for a queue run (its queue history given): receives and acks per second, and the coordinator
  moves the queue consumers saw (`queue_coordinator`).

A history without leader samples (or a log run: no queue history) draws those charts empty, with
a note; nothing in the history format changed for these charts.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidelog.chaos.availability import percentile
from tidelog.chaos.history import ConsumerRead, FaultStart, History, LeaderObserved
from tidelog.chaos.index import HistoryIndex
from tidelog.chaos.queue_history import (
    Action,
    QueueCoordinator,
    QueueDelivery,
    QueueHistory,
    QueueSettlement,
    SettleResult,
)
from tidelog.chaos.results import Results, render_summary, results_to_dict, verdict_line

__all__ = ["Timeline", "timeline", "write_report"]

BUCKETS_MAX = 300  # Bound: the timeline has at most this many time buckets.
_W, _H, _PAD = 960, 150, 48  # chart width, height of one chart, left padding (px)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    end_ms: float
    bucket_ms: float
    acks_per_s: tuple[float, ...]
    latency_p50_ms: tuple[float | None, ...]
    latency_max_ms: tuple[float | None, ...]
    faults: tuple[tuple[str, float, float], ...]  # (name, start, stop or end of history)
    failed_ms: tuple[float, ...]
    indeterminate_ms: tuple[float, ...]
    reads_per_s: tuple[float, ...] = ()
    # Leader changes per bucket: a partition's observed leader became another node (its first
    # observation is not a change; "no leader" in between is not one either, see leaderless_ms).
    leader_changes: tuple[int, ...] = ()
    leaderless_ms: tuple[float, ...] = ()  # a partition observed with no leader
    leader_samples: int = 0                # leader_observed events in the history
    # Queue runs only (None: no queue history given).
    queue_receives_per_s: tuple[float, ...] | None = None
    queue_acks_per_s: tuple[float, ...] | None = None
    coordinator_changes: tuple[int, ...] | None = None


def write_report(folder: Path, history: History, results: Results, *,
                 preamble: str = "", queue_history: QueueHistory | None = None) -> Path:
    """Write the four files into `folder` (created if needed); returns the HTML page's path.

    `preamble` (the run's scenario, seed, replay command...) opens summary.txt and the page.
    `queue_history` (a queue run's; its file is written by the queue workload) adds the queue
    charts."""
    folder.mkdir(parents=True, exist_ok=True)
    history.dump(folder / "history.jsonl")
    (folder / "results.json").write_text(
        json.dumps(results_to_dict(results), indent=2, sort_keys=True) + "\n")
    summary = preamble + render_summary(results)
    (folder / "summary.txt").write_text(summary)
    page = folder / "report.html"
    page.write_text(_page(summary, results, timeline(history, queue_history)))
    return page


def timeline(history: History, queue_history: QueueHistory | None = None) -> Timeline:
    """Bucket a history over time: acks by ack time, latency by invocation time, reads and leader
    changes by their time; with a queue history, receives, acks and coordinator moves too."""
    ix = HistoryIndex.build(history)
    queue_events = tuple(queue_history) if queue_history is not None else ()
    end = max(ix.end_ms, max((e.time_ms for e in queue_events), default=0.0), 1.0)
    bucket = max(end / BUCKETS_MAX, 100.0)
    n = int(end // bucket) + 1

    def at(t_ms: float) -> int:
        return min(n - 1, max(0, int(t_ms // bucket)))

    def per_s(counts: list[int]) -> tuple[float, ...]:
        return tuple(c * 1000.0 / bucket for c in counts)

    acks = [0] * n
    lat: list[list[float]] = [[] for _ in range(n)]
    for sid, ack in ix.acks.items():
        invoked = ix.invoked[sid].time_ms
        acks[at(ack.time_ms)] += 1
        lat[at(invoked)].append(ack.time_ms - invoked)
    for bucket_lat in lat:
        bucket_lat.sort()
    reads = [0] * n
    for read in (e for e in history if isinstance(e, ConsumerRead)):
        reads[at(read.time_ms)] += 1
    changes, leaderless = _leader_changes(ix.leaders, at, n)
    faults = []
    open_faults: dict[str, list[float]] = {}
    for f in sorted(ix.faults, key=lambda f: f.time_ms):
        if isinstance(f, FaultStart):
            open_faults.setdefault(f.name, []).append(f.time_ms)
        elif open_faults.get(f.name):
            faults.append((f.name, open_faults[f.name].pop(0), f.time_ms))
    faults += [(name, start, end) for name, starts in open_faults.items() for start in starts]
    queue = _queue_series(queue_events, at, n) if queue_history is not None else None
    return Timeline(
        end_ms=end, bucket_ms=bucket,
        acks_per_s=per_s(acks),
        latency_p50_ms=tuple(percentile(b, 0.5) for b in lat),
        latency_max_ms=tuple(b[-1] if b else None for b in lat),
        faults=tuple(sorted(faults, key=lambda f: f[1])),
        failed_ms=tuple(sorted(e.time_ms for e in ix.failed.values())),
        indeterminate_ms=tuple(sorted(e.time_ms for e in ix.indeterminate.values())),
        reads_per_s=per_s(reads),
        leader_changes=tuple(changes), leaderless_ms=tuple(leaderless),
        leader_samples=len(ix.leaders),
        queue_receives_per_s=per_s(queue[0]) if queue else None,
        queue_acks_per_s=per_s(queue[1]) if queue else None,
        coordinator_changes=tuple(queue[2]) if queue else None,
    )


def _leader_changes(observed: list[LeaderObserved], at: Callable[[float], int], n: int
                    ) -> tuple[list[int], list[float]]:
    """Per bucket, how many times a partition's leader became another node; and when a
    partition was seen with no leader."""
    changes = [0] * n
    leaderless: list[float] = []
    last: dict[int, str] = {}
    for o in sorted(observed, key=lambda o: o.time_ms):
        if o.leader is None:
            leaderless.append(o.time_ms)
            continue
        if o.partition in last and last[o.partition] != o.leader:
            changes[at(o.time_ms)] += 1
        last[o.partition] = o.leader
    return changes, leaderless


def _queue_series(events: tuple[object, ...], at: Callable[[float], int], n: int
                  ) -> tuple[list[int], list[int], list[int]]:
    """Per bucket: deliveries received, acks answered OK, coordinator moves (the coordinator
    the queue consumers saw became another node)."""
    receives, acks, moves = [0] * n, [0] * n, [0] * n
    last: str | None = None
    for e in sorted(events, key=lambda e: e.time_ms):  # type: ignore[attr-defined]
        match e:
            case QueueDelivery():
                receives[at(e.time_ms)] += 1
            case QueueSettlement(action=Action.ACK, result=SettleResult.OK):
                acks[at(e.time_ms)] += 1
            case QueueCoordinator(node=str() as node):
                if last is not None and node != last:
                    moves[at(e.time_ms)] += 1
                last = node
    return receives, acks, moves


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
.verdict { font-size: 1.4em; font-weight: bold; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .unknown, .info { color: #9a6700; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
"""


def _page(summary: str, results: Results, tl: Timeline) -> str:
    verdict = verdict_line(results)
    rows = "".join(
        f"<tr><td>{html.escape(c.name.value)}</td>"
        f"<td class='{c.verdict.value}'>{c.verdict.value.upper()}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in c.counts))}</td></tr>"
        for c in results.checks)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tidelog chaos report</title>
<style>{_CSS}</style></head><body>
<h1>tidelog chaos report</h1>
<p class="verdict {'pass' if results.valid else 'fail'}">{html.escape(verdict)}</p>
<h2>Checks</h2>
<table><tr><th>check</th><th>verdict</th><th>counts</th></tr>{rows}</table>
<h2>Timeline</h2>
{_svg(tl)}
<p>Shaded: faults. Bottom rows: red ticks are sends that failed, orange indeterminate. Leader
changes: a partition's leader, as the observer saw it twice a second, became another node. Bucket
{tl.bucket_ms:.0f} ms.</p>
<h2>Summary</h2>
<pre>{html.escape(summary)}</pre>
</body></html>
"""


def _svg(tl: Timeline) -> str:
    step = _H + 40  # each chart has its label above it
    tops = [16 + i * step for i in range(5 if tl.queue_acks_per_s is not None else 4)]
    bottom = tops[-1] + _H  # the ticks' rows and fault names go below the last chart
    height = bottom + 54
    x = _x_scale(tl)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W + _PAD + 10}" '
             f'height="{height}" role="img" aria-label="timeline">']
    for name, start, stop in tl.faults:
        parts.append(f'<rect x="{x(start):.1f}" width="{max(x(stop) - x(start), 1):.1f}" '
                     f'height="{bottom - tops[0]}" y="{tops[0]}" fill="#f4a261" '
                     f'fill-opacity="0.25">'
                     f'<title>{html.escape(name)}: {start:.0f}-{stop:.0f} ms</title></rect>')
        parts.append(f'<text x="{x(start) + 2:.1f}" y="{bottom + 14}">'
                     f'{html.escape(name)}</text>')
    parts.append(_chart(tl, list(tl.acks_per_s), tops[0], "produce: acks/s", "#2a6f97"))
    parts.append(_chart(tl, list(tl.reads_per_s), tops[1], "consume: records read/s",
                        "#2a9d8f"))
    parts.append(_chart(tl, list(tl.latency_max_ms), tops[2],
                        "send latency ms: max (grey), p50 (purple)", "#bbb"))
    parts.append(_chart(tl, list(tl.latency_p50_ms), tops[2], None, "#6a4c93",
                        top=_top(tl.latency_max_ms)))
    total = sum(tl.leader_changes)
    label = (f"leader changes per bucket: {total} in all; {len(tl.leaderless_ms)} times a "
             "partition had no leader (red ticks)" if tl.leader_samples else
             "leader changes: no leader samples in this history")
    parts.append(_bars(tl, tl.leader_changes, tops[3], label, "#e76f51", "leader-changes"))
    parts += _ticks(tl, tl.leaderless_ms, "#cf222e", tops[3] + _H - 10, "leaderless")
    if tl.queue_acks_per_s is not None and tl.queue_receives_per_s is not None:
        moves = tl.coordinator_changes or ()
        parts.append(_chart(tl, list(tl.queue_receives_per_s), tops[4],
                            f"queue: receives/s (green), acks/s (blue); coordinator moves "
                            f"(bars): {sum(moves)}", "#2a9d8f",
                            top=_top([*tl.queue_receives_per_s, *tl.queue_acks_per_s])))
        parts.append(_chart(tl, list(tl.queue_acks_per_s), tops[4], None, "#2a6f97",
                            top=_top([*tl.queue_receives_per_s, *tl.queue_acks_per_s])))
        parts.append(_bars(tl, moves, tops[4], None, "#e76f51", "coordinator-changes",
                           height=_H // 4))
    parts += _ticks(tl, tl.failed_ms, "#cf222e", bottom + 20, "failed")
    parts += _ticks(tl, tl.indeterminate_ms, "#e9a23b", bottom + 32, "indeterminate")
    parts.append(f'<text x="{_PAD}" y="{height - 2}">0 ms</text>')
    parts.append(f'<text x="{_W + _PAD - 70}" y="{height - 2}">{tl.end_ms:.0f} ms</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _ticks(tl: Timeline, times: tuple[float, ...], colour: str, y: float, kind: str
           ) -> list[str]:
    x = _x_scale(tl)
    return [f'<line class="{kind}" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y}" y2="{y + 10}" '
            f'stroke="{colour}"/>' for t in times[:5000]]  # bound the page size


def _bars(tl: Timeline, counts: tuple[int, ...], y0: float, label: str | None, colour: str,
          kind: str, *, height: float = _H) -> str:
    """One bar per bucket with a count above 0 (`data-count` carries it, for tests and for a
    reader of the page's source), scaled to the largest count."""
    top = max(counts, default=0) or 1
    x = _x_scale(tl)
    width = max(x(tl.bucket_ms) - x(0), 2.0)
    out = []
    if label is not None:
        out.append(f'<rect x="{_PAD}" y="{y0}" width="{_W}" height="{_H}" fill="none" '
                   f'stroke="#ccc"/><text x="{_PAD}" y="{y0 - 4}">{html.escape(label)}</text>'
                   f'<text x="2" y="{y0 + 26}">{top}</text>')
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        h = c / top * height
        start = i * tl.bucket_ms
        out.append(f'<rect class="{kind}" data-count="{c}" x="{x(start):.1f}" '
                   f'y="{y0 + _H - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
                   f'fill="{colour}"><title>{c} at {start:.0f}-{start + tl.bucket_ms:.0f} ms'
                   f'</title></rect>')
    return "\n".join(out)


def _chart(tl: Timeline, values: list[float | None], y0: float, label: str | None,
           colour: str, top: float | None = None) -> str:
    top = top or _top(values)
    x = _x_scale(tl)
    points, lines = [], []
    for i, v in enumerate(values):
        if v is None:  # a gap in the data: break the line
            if len(points) > 1:
                lines.append(points)
            points = []
            continue
        points.append(f"{x((i + 0.5) * tl.bucket_ms):.1f},{y0 + _H - v / top * _H:.1f}")
    if len(points) > 1:
        lines.append(points)
    out = [f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(p)}"/>'
           for p in lines]
    if label is not None:
        out.insert(0, f'<rect x="{_PAD}" y="{y0}" width="{_W}" height="{_H}" fill="none" '
                      f'stroke="#ccc"/><text x="{_PAD}" y="{y0 - 4}">{html.escape(label)}</text>'
                      f'<text x="2" y="{y0 + 26}">{top:.0f}</text>')
    return "\n".join(out)


def _top(values: tuple[float | None, ...] | list[float | None]) -> float:
    return max((v for v in values if v is not None), default=1.0) or 1.0


def _x_scale(tl: Timeline) -> Callable[[float], float]:
    def x(t_ms: float) -> float:
        return _PAD + min(t_ms, tl.end_ms) / tl.end_ms * _W
    return x
