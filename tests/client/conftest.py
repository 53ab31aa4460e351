"""Fixtures for the client's integration tests.

The `cluster` fixture (real node processes) lives in tests/conftest.py; until it exists, or
where it cannot run, the integration tests skip instead of erroring.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def live_cluster(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("cluster")
    except pytest.FixtureLookupError:
        pytest.skip("no `cluster` fixture yet (tests/conftest.py): needs the real broker")


@pytest.fixture
def topic_name() -> str:
    return f"it-{uuid.uuid4().hex[:8]}"


class CuttingProxy:
    """A TCP proxy that can drop the reply to one request.

    ``arm(n)``: once at least n more bytes went from the client to the server (the request), stop
    forwarding the server's replies and, after `hold_s`, cut both connections: the server has the
    request, the client never sees the answer (what a crash of the network path looks like)."""

    def __init__(self, target: str, hold_s: float = 0.5) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._hold_s = hold_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._armed_bytes: int | None = None
        self._cutting = False
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, request_bytes: int) -> None:
        with self._lock:
            self._armed_bytes = request_bytes

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in list(self._sockets):
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if upstream and self._armed_bytes is not None:
                        self._armed_bytes -= len(data)
                        if self._armed_bytes <= 0:
                            self._armed_bytes = None
                            self._cutting = True
                            threading.Thread(target=self._cut, args=(src, dst),
                                             daemon=True).start()
                    drop = self._cutting and not upstream
                if not drop:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def _cut(self, a: socket.socket, b: socket.socket) -> None:
        time.sleep(self._hold_s)
        for s in list(self._sockets):
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._sockets.clear()
        with self._lock:
            self._cutting = False
            self.cuts += 1


@pytest.fixture
def cutting_proxy() -> Iterator[type[CuttingProxy]]:
    made: list[CuttingProxy] = []

    def make(target: str, hold_s: float = 0.5) -> CuttingProxy:
        proxy = CuttingProxy(target, hold_s)
        made.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in made:
        proxy.close()
