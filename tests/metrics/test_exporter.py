"""The metrics endpoint of a real node process (node/metrics/exporter.py): where it listens, how it
refuses an address it cannot have, that it can be turned off, and that a scrape is answered while
the node is busy serving produce requests.

Single-node clusters (a node with itself as the only peer): the endpoint does not depend on the
cluster's size, and one node starts in about a second.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tidelog.node.local_cluster import HOST, LocalCluster, LocalNode
from tidelog.proto import broker_pb2 as pb

from tests.node.wire import batch_of, create_topic, stub

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

SCRAPE_S_MAX = 5.0
EXIT_WAIT_S = 30.0
LEADER_WAIT_S = 10.0
BUSY_SCRAPES = 10
PRODUCERS = 4


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """One node serving metrics at its default address (client port + 1000)."""
    with LocalCluster(1, tmp_path_factory.mktemp("exporter") / "cluster") as cluster:
        cluster.wait_healthy(timeout_s=60)
        yield cluster.nodes[0]


def scrape_text(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_S_MAX) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return reply.read().decode()


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Family name -> its samples' (labels, value), parsed by prometheus_client's parser."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = [(dict(s.labels), s.value) for s in family.samples]
    return out


def test_the_default_derived_address_serves_the_nodes_metrics(node: LocalNode) -> None:
    port = int(node.address.rsplit(":", 1)[1])
    assert node.metrics_address == f"{HOST}:{port + 1000}"
    deadline = time.monotonic() + LEADER_WAIT_S
    while True:  # healthy comes before the lone node has elected itself
        found = families(scrape_text(node.metrics_address))
        if found["tidelog_metadata_leader"] == [({}, 1.0)] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert found["tidelog_metadata_leader"] == [({}, 1.0)]
    # The node's own series: process, event loop, and its replica of the metadata group.
    assert found["tidelog_process_resident_memory_bytes"][0][1] > 0
    assert "tidelog_event_loop_lag_seconds" in found
    assert ({"topic": "__metadata", "partition": "0"}, 1.0) in found["tidelog_partition_leader"]


def test_a_scrape_is_answered_while_the_node_serves_produce_requests(node: LocalNode) -> None:
    topic = "exporter-busy"
    assert create_topic(node.address, topic, partitions=4, rf=1).results[0].error == pb.NONE
    stop = threading.Event()
    produced = [0] * PRODUCERS
    errors: list[BaseException] = []

    def produce(worker: int) -> None:
        broker = stub(node.address)
        batch = batch_of([b"x" * 100] * 50)
        try:
            while not stop.is_set():
                broker.Produce(pb.ProduceRequest(topic=topic, partition=worker % 4,
                                                 acks=pb.ACKS_ALL, batches=batch,
                                                 timeout_ms=10_000), timeout=15)
                produced[worker] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    workers = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(PRODUCERS)]
    for worker in workers:
        worker.start()
    took: list[float] = []
    try:
        while sum(produced) < PRODUCERS and not errors:  # every producer is under way
            time.sleep(0.05)
        for _ in range(BUSY_SCRAPES):
            started = time.monotonic()
            found = families(scrape_text(node.metrics_address))
            took.append(time.monotonic() - started)
            ends = {labels["partition"]: value
                    for labels, value in found["tidelog_partition_log_end_offset"]
                    if labels["topic"] == topic}
            assert sorted(ends) == ["0", "1", "2", "3"], ends  # the state series, not left out
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=20)
    assert not errors, errors
    print(f"{BUSY_SCRAPES} scrapes during {sum(produced)} produce requests: "
          f"max {max(took) * 1000:.0f} ms")
    assert max(took) < SCRAPE_S_MAX
    assert sum(produced) > PRODUCERS


def test_an_explicit_address_that_is_taken_stops_the_node_with_rc_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        address = f"{HOST}:{taken.getsockname()[1]}"
        cluster = LocalCluster(1, tmp_path / "cluster", extra_args=("--metrics-listen", address))
        cluster.start()
        try:
            process = cluster.nodes[0].process
            assert process is not None
            rc = process.wait(timeout=EXIT_WAIT_S)
        finally:
            cluster.stop()
    output = cluster.nodes[0].log_path.read_text()
    assert rc == 2, output
    assert f"--metrics-listen {address}: cannot listen" in output, output


def test_metrics_listen_off_serves_nothing(tmp_path: Path) -> None:
    with LocalCluster(1, tmp_path / "cluster", extra_args=("--metrics-listen", "off")) as cluster:
        cluster.wait_healthy(timeout_s=60)
        node = cluster.nodes[0]
        with pytest.raises(urllib.error.URLError) as refused:
            scrape_text(node.metrics_address)
        assert isinstance(refused.value.reason, ConnectionRefusedError), refused.value
        assert "metrics endpoint off" in node.log_path.read_text()
