"""`tidelog partition reassign --plan | --execute | --verify | --cancel` (docs/operations.md
"Reassignment"), in the manner of kafka-reassign-partitions and `rpk cluster partitions move`.

    tidelog partition reassign --plan plan.json --topics orders --brokers 1,2,4
    tidelog partition reassign --plan plan.json --rebalance
    tidelog partition reassign --execute plan.json --throttle 10485760
    tidelog partition reassign --verify plan.json     # rc 0 once every move is done, else 1
    tidelog partition reassign --cancel plan.json

A plan is a JSON file a person can review and edit before executing it:
{"version": 1, "partitions": [{"topic": "orders", "partition": 0, "replicas": [1, 2, 4],
"current": [1, 2, 3]}]}; `replicas` is the target (first = preferred leader), `current` is only
for the reader. Execute is resumable: running it again resumes nothing twice (a partition
already moved is a no-op, one under way keeps going).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidelog.client.cli_tables import add_output_option, emit, table

PLAN_VERSION = 1
DEFAULT_TIMEOUT_S = 30.0

TopicPartition = tuple[str, int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("partition", help="move partitions' replicas (reassign)")
    commands = parser.add_subparsers(dest="partition_command", metavar="ACTION")
    commands.required = True
    reassign = commands.add_parser(
        "reassign", help="plan, execute, verify or cancel replica moves",
        description="Move partitions' replicas between nodes: a new replica joins as a learner, "
                    "catches up (under --throttle), is promoted, then the old one is removed. "
                    "--plan writes a reviewable JSON plan; --execute starts it (resumable); "
                    "--verify says what is left (rc 0 when done, 1 otherwise); --cancel moves "
                    "the plan's unfinished partitions back.")
    mode = reassign.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", metavar="FILE", help="write a plan to FILE ('-': stdout)")
    mode.add_argument("--execute", metavar="FILE", help="start the moves of the plan in FILE")
    mode.add_argument("--verify", metavar="FILE", help="what of the plan in FILE is left")
    mode.add_argument("--cancel", metavar="FILE", help="cancel the plan's moves under way")
    reassign.add_argument("--topics", metavar="T1,T2",
                          help="--plan: the topics whose partitions move")
    reassign.add_argument("--brokers", metavar="1,2,4",
                          help="--plan: the nodes to place them on (default: every live node)")
    reassign.add_argument("--replication-factor", type=int, metavar="N",
                          help="--plan: N replicas each (default: as many as now)")
    reassign.add_argument("--rebalance", action="store_true",
                          help="--plan: even replicas and preferred leaders across the nodes")
    reassign.add_argument("--throttle", type=int, default=0, metavar="BYTES/S",
                          help="--execute: catch-up bytes/s a leader sends each new replica "
                               "(default 0: unthrottled)")
    reassign.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                          help="give up after S seconds of retrying (default %(default)g)")
    add_output_option(reassign)
    reassign.set_defaults(func=_reassign)


class _Usage(Exception):
    """A usage error found after parsing: rc 2, like argparse's."""


def _reassign(args: argparse.Namespace) -> int:
    from tidelog.client import errors
    from tidelog.client.admin import Admin
    from tidelog.client.cli_tables import fail
    from tidelog.node.reassignment_plan import PlanError

    action: Callable[[Any, argparse.Namespace], int]
    if args.plan:
        action = _plan
    elif args.execute:
        action = _execute
    elif args.verify:
        action = _verify
    else:
        action = _cancel
    try:
        with Admin(args.bootstrap, security=args.security,
                   request_timeout_ms=int(max(0.1, args.timeout) * 1000)) as admin:
            return action(admin, args)
    except (_Usage, PlanError) as exc:
        return fail(args, str(exc), 2)
    except errors.TidelogError as exc:
        return fail(args, exc)


# -- plan -----------------------------------------------------------------------------------


def _ids(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _Usage(f"{what} {text!r}: expected node ids like 1,2,4") from None
    if not ids:
        raise _Usage(f"{what} is empty")
    return ids


def _plan(admin: Any, args: argparse.Namespace) -> int:
    from tidelog.node.reassignment_plan import move_plan, rebalance_plan

    described = admin.describe_cluster().nodes
    nodes = sorted(n.id for n in described)
    live = sorted(n.id for n in described if n.alive) or nodes  # the default placement
    brokers = _ids(args.brokers, "--brokers")
    if brokers is not None:
        unknown = sorted(set(brokers) - set(nodes))
        if unknown:
            raise _Usage(f"--brokers names {', '.join(map(str, unknown))}, not a node of this "
                         f"cluster (nodes: {', '.join(map(str, nodes))})")
    topics = [t for t in (args.topics or "").split(",") if t]
    if args.rebalance:
        current = admin.current_assignment(topics or None)
        plan = rebalance_plan(current, brokers or live)
    else:
        if not topics:
            raise _Usage("--plan needs --topics T1,T2 (or --rebalance)")
        current = admin.current_assignment(topics)  # TopicNotFound for an unknown one
        plan = move_plan(current, [tp for tp in current if tp[0] in topics], brokers or live,
                         args.replication_factor)
    document = plan_document(plan, current)
    text = json.dumps(document, indent=2) + "\n"
    if args.plan == "-":
        print(text, end="")
    else:
        Path(args.plan).write_text(text)
        emit(args, document, _plan_table(document) + f"\n\nplan written to {args.plan} "
             f"({len(plan)} partitions move); review it, then "
             f"`tidelog partition reassign --execute {args.plan}`")
    return 0


def plan_document(plan: dict[TopicPartition, tuple[int, ...]],
                  current: dict[TopicPartition, tuple[int, ...]]) -> dict[str, Any]:
    return {"version": PLAN_VERSION, "partitions": [
        {"topic": t, "partition": p, "replicas": list(r), "current": list(current[(t, p)])}
        for (t, p), r in sorted(plan.items())]}


def _plan_table(document: dict[str, Any]) -> str:
    return table(("TOPIC", "PARTITION", "CURRENT", "TARGET"),
                 [(e["topic"], e["partition"], _ids_text(e["current"]),
                   _ids_text(e["replicas"])) for e in document["partitions"]])


def _ids_text(ids: Any) -> str:
    return ",".join(map(str, ids))


# -- reading a plan -------------------------------------------------------------------------


def read_plan(path: str) -> dict[TopicPartition, tuple[int, ...]]:
    """The plan in a file, checked for shape (what the cluster knows is checked after)."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise _Usage(f"cannot read plan {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise _Usage(f"plan {path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != PLAN_VERSION or \
            not isinstance(document.get("partitions"), list):
        raise _Usage(f"plan {path}: expected {{\"version\": {PLAN_VERSION}, \"partitions\": "
                     "[...]}")
    plan: dict[TopicPartition, tuple[int, ...]] = {}
    for entry in document["partitions"]:
        ok = isinstance(entry, dict) and isinstance(entry.get("topic"), str) and \
            type(entry.get("partition")) is int and isinstance(entry.get("replicas"), list) \
            and entry["replicas"] and all(type(n) is int for n in entry["replicas"])
        if not ok:
            raise _Usage(f"plan {path}: {json.dumps(entry)[:100]} is not "
                         "{\"topic\": T, \"partition\": P, \"replicas\": [ids]}")
        key = (entry["topic"], entry["partition"])
        if key in plan:
            raise _Usage(f"plan {path} names {key[0]}-{key[1]} twice")
        if len(set(entry["replicas"])) != len(entry["replicas"]):
            raise _Usage(f"plan {path}: {key[0]}-{key[1]} names a node twice")
        plan[key] = tuple(entry["replicas"])
    return plan


def check_plan(admin: Any, plan: dict[TopicPartition, tuple[int, ...]]
               ) -> dict[TopicPartition, tuple[int, ...]]:
    """Refuse a plan that names an unknown topic, partition or node, before anything starts.
    Returns the current replica lists of the plan's partitions."""
    from tidelog.client import errors

    nodes = sorted(n.id for n in admin.describe_cluster().nodes)
    topics = sorted({t for t, _ in plan})
    try:
        current = admin.current_assignment(topics)
    except errors.TopicNotFound as exc:
        raise _Usage(f"the plan names a topic that does not exist: {exc}") from None
    problems = []
    for (topic, partition), replicas in sorted(plan.items()):
        if (topic, partition) not in current:
            problems.append(f"{topic}-{partition}: no such partition")
        unknown = sorted(set(replicas) - set(nodes))
        if unknown:
            problems.append(f"{topic}-{partition}: node {', '.join(map(str, unknown))} is not "
                            f"a node of this cluster (nodes: {', '.join(map(str, nodes))})")
    if problems:
        raise _Usage("plan refused, nothing started: " + "; ".join(problems))
    return {tp: current[tp] for tp in plan}


# -- execute, verify, cancel ----------------------------------------------------------------


def _execute(admin: Any, args: argparse.Namespace) -> int:
    if args.throttle < 0:
        raise _Usage("--throttle must be >= 0 bytes/s (0: unthrottled)")
    plan = read_plan(args.execute)
    current = check_plan(admin, plan)
    results = admin.alter_partition_reassignments(plan, throttle_bytes_per_s=args.throttle)
    rows = [{"topic": r.topic, "partition": r.partition,
             "current": list(current[(r.topic, r.partition)]),
             "target": list(plan[(r.topic, r.partition)]),
             "result": ("error" if r.error else "unchanged" if r.noop else "started"),
             "error": str(r.error) if r.error else None} for r in results]
    emit(args, rows, table(("TOPIC", "PARTITION", "CURRENT", "TARGET", "RESULT"),
                           [(r["topic"], r["partition"], _ids_text(r["current"]),
                             _ids_text(r["target"]), r["error"] or r["result"])
                            for r in rows]))
    return 1 if any(r["error"] for r in rows) else 0


def verify_rows(admin: Any, plan: dict[TopicPartition, tuple[int, ...]]
                ) -> list[dict[str, Any]]:
    """Per plan partition: done, in progress (with the leader's next step and each learner's
    lag), or not started / cancelled (the replicas differ from the plan and nothing moves)."""
    current = check_plan(admin, plan)
    moving = {(s.topic, s.partition): s for s in admin.list_partition_reassignments(
        sorted({t for t, _ in plan}))}
    rows = []
    for tp, target in sorted(plan.items()):
        status = moving.get(tp)
        row: dict[str, Any] = {"topic": tp[0], "partition": tp[1], "replicas": list(current[tp]),
                               "target": list(target), "next_step": None, "learners": None}
        if status is not None and status.target == target:
            row["state"] = "in_progress"
            row["next_step"] = status.next_step or None
            if status.from_leader:
                row["learners"] = {str(m.node_id): max(0, status.commit - m.match)
                                   for m in status.members if m.learner}
        elif status is not None:
            row["state"] = "cancelling" if status.cancelled else "moving_elsewhere"
        elif tuple(current[tp]) == target:
            row["state"] = "done"
        else:
            row["state"] = "not_started"
        rows.append(row)
    return rows


def _verify(admin: Any, args: argparse.Namespace) -> int:
    rows = verify_rows(admin, read_plan(args.verify))
    left = [r for r in rows if r["state"] != "done"]
    text = table(("TOPIC", "PARTITION", "REPLICAS", "TARGET", "STATE", "NEXT-STEP"),
                 [(r["topic"], r["partition"], _ids_text(r["replicas"]),
                   _ids_text(r["target"]), r["state"].replace("_", " "), r["next_step"])
                  for r in rows])
    text += (f"\n\n{len(left)} of {len(rows)} partitions left" if left
             else f"\n\nall {len(rows)} partitions done")
    emit(args, rows, text)
    return 1 if left else 0


def _cancel(admin: Any, args: argparse.Namespace) -> int:
    plan = read_plan(args.cancel)
    check_plan(admin, plan)
    moving = {(s.topic, s.partition) for s in admin.list_partition_reassignments(
        sorted({t for t, _ in plan}))}
    targets = {tp: None for tp in plan if tp in moving}
    results = admin.alter_partition_reassignments(targets) if targets else []
    rows = [{"topic": r.topic, "partition": r.partition,
             "result": "error" if r.error else "cancelled",
             "error": str(r.error) if r.error else None} for r in results]
    emit(args, rows, table(("TOPIC", "PARTITION", "RESULT"),
                           [(r["topic"], r["partition"], r["error"] or r["result"])
                            for r in rows]) if rows else "no move of the plan is under way")
    return 1 if any(r["error"] for r in rows) else 0
