"""Fixtures for the deployment tests that need a Docker engine (marker `docker`).

They skip, with the reason, only when no engine answers (start one as root with
`.ci/setup-docker.sh`). Anything else that goes wrong — the image does not build, a container does
not become healthy — is a failure.

`docker_engine` and `tidelog_image` (the image, built once per session by deploy/offline-image.sh)
live in tests/conftest.py, shared with the docker-backend chaos tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from docker_helpers import COMPOSE_FILE, ComposeProject, run


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
