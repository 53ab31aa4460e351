"""Offsets a CLI user sees on a real 3-node cluster (issue 15): a fresh topic's first record is at
offset 0, and consumer-group lag counts records, not the control batches (a new leader's no-op)
that leader changes put between the committed offset and the end.

One module cluster. The second test SIGKILLs every node and starts them again, so the new leader
may not know its log committed and writes a no-op (an offset with no record) after the group's
committed offset: lag, from the client (`Admin.list_group_lag`, what `tidelog group describe`
shows) and from the coordinator's /metrics, must still be the number of records not consumed.
Deleting the topic at the end must leave no traceback in any node's log.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tidelog.client import Admin, Producer, TopicPartition
from tidelog.client.top_data import Gatherer
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

TOPIC = "fresh"
GROUP = "records-g"
TP = TopicPartition(TOPIC, 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("offsets-start"),
                         env={"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2"}) as running:
        yield running


def _produce(cluster: LocalCluster, count: int, tag: str) -> list[int]:
    with Producer(cluster.bootstrap, linger_ms=0) as producer:
        futures = [producer.send(TOPIC, f"{tag}-{i}", partition=0) for i in range(count)]
        return [f.result(timeout=30).offset for f in futures]


def _wait_for(what: str, probe: Callable[[], object], timeout_s: float = 20.0) -> object:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # noqa: BLE001 - mid-election or mid-refresh: ask again
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


def _metric_lag(cluster: LocalCluster) -> float | None:
    """The group's lag series from whichever node coordinates it (None: not refreshed yet)."""
    for node in cluster.nodes:
        url = f"http://{node.metrics_address}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tidelog_consumer_group_lag" and \
                        sample.labels.get("group") == GROUP:
                    return sample.value
    return None


def test_a_fresh_topic_starts_at_offset_zero(cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=1, replication_factor=3)
    cluster.settled_leader_of(TOPIC, 0)  # after the balancer's hand-over, if any
    assert _produce(cluster, 10, "a") == list(range(10))


def test_lag_counts_records_across_a_restart_of_every_node(cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.alter_group_offsets(GROUP, {TP: 4})
    for node in cluster.nodes:
        cluster.kill(node.id)
    cluster.start()
    cluster.wait_healthy(timeout_s=60)
    cluster.settled_leader_of(TOPIC, 0)
    after = _produce(cluster, 3, "b")
    expected = 10 - 4 + 3
    with Admin(cluster.bootstrap) as admin:
        lag = admin.list_group_lag(GROUP)[TP]
    controls = lag.end_offset - lag.committed - lag.lag
    print(f"offsets after the restart {after}; end {lag.end_offset}; control records between "
          f"committed and end: {controls}")
    assert lag.committed == 4 and lag.end_offset == after[-1] + 1
    assert lag.lag == expected
    assert controls > 0  # the restart's leader no-ops: what top must not count either
    gatherer = Gatherer(cluster.bootstrap, rpc_timeout_s=5.0)  # `tidelog top`'s poll
    try:
        shown = [g for g in gatherer.take().lags if g.group == GROUP]
    finally:
        gatherer.close()
    assert [(g.committed, g.end_offset, g.lag_records) for g in shown] == \
        [(4, lag.end_offset, expected)], "top and group describe must agree"
    assert _wait_for("the coordinator's lag series", lambda: _metric_lag(cluster) == expected)


def test_deleting_a_topic_logs_no_traceback(cluster: LocalCluster) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.delete_topic(TOPIC)

    def gone_everywhere() -> bool:
        logs = [node.log_path.read_text(errors="replace") for node in cluster.nodes]
        return all(text.count("deleted replica") >= 1 for text in logs)

    _wait_for("every replica deleted", gone_everywhere)
    time.sleep(1.0)  # an unretrieved task exception is logged when the task is collected
    for node in cluster.nodes:
        text = node.log_path.read_text(errors="replace")
        assert "Task exception was never retrieved" not in text, node.log_path
        assert "Traceback" not in text, node.log_path
