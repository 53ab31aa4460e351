"""`tidelog chaos run --secure` (issue 13): the harness against nodes with TLS on both listeners,
client certificates required, SCRAM authentication and ACLs, with the same 0-anomaly verdict.

Two short real runs (3 nodes, 4 partitions, 12 s of workload; network namespaces as root):
kill-leader with the log workload, and majority-minority with the queue workload (which runs the
log workload and its checker too, so the partition is judged by both checkers). Why a VALID run
proves the clients really logged in: with `--authorization` on, the certificate every workload
client presents (`Cert:CN=chaos`) has no ACL, so a call that arrived without the SCRAM token of
super user `chaos` would be refused; `acked > 0` and a clean final read need the login. Each run
also has the harness check `security` (a plaintext call and a certificate without a login are
refused), and one single-node test shows that check failing against a node with TLS only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tidelog.chaos.netns import netns_unavailable_reason
from tidelog.chaos.queue_workload import QueueWorkloadConfig
from tidelog.chaos.results import RunVerdict, Verdict
from tidelog.chaos.runner import ChaosRun, RunConfig, RunOutcome
from tidelog.chaos.workload import WorkloadConfig

NETWORK_SKIP = netns_unavailable_reason()
DURATION_S = 12.0
RATE = 100.0


def _run(tmp_path: Path, scenario: str, *, seed: int,
         queue: QueueWorkloadConfig | None = None) -> RunOutcome:
    config = RunConfig(scenario=scenario, duration_s=DURATION_S, rate_per_s=RATE, seed=seed,
                       report_dir=tmp_path / "report", progress=False, secure=True,
                       workload=WorkloadConfig(partitions=4, group_consumers=1), queue=queue)
    print(f"{scenario} seed {seed}: replay with `{config.replay_command()}`")
    return ChaosRun(config, out=lambda line: None).execute()


def _explain(outcome: RunOutcome) -> str:
    return (outcome.report_dir / "summary.txt").read_text()


def _assert_secured(outcome: RunOutcome) -> None:
    """The report says the run was secure, and the nodes saw the clients' certificates."""
    run = json.loads((outcome.report_dir / "run.json").read_text())
    assert run["secure"] is True and run["security"]["authentication"] == "scram", run
    assert run["security"]["authorization"] is True and run["security"]["tls"] is True, run
    assert run["replay"].endswith("--secure"), run["replay"]
    assert "security: TLS on both listeners" in _explain(outcome)
    logs = [p.read_text() for p in (outcome.report_dir / "cluster").glob("n*.log")]
    assert logs and all("; TLS)" in text for text in logs)  # "node N listening on ... TLS"
    assert any("principal Cert:CN=chaos " in text for text in logs), "no workload client cert"
    assert (outcome.report_dir / "cluster" / "certs" / "ca.pem").is_file()
    probe = next(h for h in outcome.harness if h.name == "security")
    assert probe.verdict is Verdict.PASS and "PERMISSION_DENIED" in probe.detail, probe


def _assert_log_clean(outcome: RunOutcome) -> None:
    r = outcome.results
    assert outcome.executed, f"no fault was injected\n{_explain(outcome)}"
    assert r is not None and r.acked > 0, _explain(outcome)
    assert (r.lost, r.duplicated, r.inconsistent, r.aborted, r.divergent) == (0, 0, 0, 0, 0), \
        _explain(outcome)
    assert all(h.verdict is Verdict.PASS for h in outcome.harness), _explain(outcome)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_secure_kill_leader_finds_no_anomaly(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "kill-leader", seed=8)
    _assert_log_clean(outcome)
    assert outcome.verdict is RunVerdict.VALID, _explain(outcome)
    _assert_secured(outcome)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_secure_partition_with_the_queue_workload_finds_no_anomaly(tmp_path: Path) -> None:
    if NETWORK_SKIP:
        pytest.skip(f"majority-minority needs network faults: {NETWORK_SKIP}")
    outcome = _run(tmp_path, "majority-minority", seed=3, queue=QueueWorkloadConfig())
    _assert_log_clean(outcome)
    q = outcome.queue_results
    assert q is not None and q.consumer_acked > 0, _explain(outcome)
    assert (q.lost, q.double_finished, q.redelivered, q.lock_overlaps) == (0, 0, 0, 0), \
        _explain(outcome)
    assert outcome.verdict is RunVerdict.VALID, _explain(outcome)
    _assert_secured(outcome)


# --- the wiring, without a cluster ----------------------------------------------------------------


def test_secure_is_in_the_replay_command_and_refused_on_the_docker_backend() -> None:
    assert RunConfig(scenario="kill-leader", seed=2, secure=True).replay_command().endswith(
        "--seed 2 --secure")
    assert "--secure" not in RunConfig(scenario="kill-leader").replay_command()
    with pytest.raises(ValueError, match="--secure runs on the local backend only"):
        RunConfig(scenario="kill-leader", backend="docker", secure=True)


def test_the_cli_refuses_secure_docker_runs_with_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Refused with the reason, never run as a plaintext cluster; TIDELOG_CHAOS_SECURE is the
    flag's twin (read when the parser is built)."""
    from tidelog.client.cli import main

    monkeypatch.delenv("TIDELOG_CHAOS_SECURE", raising=False)
    assert main(["chaos", "run", "kill-leader", "--backend", "docker", "--secure"]) == 2
    monkeypatch.setenv("TIDELOG_CHAOS_SECURE", "on")
    assert main(["chaos", "run", "kill-leader", "--backend", "docker"]) == 2
    assert main(["chaos", "suite", "--backend", "docker", "--report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("--secure runs on the local backend only") == 3
    assert err.count("tidelog chaos run: --secure") == 2  # the action named, as every command
    assert err.count("tidelog chaos suite: --secure") == 1


@pytest.mark.cluster
@pytest.mark.timeout(90)
def test_the_security_check_fails_against_a_node_that_only_has_tls(tmp_path: Path) -> None:
    """The `security` harness check is no rubber stamp: a TLS node with client certificates
    but without SCRAM and ACLs takes the certificate-only Produce, so the check fails."""
    from tidelog.chaos.secure import ChaosSecurity
    from tidelog.node.local_cluster import LocalCluster

    security = ChaosSecurity(directory=tmp_path / "certs", node_count=1)
    security.make_certs(["127.0.0.1"])
    with LocalCluster(1, tmp_path / "cluster", tls_dir=security.directory,
                      tls_client_auth="required") as cluster:
        cluster.wait_healthy()
        passed, detail = security.probe(cluster.node(1).address, "chaos")
    print(detail)
    assert not passed, detail
    assert "without a login" in detail or "not PERMISSION_DENIED" in detail, detail
