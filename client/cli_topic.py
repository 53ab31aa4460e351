"""`tidelog topic create|list|describe|delete|alter`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    listing.set_defaults(func=_list)

    describe = commands.add_parser("describe", help="partitions, leaders, replicas, configs")
    describe.add_argument("name")
    describe.set_defaults(func=_describe)

    delete = commands.add_parser("delete", help="delete a topic and its data")
    delete.add_argument("name")
    delete.set_defaults(func=_delete)

    alter = commands.add_parser("alter", help="change topic configs")
    alter.add_argument("name")
    alter.add_argument("--config", action="append", default=[], metavar="K=V")
    alter.add_argument("--delete-config", action="append", default=[], metavar="K",
                       help="return K to its default (repeatable)")
    alter.set_defaults(func=_alter)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _configs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --config {item!r} is not K=V")
        out[name] = value
    return out


def _run(args: argparse.Namespace, action) -> int:  # noqa: ANN001
    from tidelog.client import errors
    from tidelog.client.admin import Admin

    try:
        with Admin(args.bootstrap, security=args.security) as admin:
            action(admin)
    except errors.TidelogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _create(args: argparse.Namespace) -> int:
    configs = _configs(args.config)

    def action(admin) -> None:  # noqa: ANN001
        admin.create_topic(args.name, partitions=args.partitions,
                           replication_factor=args.replication_factor, configs=configs)
        print(f"created topic {args.name!r}: {args.partitions} partitions, "
              f"replication factor {args.replication_factor}")

    return _run(args, action)


def _list(args: argparse.Namespace) -> int:
    def action(admin) -> None:  # noqa: ANN001
        topics = admin.describe_topics(None) if not args.internal else None
        if topics is None:
            names = admin.list_topics(include_internal=True)
            topics = admin.describe_topics(names)
        rows = [(t.name, len(t.partitions),
                 max((len(p.replicas) for p in t.partitions), default=0),
                 sum(1 for p in t.partitions if p.leader_id < 0)) for t in topics]
        print(table(("TOPIC", "PARTITIONS", "REPLICAS", "LEADERLESS"), rows))

    return _run(args, action)


def _describe(args: argparse.Namespace) -> int:
    def action(admin) -> None:  # noqa: ANN001
        (topic,) = admin.describe_topics([args.name])
        print(f"Topic {topic.name}: {len(topic.partitions)} partitions")
        rows = [(p.partition, p.leader_id if p.leader_id >= 0 else "none", p.leader_term,
                 ",".join(map(str, p.replicas)), ",".join(map(str, p.in_sync)) or "-")
                for p in topic.partitions]
        print(table(("PARTITION", "LEADER", "TERM", "REPLICAS", "IN-SYNC"), rows))
        configs = admin.describe_configs(args.name)
        if configs:
            print()
            print(table(("CONFIG", "VALUE"), sorted(configs.items())))

    return _run(args, action)


def _delete(args: argparse.Namespace) -> int:
    def action(admin) -> None:  # noqa: ANN001
        admin.delete_topic(args.name)
        print(f"deleted topic {args.name!r}")

    return _run(args, action)


def _alter(args: argparse.Namespace) -> int:
    configs = _configs(args.config)

    def action(admin) -> None:  # noqa: ANN001
        admin.alter_topic_configs(args.name, configs, args.delete_config)
        print(f"altered topic {args.name!r}")

    return _run(args, action)
