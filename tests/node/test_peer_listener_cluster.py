"""Issue 11, defect 13 against real node processes: one request used to stop the cluster.

`Cluster.ProposeMetadata` was served on the client port and proposed whatever bytes it got; the
malformed command then failed to apply on every node and stopped every metadata replica (and
again at every restart). Now peer-only RPCs live on a peer listener of their own, every command
is validated before it is proposed, and Raft streams must come from a member.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import cluster_pb2 as cpb
from tidelog.proto import cluster_pb2_grpc

from .wire import create_topic

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

MALFORMED = [b'{"op":"create_topic"}', b"not json", b'{"op":"register_node","node_id":"1"}']


def cluster_stub(address: str) -> cluster_pb2_grpc.ClusterStub:
    return cluster_pb2_grpc.ClusterStub(grpc.insecure_channel(address))


def replicas_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tidelog.v1.Replicas"), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_malformed_metadata_commands_are_refused_and_the_cluster_keeps_working(
        cluster: LocalCluster) -> None:
    address = cluster.nodes[0].address
    assert create_topic(address, "before", 1).results[0].error == pb.NONE
    for node in cluster.nodes:
        # Not on the client port at all any more.
        with pytest.raises(grpc.RpcError) as info:
            cluster_stub(node.address).ProposeMetadata(
                cpb.ProposeMetadataRequest(command=MALFORMED[0], timeout_ms=3000), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # On the peer port, refused before it is proposed, by leader and followers alike.
        for command in MALFORMED:
            with pytest.raises(grpc.RpcError) as info:
                cluster_stub(node.peer_address).ProposeMetadata(
                    cpb.ProposeMetadataRequest(command=command, timeout_ms=3000), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "invalid metadata command" in (info.value.details() or "")
    assert create_topic(address, "after", 1).results[0].error == pb.NONE
    assert all(replicas_serving(n.address) for n in cluster.nodes)
    # Every node restarts and replays its metadata log.
    cluster.stop()
    cluster.start()
    cluster.wait_healthy(timeout_s=60)
    assert create_topic(address, "after-restart", 1).results[0].error == pb.NONE
    assert all(replicas_serving(n.address) for n in cluster.nodes)


def test_a_raft_stream_from_a_stranger_or_a_changed_sender_is_refused(
        cluster: LocalCluster) -> None:
    peer = cluster.nodes[0].peer_address
    with pytest.raises(grpc.RpcError) as info:
        cluster_stub(peer).Exchange(iter([cpb.RaftBatch(from_node=42)]), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        cluster_stub(peer).Exchange(iter([cpb.RaftBatch(from_node=1)]), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # itself is no peer
    with pytest.raises(grpc.RpcError) as info:
        cluster_stub(peer).Exchange(iter([cpb.RaftBatch(from_node=2), cpb.RaftBatch(from_node=3)]),
                                    timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert create_topic(cluster.nodes[0].address, "still", 1).results[0].error == pb.NONE
    assert all(replicas_serving(n.address) for n in cluster.nodes)
