"""`tidelog user create|delete|list|passwd` and `tidelog acl add|remove|list` (docs/security.md).

    tidelog user create alice                    # prompts twice; or --password-stdin, or
    TIDELOG_NEW_PASSWORD=... tidelog user create alice
    tidelog --user admin user passwd alice
    tidelog acl add --principal User:alice --operation write --topic orders
    tidelog acl add --principal User:bob --operation read --topic orders. --prefixed
    tidelog acl add --principal User:bob --operation read --group billing --deny
    tidelog acl list --output json

The password of the user being created is never echoed, never a flag (flags show in `ps`), and
never sent: the client sends its SCRAM StoredKey and ServerKey. The global `--user`/`--password`
(before the command) are the login of the caller, as for every other command.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

NEW_PASSWORD_ENV = "TIDELOG_NEW_PASSWORD"
_OPERATIONS = ("read", "write", "create", "delete", "alter", "describe", "cluster_action", "all")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_users(subparsers)
    _register_acls(subparsers)


def _register_users(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("user", help="SCRAM-SHA-256 users: create, delete, list, "
                                                "passwd")
    commands = parser.add_subparsers(dest="user_command", metavar="ACTION")
    commands.required = True
    for name, help_text, func in (("create", "create a user", _user_create),
                                  ("passwd", "change a user's password", _user_passwd)):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("name")
        command.add_argument("--password-stdin", action="store_true",
                             help="read the new password from the first line of stdin "
                                  f"(else {NEW_PASSWORD_ENV}, else a prompt)")
        command.add_argument("--iterations", type=int, default=None,
                             help="PBKDF2 iterations (default 16384; at least 4096)")
        _output_option(command)
        command.set_defaults(func=func)
    delete = commands.add_parser("delete", help="delete a user (its sessions end at once)")
    delete.add_argument("name")
    _output_option(delete)
    delete.set_defaults(func=_user_delete)
    listing = commands.add_parser("list", help="the cluster's users")
    _output_option(listing)
    listing.set_defaults(func=_user_list)


def _register_acls(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("acl", help="access control lists: add, remove, list")
    commands = parser.add_subparsers(dest="acl_command", metavar="ACTION")
    commands.required = True
    for name, help_text, func in (("add", "allow (or --deny) operations", _acl_add),
                                  ("remove", "remove ACLs (the same options as add)",
                                   _acl_remove)):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--principal", required=True,
                             help="User:NAME, User:* (every user) or Cert:SUBJECT")
        command.add_argument("--operation", action="append", required=True, choices=_OPERATIONS,
                             help="repeatable")
        _resource_options(command, required=True)
        command.add_argument("--prefixed", action="store_true",
                             help="the name is a prefix: every resource whose name starts "
                                  "with it")
        command.add_argument("--deny", action="store_true",
                             help="a DENY (wins over every allow)")
        _output_option(command)
        command.set_defaults(func=func)
    listing = commands.add_parser("list", help="the cluster's ACLs")
    listing.add_argument("--principal", default="")
    _resource_options(listing, required=False)
    _output_option(listing)
    listing.set_defaults(func=_acl_list)


def _resource_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--topic", metavar="NAME")
    group.add_argument("--group", metavar="NAME", help="a consumer group")
    group.add_argument("--queue", metavar="NAME")
    group.add_argument("--cluster", action="store_true", help="the cluster itself")


def _output_option(parser: argparse.ArgumentParser) -> None:
    from tidelog.client.cli_tables import add_output_option

    add_output_option(parser)


def _run(args: argparse.Namespace, action: Callable[[Any], None]) -> int:
    from tidelog.client import errors
    from tidelog.client.admin import Admin

    try:
        with Admin(args.bootstrap, security=args.security) as admin:
            action(admin)
    except errors.TidelogError as exc:
        from tidelog.client.cli_tables import fail

        return fail(args, exc)
    return 0


# -- users -------------------------------------------------------------------------------------


def _usage(args: argparse.Namespace, message: str) -> int:
    """A usage error in the common style (``tidelog user create: ...``, or the JSON error
    object with --output json); rc 2 as argparse's own usage errors."""
    from tidelog.client.cli_tables import fail

    return fail(args, message, 2)


def new_password(args: argparse.Namespace, *, stdin: Any = None) -> str:
    """--password-stdin, else TIDELOG_NEW_PASSWORD, else a prompt (twice; never echoed)."""
    stream = stdin if stdin is not None else sys.stdin
    if args.password_stdin:
        password = stream.readline().rstrip("\r\n")
    elif os.environ.get(NEW_PASSWORD_ENV):
        password = os.environ[NEW_PASSWORD_ENV]
    elif stream.isatty():
        password = getpass.getpass(f"new password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit(_usage(args, "the passwords differ"))
    else:
        raise SystemExit(_usage(args, f"give the new password with --password-stdin or "
                                      f"{NEW_PASSWORD_ENV} (stdin is not a terminal to "
                                      "prompt on)"))
    if not password:
        raise SystemExit(_usage(args, "the password must not be empty"))
    return password


def _user_create(args: argparse.Namespace) -> int:
    return _upsert(args, create=True)


def _user_passwd(args: argparse.Namespace) -> int:
    return _upsert(args, create=False)


def _upsert(args: argparse.Namespace, *, create: bool) -> int:
    password = new_password(args)
    extra = {} if args.iterations is None else {"iterations": args.iterations}
    verb = "created" if create else "password changed"

    def action(admin: Any) -> None:
        if create:
            admin.create_user(args.name, password, **extra)
        else:
            admin.change_password(args.name, password, **extra)
        _say(args, {"user": args.name, "result": verb}, f"user {args.name!r}: {verb}")

    return _run(args, action)


def _user_delete(args: argparse.Namespace) -> int:
    def action(admin: Any) -> None:
        admin.delete_user(args.name)
        _say(args, {"user": args.name, "result": "deleted"}, f"user {args.name!r}: deleted")

    return _run(args, action)


def _user_list(args: argparse.Namespace) -> int:
    def action(admin: Any) -> None:
        from tidelog.client.cli_tables import table

        users = admin.list_users()
        if args.output == "json":
            print(json.dumps([u.to_dict() for u in users]))
        elif not users:
            print("no users")
        else:
            print(table(["NAME", "MECHANISM", "ITERATIONS"],
                        [[u.name, u.mechanism, u.iterations] for u in users]))

    return _run(args, action)


# -- ACLs --------------------------------------------------------------------------------------


def _resource(args: argparse.Namespace) -> tuple[str, str]:
    if args.cluster:
        return "cluster", "cluster"
    for kind in ("topic", "group", "queue"):
        if getattr(args, kind):
            return kind, getattr(args, kind)
    return "", ""


def _entries(args: argparse.Namespace) -> list[Any]:
    from tidelog.client.security_admin import AclEntry

    resource_type, name = _resource(args)
    return [AclEntry(principal=args.principal, resource_type=resource_type, resource_name=name,
                     operation=operation, permission="deny" if args.deny else "allow",
                     pattern_type="prefixed" if args.prefixed else "literal")
            for operation in dict.fromkeys(args.operation)]


def _acl_add(args: argparse.Namespace) -> int:
    entries = _entries(args)

    def action(admin: Any) -> None:
        created = admin.create_acls(entries)
        _say(args, {"created": created, "acls": [e.to_dict() for e in entries]},
             f"added {created} ACL(s)" + ("" if created == len(entries) else
                                          f" ({len(entries) - created} already present)"))

    return _run(args, action)


def _acl_remove(args: argparse.Namespace) -> int:
    entries = _entries(args)

    def action(admin: Any) -> None:
        deleted = admin.delete_acls(entries)
        _say(args, {"deleted": deleted}, f"removed {deleted} ACL(s)" if deleted
             else "no such ACL (nothing removed)")

    return _run(args, action)


def _acl_list(args: argparse.Namespace) -> int:
    resource_type, name = _resource(args)

    def action(admin: Any) -> None:
        from tidelog.client.cli_tables import table

        acls = admin.list_acls(principal=args.principal, resource_type=resource_type,
                               resource_name=name)
        if args.output == "json":
            print(json.dumps([a.to_dict() for a in acls]))
        elif not acls:
            print("no ACLs")
        else:
            print(table(["PRINCIPAL", "PERMISSION", "OPERATION", "RESOURCE", "NAME", "PATTERN"],
                        [[a.principal, a.permission, a.operation, a.resource_type,
                          a.resource_name, a.pattern_type] for a in acls]))

    return _run(args, action)


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if args.output == "json" else text)
