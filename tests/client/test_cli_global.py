"""The `tidelog` command's global behaviour (issue 15): where the cluster is (flags, environment,
profiles, a default of every node `make run` starts), global flags after the subcommand, one
error prefix, a bounded and visible wait for a dead bootstrap, --version, shell completion.

Unit tests parse real argv through the real parser; the probe tests dial real sockets (a port
nobody listens on, a listener that never speaks gRPC); one module-scoped real cluster checks the
default-style bootstrap with its first node killed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tidelog.client.cli import _apply_global_options, build_parser, main
from tidelog.client.cli_common import reach_cluster
from tidelog.client.cli_completion import script
from tidelog.client.errors import ConfigError
from tidelog.client.profiles import (
    DEFAULT_BOOTSTRAP,
    ConfigFile,
    Profile,
    load_config,
    render_config,
)
from tidelog.node.local_cluster import LocalCluster, free_ports

from tests.clusters import running_cluster

CLIENT_ENV = ("TIDELOG_BOOTSTRAP", "TIDELOG_PROFILE", "TIDELOG_TLS_CA", "TIDELOG_TLS_CERT",
              "TIDELOG_TLS_KEY", "TIDELOG_TLS_SERVER_NAME", "TIDELOG_USER", "TIDELOG_PASSWORD",
              "TIDELOG_CONNECT_TIMEOUT")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TIDELOG_* setting of the machine running the tests, and a config file of our own."""
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "tidelog" / "config.toml"
    monkeypatch.setenv("TIDELOG_CONFIG", str(config))
    return config


def parsed(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    _apply_global_options(args)
    return args


def dead_address() -> str:
    """A port nobody listens on (freed right before use)."""
    return f"127.0.0.1:{free_ports(1)[0]}"


# --- 1. the default bootstrap ---------------------------------------------------------------

def test_the_default_bootstrap_is_every_node_make_run_starts() -> None:
    up = build_parser().parse_args(["cluster", "up"])  # what `make run` runs
    started = [f"127.0.0.1:{up.base_port + i}" for i in range(up.nodes)]
    assert DEFAULT_BOOTSTRAP.split(",") == started
    args = parsed(["topic", "list"])
    assert (args.bootstrap, args.bootstrap_source) == (DEFAULT_BOOTSTRAP, "default")


def test_flag_beats_env_beats_profile_beats_default(
        monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    assert main(["profile", "create", "p", "--bootstrap", "profile:1"]) == 0
    assert parsed(["topic", "list"]).bootstrap == "profile:1"
    monkeypatch.setenv("TIDELOG_BOOTSTRAP", "env:1")
    assert parsed(["topic", "list"]).bootstrap == "env:1"
    assert parsed(["--bootstrap", "flag:1", "topic", "list"]).bootstrap == "flag:1"
    after = parsed(["--bootstrap", "before:1", "topic", "list", "--bootstrap", "after:1"])
    assert (after.bootstrap, after.bootstrap_source) == ("after:1", "--bootstrap")
    monkeypatch.setenv("TIDELOG_BOOTSTRAP", "")  # empty = not set
    assert parsed(["topic", "list"]).bootstrap_source == "profile p"


def test_the_help_states_the_order_and_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["topic", "list", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "this flag, TIDELOG_BOOTSTRAP, the profile's bootstrap, else" in text
    assert DEFAULT_BOOTSTRAP in text and "before or after the command" in text


# --- 3. global flags after the subcommand ----------------------------------------------------

def test_every_client_command_takes_the_global_flags_after_it() -> None:
    from tidelog.client.cli import _is_local, _subcommands

    checked = 0
    for path, sub, _ in _subcommands(build_parser()):
        if _is_local(path):
            assert "--profile" not in sub._option_string_actions, path
            continue
        for flag in ("--bootstrap", "--profile", "--tls-ca", "--connect-timeout"):
            assert flag in sub._option_string_actions, (path, flag)
        checked += 1
    assert checked > 30


def test_a_security_flag_after_the_command_reaches_the_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until a channel is made\n")
    args = parsed(["group", "list", "--tls-ca", str(ca), "--user", "bob", "--password", "pw"])
    assert (args.security.tls_ca, args.security.username) == (ca, "bob")


def test_options_a_command_defines_itself_stay_its_own() -> None:
    quota = parsed(["--user", "admin", "--password", "pw", "quota", "set", "--user", "alice",
                    "--request-rate", "5"])
    assert quota.quota_user == "alice" and quota.security.username == "admin"
    top = parsed(["top", "--bootstrap", "h:1", "--once"])
    assert (top.bootstrap, top.bootstrap_source) == ("h:1", "--bootstrap")
    assert parsed(["top"]).bootstrap == DEFAULT_BOOTSTRAP
    with pytest.raises(SystemExit):  # not the new user's password (that is --password-stdin)
        build_parser().parse_args(["user", "create", "bob", "--password", "x"])


def test_output_before_the_command_applies_to_its_own_output() -> None:
    assert parsed(["--output", "json", "group", "list"]).output == "json"
    human = parsed(["group", "list"]).output  # "text" or "table": W2-C moves to one name
    assert human in ("text", "table") and type(human) is str  # the marker does not leak
    assert parsed(["--output", "text", "cluster", "status"]).output == "table"  # same format
    assert parsed(["--output", "json", "group", "list", "--output", human]).output == human
    with pytest.raises(ConfigError, match="has no --output"):
        parsed(["--output", "json", "topic", "delete", "t"])
    with pytest.raises(ConfigError, match=f"knows {human}, json"):
        parsed(["--output", "yaml", "group", "list"])


def test_output_before_the_command_survives_a_typed_output_option() -> None:
    """argparse passes an unset option's default through its `type` (W2-C's --output maps
    'text' to 'table'): the mark that says "not given after the command" must survive it."""
    from tidelog.client.cli import _apply_output, _prepare_subcommand

    parser = argparse.ArgumentParser(prog="tidelog")
    parser.add_argument("--output", dest="_g0_output", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command").add_parser("x")
    sub.add_argument("--output", type=lambda t: "table" if t == "text" else t,
                     choices=("table", "json"), default="text")
    _prepare_subcommand(("x",), sub, 1)
    for argv, expected in ((["x"], "table"), (["--output", "json", "x"], "json"),
                           (["--output", "json", "x", "--output", "text"], "table")):
        args = parser.parse_args(argv)
        _apply_output(args)
        assert (args.output, type(args.output)) == (expected, str), argv


# --- 2. profiles ---------------------------------------------------------------------------

def test_profile_commands_write_a_private_file_and_pick_per_call(
        clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x\n")
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "create", "prod", "--bootstrap", "p1:9091,p2:9091",
                 "--tls-ca", "ca.pem", "--user", "alice"]) == 0
    assert main(["profile", "create", "dev", "--bootstrap", "d:9091", "--no-use"]) == 0
    assert stat.S_IMODE(os.stat(clean_env).st_mode) == 0o600
    assert sorted(p.name for p in clean_env.parent.iterdir()) == ["config.toml"]  # no temp left
    raw = tomllib.loads(clean_env.read_text())
    assert raw["current_profile"] == "prod"
    assert raw["profiles"]["prod"] == {"bootstrap": "p1:9091,p2:9091", "tls_ca": str(ca),
                                       "user": "alice"}  # absolute path, never a password
    capsys.readouterr()
    assert main(["profile", "list", "--output", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(p["name"], p["current"]) for p in listed] == [("dev", False), ("prod", True)]
    assert main(["profile", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "CURRENT  NAME  BOOTSTRAP        TLS  USER",
        "         dev   d:9091           no   -",
        "*        prod  p1:9091,p2:9091  yes  alice"]
    assert main(["profile", "show", "dev", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["bootstrap"] == "d:9091"
    monkeypatch.setenv("TIDELOG_PASSWORD", "secret")
    args = parsed(["topic", "list"])
    assert (args.bootstrap, args.security.username, args.security.tls_ca) == (
        "p1:9091,p2:9091", "alice", ca)
    assert parsed(["--profile", "dev", "topic", "list"]).bootstrap == "d:9091"
    assert parsed(["topic", "list", "--profile", "dev"]).bootstrap == "d:9091"
    monkeypatch.setenv("TIDELOG_PROFILE", "dev")
    assert parsed(["topic", "list"]).bootstrap == "d:9091"
    monkeypatch.delenv("TIDELOG_PROFILE")
    assert main(["profile", "use", "dev"]) == 0 and parsed(["topic", "list"]).bootstrap == "d:9091"
    assert main(["profile", "delete", "dev"]) == 0
    assert parsed(["topic", "list"]).bootstrap == DEFAULT_BOOTSTRAP  # no current profile left
    capsys.readouterr()
    assert main(["profile", "create", "prod", "--bootstrap", "x:1"]) == 2
    assert capsys.readouterr().err.startswith("tidelog profile create: profile 'prod' exists")


def test_a_profile_problem_is_one_clear_line(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "nope", "topic", "list"]) == 2
    assert capsys.readouterr().err.startswith("tidelog topic list: no profile 'nope' in ")
    clean_env.parent.mkdir(parents=True)
    clean_env.write_text('[profiles.a]\nbootstrap = "h:1"\nbootstarp = "typo"\n')
    assert main(["topic", "list"]) == 2
    assert "unknown key(s) bootstarp" in capsys.readouterr().err
    clean_env.write_text('[profiles.a]\nbootstrap = "h:1"\npassword = "hand-written"\n'
                         'user = "u"\ntls_ca = "ca.pem"\n')
    config = load_config(clean_env)
    assert config.profiles["a"].password == "hand-written"  # read when the user writes it
    assert config.profiles["a"].tls_ca == str(clean_env.parent / "ca.pem")  # next to the file


def test_usage_errors_of_every_command_use_the_common_prefix(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """quota, user, top and demo printed "error: ..." (or on stdout); now "tidelog COMMAND: ..."
    on stderr with rc 2, as argparse's own usage errors. The commands' functions are called with
    the real parser's arguments: each refuses before it would dial a cluster."""
    import io

    from tidelog.client.cli_security import NEW_PASSWORD_ENV, new_password

    def refused(argv: list[str]) -> str:
        args = parsed(argv)
        with pytest.raises(SystemExit) as exit_:
            args.func(args)
        assert exit_.value.code == 2
        out, err = capsys.readouterr()
        assert out == ""
        return err

    assert refused(["quota", "set", "--producer-byte-rate", "1MB"]) == \
        "tidelog quota set: name the quota's entity: --user, --client-id and/or --default\n"
    assert refused(["quota", "set", "--user", "bob"]).startswith(
        "tidelog quota set: give at least one of --producer-byte-rate")
    monkeypatch.delenv(NEW_PASSWORD_ENV, raising=False)
    args = parsed(["user", "create", "bob"])
    with pytest.raises(SystemExit) as exit_:
        new_password(args, stdin=io.StringIO(""))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("tidelog user create: give the new password with ")
    assert main(["top", "--output", "json"]) == 2
    assert capsys.readouterr().err == "tidelog top: --output json needs --once\n"
    assert main(["demo", "--messages", "3"]) == 2
    assert capsys.readouterr() == ("", "tidelog demo: --messages must be at least 10\n")


def test_a_broken_config_file_does_not_stop_local_commands(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.parent.mkdir(parents=True)
    clean_env.write_text("this is not toml [\n")
    assert main(["completion", "bash"]) == 0
    assert main(["topic", "list"]) == 2
    assert f"config file {clean_env}" in capsys.readouterr().err


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_the_written_toml_reads_back_the_same(values: list[str]) -> None:
    """tomllib only reads: our writer must escape every string tomllib accepts back."""
    values = [v for v in values if not any(0xD800 <= ord(c) <= 0xDFFF for c in v)]
    profile = Profile(name="p-1", bootstrap="h:1", user="".join(values), tls_server_name="\x7f\"\\")
    text = render_config(ConfigFile(path=Path("x"), current="p-1", profiles={"p-1": profile}))
    raw = tomllib.loads(text)
    assert raw["profiles"]["p-1"] == profile.settings() and raw["current_profile"] == "p-1"


# --- 4. --version --------------------------------------------------------------------------

def test_version_is_the_installed_distribution() -> None:
    done = subprocess.run([sys.executable, "-m", "tidelog.client.cli", "--version"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == f"tidelog {version('tidelog')}"


# --- 6. a dead bootstrap: bounded, visible ------------------------------------------------

def test_a_dead_bootstrap_fails_fast_with_retries_on_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    dead = [dead_address(), dead_address()]
    start = time.monotonic()
    rc = main(["produce", "t", "--value", "v", "--bootstrap", ",".join(dead),
               "--connect-timeout", "1"])
    elapsed_s = time.monotonic() - start
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and elapsed_s < 3, (rc, elapsed_s)
    assert err[0] == (f"tidelog produce: no node answers at {','.join(dead)}: connection "
                      "refused; retrying (2/5)")
    assert [line.rsplit("(", 1)[1] for line in err[:4]] == ["2/5)", "3/5)", "4/5)", "5/5)"]
    assert err[4].startswith(f"tidelog produce: no node answers at {','.join(dead)} (bootstrap "
                             "from --bootstrap): connection refused; gave up after 5 tries")
    assert len(err) == 5


def test_with_output_json_a_dead_bootstrap_is_one_json_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    dead = dead_address()
    assert main(["queue", "list", "--output", "json", "--bootstrap", dead,
                 "--connect-timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    problem = json.loads(err)["error"]  # the whole of stderr: no progress lines
    assert problem["type"] == "NoBrokersAvailable" and dead in problem["message"]


def test_ctrl_c_while_waiting_for_the_cluster_exits_130_without_a_traceback() -> None:
    import signal

    waiting = subprocess.Popen(
        [sys.executable, "-m", "tidelog.client.cli", "topic", "list", "--bootstrap",
         dead_address(), "--connect-timeout", "20"], stderr=subprocess.PIPE, text=True)
    try:
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # the first "retrying" line: it is waiting now
        assert "retrying (2/5)" in first, first
        waiting.send_signal(signal.SIGINT)
        rest = waiting.stderr.read()
        assert waiting.wait(timeout=10) == 130 and "Traceback" not in rest, rest
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Accepts TCP connections (the kernel does) and never says a word: a hung node."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_a_node_that_never_answers_is_bounded_too(
        silent_listener: str, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert main(["topic", "list", "--bootstrap", silent_listener, "--connect-timeout", "1"]) == 1
    elapsed_s = time.monotonic() - start
    err = capsys.readouterr().err
    print(f"silent listener: gave up after {elapsed_s:.2f} s")
    assert elapsed_s < 3 and "no answer within 0.2 s" in err and "gave up" in err


# --- with a real cluster: node 1 down ------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cli-global"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}) as running:
        yield running


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_with_the_first_node_dead_commands_use_the_other_addresses(
        cluster: LocalCluster, silent_listener: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue: with node 1 down every command failed, the default naming node 1 only. With
    every node's address (here from a profile, as the default names all of `make run`'s), the
    probe answers at once through node 2 or 3 and the commands work."""
    assert cluster.bootstrap.split(",")[0] == cluster.node(1).address
    assert main(["profile", "create", "it", "--bootstrap", cluster.bootstrap]) == 0
    assert main(["topic", "create", "cli-global", "--partitions", "1",
                 "--replication-factor", "3"]) == 0
    cluster.kill(1)
    capsys.readouterr()
    start = time.monotonic()
    assert main(["topic", "list"]) == 0
    listed_s = time.monotonic() - start
    out, err = capsys.readouterr()
    assert "cli-global" in out and "retrying" not in err, err
    hung_first = parsed(["topic", "list", "--bootstrap", f"{silent_listener},{cluster.bootstrap}"])
    start = time.monotonic()
    assert reach_cluster(hung_first, timeout_s=5)  # does not wait out the hung node's deadline
    probe_s = time.monotonic() - start
    assert probe_s < 0.8, probe_s
    main(["--output", "json", "cluster", "status"])  # rc: W2-C's (exit codes change)
    status = json.loads(capsys.readouterr().out)
    print(f"topic list with node 1 dead: {listed_s:.2f} s; probe past a hung node {probe_s:.3f} s")
    assert {n["id"]: n["healthy"] for n in status["nodes"]} == {1: False, 2: True, 3: True}


# --- 7. completion -------------------------------------------------------------------------

def complete_bash(words: list[str], tmp_path: Path) -> list[str]:
    """COMPREPLY of the generated bash completion for the words typed (the last one being
    completed), run by a real bash."""
    completion = tmp_path / "tidelog.bash"
    completion.write_text(script("bash", build_parser()))
    quoted = " ".join(f"'{w}'" for w in ["tidelog", *words])
    program = (f"source {completion}; COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; "
               "_tidelog; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completion_walks_the_real_parser(tmp_path: Path) -> None:
    assert {"topic", "top"} <= set(complete_bash(["to"], tmp_path))
    assert set(complete_bash(["topic", ""], tmp_path)) >= {"create", "list", "describe",
                                                          "delete", "alter"}
    assert complete_bash(["topic", "list", "--boot"], tmp_path) == ["--bootstrap"]
    assert complete_bash(["--bootstrap", "h:1", "topic", "li"], tmp_path) == ["list"]
    assert complete_bash(["cluster", "status", "--output", ""], tmp_path) == ["table", "json"]
    assert complete_bash(["completion", ""], tmp_path) == ["bash", "zsh", "fish"]
    assert "--partitions" in complete_bash(["topic", "create", "--"], tmp_path)
    assert main(["profile", "create", "staging", "--bootstrap", "s:1", "--no-use"]) == 0
    assert complete_bash(["topic", "list", "--profile", "st"], tmp_path) == ["staging"]


def test_zsh_and_fish_scripts_cover_every_command() -> None:
    from tidelog.client.cli_completion import tree

    zsh = script("zsh", build_parser())
    assert zsh.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert zsh.endswith(script("bash", build_parser()))
    fish = script("fish", build_parser())
    for node in tree(build_parser()):
        if node.path:
            assert f"-a {node.path[-1]}" in fish or f"-a '{node.path[-1]}'" in fish, node.path
    assert "case topic/create" in fish and "-l partitions -r" in fish
