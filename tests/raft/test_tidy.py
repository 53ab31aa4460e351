"""The Raft core is sans-I/O: no clocks, sockets, threads, files or global randomness."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE = sorted((ROOT / "node" / "raft").glob("*.py"))
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
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_imports_no_io(path: pathlib.Path) -> None:
    imported = _runtime_imports(ast.parse(path.read_text()))
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"


def test_raft_and_sim_packages_are_listed_in_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"tidelog.node.raft"' in text and '"tidelog.node.sim"' in text


def test_sim_cli_registers_the_sim_subcommand() -> None:
    from tidelog.client.cli import build_parser

    args = build_parser().parse_args(["sim", "--seed", "3"])
    assert args.seed == 3 and callable(args.func)
