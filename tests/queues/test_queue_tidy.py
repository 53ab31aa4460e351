"""The queue core is sans-I/O: no clocks, sockets, threads, files or global randomness."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE_NAMES = ("core", "config", "model", "backoff", "deltas", "state_log", "dlq_ledger",
              "recent_acks", "part", "core_snapshot", "core_apply")
CORE = [ROOT / "node" / "queues" / f"{name}.py" for name in CORE_NAMES]
ALLOWED = {"tidelog.node.queues", "tidelog.node.groups.assignors",
           *(f"tidelog.node.queues.{name}" for name in CORE_NAMES)}
FORBIDDEN = {"asyncio", "grpc", "time", "os", "socket", "threading", "random", "subprocess", "io"}


def _runtime_imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []  # imports for type annotations only are fine
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("tidelog."):
                names.add(node.module)
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_queue_core_module_imports_no_io(path: pathlib.Path) -> None:
    imported = _runtime_imports(ast.parse(path.read_text()))
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"
    shell = {m for m in imported if m.startswith("tidelog.") and m not in ALLOWED}
    assert not shell, f"{path.name} imports outside the core: {sorted(shell)}"


def test_the_tidy_check_catches_a_clock_import() -> None:
    """The scan itself works: a module that imports time is caught."""
    tree = ast.parse("import json\nfrom time import monotonic\n")
    assert _runtime_imports(tree) & FORBIDDEN == {"time"}
