"""`tidelog node --log-format json` and the log lines that say what happened (docs/metrics.md
"Logs"): a real node's whole output parses as JSON lines with the documented keys, and names
leader elections (with topic, partition and term) and quota throttling (once per client per
10 s); the slow-fsync warning over a real fsync (threshold set to 0 ms) and its rate limit; the
follower catch-up rule on numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from tidelog.client import Admin, Producer
from tidelog.node import group_commit, log_events
from tidelog.node.group_commit import GroupCommitter
from tidelog.node.local_cluster import LocalCluster
from tidelog.node.log_events import CatchUpWatch, SlowFsyncLog, ThrottleLog
from tidelog.node.logging_setup import JsonFormatter
from tidelog.node.main import add_node_arguments
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.proto.batch import Codec, encode_batch

KEYS = {"ts", "level", "logger", "node", "msg"}


@pytest.fixture(scope="module")
def json_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One node logging JSON, with a topic of 2 partitions and a throttled producer."""
    cluster = LocalCluster(1, tmp_path_factory.mktemp("json-logs"),
                           extra_args=("--log-format", "json"),
                           env={"TIDELOG_QUOTA_SAMPLE_MS": "250", "TIDELOG_QUOTA_SAMPLES": "4"})
    cluster.start()
    try:
        cluster.wait_healthy(timeout_s=60)
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic("logs", partitions=2, replication_factor=1)
            admin.set_quota(client_id="noisy", producer_byte_rate=20_000)
            deadline = time.monotonic() + 20
            while not any(e.entity.client_id == "noisy" for e in admin.describe_quotas()):
                assert time.monotonic() < deadline, "the quota never showed up"
                time.sleep(0.1)
        with Producer(cluster.bootstrap, client_id="noisy", compression="none",
                      linger_ms=1, batch_size=4096) as producer:
            for i in range(50):  # 50 KB at a 20 KB/s quota: throttled over and over
                producer.send("logs", b"x" * 1000, partition=i % 2)
            producer.flush(60)
            assert producer.throttle.throttled_responses >= 2
        yield cluster
    finally:
        cluster.stop()


def lines_of(cluster: LocalCluster) -> list[str]:
    return cluster.node(1).log_path.read_text().splitlines()


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_every_line_of_a_json_node_is_a_json_object_with_the_documented_keys(json_node) -> None:
    lines = lines_of(json_node)
    assert len(lines) >= 5
    for line in lines:
        entry = json.loads(line)  # raises on any line that is not JSON
        assert entry.keys() >= KEYS, line
        assert entry["node"] == 1 and entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR",
                                                          "CRITICAL"), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"]), line
        assert datetime.fromisoformat(entry["ts"]).utcoffset().total_seconds() == 0
        assert isinstance(entry["logger"], str) and entry["logger"], line
        assert isinstance(entry["msg"], str), line
        assert entry.get("exc", "traceback") != "", line  # present only with a traceback


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_the_log_names_each_leader_election_with_topic_partition_and_term(json_node) -> None:
    msgs = [json.loads(line)["msg"] for line in lines_of(json_node)]
    elected = [m for m in msgs if m.startswith("leader elected for ")]
    pattern = r"leader elected for (logs/[01]|the metadata group) in term (\d+) \(node 1\)"
    found = {re.fullmatch(pattern, m).group(1) for m in elected if re.fullmatch(pattern, m)}
    assert found >= {"logs/0", "logs/1", "the metadata group"}, elected
    assert len([m for m in elected if "logs/0 " in m]) == 1  # once per election


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_quota_throttling_is_logged_once_per_client_per_10_s(json_node) -> None:
    entries = [json.loads(line) for line in lines_of(json_node)]
    throttled = [e for e in entries if e["msg"].startswith("throttling client ")]
    assert throttled, "no throttle line"
    assert re.match(r"throttling client noisy \(\S+\) on producer_byte_rate \(limit 20000/s\): "
                    r"\d+ ms", throttled[0]["msg"]), throttled[0]
    # the producer was throttled at least twice (checked in the fixture) in well under 10 s
    first = datetime.fromisoformat(throttled[0]["ts"])
    assert all((datetime.fromisoformat(e["ts"]) - first).total_seconds() >= 10
               for e in throttled[1:]), throttled


def test_log_format_comes_from_the_flag_or_tidelog_log_format(monkeypatch) -> None:
    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_node_arguments(parser)
        return parser.parse_args(list(argv))

    monkeypatch.delenv("TIDELOG_LOG_FORMAT", raising=False)
    assert parse().log_format == "text"
    monkeypatch.setenv("TIDELOG_LOG_FORMAT", "json")
    assert parse().log_format == "json"
    assert parse("--log-format", "text").log_format == "text"
    with pytest.raises(SystemExit):
        parse("--log-format", "xml")


def test_json_formatter_puts_the_traceback_in_exc_on_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.getLogger("tidelog.test").makeRecord(
            "tidelog.test", logging.ERROR, __file__, 1, "failed %s", ("x",), exc_info=True)
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter(7).format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "failed x" and entry["node"] == 7 and entry["level"] == "ERROR"
    assert "ValueError: bad\nthing" in entry["exc"] and "Traceback" in entry["exc"]


def _log_with_data(directory: Path) -> PartitionLog:
    plog = PartitionLog.open(directory, LogConfig())
    plog.append(encode_batch([(None, b"v", (), 1_700_000_000_000)], codec=Codec.NONE), term=1)
    return plog


def test_a_slow_fsync_is_a_rate_limited_warning_naming_the_log(tmp_path: Path, monkeypatch,
                                                                caplog) -> None:
    """Every real fsync is "slow" at a 0 ms threshold; the clock seam steps the rate limit."""
    now = [1000.0]
    monkeypatch.setattr(log_events, "FSYNC_SLOW_MS", 0.0)
    monkeypatch.setattr(group_commit, "SLOW_FSYNCS", SlowFsyncLog(clock=lambda: now[0]))
    plog = _log_with_data(tmp_path / "events-0.5")
    committer = GroupCommitter()

    def sync_once() -> list[str]:
        caplog.clear()
        asyncio.run(committer.sync(plog))
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="tidelog.node.events"):
        first = sync_once()
        assert len(first) == 1, first
        assert re.match(r"fsync took \d+\.\d ms \(slower than 0 ms\) for the log in events-0.5",
                        first[0]), first
        assert sync_once() == [] and sync_once() == []  # within 10 s: held back
        now[0] += 10.0
        third = sync_once()
    plog.close()
    assert len(third) == 1 and "2 more slow fsyncs in the last 10 s not logged" in third[0]


def test_a_fast_fsync_is_not_logged(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(log_events, "FSYNC_SLOW_MS", 60_000.0)
    monkeypatch.setattr(group_commit, "SLOW_FSYNCS", SlowFsyncLog())
    plog = _log_with_data(tmp_path / "p")
    with caplog.at_level(logging.WARNING, logger="tidelog.node.events"):
        asyncio.run(GroupCommitter().sync(plog))
    plog.close()
    assert not caplog.records


def test_throttle_log_says_once_per_client_per_interval(caplog) -> None:
    now = [0.0]
    throttle = ThrottleLog(interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="tidelog.node.events"):
        assert throttle.throttled("a", "request_rate (limit 5/s)", 120)
        assert not throttle.throttled("a", "request_rate (limit 5/s)", 80)
        assert throttle.throttled("b", "request_rate (limit 5/s)", 80)  # another client
        now[0] = 9.9
        assert not throttle.throttled("a", "request_rate (limit 5/s)", 80)
        now[0] = 10.0
        assert throttle.throttled("a", "request_rate (limit 5/s)", 40)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "throttling client a on request_rate (limit 5/s)",
        "throttling client b on request_rate (limit 5/s)",
        "throttling client a on request_rate (limit 5/s)"]


def test_a_follower_is_reported_behind_once_and_caught_up_once() -> None:
    watch = CatchUpWatch(tick_ms=100, lag_ms=2_000)  # checks every 500 ms: behind after 4
    assert watch.lag_checks == 4
    events = []
    # follower 2 keeps up under load (behind at some checks, caught up at others): no event
    for check, match in enumerate([10, 9, 12, 11, 14, 14], start=1):
        events += watch.observe("g", {2: match}, commit=match + (check % 2), check=check)
    assert events == []
    # follower 3 stops at 100 while the commit index moves on
    for check in range(1, 7):
        events += watch.observe("g", {3: 100}, commit=100 + check, check=check)
    assert [(e.follower, e.caught_up, e.match) for e in events] == [(3, False, 100)]
    # back, replicating but not there yet; then at the commit index: caught up, once
    events = watch.observe("g", {3: 150}, commit=200, check=7)
    events += watch.observe("g", {3: 200}, commit=200, check=8)
    events += watch.observe("g", {3: 201}, commit=201, check=9)
    assert [(e.follower, e.caught_up, e.match) for e in events] == [(3, True, 200)]
    # leadership lost and won again: the old state is gone
    watch.forget("g")
    assert watch.observe("g", {3: 0}, commit=300, check=10) == []
