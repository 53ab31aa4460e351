"""`tidelog keyring create|rotate|list FILE`: the file keyring of encryption at rest.

The keyring (node/security/keyring.py) holds every key a node needs to read its data; the
newest is the one new writes use. `create` makes a keyring with one key (mode 0600, refuses to
overwrite), `rotate` adds a key that becomes current (older ones stay: their data is still on
disk), `list` shows ids, creation times and fingerprints, never the keys: the common table of
node/tables.py, or with --output json an array of objects. A running node picks up a rotation
within about a second. docs/security.md "Encryption at rest" says how to use it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tidelog.node.tables import add_output_option, render_table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keyring", help="create, rotate, list the at-rest encryption keyring",
        description="Manage the keyring file of encryption at rest (tidelog node "
                    "--encryption-keyring FILE). Keys never leave the file; list shows "
                    "fingerprints only.")
    commands = parser.add_subparsers(dest="keyring_command", metavar="ACTION")
    commands.required = True
    for name, func, text in (
            ("create", _create, "make a new keyring with one key (mode 0600; refuses to "
                                "overwrite)"),
            ("rotate", _rotate, "add a new key that new writes use; older keys stay"),
            ("list", _list, "key ids, creation times, fingerprints; the current key marked")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("file", type=Path, metavar="FILE", help="the keyring file")
        add_output_option(sub)
        sub.set_defaults(func=func)


def _create(args: argparse.Namespace) -> int:
    from tidelog.node.security.keyring import KeyringError, create_keyring

    try:
        entry = create_keyring(args.file)
    except (KeyringError, OSError) as exc:
        return _fail(args, exc)
    return _say(args, {"file": str(args.file), "created_key_id": entry.key_id,
                       "fingerprint": entry.fingerprint},
                f"created keyring {args.file} with key id {entry.key_id} (fingerprint "
                f"{entry.fingerprint}); keep a copy somewhere safe: data written under its "
                "keys cannot be read without them")


def _rotate(args: argparse.Namespace) -> int:
    from tidelog.node.security.keyring import KeyringError, rotate_keyring

    try:
        entry = rotate_keyring(args.file)
    except (KeyringError, OSError) as exc:
        return _fail(args, exc)
    return _say(args, {"file": str(args.file), "current_key_id": entry.key_id,
                       "fingerprint": entry.fingerprint},
                f"added key id {entry.key_id} (fingerprint {entry.fingerprint}) to {args.file}; "
                "new writes use it, older keys stay for the data written under them. Give "
                "every node that uses this keyring the new file")


def _list(args: argparse.Namespace) -> int:
    from tidelog.node.security.keyring import KeyringError, load_keyring

    try:
        entries = load_keyring(args.file)
    except (KeyringError, OSError) as exc:
        return _fail(args, exc)
    current = entries[-1].key_id
    keys = [{"id": e.key_id, "created_ms": e.created_ms, "created": _utc(e.created_ms),
             "fingerprint": e.fingerprint, "current": e.key_id == current} for e in entries]
    if args.output == "json":  # a list: an array of objects, one per row (client/cli_tables.py)
        print(json.dumps(keys))
        return 0
    print(render_table(("id", "created utc", "fingerprint", "current"),
                       [(k["id"], k["created"], k["fingerprint"], "yes" if k["current"] else "")
                        for k in keys]))
    return 0


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _say(args: argparse.Namespace, doc: dict[str, object], text: str) -> int:
    print(json.dumps(doc) if args.output == "json" else text)
    return 0


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    if args.output == "json":  # the common JSON error object on stderr (client/cli_tables.py)
        print(json.dumps({"error": {"type": type(exc).__name__, "code": 0,
                                    "message": str(exc)}}), file=sys.stderr)
        return 1
    # The common prefix by hand (tidelog.client.cli_common's error_prefix; the node must not
    # import the client): "tidelog keyring create: ...", the action named.
    print(f"tidelog {getattr(args, 'command_path', 'keyring')}: {exc}", file=sys.stderr)
    return 1
