"""Deleting a topic inside one real Node (this process, real files): a replica whose close fails
(a failed fsync at close is a StorageError, not an OSError) is reported and left on disk, and
nothing escapes the delete task as "Task exception was never retrieved" (issue 15).

The other half, that a plain delete on a real cluster logs no traceback, is
test_offsets_start_cluster.py::test_deleting_a_topic_logs_no_traceback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import pytest
from tidelog.node.config import NodeConfig
from tidelog.node.local_cluster import free_ports
from tidelog.node.server import Node
from tidelog.node.storage import PartitionLog, StorageError
from tidelog.proto import broker_pb2 as pb

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path: Path) -> NodeConfig:
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    return NodeConfig(node_id=1, listen=address, advertise=address, peers={1: address},
                      data_dir=tmp_path / "node-1", tick_ms=20)


async def _until(predicate: Any, timeout_s: float = 20.0) -> None:  # noqa: ANN401
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_replica_whose_close_fails_is_reported_and_no_task_exception_escapes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    unhandled: list[dict[str, Any]] = []

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        node = Node(_config(tmp_path))
        await node.start()
        try:
            await _until(lambda: node.metadata.leader_id == 1)
            created = await node.api.create_topics(pb.CreateTopicsRequest(
                topics=[pb.TopicSpec(name="doomed", partitions=1, replication_factor=1)]))
            assert created.results[0].error == pb.NONE
            await _until(lambda: len(node.replicas.partitions) == 1)
            original = PartitionLog.close

            def failing_close(log: PartitionLog) -> None:
                original(log)
                if log.directory.name.startswith("doomed-"):
                    raise StorageError(f"fsync of {log.directory} failed at close: EIO")

            monkeypatch.setattr(PartitionLog, "close", failing_close)
            deleted = await node.api.delete_topics(pb.DeleteTopicsRequest(topics=["doomed"]))
            assert deleted.results[0].error == pb.NONE
            await _until(lambda: "could not delete replica" in caplog.text)
            await asyncio.sleep(0.1)
            gc.collect()  # an unretrieved task exception is reported when the task is collected
            await asyncio.sleep(0)
        finally:
            await node.stop(graceful=False)

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert unhandled == []
    assert "failed at close: EIO" in caplog.text
    assert "Task exception was never retrieved" not in caplog.text
