"""The report folder: four files, JSON that parses, a self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path

from tidelog.chaos.checker import Checker
from tidelog.chaos.history import (
    FaultStart,
    FaultStop,
    FinalRead,
    FinalRecord,
    History,
    SendFailed,
    SendIndeterminate,
    SendInvoked,
    SendOk,
    encode_value,
)
from tidelog.chaos.report import timeline, write_report


def _history() -> History:
    events: list = []
    for seq in range(40):
        t = seq * 50.0
        events.append(SendInvoked(producer="p", seq=seq, key="k", value=encode_value("p", seq),
                                  partition=0, time_ms=t))
        if seq == 20:
            events.append(SendFailed(producer="p", seq=seq, error="NOT_LEADER", time_ms=t + 3))
        elif seq == 21:
            events.append(SendIndeterminate(producer="p", seq=seq, error="timeout",
                                            time_ms=t + 900))
        else:
            events.append(SendOk(producer="p", seq=seq, partition=0, offset=seq, time_ms=t + 4))
    events.append(FaultStart(name="kill-n1", targets=("n1",), time_ms=900.0))
    events.append(FaultStop(name="kill-n1", targets=("n1",), time_ms=1300.0))
    events.append(FaultStart(name="isolate-n2", targets=("n2",), time_ms=1800.0))  # never healed
    events.append(FinalRead(partition=0, time_ms=2500.0, records=tuple(
        FinalRecord(offset=s, key="k", value=encode_value("p", s)) for s in range(40)
        if s not in (20, 21))))
    return History(tuple(events))


def test_report_folder_has_history_results_summary_and_page(tmp_path: Path) -> None:
    history = _history()
    results = Checker().check(history)
    page = write_report(tmp_path / "run", history, results)
    folder = page.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "history.jsonl", "report.html", "results.json", "summary.txt"]
    assert History.load(folder / "history.jsonl") == history
    assert json.loads((folder / "results.json").read_text())["valid"] is True
    assert "verdict: VALID" in (folder / "summary.txt").read_text()
    text = page.read_text()
    assert "<svg" in text and "kill-n1" in text and "isolate-n2" in text
    # Self-contained: no external assets or scripts.
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<script" not in text


def test_timeline_buckets_acks_and_marks_faults_and_errors() -> None:
    tl = timeline(_history())
    assert tl.bucket_ms == 100.0
    assert sum(tl.acks_per_s) * tl.bucket_ms / 1000 == 38
    assert tl.faults == (("kill-n1", 900.0, 1300.0), ("isolate-n2", 1800.0, 2500.0))
    assert tl.failed_ms == (1003.0,) and tl.indeterminate_ms == (1950.0,)
