"""The wheel a user installs with `pip install .`: everything under tidelog/, nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_wheel_holds_every_package_under_tidelog_only(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tidelog-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert all(t == "tidelog" or t.endswith(".dist-info") for t in top), top
    for folder, package in (("node", "tidelog/node"), ("client", "tidelog/client"),
                            ("chaos", "tidelog/chaos"), ("proto", "tidelog/proto")):
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{relative}" in names, f"{package}/{relative} missing from wheel"
    assert "tidelog/proto/broker.proto" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "tidelog = tidelog.client.cli:main" in text
