"""`tidelog bench produce|consume|e2e`: load a cluster and print what it did, like `rpk`'s and
`nats bench`.

Every run is bounded by --count AND --seconds and ends by itself; Ctrl-C (or SIGTERM) stops the
load, waits briefly for what is in flight, prints the table of what was measured so far and
exits 130. A live progress line goes to stderr (redrawn on a terminal, a log line every 5 s
otherwise); the table, or one JSON document with --output json, goes to stdout. --create makes
a throwaway topic (deleted afterwards unless --keep). The measuring is client/bench_workloads.py;
the figures client/bench_stats.py.

Exit codes: 0 every record acknowledged (and, for e2e, read back), 1 some failed or the cluster
refused, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.client import cli_common, cli_tables
from tidelog.client.bench_stats import BenchResult

WORKLOADS = ("produce", "consume", "e2e")
_HELP = {
    "produce": "send records; ack latency percentiles and throughput",
    "consume": "read a topic from its start; throughput and poll latency",
    "e2e": "produce and consume at once; ack and end-to-end latency",
}
_DESCRIPTIONS = {
    "produce": "Send --count records of --size bytes (at most --in-flight unacknowledged at a "
               "time) and report acknowledgement latency percentiles and throughput.",
    "consume": "Read a topic from the beginning of every partition up to its end (or --count) "
               "and report throughput and poll latency. With --create it first fills a new "
               "topic with --count records (reported as a produce row).",
    "e2e": "Produce as `bench produce` does while a consumer in the same process reads the "
           "topic; reports produce (ack) latency and end-to-end latency (send to read).",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure a cluster: produce, consume or end-to-end load with percentiles",
        description="Load the cluster and print a table of latency percentiles (p50, p90, p99, "
        "p99.9, max) and throughput (msgs/s, MB/s). Bounded by --count and --seconds; Ctrl-C "
        "prints the table so far. Values are random bytes (lz4 cannot shrink them).")
    workloads = parser.add_subparsers(dest="workload", metavar="WORKLOAD")
    workloads.required = True
    for name in WORKLOADS:
        sub = workloads.add_parser(name, help=_HELP[name],
                                   description=_DESCRIPTIONS[name])
        _add_options(sub, name)
        sub.set_defaults(func=run)


def _add_options(parser: argparse.ArgumentParser, workload: str) -> None:
    topic = parser.add_argument_group("topic")
    topic.add_argument("--topic", "-t", metavar="NAME",
                       help="the topic to load (required without --create; with --create the "
                       "default is a new bench-XXXXXXXX)")
    topic.add_argument("--create", action="store_true",
                       help="create the topic first (deleted at the end unless --keep)")
    topic.add_argument("--keep", action="store_true", help="keep the topic --create made")
    topic.add_argument("--partitions", "-p", type=_positive_int, metavar="N",
                       help="partitions of the created topic (default 1; needs --create)")
    topic.add_argument("--replication-factor", "-r", type=_positive_int, metavar="R",
                       help="replicas of the created topic (default 3; needs --create)")
    load = parser.add_argument_group("load")
    load.add_argument("--count", "-n", type=_positive_int, default=100_000, metavar="N",
                      help="records to send (consume: to read at most) (default %(default)s)")
    load.add_argument("--seconds", type=_positive_float, default=60.0, metavar="S",
                      help="stop after S seconds even if --count is not reached "
                      "(default %(default)s)")
    if workload == "consume":
        load.add_argument("--size", "-s", type=_positive_int, default=100, metavar="BYTES",
                          help="value size of the records --create fills the topic with "
                          "(default %(default)s)")
    else:
        load.add_argument("--size", "-s", type=_positive_int, default=100, metavar="BYTES",
                          help="value size in bytes (default %(default)s)")
    load.add_argument("--acks", choices=("all", "leader"), default="all",
                      help="all: committed on a majority, each fsynced (default); leader")
    load.add_argument("--linger-ms", type=_non_negative_float, default=5.0, metavar="MS",
                      help="the producer's batching delay (default %(default)s, the client's)")
    load.add_argument("--batch-size", type=_positive_int, default=128 * 1024, metavar="BYTES",
                      help="the producer's batch size (default %(default)s)")
    load.add_argument("--in-flight", type=_positive_int, default=1000, metavar="N",
                      help="records sent but not yet acknowledged, at most (1 = one at a time: "
                      "send, wait; default %(default)s)")
    load.add_argument("--keyed", action="store_true",
                      help="send keyed records (spread over the partitions by the key's hash) "
                      "instead of null keys (sticky partitioning)")
    load.add_argument("--keys", type=_positive_int, default=1000, metavar="N",
                      help="distinct keys with --keyed (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress line on stderr")
    cli_tables.add_output_option(parser)


@dataclass(frozen=True, slots=True)
class Target:
    """The topic a run loads, and whether this run made it."""

    topic: str
    partitions: int
    replication_factor: int
    created: bool


def run(args: argparse.Namespace) -> int:
    from tidelog.client import errors

    problem = _usage_problem(args)
    if problem:
        return cli_tables.fail(args, problem, 2)
    try:
        target = _prepare_topic(args)
    except errors.TidelogError as exc:
        return cli_tables.fail(args, exc)
    stop = threading.Event()
    results: list[BenchResult] = []
    failure: BaseException | None = None
    try:
        with cli_common.sigterm_as_ctrl_c():
            _run_workload(args, target.topic, stop, results.append)
    except KeyboardInterrupt:
        stop.set()
    except (errors.TidelogError, ValueError) as exc:
        failure = exc
    finally:
        if target.created and not args.keep:
            _delete_topic(args, target.topic)
    interrupted = stop.is_set() or any(r.interrupted for r in results)
    if failure is not None and not results:
        return cli_tables.fail(args, failure)
    _print(args, target, results, interrupted)
    if failure is not None:
        cli_tables.fail(args, failure)
        return 1
    if interrupted:
        return 130
    return 1 if any(r.errors for r in results) else 0


def _usage_problem(args: argparse.Namespace) -> str:
    if not args.topic and not args.create:
        return "give --topic NAME, or --create to make a throwaway topic"
    if not args.create:
        given = [flag for flag, value in (("--partitions", args.partitions),
                                          ("--replication-factor", args.replication_factor),
                                          ("--keep", args.keep or None)) if value is not None]
        if given:
            return f"{', '.join(given)} only apply with --create (the topic exists already)"
    if args.workload == "e2e" and args.size < 8:
        return f"--size {args.size}: e2e needs at least 8 bytes (each value carries its send time)"
    return ""


def _prepare_topic(args: argparse.Namespace) -> Target:
    from tidelog.client.admin import Admin

    with Admin(args.bootstrap, security=args.security) as admin:
        if args.create:
            name = args.topic or f"bench-{uuid.uuid4().hex[:8]}"
            partitions = args.partitions or 1
            rf = args.replication_factor or 3
            admin.create_topic(name, partitions=partitions, replication_factor=rf)
            return Target(name, partitions, rf, created=True)
        (described,) = admin.describe_topics([args.topic])
        replicas = len(described.partitions[0].replicas) if described.partitions else 0
        return Target(args.topic, len(described.partitions), replicas, created=False)


def _delete_topic(args: argparse.Namespace, topic: str) -> None:
    from tidelog.client import errors
    from tidelog.client.admin import Admin

    try:
        with Admin(args.bootstrap, security=args.security) as admin:
            admin.delete_topic(topic)
    except (errors.TidelogError, KeyboardInterrupt) as exc:
        cli_common.error(args, f"could not delete topic {topic!r} (delete it with `tidelog "
                         f"topic delete {topic}`): {exc}")


def _run_workload(args: argparse.Namespace, topic: str, stop: threading.Event,
                  collect: Callable[[BenchResult], None]) -> None:
    from tidelog.client import bench_workloads as bw
    from tidelog.client.bench_progress import Progress

    spec = bw.ProduceSpec(topic=topic, size=args.size, count=args.count, seconds=args.seconds,
                          acks=args.acks, linger_ms=args.linger_ms, in_flight=args.in_flight,
                          keys=args.keys if args.keyed else 0, batch_size=args.batch_size)
    show = not args.no_progress
    counters = bw.Counters()
    if args.workload in ("produce", "consume") and (args.workload == "produce" or args.create):
        with Progress("produce", counters, enabled=show):
            collect(bw.run_produce(args.bootstrap, args.security, spec, counters=counters,
                                   stop=stop))
        if stop.is_set():
            return
    if args.workload == "consume":
        counters = bw.Counters()
        with Progress("consume", counters, enabled=show):
            collect(bw.run_consume(args.bootstrap, args.security,
                                   bw.ConsumeSpec(topic=topic, count=args.count,
                                                  seconds=args.seconds),
                                   counters=counters, stop=stop))
    elif args.workload == "e2e":
        with Progress("e2e produce", counters, enabled=show):
            for result in bw.run_e2e(args.bootstrap, args.security, spec, counters=counters,
                                     stop=stop):
                collect(result)


HEADER = ("workload", "messages", "errors", "seconds", "msgs/s", "MB/s", "latency", "p50 ms",
          "p90 ms", "p99 ms", "p99.9 ms", "max ms")


def rows(results: list[BenchResult]) -> list[list[object]]:
    """The table's rows (also what benchmarks print): one per workload."""
    out: list[list[object]] = []
    for r in results:
        latency: list[object] = [None] * 6
        if r.latency is not None:
            latency = [r.latency.kind.value, *(f"{v:.2f}" for v in r.latency.values_ms())]
        out.append([r.workload + (" (interrupted)" if r.interrupted else ""), r.messages,
                    r.errors, f"{r.elapsed_s:.2f}", f"{r.msgs_per_s:,.0f}",
                    f"{r.mb_per_s:.2f}", *latency])
    return out


def _settings(args: argparse.Namespace, target: Target) -> dict[str, object]:
    return {"size": args.size, "count": args.count, "seconds": args.seconds, "acks": args.acks,
            "linger_ms": args.linger_ms, "batch_size": args.batch_size,
            "in_flight": args.in_flight, "keys": args.keys if args.keyed else 0}


def _print(args: argparse.Namespace, target: Target, results: list[BenchResult],
           interrupted: bool) -> None:
    document = {"workload": args.workload, "topic": target.topic,
                "partitions": target.partitions,
                "replication_factor": target.replication_factor, "created": target.created,
                "kept": target.created and args.keep, "settings": _settings(args, target),
                "results": [r.to_json() for r in results], "interrupted": interrupted}
    made = ""
    if target.created:
        made = ", created, kept" if args.keep else ", created and deleted"
    keyed = f", keyed over {args.keys:,} keys" if args.keyed else ""
    plural = "" if target.partitions == 1 else "s"
    summary = (f"topic {target.topic} ({target.partitions} partition{plural}, RF "
               f"{target.replication_factor}{made}); {args.size} B values, acks={args.acks}, "
               f"linger {args.linger_ms:g} ms, {args.in_flight:,} in flight{keyed}")
    if interrupted:
        summary += "; INTERRUPTED: the figures so far"
    cli_tables.emit(args, document, summary + "\n" + cli_tables.table(HEADER, rows(results)))
