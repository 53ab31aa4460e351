"""Options of the Raft core tests."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-transcripts",
        action="store_true",
        help="rewrite tests/raft/transcripts/*.txt with the output the core prints now "
        "(same as TIDELOG_REGEN_TRANSCRIPTS=1); review the diff before committing",
    )
