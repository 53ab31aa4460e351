"""The `tidelog` command: one entry point, subcommands registered by the package that owns them.

Each subcommand module exposes ``register(subparsers)``; it adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). Modules are imported lazily only
for the command that runs, so `tidelog --help` stays fast and the client does not import the node.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tidelog.client.errors import ConfigError
from tidelog.client.security import ClientSecurity

# Modules whose register() adds their subcommands. A module that fails to import is reported
# (when parsing fails) instead of breaking every other command.
_COMMAND_MODULES: tuple[str, ...] = (
    "tidelog.node.cli",
    "tidelog.node.storage_cli",
    "tidelog.client.cli_demo",
    "tidelog.node.sim.cli",
    "tidelog.client.health_cli",
    "tidelog.client.cli_produce",
    "tidelog.client.cli_consume",
    "tidelog.client.cli_topic",
    "tidelog.client.cli_group",
    "tidelog.client.cli_queue",
    "tidelog.chaos.cli",
    "tidelog.client.cli_certs",  # tidelog certs dev
    "tidelog.client.cli_security",  # tidelog user ..., tidelog acl ...
    "tidelog.client.cli_quota",  # tidelog quota ...
    "tidelog.node.keyring_cli",  # tidelog keyring ... (encryption at rest)
    "tidelog.client.cli_top",  # tidelog top (live view)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidelog",
        description="Tidelog: a distributed, replicated message log.",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("TIDELOG_BOOTSTRAP", "127.0.0.1:9091"),
        help="HOST:PORT[,HOST:PORT...] of any nodes (env TIDELOG_BOOTSTRAP; default %(default)s)",
    )
    security = parser.add_argument_group(
        "security (docs/security.md; each flag also as its TIDELOG_* variable)")
    security.add_argument("--tls-ca", default=os.environ.get("TIDELOG_TLS_CA", ""),
                          help="verify the nodes against this CA (PEM); turns TLS on")
    security.add_argument("--tls-cert", default=os.environ.get("TIDELOG_TLS_CERT", ""),
                          help="client certificate for mTLS (PEM, with --tls-key)")
    security.add_argument("--tls-key", default=os.environ.get("TIDELOG_TLS_KEY", ""),
                          help="the client certificate's private key (PEM)")
    security.add_argument("--user", default=os.environ.get("TIDELOG_USER", ""),
                          help="log in as this SCRAM-SHA-256 user")
    security.add_argument("--password", default=os.environ.get("TIDELOG_PASSWORD", ""),
                          help="the user's password (prefer TIDELOG_PASSWORD: flags show in ps)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMAND_MODULES:
        try:
            importlib.import_module(module_name).register(subparsers)
        except Exception as exc:  # one broken command must not take the others (health!) down
            _broken.append(f"{module_name}: {type(exc).__name__}: {exc}")
    return parser


_broken: list[str] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        _take_trailing_values(parser, args, extras)
    except SystemExit:
        for problem in _broken:
            print(f"tidelog: a command could not be loaded: {problem}", file=sys.stderr)
        raise
    try:
        args.security = client_security(args)
    except ConfigError as exc:
        print(f"tidelog: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def _take_trailing_values(parser: argparse.ArgumentParser, args: argparse.Namespace,
                          extras: list[str]) -> None:
    """argparse stops filling a `VALUE ...` positional at the first option, so `queue send jobs
    --key k hello` left "hello" unrecognized. A command that sets `trailing_values` (the name of
    its list) takes the plain words after its options too; anything else is still an error."""
    if not extras:
        return
    field = getattr(args, "trailing_values", None)
    if field is None or any(e.startswith("-") for e in extras):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    getattr(args, field).extend(extras)


def client_security(args: argparse.Namespace) -> ClientSecurity | None:
    """The global --tls-*/--user/--password flags (or their TIDELOG_* twins) as one
    ClientSecurity, or None for a plaintext, anonymous client."""
    def path(value: str) -> Path | None:
        return Path(value) if value else None

    security = ClientSecurity(
        tls_ca=path(args.tls_ca), tls_cert=path(args.tls_cert), tls_key=path(args.tls_key),
        tls_server_name=os.environ.get("TIDELOG_TLS_SERVER_NAME", ""),
        username=args.user, password=args.password)
    return None if security == ClientSecurity() else security


if __name__ == "__main__":
    sys.exit(main())

