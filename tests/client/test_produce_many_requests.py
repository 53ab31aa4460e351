"""The sender's ProduceMany steps (client/sender.py), shared by the thread and asyncio senders:
cutting a leader's batches into requests, and reading each partition's outcome back."""

from __future__ import annotations

from tidelog.client import errors
from tidelog.client.accumulator import ProducerBatch
from tidelog.client.records import TopicPartition
from tidelog.client.sender import many_outcomes, produce_many_request, request_groups
from tidelog.proto import broker_pb2 as pb

A, B, C = (TopicPartition("t", p) for p in range(3))


def encoded(tp: TopicPartition, size: int, deadline_s: float = 100.0) -> ProducerBatch:
    batch = ProducerBatch(tp, 0.0, deadline_s)
    batch.records = [(None, b"v", (), 1)]
    batch.set_encoded(bytes(size))
    return batch


def test_one_batch_per_partition_per_request_in_partition_order() -> None:
    a1, b1, a2, c1, a3 = (encoded(A, 10), encoded(B, 10), encoded(A, 10), encoded(C, 10),
                          encoded(A, 10))
    groups = request_groups([a1, b1, a2, c1, a3], request_bytes_max=1000)
    assert groups == [[a1, b1, c1], [a2], [a3]]


def test_a_request_stays_within_request_bytes_max() -> None:
    a, b, c = encoded(A, 600), encoded(B, 600), encoded(C, 300)
    groups = request_groups([a, b, c], request_bytes_max=1000)
    assert groups == [[a, c], [b]]
    assert all(sum(len(x.encoded or b"") for x in g) <= 1000 for g in groups)


def test_a_later_batch_never_goes_in_an_earlier_request_than_its_predecessor() -> None:
    big, b, a_small = encoded(A, 900), encoded(B, 900), encoded(A, 10)
    # a_small would fit in the first request, but A's previous batch is there
    assert request_groups([big, b, a_small], 1000) == [[big], [b, a_small]]


def test_the_request_timeout_is_cut_to_the_nearest_delivery_deadline() -> None:
    request, timeout_ms = produce_many_request(
        [encoded(A, 5, deadline_s=10.0), encoded(B, 5, deadline_s=3.0)], pb.ACKS_ALL, 30_000,
        now=1.0)
    assert timeout_ms == 2000 and request.timeout_ms == 2000
    assert [(p.topic, p.partition) for p in request.partitions] == [("t", 0), ("t", 1)]


def test_each_partition_gets_its_own_outcome() -> None:
    a, b, c = encoded(A, 5), encoded(B, 5), encoded(C, 5)
    response = pb.ProduceManyResponse(results=[
        pb.ProducePartitionResult(topic="t", partition=0, error=pb.ErrorDetail(code=pb.NONE),
                                  response=pb.ProduceResponse(base_offset=7, last_offset=7)),
        pb.ProducePartitionResult(topic="t", partition=1, error=pb.ErrorDetail(
            code=pb.NOT_LEADER, leader_id=2, leader_address="h:2", retriable=True),
            error_message="not the leader"),
        pb.ProducePartitionResult(topic="t", partition=2, error=pb.ErrorDetail(
            code=pb.UNKNOWN_TOPIC_OR_PARTITION), error_message="no partition 2"),
    ])
    (ba, ra, ea), (bb, rb, eb), (bc, rc, ec) = many_outcomes([a, b, c], response)
    assert (ba, ea, ra.base_offset) == (a, None, 7)
    assert bb is b and rb is None and isinstance(eb, errors.NotLeader)
    assert eb.leader_address == "h:2" and eb.retriable
    assert bc is c and rc is None and isinstance(ec, errors.TopicNotFound)


def test_a_missing_or_misplaced_result_is_a_retriable_error() -> None:
    a, b = encoded(A, 5), encoded(B, 5)
    response = pb.ProduceManyResponse(results=[
        pb.ProducePartitionResult(topic="t", partition=1, error=pb.ErrorDetail(code=pb.NONE),
                                  response=pb.ProduceResponse(base_offset=1))])
    outcomes = many_outcomes([a, b], response)
    assert [o[0] for o in outcomes] == [a, b]
    assert all(o[1] is None and o[2] is not None and o[2].retriable for o in outcomes)
