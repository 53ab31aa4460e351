"""`tidelog produce TOPIC`: send --value, or one record per stdin line.

Ctrl-C and SIGTERM (systemd, docker stop, Kubernetes) end it the same way: the records read so
far are delivered and reported (--verbose), then rc 130, as `tidelog consume`.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from typing import TYPE_CHECKING

from tidelog.client import cli_common

if TYPE_CHECKING:
    from tidelog.client.future import RecordFuture


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "produce", help="send records to a topic (from --value or stdin lines)",
        description="Send one record (--value) or one record per line of stdin. Keyed records go "
        "to xxh3_64(key) % partitions (or murmur2 with --partitioner murmur2).",
    )
    parser.add_argument("topic")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--key", help="key of every record")
    keys.add_argument("--key-separator", metavar="SEP",
                      help="split each input line at the first SEP into key and value; a line "
                      "without SEP is an error (rc 2: the lines before it are sent, nothing "
                      "after it) unless --allow-null-key")
    parser.add_argument("--allow-null-key", action="store_true",
                        help="with --key-separator: send a line without SEP whole, with a null key")
    parser.add_argument("--value", help="send this one value instead of reading stdin")
    parser.add_argument("--partition", type=int, help="send to this partition")
    parser.add_argument("--header", action="append", default=[], metavar="K=V",
                        help="add a header to every record (repeatable)")
    parser.add_argument("--acks", choices=("all", "leader"), default="all")
    parser.add_argument("--partitioner", choices=("xxh3", "murmur2"), default="xxh3")
    parser.add_argument("--linger-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="give up waiting for acknowledgements after S seconds "
                        "(default %(default)s)")
    parser.add_argument("--timeout-s", type=float, dest="timeout", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print TOPIC/PARTITION@OFFSET of each acknowledged record")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tidelog.client import errors
    from tidelog.client.producer import Producer

    headers = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep:
            cli_common.error(args, f"--header {item!r} is not K=V")
            return 2
        headers.append((name, value.encode()))
    failures = 0
    bad_line: MissingKeySeparator | None = None
    sent = 0
    pending: deque[RecordFuture] = deque()

    def report(done_only: bool) -> None:
        nonlocal failures
        while pending and (not done_only or pending[0].done()):
            future = pending.popleft()
            try:
                meta = future.result(args.timeout)
            except errors.TidelogError as exc:
                failures += 1
                cli_common.error(args, str(exc))
                continue
            if args.verbose:
                print(f"{meta.topic}/{meta.partition}@{meta.offset}")

    interrupted = False
    try:
        with cli_common.sigterm_as_ctrl_c(), \
                Producer(args.bootstrap, security=args.security, acks=args.acks,
                         linger_ms=args.linger_ms, partitioner=args.partitioner) as producer:
            try:
                for key, value in _records(args):
                    pending.append(producer.send(args.topic, value, key=key, headers=headers,
                                                 partition=args.partition))
                    sent += 1
                    if len(pending) >= 1000:
                        report(done_only=True)
            except MissingKeySeparator as exc:
                bad_line = exc  # what was read before it still goes out, and is reported
            except KeyboardInterrupt:
                interrupted = True  # Ctrl-C or SIGTERM: what was read still goes out
            producer.flush(args.timeout)
            report(done_only=False)
    except errors.TidelogError as exc:
        cli_common.error(args, str(exc))
        return 1
    if interrupted:  # as consume: rc 130 (a second Ctrl-C/SIGTERM stops the flush too)
        cli_common.error(args, f"interrupted: {sent - failures} record(s) read before it were "
                         "acknowledged")
        return 130
    if bad_line is not None:
        cli_common.error(args, f"{bad_line}; the {sent - failures} record(s) before it were "
                         "acknowledged, nothing after it was sent (--allow-null-key sends such "
                         "lines with a null key)")
        return 2
    return 1 if failures else 0


class MissingKeySeparator(Exception):
    """A stdin line without the --key-separator: refused rather than sent with a null key."""


def _records(args: argparse.Namespace):  # noqa: ANN202 - Iterator[tuple[bytes|None, bytes]]
    key = args.key.encode() if args.key is not None else None
    if args.value is not None:
        yield key, args.value.encode()
        return
    for number, line in enumerate(sys.stdin.buffer, start=1):
        line = line.rstrip(b"\r\n")
        if args.key_separator is not None:
            sep = args.key_separator.encode()
            if sep in line:
                k, _, v = line.partition(sep)
                yield k, v
                continue
            if not args.allow_null_key:
                raise MissingKeySeparator(
                    f"line {number} has no key separator {args.key_separator!r}")
            yield None, line
            continue
        yield key, line
