"""`tidelog quota set|list|remove`: client quotas (docs/security.md "Quotas").

    tidelog quota set --client-id ingest --producer-byte-rate 1MiB
    tidelog quota set --user alice --request-rate 200
    tidelog quota set --default client-id --consumer-byte-rate 10MB
    tidelog quota set --user alice --default client-id --producer-byte-rate 512KiB
    tidelog quota list --output json
    tidelog quota remove --client-id ingest [--quota producer_byte_rate]

The entity options come after `quota ACTION`: there `--user` names the quota's user (the global
`--user` before the command is the SCRAM login). `--default user|client-id` (repeatable) makes
that part the default. Byte rates take B, KB/MB/GB (powers of 1000) or KiB/MiB/GiB (of 1024).
"""

from __future__ import annotations

import argparse
import json
import re

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*(?:/s)?\s*$")


def parse_byte_rate(text: str) -> int:
    """'1MiB' -> 1048576, '500KB' -> 500000, '2048' -> 2048 (bytes per second)."""
    match = _RATE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a byte rate (e.g. 1MiB, 500KB, 2048)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate must be at least 1 byte per second")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("a request rate must be at least 1 per second")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("quota", help="set, list, remove client quotas")
    commands = parser.add_subparsers(dest="quota_command", metavar="ACTION")
    commands.required = True

    set_ = commands.add_parser("set", help="set quotas of a user and/or client id")
    _entity_options(set_)
    set_.add_argument("--producer-byte-rate", type=parse_byte_rate, metavar="RATE",
                      help="Produce bytes per second (e.g. 1MiB)")
    set_.add_argument("--consumer-byte-rate", type=parse_byte_rate, metavar="RATE",
                      help="Fetch bytes per second")
    set_.add_argument("--request-rate", type=_positive_int, metavar="N",
                      help="requests per second (every call)")
    _output_option(set_)
    set_.set_defaults(func=_set)

    listing = commands.add_parser("list", help="every quota of the cluster")
    _output_option(listing)
    listing.set_defaults(func=_list)

    remove = commands.add_parser("remove", help="remove quotas of a user and/or client id")
    _entity_options(remove)
    remove.add_argument("--quota", action="append", default=[],
                        choices=("producer_byte_rate", "consumer_byte_rate", "request_rate"),
                        help="only this quota (repeatable); default: all of the entity's")
    _output_option(remove)
    remove.set_defaults(func=_remove)


def _entity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", dest="quota_user", default="", metavar="PRINCIPAL",
                        help="the user: 'alice' (= User:alice) or a principal such as "
                             "Cert:CN=client-1")
    parser.add_argument("--client-id", dest="quota_client_id", default="", metavar="ID")
    parser.add_argument("--default", dest="quota_defaults", action="append", default=[],
                        choices=("user", "client-id"),
                        help="the default user or client id (repeatable)")


def _output_option(parser: argparse.ArgumentParser) -> None:
    from tidelog.client.cli_tables import add_output_option

    add_output_option(parser)


def _usage(args: argparse.Namespace, message: str) -> int:
    """A usage error in the common style (``tidelog quota set: ...``, or the JSON error object
    with --output json); rc 2 as argparse's own usage errors."""
    from tidelog.client.cli_tables import fail

    return fail(args, message, 2)


def _entity_kwargs(args: argparse.Namespace) -> dict[str, object]:
    user_default = "user" in args.quota_defaults
    client_default = "client-id" in args.quota_defaults
    if user_default and args.quota_user:
        raise SystemExit(_usage(args, "give --user NAME or --default user, not both"))
    if client_default and args.quota_client_id:
        raise SystemExit(_usage(args, "give --client-id ID or --default client-id, not both"))
    if not (args.quota_user or args.quota_client_id or user_default or client_default):
        raise SystemExit(_usage(args, "name the quota's entity: --user, --client-id and/or "
                                      "--default"))
    return {"user": args.quota_user, "client_id": args.quota_client_id,
            "user_default": user_default, "client_id_default": client_default}


def _run(args: argparse.Namespace, action) -> int:  # noqa: ANN001
    from tidelog.client import errors
    from tidelog.client.admin import Admin

    try:
        with Admin(args.bootstrap, security=args.security) as admin:
            action(admin)
    except errors.TidelogError as exc:
        from tidelog.client.cli_tables import fail

        return fail(args, exc)
    return 0


def _set(args: argparse.Namespace) -> int:
    entity = _entity_kwargs(args)
    limits = {"producer_byte_rate": args.producer_byte_rate,
              "consumer_byte_rate": args.consumer_byte_rate, "request_rate": args.request_rate}
    limits = {k: v for k, v in limits.items() if v is not None}
    if not limits:
        raise SystemExit(_usage(args, "give at least one of --producer-byte-rate, "
                                      "--consumer-byte-rate, --request-rate"))

    def action(admin) -> None:  # noqa: ANN001
        from tidelog.client.quota_admin import QuotaEntity, principal_name

        admin.set_quota(**entity, **limits)
        shown = QuotaEntity(**{**entity, "user": principal_name(args.quota_user)
                               if args.quota_user else ""})
        if args.output == "json":
            print(json.dumps({**shown.to_dict(), "set": limits}))
        else:
            print(f"set {', '.join(f'{k}={v}' for k, v in limits.items())} for {shown}")

    return _run(args, action)


def _list(args: argparse.Namespace) -> int:
    def action(admin) -> None:  # noqa: ANN001
        from tidelog.client.cli_tables import table
        from tidelog.client.quota_admin import QUOTA_KINDS

        entries = admin.describe_quotas()
        if args.output == "json":
            print(json.dumps([e.to_dict() for e in entries]))
            return
        if not entries:
            print("no quotas")
            return
        rows = []
        for e in entries:
            d = e.entity.to_dict()
            rows.append([d["user"] or "-", d["client_id"] or "-",
                         *(e.limits.get(k, "-") for k in QUOTA_KINDS)])
        print(table(["USER", "CLIENT-ID", "PRODUCER-B/S", "CONSUMER-B/S", "REQUESTS/S"], rows))

    return _run(args, action)


def _remove(args: argparse.Namespace) -> int:
    entity = _entity_kwargs(args)

    def action(admin) -> None:  # noqa: ANN001
        removed = admin.remove_quota(**entity, kinds=tuple(args.quota))
        if args.output == "json":
            print(json.dumps({"removed": removed}))
        elif removed:
            print(f"removed {removed} quota(s)")
        else:
            print("no such quota was set (nothing removed)")

    return _run(args, action)
