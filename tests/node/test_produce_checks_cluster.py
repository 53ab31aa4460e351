"""Issue 11, defects 14 and 15 against real node processes.

14: the broker trusted batch headers (a checksum-valid batch claiming 2^31 offsets was accepted),
unknown acks values and negative timeouts; a multi-batch produce could be half written.
15: InitProducerId always answered epoch 0 and a higher epoch silently reset the sequence, so a
zombie producer was never fenced.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import grpc
import pytest
import xxhash
from tidelog.client import Producer, errors
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto import broker_pb2 as pb
from tidelog.proto.batch import encode_batch

from tests.clusters import running_cluster

from .test_broker_cluster import expect_error, read_partition
from .wire import batch_of, create_topic, stub

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the module (no test stops a node): each test has its own topic and
    transactional id."""
    with running_cluster(tmp_path_factory.mktemp("produce-checks"), env={}) as running:
        yield running

LAST_OFFSET_DELTA_AT, RECORDS_CHECKSUM_AT, HEADER_CHECKSUM_AT, RECORDS_AT = 23, 61, 69, 77


def lying_batch() -> bytes:
    """1000 records claiming last_offset_delta 2^31-1, both checksums valid (docs/batch-format)."""
    out = bytearray(batch_of([b"r%d" % i for i in range(1000)]))
    struct.pack_into(">i", out, LAST_OFFSET_DELTA_AT, 2**31 - 1)
    struct.pack_into(">Q", out, RECORDS_CHECKSUM_AT,
                     xxhash.xxh3_64_intdigest(bytes(out[RECORDS_AT:])))
    struct.pack_into(">Q", out, HEADER_CHECKSUM_AT,
                     xxhash.xxh3_64_intdigest(bytes(out[:HEADER_CHECKSUM_AT])))
    return bytes(out)


def log_end(address: str, topic: str) -> int:
    reply = stub(address).Metadata(pb.MetadataRequest(topics=[topic]), timeout=10)
    return reply.topics[0].partitions[0].log_end_offset


def produce_raw(address: str, batches: bytes, **fields: int) -> pb.ProduceResponse:
    request = pb.ProduceRequest(topic="checked", partition=0, batches=batches, timeout_ms=10_000)
    for name, value in fields.items():
        setattr(request, name, value)
    return stub(address).Produce(request, timeout=15)


def test_lying_headers_bad_acks_and_timeouts_are_refused_and_nothing_is_half_written(
        cluster: LocalCluster) -> None:
    create_topic(cluster.nodes[0].address, "checked", partitions=1, rf=3)
    leader = cluster.node(cluster.settled_leader_of("checked", 0)).address
    produce_raw(leader, batch_of([b"first"]))
    end = log_end(leader, "checked")
    expect_error(lambda: produce_raw(leader, lying_batch()),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_BATCH)
    # All or nothing: a good batch followed by a bad one writes neither.
    expect_error(lambda: produce_raw(leader, batch_of([b"good"]) + lying_batch()),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_BATCH)
    old = encode_batch([(None, b"old", (), 0)])
    expect_error(lambda: produce_raw(leader, old),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_TIMESTAMP)
    expect_error(lambda: produce_raw(leader, batch_of([b"x"]), acks=7),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    expect_error(lambda: produce_raw(leader, batch_of([b"x"]), timeout_ms=-1),
                 grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    expect_error(lambda: stub(leader).Fetch(pb.FetchRequest(
        partitions=[pb.FetchPartition(topic="checked", partition=0, offset=0)],
        max_wait_ms=-5), timeout=10), grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST)
    assert log_end(leader, "checked") == end
    reply = produce_raw(leader, batch_of([b"a"]) + batch_of([b"b", b"c"]))
    assert reply.last_offset == reply.base_offset + 2
    # A fetch asking for 2 GiB is answered within the server's maximum, with every record.
    fetched = stub(leader).Fetch(pb.FetchRequest(
        partitions=[pb.FetchPartition(topic="checked", partition=0, offset=0,
                                      max_bytes=2**31 - 1)], max_bytes=2**31 - 1), timeout=10)
    assert fetched.partitions[0].error == pb.NONE
    values = read_partition(leader, "checked", 0)
    assert sorted(values.values()) == [b"a", b"b", b"c", b"first"]


def test_a_zombie_producer_is_fenced_by_its_successor(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap
    create_topic(cluster.nodes[0].address, "fenced", partitions=1, rf=3)
    zombie = Producer(bootstrap, transactional_id="orders", linger_ms=0)
    successor = None
    try:
        zombie.send("fenced", b"zombie-1", partition=0).result(30)
        successor = Producer(bootstrap, transactional_id="orders", linger_ms=0)
        successor.send("fenced", b"successor-1", partition=0).result(30)
        with pytest.raises(errors.ProducerFenced):
            zombie.send("fenced", b"zombie-2", partition=0).result(30)
        with pytest.raises(errors.ProducerFenced):
            zombie.send("fenced", b"zombie-3", partition=0)  # it stops: nothing more is sent
        successor.send("fenced", b"successor-2", partition=0).result(30)
    finally:
        zombie.close(5)
        if successor is not None:
            successor.close(5)
    leader = cluster.node(cluster.leader_of("fenced", 0)).address
    values = sorted(read_partition(leader, "fenced", 0).values())
    assert values == [b"successor-1", b"successor-2", b"zombie-1"]


def test_a_new_epoch_must_start_at_sequence_zero(cluster: LocalCluster) -> None:
    create_topic(cluster.nodes[0].address, "epochs", partitions=1, rf=3)
    leader = cluster.node(cluster.settled_leader_of("epochs", 0)).address
    # The epoch is bumped through the partition leader, which answers once it has applied the
    # bump (read your writes): it then fences by what the metadata log says, before the new
    # epoch ever wrote to this partition. (Another node learns the bump within a heartbeat.)
    address = leader
    first = stub(address).InitProducerId(pb.InitProducerIdRequest(transactional_id="t"),
                                         timeout=15)
    assert first.producer_epoch == 0

    def send(epoch: int, seq: int) -> pb.ProduceResponse:
        batch = batch_of([b"v"], producer_id=first.producer_id, producer_epoch=epoch,
                         base_sequence=seq)
        return stub(leader).Produce(pb.ProduceRequest(topic="epochs", partition=0,
                                                      batches=batch, timeout_ms=10_000),
                                    timeout=15)

    send(0, 0)
    bumped = stub(address).InitProducerId(pb.InitProducerIdRequest(
        producer_id=first.producer_id, producer_epoch=0), timeout=15)
    assert (bumped.producer_id, bumped.producer_epoch) == (first.producer_id, 1)
    expect_error(lambda: send(1, 5), grpc.StatusCode.FAILED_PRECONDITION,
                 pb.OUT_OF_ORDER_SEQUENCE)
    expect_error(lambda: send(0, 1), grpc.StatusCode.FAILED_PRECONDITION, pb.PRODUCER_FENCED)
    send(1, 0)
    # The old instance may not bump the epoch over the new one's head either.
    expect_error(lambda: stub(address).InitProducerId(pb.InitProducerIdRequest(
        producer_id=first.producer_id, producer_epoch=0), timeout=15),
        grpc.StatusCode.FAILED_PRECONDITION, pb.PRODUCER_FENCED)
