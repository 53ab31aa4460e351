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

# (subcommand module, one line of help). The module's register() adds the real parser.
_COMMAND_MODULES: tuple[str, ...] = (
    "tidelog.node.cli",
    "tidelog.client.cli_demo",
    "tidelog.node.sim.cli",
    "tidelog.client.health_cli",
    "tidelog.client.cli_produce",
    "tidelog.client.cli_consume",
    "tidelog.client.cli_topic",
    "tidelog.chaos.cli",
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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
