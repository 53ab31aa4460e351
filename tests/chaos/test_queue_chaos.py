"""The queue workload on a real cluster under real faults: nothing acknowledged is lost by the
queue, nothing is finished twice, no lock (and in key-ordered mode no key) is held twice.

Each run is short (10-20 s of workload on 3 nodes, 4 partitions, 100 msgs/s, 4 queue consumers,
no consumer group); "leader" faults hit the queue's coordinator (chaos/queue_workload.py). A
12 s run has the same single fault as a 15 s one (2 s in, about 3 s long: chaos/scenarios.py
`schedule`) and 7 s of workload after it instead of 10; power-cut-leader runs 12 s too (one
cut of the coordinator instead of two); pause-leader keeps 20 s and its second pause (seed 5 at
20 s found the double dead letter fixed in fa9998c). The planted-bug runs need one coordinator
move (or none, for key order): 10 s, one 2 s kill. The
proof that these runs can fail: the same kill-leader run against a node whose queue coordinator
does not persist acks (tests/chaos/queue_lost_ack_node.py) must come out INVALID, naming records
delivered again after a successful ack; against a node whose core keeps no key order
(tests/chaos/queue_key_order_ignored_node.py), a key-ordered run must report key overlaps and
records delivered before their key's predecessors were done.

Network faults need root and iproute2 + iptables, power cuts LazyFS (root, /dev/fuse, fuse3,
mfusepy); those runs skip with the reason otherwise (CI has all of them). Every run prints its
seed and replay command (the test's workload differs from the CLI default in partitions and
consumer group only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tidelog.chaos.checker import check_history
from tidelog.chaos.cli import _queue_config
from tidelog.chaos.history import (
    FaultStart,
    FinalRead,
    FinalRecord,
    History,
    SendInvoked,
    SendOk,
    encode_value,
)
from tidelog.chaos.lazyfs import lazyfs_unavailable_reason
from tidelog.chaos.netns import netns_unavailable_reason
from tidelog.chaos.queue_checker import QueueCheckName, QueueCheckResult, check_queue
from tidelog.chaos.queue_history import QueueHistory
from tidelog.chaos.queue_workload import QueueWorkloadConfig
from tidelog.chaos.results import RunVerdict, Verdict
from tidelog.chaos.runner import (
    EXIT_CODES,
    ChaosRun,
    HarnessCheck,
    RunConfig,
    RunOutcome,
    render_preamble,
)
from tidelog.chaos.workload import WorkloadConfig

REPO = Path(__file__).resolve().parents[2]
NETWORK_SKIP = netns_unavailable_reason()
LAZYFS_SKIP = lazyfs_unavailable_reason()
RATE = 100.0


def _run(tmp_path: Path, scenario: str, *, workload: str, seed: int, duration_s: float = 10.0,
         **kwargs: object) -> RunOutcome:
    config = RunConfig(scenario=scenario, duration_s=duration_s, rate_per_s=RATE, seed=seed,
                       report_dir=tmp_path / "report", progress=False,
                       workload=WorkloadConfig(partitions=4, group_consumers=0),
                       queue=QueueWorkloadConfig(key_ordered=workload == "queue-key-ordered"),
                       **kwargs)  # type: ignore[arg-type]
    print(f"{scenario} {workload} seed {seed}: replay with `{config.replay_command()}`")
    return ChaosRun(config, out=lambda line: None).execute()


def _explain(outcome: RunOutcome) -> str:
    return (outcome.report_dir / "summary.txt").read_text()


def _harness(outcome: RunOutcome, name: str) -> Verdict:
    return next(h.verdict for h in outcome.harness if h.name == name)


@pytest.mark.cluster
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("scenario", "workload", "duration_s", "seed"), [
    ("kill-leader", "queue-key-ordered", 12.0, 3),
    ("majority-minority", "queue", 12.0, 3),
    ("pause-leader", "queue", 20.0, 5),
    ("power-cut-leader", "queue-key-ordered", 12.0, 3),
])
def test_queue_under_faults_loses_nothing_and_finishes_each_record_once(
        tmp_path: Path, scenario: str, workload: str, duration_s: float, seed: int) -> None:
    if scenario == "majority-minority" and NETWORK_SKIP:
        pytest.skip(f"{scenario} needs network faults: {NETWORK_SKIP}")
    if scenario.startswith("power-cut") and LAZYFS_SKIP:
        pytest.skip(f"{scenario} needs LazyFS: {LAZYFS_SKIP}")
    outcome = _run(tmp_path, scenario, workload=workload, seed=seed, duration_s=duration_s)
    q = outcome.queue_results
    assert outcome.executed, f"no fault was injected\n{_explain(outcome)}"
    assert q is not None, _explain(outcome)
    assert _harness(outcome, "queue-drained") is Verdict.PASS, _explain(outcome)
    assert _harness(outcome, "dlq-read") is Verdict.PASS, _explain(outcome)
    assert q.check(QueueCheckName.LOST).verdict is Verdict.PASS, _explain(outcome)
    assert (q.lost, q.double_finished, q.redelivered, q.lock_overlaps,
            q.key_order_violations) == (0, 0, 0, 0, 0), _explain(outcome)
    # The run did what it claims: consumers acked, rejects reached the DLQ, records came back.
    assert q.consumer_acked > 0 and q.dead_lettered > 0, _explain(outcome)
    assert q.check(QueueCheckName.DUPLICATES).count("redeliveries") > 0, _explain(outcome)
    if workload == "queue-key-ordered":
        order = q.check(QueueCheckName.KEY_ORDER)
        assert order.verdict is Verdict.PASS and order.count("keys") > 0, _explain(outcome)
    if scenario.startswith("power-cut"):
        assert any(e.get("power_cut") for e in outcome.executed), _explain(outcome)
    if scenario != "majority-minority":  # a leader fault hits the coordinator: it moves
        assert q.coordinator_changes >= 1, _explain(outcome)
    assert outcome.verdict is RunVerdict.VALID, _explain(outcome)
    assert (outcome.report_dir / "queue-history.jsonl").exists()
    assert f"--workload {workload}" in _explain(outcome)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_queue_chaos_catches_a_coordinator_that_answers_acks_it_did_not_persist(
        tmp_path: Path) -> None:
    outcome = _run(tmp_path, "kill-leader", workload="queue", seed=3,
                   node_module="tests.chaos.queue_lost_ack_node",
                   node_env={"PYTHONPATH": str(REPO)})
    q = outcome.queue_results
    assert q is not None and outcome.executed, _explain(outcome)
    assert q.coordinator_changes >= 1, _explain(outcome)
    assert outcome.verdict is RunVerdict.INVALID, _explain(outcome)
    redelivered = q.check(QueueCheckName.REDELIVERED)
    assert redelivered.verdict is Verdict.FAIL and q.redelivered > 0, _explain(outcome)
    assert "ack ok by" in redelivered.examples[0], redelivered.examples
    assert outcome.results is not None and outcome.results.lost == 0  # the log itself is fine


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_queue_chaos_catches_a_key_ordered_queue_that_keeps_no_key_order(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "kill-leader", workload="queue-key-ordered", seed=3,
                   node_module="tests.chaos.queue_key_order_ignored_node",
                   node_env={"PYTHONPATH": str(REPO)})
    q = outcome.queue_results
    assert q is not None and outcome.verdict is RunVerdict.INVALID, _explain(outcome)
    locks = q.check(QueueCheckName.LOCKS)
    assert locks.count("key-overlaps") > 0 and locks.count("record-overlaps") == 0, \
        _explain(outcome)
    order = q.check(QueueCheckName.KEY_ORDER)
    assert order.verdict is Verdict.FAIL and order.count("delivered-early") > 0, _explain(outcome)
    assert q.lost == 0 and q.double_finished == 0, _explain(outcome)  # only the order broke


# --- the wiring, without a cluster ----------------------------------------------------------------


def test_workload_option_selects_the_queue_and_appears_in_the_replay_command() -> None:
    assert _queue_config("log") is None
    keyed = _queue_config("queue-key-ordered")
    assert keyed is not None and keyed.key_ordered and keyed.name == "queue-key-ordered"
    config = RunConfig(scenario="kill-leader", seed=4, queue=_queue_config("queue"))
    assert config.replay_command().endswith("--seed 4 --workload queue")
    assert "--workload" not in RunConfig(scenario="kill-leader").replay_command()


def test_the_queue_checker_verdict_joins_the_run_verdict(tmp_path: Path) -> None:
    value = encode_value("p0", 0)
    history = History((
        FaultStart(name="kill-leader", targets=("n1",), time_ms=0.5),
        SendInvoked(producer="p0", seq=0, key="k", value=value, partition=None, time_ms=1.0),
        SendOk(producer="p0", seq=0, partition=0, offset=0, time_ms=2.0),
        FinalRead(partition=0, records=(FinalRecord(offset=0, key="k", value=value),),
                  time_ms=3.0)))
    vacuous = check_queue(history, QueueHistory(()))
    outcome = RunOutcome(
        config=RunConfig(scenario="kill-leader", queue=_queue_config("queue")),
        results=check_history(history),
        harness=(HarnessCheck(name="queue-drained", verdict=Verdict.PASS, detail="depth 0"),),
        report_dir=tmp_path, backend_description="local", executed=(), skipped=(),
        queue_results=vacuous)
    assert outcome.results is not None and outcome.results.valid
    assert outcome.verdict is RunVerdict.VACUOUS and EXIT_CODES[outcome.verdict] == 3
    assert "INVALID (vacuous: no queue_started event" in render_preamble(outcome)
    broken = dataclasses.replace(vacuous, checks=(*vacuous.checks, QueueCheckResult(
        name=QueueCheckName.DOUBLE_FINISHED, verdict=Verdict.FAIL,
        counts=(("double-finished", 1),))))
    failed = dataclasses.replace(outcome, queue_results=broken)
    assert failed.verdict is RunVerdict.INVALID and EXIT_CODES[failed.verdict] == 1
    assert "verdict: INVALID (failed: queue-double-finished)" in render_preamble(failed)
    assert dataclasses.replace(outcome, queue_results=None).verdict is RunVerdict.VALID
