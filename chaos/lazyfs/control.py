"""The control socket: how the harness cuts power to a mounted LazyFS (outside the mount).

One request per connection: a line in, one JSON line out. Requests:

    ping             -> {"ok": true}
    stats            -> {"ok": true, "writes": ..., "pending_bytes": ..., ...}
    sync             -> every pending write and name change made durable (sync(2))
    cut              -> drop everything not durable; the reply is a `CutReport`
    cut torn SEED    -> the same, but each file keeps a seeded prefix of its dirty 4 KiB pages

A unix socket rather than a command file: the reply says the cut is complete before the harness
restarts the node, and carries what was dropped.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

__all__ = ["ControlError", "request", "serve"]

REQUEST_BYTES_MAX = 256
TIMEOUT_S = 30.0


class ControlError(RuntimeError):
    """The file system refused or failed a control request (the message says why)."""


def request(socket_path: Path, line: str, *, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Send one request; returns the reply, or raises ControlError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(socket_path))
        s.sendall(line.encode() + b"\n")
        chunks = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"bad reply to {line!r} from {socket_path}: {exc}") from None
    if not reply.get("ok"):
        raise ControlError(f"{line!r} failed: {reply.get('error')}")
    return reply


def serve(socket_path: Path, ops: Any) -> socketserver.BaseServer:
    """Serve `ops` (a LazyOperations) on `socket_path` from a daemon thread."""
    with_path = Path(socket_path)
    if with_path.exists():
        with_path.unlink()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline(REQUEST_BYTES_MAX).decode(errors="replace").split()
            try:
                reply = {"ok": True, **_dispatch(ops, line)}
            except Exception as exc:  # reported to the caller, the file system goes on
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    server = socketserver.ThreadingUnixStreamServer(str(with_path), Handler)
    server.daemon_threads = True
    os.chmod(with_path, 0o600)
    threading.Thread(target=server.serve_forever, name="lazyfs-control", daemon=True).start()
    return server


def _dispatch(ops: Any, words: list[str]) -> dict[str, Any]:
    match words:
        case ["ping"]:
            return {}
        case ["stats"]:
            return ops.stats()
        case ["sync"]:
            ops.sync_all()
            return {}
        case ["cut"]:
            return ops.power_cut().as_dict()
        case ["cut", "torn", seed] if seed.isdigit():
            return ops.power_cut(torn_seed=int(seed)).as_dict()
    raise ValueError(f"unknown request {' '.join(words)!r} (ping, stats, sync, cut, "
                     "cut torn SEED)")
