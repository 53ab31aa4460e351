"""Queue metrics on a real 3-node cluster: the coordinator's GET /metrics against what happened
to the queue (and against `describe_queue`, the `tidelog queue stats` numbers), step by step.

One module-scoped cluster; the series are read with prometheus_client's own text parser.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tidelog.client import Admin, Producer, QueueConsumer
from tidelog.node.local_cluster import LocalCluster, LocalNode

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

QUEUE = "mq"
SENT = 8
NAMES = ("tidelog_queue_depth", "tidelog_queue_in_flight",
         "tidelog_queue_oldest_unacked_age_seconds", "tidelog_queue_redeliveries_total",
         "tidelog_queue_dead_lettered_total", "tidelog_queue_dlq_depth",
         "tidelog_queue_acked_total", "tidelog_queue_dead_letters_lost_total")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("queue-metrics"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2",
                              "TIDELOG_QUEUE_STATE_PARTITIONS": "4"}) as running:
        yield running


def scrape(node: LocalNode) -> dict[tuple[str, str], float]:
    """(sample name, queue label) -> value of every tidelog_queue_* sample on the node."""
    with urllib.request.urlopen(f"http://{node.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, s.labels.get("queue", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("tidelog_queue_")}


def queue_series(node: LocalNode) -> dict[str, float]:
    return {name: value for (name, queue), value in scrape(node).items() if queue == QUEUE}


def wait_for(cluster: LocalCluster, expected: dict[str, float], what: str,
             timeout_s: float = 20.0) -> tuple[LocalNode, dict[str, float]]:
    """Scrape every node until exactly one exports the queue (its coordinator; the leader
    balancer may move it early on) with every expected value (the snapshot refreshes every
    2 s). Returns that node and its series."""
    deadline = time.monotonic() + timeout_s
    while True:
        exporting = {n.id: (n, series) for n in cluster.nodes if (series := queue_series(n))}
        if len(exporting) == 1:
            node, series = next(iter(exporting.values()))
            if all(series.get(k) == v for k, v in expected.items()):
                return node, series
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: expected {expected} from one node, the nodes export "
                                 f"{ {i: s for i, (_, s) in exporting.items()} }")
        time.sleep(0.2)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.1)


def test_the_coordinator_exports_what_happened_to_its_queue(cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap) as admin, Producer(cluster.bootstrap) as producer, \
            QueueConsumer(cluster.bootstrap, queue=QUEUE, request_timeout_s=30) as consumer:
        admin.create_queue(QUEUE, partitions=1, lock_s=60, max_deliveries=5)
        for i in range(SENT):
            producer.send(QUEUE, f"m{i}".encode(), key=b"k")
        producer.flush(30)
        wait_for(cluster, {"tidelog_queue_depth": SENT,
                           "tidelog_queue_in_flight": 0}, "sent, nothing received")
        wait_until(lambda: wait_for(cluster, {}, "the coordinator exports")[0].id
                   == admin.describe_queue(QUEUE).coordinator_id, 20,
                   "the node exporting the queue is its coordinator")

        held: list = []
        wait_until(lambda: held.extend(consumer.receive(max_messages=3 - len(held),
                                                        timeout_s=2)) or len(held) == 3,
                   30, "three messages received")
        _, series = wait_for(cluster, {"tidelog_queue_depth": SENT - 3,
                                        "tidelog_queue_in_flight": 3}, "3 received, not acked")
        stats = admin.describe_queue(QUEUE).stats  # what `tidelog queue stats` shows
        assert (stats.in_flight, stats.depth - stats.in_flight) == (3, SENT - 3), stats
        assert series["tidelog_queue_oldest_unacked_age_seconds"] > 0
        assert series["tidelog_queue_redeliveries_total"] == 0
        assert series["tidelog_queue_acked_total"] == 0

        held.sort(key=lambda m: m.offset)
        first, second, third = held
        consumer.nack(first, delay_s=0).result(10)
        consumer.reject(second, reason="poison").result(10)
        consumer.ack(third).result(10)
        wait_for(cluster, {"tidelog_queue_dead_lettered_total": 1,
                               "tidelog_queue_dlq_depth": 1, "tidelog_queue_acked_total": 1,
                               "tidelog_queue_in_flight": 0,
                               "tidelog_queue_depth": SENT - 2},  # the nacked one is back
                 "nacked one, rejected one, acked one")

        rest: list = []
        wait_until(lambda: rest.extend(consumer.receive(max_messages=SENT, timeout_s=2))
                   or len(rest) == SENT - 2, 30, "the rest and the nacked one received")
        assert [m.delivery_count for m in rest if m.offset == first.offset] == [2]
        wait_for(cluster, {"tidelog_queue_redeliveries_total": 1,
                               "tidelog_queue_in_flight": SENT - 2, "tidelog_queue_depth": 0},
                 "the nacked one delivered again")
        for m in rest:
            consumer.ack(m)
        consumer.flush(10)
        _, final = wait_for(cluster, {"tidelog_queue_acked_total": SENT - 1,
                                       "tidelog_queue_in_flight": 0, "tidelog_queue_depth": 0,
                                       "tidelog_queue_oldest_unacked_age_seconds": 0,
                                       "tidelog_queue_dead_lettered_total": 1,
                                       "tidelog_queue_dlq_depth": 1,
                                       "tidelog_queue_dead_letters_lost_total": 0},
                 "all settled")
        assert set(final) == set(NAMES), sorted(final)
