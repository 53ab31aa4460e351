"""One chaos run, start to verdict: cluster up, topic, workload + nemesis, heal, final read, check.

    run = ChaosRun(RunConfig(scenario="kill-leader", seed=7, duration_s=30))
    outcome = run.execute()          # always cleans up: processes, namespaces, mounts, rules
    outcome.valid, outcome.report_dir

Timeline (seconds since the workload started): warmup, the scenario's episodes, a fault-free
cooldown; then producers stop and drain, the harness waits for the cluster to converge (every
partition led, every replica in sync), reads every partition from offset 0 (the final read), lets
the consumer catch up, and hands the history to the checker. Besides the checker's verdicts the
run has two harness checks, also counted in the exit code: `converged` (the cluster healed
within `converge_s_max`) and `final-read` (every partition could be read to its high watermark).

With `secure` (`--secure`), the nodes run with TLS, SCRAM and ACLs, the harness creates its user
right after they start, and every client of the run goes through that (chaos/secure.py); the
report's `security:` line and run.json's `security` say so, and a third harness check,
`security`, shows the nodes refuse a plaintext call and a certificate without a login.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tidelog.chaos.backend import Backend, BackendError, LocalBackend
from tidelog.chaos.checker import check_history
from tidelog.chaos.nemesis import Nemesis, describe_fault_detail
from tidelog.chaos.queue_checker import (
    QueueResults,
    check_queue,
    queue_results_to_dict,
    render_queue_summary,
)
from tidelog.chaos.queue_workload import QueueWorkload, QueueWorkloadConfig, create_queue
from tidelog.chaos.replicas import digest_replicas
from tidelog.chaos.report import write_report
from tidelog.chaos.results import Results, RunVerdict, Verdict, results_to_dict, verdict_line
from tidelog.chaos.scenarios import (
    SCENARIOS,
    membership_spares,
    missing_capability,
    needs_power,
    schedule,
)
from tidelog.chaos.secure import ChaosSecurity
from tidelog.chaos.workload import (
    ClusterView,
    Recorder,
    Workload,
    WorkloadConfig,
    read_all_partitions,
)
from tidelog.node.storage.config import FsyncPolicy

if TYPE_CHECKING:
    from tidelog.client.security import ClientSecurity

__all__ = ["EXIT_CODES", "ChaosRun", "RunConfig", "RunOutcome", "ScenarioUnavailable"]

log = logging.getLogger(__name__)

DISK_BYTES_MAX = 64 << 20  # tmpfs per node for disk faults
CONVERGE_S_MAX = 60.0
# `tidelog chaos run` exits with these (2: the scenario cannot run here, or bad arguments).
EXIT_CODES = {RunVerdict.VALID: 0, RunVerdict.INVALID: 1, RunVerdict.VACUOUS: 3}
STARTUP_S_MAX = 60.0
MEMBERSHIP_JOIN_S = 240.0  # more, for operations still running or queued at the run's end


class ScenarioUnavailable(RuntimeError):
    """The backend here cannot inject what the scenario needs (the message says why)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    scenario: str
    backend: str = "local"
    nodes: int = 3
    duration_s: float = 60.0
    rate_per_s: float = 200.0
    seed: int = 0
    report_dir: Path | None = None
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    # Which program runs the nodes (local backend): the shipped one unless a test says otherwise.
    node_module: str = "tidelog.node.main"
    node_env: dict[str, str] = field(default_factory=dict)
    # The nodes' fsync policy (`tidelog node --fsync`): "always", or "interval:..." to measure
    # what a power cut loses with it.
    fsync: str = "always"
    # Local backend: one network namespace per node when root allows it (None), or never
    # (False: nodes on 127.0.0.1, process faults only, as without root), or required (True).
    network_namespaces: bool | None = None
    converge_s_max: float = CONVERGE_S_MAX
    progress: bool = True
    # Queue consumers over the topic too, judged by the queue checker (None: the log workload
    # alone). `--workload queue` / `queue-key-ordered`.
    queue: QueueWorkloadConfig | None = None
    # TLS on both listeners, SCRAM authentication and ACLs on every node; every client of the
    # run logs in (`--secure`, chaos/secure.py).
    secure: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; `tidelog chaos list` shows "
                             "them")
        if self.backend not in ("local", "docker"):
            raise ValueError("backend must be 'local' or 'docker'")
        fixed = SCENARIOS[self.scenario].nodes
        if fixed is not None:  # membership-5, membership-7: the scenario says how many
            object.__setattr__(self, "nodes", fixed)
        if self.nodes not in (3, 5, 7):
            raise ValueError("nodes must be 3, 5 or 7")
        if not 5 <= self.duration_s <= 24 * 3600:
            raise ValueError("duration must be 5 s .. 24 h")
        FsyncPolicy.parse(self.fsync)  # ValueError names what is wrong
        if self.secure and self.backend == "docker":
            raise ValueError(
                "--secure runs on the local backend only: the docker backend starts the "
                "plain compose deployment and cannot give its nodes the harness's certificates "
                "and super user; use --backend local (as root for network faults), or "
                "deploy/docker-compose.secure.yml by hand (docs/chaos.md, \"Secure runs\")")

    def replay_command(self) -> str:
        return (f"tidelog chaos run {self.scenario} --backend {self.backend} --nodes {self.nodes} "
                f"--duration {self.duration_s:g} --rate {self.rate_per_s:g} --seed {self.seed}"
                + ("" if self.fsync == "always" else f" --fsync {self.fsync}")
                + ("" if self.queue is None else f" --workload {self.queue.name}")
                + (" --secure" if self.secure else ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class HarnessCheck:
    name: str
    verdict: Verdict
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    config: RunConfig
    results: Results | None
    harness: tuple[HarnessCheck, ...]
    report_dir: Path
    backend_description: str
    executed: tuple[dict[str, object], ...]
    skipped: tuple[str, ...]
    queue_results: QueueResults | None = None  # a queue run's second checker
    security: str = ""  # how the run was secured (`--secure`); "" = plaintext, no login
    members: tuple[str, ...] = ()  # the backend's members at the end (membership scenarios)

    @property
    def verdict(self) -> RunVerdict:
        """INVALID when a check (of either checker) or a harness check failed, else VACUOUS when
        either checker says the run proves nothing, else VALID."""
        if self.results is None or any(h.verdict is Verdict.FAIL for h in self.harness):
            return RunVerdict.INVALID
        verdicts = {self.results.verdict}
        if self.queue_results is not None:
            verdicts.add(self.queue_results.verdict)
        for v in (RunVerdict.INVALID, RunVerdict.VACUOUS):
            if v in verdicts:
                return v
        return RunVerdict.VALID

    @property
    def valid(self) -> bool:
        return self.verdict is RunVerdict.VALID

    def verdict_text(self) -> str:
        """The summary's verdict: VALID, INVALID naming every failed check and harness check,
        or INVALID (vacuous: why)."""
        if self.results is None:
            return "INVALID (no results)"
        failed = [c.value for c in self.results.failed_checks]
        q = self.queue_results
        failed += [c.value for c in q.failed_checks] if q is not None else []
        failed += [h.name for h in self.harness if h.verdict is Verdict.FAIL]
        if failed:
            return "INVALID (failed: " + ", ".join(failed) + ")"
        if q is not None and q.vacuous and not self.results.vacuous:
            return ("INVALID (vacuous: " + "; ".join(q.vacuous)
                    + "; the run could not have failed, so it proves nothing)")
        return verdict_line(self.results)


class ChaosRun:
    def __init__(self, config: RunConfig, *, out: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._out = out or (lambda line: print(line, file=sys.stderr, flush=True))

    def execute(self) -> RunOutcome:
        cfg = self.config
        scenario = SCENARIOS[cfg.scenario]
        report_dir = cfg.report_dir or Path(tempfile.mkdtemp(
            prefix=f"tidelog-chaos-{cfg.scenario}-{cfg.seed}-"))
        report_dir.mkdir(parents=True, exist_ok=True)
        spares = membership_spares(scenario, cfg.duration_s)
        security = (ChaosSecurity(directory=report_dir / "cluster" / "certs",
                                  node_count=cfg.nodes + spares) if cfg.secure else None)
        backend = self._backend(scenario.name, report_dir / "cluster", security, spares)
        why = missing_capability(scenario, backend.capabilities)
        if why:
            raise ScenarioUnavailable(f"scenario {cfg.scenario} {why}, which the {cfg.backend} "
                                      f"backend cannot do here: {backend.description or ''}"
                                      .rstrip(": "))
        wl = WorkloadConfig(**{**asdict(cfg.workload), "rate_per_s": cfg.rate_per_s,
                               "replication_factor": min(cfg.workload.replication_factor,
                                                         cfg.nodes)})
        recorder: Recorder | None = None
        harness: list[HarnessCheck] = []
        view: ClusterView | None = None
        nemesis: Nemesis | None = None
        workload: Workload | None = None
        queue: QueueWorkload | None = None
        try:
            self._out(f"chaos: {cfg.scenario} seed={cfg.seed}; starting {cfg.nodes} nodes "
                      f"({cfg.backend} backend); report in {report_dir}")
            backend.start()
            self._out(f"chaos: {backend.description}")
            # Every slot, spares included (the view and the final read map node ids to
            # addresses); clients bootstrap from the initial members.
            addresses = {n: backend.client_address(n)
                         for n in getattr(backend, "slots", backend.nodes)}
            bootstrap = [addresses[n] for n in backend.nodes]
            client = None
            if security is not None:
                self._out(f"chaos: creating user {security.username} (secure run)")
                try:
                    security.create_user(bootstrap, timeout_s=STARTUP_S_MAX)
                except TimeoutError as exc:
                    raise BackendError(str(exc)) from None
                client = security.client_security()
            view = ClusterView(addresses, wl.topic, security=client)
            _create_topic(bootstrap, wl, security=client)
            if security is not None:
                passed, detail = security.probe(addresses[backend.nodes[0]], wl.topic)
                harness.append(HarnessCheck(name="security", detail=detail,
                                            verdict=Verdict.PASS if passed else Verdict.FAIL))
            created = (create_queue(bootstrap, cfg.queue, wl.topic,
                                    security=client) if cfg.queue is not None else None)
            episodes = schedule(scenario, duration_s=cfg.duration_s, seed=cfg.seed,
                                capabilities=backend.capabilities)
            (report_dir / "schedule.json").write_text(json.dumps(
                [{"kind": e.kind.value, "start_s": e.start_s, "duration_s": e.duration_s,
                  "pick": e.pick} for e in episodes], indent=1) + "\n")
            recorder = Recorder(report_dir / "history.jsonl")  # time 0: the workload starts
            if cfg.queue is not None and created is not None:
                queue = QueueWorkload(cfg.queue, created, bootstrap, addresses,
                                      path=report_dir / "queue-history.jsonl",
                                      clock_ms=recorder.now_ms, seed=cfg.seed, security=client)
            # A queue run aims "the leader" faults at the queue's coordinator.
            nemesis = Nemesis(backend, queue.nemesis_view(wl.partitions) if queue else view,
                              recorder, partitions=wl.partitions, topic=wl.topic,
                              security=client)
            workload = Workload(wl, bootstrap, recorder, view, seed=cfg.seed,
                                duration_s=cfg.duration_s, security=client)
            t0 = time.monotonic()
            workload.start()
            if queue is not None:
                queue.start()
            nemesis_thread = threading.Thread(target=nemesis.run, args=(episodes, t0),
                                              name="chaos-nemesis", daemon=True)
            nemesis_thread.start()
            self._progress(t0, recorder, nemesis, phase="running",
                           extra=queue.progress if queue else None)
            nemesis.abort()  # every episode ended by now, except one overrunning: heal it
            nemesis_thread.join(10)
            # Membership operations run to their end (each bounded by its own timeout).
            nemesis.join(60 + (MEMBERSHIP_JOIN_S if scenario.membership else 0))
            nemesis.heal_all()
            self._out("chaos: faults healed; draining producers")
            workload.stop_producers()
            harness.append(_converge(view, wl.partitions, cfg.converge_s_max, self._out))
            try:
                hws = read_all_partitions(view, addresses, wl.topic, wl.partitions, recorder)
                harness.append(HarnessCheck(name="final-read", verdict=Verdict.PASS,
                                            detail=f"{len(hws)} partitions read to their high "
                                                   "watermark"))
            except TimeoutError as exc:
                hws = {}
                harness.append(HarnessCheck(name="final-read", verdict=Verdict.FAIL,
                                            detail=str(exc)))
            caught_up = workload.stop_consumer(hws, timeout_s=30)
            if not caught_up:
                self._out("chaos: the consumer did not catch up with the final read in 30 s")
            if queue is not None:
                harness += self._drain_queue(queue, hws)
            if hws:
                harness.append(self._compare_replicas(backend, view, wl.topic, hws, recorder,
                                                      report_dir / "replica-copies"))
        finally:
            if nemesis is not None:
                nemesis.abort()
            if workload is not None:
                workload.stop_producers()
                workload.stop_consumer({}, timeout_s=0)
            if queue is not None:
                queue.stop()
                queue.close()
            if view is not None:
                view.close()
            backend.stop()
            if recorder is not None:
                recorder.close()
        assert recorder is not None
        history = recorder.history()
        results = check_history(history)
        queue_results = check_queue(history, queue.history()) if queue is not None else None
        outcome = RunOutcome(
            config=cfg, results=results, harness=tuple(harness), report_dir=report_dir,
            backend_description=backend.description,
            executed=tuple(nemesis.executed if nemesis else ()),
            skipped=tuple(nemesis.skipped if nemesis else ()), queue_results=queue_results,
            security=security.describe() if security is not None else "",
            members=tuple(backend.nodes))
        preamble = render_preamble(outcome)
        write_report(report_dir, history, results, preamble=preamble,
                     queue_history=queue.history() if queue is not None else None)
        (report_dir / "run.json").write_text(json.dumps({
            "scenario": cfg.scenario, "seed": cfg.seed, "backend": cfg.backend,
            "nodes": cfg.nodes, "duration_s": cfg.duration_s, "rate_per_s": cfg.rate_per_s,
            "replay": cfg.replay_command(), "backend_description": backend.description,
            "valid": outcome.valid, "verdict": outcome.verdict.value,
            "executed": list(outcome.executed),
            "members": list(backend.nodes),  # at the end: spares admitted, removed nodes gone
            "skipped": list(outcome.skipped),
            "harness": [{"name": h.name, "verdict": h.verdict.value, "detail": h.detail}
                        for h in outcome.harness],
            "results": results_to_dict(results),
            "workload": cfg.queue.name if cfg.queue else "log",
            "secure": cfg.secure,
            "security": security.as_json() if security is not None else {"tls": False,
                                                                        "authentication": "none",
                                                                        "authorization": False},
            **({} if queue_results is None else {
                "queue_results": queue_results_to_dict(queue_results)}),
        }, indent=2) + "\n")
        return outcome

    # --- helpers --------------------------------------------------------------------------------

    def _drain_queue(self, queue: QueueWorkload, hws: dict[int, int]) -> list[HarnessCheck]:
        """The queue's drain phase, then its consumers stop and the DLQ topic is read whole:
        two harness checks, `queue-drained` and `dlq-read`."""
        self._out("chaos: draining the queue")
        drained, detail = queue.drain(hws) if hws else (False, "no final read to drain to")
        checks = [HarnessCheck(name="queue-drained", verdict=Verdict.PASS if drained
                               else Verdict.FAIL, detail=detail)]
        queue.stop()
        read, detail = queue.read_dead_letters()
        checks.append(HarnessCheck(name="dlq-read", verdict=Verdict.PASS if read
                                   else Verdict.FAIL, detail=detail))
        return checks

    def _compare_replicas(self, backend: Backend, view: ClusterView, topic: str,
                          hws: dict[int, int], recorder: Recorder, scratch: Path) -> HarnessCheck:
        """Stop every node (SIGTERM: a clean stop; all at once, so no node elects itself and
        writes after the others went, and the run waits for the slowest stop, not their sum),
        then digest each replica's committed prefix offline into `replica_digest` events; the
        checker compares them."""
        snap = view.snapshot()
        replicas = {p: snap.replicas[p][0] for p in hws if p in snap.replicas}
        self._out("chaos: stopping the nodes to compare their replicas offline")
        try:
            with ThreadPoolExecutor(max_workers=len(backend.nodes),
                                    thread_name_prefix="chaos-stop") as pool:
                for stopped in [pool.submit(backend.terminate, n) for n in backend.nodes]:
                    stopped.result()  # a BackendError of any node is this check's failure
            dirs = {node: backend.data_dir(node) for node in backend.nodes}
            events = digest_replicas(dirs, topic, hws, replicas, scratch=scratch,
                                     time_ms=recorder.now_ms())
        except (BackendError, OSError) as exc:
            return HarnessCheck(name="replicas-read", verdict=Verdict.FAIL,
                                detail=f"could not read the replicas after stopping the nodes: "
                                       f"{exc}")
        for event in events:
            recorder.append(event)
        return HarnessCheck(name="replicas-read", verdict=Verdict.PASS,
                            detail=f"{len(events)} replicas of {len(hws)} partitions and the "
                                   "metadata log digested offline (judged by "
                                   "replica-consistency)")

    def _backend(self, scenario: str, work_dir: Path,
                 security: ChaosSecurity | None, spares: int = 0) -> Backend:
        cfg = self.config
        uses_disk = scenario in ("disk-full", "mixed")
        if cfg.backend == "docker":
            from tidelog.chaos.docker_backend import DockerBackend

            return DockerBackend(cfg.nodes, work_dir)
        try:
            return LocalBackend(cfg.nodes, work_dir, spares=spares,
                                use_netns=cfg.network_namespaces,
                                disk_bytes_max=DISK_BYTES_MAX if uses_disk else None,
                                power_loss=needs_power(SCENARIOS[scenario]),
                                node_args=("--fsync", cfg.fsync),
                                node_module=cfg.node_module, env=cfg.node_env,
                                security=security)
        except BackendError as exc:
            raise ScenarioUnavailable(str(exc)) from None

    def _progress(self, t0: float, rec: Recorder, nemesis: Nemesis, *, phase: str,
                  extra: Callable[[], str] | None = None) -> None:
        """Print a progress line until the duration is over (every second on a terminal)."""
        tty = self.config.progress and sys.stderr.isatty()
        every_s = 1.0 if tty else 5.0
        end = t0 + self.config.duration_s
        last_print = 0.0
        while (now := time.monotonic()) < end:
            if self.config.progress and now - last_print >= every_s:
                last_print = now
                faults = " ".join(nemesis.active.values()) or "-"
                line = (f"[{now - t0:6.1f}/{self.config.duration_s:g}s] sent={rec.invoked} "
                        f"acked={rec.ok} errors={rec.failed + rec.indeterminate} "
                        f"(indeterminate {rec.indeterminate}) read={rec.reads} fault={faults}"
                        + (f" {extra()}" if extra else ""))
                if tty:
                    sys.stderr.write("\r\033[K" + line)
                    sys.stderr.flush()
                else:
                    self._out(line)
            time.sleep(min(0.25, max(0.0, end - now)))
        if tty:
            sys.stderr.write("\n")


def _create_topic(bootstrap: list[str], wl: WorkloadConfig,
                  security: ClientSecurity | None = None) -> None:
    from tidelog.client import Admin, errors

    deadline = time.monotonic() + STARTUP_S_MAX
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with Admin(bootstrap, request_timeout_ms=10_000, security=security) as admin:
                # TopicAlreadyExists: an earlier attempt that timed out made it
                with contextlib.suppress(errors.TopicAlreadyExists):
                    admin.create_topic(wl.topic, partitions=wl.partitions,
                                       replication_factor=wl.replication_factor)
                admin._wait_for_leaders(wl.topic)  # noqa: SLF001 - same wait create_topic does
                return
        except errors.TidelogError as exc:
            last = exc
            time.sleep(0.5)
    raise BackendError(f"could not create topic {wl.topic!r} within {STARTUP_S_MAX:.0f} s: {last}")


def _converge(view: ClusterView, partitions: int, timeout_s: float,
              out: Callable[[str], None]) -> HarnessCheck:
    start = time.monotonic()
    snap = view.snapshot()
    while not snap.converged(partitions):
        if time.monotonic() - start > timeout_s:
            stuck = [f"p{p}: leader={snap.leaders.get(p, (None, 0))[0]} "
                     f"replicas={list(snap.replicas.get(p, ((), ()))[0])} "
                     f"in-sync={list(snap.replicas.get(p, ((), ()))[1])}"
                     for p in range(partitions)]
            out(f"chaos: cluster did not converge in {timeout_s:.0f} s")
            return HarnessCheck(name="converged", verdict=Verdict.FAIL,
                                detail=f"not converged {timeout_s:.0f} s after healing: "
                                       + "; ".join(stuck))
        time.sleep(0.5)
        snap = view.snapshot()
    took = time.monotonic() - start
    return HarnessCheck(name="converged", verdict=Verdict.PASS,
                        detail=f"every partition led, every replica in sync {took:.1f} s after "
                               "the producers drained")


def render_preamble(outcome: RunOutcome) -> str:
    cfg = outcome.config
    r = outcome.results
    lines = [
        f"scenario: {cfg.scenario}    seed: {cfg.seed}    verdict: {outcome.verdict_text()}",
        f"replay:   {cfg.replay_command()}",
        f"backend:  {outcome.backend_description}",
        f"security: {outcome.security or 'off (plaintext, no authentication, no ACLs)'}",
        f"workload: {cfg.workload.producers} idempotent acks=all producers, "
        f"{cfg.rate_per_s:g} msgs/s total, {cfg.workload.partitions} partitions x RF "
        f"{min(cfg.workload.replication_factor, cfg.nodes)}, 1 manual-assignment consumer, "
        f"a consumer group of {cfg.workload.group_consumers} committing every "
        f"{cfg.workload.group_commit_interval_s:g} s, final read of every partition",
        *([] if cfg.queue is None else [
            f"          + queue {cfg.queue.queue} ({cfg.queue.name}) over the topic: "
            f"{cfg.queue.consumers} consumers, lock {cfg.queue.lock_s:g} s, max deliveries "
            f"{cfg.queue.max_deliveries}, nack/reject/release/late shares "
            f"{cfg.queue.nack_share:g}/{cfg.queue.reject_share:g}/{cfg.queue.release_share:g}/"
            f"{cfg.queue.late_share:g}; \"leader\" faults hit the queue's coordinator; drain, "
            "then the whole DLQ read"]),
        *([] if not SCENARIOS[cfg.scenario].membership else [
            f"members:  {cfg.nodes} at start (+ spare slots for add-node); at the end: "
            + ",".join(outcome.members)]),
        "",
        "harness checks:",
        *[f"  {h.name:<13} {h.verdict.value.upper():<5} {h.detail}" for h in outcome.harness],
        "",
        f"faults executed ({len(outcome.executed)}):",
        *[f"  {e['start_ms']:>9.0f}-{e['stop_ms']:<9.0f} ms  {e['fault']} "
          f"{','.join(e['targets'])}{describe_fault_detail(e)}"  # type: ignore[arg-type]
          for e in outcome.executed],
    ]
    if outcome.skipped:
        lines += ["faults skipped:", *[f"  {s}" for s in outcome.skipped]]
    if r is not None:
        lines += ["", f"acked {r.acked}, lost {r.lost}, duplicated {r.duplicated}, "
                      f"inconsistent {r.inconsistent}, divergent replicas {r.divergent}, "
                      f"aborted {r.aborted}, recovered {r.recovered}, unrecovered "
                      f"{r.unrecovered}"]
    if outcome.queue_results is not None:
        lines += ["", render_queue_summary(outcome.queue_results).rstrip("\n")]
    return "\n".join(lines) + "\n\n"
