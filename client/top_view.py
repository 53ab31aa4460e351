"""`tidelog top`'s screen: snapshots in, rich renderables out (pure: no I/O, no clock).

One header line (cluster, nodes up, metadata leader, total produce and consume rates, when the
poll ran), then four tables: nodes (all of them: a down node is the first thing to see), topics,
the biggest lags and the oldest queues. The terminal's height is shared out by `allot`: nodes
first, then what is left among the other three in proportion to what each has to show; a table
cut short ends with a "... N more" row, so nothing is hidden silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from tidelog.client.top_model import (
    NodeState,
    Rates,
    Snapshot,
    biggest_lags,
    biggest_queues,
    rates,
)

__all__ = ["TABLE_OVERHEAD_LINES", "allot", "format_duration", "render"]

#: lines a table takes besides its rows (title, header, the rule under it)
TABLE_OVERHEAD_LINES = 3
#: lines kept for the header line and the problems under the tables
HEADER_LINES = 2
PROBLEM_LINES_MAX = 3
#: the nodes table's NOTE (why a node is down) is cut here: rich would rather squeeze the other
#: columns to nothing than wrap a no_wrap cell
NOTE_CHARS_MAX = 32
#: rows a table gets even on a tiny terminal (its title and one row stay readable)
ROWS_MIN = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class _Topic:
    name: str
    partitions: int
    end_offset: int | None
    no_leader: int
    under_replicated: int


def render(previous: Snapshot | None, current: Snapshot, *, height: int,
           footer: str = "q quits") -> RenderableType:
    """The whole screen for `current` (rates against `previous`), fitting `height` lines."""
    rate = rates(previous, current)
    if not current.reachable:
        return _unreachable(current, footer)
    problems = list(current.problems[:PROBLEM_LINES_MAX])
    nodes = _nodes_table(current)
    topics = _topics(current)
    lags = biggest_lags(current.lags)
    queues = biggest_queues(current.queues)
    budget = (height - HEADER_LINES - len(problems) - len(current.nodes)
              - 4 * TABLE_OVERHEAD_LINES)
    topic_rows, lag_rows, queue_rows = allot(budget, [len(topics), len(lags), len(queues)])
    parts: list[RenderableType] = [
        _header(current, rate, footer), nodes,
        _topics_table(topics, rate, topic_rows),
        _lags_table(lags, lag_rows),
        _queues_table(queues, rate, queue_rows),
    ]
    parts += [Text(p, style="yellow", overflow="ellipsis", no_wrap=True) for p in problems]
    return Group(*parts)


def allot(budget: int, wants: Sequence[int]) -> list[int]:
    """Share `budget` rows among tables wanting `wants` rows: each gets at least
    min(want, ROWS_MIN), then the rest goes round-robin to those still wanting, so a short table
    gives its unused rows to the longer ones. Never more than a table wants."""
    given = [min(w, ROWS_MIN) for w in wants]
    left = budget - sum(given)
    while left > 0:
        hungry = [i for i, w in enumerate(wants) if given[i] < w]
        if not hungry:
            break
        for i in hungry:
            if left == 0:
                break
            given[i] += 1
            left -= 1
    return given


def format_duration(seconds: float | None) -> str:
    """12.3s, 5m03s, 2h05m, 3d04h: short enough for a column, exact enough to act on."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rate(per_s: float | None) -> str:
    if per_s is None:
        return "-"
    if per_s >= 100_000:
        return f"{per_s / 1000:,.0f}k/s"
    return f"{per_s:,.1f}/s"


# --- parts ---------------------------------------------------------------------------------------

def _header(s: Snapshot, rate: Rates, footer: str) -> Text:
    up = sum(1 for n in s.nodes if n.state is NodeState.UP)
    clock = time.strftime("%H:%M:%S", time.gmtime(s.wall_ms / 1000))
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("tidelog top", style="bold")
    text.append(f"  nodes {up}/{len(s.nodes)} up",
                style="green" if up == len(s.nodes) else "bold red")
    text.append(f"  produce {format_rate(rate.produce_total)}"
                f"  consume {format_rate(rate.consume_total)}")
    leader = s.metadata_leader_id
    text.append(f"  metadata leader {leader if leader >= 0 else 'NONE'}",
                style="" if leader >= 0 else "bold red")
    text.append(f"  cluster {s.cluster_id or '?'}  at {clock} UTC ({s.poll_s * 1000:.0f} ms)"
                f"  {footer}", style="dim")
    return text


def _unreachable(s: Snapshot, footer: str) -> RenderableType:
    clock = time.strftime("%H:%M:%S", time.gmtime(s.wall_ms / 1000))
    lines: list[RenderableType] = [
        Text(f"tidelog top  NO NODE ANSWERS (poll at {clock} UTC, {s.poll_s * 1000:.0f} ms); "
             f"asking again  {footer}", style="bold red"),
    ]
    lines += [Text(p, style="yellow") for p in s.problems]
    for n in s.nodes:
        lines.append(Text(f"node {n.id} {n.address}: down ({n.problem})", style="red"))
    return Group(*lines)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, expand=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True,
                         min_width=len(column))
    return table


def _nodes_table(s: Snapshot) -> Table:
    table = _table("Nodes", "NODE", "ADDRESS", "STATE", "LEADERS", "VOTER", "METADATA", "NOTE")
    table.columns[1].justify = "left"
    note = table.columns[-1]
    note.justify = "left"
    for n in s.nodes:
        up = n.state is NodeState.UP
        note = n.problem
        if up and n.peers_see_alive is False:
            note = "answers us, but its peers do not see it"
        table.add_row(str(n.id), n.address,
                      Text("up", style="green") if up else Text("DOWN", style="bold red"),
                      str(n.leaders) if up else "-", "yes" if n.voter else "no",
                      "leader" if n.id == s.metadata_leader_id else "",
                      note if len(note) <= NOTE_CHARS_MAX else note[:NOTE_CHARS_MAX - 3] + "...")
    return table


def _topics(s: Snapshot) -> list[_Topic]:
    down = {n.id for n in s.nodes if n.state is NodeState.DOWN}
    by_topic: dict[str, list] = {}
    for p in s.partitions:
        if not p.internal:
            by_topic.setdefault(p.topic, []).append(p)
    out = []
    for name, parts in sorted(by_topic.items()):
        known = [p.end_offset for p in parts if p.end_offset >= 0]
        out.append(_Topic(
            name=name, partitions=len(parts),
            end_offset=sum(known) if len(known) == len(parts) else None,
            no_leader=sum(1 for p in parts if p.leader_id < 0 or p.leader_id in down),
            under_replicated=sum(1 for p in parts
                                 if p.end_offset >= 0 and len(p.in_sync) < len(p.replicas))))
    return out


def _topics_table(topics: list[_Topic], rate: Rates, rows: int) -> Table:
    table = _table("Topics", "TOPIC", "PARTS", "END OFFSETS", "PRODUCE", "CONSUME",
                   "NO LEADER", "UNDER-REPL")
    by_rate = sorted(topics, key=lambda t: (-rate.produce_by_topic.get(t.name, 0.0), t.name))
    shown, hidden = _cut(by_rate, rows)
    for t in shown:
        table.add_row(t.name, str(t.partitions),
                      "?" if t.end_offset is None else f"{t.end_offset:,}",
                      format_rate(rate.produce_by_topic.get(t.name)),
                      format_rate(rate.consume_by_topic.get(t.name)),
                      Text(str(t.no_leader), style="bold red" if t.no_leader else ""),
                      Text(str(t.under_replicated),
                           style="yellow" if t.under_replicated else ""))
    _more(table, hidden)
    return table


def _lags_table(lags: list, rows: int) -> Table:
    table = _table("Biggest lags", "GROUP", "TOPIC", "PART", "LAG", "LAG SECONDS",
                   "COMMITTED", "END OFFSET")
    table.columns[1].justify = "left"
    shown, hidden = _cut(lags, rows)
    for g in shown:
        table.add_row(g.group, g.topic, str(g.partition), f"{g.lag_records:,}",
                      format_duration(g.lag_seconds), f"{g.committed:,}", f"{g.end_offset:,}")
    _more(table, hidden)
    return table


def _queues_table(queues: list, rate: Rates, rows: int) -> Table:
    table = _table("Queues", "QUEUE", "DEPTH", "IN FLIGHT", "OLDEST UNACKED", "DLQ", "ACKS",
                   "CONSUMERS", "COORD")
    shown, hidden = _cut(queues, rows)
    for q in shown:
        table.add_row(q.name, f"{q.depth:,}", f"{q.in_flight:,}",
                      format_duration(q.oldest_unacked_age_s),
                      "?" if q.dlq_depth is None else f"{q.dlq_depth:,}",
                      format_rate(rate.acks_by_queue.get(q.name)),
                      "?" if q.consumers is None else str(q.consumers), str(q.coordinator_id))
    _more(table, hidden)
    return table


def _cut(items: list, rows: int) -> tuple[list, int]:
    """(the items to show, how many are left out): the first rows-1 and room for a
    "... N more" row when they do not all fit in `rows`."""
    if len(items) <= rows:
        return items, 0
    shown = max(0, rows - 1)
    return items[:shown], len(items) - shown


def _more(table: Table, hidden: int) -> None:
    if hidden:
        table.add_row(Text(f"... {hidden} more", style="dim"))
