"""`tidelog storage migrate DIR`: offline tools for a stopped node's data directory.

Kept apart from tidelog.node.storage so that building the CLI parser imports no storage code."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    storage = subparsers.add_parser("storage", help="offline tools for a node's data directory",
                                    description="Offline tools for a stopped node's data.")
    actions = storage.add_subparsers(dest="storage_command", metavar="ACTION")
    actions.required = True
    migrate = actions.add_parser(
        "migrate", help="rewrite logs of batch format v1 as v2 (node stopped)",
        description="Rewrite every log below DIR written by batch format v1 (whose Raft term is "
                    "not checksummed) as format v2, segment by segment, crash-safely. Run it "
                    "with the node stopped; running it again is harmless. A v2 node refuses to "
                    "open a v1 log and names this command.")
    migrate.add_argument("dir", type=Path, help="a node's data directory, or one log directory")
    migrate.set_defaults(func=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from tidelog.node.storage.migrate import run_cli

    return run_cli(args.dir)
