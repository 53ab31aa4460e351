"""Shared fixtures. `cluster` starts real node processes on 127.0.0.1 and always stops them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tidelog.node.local_cluster import LocalCluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (soaks)")


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
