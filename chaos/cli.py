"""`tidelog chaos list` and `tidelog chaos run SCENARIO ...` (see docs/chaos.md).

Exit codes of `run`: 0 every check passed, 1 a check failed (the report says which), 2 the
scenario cannot run here (e.g. network faults without root) or bad arguments.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["register"]

WORKLOADS = ["log", "queue", "queue-key-ordered"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "chaos", help="run a chaos scenario against a real cluster and check the history",
        description="Real faults (kill -9, SIGSTOP, iptables partitions, packet loss, full "
                    "disks) against real node processes, with a checker for lost, duplicated "
                    "and inconsistent data. See docs/chaos.md.")
    sub = parser.add_subparsers(dest="chaos_command", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", help="the scenarios, and which can run here")
    listing.add_argument("--backend", choices=["local", "docker"], default="local")
    listing.set_defaults(func=_list)
    run = sub.add_parser("run", help="run one scenario; exit 1 when any check fails, 3 when the "
                                     "run was vacuous (nothing acknowledged, no fault executed)")
    run.add_argument("scenario", metavar="SCENARIO")
    run.add_argument("--backend", choices=["local", "docker"], default="local",
                     help="local: node processes here (own network namespaces as root); "
                          "docker: the compose deployment (default %(default)s)")
    run.add_argument("--nodes", type=int, choices=[3, 5, 7], default=3)
    run.add_argument("--duration", type=float, default=60.0, metavar="S",
                     help="seconds of workload, faults included (default %(default)s)")
    run.add_argument("--rate", type=float, default=200.0, metavar="MSGS_PER_S",
                     help="messages per second over all producers (default %(default)s)")
    run.add_argument("--seed", type=int, default=None,
                     help="seeds the fault schedule and the workload (default: random, printed)")
    run.add_argument("--report", type=Path, default=None, metavar="DIR",
                     help="write the report here (default: a new folder under the temp dir)")
    run.add_argument("--fsync", default="always", metavar="POLICY",
                     help="the nodes' fsync policy: always, or interval:<ms and/or bytes> (e.g. "
                          "interval:1000ms); power-cut scenarios show what it loses "
                          "(default %(default)s)")
    run.add_argument("--workload", choices=WORKLOADS, default="log",
                     help="log: producers and consumers of the topic; queue / queue-key-ordered: "
                          "also a queue over the topic, its consumers acking, nacking and "
                          "rejecting, judged by the queue checker (default %(default)s)")
    _add_secure(run)
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.set_defaults(func=_run)
    suite = sub.add_parser("suite", help="run every scenario available here in turn; exit 1 "
                                         "when any check of any run fails")
    suite.add_argument("--backend", choices=["local", "docker"], default="local")
    suite.add_argument("--nodes", type=int, choices=[3, 5, 7], default=5)
    suite.add_argument("--duration", type=float, default=300.0, metavar="S")
    suite.add_argument("--rate", type=float, default=200.0, metavar="MSGS_PER_S")
    suite.add_argument("--seed", type=int, default=None)
    suite.add_argument("--report", type=Path, default=Path("chaos-reports"), metavar="DIR",
                       help="one sub-folder per scenario (default %(default)s)")
    suite.add_argument("--only", default="", help="comma-separated scenario names")
    suite.add_argument("--fsync", default="always", metavar="POLICY",
                       help="the nodes' fsync policy (default %(default)s)")
    suite.add_argument("--workload", choices=WORKLOADS, default="log")
    _add_secure(suite)
    suite.set_defaults(func=_suite)


def _add_secure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secure", action=argparse.BooleanOptionalAction,
        default=os.environ.get("TIDELOG_CHAOS_SECURE", "").lower() in ("1", "on", "true", "yes"),
        help="TLS on both listeners (certificates made into the report's cluster/certs), "
             "client certificates required, --authentication scram, --authorization; the "
             "harness creates user 'chaos' (a super user) and every client of the run logs in "
             "as it. Local backend only (env TIDELOG_CHAOS_SECURE=on; default off)")


def _list(args: argparse.Namespace) -> int:
    from tidelog.chaos.backend import Capability
    from tidelog.chaos.scenarios import SCENARIOS, missing_capability

    caps = _capabilities_here(args.backend)
    width = max(len(n) for n in SCENARIOS)
    for name, scenario in SCENARIOS.items():
        why = missing_capability(scenario, caps)
        status = "" if why is None else f"  [unavailable here: {why}]"
        print(f"{name:<{width}}  {scenario.summary}{status}")
    if Capability.PARTITION not in caps:
        print("\nnetwork faults need root, `ip` and `iptables` (local backend); without them "
              "only process faults run, on 127.0.0.1")
    if Capability.POWER not in caps and args.backend == "local":
        from tidelog.chaos.lazyfs import lazyfs_unavailable_reason

        print(f"power cuts need LazyFS (root, /dev/fuse, fuse3, mfusepy): "
              f"{lazyfs_unavailable_reason()}")
    return 0


def _prefix(args: argparse.Namespace) -> str:
    """The common error prefix, the action named ("tidelog chaos run:"), written by hand as
    tidelog.client.cli_common's error_prefix does (chaos/ keeps to the node's side)."""
    return f"tidelog {getattr(args, 'command_path', '') or 'chaos'}:"


def _capabilities_here(backend: str):  # noqa: ANN202 - frozenset[Capability]
    from tidelog.chaos.backend import Capability
    from tidelog.chaos.netns import netns_unavailable_reason

    caps = {Capability.PROCESS}
    if backend == "docker":
        return frozenset(caps | {Capability.PARTITION})
    if netns_unavailable_reason() is None:
        caps |= {Capability.PARTITION, Capability.LOSS}
    if os.geteuid() == 0:
        caps.add(Capability.DISK)
    from tidelog.chaos.lazyfs import lazyfs_unavailable_reason

    if lazyfs_unavailable_reason() is None:
        caps.add(Capability.POWER)
    return frozenset(caps)


def _run(args: argparse.Namespace) -> int:
    import random
    import sys

    from tidelog.chaos.runner import EXIT_CODES, ChaosRun, RunConfig, ScenarioUnavailable
    from tidelog.chaos.scenarios import SCENARIOS

    if args.scenario not in SCENARIOS:
        print(f"{_prefix(args)} unknown scenario {args.scenario!r}; one of: "
              f"{', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    try:
        config = RunConfig(scenario=args.scenario, backend=args.backend, nodes=args.nodes,
                           duration_s=args.duration, rate_per_s=args.rate, seed=seed,
                           report_dir=args.report, progress=not args.quiet,
                           fsync=args.fsync, queue=_queue_config(args.workload),
                           secure=args.secure)
    except ValueError as exc:
        print(f"{_prefix(args)} {exc}", file=sys.stderr)
        return 2
    print(f"seed {seed}; replay: {config.replay_command()}", file=sys.stderr)
    try:
        outcome = ChaosRun(config).execute()
    except ScenarioUnavailable as exc:
        print(f"{_prefix(args)} {exc}", file=sys.stderr)
        return 2
    summary = (outcome.report_dir / "summary.txt").read_text()
    print(summary)
    print(f"report: {outcome.report_dir / 'report.html'}")
    print(f"replay: {config.replay_command()}")
    return EXIT_CODES[outcome.verdict]


def _suite(args: argparse.Namespace) -> int:
    import random
    import sys

    from tidelog.chaos.runner import ChaosRun, RunConfig, ScenarioUnavailable
    from tidelog.chaos.scenarios import SCENARIOS

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    if args.secure and args.backend == "docker":
        print(f"{_prefix(args)} --secure runs on the local backend only (see `tidelog chaos run "
              "--help`)", file=sys.stderr)
        return 2
    rows = []
    failed = False
    for name in names:
        config = RunConfig(scenario=name, backend=args.backend, nodes=args.nodes,
                           duration_s=args.duration, rate_per_s=args.rate, seed=seed,
                           report_dir=args.report / name, progress=False, fsync=args.fsync,
                           queue=_queue_config(args.workload), secure=args.secure)
        try:
            outcome = ChaosRun(config).execute()
        except ScenarioUnavailable as exc:
            rows.append(f"{name:<21} SKIPPED  {exc}")
            continue
        r = outcome.results
        assert r is not None
        worst = max((g.duration_ms for a in r.availability for g in a.gaps_without_ack),
                    default=0.0)
        firsts = [x.first_ack_after_ms for x in r.recoveries if x.first_ack_after_ms is not None]
        failed = failed or not outcome.valid  # a vacuous run fails the suite too
        harness = " ".join(f"{h.name}={h.verdict.value}" for h in outcome.harness)
        q = outcome.queue_results
        queue = "" if q is None else (f" queue-lost={q.lost} double-finished={q.double_finished}"
                                      f" redelivered={q.redelivered}")
        rows.append(f"{name:<21} {outcome.verdict.value.upper():<8} acked={r.acked} "
                    f"lost={r.lost} dup={r.duplicated} inconsistent={r.inconsistent} "
                    f"indeterminate={r.operations.indeterminate} "
                    f"longest-gap={worst / 1000:.1f}s "
                    f"first-ack-after-heal-max={max(firsts, default=0) / 1000:.1f}s {harness}"
                    + queue)
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"\nseed {seed}, {args.nodes} nodes, {args.duration:g} s each, {args.backend} backend"
          + (", secure (TLS, SCRAM, ACLs)" if args.secure else "") + ":")
    print("\n".join(rows))
    return 1 if failed else 0


def _queue_config(workload: str):  # noqa: ANN202 - QueueWorkloadConfig | None
    """The queue workload `--workload` names (None: the log workload alone)."""
    if workload == "log":
        return None
    from tidelog.chaos.queue_workload import QueueWorkloadConfig

    return QueueWorkloadConfig(key_ordered=workload == "queue-key-ordered")
