"""``tidelog sim``: run the deterministic Raft simulator (one seed, or many with a summary)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sim",
        help="deterministic Raft simulator: random faults, safety checks, replay by seed",
        description=(
            "Run the node's real Replica, PartitionLog and group commit over a simulated disk "
            "(power cuts lose unsynced writes, torn at 512-byte sectors; failing fsync; full "
            "disk; bit flips) and a simulated network (partitions, loss, duplicates), on a "
            "deterministic event loop; check Raft's safety properties and the durability of "
            "acknowledged writes. A failure prints the one command that replays it."
        ),
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seed", type=int, help="run this one seed and print its trace on failure")
    g.add_argument("--seeds", type=int, default=None, help="run this many seeds (default 100)")
    p.add_argument("--start-seed", type=int, default=0, help="first seed for --seeds (default 0)")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--steps", type=int, default=None,
                   help="events per seed (default 1000, as the CI gate runs)")
    p.add_argument("--stop", action="store_true", help="stop at the first failing seed")
    p.add_argument("--quiesce", action="store_true",
                   help="idle groups quiesce, nodes send liveness beats; the client pauses now "
                        "and then (docs/raft.md, Quiescence)")
    p.add_argument("--verbose", action="store_true", help="--seed: print the trace even on success")
    p.add_argument("--jobs", type=int, default=1, help="--seeds: worker processes (default 1)")
    p.add_argument("--output", choices=("text", "json"), default="text",
                   help="text (default) or one JSON object on stdout")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import json
    import time

    from tidelog.node.sim.runner import (
        DEFAULT_STEPS,
        SeedResult,
        format_failure,
        quiesce_options,
        result_json,
        run_seed,
        run_seeds,
    )

    steps = args.steps or DEFAULT_STEPS
    if args.seed is not None:
        r = run_seed(args.seed, nodes=args.nodes, steps=steps,
                     options=quiesce_options() if args.quiesce else None)
        if args.output == "json":
            print(json.dumps(result_json(r, trace=args.verbose)))
            return 0 if r.violation is None else 1
        if r.violation is not None:
            print(format_failure(r))
            return 1
        if args.verbose:
            print("\n".join(r.trace))
        print(
            f"seed {r.seed} ok: {r.steps} steps, {r.sim_time_ms} sim ms, {r.elections} elections, "
            f"{r.commits} commits, faults {sum(r.faults.values())}"
        )
        return 0

    n = args.seeds if args.seeds is not None else 100
    seeds = range(args.start_seed, args.start_seed + n)
    started = time.monotonic()
    last_print = 0.0
    done = 0
    failed = 0
    tty = sys.stderr.isatty()

    def progress(r: SeedResult) -> None:
        nonlocal done, failed, last_print
        done += 1
        if r.violation is not None:
            failed += 1
            print(format_failure(r), file=sys.stderr)
        now = time.monotonic()
        if now - last_print >= (0.2 if tty else 5.0) or done == n:
            last_print = now
            rate = done / max(now - started, 1e-9)
            eta = (n - done) / rate if rate else 0.0
            line = f"[sim] {done}/{n} seeds, {failed} failed, {rate:.1f} seeds/s, eta {eta:.0f}s"
            print(
                f"\r{line}" if tty else line, end="" if tty and done < n else "\n", file=sys.stderr
            )

    s = run_seeds(
        seeds, nodes=args.nodes, steps=steps, stop_on_failure=args.stop, on_result=progress,
        jobs=max(1, args.jobs), options=quiesce_options if args.quiesce else None,
    )
    elapsed = time.monotonic() - started
    if args.output == "json":
        print(json.dumps({
            "seeds": s.seeds, "first_seed": seeds.start, "nodes": args.nodes,
            "steps": s.steps, "wall_s": round(elapsed, 3), "elections": s.elections,
            "commits": s.commits, "faults": s.faults, "violations": len(s.failures),
            "failures": [result_json(r) for r in s.failures[:20]],
        }))
        return 1 if s.failures else 0
    faults = ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items())) or "none"
    print(f"seeds:      {s.seeds} ({seeds.start}..{seeds.start + s.seeds - 1}), {args.nodes} nodes")
    print(f"steps:      {s.steps} ({s.steps / max(elapsed, 1e-9):.0f}/s, {elapsed:.1f}s wall)")
    print(f"elections:  {s.elections}")
    print(f"commits:    {s.commits} acknowledged client batches")
    print(f"faults:     {sum(s.faults.values())} injected ({faults})")
    print(f"violations: {len(s.failures)}")
    for r in s.failures[:20]:
        print(f"  seed {r.seed}: {r.violation}\n    replay: {r.replay_command()}")
    return 1 if s.failures else 0
