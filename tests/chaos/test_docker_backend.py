"""The docker backend against the compose deployment: kill-leader and majority-minority, short.

Needs a Docker engine, the image (deploy/offline-image.sh) and, for partitions, root + nsenter;
skips with the reason otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tidelog.chaos.docker_backend import docker_unavailable_reason
from tidelog.chaos.runner import ChaosRun, RunConfig
from tidelog.chaos.workload import WorkloadConfig

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.mark.parametrize("scenario", ["kill-leader", "majority-minority"])
def test_docker_scenario_finds_no_anomaly(tmp_path: Path, scenario: str) -> None:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    config = RunConfig(scenario=scenario, backend="docker", duration_s=15, rate_per_s=150,
                       seed=5, report_dir=tmp_path / "report", progress=False,
                       workload=WorkloadConfig(partitions=4))
    outcome = ChaosRun(config, out=lambda line: None).execute()
    summary = (outcome.report_dir / "summary.txt").read_text()
    r = outcome.results
    assert outcome.executed and r is not None and r.acked > 0, summary
    assert (r.lost, r.duplicated, r.inconsistent) == (0, 0, 0), summary
    assert outcome.valid, summary
