"""Write a chaos run's report folder: history.jsonl, results.json, summary.txt, report.html.

The HTML page is self-contained (inline CSS and SVG, no scripts, no external assets): the verdict,
the summary tables, and a timeline with faults shaded, acks per second, send latency (p50 and
max per time bucket), and failed / indeterminate sends marked as ticks.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidelog.chaos.availability import percentile
from tidelog.chaos.history import FaultStart, History
from tidelog.chaos.index import HistoryIndex
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


def write_report(folder: Path, history: History, results: Results, *,
                 preamble: str = "") -> Path:
    """Write the four files into `folder` (created if needed); returns the HTML page's path.

    `preamble` (the run's scenario, seed, replay command...) opens summary.txt and the page."""
    folder.mkdir(parents=True, exist_ok=True)
    history.dump(folder / "history.jsonl")
    (folder / "results.json").write_text(
        json.dumps(results_to_dict(results), indent=2, sort_keys=True) + "\n")
    summary = preamble + render_summary(results)
    (folder / "summary.txt").write_text(summary)
    page = folder / "report.html"
    page.write_text(_page(summary, results, timeline(history)))
    return page


def timeline(history: History) -> Timeline:
    """Bucket a history's sends over time (acks by ack time, latency by invocation time)."""
    ix = HistoryIndex.build(history)
    end = max(ix.end_ms, 1.0)
    bucket = max(end / BUCKETS_MAX, 100.0)
    n = int(end // bucket) + 1
    acks = [0] * n
    lat: list[list[float]] = [[] for _ in range(n)]
    for sid, ack in ix.acks.items():
        invoked = ix.invoked[sid].time_ms
        acks[int(ack.time_ms // bucket)] += 1
        lat[int(invoked // bucket)].append(ack.time_ms - invoked)
    for bucket_lat in lat:
        bucket_lat.sort()
    faults = []
    open_faults: dict[str, list[float]] = {}
    for f in sorted(ix.faults, key=lambda f: f.time_ms):
        if isinstance(f, FaultStart):
            open_faults.setdefault(f.name, []).append(f.time_ms)
        elif open_faults.get(f.name):
            faults.append((f.name, open_faults[f.name].pop(0), f.time_ms))
    faults += [(name, start, end) for name, starts in open_faults.items() for start in starts]
    return Timeline(
        end_ms=end, bucket_ms=bucket,
        acks_per_s=tuple(a * 1000.0 / bucket for a in acks),
        latency_p50_ms=tuple(percentile(b, 0.5) for b in lat),
        latency_max_ms=tuple(b[-1] if b else None for b in lat),
        faults=tuple(sorted(faults, key=lambda f: f[1])),
        failed_ms=tuple(sorted(e.time_ms for e in ix.failed.values())),
        indeterminate_ms=tuple(sorted(e.time_ms for e in ix.indeterminate.values())),
    )


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
<p>Shaded: faults. Red ticks: sends that failed; orange: indeterminate. Bucket {tl.bucket_ms:.0f}
ms.</p>
<h2>Summary</h2>
<pre>{html.escape(summary)}</pre>
</body></html>
"""


def _svg(tl: Timeline) -> str:
    top1, top2 = 16, _H + 40  # each chart has its label above it
    height = top2 + _H + 54
    x = _x_scale(tl)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W + _PAD + 10}" '
             f'height="{height}" role="img" aria-label="timeline">']
    for name, start, stop in tl.faults:
        parts.append(f'<rect x="{x(start):.1f}" width="{max(x(stop) - x(start), 1):.1f}" '
                     f'height="{top2 + _H - top1}" y="{top1}" fill="#f4a261" '
                     f'fill-opacity="0.25">'
                     f'<title>{html.escape(name)}: {start:.0f}-{stop:.0f} ms</title></rect>')
        parts.append(f'<text x="{x(start) + 2:.1f}" y="{top2 + _H + 14}">'
                     f'{html.escape(name)}</text>')
    parts.append(_chart(tl, list(tl.acks_per_s), top1, "acks/s", "#2a6f97"))
    parts.append(_chart(tl, list(tl.latency_max_ms), top2,
                        "send latency ms: max (grey), p50 (purple)", "#bbb"))
    parts.append(_chart(tl, list(tl.latency_p50_ms), top2, None, "#6a4c93",
                        top=_top(tl.latency_max_ms)))
    for times, colour, y in ((tl.failed_ms, "#cf222e", top2 + _H + 20),
                             (tl.indeterminate_ms, "#e9a23b", top2 + _H + 32)):
        for t in times[:5000]:  # bound the page size
            parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y}" y2="{y + 10}" '
                         f'stroke="{colour}"/>')
    parts.append(f'<text x="{_PAD}" y="{height - 2}">0 ms</text>')
    parts.append(f'<text x="{_W + _PAD - 70}" y="{height - 2}">{tl.end_ms:.0f} ms</text>')
    parts.append("</svg>")
    return "\n".join(parts)


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
