"""`tidelog topic create|list|describe|delete|alter`.

Output: tidelog.client.cli_tables (a table, or with --output json an array of objects for
`list`, one object for `describe`). `describe` shows each partition's in-sync replicas and
offsets as its leader reports them (Admin.describe_topics_from_leaders), the same source as
`cluster status`. `alter --partitions N` grows a topic (never shrinks it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from tidelog.client.cli_tables import add_output_option, emit, table

__all__ = ["register", "table"]  # `table`: older imports of it from here still work

DEFAULT_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("topic", help="create, list, describe, alter, delete topics")
    commands = parser.add_subparsers(dest="topic_command", metavar="ACTION")
    commands.required = True

    create = commands.add_parser("create", help="create a topic")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, required=True)
    create.add_argument("--replication-factor", type=int, required=True)
    create.add_argument("--config", action="append", default=[], metavar="K=V",
                        help="topic config (repeatable), e.g. retention.ms=86400000")
    create.set_defaults(func=_create)

    listing = commands.add_parser("list", help="list topics")
    listing.add_argument("--internal", action="store_true", help="include internal topics")
    add_output_option(listing)
    listing.set_defaults(func=_list)

    describe = commands.add_parser(
        "describe", help="partitions, leaders, replicas, in-sync replicas, offsets, configs",
        description="IN-SYNC and the offsets are what each partition's leader reports (the "
                    "same source as `tidelog cluster status`); '-' when the leader did not "
                    "answer or there is none.")
    describe.add_argument("name")
    add_output_option(describe)
    describe.set_defaults(func=_describe)

    delete = commands.add_parser("delete", help="delete a topic and its data")
    delete.add_argument("name")
    delete.set_defaults(func=_delete)

    alter = commands.add_parser(
        "alter", help="change topic configs, add partitions",
        description="Set or reset configs, and/or grow the topic to --partitions N. Partitions "
                    "are only ever added (a partition's records cannot move); keyed records "
                    "may go to another partition than before once producers see the new "
                    "count (at their next metadata refresh).")
    alter.add_argument("name")
    alter.add_argument("--config", action="append", default=[], metavar="K=V")
    alter.add_argument("--delete-config", action="append", default=[], metavar="K",
                       help="return K to its default (repeatable)")
    alter.add_argument("--partitions", type=int, metavar="N",
                       help="grow the topic to N partitions in all (more than it has)")
    alter.add_argument("--replication-factor", type=int, metavar="N",
                       help="N replicas per partition: a reassignment of every partition "
                            "(docs/operations.md; follow it with `topic describe`)")
    alter.add_argument("--throttle", type=int, default=0, metavar="BYTES/S",
                       help="with --replication-factor: catch-up bytes/s per new replica")
    alter.set_defaults(func=_alter)

    for sub in (create, listing, describe, delete, alter):
        _timeout_option(sub)


def _timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="give up after S seconds of retrying (default %(default)g)")
    parser.add_argument("--timeout-s", type=float, dest="timeout", help=argparse.SUPPRESS)


def _configs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _Usage(f"--config {item!r} is not K=V")
        out[name] = value
    return out


class _Usage(Exception):
    """A usage error found after parsing: rc 2, like argparse's."""


def _run(args: argparse.Namespace, action: Callable[[Any], None]) -> int:
    from tidelog.client import errors
    from tidelog.client.admin import Admin
    from tidelog.client.cli_tables import fail

    try:
        with Admin(args.bootstrap, security=args.security,
                   request_timeout_ms=int(max(0.1, args.timeout) * 1000)) as admin:
            action(admin)
    except _Usage as exc:
        return fail(args, str(exc), 2)
    except errors.TidelogError as exc:
        return fail(args, exc)
    return 0


def _create(args: argparse.Namespace) -> int:
    def action(admin: Any) -> None:
        configs = _configs(args.config)
        admin.create_topic(args.name, partitions=args.partitions,
                           replication_factor=args.replication_factor, configs=configs)
        print(f"created topic {args.name!r}: {args.partitions} partitions, "
              f"replication factor {args.replication_factor}")

    return _run(args, action)


def _list(args: argparse.Namespace) -> int:
    def action(admin: Any) -> None:
        names = admin.list_topics(include_internal=args.internal)
        topics = admin.describe_topics(names) if names else []
        rows = [{"topic": t.name, "partitions": len(t.partitions),
                 "replication_factor": max((len(p.replicas) for p in t.partitions), default=0),
                 "leaderless": sum(1 for p in t.partitions if p.leader_id < 0),
                 "internal": t.internal} for t in topics]
        emit(args, rows, table(
            ("TOPIC", "PARTITIONS", "REPLICAS", "LEADERLESS"),
            [(r["topic"], r["partitions"], r["replication_factor"], r["leaderless"])
             for r in rows]))

    return _run(args, action)


def _offset(value: int) -> int | None:
    return value if value >= 0 else None


def describe_document(topic: Any, configs: dict[str, str]) -> dict[str, Any]:
    """`topic describe --output json`: one object."""
    return {
        "topic": topic.name, "internal": topic.internal,
        "partitions": [{
            "partition": p.partition, "leader": p.leader_id if p.leader_id >= 0 else None,
            "term": p.leader_term, "replicas": list(p.replicas),
            "in_sync": list(p.in_sync) if p.high_watermark >= 0 else None,
            "log_start": _offset(p.log_start_offset), "log_end": _offset(p.log_end_offset),
            "high_watermark": _offset(p.high_watermark)} for p in topic.partitions],
        "configs": dict(sorted(configs.items())),
    }


def _describe(args: argparse.Namespace) -> int:
    def action(admin: Any) -> None:
        (topic,) = admin.describe_topics_from_leaders([args.name])
        document = describe_document(topic, admin.describe_configs(args.name))
        parts = document["partitions"]
        text = [f"topic {topic.name}: {len(parts)} partitions",
                table(("PARTITION", "LEADER", "TERM", "REPLICAS", "IN-SYNC", "LOG-START",
                       "LOG-END", "HIGH-WATERMARK"),
                      [(p["partition"], p["leader"], p["term"],
                        ",".join(map(str, p["replicas"])),
                        ",".join(map(str, p["in_sync"])) if p["in_sync"] else None,
                        p["log_start"], p["log_end"], p["high_watermark"]) for p in parts])]
        if document["configs"]:
            text += ["", table(("CONFIG", "VALUE"), list(document["configs"].items()))]
        emit(args, document, "\n".join(text))

    return _run(args, action)


def _delete(args: argparse.Namespace) -> int:
    def action(admin: Any) -> None:
        admin.delete_topic(args.name)
        print(f"deleted topic {args.name!r}")

    return _run(args, action)


def _alter(args: argparse.Namespace) -> int:
    from tidelog.client import errors

    def action(admin: Any) -> None:
        configs = _configs(args.config)
        if not configs and not args.delete_config and args.partitions is None \
                and args.replication_factor is None:
            raise _Usage("nothing to change: give --config K=V, --delete-config K, "
                         "--partitions N or --replication-factor N")
        done = []
        if args.partitions is not None:
            try:
                current: int | None = len(admin.describe_topics([args.name])[0].partitions)
            except errors.TopicNotFound:
                current = None  # the node's refusal below says it better (internal, missing)
            # The metadata leader refuses shrinking ("has N partitions; it can only grow").
            admin.create_partitions(args.name, args.partitions)
            done.append(f"{current} -> {args.partitions} partitions")
        if configs or args.delete_config:
            admin.alter_topic_configs(args.name, configs, args.delete_config)
            done.append("configs changed")
        if args.replication_factor is not None:
            plan = admin.alter_replication_factor(args.name, args.replication_factor,
                                                  throttle_bytes_per_s=args.throttle)
            done.append(f"replication factor -> {args.replication_factor} "
                        f"({len(plan)} partitions reassigning)" if plan
                        else f"replication factor already {args.replication_factor}")
        print(f"altered topic {args.name!r}: {', '.join(done)}")

    return _run(args, action)
