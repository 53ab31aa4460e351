"""Repository hygiene that a fresh clone would otherwise trip over."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"proto": "tidelog.proto", "node": "tidelog.node", "client": "tidelog.client",
          "chaos": "tidelog.chaos"}


def _declared_packages() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_declared_for_the_wheel() -> None:
    """An explicit packages list silently drops a new subpackage from wheels; catch that here."""
    found = set()
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == _declared_packages()


def test_no_top_level_node_or_client_package() -> None:
    for name in ("node", "client", "chaos"):
        assert not (ROOT / f"{name}.py").exists()
    assert not (ROOT / "__init__.py").exists()


def test_node_never_imports_the_client_package() -> None:
    """The batch format belongs to neither side (tidelog.proto.batch); the node, storage included,
    must not depend on the client package."""
    offenders = []
    for path in (ROOT / "node").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("import tidelog.client", "from tidelog.client")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {stripped}")
    assert offenders == []
