"""The docker backend against the compose deployment: kill-leader and majority-minority, short.

Needs a Docker engine; the image is built on demand by the session fixture `tidelog_image`
(tests/conftest.py, shared with tests/deploy: one build per session, whichever test asks first).
Partitions need root and nsenter; kill-leader runs without them. Skips only with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tidelog.chaos.docker_backend import docker_unavailable_reason
from tidelog.chaos.results import CheckName, Verdict
from tidelog.chaos.runner import ChaosRun, RunConfig
from tidelog.chaos.workload import WorkloadConfig

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

NETWORK_FAULTS = "network faults"  # how docker_unavailable_reason's last, partial reason starts


@pytest.mark.parametrize("scenario", ["kill-leader", "majority-minority"])
def test_docker_scenario_finds_no_anomaly(tmp_path: Path, scenario: str,
                                          tidelog_image: str) -> None:
    reason = docker_unavailable_reason(tidelog_image)
    if reason and not (scenario == "kill-leader" and reason.startswith(NETWORK_FAULTS)):
        pytest.skip(reason)
    config = RunConfig(scenario=scenario, backend="docker", duration_s=15, rate_per_s=150,
                       seed=5, report_dir=tmp_path / "report", progress=False,
                       workload=WorkloadConfig(partitions=4))
    outcome = ChaosRun(config, out=lambda line: None).execute()
    summary = (outcome.report_dir / "summary.txt").read_text()
    r = outcome.results
    assert outcome.executed and r is not None and r.acked > 0, summary
    assert (r.lost, r.duplicated, r.inconsistent, r.divergent) == (0, 0, 0, 0), summary
    # The replicas were copied out of the stopped containers and compared.
    assert r.check(CheckName.REPLICAS).verdict is Verdict.PASS, summary
    assert outcome.valid, summary
