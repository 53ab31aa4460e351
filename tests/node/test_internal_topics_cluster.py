"""Internal topics belong to the cluster: clients cannot create, delete, alter or write them.

Against real node processes: `__consumer_offsets` exists after the first FindCoordinator; every
client-API route that could damage it is refused with POLICY_VIOLATION, and it is still there,
unchanged, afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.proto import broker_pb2 as pb

from .wire import batch_of, error_detail, stub

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

OFFSETS = "__consumer_offsets"


def _offsets_topic(address: str) -> pb.TopicMetadata:
    answer = metadata(address, [OFFSETS])
    return answer.topics[0]


def test_internal_topics_cannot_be_touched_through_the_client_api(cluster: LocalCluster) -> None:
    address = cluster.nodes[0].address
    broker = stub(address)
    for _ in range(100):  # the first FindCoordinator creates the offsets topic
        try:
            broker.FindCoordinator(pb.FindCoordinatorRequest(group_id="g"), timeout=10)
            break
        except grpc.RpcError:
            time.sleep(0.2)
    before = _offsets_topic(address)
    assert before.error == pb.NONE and before.internal

    deleted = broker.DeleteTopics(pb.DeleteTopicsRequest(topics=[OFFSETS]), timeout=10)
    assert deleted.results[0].error == pb.POLICY_VIOLATION
    assert "internal" in deleted.results[0].error_message

    with pytest.raises(grpc.RpcError) as altered:
        broker.AlterConfigs(pb.AlterConfigsRequest(topic=OFFSETS, set={"retention.ms": "1"}),
                            timeout=10)
    assert error_detail(altered.value).code == pb.POLICY_VIOLATION

    with pytest.raises(grpc.RpcError) as written:
        broker.Produce(pb.ProduceRequest(topic=OFFSETS, partition=0,
                                         batches=batch_of([b"junk"])), timeout=10)
    assert error_detail(written.value).code == pb.POLICY_VIOLATION

    # Every internal name, existing or not, and a validate-only alter: refused before anything
    # is proposed (the check does not depend on the caller, so a super user is refused too).
    for name in ("__queue_state", "__metadata", "__consumer_offsets"):
        refused = broker.DeleteTopics(pb.DeleteTopicsRequest(topics=[name]), timeout=10)
        assert refused.results[0].error == pb.POLICY_VIOLATION, name
    with pytest.raises(grpc.RpcError) as checked:
        broker.AlterConfigs(pb.AlterConfigsRequest(topic="__queue_state", validate_only=True,
                                                   set={"retention.ms": "1"}), timeout=10)
    assert error_detail(checked.value).code == pb.POLICY_VIOLATION

    # What a CLI user sees: a non-zero exit and the reason.
    for args in (["delete", OFFSETS], ["alter", OFFSETS, "--config", "retention.ms=1"]):
        cli = subprocess.run([sys.executable, "-m", "tidelog.client.cli", "--bootstrap", address,
                              "topic", *args], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 1 and "internal topics" in cli.stderr, (args, cli.stderr)

    created = broker.CreateTopics(pb.CreateTopicsRequest(topics=[
        pb.TopicSpec(name="__mine", partitions=1, replication_factor=1)]), timeout=10)
    assert created.results[0].error == pb.POLICY_VIOLATION

    after = _offsets_topic(address)
    assert after.error == pb.NONE
    assert len(after.partitions) == len(before.partitions)
    assert dict(after.configs) == dict(before.configs)
    assert all(t.name != "__mine" for t in metadata(address, []).topics)
