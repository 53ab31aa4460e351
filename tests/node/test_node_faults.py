"""Who is at fault, inside one real Node (in this process, on real files and real ports).

Issue 11, defect 12: a local storage error while stepping a Raft message was logged as "malformed
raft message" and the replica went on with a half-updated core. Defect 13: a metadata command that
does not apply stopped the metadata replica (and again at every restart).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
from tidelog.node.config import NodeConfig
from tidelog.node.local_cluster import free_ports
from tidelog.node.raft import Message, MessageType, NodeId, RemoteProtocolError, Term
from tidelog.node.raft_wire import to_wire
from tidelog.node.server import METADATA_GROUP, Node
from tidelog.node.storage import CorruptLogError
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto import cluster_pb2 as cpb

from .wire import batch_of

pytestmark = pytest.mark.timeout(120)


def config(tmp_path: Path, peers: int) -> NodeConfig:
    ports = free_ports(peers)
    return NodeConfig(node_id=1, listen=f"127.0.0.1:{ports[0]}",
                      advertise=f"127.0.0.1:{ports[0]}",
                      peers={i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)},
                      data_dir=tmp_path / "node-1", tick_ms=20)


async def wait_for(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def append_from(frm: int, term: int) -> cpb.RaftBatch:
    message = Message(type=MessageType.APPEND, frm=NodeId(frm), to=NodeId(1), term=Term(term))
    return cpb.RaftBatch(from_node=frm, messages=[to_wire(METADATA_GROUP, message)])


def test_a_local_storage_error_while_stepping_stops_the_replica_with_the_real_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Nodes 2 and 3 never start: node 1 follows whatever they send. Its own log then fails a
    read (a real CorruptLogError raised by the log it reads) in the middle of the step."""

    async def run() -> None:
        node = Node(config(tmp_path, 3))
        await node.start()
        try:
            assert node.metadata.replica is not None
            replica = node.metadata.replica

            intact = replica.raft_log.term_at
            armed = False

            def damaged(index: int) -> int | None:
                if armed:
                    raise CorruptLogError(f"checksum mismatch reading the entry at {index}")
                return intact(index)

            monkeypatch.setattr(replica.raft_log, "term_at", damaged)
            armed = True  # only while the message is stepped (receive_raft does not await)
            node.replicas.receive_raft(append_from(2, term=5))
            armed = False
            assert isinstance(replica.error, CorruptLogError)
            tick_term = replica.core.term
            await asyncio.sleep(0.3)  # the stopped replica takes no more ticks or messages
            node.replicas.receive_raft(append_from(2, term=9))
            assert replica.core.term == tick_term
        finally:
            await node.stop(graceful=False)

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    text = caplog.text
    assert "malformed" not in text
    # Stopped with the real reason (by the Replica itself or by the Node, whichever sees it).
    assert "stopped" in text and "checksum mismatch reading the entry" in text


def test_any_other_local_failure_while_stepping_stops_only_that_replica(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Not a storage error (those the Replica handles itself): a broken invariant inside the
    core while it steps a valid message. The node stops that replica, names the real cause,
    and does not call the message malformed."""

    async def run() -> None:
        node = Node(config(tmp_path, 3))
        await node.start()
        try:
            replica = node.metadata.replica
            assert replica is not None

            def broken(message: Message) -> None:
                raise AssertionError("entry 7 conflicts with committed entry 7")

            monkeypatch.setattr(replica.core, "step", broken)
            node.replicas.receive_raft(append_from(2, term=5))
            assert isinstance(replica.error, AssertionError)
            assert node.replicas.stopped() == [METADATA_GROUP]
        finally:
            await node.stop(graceful=False)

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert "malformed" not in caplog.text
    assert "stopped by a local error while stepping append from node 2" in caplog.text
    assert "conflicts with committed entry" in caplog.text


def test_a_message_the_core_refuses_as_a_protocol_breach_is_dropped_not_fatal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """RemoteProtocolError means the core refused the message having changed nothing (seen for
    real: an acknowledgement of an offset that is not an entry boundary, from a follower that
    kept entries a power cut took from the majority under fsync=interval). The peer is at fault:
    the replica must keep serving, not stop for good as it did."""

    async def run() -> None:
        node = Node(config(tmp_path, 3))
        await node.start()
        try:
            replica = node.metadata.replica
            assert replica is not None
            real_step = replica.core.step

            def refusing(message: Message) -> None:
                if message.term == 5:
                    raise RemoteProtocolError("append_resp from 2 in term 5: acknowledges 142, "
                                              "which is not an entry boundary of our log")
                real_step(message)

            monkeypatch.setattr(replica.core, "step", refusing)
            node.replicas.receive_raft(append_from(2, term=5))
            assert replica.error is None and node.replicas.stopped() == []
            node.replicas.receive_raft(append_from(2, term=6))  # later messages still step
            assert replica.core.term == 6
        finally:
            await node.stop(graceful=False)

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert "breaks the protocol" in caplog.text and "not an entry boundary" in caplog.text
    assert "stopped" not in caplog.text


def test_a_malformed_raft_message_is_dropped_and_the_replica_keeps_going(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        node = Node(config(tmp_path, 3))
        await node.start()
        try:
            assert node.metadata.replica is not None
            bad = append_from(2, term=5)
            bad.messages[0].frm = 3  # claims another sender than its stream's
            node.replicas.receive_raft(bad)
            stranger = append_from(7, term=5)  # not a member of the group
            node.replicas.receive_raft(stranger)
            gap = append_from(2, term=5)
            gap.messages[0].entries.add(term=5, index=10, count=1, kind=cpb.ENTRY_NOOP)
            node.replicas.receive_raft(gap)
            assert node.metadata.replica.error is None
            assert node.metadata.replica.core.term == 0  # none of them reached the core
            node.replicas.receive_raft(append_from(2, term=5))  # a valid one still does
            assert node.metadata.replica.core.term == 5
        finally:
            await node.stop(graceful=False)

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert caplog.text.count("dropped a malformed raft message") == 3


def test_a_command_that_cannot_apply_is_rejected_on_commit_and_at_every_restart(
        tmp_path: Path) -> None:
    """Planted bug: a proposer that skips validation (the old ProposeMetadata) puts garbage in
    the metadata log. Apply records a rejected result; the replica keeps serving, also after a
    restart replays the log."""
    cfg = config(tmp_path, 1)

    async def first_run() -> dict:
        node = Node(cfg)
        await node.start()
        try:
            assert node.metadata.replica is not None
            await wait_for(lambda: node.metadata.replica.is_leader)
            results = [await node.metadata.propose_here(raw, 5.0) for raw in (
                b'{"op":"create_topic"}', b"not json", b'{"op":"register_node","node_id":"x"}')]
            for result in results:
                assert result["error"] == "InvalidRequestError", result
            assert node.metadata.replica.error is None
            created = await node.api.create_topics(_create("after"))
            assert created.results[0].error == 0
            return {"topics": sorted(node.state.topics), "applied": node.state.applied_index}
        finally:
            await node.stop(graceful=False)

    async def second_run() -> dict:
        node = Node(cfg)
        await node.start()
        try:
            assert node.metadata.replica is not None and node.metadata.replica.error is None
            return {"topics": sorted(node.state.topics), "applied": node.state.applied_index}
        finally:
            await node.stop(graceful=False)

    before = asyncio.run(first_run())
    after = asyncio.run(second_run())
    assert before["topics"] == after["topics"] == ["after"]
    assert after["applied"] >= before["applied"]


def _create(name: str) -> pb.CreateTopicsRequest:
    return pb.CreateTopicsRequest(topics=[pb.TopicSpec(name=name, partitions=1,
                                                       replication_factor=1)])


def test_a_local_storage_failure_is_answered_as_storage_error_not_as_a_bad_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CorruptLogError is also a ValueError; the servicer used to answer it INVALID_ARGUMENT
    ("invalid request"), blaming the caller for our disk."""
    cfg = config(tmp_path, 1)

    async def run() -> None:
        node = Node(cfg)
        await node.start()
        try:
            await wait_for(lambda: node.metadata.replica.is_leader)
            await node.api.create_topics(_create("t"))
            await wait_for(lambda: any(r.is_leader for r in node.replicas.partitions.values()))
            replica = next(iter(node.replicas.partitions.values()))
            async with grpc.aio.insecure_channel(cfg.listen) as channel:
                broker = broker_pb2_grpc.BrokerStub(channel)
                await broker.Produce(pb.ProduceRequest(topic="t", partition=0,
                                                       batches=batch_of([b"x"])), timeout=10)

                def damaged(*args: object) -> None:
                    raise CorruptLogError("checksum mismatch in segment 0 at position 0")

                monkeypatch.setattr(replica.log, "offset_for_timestamp", damaged)
                reply = await broker.ListOffsets(pb.ListOffsetsRequest(partitions=[
                    pb.ListOffsetsPartition(topic="t", partition=0, spec=pb.TIMESTAMP,
                                            timestamp_ms=0)]), timeout=10)
                assert reply.results[0].error == pb.STORAGE_ERROR
                monkeypatch.setattr(node.api, "describe_configs", damaged)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await broker.DescribeConfigs(pb.DescribeConfigsRequest(), timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "storage failure" in (info.value.details() or "")
        finally:
            await node.stop(graceful=False)

    asyncio.run(run())
