"""`tidelog queue create|list|describe|delete|alter|send|receive|peek|purge|redrive|stats`.

Every action takes ``--output table|json`` (tidelog.client.cli_tables; ``text`` is ``table``):
table prints tables and sentences; json prints one JSON
document (``receive`` and ``peek``: one JSON object per message and line, like `tidelog consume`),
and on failure a JSON object ``{"error": {"type", "code", "message"}}`` on stderr.

Exit codes (the same for every action): 0 done; 1 the cluster refused or failed (the message says
why); 2 bad arguments or an invalid queue setting; 3 the queue (or one of its topics) does not
exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tidelog.client.cli_common import error as print_error
from tidelog.client.cli_tables import add_output_option, emit, table

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
#: `send`: futures kept before the answered ones are collected; offsets listed in its JSON
SEND_PENDING_MAX = 1000
SEND_LISTED_MAX = 10_000

_EPILOG = ("exit codes: 0 done, 1 failed (see the message), 2 bad arguments or queue setting, "
           "3 no such queue or topic")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "queue", help="queues: point-to-point delivery with acks, retries and dead letters",
        description="Queues over topics: many consumers share each partition, every message is "
        "acked, nacked (retried after a backoff), rejected (dead-lettered) or released. "
        "See docs/queues.md.", epilog=_EPILOG)
    commands = parser.add_subparsers(dest="queue_command", metavar="ACTION")
    commands.required = True

    def add(name: str, help_text: str, func: Callable[[Any, argparse.Namespace], int],
            description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=description or help_text,
                                  epilog=_EPILOG)
        add_output_option(sub)
        sub.set_defaults(func=_runner(func))
        return sub

    create = add("create", "create a queue (and its dead-letter topic)", _create,
                 "Create queue NAME over --topic T (repeatable; default: a topic named NAME). "
                 "The topics must exist unless --partitions is given (then missing ones are "
                 "created). Settings left out take the defaults shown.")
    create.add_argument("name")
    create.add_argument("--topic", action="append", default=[], metavar="T",
                        help="a topic of the queue (repeatable; default NAME)")
    create.add_argument("--partitions", type=int, metavar="N",
                        help="create missing topics with N partitions (replication min(3, nodes))")
    create.add_argument("--if-not-exists", action="store_true",
                        help="an existing queue is not an error (its config is kept)")
    _settings_arguments(create)
    create.add_argument("--start", choices=("earliest", "latest"), default="earliest",
                        help="where a new queue begins in its topics (default earliest)")

    add("list", "every queue with its topics, coordinator, depth and in flight", _list)

    describe = add("describe", "a queue's effective config, coordinator and stats", _describe)
    describe.add_argument("name")

    delete = add("delete", "delete a queue's state (its topics stay)", _delete)
    delete.add_argument("name")
    delete.add_argument("--delete-dead-letter-topic", action="store_true",
                        help="also delete its dead-letter topic")

    alter = add("alter", "change a queue's settings (not its name or topics)", _alter)
    alter.add_argument("name")
    _settings_arguments(alter)

    send = add("send", "send messages to the queue's first topic",
               _send, "Send each VALUE (or each line of stdin when there is none) to the first "
               "topic of queue NAME, through the producer (acks=all).")
    send.add_argument("name")
    send.add_argument("values", nargs="*", metavar="VALUE")
    send.set_defaults(trailing_values="values")  # `send NAME --key K VALUE` (client/cli.py)
    send.add_argument("--key", help="key of every message")
    send.add_argument("--delay-s", type=float, metavar="S",
                      help="deliver no earlier than S seconds from now (tidelog-deliver-at-ms)")
    send.add_argument("--header", action="append", default=[], metavar="K=V",
                      help="a header of every message (repeatable)")

    receive = add("receive", "receive messages, print them, then settle them", _receive,
                  "Receive up to --max messages (waiting up to --timeout in all) and print "
                  "them; then --ack, --nack or --reject them. Without one of those they are "
                  "released at exit (available again at once, the delivery not counted).")
    receive.add_argument("name")
    receive.add_argument("--max", type=int, default=1, metavar="N",
                         help="at most N messages (default 1)")
    receive.add_argument("--timeout", type=float, default=5.0, metavar="S", dest="timeout_s",
                         help="stop waiting for messages after S seconds (default 5)")
    receive.add_argument("--timeout-s", type=float, dest="timeout_s", help=argparse.SUPPRESS)
    action = receive.add_mutually_exclusive_group()
    action.add_argument("--ack", action="store_true", help="ack each message printed")
    action.add_argument("--nack", action="store_true",
                        help="nack each one: redelivered after --delay-s, else the backoff")
    action.add_argument("--reject", metavar="REASON",
                        help="send each one to the dead-letter topic with REASON")
    receive.add_argument("--delay-s", type=float, metavar="S",
                         help="with --nack: redeliver after S seconds")

    peek = add("peek", "messages available now, without receiving them", _peek)
    peek.add_argument("name")
    peek.add_argument("--max", type=int, default=10, metavar="N",
                      help="at most N messages (default 10)")

    purge = add("purge", "mark every message not yet done as done (in flight too)", _purge)
    purge.add_argument("name")

    redrive = add("redrive", "move dead letters back to their source partitions", _redrive,
                  "Copy dead letters back to their source topic and partition: from the queue's "
                  "redrive cursor (or --from-offset) to the end (or --to-offset, exclusive), of "
                  "every dead-letter partition (or --dlq-partition); a second redrive does not "
                  "repeat them.")
    redrive.add_argument("name")
    redrive.add_argument("--dlq-partition", type=int, metavar="P")
    redrive.add_argument("--from-offset", type=int, metavar="O")
    redrive.add_argument("--to-offset", type=int, metavar="O")
    redrive.add_argument("--max", type=int, metavar="N", help="at most N messages")

    stats = add("stats", "depth, in flight, oldest unacked age, redeliveries, DLQ depth",
                _stats, "The numbers to monitor, in total and per partition.")
    stats.add_argument("name")


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-ordered", action=argparse.BooleanOptionalAction, default=None,
                        help="one key never in flight twice, delivered in offset order "
                        "(default off)")
    parser.add_argument("--max-deliveries", type=int, metavar="N",
                        help="the delivery that reaches N and fails is dead-lettered (default 10)")
    parser.add_argument("--lock-s", type=float, metavar="S",
                        help="how long a delivery stays locked to its consumer (default 30)")
    parser.add_argument("--backoff-initial-s", type=float, metavar="S",
                        help="wait before the first redelivery (default 1)")
    parser.add_argument("--backoff-max-s", type=float, metavar="S",
                        help="longest wait between redeliveries (default 60)")
    parser.add_argument("--backoff-multiplier", type=float, metavar="X",
                        help="each redelivery waits X times longer (default 2.0)")
    parser.add_argument("--delay-s", type=float, metavar="S",
                        help="deliver each message S seconds after its timestamp (default 0)")
    parser.add_argument("--ttl-s", type=float, metavar="S",
                        help="older messages go to the DLQ, reason 'expired' (default 0: none)")
    parser.add_argument("--dead-letter-topic", metavar="T", help="default NAME.dlq")
    parser.add_argument("--max-in-flight", type=int, metavar="N",
                        help="per partition: the window from the oldest unfinished message "
                        "(default 5000)")
    parser.add_argument("--dedup-window-s", type=float, metavar="S",
                        help="a message whose tidelog-message-id header was seen within S "
                        "seconds is discarded (default 300; -1: off)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"key_ordered": args.key_ordered, "max_deliveries": args.max_deliveries,
            "lock_s": args.lock_s, "backoff_initial_s": args.backoff_initial_s,
            "backoff_max_s": args.backoff_max_s, "backoff_multiplier": args.backoff_multiplier,
            "delay_s": args.delay_s, "ttl_s": args.ttl_s,
            "dead_letter_topic": args.dead_letter_topic, "max_in_flight": args.max_in_flight,
            "dedup_window_s": args.dedup_window_s}


class _Usage(Exception):
    """A bad argument found after parsing; exit code 2."""


def _runner(func: Callable[[Any, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from tidelog.client import errors
        from tidelog.client.admin import Admin

        try:
            with Admin(args.bootstrap, security=args.security) as admin:
                return func(admin, args)
        except _Usage as exc:
            return _fail(args, "UsageError", 0, str(exc), EXIT_USAGE)
        except errors.TidelogError as exc:
            return _fail(args, type(exc).__name__, exc.code, str(exc), _exit_code(exc))
        except BrokenPipeError:
            return EXIT_OK

    return run


def _exit_code(exc: BaseException) -> int:
    from tidelog.client import errors

    if isinstance(exc, (errors.QueueNotFound, errors.TopicNotFound)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (errors.ConfigError, errors.InvalidQueueConfig, errors.InvalidConfig)):
        return EXIT_USAGE
    return EXIT_ERROR


def _fail(args: argparse.Namespace, kind: str, code: int, message: str, exit_code: int) -> int:
    if getattr(args, "output", "text") == "json":
        print(json.dumps({"error": {"type": kind, "code": code, "message": message}}),
              file=sys.stderr)
    else:
        print_error(args, message)
    return exit_code


def _emit(args: argparse.Namespace, document: object, text: str) -> None:
    emit(args, document, text)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    return table(header, rows)


# --- admin actions -------------------------------------------------------------------------------


def _create(admin: Any, args: argparse.Namespace) -> int:
    if args.partitions is not None and args.partitions < 1:
        raise _Usage(f"--partitions must be >= 1, not {args.partitions}")
    settings = _settings(args)
    settings["key_ordered"] = bool(settings["key_ordered"])
    config = admin.create_queue(args.name, args.topic or None, partitions=args.partitions,
                                start=args.start, if_not_exists=args.if_not_exists, **settings)
    _emit(args, config.to_dict(), f"created queue {config.name!r} over "
          f"{', '.join(config.topics)}; dead letters to "
          f"{config.dead_letter_topic or config.name + '.dlq'}")
    return EXIT_OK


def _alter(admin: Any, args: argparse.Namespace) -> int:
    settings = {k: v for k, v in _settings(args).items() if v is not None}
    if not settings:
        raise _Usage("alter: give at least one setting, e.g. --lock-s 60")
    config = admin.alter_queue(args.name, **settings)
    _emit(args, config.to_dict(), f"altered queue {config.name!r}\n" + _config_table(config))
    return EXIT_OK


def _list(admin: Any, args: argparse.Namespace) -> int:
    queues = admin.list_queues()
    _emit(args, [{"name": q.name, "topics": list(q.topics), "key_ordered": q.key_ordered,
                  "coordinator_id": q.coordinator_id, "depth": q.depth, "in_flight": q.in_flight}
                 for q in queues],
          _table(["QUEUE", "TOPICS", "KEY-ORDERED", "COORDINATOR", "DEPTH", "IN-FLIGHT"],
                 [[q.name, ",".join(q.topics), "yes" if q.key_ordered else "no",
                   q.coordinator_id, q.depth, q.in_flight] for q in queues]))
    return EXIT_OK


def _describe(admin: Any, args: argparse.Namespace) -> int:
    d = admin.describe_queue(args.name)
    text = (f"queue {d.config.name}: coordinator node {d.coordinator_id}\n"
            + _config_table(d.config) + "\n\n" + _stats_text(d.stats))
    _emit(args, d.to_dict(), text)
    return EXIT_OK


def _delete(admin: Any, args: argparse.Namespace) -> int:
    admin.delete_queue(args.name, delete_dead_letter_topic=args.delete_dead_letter_topic)
    _emit(args, {"deleted": args.name}, f"deleted queue {args.name!r}")
    return EXIT_OK


def _purge(admin: Any, args: argparse.Namespace) -> int:
    purged = admin.purge_queue(args.name)
    _emit(args, {"queue": args.name, "purged": purged},
          f"purged {purged} messages from queue {args.name!r}")
    return EXIT_OK


def _redrive(admin: Any, args: argparse.Namespace) -> int:
    if args.max is not None and args.max < 1:
        raise _Usage(f"--max must be >= 1, not {args.max}")
    count = admin.redrive_queue(args.name, dlq_partition=args.dlq_partition,
                                from_offset=args.from_offset, to_offset=args.to_offset,
                                max_messages=args.max)
    _emit(args, {"queue": args.name, "redriven": count},
          f"redrove {count} dead letters of queue {args.name!r} back to their source")
    return EXIT_OK


def _stats(admin: Any, args: argparse.Namespace) -> int:
    stats = admin.describe_queue(args.name).stats
    document = {"queue": args.name, **stats.to_dict()}
    _emit(args, document, _stats_text(stats))
    return EXIT_OK


def _peek(admin: Any, args: argparse.Namespace) -> int:
    if args.max < 1:
        raise _Usage(f"--max must be >= 1, not {args.max}")
    for message in admin.peek_queue(args.name, max_messages=args.max):
        sys.stdout.write(_message_line(message, args.output))
    sys.stdout.flush()
    return EXIT_OK


# --- send / receive ------------------------------------------------------------------------------


def _send(admin: Any, args: argparse.Namespace) -> int:
    from tidelog.client import errors
    from tidelog.client.producer import Producer
    from tidelog.client.queue import deliver_at_header

    headers: list[tuple[str, bytes]] = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _Usage(f"--header {item!r} is not K=V")
        headers.append((name, value.encode()))
    if args.delay_s is not None and args.delay_s < 0:
        raise _Usage(f"--delay-s must be >= 0, not {args.delay_s}")
    config = admin.describe_queue(args.name).config
    topic = config.topics[0]
    key = args.key.encode() if args.key is not None else None
    sent: list[dict[str, int]] = []  # the first SEND_LISTED_MAX, for --output json
    count = failures = 0
    pending: deque[Any] = deque()

    def settle(done_only: bool) -> None:
        nonlocal count, failures
        while pending and (not done_only or pending[0].done()):
            try:
                meta = pending.popleft().result(120.0)
            except errors.TidelogError as exc:
                failures += 1
                print_error(args, str(exc))
                continue
            count += 1
            if len(sent) < SEND_LISTED_MAX:
                sent.append({"partition": meta.partition, "offset": meta.offset})

    with Producer(args.bootstrap, security=args.security) as producer:
        for value in _values(args):
            extra = [deliver_at_header(args.delay_s)] if args.delay_s is not None else []
            pending.append(producer.send(topic, value, key=key, headers=[*headers, *extra]))
            if len(pending) >= SEND_PENDING_MAX:
                settle(done_only=True)
        producer.flush(120.0)
        settle(done_only=False)
    _emit(args, {"queue": args.name, "topic": topic, "sent": count, "failed": failures,
                 "messages": sent, "messages_listed_all": count <= SEND_LISTED_MAX},
          f"sent {count} messages to queue {args.name!r} (topic {topic})"
          + (f"; {failures} failed" if failures else ""))
    return EXIT_ERROR if failures else EXIT_OK


def _values(args: argparse.Namespace) -> Iterator[bytes]:
    if args.values:
        for value in args.values:
            yield value.encode()
        return
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\r\n")


def _receive(admin: Any, args: argparse.Namespace) -> int:
    from tidelog.client import errors
    from tidelog.client.queue import QueueConsumer

    if args.max < 1:
        raise _Usage(f"--max must be >= 1, not {args.max}")
    if args.delay_s is not None and not args.nack:
        raise _Usage("--delay-s goes with --nack")
    if args.delay_s is not None and args.delay_s < 0:
        raise _Usage(f"--delay-s must be >= 0, not {args.delay_s}")
    admin.describe_queue(args.name)  # QueueNotFound (exit 3) before waiting for messages
    failures = 0
    with QueueConsumer(args.bootstrap, security=args.security, queue=args.name) as consumer:
        deadline = time.monotonic() + max(0.0, args.timeout_s)
        received = 0
        while received < args.max:
            left = deadline - time.monotonic()
            if left <= 0 and received:
                break
            messages = consumer.receive(max_messages=min(args.max - received, 10_000),
                                        timeout_s=max(0.0, left))
            if not messages:
                break
            received += len(messages)
            futures = [(m, _settle(consumer, m, args)) for m in messages]
            for message, future in futures:
                error = None
                if future is not None:
                    try:
                        future.result(60.0)
                    except errors.TidelogError as exc:
                        error = exc
                        failures += 1
                        print_error(args, f"{args.name} {message.topic}/{message.partition}@"
                                          f"{message.offset}: {exc}")
                sys.stdout.write(_message_line(message, args.output, _settled(args), error))
            sys.stdout.flush()
    return EXIT_ERROR if failures else EXIT_OK


def _settle(consumer: Any, message: Any, args: argparse.Namespace) -> Any:
    if args.ack:
        return consumer.ack(message)
    if args.nack:
        return consumer.nack(message, delay_s=args.delay_s)
    if args.reject is not None:
        return consumer.reject(message, reason=args.reject)
    return None  # released when the consumer closes


def _settled(args: argparse.Namespace) -> str:
    if args.ack:
        return "ack"
    if args.nack:
        return "nack"
    if args.reject is not None:
        return "reject"
    return "release"


# --- formatting ----------------------------------------------------------------------------------


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="backslashreplace")


def _message_line(message: Any, output: str, settled: str | None = None,
                  error: BaseException | None = None) -> str:
    if output != "json":
        return (_text(message.value) or "") + "\n"
    document: dict[str, Any] = {
        "queue": message.queue, "topic": message.topic, "partition": message.partition,
        "offset": message.offset, "timestamp_ms": message.timestamp_ms,
        "delivery_count": message.delivery_count, "lock_deadline_ms": message.lock_deadline_ms,
        "key": _text(message.key), "value": _text(message.value),
        "headers": {name: _text(value) for name, value in message.headers},
    }
    if settled is not None:
        document["settled"] = settled
        document["error"] = str(error) if error is not None else None
    return json.dumps(document) + "\n"


def _config_table(config: Any) -> str:
    rows = [["topics", ",".join(config.topics)],
            ["key_ordered", "yes" if config.key_ordered else "no"],
            ["max_deliveries", config.max_deliveries],
            ["lock_s", _seconds(config.lock_ms)],
            ["backoff_initial_s", _seconds(config.backoff_initial_ms)],
            ["backoff_max_s", _seconds(config.backoff_max_ms)],
            ["backoff_multiplier", config.backoff_multiplier],
            ["dead_letter_topic", config.dead_letter_topic or f"{config.name}.dlq"],
            ["delay_s", _seconds(config.delay_ms)],
            ["ttl_s", _seconds(config.ttl_ms) if config.ttl_ms else "none"],
            ["max_in_flight", config.max_in_flight],
            ["start", config.start],
            ["dedup_window_s", _seconds(config.dedup_window_ms)
             if config.dedup_window_ms > 0 else "off"]]
    return _table(["SETTING", "VALUE"], rows)


def _stats_text(stats: Any) -> str:
    totals = _table(
        ["DEPTH", "IN-FLIGHT", "OLDEST-UNACKED-S", "DELIVERED", "REDELIVERED", "ACKED",
         "DEAD-LETTERED", "DLQ-LOST", "EXPIRED", "DEDUPED", "DLQ-DEPTH", "REDRIVEN",
         "CONSUMERS"],
        [[stats.depth, stats.in_flight, _seconds(stats.oldest_unacked_age_ms),
          stats.delivered_total, stats.redelivered_total, stats.acked_total,
          stats.dead_lettered_total, stats.dead_letters_lost_total, stats.expired_total,
          stats.deduplicated_total, stats.dlq_depth, stats.redriven_total, stats.consumers]])
    parts = _table(
        ["TOPIC", "PARTITION", "START", "READ", "HIGH-WATERMARK", "DEPTH", "IN-FLIGHT",
         "WAITING", "DLQ-PENDING"],
        [[p.topic, p.partition, p.start_offset, p.read_offset,
          p.high_watermark if p.high_watermark >= 0 else "-", p.depth, p.in_flight, p.waiting,
          p.dead_letter_pending] for p in stats.partitions])
    return totals + "\n\n" + parts


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}"
