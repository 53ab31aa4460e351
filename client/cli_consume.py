"""`tidelog consume TOPIC`: print records of one or all partitions.

Where to start (and stop) is an rpk-like `--offset` spec (client/offset_spec.py), resolved per
partition once at the start; `-e` stops each partition at the high watermark it had then, so a
script's consume ends by itself. SIGTERM closes the consumer like Ctrl-C does, so a group member
stopped by systemd, `docker stop` or Kubernetes leaves its group at once instead of holding its
partitions for the session timeout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from tidelog.client import cli_common
from tidelog.client import offset_spec as spec_mod
from tidelog.client.offset_spec import OffsetSpec, OffsetSpecError, OutOfRange, PartitionRange
from tidelog.client.record_format import HELP as FORMAT_HELP
from tidelog.client.record_format import FormatError, compile_format, text

_NEGATIVE_OR_DURATION = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(ms|s|m|h|d)(:.*)?$|^-\d+:.*$")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "consume", help="print records of a topic",
        description="Print records of every partition of TOPIC (or one with --partition). "
        "Starts at the end (new records only) unless --offset, --from-beginning or --from-time; "
        "runs until Ctrl-C/SIGTERM, --max-messages, --timeout, the B of --offset A:B, or with "
        "-e the end of what the partitions held when it started.",
        epilog="examples: -o start -e (everything, then exit); -o -10 (the last 10 offsets, "
        "then follow); -o -1h:end (the last hour); -o @2026-12-01T10:00:00Z:@2026-12-01T11:00:00Z; "
        "--partition 0 -o 42 -f '%p@%o %k=%v\\n'",
    )
    # `-o -1h` must read -1h as the value, as `-o -10` is: argparse takes a word starting with
    # "-" for an option unless it looks like a negative number, so durations count as numbers.
    parser._negative_number_matcher = _NEGATIVE_OR_DURATION
    parser.add_argument("topic")
    parser.add_argument("--partition", type=int, help="read only this partition")
    parser.add_argument("--group", metavar="G",
                        help="consume as a member of group G: partitions are shared with the "
                        "group's other members and progress is committed (auto-commit); starts "
                        "at the group's committed offsets, else as --from-beginning says")
    # Specs and formats are parsed by argparse (type=): a bad one is a usage error, rc 2, before
    # anything is asked of a node (cli.py probes the cluster before calling run()).
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--offset", "-o", metavar="SPEC", type=_offset_spec, help=spec_mod.HELP)
    start.add_argument("--from-beginning", action="store_true",
                       help="start at the log start of each partition (= --offset start)")
    start.add_argument("--from-time", metavar="ISO8601", type=_time_spec,
                       help="start at the first record at or after this time "
                       "(e.g. 2025-01-31T12:00:00Z; a time without zone is UTC; = --offset @TIME)")
    parser.add_argument("--exit-at-end", "-e", action="store_true",
                        help="exit once every partition read reached the high watermark it had "
                        "when consuming started (kcat -e; rpk -o :end)")
    parser.add_argument("--reset", choices=("earliest", "latest", "error"),
                        help="an offset outside a partition's [log start, high watermark]: start "
                        "at its log start, at its end, or stop with an error naming the range "
                        "(default: error for an absolute --offset N, else latest)")
    parser.add_argument("--max-messages", type=int, metavar="N", help="exit after N records")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--output", choices=("text", "json"), default="text",
                       help="text: the value per line; json: one object per record")
    shape.add_argument("--format", "-f", metavar="FMT", type=_format, help=FORMAT_HELP)
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="exit when no record arrives for S seconds (default: never)")
    parser.add_argument("--timeout-s", type=float, dest="timeout", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tidelog.client import errors

    spec = _start_spec(args)
    render = args.format or (_json if args.output == "json" else _value_line)
    if args.group is not None and (args.partition is not None or args.offset is not None
                                   or args.from_time is not None):
        cli_common.error(args, "--group takes no --partition, --offset or --from-time (the "
                         "group decides; use `tidelog group reset-offsets`)")
        return 2
    try:
        with _sigterm_closes():
            if args.group is not None:
                return _consume_group(args, render)
            return _consume_assigned(args, spec, render)
    except OutOfRange as exc:
        cli_common.error(args, str(exc))
        return 2
    except errors.TidelogError as exc:
        cli_common.error(args, str(exc))
        return 1
    except BrokenPipeError:
        return 0


def _start_spec(args: argparse.Namespace) -> OffsetSpec:
    if args.offset is not None:
        return args.offset
    if args.from_time is not None:
        return args.from_time
    return spec_mod.START if args.from_beginning else spec_mod.END


def _offset_spec(text: str) -> OffsetSpec:
    try:
        return spec_mod.parse_offset_spec(text, int(time.time() * 1000))
    except OffsetSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time_spec(text: str) -> OffsetSpec:
    try:
        at = spec_mod.parse_time_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return OffsetSpec(spec_mod.Bound(spec_mod.Kind.TIME, at), None, text)


def _format(text: str) -> Callable[[Any], str]:
    try:
        return compile_format(text)
    except FormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _consume_assigned(args: argparse.Namespace, spec: OffsetSpec,
                      render: Callable[[Any], str]) -> int:
    from tidelog.client.consumer import Consumer

    reset = args.reset or ("error" if spec.explicit_offset else "latest")
    with Consumer(args.bootstrap, security=args.security, auto_offset_reset=reset) as consumer:
        tps = consumer.partitions_for(args.topic)
        if args.partition is not None:
            tps = [tp for tp in tps if tp.partition == args.partition]
            if not tps:
                cli_common.error(args, f"topic {args.topic!r} has no partition {args.partition}")
                return 2
        consumer.assign(tps)
        starts, stops = _plan(consumer, tps, spec, reset, args.exit_at_end)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        _print_records(consumer, args, render, stops, lambda _tps: {})
    return 0


def _plan(consumer: Any, tps: list[Any], spec: OffsetSpec, reset: str, exit_at_end: bool
          ) -> tuple[dict[Any, int], dict[Any, int]]:
    """Each partition's start offset and, when the spec or -e bounds it, its stop offset."""
    held = _ranges(consumer, tps)
    times: dict[int, dict[Any, int | None]] = {}

    def first_at(tp: Any) -> Callable[[int], int | None]:
        def lookup(ms: int) -> int | None:
            if ms not in times:
                times[ms] = consumer.offsets_for_times({p: ms for p in tps})
            return times[ms].get(tp)
        return lookup

    starts: dict[Any, int] = {}
    stops: dict[Any, int] = {}
    for tp in tps:
        start = spec_mod.resolve(spec.start, held[tp], first_at(tp))
        if spec.explicit_offset:
            start = spec_mod.checked_start(start, held[tp], reset, f"{tp.topic}/{tp.partition}")
        starts[tp] = start
        if spec.stop is not None:
            stops[tp] = spec_mod.resolve(spec.stop, held[tp], first_at(tp))
        if exit_at_end:
            stops[tp] = min(stops.get(tp, held[tp].high_watermark), held[tp].high_watermark)
    return starts, stops


def _ranges(consumer: Any, tps: list[Any]) -> dict[Any, PartitionRange]:
    if not tps:
        return {}
    begins = consumer.beginning_offsets(tps)
    ends = consumer.end_offsets(tps)
    return {tp: PartitionRange(begins[tp], ends[tp]) for tp in tps}


def _consume_group(args: argparse.Namespace, render: Callable[[Any], str]) -> int:
    from tidelog.client.consumer import Consumer

    reset = args.reset or ("earliest" if args.from_beginning else "latest")
    with Consumer(args.bootstrap, security=args.security, group_id=args.group,
                  topics=[args.topic],
                  auto_offset_reset=reset, client_id="tidelog-cli") as consumer:
        def ends_of(new: list[Any]) -> dict[Any, int]:
            return consumer.end_offsets(new) if args.exit_at_end else {}
        _print_records(consumer, args, render, {}, ends_of)
    return 0


def _print_records(consumer: Any, args: argparse.Namespace, render: Callable[[Any], str],
                   stops: dict[Any, int], ends_of: Callable[[list[Any]], dict[Any, int]]) -> int:
    """Poll and print until --max-messages, --timeout seconds without a record, or every
    partition reached its stop offset (given in `stops`, or for a group's partitions asked of
    `ends_of` when they are first assigned). A partition at its stop is paused."""
    count = 0
    idle_since = time.monotonic()
    done: set[Any] = set()
    bounded = bool(stops) or args.exit_at_end
    if bounded and args.group is None and _all_done(consumer, stops, done):
        return 0
    while args.max_messages is None or count < args.max_messages:
        want = None if args.max_messages is None else args.max_messages - count
        records = consumer.poll(timeout_s=0.5, max_records=want)
        if args.group is not None and args.exit_at_end:
            new = [tp for tp in consumer.assignment() if tp not in stops]
            if new:
                stops.update(ends_of(new))
        shown = [r for r in records if _before_stop(r, stops)]
        for record in shown:
            sys.stdout.write(render(record))
        if shown:
            sys.stdout.flush()
            idle_since = time.monotonic()
        count += len(shown)
        if bounded and _all_done(consumer, stops, done):
            break
        if not records and args.timeout is not None \
                and time.monotonic() - idle_since >= args.timeout:
            break
    return count


def _before_stop(record: Any, stops: dict[Any, int]) -> bool:
    from tidelog.client import TopicPartition

    stop = stops.get(TopicPartition(record.topic, record.partition))
    return stop is None or record.offset < stop


def _all_done(consumer: Any, stops: dict[Any, int], done: set[Any]) -> bool:
    """Whether every partition read (with a stop) is at or past it; finished ones are paused so
    their newer records are not fetched for nothing."""
    assigned = consumer.assignment()
    if not assigned:
        return False
    for tp in assigned:
        if tp in done:
            continue
        stop = stops.get(tp)
        if stop is None:
            return False
        if consumer.position(tp) >= stop:
            done.add(tp)
            consumer.pause(tp)
    return all(tp in done for tp in assigned)


# SIGTERM ends consume as Ctrl-C does (the consumer closed: final commit, LeaveGroup); a name
# of this module so tests can plant the old default (tests/client/test_cli_consume_produce_...).
_sigterm_closes = cli_common.sigterm_as_ctrl_c


# `tidelog group reset-offsets --to-time` parses its time with this.
_parse_time = spec_mod.parse_time_ms


def _value_line(record: Any) -> str:
    return text(record.value) + "\n"


def _json(record: Any) -> str:
    def optional(data: bytes | None) -> str | None:
        return None if data is None else text(data)
    return json.dumps({
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp": record.timestamp, "key": optional(record.key),
        "value": optional(record.value),
        "headers": {name: optional(value) for name, value in record.headers},
    }) + "\n"
