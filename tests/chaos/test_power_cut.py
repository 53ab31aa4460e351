"""Power cuts on a real cluster: every node's data directory on LazyFS, real kill -9, real loss.

Each scenario runs for real at a short duration (3 nodes, fsync=always) and must find nothing
lost, duplicated or inconsistent, with at least one power cut executed. The proof that these
runs can fail: the same harness against a node that skips its fsyncs
(tests/chaos/skip_fsync_node.py) must come out INVALID, naming lost acknowledged records.

Needs root, /dev/fuse, fuse3 and mfusepy (the LazyFS), and iproute2 + iptables for the
partition scenario; they skip with the reason otherwise (CI has all of them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tidelog.chaos.lazyfs import lazyfs_unavailable_reason
from tidelog.chaos.netns import netns_unavailable_reason
from tidelog.chaos.results import CheckName, Verdict
from tidelog.chaos.runner import ChaosRun, RunConfig, RunOutcome
from tidelog.chaos.workload import WorkloadConfig

REPO = Path(__file__).resolve().parents[2]
LAZYFS_SKIP = lazyfs_unavailable_reason()
NETWORK_SKIP = netns_unavailable_reason()
RATE = 120.0
pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(LAZYFS_SKIP is not None, reason=f"no LazyFS: {LAZYFS_SKIP}")]


def _run(tmp_path: Path, scenario: str, *, duration_s: float, seed: int,
         **kwargs: object) -> RunOutcome:
    print(f"{scenario} seed {seed}: replay with `tidelog chaos run {scenario} --duration "
          f"{duration_s:g} --seed {seed}`")
    config = RunConfig(scenario=scenario, duration_s=duration_s, rate_per_s=RATE, seed=seed,
                       report_dir=tmp_path / "report", progress=False,
                       workload=WorkloadConfig(partitions=4), **kwargs)  # type: ignore[arg-type]
    return ChaosRun(config, out=lambda line: None).execute()


def _explain(outcome: RunOutcome) -> str:
    return (outcome.report_dir / "summary.txt").read_text()


def _power_cuts(outcome: RunOutcome) -> list[dict[str, object]]:
    return [cut for e in outcome.executed for cut in
            dict(e.get("power_cut", {})).values()]  # type: ignore[call-overload]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("scenario", "duration_s"), [
    ("power-cut-follower", 20.0), ("power-cut-leader", 20.0), ("power-cut-all", 20.0),
    ("power-cut-partition", 25.0)])
def test_power_cut_scenario_loses_nothing_acknowledged_with_fsync_always(
        tmp_path: Path, scenario: str, duration_s: float) -> None:
    if scenario == "power-cut-partition" and NETWORK_SKIP:
        pytest.skip(f"{scenario} needs network faults: {NETWORK_SKIP}")
    outcome = _run(tmp_path, scenario, duration_s=duration_s, seed=5)
    r = outcome.results
    assert _power_cuts(outcome), f"no power cut was executed\n{_explain(outcome)}"
    assert r is not None and r.acked > 0, _explain(outcome)
    assert (r.lost, r.duplicated, r.inconsistent, r.aborted) == (0, 0, 0, 0), _explain(outcome)
    assert outcome.valid, _explain(outcome)
    run = json.loads((outcome.report_dir / "run.json").read_text())
    assert "LazyFS" in run["backend_description"]
    assert "names undone" in _explain(outcome)  # the fault list says what each cut dropped


@pytest.mark.timeout(240)
def test_power_cut_reports_lost_records_from_a_node_that_skips_fsync(tmp_path: Path) -> None:
    """12 s: one cut of every node (2 s in, 2.3 s long) is enough to lose what was never
    fsynced; the fsync=always runs above keep 20-25 s and their second cut."""
    outcome = _run(tmp_path, "power-cut-all", duration_s=12.0, seed=5,
                   node_module="tests.chaos.skip_fsync_node",
                   node_env={"PYTHONPATH": str(REPO)})
    r = outcome.results
    assert _power_cuts(outcome), _explain(outcome)
    assert r is not None and not outcome.valid, _explain(outcome)
    lost = r.check(CheckName.LOST)
    assert lost.verdict is Verdict.FAIL and r.lost > 0, _explain(outcome)
    assert any("absent from the final read" in e for e in lost.examples), lost.examples
    dropped = sum(int(c["dropped_bytes"]) + int(c["undone_names"])  # type: ignore[call-overload]
                  for c in _power_cuts(outcome))
    assert dropped > 0, "the file systems dropped nothing: the fault did not bite"


@pytest.mark.timeout(60)
def test_cli_lists_the_power_cut_scenarios_as_available() -> None:
    done = subprocess.run([sys.executable, "-m", "tidelog.client.cli", "chaos", "list"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stderr
    for name in ("power-cut-follower", "power-cut-leader", "power-cut-all",
                 "power-cut-partition"):
        line = next(x for x in done.stdout.splitlines() if x.startswith(name))
        if name != "power-cut-partition" or NETWORK_SKIP is None:
            assert "unavailable" not in line, line
    help_text = subprocess.run([sys.executable, "-m", "tidelog.client.cli", "chaos", "run",
                                "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--fsync POLICY" in help_text
