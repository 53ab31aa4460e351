"""The simulator (real Replica, PartitionLog and GroupCommitter over SimFileSystem): determinism,
replay, the CLI, and proof that the checker can fail."""

from __future__ import annotations

import pytest
from tidelog.client.cli import main
from tidelog.node.raft import RaftCore
from tidelog.node.sim.cluster import Cluster, SimOptions
from tidelog.node.sim.runner import run_seed, run_seeds

from tests.raft.bugs import ForgetsVote, VotesForStaleLogs


def test_same_seed_replays_exactly() -> None:
    a, b = run_seed(11, steps=1500), run_seed(11, steps=1500)
    assert a.trace == b.trace and a.commits == b.commits and a.faults == b.faults
    assert a.violation is None


def test_a_seed_replays_exactly_in_another_process() -> None:
    """The replay command works: no hash randomization, clock or thread leaks into a run."""
    import json
    import os
    import subprocess
    import sys

    runs = []
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-m", "tidelog.client.cli", "sim", "--seed", "7", "--steps", "600",
             "--output", "json", "--verbose"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=False)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout))
    assert runs[0] == runs[1] and runs[0]["commits"] > 0 and len(runs[0]["trace"]) > 10


def test_faultless_run_commits_every_proposal_and_elects_once() -> None:
    r = run_seed(1, steps=3000, options=SimOptions(faults=False))
    assert r.violation is None and r.elections == 1 and r.commits > 50


def test_five_nodes_pass_a_few_seeds() -> None:
    s = run_seeds(range(20), nodes=5, steps=1500)
    assert not s.failures, [str(r.violation) for r in s.failures]


def test_cli_runs_seeds_and_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--seeds", "3", "--steps", "500"]) == 0
    out = capsys.readouterr().out
    assert "seeds:      3" in out and "violations: 0" in out


def test_cli_failure_prints_seed_replay_command_and_trace(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tidelog.node.sim.runner as runner

    caught = run_seeds(range(200), steps=500, core_cls=VotesForStaleLogs, stop_on_failure=True)
    assert caught.failures, "VotesForStaleLogs survived 200 seeds"
    seed = caught.failures[0].seed
    print(f"VotesForStaleLogs caught by seed {seed}")
    orig = runner.run_seed
    monkeypatch.setattr(
        runner, "run_seed", lambda seed, **kw: orig(seed, **{**kw, "core_cls": VotesForStaleLogs})
    )
    assert main(["sim", "--seed", str(seed), "--steps", "500"]) == 1
    out = capsys.readouterr().out
    assert f"VIOLATION seed={seed}" in out
    assert f"replay: tidelog sim --seed {seed} --steps 500" in out
    assert "recv" in out  # the trace of the last events


def test_cli_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["sim", "--seeds", "2", "--steps", "300", "--output", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seeds"] == 2 and summary["violations"] == 0 and summary["commits"] > 0
    assert main(["sim", "--seed", "4", "--steps", "300", "--output", "json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["seed"] == 4 and one["ok"] and one["replay"] == "tidelog sim --seed 4 --steps 300"


def _find(core_cls: type[RaftCore], seeds: int, options: SimOptions | None = None) -> str:
    s = run_seeds(
        range(seeds),
        steps=1500,
        core_cls=core_cls,
        options=(lambda: options) if options is None else (lambda: SimOptions(**_fields(options))),
        stop_on_failure=True,
    )
    assert s.failures, f"{core_cls.__name__} survived {seeds} seeds: the checker is blind to it"
    return str(s.failures[0].violation)


def _fields(o: SimOptions) -> dict[str, object]:
    return {k: getattr(o, k) for k in SimOptions.__slots__}  # type: ignore[attr-defined]


def test_checker_catches_votes_for_stale_logs() -> None:
    """Bug 1: no §5.4.1 election restriction -> a leader lacks committed entries."""
    violation = _find(VotesForStaleLogs, seeds=60)
    assert violation.split(":")[0] in {"Leader Completeness", "State Machine Safety", "Durability"}


def test_checker_catches_unpersisted_vote() -> None:
    """Bug 2: the vote reply is sent but the vote is not persisted -> after a crash the replica
    votes again in the same term: two leaders in one term, or diverging logs."""
    options = SimOptions(
        fault_interval_ms_max=100,
        max_append_bytes=40,
        fault_weights={"crash": 30, "restart": 30, "partition": 10, "heal": 10, "lossy": 5},
        membership_changes=False,
        reboot_after_vote_p=0.5,
    )
    violation = _find(ForgetsVote, seeds=80, options=options)
    assert violation.split(":")[0] in {
        "Election Safety",
        "Log Matching",
        "State Machine Safety",
        "Leader Completeness",
    }


def test_liveness_violation_is_reported_when_no_leader_can_be_elected() -> None:
    class NeverCampaigns(RaftCore):
        def _promotable(self) -> bool:
            return False

    r = run_seed(3, steps=200, core_cls=NeverCampaigns)
    assert r.violation is not None and r.violation.rule == "Liveness"


def test_cluster_heal_restarts_crashed_members() -> None:
    c = Cluster(5, SimOptions())
    c.run(2000)
    c.heal()
    c.run(10)
    assert all(n.replica is not None for i, n in c.nodes.items() if i in c._membership().voters)
    c.close()
