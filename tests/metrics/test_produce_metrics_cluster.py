"""Produce, fetch and storage metrics on a real 3-node cluster: each node's GET /metrics, parsed
with prometheus_client's own text parser, against requests whose records, batches and bytes the
test knows exactly.

One module-scoped cluster; every test has its own topic, and compares before/after scrapes of
counters (never absolute values), so the tests do not depend on each other's order.
"""

from __future__ import annotations

import random
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tidelog.node.local_cluster import LocalCluster, LocalNode
from tidelog.node.metrics.produce import count_records
from tidelog.proto import broker_pb2 as pb
from tidelog.proto.batch import (
    Codec,
    ControlType,
    decode_records,
    encode_batch,
    encode_control_batch,
    iter_batches,
)

from tests.clusters import running_cluster
from tests.node.wire import batch_of, create_topic, error_detail, stub

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Three requests, four batches (the second request carries two), 26 records.
RECORDS_PER_REQUEST = ((3,), (5, 7), (11,))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("produce-metrics"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}) as running:
        yield running


def scrape(node: LocalNode) -> Series:
    """(sample name, labels) -> value of every tidelog_ sample the node serves."""
    with urllib.request.urlopen(f"http://{node.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("tidelog_")}


def value(series: Series, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not created yet (no request of that kind)."""
    return series.get((name, frozenset(labels.items())), 0.0)


def grown(before: Series, after: Series, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def produce_known(address: str, topic: str) -> tuple[int, int, int]:
    """RECORDS_PER_REQUEST with acks=all: (requests, records, batch bytes sent)."""
    broker = stub(address)
    records = size = 0
    for counts in RECORDS_PER_REQUEST:
        data = b"".join(batch_of([b"v%d" % i for i in range(count)]) for count in counts)
        broker.Produce(pb.ProduceRequest(topic=topic, partition=0, acks=pb.ACKS_ALL, batches=data,
                                         timeout_ms=10_000), timeout=15)
        records += sum(counts)
        size += len(data)
    return len(RECORDS_PER_REQUEST), records, size


def leader_and_followers(cluster: LocalCluster, topic: str) -> tuple[LocalNode, list[LocalNode]]:
    create_topic(cluster.nodes[0].address, topic, partitions=1, rf=3)
    leader = cluster.node(cluster.settled_leader_of(topic, 0))
    return leader, [n for n in cluster.nodes if n is not leader]


def test_acks_all_produce_counts_exactly_its_records_bytes_and_requests_on_the_leader(
        cluster: LocalCluster) -> None:
    leader, followers = leader_and_followers(cluster, "metered")
    before = {node.id: scrape(node) for node in cluster.nodes}
    requests, records, size = produce_known(leader.address, "metered")
    after = {node.id: scrape(node) for node in cluster.nodes}
    was, now = before[leader.id], after[leader.id]

    assert grown(was, now, "tidelog_produce_records_total", topic="metered") == records == 26
    assert grown(was, now, "tidelog_produce_bytes_total", topic="metered") == size
    assert grown(was, now, "tidelog_produce_requests_total", acks="all") == requests
    assert grown(was, now, "tidelog_produce_latency_seconds_count", acks="all") == requests
    assert grown(was, now, "tidelog_produce_latency_seconds_sum", acks="all") > 0
    assert grown(was, now, "tidelog_commit_latency_seconds_count") == requests
    for node in followers:  # only the leader answers produce
        assert value(after[node.id], "tidelog_produce_records_total", topic="metered") == 0
    for node in cluster.nodes:  # every replica made the entries durable
        assert grown(before[node.id], after[node.id], "tidelog_fsync_seconds_count") > 0, node.id
        assert grown(before[node.id], after[node.id], "tidelog_fsync_batches_count") > 0, node.id
        assert grown(before[node.id], after[node.id], "tidelog_fsync_batches_sum") >= 1, node.id
        total = value(after[node.id], "tidelog_disk_total_bytes")
        assert 0 < value(after[node.id], "tidelog_disk_free_bytes") <= total, node.id


def test_refused_produce_counts_its_error_code_and_no_records(cluster: LocalCluster) -> None:
    leader, followers = leader_and_followers(cluster, "refused")
    follower = followers[0]
    was = {node.id: scrape(node) for node in (leader, follower)}
    broker = stub(leader.address)
    with pytest.raises(grpc.RpcError) as unknown:
        broker.Produce(pb.ProduceRequest(topic="no-such-topic", partition=0,
                                         batches=batch_of([b"x"]), timeout_ms=5_000), timeout=10)
    assert error_detail(unknown.value).code == pb.UNKNOWN_TOPIC_OR_PARTITION
    with pytest.raises(grpc.RpcError) as not_leader:
        stub(follower.address).Produce(pb.ProduceRequest(
            topic="refused", partition=0, acks=pb.ACKS_LEADER, batches=batch_of([b"x"]),
            timeout_ms=5_000), timeout=10)
    assert error_detail(not_leader.value).code == pb.NOT_LEADER
    now = {node.id: scrape(node) for node in (leader, follower)}

    assert grown(was[leader.id], now[leader.id], "tidelog_produce_errors_total",
                 code="UNKNOWN_TOPIC_OR_PARTITION") == 1
    assert grown(was[leader.id], now[leader.id], "tidelog_produce_requests_total",
                 acks="all") == 1
    assert grown(was[follower.id], now[follower.id], "tidelog_produce_errors_total",
                 code="NOT_LEADER") == 1
    assert grown(was[follower.id], now[follower.id], "tidelog_produce_requests_total",
                 acks="leader") == 1
    for node in (leader, follower):  # refused: no latency observed, no records counted
        assert grown(was[node.id], now[node.id], "tidelog_produce_latency_seconds_count",
                     acks="all") == 0
        assert grown(was[node.id], now[node.id], "tidelog_produce_latency_seconds_count",
                     acks="leader") == 0
        assert value(now[node.id], "tidelog_produce_records_total", topic="no-such-topic") == 0


def test_fetch_counts_the_records_and_bytes_it_returns_and_its_errors(
        cluster: LocalCluster) -> None:
    leader, _ = leader_and_followers(cluster, "fetched")
    _, records, _ = produce_known(leader.address, "fetched")
    was = scrape(leader)
    broker = stub(leader.address)
    offset = fetches = got_bytes = got_records = 0
    while True:  # small max_bytes: several answers, each counted
        reply = broker.Fetch(pb.FetchRequest(partitions=[pb.FetchPartition(
            topic="fetched", partition=0, offset=offset, max_bytes=100)], max_wait_ms=0),
            timeout=10)
        fetches += 1
        part = reply.partitions[0]
        assert part.error == pb.NONE, part.error_message
        if not part.batches:
            break
        got_bytes += len(part.batches)
        for pos, header in iter_batches(part.batches):
            offset = header.last_offset + 1
            if not header.is_control:  # a new leader's marker is not a data record
                got_records += len(decode_records(part.batches[pos:pos + header.size]))
    beyond = broker.Fetch(pb.FetchRequest(partitions=[pb.FetchPartition(
        topic="fetched", partition=0, offset=10_000)], max_wait_ms=0), timeout=10)
    assert beyond.partitions[0].error == pb.OFFSET_OUT_OF_RANGE
    now = scrape(leader)

    assert got_records == records == 26
    assert grown(was, now, "tidelog_fetch_records_total", topic="fetched") == records
    assert grown(was, now, "tidelog_fetch_bytes_total", topic="fetched") == got_bytes
    assert grown(was, now, "tidelog_fetch_requests_total") == fetches + 1
    assert grown(was, now, "tidelog_fetch_errors_total", code="OFFSET_OUT_OF_RANGE") == 1


def test_header_walk_counts_the_data_records_of_every_batch() -> None:
    """count_records (one unpack per header, the node's fetch path) against the full decoder,
    over random mixes of data batches (both codecs, 1-300 records) and control batches."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    for _ in range(20):
        parts = []
        for _ in range(rng.randrange(0, 12)):
            if rng.random() < 0.2:
                parts.append(encode_control_batch(ControlType.RAFT_NOOP, b""))
            else:
                records = [(None, b"r" * rng.randrange(0, 64), (), 1)
                           for _ in range(rng.randrange(1, 300))]
                parts.append(encode_batch(records, codec=rng.choice([Codec.NONE, Codec.LZ4])))
        data = b"".join(parts)
        expected = sum(len(decode_records(data[pos:pos + header.size]))
                       for pos, header in iter_batches(data) if not header.is_control)
        assert count_records(data) == expected, seed
