"""Run one seed or many: the simulator's entry points for the CLI, the tests and the benchmark."""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import logging
import pickle
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from tidelog.node.raft import RaftCore
from tidelog.node.replica import Replica
from tidelog.node.sim.checker import SafetyViolation, Violation
from tidelog.node.sim.cluster import Cluster, SimOptions

DEFAULT_STEPS = 1000  # what the CI gate runs per seed: `tidelog sim --seed N` replays it
LIVENESS_DEADLINE_MS = 5000  # after healing: 25 maximal election timeouts (200 ms each)
QUIESCE_IDLE_P = 0.1  # `--quiesce`: the client pauses after one request in ten


def quiesce_options() -> SimOptions:
    """`tidelog sim --quiesce`: the node's quiescence and liveness beats, with idle periods in
    the workload so the group sleeps while faults go on (module level: picklable for jobs)."""
    return SimOptions(quiesce=True, idle_p=QUIESCE_IDLE_P)


@dataclass(slots=True, kw_only=True)
class SeedResult:
    seed: int
    nodes: int
    steps: int
    elections: int
    commits: int
    faults: dict[str, int]
    sim_time_ms: int
    violation: Violation | None
    trace: list[str] = field(default_factory=list)
    quiesce: bool = False

    def replay_command(self, steps_default: int = DEFAULT_STEPS) -> str:
        cmd = f"tidelog sim --seed {self.seed}"
        if self.quiesce:
            cmd += " --quiesce"
        if self.nodes != 3:
            cmd += f" --nodes {self.nodes}"
        if self.steps != steps_default:
            cmd += f" --steps {self.steps}"
        return cmd


def run_seed(
    seed: int,
    *,
    nodes: int = 3,
    steps: int = DEFAULT_STEPS,
    core_cls: type[RaftCore] = RaftCore,
    replica_cls: type[Replica] = Replica,
    options: SimOptions | None = None,
) -> SeedResult:
    opt = options or SimOptions()
    opt.nodes, opt.core_cls, opt.replica_cls = nodes, core_cls, replica_cls
    logging.disable(logging.CRITICAL)  # the replicas log every fault they survive
    try:
        with warnings.catch_warnings():
            # A killed incarnation's tasks are dropped, some before their first step.
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
            result = _run(seed, steps, opt)
            gc.collect(1)  # while the filter holds: most dropped tasks go now
    finally:
        logging.disable(logging.NOTSET)
    return result


def _run(seed: int, steps: int, opt: SimOptions) -> SeedResult:
    cluster = Cluster(seed, opt)
    violation: Violation | None = None
    try:
        cluster.run(steps)
        cluster.heal()
        if not cluster.run_until_stable(LIVENESS_DEADLINE_MS):
            violation = Violation(
                rule="Liveness",
                detail=f"no new entry committed {LIVENESS_DEADLINE_MS} ms after healing",
            )
        elif unrepaired := cluster.unrepaired():
            violation = Violation(
                rule="Repair",
                detail=f"replicas {unrepaired} still recovering from a damaged log "
                       f"{LIVENESS_DEADLINE_MS} ms after healing",
            )
        else:
            cluster.final_check()
    except SafetyViolation as e:
        violation = e.violation
    except Exception as e:  # an assertion or a bug in the shell or core: report it with the seed
        where = traceback.extract_tb(e.__traceback__)[-1]
        violation = Violation(
            rule=type(e).__name__, detail=f"{e} ({where.filename}:{where.lineno})"
        )
    finally:
        cluster.close()
    return SeedResult(
        seed=seed,
        nodes=opt.nodes,
        steps=steps,
        elections=cluster.stats.elections,
        commits=cluster.stats.commits,
        faults=dict(cluster.stats.faults),
        sim_time_ms=cluster.now_ms,
        violation=violation,
        trace=list(cluster.trace),
        quiesce=opt.quiesce,
    )


@dataclass(slots=True, kw_only=True)
class Summary:
    seeds: int = 0
    steps: int = 0
    elections: int = 0
    commits: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    failures: list[SeedResult] = field(default_factory=list)

    def add(self, r: SeedResult) -> None:
        self.seeds += 1
        self.steps += r.steps
        self.elections += r.elections
        self.commits += r.commits
        for k, v in r.faults.items():
            self.faults[k] = self.faults.get(k, 0) + v
        if r.violation is not None:
            self.failures.append(r)


def run_seeds(
    seeds: range,
    *,
    nodes: int = 3,
    steps: int = DEFAULT_STEPS,
    core_cls: type[RaftCore] = RaftCore,
    replica_cls: type[Replica] = Replica,
    options: Callable[[], SimOptions] | None = None,
    stop_on_failure: bool = False,
    on_result: Callable[[SeedResult], None] | None = None,
    jobs: int = 1,
) -> Summary:
    """``jobs`` > 1 runs seeds in that many worker processes (results still come in seed
    order); ``options`` then must be None or picklable (a module-level function)."""
    summary = Summary()
    if jobs > 1:
        pickle.dumps((core_cls, replica_cls, options))  # fail here, not hang in the pool
    run = functools.partial(_run_one, nodes=nodes, steps=steps, core_cls=core_cls,
                            replica_cls=replica_cls, options=options)
    pool = concurrent.futures.ProcessPoolExecutor(jobs) if jobs > 1 else None
    try:
        results = pool.map(run, seeds, chunksize=8) if pool is not None else map(run, seeds)
        for r in results:
            summary.add(r)
            if on_result is not None:
                on_result(r)
            if r.violation is not None and stop_on_failure:
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return summary


def _run_one(seed: int, *, nodes: int, steps: int, core_cls: type[RaftCore],
             replica_cls: type[Replica], options: Callable[[], SimOptions] | None) -> SeedResult:
    opt = options() if options is not None else None
    return run_seed(seed, nodes=nodes, steps=steps, core_cls=core_cls, replica_cls=replica_cls,
                    options=opt)


def result_json(r: SeedResult, *, trace: bool = False) -> dict[str, object]:
    """``trace``: include it even when the seed passed (it always comes with a failure)."""
    return {
        "seed": r.seed, "ok": r.violation is None, "nodes": r.nodes, "steps": r.steps,
        "sim_time_ms": r.sim_time_ms, "elections": r.elections, "commits": r.commits,
        "faults": r.faults,
        "violation": None if r.violation is None else {"rule": r.violation.rule,
                                                       "detail": r.violation.detail},
        "replay": r.replay_command(),
        "trace": r.trace if trace or r.violation is not None else [],
    }


def format_failure(r: SeedResult) -> str:
    lines = [
        f"VIOLATION seed={r.seed}: {r.violation}",
        f"  replay: {r.replay_command()}",
        f"  last {len(r.trace)} events (sim ms, event):",
    ]
    lines.extend(f"    {t}" for t in r.trace)
    return "\n".join(lines)
