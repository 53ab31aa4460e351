"""README.md's shell commands, run as written, so the README cannot rot (issue 15).

Every ```sh block that follows a `<!-- readme-test ... -->` line is run line by line with bash, in
order, against a 3-node cluster started the way the README says: `make run`'s recipe from the
Makefile (`tidelog cluster up --nodes 3`), in the background, in a fresh directory, on the ports
README names (127.0.0.1:9091-9093), with no TIDELOG_* variable set, `.venv/bin` first on PATH as
after `source .venv/bin/activate`. Each command must exit 0 by itself within a bound: a consume
that waits forever (the first README command did) fails here. A command whose comment says
"q quits" is run in a pseudo-terminal and gets a q once it drew its screen, as a reader would.

The only difference from a reader's machine: the nodes get the CI tuning every cluster test uses
(2 partitions for __consumer_offsets and __queue_state instead of 50/16) to spare two cores.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MARKER = re.compile(r"^<!-- readme-test\b.*-->\s*$")
README_PORTS = (9091, 9092, 9093)
COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Command:
    line: int  # in README.md, for the failure message
    text: str

    @property
    def interactive(self) -> bool:
        return "q quits" in self.text.partition("#")[2]


def readme_commands(readme: str) -> list[list[Command]]:
    """The commands of each marked block: continuation lines joined, blank and comment-only
    lines left out (bash would skip them too)."""
    blocks: list[list[Command]] = []
    lines = readme.splitlines()
    index = 0
    while index < len(lines):
        if MARKER.match(lines[index]):
            assert lines[index + 1].strip() in ("```sh", "```bash"), (
                f"README.md:{index + 1}: a readme-test marker must sit right above a ```sh block")
            block: list[Command] = []
            index += 2
            pending = ""
            start = index
            while lines[index].strip() != "```":
                line = lines[index]
                if not pending:
                    start = index
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                else:
                    text = (pending + line).strip()
                    pending = ""
                    if text and not text.startswith("#"):
                        block.append(Command(start + 1, text))
                index += 1
            blocks.append(block)
        index += 1
    return blocks


def make_run_command(makefile: str) -> list[str]:
    """`make run`'s recipe with $(VENV)/bin spelled out."""
    recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.M)
    assert recipe is not None, "Makefile has no run: recipe"
    return recipe.group(1).replace("$(VENV)/bin/", f"{VENV_BIN}/").split()


def test_the_extraction_finds_the_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme_commands(readme)
    texts = [c.text for block in blocks for c in block]
    assert len(blocks) >= 3
    assert any(t.startswith("tidelog topic create orders") for t in texts)
    assert any(t.startswith("tidelog consume orders --group") for t in texts)
    assert any(t.startswith("tidelog queue create") for t in texts)
    # README says what `make run` is; the Makefile must agree.
    recipe = make_run_command((ROOT / "Makefile").read_text())
    assert f"`make run` is `tidelog {' '.join(recipe[1:])}`" in readme
    assert "127.0.0.1:9091-9093" in readme


def _ports_free() -> list[int]:
    busy = []
    for port in README_PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    return env


def _run(command: Command, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    where = f"README.md:{command.line}: {command.text}"
    if command.interactive:
        child = pexpect.spawn("bash", ["-c", command.text], cwd=str(cwd), env=env,
                              dimensions=(40, 160), encoding="utf-8",
                              timeout=COMMAND_TIMEOUT_S)
        try:
            child.expect("9093")  # its first screen lists the nodes
            child.send("q")
            child.expect(pexpect.EOF)
        except pexpect.TIMEOUT:
            pytest.fail(f"{where}: no screen, or q did not end it, in {COMMAND_TIMEOUT_S} s")
        finally:
            child.close(force=True)
        return child.exitstatus or 0, ""
    try:
        done = subprocess.run(["bash", "-c", command.text], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{where}: still running after {COMMAND_TIMEOUT_S} s (it must end by itself)")
    assert done.returncode == 0, f"{where}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.returncode, done.stdout


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    busy = _ports_free()
    assert not busy, f"README's ports {busy} are taken: stop what listens there (`make run`?)"
    env = _env()
    node_env = {**env, "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}
    log = (tmp_path / "make-run.log").open("w+")
    started = time.monotonic()
    cluster = subprocess.Popen(make_run_command((ROOT / "Makefile").read_text()), cwd=tmp_path,
                               env=node_env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    timings: list[tuple[float, str]] = []
    try:
        deadline = time.monotonic() + 60
        while "cluster is up" not in (tmp_path / "make-run.log").read_text():
            assert cluster.poll() is None, (tmp_path / "make-run.log").read_text()
            assert time.monotonic() < deadline, "make run's cluster did not come up in 60 s"
            time.sleep(0.2)
        output = (tmp_path / "make-run.log").read_text()
        assert [f"127.0.0.1:{p}" in output for p in README_PORTS] == [True] * 3, output
        timings.append((time.monotonic() - started, "make run (until 'cluster is up')"))
        for block in readme_commands((ROOT / "README.md").read_text()):
            for command in block:
                began = time.monotonic()
                _, out = _run(command, tmp_path, env)
                timings.append((time.monotonic() - began, command.text))
                if command.text.startswith("tidelog consume orders --from-beginning") or \
                        command.text.startswith("tidelog consume orders --group"):
                    assert sorted(out.split()) == ["hello", "world"], (command.text, out)
    finally:
        cluster.send_signal(signal.SIGINT)  # Ctrl-C, as README says
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()
        log.close()
        for took, what in timings:
            print(f"{took:6.2f} s  {what}")
    assert cluster.returncode == 0, (tmp_path / "make-run.log").read_text()
