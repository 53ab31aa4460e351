"""Phases of the Raft rounds of the busiest group, from benchmarks/round_trace's files.

    .venv/bin/python benchmarks/round_trace_report.py /tmp/trace      # reads /tmp/trace.<pid>

The busiest group is the one with the most proposals; its leader is the process that made them.
For each proposal (after the first 20: warm-up) it follows the round through the leader and the
first follower that receives it, and prints the median and mean of each phase in ms. Inside the
fsync step, the group-commit job's parts are printed per process. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import bisect
import glob
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable

Event = tuple[int, str, list[str]]  # (µs, pid, fields)


def load(prefix: str) -> list[Event]:
    events: list[Event] = []
    for path in glob.glob(f"{glob.escape(prefix)}.*"):
        pid = path.rsplit(".", 1)[1]
        with open(path) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 2 and fields[0].isdigit():
                    events.append((int(fields[0]), pid, fields[1:]))
    events.sort(key=lambda e: e[0])
    return events


def phases(events: list[Event]) -> dict[str, list[int]]:
    proposals = Counter((p, a[1]) for _, p, a in events if a[0] == "P")
    if not proposals:
        return {}
    (leader, group), _ = proposals.most_common(1)[0]
    times = [e[0] for e in events]
    pid_at = {t: p for t, p, a in events if a[0] == "RB"}

    def first(t0: int | None, match: Callable[[str, list[str]], bool],
              within_us: int = 1_000_000) -> int | None:
        if t0 is None:
            return None
        i = bisect.bisect_left(times, t0)
        while i < len(events) and events[i][0] - t0 < within_us:
            t, pid, a = events[i]
            if match(pid, a):
                return t
            i += 1
        return None

    out: dict[str, list[int]] = defaultdict(list)
    rounds = [(t, int(a[2])) for t, p, a in events if a[0] == "P" and p == leader and a[1] == group]
    for t, off in rounds[20:]:
        ready = first(t, lambda p, a, o=off: p == leader and a[0] == "H0" and a[1] == group
                      and int(a[4]) >= o)
        sent = first(t, lambda p, a: p == leader and a[0] == "SEND" and a[1] == group
                     and a[2] == "append" and int(a[5]) > 0)
        own = first(ready, lambda p, a: p == leader and a[0] == "S1" and a[1] == group)
        got = first(sent, lambda p, a: p != leader and a[0] == "RB"
                    and f" {group}:append:" in " " + " ".join(a[2:]))
        follower = pid_at.get(got)
        f_ready = first(got, lambda p, a, o=off, f=follower: p == f and a[0] == "H0"
                        and a[1] == group and int(a[4]) >= o)
        f_synced = first(f_ready, lambda p, a, f=follower: p == f and a[0] == "S1"
                         and a[1] == group)
        f_sent = first(f_synced, lambda p, a, o=off, f=follower: p == f and a[0] == "SEND"
                       and a[1] == group and a[2] == "append_resp" and int(a[4]) >= o)
        back = first(f_sent, lambda p, a: p == leader and a[0] == "RB" and "append_resp" in
                     " ".join(a[2:]))
        answered = first(t, lambda p, a, o=off: p == leader and (
            (a[0] == "AC" and a[1] == group and int(a[2]) >= o)
            or (a[0] == "H1" and a[1] == group and int(a[2]) >= o)))
        steps = [t, ready, sent, own, got, f_ready, f_synced, f_sent, back, answered]
        if any(s is None for s in steps):
            continue
        _, ready, sent, own, got, f_ready, f_synced, f_sent, back, answered = steps
        out["propose -> leader's Ready"].append(ready - t)
        out["leader's Ready -> its own fsync done"].append(own - ready)
        out["leader send -> follower receives"].append(got - sent)
        out["follower receives -> its Ready"].append(f_ready - got)
        out["follower's Ready -> its fsync done"].append(f_synced - f_ready)
        out["follower fsync done -> answer sent"].append(f_sent - f_synced)
        out["follower answer -> leader receives"].append(back - f_sent)
        out["leader receives -> write answered"].append(max(0, answered - back))
        out["propose -> write answered"].append(answered - t)
    return out


def job_parts(events: list[Event]) -> dict[str, dict[str, list[int]]]:
    """Per process: executor start, log fsync, marker write, back on the loop."""
    parts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    previous = {"T0": ("S0", "executor start"), "T1": ("T0", "log fsync"),
                "T2": ("T1", "marker write + fdatasync"), "S1": ("T2", "back on the loop")}
    last: dict[tuple[str, str], int] = {}
    for t, pid, a in events:
        kind = a[0]
        if kind not in ("S0", "T0", "T1", "T2", "S1"):
            continue
        if kind in previous and (pid, previous[kind][0]) in last:
            parts[pid][previous[kind][1]].append(t - last.pop((pid, previous[kind][0])))
        last[(pid, kind)] = t
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="TIDELOG_ROUND_TRACE given to the nodes")
    args = parser.parse_args()
    events = load(args.prefix)
    table = phases(events)
    if not table:
        print("no proposals traced")
        return 1
    for name, values in table.items():
        print(f"{name:40s} n={len(values):5d}  p50 {statistics.median(values) / 1000:6.2f} ms"
              f"  mean {statistics.mean(values) / 1000:6.2f} ms")
    for pid, parts in sorted(job_parts(events).items()):
        print(f"pid {pid}: " + "; ".join(
            f"{name} p50 {statistics.median(v) / 1000:.2f} ms" for name, v in parts.items() if v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
