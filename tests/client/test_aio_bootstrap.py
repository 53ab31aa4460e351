"""AioMetadata follows the sync Metadata's call_any rules (client/metadata.py, shared, not
copied): a bootstrap nobody answers at fails fast with ClusterUnreachable after
bootstrap_timeout_s, with INFO retry lines on the ``tidelog.client`` logger meanwhile, and a
node that timed out is asked last. Real sockets, no cluster: one address refuses connections,
one accepts TCP and never speaks HTTP/2 (a paused node)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from tidelog.client import errors
from tidelog.client.aio.connection import AioConnections
from tidelog.client.aio.metadata import AioMetadata

pytestmark = pytest.mark.timeout(60)


def test_a_dead_bootstrap_fails_fast_and_the_silent_node_is_asked_last(
        caplog: pytest.LogCaptureFixture) -> None:
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts TCP, never answers: the call waits for its deadline
    silent_address, refused_address = (f"127.0.0.1:{s.getsockname()[1]}"
                                       for s in (silent, refused))
    caplog.set_level(logging.INFO, logger="tidelog.client")

    async def run() -> tuple[float, errors.TidelogError, list[str]]:
        connections = AioConnections()
        metadata = AioMetadata(connections, (silent_address, refused_address),
                               request_timeout_ms=30_000, max_age_ms=300_000,
                               retry_backoff_ms=100, bootstrap_timeout_s=1.0)
        started = time.monotonic()
        try:
            # topic_async retries a retriable failure for 20 s: only the bootstrap rule stops it
            await metadata.topic_async("anything", timeout_s=20.0)
        except errors.TidelogError as exc:
            return time.monotonic() - started, exc, metadata._candidates()
        finally:
            await connections.close()
        raise AssertionError("a dead bootstrap answered")

    try:
        elapsed, error, order = asyncio.run(run())
    finally:
        refused.close()
        silent.close()
    print(f"dead bootstrap failed after {elapsed:.2f} s: {error}; candidates then: {order}")
    assert isinstance(error, errors.ClusterUnreachable), error
    assert not error.retriable
    assert 1.0 <= elapsed < 1.0 + 2.0, elapsed
    assert silent_address in str(error) and refused_address in str(error)
    assert "bootstrap_timeout_s=1" in str(error)
    assert order == [refused_address, silent_address]  # the one that timed out goes last
    retries = [r for r in caplog.records if r.name == "tidelog.client"
               and r.levelno == logging.INFO and "retry" in r.getMessage()]
    assert retries, [r.getMessage() for r in caplog.records]
