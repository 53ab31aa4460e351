"""Issue 15: one paused node (SIGSTOP: its TCP connections stay open, nothing answers) must not
stall the whole client, and a bootstrap nobody answers at must fail fast, saying so.

A real 3-node cluster, one node paused per test and always resumed in ``finally``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tidelog.client import Admin, Producer, errors
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

TOPIC = "spread"
PARTITIONS = 3
#: the old code's stall is one request timeout; short here so the unfixed code fails quickly
REQUEST_TIMEOUT_MS = 5000
ACK_BOUND_S = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("paused-node"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "1"}) as running:
        with Admin(running.bootstrap) as admin:
            admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
        yield running


def leaders(cluster: LocalCluster) -> dict[int, int]:
    return {p: cluster.settled_leader_of(TOPIC, p) for p in range(PARTITIONS)}


def first_bootstrap(cluster: LocalCluster, node_id: int) -> str:
    """The bootstrap list with `node_id` first (the node every client asks first)."""
    addresses = [cluster.node(node_id).address,
                 *(n.address for n in cluster.nodes if n.id != node_id)]
    return ",".join(addresses)


def test_metadata_refresh_returns_fast_with_the_first_node_paused(cluster: LocalCluster) -> None:
    paused = 1
    metadata = Metadata(Connections(), tuple(first_bootstrap(cluster, paused).split(",")),
                        request_timeout_ms=REQUEST_TIMEOUT_MS, max_age_ms=300_000,
                        retry_backoff_ms=100)
    metadata.describe([TOPIC])  # all healthy: node 1 answers and becomes the node asked first
    cluster.pause(paused)
    try:
        times = []
        for _ in range(3):
            started = time.monotonic()
            description = metadata.describe([TOPIC])
            times.append(time.monotonic() - started)
            assert [t.name for t in description.topics] == [TOPIC]
    finally:
        cluster.resume(paused)
    print(f"metadata refresh with node {paused} paused: {[f'{t:.2f}' for t in times]} s")
    assert times[0] < 2.0, times
    assert max(times[1:]) < 0.5, f"the paused node was not set aside as slow: {times}"


def test_producing_to_healthy_leaders_goes_on_while_a_node_is_paused(
        cluster: LocalCluster) -> None:
    owner = leaders(cluster)
    paused = owner[0]
    healthy = [p for p, node in owner.items() if node != paused]
    assert healthy, f"every partition is led by node {paused}: {owner}"
    # node `paused` answers the first metadata request; with metadata_max_age_ms short the
    # sender refreshes again and again while it is paused
    with Producer(first_bootstrap(cluster, paused), acks="all", linger_ms=0,
                  request_timeout_ms=REQUEST_TIMEOUT_MS, metadata_max_age_ms=500,
                  delivery_timeout_ms=60_000) as producer:
        for p in range(PARTITIONS):
            producer.send(TOPIC, b"warm", partition=p).result(15)
        cluster.pause(paused)
        latencies: list[float] = []
        try:
            producer.send(TOPIC, b"to the paused leader", partition=0)  # will time out, retry
            # a refresh is due 0.5 s after the pause; the old code then held every reply for
            # a request timeout, so 2 s of sending (each waiting for its ack) shows the stall
            end = time.monotonic() + 2.0
            i = 0
            while time.monotonic() < end:
                started = time.monotonic()
                done = threading.Event()
                producer.send(TOPIC, b"%d" % i, partition=healthy[i % len(healthy)],
                              callback=lambda m, e, done=done: done.set())
                acked = done.wait(REQUEST_TIMEOUT_MS / 1000 * 2)
                latencies.append(time.monotonic() - started if acked else float("inf"))
                i += 1
                time.sleep(0.05)
        finally:
            cluster.resume(paused)
        producer.flush(60)
    print(f"{len(latencies)} records to partitions {healthy} with node {paused} paused: "
          f"max ack latency {max(latencies):.2f} s")
    assert max(latencies) < ACK_BOUND_S, sorted(latencies)[-5:]


def test_a_new_producer_starts_fast_with_the_first_bootstrap_node_paused(
        cluster: LocalCluster) -> None:
    owner = leaders(cluster)
    paused = owner[0]
    healthy = next(p for p, node in owner.items() if node != paused)
    cluster.pause(paused)
    try:
        started = time.monotonic()
        with Producer(first_bootstrap(cluster, paused), acks="all", linger_ms=0,
                      request_timeout_ms=REQUEST_TIMEOUT_MS) as producer:
            producer.send(TOPIC, b"first", partition=healthy).result(30)
            elapsed = time.monotonic() - started
            producer.flush(30)
    finally:
        cluster.resume(paused)
    print(f"first record acknowledged {elapsed:.2f} s after Producer() with node {paused} "
          "paused (metadata + InitProducerId + Produce)")
    # InitProducerId may wait for a new metadata leader when the paused node was it (~1-2 s)
    assert elapsed < ACK_BOUND_S + 1, elapsed


def test_a_dead_bootstrap_fails_fast_naming_each_address(
        caplog: pytest.LogCaptureFixture) -> None:
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts TCP, never speaks HTTP/2: the call waits for its deadline
    dead = [f"127.0.0.1:{s.getsockname()[1]}" for s in (refused, silent)]
    try:
        caplog.set_level(logging.INFO, logger="tidelog.client")
        started = time.monotonic()
        with pytest.raises(errors.NoBrokersAvailable) as caught, \
                Producer(",".join(dead), bootstrap_timeout_s=1.0) as producer:
            producer.send("anything", b"x")
        elapsed = time.monotonic() - started
    finally:
        refused.close()
        silent.close()
    message = str(caught.value)
    print(f"dead bootstrap failed after {elapsed:.2f} s: {message}")
    assert 1.0 <= elapsed < 1.0 + 2.0, elapsed
    assert not caught.value.retriable
    for address in dead:
        assert address in message
    assert "refused" in message.lower()
    retries = [r for r in caplog.records
               if r.name == "tidelog.client" and r.levelno == logging.INFO and "retry" in
               r.getMessage()]
    assert retries, [r.getMessage() for r in caplog.records]


def test_a_consumer_bounds_a_dead_bootstrap_by_its_bootstrap_timeout() -> None:
    """Consumer(bootstrap_timeout_s=) reaches its Metadata (it was ConsumerConfig's only: the
    consumer looked for the cluster for the default 10 s whatever it was given)."""
    from tidelog.client import Consumer, TopicPartition

    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    address = f"127.0.0.1:{refused.getsockname()[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(errors.ClusterUnreachable) as caught, \
                Consumer(address, bootstrap_timeout_s=1.0) as consumer:
            consumer.end_offsets([TopicPartition("anything", 0)])
        elapsed = time.monotonic() - started
    finally:
        refused.close()
    print(f"consumer's dead bootstrap failed after {elapsed:.2f} s")
    assert 1.0 <= elapsed < 1.0 + 2.0, elapsed
    assert address in str(caught.value) and "bootstrap_timeout_s=1" in str(caught.value)
