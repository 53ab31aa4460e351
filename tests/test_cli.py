"""The `tidelog` command as a person runs it: --help everywhere, and the demo end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tidelog.client.cli import build_parser


def subcommand_paths() -> list[list[str]]:
    import argparse

    paths = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


@pytest.mark.parametrize("path", [[]] + subcommand_paths(), ids=lambda p: " ".join(p) or "top")
def test_every_command_has_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tidelog" in capsys.readouterr().out


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_demo_kills_a_leader_and_loses_nothing() -> None:
    done = subprocess.run([sys.executable, "-m", "tidelog.client.cli", "demo", "--messages", "600"],
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "killing node" in done.stdout
    header, row = [line for line in done.stdout.splitlines() if line.strip()][-3:-1]
    assert header.split()[:5] == ["SENT", "ACKNOWLEDGED", "FAILED", "READ-BACK", "LOST"]
    assert row.split()[4] == "0", done.stdout  # lost


def test_every_command_module_loads() -> None:
    """A module that fails to import is only reported when parsing fails; here it fails CI."""
    from tidelog.client import cli

    cli._broken.clear()
    parser = build_parser()
    assert cli._broken == []
    names = {name for path in subcommand_paths() for name in path[:1]}
    assert {"profile", "completion", "topic", "consume"} <= names, names
    assert parser.prog == "tidelog"


def test_the_docs_name_every_global_flag_and_variable() -> None:
    from pathlib import Path

    from tidelog.client.cli import GLOBAL_OPTIONS
    from tidelog.client.profiles import ENV_VARS

    docs = (Path(__file__).parent.parent / "docs" / "client.md").read_text()
    section = docs.split("## Configuration: bootstrap, profiles, environment", 1)[1]
    section = section.split("\n## ", 1)[0]
    for option in GLOBAL_OPTIONS:
        assert f"`{option.flag}" in section, option.flag
    for variable in ENV_VARS.values():
        assert f"`{variable}`" in section, variable
