"""Every file operation of the storage engine goes through the FileSystem seam (node/storage/fs.py).

If a module called `os.pwrite`, `open()` or `Path.unlink` directly, the simulator's power-loss
twin (SimFileSystem) would not see that operation, and a durability bug there would be invisible
to every simulated run. This scan keeps the seam whole: only fs.py may touch the real OS.
"""

from __future__ import annotations

import ast
from pathlib import Path

STORAGE = Path(__file__).resolve().parents[2] / "node" / "storage"
SEAM = "fs.py"
FORBIDDEN_MODULES = {"shutil", "glob", "tempfile", "io", "pathlib.Path.open"}
# os.* that are values, not operations (open flags).
OS_CONSTANT_PREFIXES = ("O_", "SEEK_")
# Path methods that touch the file system; calls of these on anything but a FileSystem object.
PATH_IO_METHODS = {"read_bytes", "write_bytes", "read_text", "write_text", "glob", "rglob",
                   "iterdir", "unlink", "mkdir", "rmdir", "touch", "stat", "lstat", "exists",
                   "is_dir", "is_file", "rename", "replace", "open", "chmod", "resolve",
                   "samefile", "symlink_to", "hardlink_to"}


def _receiver_is_a_file_system(node: ast.expr) -> bool:
    """`fs.x(...)`, `self.fs.x(...)`, `segment.fs.x(...)`: calls through the seam."""
    if isinstance(node, ast.Name):
        return node.id == "fs"
    return isinstance(node, ast.Attribute) and node.attr in ("fs", "_fs")


def _violations(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.module in FORBIDDEN_MODULES or node.module == "os":
                found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "os" and not node.attr.startswith(OS_CONSTANT_PREFIXES):
            found.append((node.lineno, f"os.{node.attr}"))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append((node.lineno, "open()"))
            elif isinstance(func, ast.Attribute) and func.attr in PATH_IO_METHODS \
                    and not _receiver_is_a_file_system(func.value):
                found.append((node.lineno, f".{func.attr}()"))
    return sorted(found)


def test_only_the_seam_touches_the_operating_system() -> None:
    modules = sorted(STORAGE.glob("*.py"))
    assert len(modules) >= 10 and (STORAGE / SEAM).exists()
    offenders = [f"{path.name}:{line}: {what}" for path in modules if path.name != SEAM
                 for line, what in _violations(path.read_text())]
    assert not offenders, "file I/O outside node/storage/fs.py:\n" + "\n".join(offenders)


def test_the_scan_finds_each_kind_of_direct_io() -> None:
    """The check itself can fail: each forbidden form is caught, the seam's own calls are not."""
    bad = """
import shutil
import os
from os import fsync
def f(path, fd):
    os.pwrite(fd, b"", 0)
    os.path.exists(path)
    open(path, "rb")
    path.unlink()
    path.parent.glob("*.log")
    path.read_bytes()
    seg.path.stat()
"""
    kinds = [what for _, what in _violations(bad)]
    assert kinds == ["import shutil", "from os import ...", "os.pwrite", ".exists()", "os.path",
                     "open()",
                     ".unlink()", ".glob()", ".read_bytes()", ".stat()"]
    good = """
import os
def f(self, fs, path):
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    self.fs.unlink(path)
    segment.fs.replace(path, path)
    text.strip()
"""
    assert _violations(good) == []
