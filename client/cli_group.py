"""`tidelog group list|describe|reset-offsets|delete`: consumer groups from the command line."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("group", help="list, describe, reset offsets of, delete "
                                   "consumer groups")
    commands = parser.add_subparsers(dest="group_command", metavar="ACTION")
    commands.required = True

    listing = commands.add_parser("list", help="every group with its state and member count")
    listing.set_defaults(func=_list)

    describe = commands.add_parser(
        "describe", help="members, partitions, committed offset, log end offset and lag")
    describe.add_argument("group")
    describe.set_defaults(func=_describe)

    reset = commands.add_parser(
        "reset-offsets", help="move a group's committed offsets (dry run unless --execute)",
        description="Compute new committed offsets for every partition of TOPIC and print them; "
        "with --execute, commit them. Refused while the group has members.")
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
    reset.set_defaults(func=_reset)

    delete = commands.add_parser("delete", help="delete an empty group and its offsets")
    delete.add_argument("group")
    delete.set_defaults(func=_delete)


def _run(func):  # type: ignore[no-untyped-def]
    def wrapper(args: argparse.Namespace) -> int:
        from tidelog.client import errors
        from tidelog.client.admin import Admin

        try:
            with Admin(args.bootstrap, security=args.security) as admin:
                return func(admin, args)
        except errors.TidelogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapper


@_run
def _list(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from tidelog.client.cli_topic import table

    groups = admin.list_groups()
    print(table(["GROUP", "STATE", "MEMBERS", "COORDINATOR"],
                [[g.group_id, g.state, g.members, g.coordinator_id] for g in groups]))
    return 0


@_run
def _describe(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from tidelog.client.cli_topic import table

    group = admin.describe_group(args.group)
    committed = admin.list_group_offsets(args.group)
    owner = {tp: m.member_id for m in group.members for tp in m.assignment}
    client = {m.member_id: m.client_id for m in group.members}
    tps = sorted(set(committed) | set(owner))
    ends = admin.list_offsets({tp: "latest" for tp in tps}) if tps else {}
    print(f"group {group.group_id}: {group.state}, epoch {group.group_epoch}, assignor "
          f"{group.assignor}, coordinator node {group.coordinator_id}, "
          f"{len(group.members)} members")
    rows = []
    total_lag = 0
    for tp in tps:
        done = committed.get(tp)
        end = ends.get(tp)
        lag = (end - done.offset) if done is not None and end is not None else None
        total_lag += lag or 0
        member = owner.get(tp, "-")
        rows.append([tp.topic, tp.partition, done.offset if done else "-",
                     end if end is not None else "-", lag if lag is not None else "-",
                     member, client.get(member, "") or "-"])
    rows.append(["TOTAL", "", sum(c.offset for c in committed.values()),
                 sum(e for e in ends.values() if e is not None), total_lag, "", ""])
    print(table(["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER", "CLIENT-ID"],
                rows))
    return 0


@_run
def _reset(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from tidelog.client.cli_consume import _parse_time
    from tidelog.client.cli_topic import table
    from tidelog.client.records import TopicPartition

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
    print(table(["TOPIC", "PARTITION", "CURRENT", "NEW"],
                [[tp.topic, tp.partition, current[tp].offset if tp in current else "-",
                  found[tp]] for tp in tps]))
    if not args.execute:
        print("dry run: nothing changed (add --execute to commit these offsets)")
        return 0
    admin.alter_group_offsets(args.group, {tp: int(found[tp] or 0) for tp in tps})
    print(f"committed new offsets of {len(tps)} partitions for group {args.group}")
    return 0


@_run
def _delete(admin, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    admin.delete_group(args.group)
    print(f"deleted group {args.group}")
    return 0
