"""Regenerate the Python code for proto/*.proto (`make proto`).

The .proto files are compiled with the virtual include path ``tidelog/proto=proto`` so that the
generated modules import each other as ``tidelog.proto.X_pb2``. `--check` compares instead of
writing; tests/test_proto_fresh.py uses it to fail when the committed code is stale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into out_dir; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted(PROTO_DIR.glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-Itidelog/proto={PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"tidelog/proto/{p.name}" for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return sorted((out_dir / "tidelog" / "proto").glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Names of generated files that differ from a fresh compile (or are missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    committed = {
        p.name: p.read_bytes()
        for p in PROTO_DIR.iterdir()
        if p.name.endswith(GENERATED_SUFFIXES)
    }
    names = sorted(set(fresh) | set(committed))
    return [n for n in names if fresh.get(n) != committed.get(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: proto/{name}")
        return 1 if stale else 0
    with tempfile.TemporaryDirectory() as tmp:
        for old in PROTO_DIR.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
        for path in generate(Path(tmp)):
            (PROTO_DIR / path.name).write_bytes(path.read_bytes())
            print(f"wrote proto/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
