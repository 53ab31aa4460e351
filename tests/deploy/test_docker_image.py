"""The node image (deploy/Dockerfile, built offline by deploy/offline-image.sh): what it promises.

Needs a Docker engine; skipped with the reason when none answers (see conftest.py).
"""

from __future__ import annotations

import json
import time

import pytest
from docker_helpers import run

pytestmark = pytest.mark.docker

DATA_DIR = "/var/lib/tidelog"


@pytest.fixture(scope="module")
def config(tidelog_image: str) -> dict:
    return json.loads(run(["docker", "image", "inspect", tidelog_image]).stdout)[0]["Config"]


def test_entrypoint_is_tidelog_node_in_exec_form(config: dict) -> None:
    """Exec form: `docker stop`'s SIGTERM reaches the node, not a shell that would swallow it."""
    assert config["Entrypoint"] == ["tidelog", "node"]
    assert config.get("StopSignal") in (None, "SIGTERM")


def test_entrypoint_prints_the_node_help(tidelog_image: str) -> None:
    proc = run(["docker", "run", "--rm", "--network", "none", tidelog_image, "--help"], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for flag in ("--id", "--listen", "--advertise", "--peers", "--data-dir"):
        assert flag in proc.stdout


def test_runs_as_a_non_root_user(config: dict, tidelog_image: str) -> None:
    assert config["User"] and config["User"].split(":")[0] not in ("root", "0")
    uid = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "id",
               tidelog_image, "-u"]).stdout.strip()
    assert uid != "0"


def test_data_lives_in_a_volume_the_node_user_can_write(config: dict, tidelog_image: str) -> None:
    assert DATA_DIR in (config.get("Volumes") or {})
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TIDELOG_DATA_DIR"] == DATA_DIR
    # An anonymous volume starts as a copy of the image's directory, owner included.
    run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", tidelog_image,
         "-c", f"touch {DATA_DIR}/probe && rm {DATA_DIR}/probe"])


def test_healthcheck_uses_tidelog_health(config: dict) -> None:
    healthcheck = config.get("Healthcheck") or {}
    assert healthcheck.get("Test", [])[:3] == ["CMD", "tidelog", "health"]
    assert healthcheck.get("Interval") and healthcheck.get("Timeout")


def test_health_command_reports_no_answer_when_nothing_listens(tidelog_image: str) -> None:
    """The HEALTHCHECK command itself: exit 2 (not 0) when the node is not there."""
    proc = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "tidelog",
                tidelog_image, "health", "--timeout-s", "2"], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "127.0.0.1:9091" in proc.stderr  # derived from TIDELOG_LISTEN=0.0.0.0:9091


def test_installed_without_build_tools(tidelog_image: str) -> None:
    """The runtime virtualenv has tidelog and its dependencies, and no pip."""
    script = ("import importlib.util as u, tidelog.client.cli, grpc, grpc_health.v1.health_pb2, "
              "lz4, xxhash; assert u.find_spec('pip') is None")
    run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", tidelog_image,
         "-c", script])


@pytest.mark.cluster
def test_single_node_becomes_healthy_and_stops_gracefully_on_sigterm(tidelog_image: str) -> None:
    """One real node in a container: HEALTHCHECK turns healthy, `docker stop` exits it cleanly
    and quickly (SIGTERM handled, not the 10 s SIGKILL fallback), data is on the volume."""
    name = f"tidelogtest-single-{int(time.time() * 1000) % 10**8}"
    volume = f"{name}-data"
    try:
        run(["docker", "run", "-d", "--init", "--name", name, "--hostname", "node1",
             "-v", f"{volume}:/var/lib/tidelog",
             "-e", "TIDELOG_ID=1", "-e", "TIDELOG_PEERS=1=node1:9091",
             "-e", "TIDELOG_ADVERTISE=127.0.0.1:9091",
             "--health-interval", "1s", "--health-start-period", "30s", tidelog_image])
        deadline = time.monotonic() + 60
        while True:
            state = json.loads(run(["docker", "inspect", name]).stdout)[0]["State"]
            if state["Health"]["Status"] == "healthy":
                break
            assert state["Running"], f"the node exited: {state}"
            assert time.monotonic() < deadline, f"not healthy within 60 s: {state['Health']}"
            time.sleep(0.5)
        started = time.monotonic()
        run(["docker", "stop", "--time", "30", name], timeout_s=60)
        stop_s = time.monotonic() - started
        state = json.loads(run(["docker", "inspect", name]).stdout)[0]["State"]
        assert state["ExitCode"] == 0, f"exit code {state['ExitCode']} after SIGTERM"
        assert stop_s < 10, f"docker stop took {stop_s:.1f} s"
        listing = run(["docker", "run", "--rm", "--network", "none", "-v",
                       f"{volume}:/var/lib/tidelog", "--entrypoint", "ls", tidelog_image,
                       "-A", "/var/lib/tidelog"]).stdout.split()
        assert listing, "the node wrote nothing to its data volume"
    finally:
        print(run(["docker", "logs", "--tail", "100", name], check=False).stderr)
        run(["docker", "rm", "-f", name], check=False)
        run(["docker", "volume", "rm", "-f", volume], check=False)
