"""The report folder: four files, JSON that parses, a self-contained HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tidelog.chaos.checker import Checker
from tidelog.chaos.history import (
    ConsumerRead,
    FaultStart,
    FaultStop,
    FinalRead,
    FinalRecord,
    History,
    LeaderObserved,
    SendFailed,
    SendIndeterminate,
    SendInvoked,
    SendOk,
    encode_value,
)
from tidelog.chaos.queue_history import (
    Action,
    QueueCoordinator,
    QueueDelivery,
    QueueHistory,
    QueueSettlement,
    SettleResult,
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


def _with_leaders_and_reads() -> History:
    """_history() plus what a newer run records: leader samples (on change, per partition) and
    consumer reads. Leader changes: two in the 1100 ms bucket (p0 n1 -> none -> n2, p1 n2 -> n3),
    one in the 1600 ms bucket (p0 back to n1); p0 had no leader at 950 ms."""
    leaders = [(0, "n1", 100.0), (1, "n2", 120.0), (0, None, 950.0), (0, "n2", 1110.0),
               (1, "n3", 1150.0), (1, "n3", 1300.0), (0, "n1", 1620.0)]
    events = [LeaderObserved(partition=p, leader=n, time_ms=t) for p, n, t in leaders]
    events += [ConsumerRead(consumer="c", group=None, partition=0, offset=seq, key="k",
                            value=encode_value("p", seq), time_ms=seq * 50.0 + 30, poll=seq)
               for seq in range(30)]
    return History(tuple(sorted((*_history().events, *events), key=lambda e: e.time_ms)))


def _queue_history() -> QueueHistory:
    """Six deliveries, four acks answered OK (one more unknown, one nack), one coordinator move
    (n1 -> n2 at 1200 ms; the first observation is not a move)."""
    events: list = [QueueCoordinator(node="n1", time_ms=50.0),
                    QueueCoordinator(node=None, time_ms=1000.0),
                    QueueCoordinator(node="n2", time_ms=1200.0)]
    for i in range(6):
        t = 200.0 + i * 300
        events.append(QueueDelivery(consumer="q", delivery=i, topic="t", partition=0, offset=i,
                                    key=None, value="v", delivery_count=1, lock_deadline_ms=0,
                                    received_wall_ms=0, receive_invoked_ms=t - 5, time_ms=t))
        action, result = ((Action.NACK, SettleResult.OK) if i == 4 else
                          (Action.ACK, SettleResult.UNKNOWN) if i == 5 else
                          (Action.ACK, SettleResult.OK))
        events.append(QueueSettlement(consumer="q", delivery=i, topic="t", partition=0,
                                      offset=i, delivery_count=1, action=action, result=result,
                                      error="", invoked_ms=t + 5, time_ms=t + 10))
    return QueueHistory(tuple(sorted(events, key=lambda e: e.time_ms)))


def _counts(svg: str, kind: str) -> list[int]:
    return [int(c) for c in re.findall(rf'class="{kind}" data-count="(\d+)"', svg)]


def test_timeline_counts_leader_changes_and_reads_per_bucket() -> None:
    tl = timeline(_with_leaders_and_reads())
    assert tl.bucket_ms == 100.0
    assert {i: c for i, c in enumerate(tl.leader_changes) if c} == {11: 2, 16: 1}
    assert tl.leaderless_ms == (950.0,) and tl.leader_samples == 7
    assert sum(tl.reads_per_s) * tl.bucket_ms / 1000 == 30
    assert tl.queue_acks_per_s is None and tl.coordinator_changes is None  # a log run


def test_page_draws_leader_changes_and_consume_throughput(tmp_path: Path) -> None:
    history = _with_leaders_and_reads()
    page = write_report(tmp_path / "run", history, Checker().check(history)).read_text()
    assert _counts(page, "leader-changes") == [2, 1]
    assert "leader changes per bucket: 3 in all; 1 times a partition had no leader" in page
    assert page.count('class="leaderless"') == 1
    assert "consume: records read/s" in page and "produce: acks/s" in page
    assert "queue: receives/s" not in page


def test_queue_run_draws_receives_acks_and_coordinator_moves(tmp_path: Path) -> None:
    history, queue = _with_leaders_and_reads(), _queue_history()
    tl = timeline(history, queue)
    assert tl.queue_receives_per_s is not None and tl.queue_acks_per_s is not None
    assert sum(tl.queue_receives_per_s) * tl.bucket_ms / 1000 == 6
    assert sum(tl.queue_acks_per_s) * tl.bucket_ms / 1000 == 4  # OK acks only
    assert tl.coordinator_changes is not None
    assert {i: c for i, c in enumerate(tl.coordinator_changes) if c} == {12: 1}
    page = write_report(tmp_path / "run", history, Checker().check(history),
                        queue_history=queue).read_text()
    assert "queue: receives/s (green), acks/s (blue); coordinator moves (bars): 1" in page
    assert _counts(page, "coordinator-changes") == [1]


def test_an_old_history_without_leader_samples_still_renders(tmp_path: Path) -> None:
    """A history.jsonl written before these charts (no leader_observed, no reads) loads and
    renders, with the leader chart saying it has no samples."""
    old = tmp_path / "old.jsonl"
    _history().dump(old)
    history = History.load(old)
    page = write_report(tmp_path / "run", history, Checker().check(history)).read_text()
    assert "leader changes: no leader samples in this history" in page
    assert _counts(page, "leader-changes") == [] and "class=\"leaderless\"" not in page
    assert page.count("<svg") == 1 and "kill-n1" in page
