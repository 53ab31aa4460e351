"""`tidelog produce TOPIC`: send --value, or one record per stdin line."""

from __future__ import annotations

import argparse
import sys
from collections import deque
from typing import TYPE_CHECKING

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
                      help="split each input line at the first SEP into key and value")
    parser.add_argument("--value", help="send this one value instead of reading stdin")
    parser.add_argument("--partition", type=int, help="send to this partition")
    parser.add_argument("--header", action="append", default=[], metavar="K=V",
                        help="add a header to every record (repeatable)")
    parser.add_argument("--acks", choices=("all", "leader"), default="all")
    parser.add_argument("--partitioner", choices=("xxh3", "murmur2"), default="xxh3")
    parser.add_argument("--linger-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="give up waiting for acknowledgements after S seconds")
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
            print(f"error: --header {item!r} is not K=V", file=sys.stderr)
            return 2
        headers.append((name, value.encode()))
    failures = 0
    pending: deque[RecordFuture] = deque()

    def report(done_only: bool) -> None:
        nonlocal failures
        while pending and (not done_only or pending[0].done()):
            future = pending.popleft()
            try:
                meta = future.result(args.timeout)
            except errors.TidelogError as exc:
                failures += 1
                print(f"error: {exc}", file=sys.stderr)
                continue
            if args.verbose:
                print(f"{meta.topic}/{meta.partition}@{meta.offset}")

    try:
        with Producer(args.bootstrap, security=args.security, acks=args.acks,
                      linger_ms=args.linger_ms,
                      partitioner=args.partitioner) as producer:
            for key, value in _records(args):
                pending.append(producer.send(args.topic, value, key=key, headers=headers,
                                             partition=args.partition))
                if len(pending) >= 1000:
                    report(done_only=True)
            producer.flush(args.timeout)
            report(done_only=False)
    except errors.TidelogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1 if failures else 0


def _records(args: argparse.Namespace):  # noqa: ANN202 - Iterator[tuple[bytes|None, bytes]]
    key = args.key.encode() if args.key is not None else None
    if args.value is not None:
        yield key, args.value.encode()
        return
    for line in sys.stdin.buffer:
        line = line.rstrip(b"\r\n")
        if args.key_separator is not None:
            sep = args.key_separator.encode()
            if sep in line:
                k, _, v = line.partition(sep)
                yield k, v
                continue
            yield None, line
            continue
        yield key, line
