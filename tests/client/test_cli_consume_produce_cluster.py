"""`tidelog consume` and `tidelog produce` against one real 3-node cluster (module-scoped).

Most calls go through the CLI's main() in this process (the real parser, client and nodes, only
the interpreter start is saved); the SIGTERM tests run real `tidelog consume`/`produce`
processes, since a signal's default action is what it is about. Every consume here ends by
itself (-e, a range or an error): a hang is the bug of issue 15 and fails on the module's timeout.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client.cli import main
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]
TIDELOG = str(Path(sys.executable).with_name("tidelog"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cli-consume"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2"}) as running:
        yield running


def cli(cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *argv: str,
        stdin: bytes | None = None, monkeypatch: pytest.MonkeyPatch | None = None
        ) -> tuple[int, str, str]:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    capsys.readouterr()
    rc = main(["--bootstrap", cluster.bootstrap, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def new_topic(cluster: LocalCluster, capsys: pytest.CaptureFixture[str], partitions: int) -> str:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    rc, _, err = cli(cluster, capsys, "topic", "create", name, "--partitions", str(partitions),
                     "--replication-factor", "3")
    assert rc == 0, err
    return name


def produce(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch, topic: str, lines: list[str]) -> None:
    rc, _, err = cli(cluster, capsys, "produce", topic, "--key-separator", ":",
                     stdin="".join(f"{line}\n" for line in lines).encode(),
                     monkeypatch=monkeypatch)
    assert rc == 0, err


def test_exit_at_end_ranges_times_and_format(cluster: LocalCluster,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    topic = new_topic(cluster, capsys, partitions=2)
    produce(cluster, capsys, monkeypatch, topic, [f"k{i}:v{i}" for i in range(8)])
    time.sleep(0.05)
    between_ms = int(time.time() * 1000)
    time.sleep(0.05)
    produce(cluster, capsys, monkeypatch, topic, [f"k{i}:w{i}" for i in range(8, 12)])

    # The bug: --max-messages larger than the topic waited forever; -e ends at the end.
    started = time.monotonic()
    rc, out, err = cli(cluster, capsys, "consume", topic, "--from-beginning", "-e",
                       "--max-messages", "100", "-f", r"%p %o %k %v %K %V %t\n")
    assert rc == 0, err
    assert time.monotonic() - started < 10
    rows = [line.split(" ") for line in out.splitlines()]
    assert sorted(row[3] for row in rows) == sorted(
        [f"v{i}" for i in range(8)] + [f"w{i}" for i in range(8, 12)])
    assert all(row[2] == f"k{row[3][1:]}" and row[4] == str(len(row[2]))
               and row[5] == str(len(row[3])) and row[6] == topic for row in rows)
    by_partition: dict[int, list[int]] = {}
    for row in rows:
        by_partition.setdefault(int(row[0]), []).append(int(row[1]))
    busiest = max(by_partition, key=lambda p: len(by_partition[p]))
    offsets = by_partition[busiest]
    assert offsets == sorted(offsets) and len(offsets) >= 3

    def consumed(*spec: str) -> list[int]:
        rc, out, err = cli(cluster, capsys, "consume", topic, "--partition", str(busiest),
                           *spec, "-f", r"%o\n")
        assert rc == 0, err
        return [int(line) for line in out.splitlines()]

    a, b = offsets[1], offsets[-1]
    assert consumed("-o", f"{a}:{b}") == [o for o in offsets if a <= o < b]  # B excluded
    assert consumed("-o", "start:end") == offsets
    assert consumed("-o", f"{a}", "-e") == offsets[1:]
    assert consumed("-o", "-1h:end") == offsets
    assert consumed("-o", "end", "-e") == []
    late = [int(row[1]) for row in rows if int(row[0]) == busiest and row[3].startswith("w")]
    assert consumed("-o", f"@{between_ms}:end") == late
    assert consumed("-o", f"@{between_ms - 60_000}:@{between_ms}") == \
        [o for o in offsets if o not in late]
    # -N: N offsets before the end (offsets, not records: each is at least one record back)
    last_two = consumed("-o", "-2", "-e")
    assert last_two and set(last_two) <= set(offsets[-2:])

    # All partitions with a range, JSON output (values and keys as text)
    rc, out, _ = cli(cluster, capsys, "consume", topic, "-o", "start:end", "--output", "json")
    assert rc == 0 and len(out.splitlines()) == 12


def test_out_of_range_offsets_say_so_or_follow_reset(cluster: LocalCluster,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    topic = new_topic(cluster, capsys, partitions=1)
    produce(cluster, capsys, monkeypatch, topic, ["a:1", "b:2"])
    rc, out, err = cli(cluster, capsys, "consume", topic, "--partition", "0", "-o", "start", "-e",
                       "-f", r"%o\n")
    assert rc == 0, err
    last = int(out.split()[-1])
    # Past the end: the old code waited silently forever.
    rc, _, err = cli(cluster, capsys, "consume", topic, "--partition", "0", "--offset", "999")
    assert rc == 2
    assert f"offset 999 is out of range for {topic}/0: it holds offsets" in err
    assert f"high watermark {last + 1}" in err
    rc, out, err = cli(cluster, capsys, "consume", topic, "-o", "999", "--reset", "earliest",
                       "-e")
    assert (rc, out.split()) == (0, ["1", "2"]), err
    rc, out, err = cli(cluster, capsys, "consume", topic, "-o", "999", "--reset", "latest", "-e")
    assert (rc, out) == (0, ""), err
    rc, _, err = cli(cluster, capsys, "consume", topic, "--group", "g", "-o", "start")
    assert rc == 2 and "--group takes no --partition, --offset or --from-time" in err


def test_a_line_without_the_key_separator_stops_there(cluster: LocalCluster,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    topic = new_topic(cluster, capsys, partitions=1)
    rc, _, err = cli(cluster, capsys, "produce", topic, "--key-separator", ":",
                     stdin=b"a:1\nb:2\nno separator\nc:3\n", monkeypatch=monkeypatch)
    assert rc == 2
    assert "line 3 has no key separator ':'" in err
    assert "the 2 record(s) before it were acknowledged" in err
    rc, out, _ = cli(cluster, capsys, "consume", topic, "-o", "start", "-e", "-f", r"%k=%v\n")
    assert (rc, out.splitlines()) == (0, ["a=1", "b=2"])

    rc, _, err = cli(cluster, capsys, "produce", topic, "--key-separator", ":",
                     "--allow-null-key", stdin=b"d:4\nbare\n", monkeypatch=monkeypatch)
    assert rc == 0, err
    rc, out, _ = cli(cluster, capsys, "consume", topic, "-o", "start", "-e", "-f", r"%K %k=%v\n")
    assert out.splitlines()[2:] == ["1 d=4", "-1 =bare"]


def _member(cluster: LocalCluster, group: str, topic: str, *extra: str,
            python_prelude: str = "") -> subprocess.Popen[str]:
    command = [TIDELOG] if not python_prelude else [
        sys.executable, "-c", python_prelude + "import sys; from tidelog.client.cli import main; "
        "sys.exit(main(sys.argv[1:]))"]
    return subprocess.Popen(
        [*command, "--bootstrap", cluster.bootstrap, "consume", topic, "--group", group,
         "--from-beginning", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _terminated_member_then_reset(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, prelude: str
                                  ) -> tuple[str, str, int, str]:
    topic = new_topic(cluster, capsys, partitions=2)
    group = f"g-{uuid.uuid4().hex[:6]}"
    produce(cluster, capsys, monkeypatch, topic, [f"k{i}:v{i}" for i in range(6)])
    first = _member(cluster, group, topic, python_prelude=prelude)
    try:
        seen: list[str] = []
        assert first.stdout is not None
        while len(seen) < 6:  # it has both partitions once it printed all six records
            line = first.stdout.readline()
            assert line, f"member exited early: {first.stderr.read() if first.stderr else ''}"
            seen.append(line.strip())
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    rc, out, err = cli(cluster, capsys, "group", "reset-offsets", group, "--topic", topic,
                       "--to-earliest", "--execute")
    return topic, group, rc, out + err


def test_sigterm_leaves_the_group_at_once(cluster: LocalCluster,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd, docker stop and Kubernetes stop with SIGTERM: the member must leave the group
    (the next one got its partitions only after the 45 s session timeout, 41.9 s measured, and
    reset-offsets refused with active members while none ran)."""
    topic, group, rc, output = _terminated_member_then_reset(cluster, capsys, monkeypatch, "")
    assert rc == 0, output  # no member left behind: the group is empty
    started = time.monotonic()
    second = _member(cluster, group, topic, "-e", "-f", r"%p %v\n")
    try:
        out, err = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    took = time.monotonic() - started
    print(f"second member read both partitions and exited in {took:.1f} s")
    assert second.returncode == 0, err
    lines = out.splitlines()
    assert sorted(line.split()[1] for line in lines) == [f"v{i}" for i in range(6)]
    assert {line.split()[0] for line in lines} == {"0", "1"}
    assert took < 15


def test_planted_default_sigterm_leaves_a_ghost_member(cluster: LocalCluster,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: the old CLI (no SIGTERM handler) dies without leaving, and the check
    above (reset-offsets right after) sees the ghost member."""
    prelude = ("import contextlib, tidelog.client.cli_consume as c; "
               "c._sigterm_closes = contextlib.nullcontext; ")
    _, _, rc, output = _terminated_member_then_reset(cluster, capsys, monkeypatch, prelude)
    assert rc != 0 and "active member" in output, output


def _blocked_reading_stdin(process: subprocess.Popen[str]) -> bool:
    """Every line written was read and handed to the producer: the pipe is empty and the main
    thread is back in read(0, ...) (/proc/PID/syscall: the syscall number, then fd 0)."""
    import fcntl
    import struct
    import termios

    assert process.stdin is not None
    unread = struct.unpack("i", fcntl.ioctl(process.stdin.fileno(), termios.FIONREAD,
                                            b"\0\0\0\0"))[0]
    read_syscall = {"x86_64": "0", "aarch64": "63"}[os.uname().machine]
    fields = Path(f"/proc/{process.pid}/syscall").read_text().split()
    return unread == 0 and fields[:2] == [read_syscall, "0x0"]


def test_sigterm_delivers_what_produce_read_and_exits_as_ctrl_c(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM while produce waits for more stdin (a pipe still open, as under systemd or docker
    stop): the records read so far sit in the accumulator (a 60 s linger); they must be delivered
    and reported, rc 130 as consume and Ctrl-C. Python's default SIGTERM dropped them (rc -15)."""
    topic = new_topic(cluster, capsys, partitions=1)
    producer = subprocess.Popen(
        [TIDELOG, "--bootstrap", cluster.bootstrap, "produce", topic, "--key-separator", ":",
         "--linger-ms", "60000", "--verbose"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert producer.stdin is not None
        producer.stdin.write("".join(f"k{i}:v{i}\n" for i in range(5)))
        producer.stdin.flush()
        deadline = time.monotonic() + 30
        while not _blocked_reading_stdin(producer):
            assert producer.poll() is None, producer.communicate()
            assert time.monotonic() < deadline, "produce never went back to reading stdin"
            time.sleep(0.02)
        producer.send_signal(signal.SIGTERM)
        producer.wait(timeout=30)  # stdin still open: its EOF must not be what ends produce
        out, err = producer.communicate(timeout=5)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == 130, (producer.returncode, err)
    assert out.splitlines() == [f"{topic}/0@{offset}" for offset in range(5)], (out, err)
    assert "interrupted: 5 record(s) read before it were acknowledged" in err, err
    rc, out, err = cli(cluster, capsys, "consume", topic, "-o", "start", "-e", "-f", r"%k=%v\n")
    assert rc == 0, err
    assert out.splitlines() == [f"k{i}=v{i}" for i in range(5)]
