"""`tidelog group list|describe|reset-offsets|delete`: consumer groups from the command line."""

from __future__ import annotations

import argparse

from tidelog.client.cli_tables import add_output_option, emit, table

DEFAULT_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("group", help="list, describe, reset offsets of, delete "
                                   "consumer groups")
    commands = parser.add_subparsers(dest="group_command", metavar="ACTION")
    commands.required = True

    listing = commands.add_parser(
        "list", help="every group with its state, member count, lag and lag in seconds")
    add_output_option(listing)
    listing.set_defaults(func=_list)

    describe = commands.add_parser(
        "describe", help="members, partitions, committed offset, log end offset, lag in records "
        "and in seconds",
        description="LAG is records between the committed offset and the log end (the high "
        "watermark); LAG-SECONDS is now minus the timestamp of the first record not consumed "
        "(the one at the committed offset), 0 when caught up.")
    describe.add_argument("group")
    add_output_option(describe)
    describe.set_defaults(func=_describe)

    reset = commands.add_parser(
        "reset-offsets", help="move a group's committed offsets (dry run unless --execute)",
        description="Compute new committed offsets for every partition of TOPIC and print them; "
        "with --execute, commit them. Refused while the group has members, and for a group "
        "the cluster does not know (a mistyped name would create it) unless "
        "--allow-new-group.")
    reset.add_argument("group")
    reset.add_argument("--topic", required=True)
    where = reset.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-earliest", action="store_true")
    where.add_argument("--to-latest", action="store_true")
    where.add_argument("--to-offset", type=int, metavar="N")
    where.add_argument("--to-time", metavar="ISO8601|MS",
                       help="the first record at or after this time (ISO 8601, UTC when no "
                       "zone, or ms since the epoch); the end when there is none")
    reset.add_argument("--execute", action="store_true", help="commit (default: dry run)")
    reset.add_argument("--allow-new-group", action="store_true",
                       help="set offsets for a group that does not exist yet (creates it)")
    add_output_option(reset)
    reset.set_defaults(func=_reset)

    delete = commands.add_parser("delete", help="delete an empty group and its offsets")
    delete.add_argument("group")
    delete.set_defaults(func=_delete)
    for sub in (listing, describe, reset, delete):
        sub.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                         help="give up after S seconds of retrying (default %(default)g)")
        sub.add_argument("--timeout-s", type=float, dest="timeout", help=argparse.SUPPRESS)


def _run(func):  # type: ignore[no-untyped-def]
    def wrapper(args: argparse.Namespace) -> int:
        from tidelog.client import errors
        from tidelog.client.admin import Admin
        from tidelog.client.cli_tables import fail

        try:
            with Admin(args.bootstrap, security=args.security,
                       request_timeout_ms=int(max(0.1, args.timeout) * 1000)) as admin:
                return func(admin, args)
        except errors.TidelogError as exc:
            return fail(args, exc)

    return wrapper


@_run
def _list(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from tidelog.client import errors

    groups = admin.list_groups()
    rows = []
    for g in groups:
        try:
            lags = admin.list_group_lag(g.group_id)
        except errors.TidelogError:  # deleted or moving right now: no figures, not a failure
            lags = None
        rows.append({"group": g.group_id, "state": g.state, "members": g.members,
                     "coordinator": g.coordinator_id,
                     "lag": sum(p.lag for p in lags.values()) if lags is not None else None,
                     "lag_seconds": _max_seconds(lags.values()) if lags is not None else None})
    emit(args, rows, table(["GROUP", "STATE", "MEMBERS", "COORDINATOR", "LAG", "LAG-SECONDS"],
                           [[r["group"], r["state"], r["members"], r["coordinator"], r["lag"],
                             _seconds(r["lag_seconds"])] for r in rows]))
    return 0


@_run
def _describe(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    group = admin.describe_group(args.group)
    lags = admin.list_group_lag(args.group)
    owner = {tp: m.member_id for m in group.members for tp in m.assignment}
    client = {m.member_id: m.client_id for m in group.members}
    tps = sorted(set(lags) | set(owner))
    uncommitted = [tp for tp in tps if tp not in lags]
    ends = {tp: p.end_offset for tp, p in lags.items()}
    if uncommitted:
        ends.update(admin.list_offsets({tp: "latest" for tp in uncommitted}))
    partitions = []
    for tp in tps:
        lag = lags.get(tp)
        member = owner.get(tp)
        partitions.append({
            "topic": tp.topic, "partition": tp.partition,
            "committed": lag.committed if lag else None, "log_end": ends.get(tp),
            "lag": lag.lag if lag else None, "lag_seconds": lag.lag_seconds if lag else None,
            "first_unconsumed_timestamp_ms": lag.first_unconsumed_timestamp_ms if lag else None,
            "member": member, "client_id": client.get(member, "") if member else None})
    total = {"committed": sum(p.committed for p in lags.values()),
             "log_end": sum(e for e in ends.values() if e is not None),
             "lag": sum(p.lag for p in lags.values()),
             "lag_seconds": _max_seconds(lags.values())}
    if args.output == "json":
        emit(args, {"group": group.group_id, "state": group.state,
                    "group_epoch": group.group_epoch, "assignor": group.assignor,
                    "coordinator": group.coordinator_id, "members": len(group.members),
                    "partitions": partitions, "total": total}, "")
        return 0
    print(f"group {group.group_id}: {group.state}, epoch {group.group_epoch}, assignor "
          f"{group.assignor}, coordinator node {group.coordinator_id}, "
          f"{len(group.members)} members")
    rows = [[p["topic"], p["partition"], _cell(p["committed"]), _cell(p["log_end"]),
             _cell(p["lag"]), _seconds(p["lag_seconds"]) if p["committed"] is not None else "-",
             _cell(p["member"]), p["client_id"] or "-"] for p in partitions]
    rows.append(["TOTAL", "", total["committed"], total["log_end"], total["lag"],
                 _seconds(total["lag_seconds"]), "", ""])
    print(table(["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "LAG-SECONDS", "MEMBER",
                 "CLIENT-ID"], rows))
    return 0


def _max_seconds(lags) -> float | None:  # type: ignore[no-untyped-def]
    """The oldest unconsumed record's age over partitions (TOTAL and `group list`): an alert
    on a group cares about its worst partition. None when no partition's age is known."""
    known = [p.lag_seconds for p in lags if p.lag_seconds is not None]
    return max(known) if known else None


def _cell(value: object) -> object:
    return "-" if value is None else value


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@_run
def _reset(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from tidelog.client import errors
    from tidelog.client.cli_consume import _parse_time
    from tidelog.client.records import TopicPartition

    if not args.allow_new_group:
        try:
            admin.describe_group(args.group)
        except errors.GroupIdNotFound:
            raise errors.GroupIdNotFound(
                f"group {args.group!r} does not exist (check the name with `tidelog group "
                "list`); add --allow-new-group to create it with these offsets") from None
    topic = admin.describe_topics([args.topic])[0]
    tps = [TopicPartition(args.topic, p.partition) for p in topic.partitions]
    ends = admin.list_offsets({tp: "latest" for tp in tps})
    if args.to_earliest:
        found = admin.list_offsets({tp: "earliest" for tp in tps})
    elif args.to_latest:
        found = dict(ends)
    elif args.to_offset is not None:
        starts = admin.list_offsets({tp: "earliest" for tp in tps})
        found = {tp: min(max(args.to_offset, starts[tp] or 0), ends[tp] or 0) for tp in tps}
    else:
        text = args.to_time
        ms = int(text) if text.isdigit() else _parse_time(text)
        found = admin.list_offsets({tp: ms for tp in tps})
        found = {tp: ends[tp] if off is None else off for tp, off in found.items()}
    current = admin.list_group_offsets(args.group, tps)
    rows = [{"topic": tp.topic, "partition": tp.partition,
             "current": current[tp].offset if tp in current else None,
             "new": int(found[tp] or 0)} for tp in tps]
    if args.execute:
        admin.alter_group_offsets(args.group, {tp: int(found[tp] or 0) for tp in tps})
    if args.output == "json":
        emit(args, {"group": args.group, "executed": bool(args.execute), "partitions": rows},
             "")
        return 0
    print(table(["TOPIC", "PARTITION", "CURRENT", "NEW"],
                [[r["topic"], r["partition"], r["current"], r["new"]] for r in rows]))
    if not args.execute:
        print("dry run: nothing changed (add --execute to commit these offsets)")
    else:
        print(f"committed new offsets of {len(tps)} partitions for group {args.group}")
    return 0


@_run
def _delete(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    admin.delete_group(args.group)
    print(f"deleted group {args.group}")
    return 0
