"""`tidelog bench` against one real 3-node cluster (module-scoped): the table and the JSON,
counts that a separate consumer reads back, the throwaway topic deleted (or kept), Ctrl-C's
table so far, and usage errors that say what is wrong before anything is sent.

Calls go through the CLI's main() in this process (the real parser, client and nodes); record
counts are small so the module stays within a few seconds of cluster time.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client import Admin, Consumer, TopicPartition
from tidelog.client.bench_progress import Progress
from tidelog.client.bench_stats import LatencyKind, Percentiles, nearest_rank
from tidelog.client.bench_workloads import Counters
from tidelog.client.cli import main
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]
TIDELOG = str(Path(sys.executable).with_name("tidelog"))
LATENCY_FIELDS = {"kind", "samples", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cli-bench"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2"}) as running:
        yield running


def bench(cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *argv: str
          ) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["--bootstrap", cluster.bootstrap, "bench", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def read_back(cluster: LocalCluster, topic: str) -> list[bytes]:
    """Every record of the topic, read by a plain consumer up to the end offsets."""
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        tps = consumer.partitions_for(topic)
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, "could not read the topic back"
            values.extend(r.value for r in consumer.poll(timeout_s=0.5))
        return values


def topics(cluster: LocalCluster) -> list[str]:
    with Admin(cluster.bootstrap) as admin:
        return admin.list_topics()


def test_percentiles_are_nearest_rank() -> None:
    samples = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1000 ms
    p = Percentiles.of_seconds(LatencyKind.ACK, reversed(samples))
    assert p is not None
    assert (p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms) == pytest.approx(
        (500, 900, 990, 999, 1000))
    assert nearest_rank([7.0], 99.9) == 7.0
    assert Percentiles.of_seconds(LatencyKind.ACK, []) is None


def test_produce_json_counts_match_what_a_consumer_reads(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    rc, out, err = bench(cluster, capsys, "produce", "--create", "--keep", "--topic", topic,
                         "--partitions", "3", "--count", "1500", "--size", "64", "--keyed",
                         "--keys", "50", "--in-flight", "200", "--output", "json")
    assert rc == 0, err
    document = json.loads(out)
    assert document["topic"] == topic and document["partitions"] == 3
    assert document["created"] and document["kept"] and not document["interrupted"]
    assert document["settings"]["keys"] == 50 and document["settings"]["in_flight"] == 200
    (result,) = document["results"]
    assert result["workload"] == "produce"
    assert (result["messages"], result["errors"], result["bytes"]) == (1500, 0, 1500 * 64)
    assert result["msgs_per_s"] > 0 and result["mb_per_s"] > 0
    latency = result["latency"]
    assert set(latency) == LATENCY_FIELDS and latency["kind"] == "ack"
    assert latency["samples"] == 1500
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] \
        <= latency["p99_9_ms"] <= latency["max_ms"]
    values = read_back(cluster, topic)
    assert len(values) == 1500 and {len(v) for v in values} == {64}
    assert len(set(values)) == 1500, "every value differs (no lz4-friendly repeats)"
    # keyed: the 50 keys spread over all 3 partitions
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
    assert all(end > 0 for end in ends.values()), ends

    # consume the kept topic: it reads exactly what is there, as a table
    rc, out, err = bench(cluster, capsys, "consume", "--topic", topic)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"topic {topic} (3 partitions, RF 3)"), out
    header = lines[1].split()
    assert header == ["WORKLOAD", "MESSAGES", "ERRORS", "SECONDS", "MSGS/S", "MB/S", "LATENCY",
                      "P50-MS", "P90-MS", "P99-MS", "P99.9-MS", "MAX-MS"]
    row = lines[2].split()
    assert row[:3] == ["consume", "1500", "0"] and row[6] == "poll", out
    assert len(lines) == 3


def test_e2e_and_consume_create_delete_their_topic(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(topics(cluster))
    rc, out, err = bench(cluster, capsys, "e2e", "--create", "--count", "120", "--in-flight",
                         "1", "--linger-ms", "0", "--output", "json")
    assert rc == 0, err
    document = json.loads(out)
    produced, e2e = document["results"]
    assert (produced["workload"], produced["messages"]) == ("produce", 120)
    assert (e2e["workload"], e2e["messages"], e2e["errors"]) == ("e2e", 120, 0)
    assert e2e["latency"]["kind"] == "end_to_end" and e2e["latency"]["samples"] == 120
    # one at a time: the send-to-read time includes the ack path, so it is not below the ack's
    assert e2e["latency"]["p50_ms"] > 0 and produced["latency"]["samples"] == 120
    assert document["created"] and not document["kept"]

    rc, out, err = bench(cluster, capsys, "consume", "--create", "--count", "300",
                         "--partitions", "2", "--output", "json")
    assert rc == 0, err
    document = json.loads(out)
    assert [(r["workload"], r["messages"]) for r in document["results"]] == [
        ("produce", 300), ("consume", 300)]
    assert set(topics(cluster)) == before, "the created topics are deleted afterwards"


@pytest.mark.parametrize(("argv", "says"), [
    (["produce", "--count", "0", "--create"], "argument --count/-n: must be at least 1"),
    (["produce", "--size", "abc", "--create"], "argument --size/-s: 'abc' is not a whole number"),
    (["produce", "--seconds", "-1", "--create"], "argument --seconds: must be more than 0"),
    (["produce", "--acks", "some", "--create"], "argument --acks: invalid choice"),
    (["produce"], "give --topic NAME, or --create"),
    (["produce", "--topic", "x", "--partitions", "3"], "--partitions only apply with --create"),
    (["e2e", "--create", "--size", "4"], "e2e needs at least 8 bytes"),
    (["fly", "--create"], "invalid choice: 'fly'"),
])
def test_bad_flags_are_refused_clearly(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                       argv: list[str], says: str) -> None:
    before = set(topics(cluster))
    try:
        rc, _, err = bench(cluster, capsys, *argv)
    except SystemExit as exit_:  # argparse's own errors
        rc, err = int(exit_.code or 0), capsys.readouterr().err
    assert rc == 2
    assert says in err, err
    assert err.startswith("usage:") or err.startswith("tidelog bench"), err
    assert set(topics(cluster)) == before


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_progress_redraws_on_a_terminal_and_logs_lines_otherwise(tty: bool) -> None:
    counters = Counters()
    stream = FakeTerminal() if tty else io.StringIO()
    with Progress("produce", counters, stream=stream, interval_s=0.02):
        counters.add(1234, 1234 * 100)
        deadline = time.monotonic() + 10
        while stream.getvalue().count("1,234 msgs") < 2:
            assert time.monotonic() < deadline, stream.getvalue()
            time.sleep(0.01)
    text = stream.getvalue()
    if tty:
        assert "\n" not in text and text.startswith("\rproduce: 1,234 msgs")
        assert text.endswith("\r"), "the line is wiped at the end: the table starts clean"
    else:
        assert "\r" not in text
        assert text.splitlines()[0].startswith("tidelog bench: produce: 1,234 msgs ")
        assert "msg/s" in text and "MB/s" in text and "elapsed" in text


def test_missing_topic_is_a_clear_error(cluster: LocalCluster,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster is found through TIDELOG_BOOTSTRAP, as by every command."""
    monkeypatch.setenv("TIDELOG_BOOTSTRAP", cluster.bootstrap)
    capsys.readouterr()
    rc = main(["bench", "produce", "--topic", "no-such-topic", "--count", "5"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.startswith("tidelog bench produce: ") and "no-such-topic" in err, err


def acknowledged_some(cluster: LocalCluster, before: set[str]) -> bool:
    """A new topic exists and holds at least 20 records."""
    new = set(topics(cluster)) - before
    if not new:
        return False
    with Admin(cluster.bootstrap) as admin:
        ends = admin.list_offsets({TopicPartition(new.pop(), 0): "latest"})
    return all((end or 0) >= 20 for end in ends.values())


def test_ctrl_c_prints_the_table_so_far(cluster: LocalCluster) -> None:
    """A real process (a signal's effect is what this is about): SIGINT mid-run gives the table
    of what was acknowledged, marked interrupted, rc 130, and the created topic is gone."""
    before = set(topics(cluster))
    process = subprocess.Popen(
        [TIDELOG, "bench", "produce", "--bootstrap", cluster.bootstrap, "--create",
         "--count", "100000000", "--seconds", "120", "--in-flight", "1", "--linger-ms", "0",
         "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not acknowledged_some(cluster, before):  # the load is running
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    document = json.loads(out)
    (result,) = document["results"]
    assert document["interrupted"] and result["interrupted"]
    assert 0 < result["messages"] < 100_000_000 and result["latency"]["samples"] > 0
    assert set(topics(cluster)) == before
