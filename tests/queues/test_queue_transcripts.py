"""Transcript tests of QueueCore: readable scenario scripts with the core's answers.

Each file in tests/queues/transcripts/ holds commands (lines starting with "> ") each followed
by what the core answered. The test replays the commands and compares the whole text, so a change
of behaviour shows as a diff a reviewer can read. Regenerate on purpose with
``TIDELOG_REGEN_TRANSCRIPTS=1 pytest tests/queues/test_queue_transcripts.py``.

Commands (times are plain ms; partitions are of topic "t"):
    config [parts=N] [QueueConfig field=value ...]     must come first
    offer pN A-B [ts=MS] [keys=k1,k2,-,...] [read_to=X] now=MS
    acquire CONSUMER N now=MS
    settle CONSUMER ack|nack|reject|release|extend pN A-B count=C now=MS [delay=] [reason=]
           [extend=]
    tick now=MS | jobs | dead_lettered pN A,B,... now=MS | next now=MS | stats now=MS
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.queues.config import QueueConfig
from tidelog.node.queues.core import QueueCore
from tidelog.node.queues.deltas import Delta, encode_delta
from tidelog.node.queues.model import OfferedRecord, Settle, SettleKind

DIR = pathlib.Path(__file__).parent / "transcripts"
FILES = sorted(DIR.glob("*.txt"))


def _args(words: list[str]) -> tuple[list[str], dict[str, str]]:
    plain = [w for w in words if "=" not in w]
    named = dict(w.split("=", 1) for w in words if "=" in w)
    return plain, named


def _span(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def _deltas(deltas: list[Delta]) -> list[str]:
    out = []
    for d in deltas:
        enc = encode_delta(d)
        kind = enc.pop("k")
        out.append(f"  + {kind} {json.dumps(enc, sort_keys=True, separators=(',', ':'))}")
    return out


class _Runner:
    def __init__(self) -> None:
        self.core: QueueCore | None = None

    def run(self, line: str) -> list[str]:
        verb, *words = line.split()
        plain, named = _args(words)
        now = int(named.pop("now", "0"))
        if verb == "config":
            parts = int(named.pop("parts", "1"))
            fields = {f: type(getattr(QueueConfig(name="q", topics=("t",)), f)) for f in named}
            config = QueueConfig(name="q", topics=("t",), **{
                k: (v == "true") if fields[k] is bool else fields[k](v) for k, v in named.items()})
            self.core = QueueCore(config, {TopicPartition("t", p): 0 for p in range(parts)})
            return []
        core = self.core
        assert core is not None, "config must come first"
        match verb:
            case "offer":
                tp = TopicPartition("t", int(plain[0][1:]))
                offsets = list(_span(plain[1]))
                keys = named.get("keys", "").split(",") if "keys" in named else None
                recs = [OfferedRecord(o, int(named.get("ts", "0")),
                                      None if keys is None or keys[i] == "-" else
                                      keys[i].encode()) for i, o in enumerate(offsets)]
                return _deltas(core.offer(tp, recs, int(named.get("read_to", offsets[-1] + 1)),
                                          now))
            case "acquire":
                got, deltas = core.acquire(plain[0], int(plain[1]), now)
                lines = [f"{a.tp.topic}/{a.tp.partition} {f}-{last} count {c} lock "
                         f"{a.lock_deadline_ms}" for a in got for f, last, c in a.ranges]
                return (lines or ["nothing"]) + _deltas(deltas)
            case "settle":
                consumer, action, part, offsets = plain
                span = _span(offsets)
                item = Settle(tp=TopicPartition("t", int(part[1:])), first=span[0],
                              last=span[-1], delivery_count=int(named["count"]),
                              kind=SettleKind[action.upper()],
                              delay_ms=int(named.get("delay", "-1")),
                              reason=named.get("reason", ""),
                              extend_ms=int(named.get("extend", "0")))
                [outcome], deltas = core.settle(consumer, [item], now)
                state = ("ok" if outcome.ok else "LOCK_LOST" if outcome.lock_lost
                         else f"INVALID {outcome.message}")
                if outcome.lock_deadline_ms:
                    state += f" lock {outcome.lock_deadline_ms}"
                return [state] + _deltas(deltas)
            case "tick":
                return _deltas(core.tick(now)) or ["nothing"]
            case "jobs":
                return [f"{j.tp.topic}/{j.tp.partition}@{j.offset} {j.reason!r} attempts "
                        f"{j.attempts} first {j.first_delivery_ms} last {j.last_delivery_ms}"
                        for j in core.dead_letter_jobs()] or ["none"]
            case "dead_lettered":
                tp = TopicPartition("t", int(plain[0][1:]))
                return _deltas(core.dead_lettered(tp, [int(o) for o in plain[1].split(",")],
                                                  now)) or ["nothing"]
            case "next":
                return [f"next event {core.next_event_ms(now)}"]
            case "stats":
                s = core.stats(now, {})
                return [f"depth {s.depth} in_flight {s.in_flight} oldest_age "
                        f"{s.oldest_unacked_age_ms} acked {s.acked_total} delivered "
                        f"{s.delivered_total} redelivered {s.redelivered_total} dead_lettered "
                        f"{s.dead_lettered_total} expired {s.expired_total}"]
        raise AssertionError(f"unknown command {verb!r}")


def render(text: str) -> str:
    runner = _Runner()
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("> "):
            out.append(line)
            out.extend(runner.run(line[2:]))
        elif line.startswith("#") or not line.strip():
            out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_transcript(path: pathlib.Path) -> None:
    text = path.read_text()
    got = render(text)
    if os.environ.get("TIDELOG_REGEN_TRANSCRIPTS"):
        path.write_text(got)
        return
    assert got == text, f"{path.name} differs; regenerate on purpose with " \
                        "TIDELOG_REGEN_TRANSCRIPTS=1 if the change is intended"


def test_there_are_transcripts() -> None:
    assert FILES, "no transcripts found"
