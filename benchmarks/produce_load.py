"""The produce loads that benchmarks/tls_bench.py and benchmarks/at_rest_bench.py compare across
two clusters: pre-encoded batches straight to the partition leaders over grpc.aio (the node's
cost), and the Python `Producer` (what an application sees). 1 KiB JSON-ish records."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from tidelog.client import Producer
from tidelog.client.security import ClientSecurity, channel_credentials
from tidelog.node.local_cluster import LocalCluster, metadata
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto.batch import Codec, encode_batch

PARTITIONS = 12
RECORD_BYTES = 1024
RECORDS_PER_BATCH = 100
OPTIONS = [("grpc.max_send_message_length", 64 << 20),
           ("grpc.max_receive_message_length", 64 << 20)]


def value(i: int) -> bytes:
    body = json.dumps({"id": i, "user": f"user-{i % 997}", "event": "click"})
    return (body + "x" * RECORD_BYTES)[:RECORD_BYTES].encode()


def leaders(cluster: LocalCluster, topic: str) -> dict[int, str]:
    """partition → its leader's client address."""
    answer = metadata(cluster.nodes[0].address, [topic], security=cluster.security)
    nodes = {n.id: n.address for n in answer.nodes}
    return {p.partition: nodes[p.leader_id] for p in answer.topics[0].partitions}


def aio_channel(address: str, security: ClientSecurity | None) -> grpc.aio.Channel:
    if security is None:
        return grpc.aio.insecure_channel(address, options=OPTIONS)
    return grpc.aio.secure_channel(address, channel_credentials(security), options=OPTIONS)


async def broker_produce(cluster: LocalCluster, topic: str, seconds: float, in_flight: int, *,
                         security: ClientSecurity | None = None,
                         codec: Codec = Codec.LZ4) -> tuple[float, int]:
    """`in_flight` concurrent Produce calls of one pre-encoded batch for `seconds`:
    (records/s, records)."""
    by_partition = leaders(cluster, topic)
    channels: dict[str, grpc.aio.Channel] = {}

    def stub(address: str) -> broker_pb2_grpc.BrokerStub:
        if address not in channels:
            channels[address] = aio_channel(address, security)
        return broker_pb2_grpc.BrokerStub(channels[address])

    now = int(time.time() * 1000)
    batch = encode_batch([(f"key-{i}".encode(), value(i), (), now)
                          for i in range(RECORDS_PER_BATCH)], codec=codec)
    count = 0
    stop_at = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal count
        partition = k % PARTITIONS
        while time.monotonic() < stop_at:
            try:
                await stub(by_partition[partition]).Produce(pb.ProduceRequest(
                    topic=topic, partition=partition, batches=batch, timeout_ms=30_000))
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                await asyncio.sleep(0.1)  # leadership moved; rare right after creation
                continue
            count += RECORDS_PER_BATCH

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    rate = count / (time.perf_counter() - started)
    for channel in channels.values():
        await channel.close()
    return rate, count


def client_produce(cluster: LocalCluster, topic: str, seconds: float, *,
                   security: ClientSecurity | None = None) -> tuple[float, int]:
    """The Python Producer sending 1 KiB records for `seconds`, then flushed: (records/s,
    records)."""
    payload = value(0)
    count = 0
    with Producer(cluster.bootstrap, security=security) as producer:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for i in range(1000):
                producer.send(topic, value=payload, key=str(i).encode())
            count += 1000
        producer.flush(60)
        return count / (time.perf_counter() - started), count
