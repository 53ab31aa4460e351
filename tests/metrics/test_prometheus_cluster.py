"""A real Prometheus (Debian's `prometheus` package) scraping a real 3-node cluster, asked over
its HTTP API, as an operator's dashboards and alerts would ask it.

The scrape config is deploy/monitoring/prometheus.yml with the targets replaced by the local
nodes' metrics addresses and a 1 s interval, and it loads deploy/monitoring/alerts.yml as
shipped, so the shipped rules and the dashboard's queries are exercised against real series:

- every alert rule evaluates without error, every dashboard query is accepted, and the panels
  that must have data here do;
- lag in seconds grows while a group's consumer is paused and falls to 0 once it resumes;
- under-replicated partitions go above 0 after a node is SIGKILLed (and the node-down and
  under-replicated alerts go pending) and back to 0 after it restarts;
- with two of three nodes killed, partitions go offline and no node leads the metadata group
  (both critical alerts go pending);
- a rejected queue message fires the dead-letter alert.

One cluster and one Prometheus serve the module; both are stopped by their PIDs, pass or fail.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from tidelog.client import Admin, Consumer, Producer, QueueConsumer, TopicPartition
from tidelog.node.local_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tidelog.json"
PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_INTERVAL = "1s"
RATE_WINDOW = "5s"          # stands in for Grafana's $__rate_interval at a 1 s scrape
READY_S_MAX = 30
WAIT_S_MAX = 25
LAG_TOPIC = "lagged"
LAG_GROUP = "lag-watch"
KILL_TOPIC = "replicated"
KILL_PARTITIONS = 3
KILLED_NODE = 3
QUEUE = "jobs"
# Dashboard panels with no series on this cluster: no produce request is refused.
PANELS_WITHOUT_DATA_HERE = {"Produce errors/s by code"}

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, probe: Callable[[], T], done: Callable[[T], bool],
             timeout_s: float = WAIT_S_MAX, every_s: float = 0.25) -> T:
    """probe() until done(value); fails naming the last value (or error) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = probe()
            if done(last):
                return last
        except (OSError, ValueError, KeyError) as exc:  # Prometheus starting, a node failing over
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; "
                                 f"last: {last!r}")
        time.sleep(every_s)


@dataclass
class PrometheusServer:
    """A prometheus process started by this test (stopped by its PID) and its HTTP API."""

    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    def get(self, path: str, **params: str) -> Any:
        url = f"http://{self.address}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback
            body = json.load(answer)
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant vector's samples (raises ValueError for a query Prometheus refuses)."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    def scalar(self, promql: str) -> float | None:
        """The value of a one-sample query, None when it has no sample."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def scrape_config(cluster: LocalCluster) -> dict[str, Any]:
    """deploy/monitoring/prometheus.yml aimed at the local nodes, scraping every second."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL,
                            evaluation_interval=SCRAPE_INTERVAL)
    config["rule_files"] = [str(MONITORING / name) for name in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "tidelog"]
    assert len(jobs) == 1, config["scrape_configs"]
    jobs[0]["static_configs"] = [{"targets": [node.metrics_address for node in cluster.nodes]}]
    config["scrape_configs"] = jobs
    return config


CLUSTER_ENV = {"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2", "TIDELOG_QUEUE_STATE_PARTITIONS": "2"}


def start_prometheus(cluster: LocalCluster, directory: Path) -> PrometheusServer:
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(cluster)))
    address = f"127.0.0.1:{free_port()}"
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_path}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address={address}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return PrometheusServer(process, address, log_path)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[LocalCluster, PrometheusServer]]:
    """The cluster and its Prometheus, started together (Prometheus's first scrapes take a few
    seconds to begin, the nodes too); both stopped by their PIDs whatever happens."""
    if not Path(PROMETHEUS).is_file() or shutil.which("promtool") is None:
        pytest.skip("Debian's prometheus package is not installed (as root: apt-get install "
                    "prometheus; .ci/run does it)")
    directory = tmp_path_factory.mktemp("prometheus-cluster")
    running = LocalCluster(3, directory / "cluster", env=CLUSTER_ENV)
    server = start_prometheus(running, directory)
    try:
        running.start()
        try:
            running.wait_healthy(timeout_s=60)
            with Admin(running.bootstrap) as admin:
                admin.create_topic(LAG_TOPIC, partitions=1, replication_factor=3)
                admin.create_topic(KILL_TOPIC, partitions=KILL_PARTITIONS, replication_factor=3)
            wait_for("Prometheus to be ready", lambda: server.get("/api/v1/status/buildinfo"),
                     lambda info: bool(info["version"]), timeout_s=READY_S_MAX)
            wait_for("all three nodes up", lambda: server.scalar('sum(up{job="tidelog"})'),
                     lambda up: up == 3, timeout_s=READY_S_MAX)
            yield running, server
        finally:
            running.stop()
    finally:
        server.stop()
        print(f"prometheus log ({server.log_path}):\n{server.log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cluster(monitored: tuple[LocalCluster, PrometheusServer]) -> LocalCluster:
    return monitored[0]


@pytest.fixture(scope="module")
def prometheus(monitored: tuple[LocalCluster, PrometheusServer]) -> PrometheusServer:
    return monitored[1]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, its Grafana variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW)
            expr = expr.replace('instance=~"$instance"', 'instance=~".*"')
            queries.append((panel["title"], expr))
    return queries


def produce(cluster: LocalCluster, topic: str, count: int, partitions: int = 1) -> None:
    with Producer(cluster.bootstrap, acks="all", linger_ms=1) as producer:
        futures = [producer.send(topic, f"v{i}".encode(), partition=i % partitions)
                   for i in range(count)]
        producer.flush()
        for future in futures:
            future.result(timeout=30)


def test_shipped_rules_evaluate_on_real_series(prometheus: PrometheusServer) -> None:
    groups = wait_for(
        "every alert rule evaluated", lambda: prometheus.get("/api/v1/rules")["groups"],
        lambda gs: bool(gs) and all(rule["health"] != "unknown"
                                    for g in gs for rule in g["rules"]))
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 7
    assert [r for r in rules if r["health"] != "ok"] == []
    # Healthy cluster: nothing fires or is pending (once the start-up catch-up is over).
    wait_for("no alert pending or firing", lambda: prometheus.get("/api/v1/alerts")["alerts"],
             lambda alerts: alerts == [])


def group_lag_seconds(prometheus: PrometheusServer) -> float | None:
    return prometheus.scalar(
        f'max(tidelog_consumer_group_lag_seconds{{group="{LAG_GROUP}",topic="{LAG_TOPIC}"}})')


def test_lag_seconds_grows_while_paused_and_falls_when_resumed(
        cluster: LocalCluster, prometheus: PrometheusServer) -> None:
    tp = TopicPartition(LAG_TOPIC, 0)
    with Consumer(cluster.bootstrap, group_id=LAG_GROUP, topics=[LAG_TOPIC],
                  enable_auto_commit=False, auto_offset_reset="earliest",
                  session_timeout_ms=10_000) as consumer:
        produce(cluster, LAG_TOPIC, 5)
        received: list[object] = []
        wait_for("the first 5 records", lambda: received.extend(consumer.poll(timeout_s=0.5))
                 or len(received), lambda n: n >= 5)
        consumer.commit()
        wait_for("the group caught up in Prometheus", lambda: group_lag_seconds(prometheus),
                 lambda lag: lag == 0)

        consumer.pause(tp)
        produce_started = time.monotonic()
        produce(cluster, LAG_TOPIC, 5)
        lag_records = f'max(tidelog_consumer_group_lag{{group="{LAG_GROUP}",topic="{LAG_TOPIC}"}})'
        wait_for("5 records of lag", lambda: prometheus.scalar(lag_records), lambda n: n == 5)
        first = wait_for("lag in seconds above 0", lambda: group_lag_seconds(prometheus),
                         lambda lag: lag is not None and lag > 0)
        # Paused, polled (so it stays in the group), and never handed a record: the lag in
        # seconds keeps growing with the clock.
        assert consumer.poll(timeout_s=0.2) == []
        later = wait_for("lag in seconds to grow by 1.5 s",
                         lambda: (consumer.poll(timeout_s=0.2), group_lag_seconds(prometheus))[1],
                         lambda lag: lag is not None and lag >= first + 1.5)
        # ...and it is the age of the first record not consumed, no older.
        assert later <= time.monotonic() - produce_started + 1.0, (later, first)

        consumer.resume(tp)
        resumed: list[object] = []
        wait_for("the 5 newer records", lambda: resumed.extend(consumer.poll(timeout_s=0.5))
                 or len(resumed), lambda n: n >= 5)
        consumer.commit()
        wait_for("lag in seconds back to 0", lambda: group_lag_seconds(prometheus),
                 lambda lag: lag == 0)
        assert prometheus.scalar(lag_records) == 0


def test_under_replicated_after_a_kill_and_back_after_restart(
        cluster: LocalCluster, prometheus: PrometheusServer) -> None:
    under = "max(tidelog_partitions_under_replicated)"
    wait_for("no under-replicated partition before the kill", lambda: prometheus.scalar(under),
             lambda n: n == 0)
    killed = cluster.node(KILLED_NODE)
    cluster.kill(KILLED_NODE)
    try:
        # Writes move the commit index past the dead follower's match, so it drops out of the
        # in-sync set of every partition it followed; its own partitions get new leaders.
        produce(cluster, KILL_TOPIC, 3 * KILL_PARTITIONS, KILL_PARTITIONS)
        count = wait_for("under-replicated partitions above 0", lambda: prometheus.scalar(under),
                         lambda n: n is not None and n > 0)
        assert count >= 1
        assert prometheus.scalar(f'up{{job="tidelog",instance="{killed.metrics_address}"}}') == 0
        # The shipped alerts see it (pending: their `for:` is longer than this test).
        wait_for(
            "node-down and under-replicated alerts pending",
            lambda: {(a["labels"]["alertname"], a["labels"].get("instance"))
                     for a in prometheus.get("/api/v1/alerts")["alerts"]},
            lambda seen: ("TidelogNodeDown", killed.metrics_address) in seen
            and any(name == "TidelogPartitionsUnderReplicated" for name, _ in seen))
    finally:
        cluster.start(KILLED_NODE)
    cluster.wait_healthy(timeout_s=30, node_ids=[KILLED_NODE])
    wait_for("the restarted node scraped again",
             lambda: prometheus.scalar(f'up{{job="tidelog",instance="{killed.metrics_address}"}}'),
             lambda up: up == 1)
    wait_for("under-replicated partitions back to 0", lambda: prometheus.scalar(under),
             lambda n: n == 0, timeout_s=40)
    assert prometheus.scalar('sum(up{job="tidelog"})') == 3


def test_majority_loss_takes_partitions_offline_and_the_metadata_leader(
        cluster: LocalCluster, prometheus: PrometheusServer) -> None:
    """Two of three nodes SIGKILLed: the survivor's partitions know no leader, no node leads the
    metadata group, and both critical alerts go pending; all is well again after the restart."""
    survivor = cluster.node(1)
    offline = f'max(tidelog_partitions_offline{{instance="{survivor.metrics_address}"}})'
    for node_id in (2, 3):
        cluster.kill(node_id)
    try:
        wait_for("partitions offline on the survivor", lambda: prometheus.scalar(offline),
                 lambda n: n is not None and n > 0)
        wait_for("no metadata leader", lambda: prometheus.scalar("sum(tidelog_metadata_leader)"),
                 lambda n: n == 0)
        wait_for(
            "offline and no-metadata-leader alerts pending",
            lambda: {a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts")["alerts"]},
            lambda seen: {"TidelogPartitionsOffline", "TidelogNoMetadataLeader"} <= seen)
    finally:
        for node_id in (2, 3):
            cluster.start(node_id)
    cluster.wait_healthy(timeout_s=30)
    wait_for("a metadata leader, and every partition led and in sync",
             lambda: prometheus.query(
                 "(sum(tidelog_metadata_leader) == 1)"
                 " and on() (max(tidelog_partitions_offline) == 0)"
                 " and on() (max(tidelog_partitions_under_replicated) == 0)"),
             lambda result: len(result) == 1, timeout_s=40)


def firing(prometheus: PrometheusServer) -> set[tuple[str, str | None]]:
    return {(a["labels"]["alertname"], a["labels"].get("queue"))
            for a in prometheus.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"}


def test_a_dead_letter_fires_the_dlq_alert(cluster: LocalCluster,
                                           prometheus: PrometheusServer) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_queue(QUEUE, [QUEUE], partitions=1)
    dead_lettered = f'tidelog_queue_dead_lettered_total{{queue="{QUEUE}"}}'
    # The queue's series exist before anything is dead-lettered: an increase needs a start.
    wait_for("the queue's series", lambda: prometheus.scalar(f"max({dead_lettered})"),
             lambda n: n == 0)
    with Producer(cluster.bootstrap, acks="all") as producer:
        for value in (b"bad input", b"waiting"):
            producer.send(QUEUE, value).result(timeout=30)
    assert ("TidelogDeadLettersGrowing", QUEUE) not in firing(prometheus)
    with QueueConsumer(cluster.bootstrap, queue=QUEUE) as consumer:
        [message] = wait_for("a message", lambda: consumer.receive(max_messages=1, timeout_s=1),
                             lambda got: len(got) == 1)
        consumer.reject(message, reason="cannot parse").result(timeout=30)
    wait_for("TidelogDeadLettersGrowing firing", lambda: firing(prometheus),
             lambda alerts: ("TidelogDeadLettersGrowing", QUEUE) in alerts)
    assert prometheus.scalar(f'max(tidelog_queue_dlq_depth{{queue="{QUEUE}"}})') == 1


def test_dashboard_queries_answer(cluster: LocalCluster, prometheus: PrometheusServer) -> None:
    """Runs last: by now the cluster has a consumer group and a queue. Produces and fetches
    until both rates are above 0 (a counter's first sample is no increase: two rounds)."""
    rates = [f"sum(rate({c}[{RATE_WINDOW}])) > 0"
             for c in ("tidelog_produce_records_total", "tidelog_fetch_records_total")]
    with Producer(cluster.bootstrap, linger_ms=1) as producer, \
            Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(KILL_TOPIC, p) for p in range(KILL_PARTITIONS)])

        def traffic() -> bool:
            for i in range(KILL_PARTITIONS):
                producer.send(KILL_TOPIC, b"dashboard", partition=i)
            producer.flush()
            consumer.poll(timeout_s=0.5)
            return all(prometheus.query(rate) for rate in rates)

        wait_for("produce and fetch rates above 0", traffic, lambda seen: seen)
    # Every dashboard query is valid PromQL; those that must have data here have it.
    queries = dashboard_queries()
    assert len(queries) >= 25
    empty = {title for title, expr in queries if not prometheus.query(expr)}
    assert empty <= PANELS_WITHOUT_DATA_HERE, f"no data: {empty - PANELS_WITHOUT_DATA_HERE}"
    # The Node variable: Grafana's label_values(SELECTOR, LABEL) is Prometheus's label API.
    [variable] = json.loads(DASHBOARD.read_text())["templating"]["list"]
    selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]).groups()
    values = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
    assert sorted(values) == sorted(node.metrics_address for node in cluster.nodes)
