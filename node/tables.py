"""The one table style of every `tidelog` command (tidelog.client.cli_tables uses it; it lives
here because the node-side commands, `cluster status` among them, must not import the client).

A header of upper-case names (spaces become '-'), columns left-aligned and separated by two
spaces, no rule, no trailing blanks; an unknown value (None) is shown as '-'.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

OUTPUT_CHOICES = ("table", "json")


def _output_format(text: str) -> str:
    """'text' is the table's older name (group, queue, quota, user, acl and keyring had it)."""
    return "table" if text == "text" else text


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """`--output table|json` (default table; `text` is accepted for table)."""
    parser.add_argument("--output", type=_output_format, choices=OUTPUT_CHOICES,
                        default="table",
                        help="table (default; 'text' is the same) or json: an array of "
                             "objects for a list, one object for describe/status")


def cell(value: object) -> str:
    return "-" if value is None else str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    names = [str(h).upper().replace(" ", "-") for h in headers]
    cells = [names] + [[cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)
