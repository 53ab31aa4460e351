"""One output style for every `tidelog` admin command: a table for people, JSON for scripts.

Tables (node/tables.py, shared with the node-side commands): a header of upper-case names
(spaces become '-'), columns left-aligned and separated by two spaces, no rule, no trailing
blanks; an unknown value (None) is shown as '-'. This is rpk's
and kafka-topics' plain style: it pipes through `grep`/`awk`/`column` unharmed (a rich table's
box characters do not), which is why rich is kept for the live `tidelog top` screen only.

JSON (`--output json`): one document on one line of stdout; a `list` command prints a JSON array of
objects (one per row, the same fields as the table's columns in snake_case, never pre-formatted
text), a `describe`/`status` command one JSON object. Numbers stay numbers and an unknown value
is null, so `jq '.[] | select(.lag > 100)'` works. A failure with --output json is one object
`{"error": {"type", "code", "message"}}` on stderr (`fail`), as `queue` and the cluster probe do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from tidelog.node.tables import OUTPUT_CHOICES, add_output_option, cell, render_table

__all__ = ["OUTPUT_CHOICES", "add_output_option", "cell", "emit", "fail", "table", "to_json",
           "wants_json"]


def wants_json(args: argparse.Namespace) -> bool:
    return getattr(args, "output", "table") == "json"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The table, as one string (no final newline); the style is node/tables.py's."""
    return render_table(header, rows)


def to_json(document: Any) -> str:
    return json.dumps(document)


def emit(args: argparse.Namespace, document: Any, text: str) -> None:
    """Print `document` as JSON with --output json, else the human `text`."""
    print(to_json(document) if wants_json(args) else text)


def fail(args: argparse.Namespace, problem: BaseException | str, rc: int = 1) -> int:
    """Report a failure and return `rc`: with --output json one object
    ``{"error": {"type", "code", "message"}}`` on stderr (what `queue` and the cluster probe
    print), else the ``tidelog COMMAND: message`` line (tidelog.client.cli_common)."""
    from tidelog.client import cli_common

    message = problem if isinstance(problem, str) else str(problem)
    if wants_json(args):
        kind = "UsageError" if isinstance(problem, str) else type(problem).__name__
        print(json.dumps({"error": {"type": kind, "code": int(getattr(problem, "code", 0) or 0),
                                    "message": message}}), file=sys.stderr, flush=True)
        return rc
    return cli_common.fail(args, message, rc)
