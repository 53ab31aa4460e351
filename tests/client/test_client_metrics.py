"""Client metrics (`Producer.metrics()`, `Consumer.metrics()`, `QueueConsumer.metrics()`) against
a real node: every number is checked against what the test itself did.

One module-scoped 1-node cluster; the last test SIGKILLs and restarts the node (a real retry).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tidelog.client import Admin, Consumer, Producer, QueueConsumer, TopicPartition
from tidelog.client.metrics import LatencyWindow
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

RECORDS = 500
VALUE = b"v" * 100


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("client-metrics"), nodes=1,
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "1",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "1"}) as running:
        with Admin(running.bootstrap) as admin:
            admin.create_topic("events", partitions=1, replication_factor=1)
            admin.create_topic("jobs", partitions=1, replication_factor=1)
        yield running


@pytest.fixture(scope="module")
def produced(cluster: LocalCluster) -> dict[str, object]:
    """RECORDS records sent to events/0 in many small batches; the producer's final metrics."""
    with Producer(cluster.bootstrap, linger_ms=5, batch_size=4096,
                  buffer_memory=1 << 20) as producer:
        futures = [producer.send("events", VALUE, key=b"k%d" % i, partition=0)
                   for i in range(RECORDS)]
        producer.flush(60)
        assert all(f.result(0).offset >= 0 for f in futures)
        return producer.metrics()


def test_producer_metrics_count_the_records_and_batches_it_sent(produced) -> None:
    m = produced
    assert m["records_sent"] == RECORDS
    assert m["records_failed"] == 0 and m["batches_failed"] == 0 and m["errors"] == {}
    # 500 records of ~130 raw bytes do not fit one 4 KiB batch: several batches, each one request
    assert m["batches_sent"] >= RECORDS * 130 // 4096
    assert m["requests_sent"] == m["batches_sent"] and m["retries_sent"] == 0
    assert m["batch_records_avg"] == pytest.approx(RECORDS / m["batches_sent"])
    assert 1 <= m["batch_records_max"] <= 4096 // 123
    assert m["batch_bytes_avg"] == pytest.approx(m["bytes_sent"] / m["batches_sent"])
    assert m["batch_bytes_max"] <= 4096 + 200  # raw batch_size plus the batch header
    assert m["request_latency_ms_count"] == m["requests_sent"]
    assert 0 < m["request_latency_ms_p50"] <= m["request_latency_ms_p99"] <= (
        m["request_latency_ms_max"])
    # everything was acknowledged: nothing in flight, the buffer empty again
    assert m["records_in_flight"] == 0 and m["requests_in_flight"] == 0
    assert m["buffer_used_bytes"] == 0 and m["buffer_limit_bytes"] == 1 << 20
    assert m["batches_waiting"] == 0


def test_consumer_metrics_count_records_fetched_lag_and_commits(cluster, produced) -> None:
    tp = TopicPartition("events", 0)
    with Consumer(cluster.bootstrap, group_id="metrics-group", topics=["events"],
                  auto_offset_reset="earliest", enable_auto_commit=False) as consumer:
        first: list = []
        deadline = time.monotonic() + 30
        while not first and time.monotonic() < deadline:
            first = consumer.poll(timeout_s=1.0, max_records=100)
        assert len(first) == 100
        m = consumer.metrics()
        end = consumer.end_offsets([tp])[tp]
        assert m["lag"] == {"events/0": end - consumer.position(tp)} and m["lag_max"] > 0
        assert m["partitions_assigned"] == 1
        records = list(first)
        while len(records) < RECORDS and time.monotonic() < deadline:
            records += consumer.poll(timeout_s=1.0)
        assert len(records) == RECORDS
        consumer.commit()
        m = consumer.metrics()
    assert m["records_consumed"] == RECORDS
    assert m["bytes_fetched"] >= produced["bytes_sent"]  # the stored batches (and no-ops)
    assert m["fetch_requests"] >= 1 and m["fetch_errors"] == {}
    assert 1 <= m["fetch_latency_ms_count"] <= m["fetch_requests"]
    assert m["commits"] == 1 and m["commit_failures"] == 0 and m["commit_latency_ms_count"] == 1
    assert m["lag"] == {"events/0": 0} and m["lag_max"] == 0


def test_queue_consumer_metrics_count_receives_and_each_settlement(cluster) -> None:
    with Producer(cluster.bootstrap, linger_ms=1) as producer:
        for i in range(30):
            producer.send("jobs", b"job-%d" % i, partition=0)
        producer.flush(30)
    with QueueConsumer(cluster.bootstrap, queue="metrics-q", topics=["jobs"]) as consumer:
        messages: list = []
        deadline = time.monotonic() + 30
        while len(messages) < 30 and time.monotonic() < deadline:
            messages += consumer.receive(max_messages=30 - len(messages), timeout_s=1.0)
        assert len(messages) == 30
        assert consumer.metrics()["held"] == 30
        futures = [consumer.ack(m) for m in messages[:20]]
        futures += [consumer.nack(m, delay_s=60) for m in messages[20:25]]
        futures += [consumer.reject(m, reason="test") for m in messages[25:]]
        consumer.flush(30)
        assert all(f.exception(0) is None for f in futures)
        m = consumer.metrics()
    assert m["received"] == 30 and m["receive_requests"] >= 1
    assert 1 <= m["receive_latency_ms_count"] == m["receive_requests"]
    assert (m["acked"], m["nacked"], m["rejected"], m["released"], m["extended"]) == (
        20, 5, 5, 0, 0)
    assert m["settle_failures"] == {} and m["held"] == 0
    assert m["settlements_sent"] == 30
    assert m["settle_latency_ms_count"] == m["settle_requests_sent"] >= 1


def test_producer_counts_a_retry_when_its_node_is_down(cluster) -> None:
    """SIGKILL the node, send, start it again: the records arrive, and the failed attempts
    show up as retries and errors by kind (must stay the module's last test)."""
    with Producer(cluster.bootstrap, linger_ms=1, retry_backoff_ms=50,
                  retry_backoff_ms_max=200) as producer:
        producer.send("events", b"warm-up", partition=0).result(30)
        before = producer.metrics()
        cluster.kill(1)
        futures = [producer.send("events", VALUE, partition=0) for _ in range(10)]
        deadline = time.monotonic() + 20
        while not producer.metrics()["errors"] and time.monotonic() < deadline:
            time.sleep(0.05)
        during = producer.metrics()
        assert sum(during["errors"].values()) >= 1, during
        assert during["records_sent"] == before["records_sent"] == 1
        cluster.start(1)
        producer.flush(60)
        assert all(f.result(0).offset >= 0 for f in futures)
        after = producer.metrics()
    assert after["records_sent"] == 11 and after["records_failed"] == 0
    assert after["retries_sent"] >= 1
    assert after["requests_sent"] == after["batches_sent"] + after["retries_sent"]
    assert sum(after["errors"].values()) == after["retries_sent"]
    assert after["records_in_flight"] == 0


def test_latency_window_percentiles_are_real_samples_of_the_newest_window() -> None:
    window = LatencyWindow(samples_max=100)
    for ms in range(1, 1001):  # 1..1000 ms; the window keeps 901..1000
        window.observe(ms / 1000)
    s = window.snapshot("x")
    assert s["x_ms_count"] == 1000
    assert s["x_ms_avg"] == pytest.approx(500.5)
    assert s["x_ms_p50"] == pytest.approx(950) and s["x_ms_p99"] == pytest.approx(999)
    assert s["x_ms_max"] == pytest.approx(1000)
    assert LatencyWindow().snapshot("y")["y_ms_p99"] == 0.0
