"""`tidelog consume TOPIC`: print records of one or all partitions."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "consume", help="print records of a topic",
        description="Print records of every partition of TOPIC (or one with --partition). "
        "Starts at the end (new records only) unless --offset, --from-beginning or --from-time.",
    )
    parser.add_argument("topic")
    parser.add_argument("--partition", type=int, help="read only this partition")
    parser.add_argument("--group", metavar="G",
                        help="consume as a member of group G: partitions are shared with the "
                        "group's other members and progress is committed (auto-commit); starts "
                        "at the group's committed offsets, else as --from-beginning says")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--offset", type=int, help="start at this offset (needs --partition)")
    start.add_argument("--from-beginning", action="store_true",
                       help="start at the log start of each partition")
    start.add_argument("--from-time", metavar="ISO8601",
                       help="start at the first record at or after this time "
                       "(e.g. 2025-01-31T12:00:00Z; a time without zone is UTC)")
    parser.add_argument("--max-messages", type=int, metavar="N", help="exit after N records")
    parser.add_argument("--output", choices=("text", "json"), default="text",
                        help="text: the value per line; json: one object per record")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="exit when no record arrives for S seconds (default: never)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tidelog.client import errors
    from tidelog.client.consumer import Consumer

    if args.offset is not None and args.partition is None:
        print("error: --offset needs --partition", file=sys.stderr)
        return 2
    try:
        since_ms = _parse_time(args.from_time) if args.from_time else None
    except ValueError as exc:
        print(f"error: --from-time: {exc}", file=sys.stderr)
        return 2
    if args.group is not None:
        if args.partition is not None or args.offset is not None or since_ms is not None:
            print("error: --group takes no --partition, --offset or --from-time (the group "
                  "decides; use `tidelog group reset-offsets`)", file=sys.stderr)
            return 2
        return _consume_group(args)
    try:
        with Consumer(args.bootstrap, security=args.security,
                      auto_offset_reset="latest") as consumer:
            tps = consumer.partitions_for(args.topic)
            if args.partition is not None:
                tps = [tp for tp in tps if tp.partition == args.partition]
                if not tps:
                    print(f"error: topic {args.topic!r} has no partition {args.partition}",
                          file=sys.stderr)
                    return 2
            consumer.assign(tps)
            if args.offset is not None:
                consumer.seek(tps[0], args.offset)
            elif args.from_beginning:
                consumer.seek_to_beginning()
            elif since_ms is not None:
                found = consumer.offsets_for_times({tp: since_ms for tp in tps})
                for tp, offset in found.items():
                    if offset is None:
                        consumer.seek_to_end([tp])
                    else:
                        consumer.seek(tp, offset)
            else:
                consumer.seek_to_end()
            _print_records(consumer, args)
    except errors.TidelogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


def _consume_group(args: argparse.Namespace) -> int:
    from tidelog.client import errors
    from tidelog.client.consumer import Consumer

    reset = "earliest" if args.from_beginning else "latest"
    try:
        with Consumer(args.bootstrap, security=args.security, group_id=args.group,
                      topics=[args.topic],
                      auto_offset_reset=reset, client_id="tidelog-cli") as consumer:
            _print_records(consumer, args)
    except errors.TidelogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


def _print_records(consumer: object, args: argparse.Namespace) -> int:
    """Poll and print until --max-messages, or until --timeout seconds pass with no record."""
    count = 0
    idle_since = time.monotonic()
    while args.max_messages is None or count < args.max_messages:
        want = None if args.max_messages is None else args.max_messages - count
        records = consumer.poll(timeout_s=0.5, max_records=want)  # type: ignore[attr-defined]
        if not records:
            if args.timeout is not None and time.monotonic() - idle_since >= args.timeout:
                break
            continue
        idle_since = time.monotonic()
        for record in records:
            sys.stdout.write(_format(record, args.output))
        count += len(records)
        sys.stdout.flush()
    return count


def _parse_time(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="backslashreplace")


def _format(record, output: str) -> str:  # noqa: ANN001 - ConsumerRecord
    if output == "text":
        return (_text(record.value) or "") + "\n"
    return json.dumps({
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp": record.timestamp, "key": _text(record.key), "value": _text(record.value),
        "headers": {name: _text(value) for name, value in record.headers},
    }) + "\n"
