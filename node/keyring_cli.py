"""`tidelog keyring create|rotate|list FILE`: the file keyring of encryption at rest.

The keyring (node/security/keyring.py) holds every key a node needs to read its data; the
newest is the one new writes use. `create` makes a keyring with one key (mode 0600, refuses to
overwrite), `rotate` adds a key that becomes current (older ones stay: their data is still on
disk), `list` shows ids, creation times and fingerprints, never the keys. A running node picks
up a rotation within about a second. docs/security.md "Encryption at rest" says how to use it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


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
        sub.add_argument("--output", choices=("text", "json"), default="text",
                         help="text (default) or one JSON object")
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
    keys = [{"id": e.key_id, "created_ms": e.created_ms, "fingerprint": e.fingerprint,
             "current": e.key_id == current} for e in entries]
    lines = [f"{'ID':>6}  {'CREATED (UTC)':<20}  FINGERPRINT"]
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(k["created_ms"]) / 1000))
        lines.append(f"{k['id']:>6}  {created:<20}  {k['fingerprint']}"
                     + ("  (current)" if k["current"] else ""))
    return _say(args, {"file": str(args.file), "current_key_id": current, "keys": keys},
                "\n".join(lines))


def _say(args: argparse.Namespace, doc: dict[str, object], text: str) -> int:
    print(json.dumps(doc) if args.output == "json" else text)
    return 0


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    if args.output == "json":
        print(json.dumps({"error": str(exc)}))
    print(f"tidelog keyring: {exc}", file=sys.stderr)
    return 1
