"""Shared fixtures. `cluster` starts real node processes on 127.0.0.1 and always stops them.

`docker_engine` and `tidelog_image` are session fixtures here, not in tests/deploy, because both
tests/deploy and the docker-backend chaos tests (tests/chaos/test_docker_backend.py) need the
image: whichever test asks first builds it, once per session, and every later one reuses it,
whatever order pytest runs the folders in. Tests marked `docker` skip, with the reason, only when
no Docker engine answers (start one as root with `.ci/setup-docker.sh`); an image that does not
build is a failure, not a skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from tidelog.client import Admin
from tidelog.node.local_cluster import LocalCluster

from tests.deploy.docker_helpers import DEPLOY, IMAGE, IMAGE_BUILD_S_MAX, run


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (soaks)")


# `make test` runs the suite on two pytest-xdist workers (the suite mostly waits on real
# processes, faults and timeouts: one worker kept 2 cores ~30% busy). The scheduler below hands
# out whole groups, so a module's tests share one worker and its module-scoped cluster:
# - "docker": tests/deploy (the engine's tests; one worker builds the image once) and the README
#   test, whose `make run` cluster uses fixed ports (9091-9093, peers 19091-19093) that the
#   compose files publish too;
# - "chaos": the fault-injection runs, one after another (network namespaces, LazyFS mounts and
#   power cuts are heavy, and their availability checks want the machine they measured);
# - otherwise the test's file.
# (xdist's own `--dist loadgroup` marks do not take effect with pytest 9: the worker renames
# items through an attribute pytest no longer reads, so modules were split over both workers.)
DOCKER_GROUP_PATHS = ("tests/deploy/", "tests/test_readme_commands.py")


def xdist_group_of(nodeid: str) -> str:
    """The worker group of one test (see above)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith(DOCKER_GROUP_PATHS):
        return "docker"
    if path.startswith("tests/chaos/"):
        return "chaos"
    return path


@pytest.hookimpl(optionalhook=True)  # only with pytest-xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid)

    return GroupScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    # A suite started with SIGINT ignored (a background job of a non-interactive shell) would
    # pass that on across exec to every process a test starts (a CLI it sends Ctrl-C to, a
    # node). With a handler here, children start with the default disposition, as from a shell.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow soak: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def start_cluster(tmp_path, nodes: int = 3, extra_args: tuple[str, ...] = ()) -> LocalCluster:  # type: ignore[no-untyped-def]
    cluster = LocalCluster(nodes, tmp_path / "cluster", extra_args=extra_args)
    cluster.start()
    try:
        cluster.wait_healthy(timeout_s=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def cluster(tmp_path) -> Iterator[LocalCluster]:  # type: ignore[no-untyped-def]
    """A fresh 3-node cluster of real processes; node logs are printed when a test fails."""
    running = start_cluster(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def admin(cluster: LocalCluster) -> Iterator[Admin]:
    """An Admin of whichever `cluster` the test module uses (its own module-scoped one, or the
    fresh one above)."""
    with Admin(cluster.bootstrap) as client:
        yield client


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
    """The node image ($TIDELOG_IMAGE, default tidelog:local), built from this checkout once per
    session by deploy/build-image.sh: the ordinary Dockerfile build when a registry answers,
    deploy/offline-image.sh when not (cached base image and wheelhouse plus Docker's layer cache
    make a warm offline build about 15 s). TIDELOG_TEST_REUSE_IMAGE=1 uses an existing image as
    it is, without rebuilding."""
    reuse = os.environ.get("TIDELOG_TEST_REUSE_IMAGE") == "1"
    if reuse and run(["docker", "image", "inspect", IMAGE], check=False).returncode == 0:
        return IMAGE
    started = time.monotonic()
    proc = run([str(DEPLOY / "build-image.sh"), "--image", IMAGE],
               timeout_s=IMAGE_BUILD_S_MAX, check=False)
    if proc.returncode != 0:
        pytest.fail(f"deploy/build-image.sh failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"image {IMAGE} ready in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "cluster" in getattr(item, "funcargs", {}):
        running = item.funcargs["cluster"]
        for node in running.nodes:
            if node.log_path.exists():
                text = node.log_path.read_text(errors="replace")[-4000:]
                report.sections.append((f"node {node.id} log (tail)", text))
