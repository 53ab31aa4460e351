"""Raw gRPC helpers for node tests: talk to nodes directly, without the client library."""

from __future__ import annotations

import time

import grpc
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import encode_batch


def stub(address: str) -> broker_pb2_grpc.BrokerStub:
    return broker_pb2_grpc.BrokerStub(grpc.insecure_channel(address))


def create_topic(address: str, name: str, partitions: int, rf: int = 3,
                 configs: dict[str, str] | None = None) -> pb.CreateTopicsResponse:
    return stub(address).CreateTopics(pb.CreateTopicsRequest(
        topics=[pb.TopicSpec(name=name, partitions=partitions, replication_factor=rf,
                             configs=configs or {})], timeout_ms=20_000), timeout=30)


def batch_of(values: list[bytes], key: bytes | None = None, **kwargs: int) -> bytes:
    now = int(time.time() * 1000)
    return encode_batch([(key, v, (), now) for v in values], **kwargs)


def produce(address: str, topic: str, partition: int, batch: bytes,
            timeout_s: float = 10.0) -> pb.ProduceResponse:
    return stub(address).Produce(pb.ProduceRequest(
        topic=topic, partition=partition, batches=batch, timeout_ms=int(timeout_s * 1000)),
        timeout=timeout_s + 2)


def error_detail(exc: grpc.RpcError) -> pb.ErrorDetail:
    for key, value in exc.trailing_metadata() or ():
        if key == "tidelog-error-bin":
            return pb.ErrorDetail.FromString(value)
    raise AssertionError(f"no ErrorDetail in {exc}")
