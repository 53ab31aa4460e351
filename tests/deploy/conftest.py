"""Fixtures for the tests that need a Docker engine (marker `docker`).

They skip, with the reason, only when no engine answers (start one as root with
`.ci/setup-docker.sh`). Anything else that goes wrong — the image does not build, a container does
not become healthy — is a failure.

The image is built once per session by deploy/offline-image.sh (cached base image and wheelhouse,
Docker's layer cache: about 15 s when warm). TIDELOG_TEST_REUSE_IMAGE=1 uses an existing
$TIDELOG_IMAGE (default tidelog:local) as it is, without rebuilding.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from docker_helpers import COMPOSE_FILE, DEPLOY, IMAGE, IMAGE_BUILD_S_MAX, ComposeProject, run


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip (with the reason) when no Docker engine answers; that is the only reason to skip."""
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no Docker engine: the docker command is not installed "
                    "(as root, .ci/setup-docker.sh installs and starts one)")
    except subprocess.TimeoutExpired:
        pytest.skip("no Docker engine: `docker info` did not answer within 30 s")
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["docker info failed"])[-1]
        pytest.skip(f"no Docker engine reachable: {reason} "
                    "(as root, .ci/setup-docker.sh starts one)")


@pytest.fixture(scope="session")
def tidelog_image(docker_engine: None) -> str:
    """The node image, built from this checkout by deploy/offline-image.sh (no registry needed)."""
    reuse = os.environ.get("TIDELOG_TEST_REUSE_IMAGE") == "1"
    if reuse and run(["docker", "image", "inspect", IMAGE], check=False).returncode == 0:
        return IMAGE
    started = time.monotonic()
    proc = run([str(DEPLOY / "offline-image.sh"), "--image", IMAGE],
               timeout_s=IMAGE_BUILD_S_MAX, check=False)
    if proc.returncode != 0:
        pytest.fail(f"deploy/offline-image.sh failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"image {IMAGE} ready in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="session")
def compose_command(docker_engine: None) -> list[str]:
    """`docker compose` (v2) when present, else `docker-compose` (v1): the file serves both."""
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    try:
        if run(["docker-compose", "version", "--short"], check=False).returncode == 0:
            return ["docker-compose"]
    except FileNotFoundError:
        pass
    pytest.fail("a Docker engine answers but neither `docker compose` nor `docker-compose` exists")


@pytest.fixture
def compose_project(
    compose_command: list[str], tidelog_image: str,
) -> Iterator[type[ComposeProject]]:
    """A factory of compose projects; each is torn down with its volumes, whatever happens."""
    made: list[ComposeProject] = []

    def make(*, files: Sequence[Path] = (COMPOSE_FILE,), nodes: int = 3) -> ComposeProject:
        project = ComposeProject(command=compose_command, image=tidelog_image,
                                 files=list(files), nodes=nodes)
        made.append(project)
        return project

    yield make  # type: ignore[misc]
    for project in made:
        project.dump_logs()  # shown by pytest only when the test failed
        project.down()
        left = project.volumes()
        assert not left, f"volumes left behind by {project.name}: {left}"
