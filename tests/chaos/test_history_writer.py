"""The one JSON-lines writer (chaos/history.py `JsonLinesWriter`) behind both run histories:
`history.jsonl` (HistoryWriter) and `queue-history.jsonl` (QueueHistoryWriter). What each file
holds is what the checker is given, threads may append at once, and a late append after the run
closed the file is kept in memory instead of failing its thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tidelog.chaos.history import (
    FaultStart,
    History,
    HistoryWriter,
    SendInvoked,
    SendOk,
    encode_value,
)
from tidelog.chaos.queue_history import (
    Action,
    QueueDelivery,
    QueueHistory,
    QueueHistoryWriter,
    QueueSettlement,
    SettleResult,
)

THREADS = 4
PER_THREAD = 250


def _delivery(n: int) -> QueueDelivery:
    return QueueDelivery(consumer="c0", delivery=n, topic="t", partition=0, offset=n, key="k",
                         value=encode_value("p0", n), delivery_count=1, lock_deadline_ms=2000,
                         received_wall_ms=1000, receive_invoked_ms=1.0, time_ms=2.0)


def _ack(n: int, result: SettleResult = SettleResult.OK) -> QueueSettlement:
    return QueueSettlement(consumer="c0", delivery=n, topic="t", partition=0, offset=n,
                           delivery_count=1, action=Action.ACK, result=result, error="",
                           invoked_ms=3.0, time_ms=4.0)


def test_the_history_file_holds_what_the_checker_is_given(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    events = (FaultStart(name="kill-leader", targets=("n1",), time_ms=0.5),
              SendInvoked(producer="p0", seq=0, key="k", value=encode_value("p0", 0),
                          partition=None, time_ms=1.0),
              SendOk(producer="p0", seq=0, partition=0, offset=0, time_ms=2.0))
    with HistoryWriter(path) as writer:
        writer.extend(events)
        assert writer.history() == History(events)
    assert path.read_text() == History(events).to_jsonl()
    assert History.load(path) == History(events)


def test_the_queue_history_file_round_trips_and_counts_ok_acks(tmp_path: Path) -> None:
    path = tmp_path / "queue-history.jsonl"
    writer = QueueHistoryWriter(path)
    for event in (_delivery(0), _ack(0), _delivery(1), _ack(1, SettleResult.LOCK_LOST)):
        writer.append(event)
    writer.close()
    assert (writer.deliveries, writer.acks) == (2, 1), "a LOCK_LOST ack is not an ack"
    assert QueueHistory.load(path) == writer.history() and len(writer.history()) == 4


def test_threads_append_at_once_and_no_line_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "queue-history.jsonl"
    writer = QueueHistoryWriter(path)

    def work(base: int) -> None:
        for i in range(PER_THREAD):
            writer.append(_delivery(base + i))

    threads = [threading.Thread(target=work, args=(t * PER_THREAD,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    loaded = QueueHistory.load(path)
    assert writer.deliveries == len(loaded) == THREADS * PER_THREAD
    assert sorted(e.delivery for e in loaded) == list(range(THREADS * PER_THREAD))  # type: ignore[union-attr]


def test_an_append_after_close_is_kept_in_memory_not_written(tmp_path: Path) -> None:
    path = tmp_path / "queue-history.jsonl"
    writer = QueueHistoryWriter(path)
    writer.append(_delivery(0))
    writer.close()
    written = path.read_text()
    writer.append(_ack(0))  # a consumer thread learning its outcome after the run stopped
    assert path.read_text() == written and len(writer.history()) == 2 and writer.acks == 1


def test_more_events_than_the_bound_is_a_runaway_workload(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", events_max=2)
    writer.append(FaultStart(name="x", targets=(), time_ms=1.0))
    writer.append(FaultStart(name="x", targets=(), time_ms=2.0))
    with pytest.raises(AssertionError, match="history over 2 events"):
        writer.append(FaultStart(name="x", targets=(), time_ms=3.0))
    writer.close()
    with pytest.raises(ValueError, match="queue history line 2"):
        QueueHistory.from_jsonl(QueueHistory((_delivery(0),)).to_jsonl() + "{}\n")
