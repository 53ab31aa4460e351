"""The compose deployment (deploy/docker-compose.yml), driven for real from the host.

Every test brings up its own compose project (unique name, free host ports) from the image built by
deploy/offline-image.sh, talks to it through the published 127.0.0.1 ports with the Python client,
and tears it down with its volumes, also when it fails (the compose_project fixture). Needs a Docker
engine (skipped with the reason when none answers) and the Python client.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import grpc
import pytest
from docker_helpers import COMPOSE_FILE, DEPLOY, ComposeProject, run
from tidelog.proto import broker_pb2, broker_pb2_grpc

try:
    from tidelog.client import Admin, Consumer, Producer, TopicPartition
except ImportError as exc:  # the client is issue 5; without it nothing here can talk to a node
    pytest.skip(f"the Python client is not importable yet: {exc}", allow_module_level=True)

pytestmark = [pytest.mark.docker, pytest.mark.cluster]

HEALTHY_S_MAX = 120
TOPIC = "orders"
PARTITIONS = 3
MESSAGES = 10_000
KEYS = 50
CHUNK = 500                  # sends in flight before their acknowledgements are collected
KILL_AFTER = 3_000           # messages sent before the leader of partition 0 is killed
ACK_WAIT_S_MAX = 150         # > the producer's delivery timeout (120 s): every future resolves
CONSUME_S_MAX = 120
CATCH_UP_S_MAX = 120


def _services(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


def _health_exit_code(project: ComposeProject, service: str, address: str) -> int:
    """Exit code of `tidelog health` run inside a service's container (0: SERVING, 2: no answer)."""
    return run(["docker", "exec", project.container(service), "tidelog", "health", "--address",
                address, "--timeout-s", "2"], check=False).returncode


def _describe(admin: Admin, topic: str) -> list:
    return list(admin.describe_topics([topic])[0].partitions)


def _led_by(project: ComposeProject, node_id: int, topic: str) -> dict[int, object]:
    """The partitions of `topic` that node_id itself says it leads, with its view of them (only
    a leader fills in_sync and high_watermark). Empty when the node does not answer."""
    address = f"127.0.0.1:{project.ports[node_id - 1]}"
    with grpc.insecure_channel(address) as channel:
        try:
            response = broker_pb2_grpc.BrokerStub(channel).Metadata(
                broker_pb2.MetadataRequest(topics=[topic]), timeout=5)
        except grpc.RpcError:
            return {}
    return {p.partition: p for t in response.topics for p in t.partitions
            if p.leader_id == node_id}


def _confirmed_leaders(project: ComposeProject, topic: str) -> dict[int, object]:
    """partition -> the leader's own view of it, for partitions whose leader confirms it leads."""
    views: dict[int, object] = {}
    for node_id in range(1, project.nodes + 1):
        views.update(_led_by(project, node_id, topic))
    return views


# What a client in another container runs to see the node addresses it is told (Metadata on
# the default listener, node1:9091).
LIST_NODES = ("import json; from tidelog.client import Admin\n"
              "with Admin('node1:9091') as admin:\n"
              "    print(json.dumps({n.id: n.address for n in admin.list_nodes()}))")


def _clients_in_a_container_and_on_the_host(project: ComposeProject) -> None:
    """Issue 15: a client container on the compose network (`--bootstrap node1:9091`) is told the
    nodes' nodeN:9091 addresses and lists, produces and consumes with the CLI; a host client on
    the published ports reads what it wrote and writes back; the container reads that too."""
    deadline = time.monotonic() + 60
    inside = {str(i): f"node{i}:9091" for i in range(1, project.nodes + 1)}
    while (seen := json.loads(project.client(
            "-c", LIST_NODES, entrypoint="/opt/tidelog/bin/python").stdout)) != inside:
        assert time.monotonic() < deadline, f"a client container was told {seen}"
        time.sleep(1)
    cli = ("--bootstrap", "node1:9091")
    project.client(*cli, "topic", "create", "boxed", "--partitions", "3",
                   "--replication-factor", "3")
    assert "boxed" in project.client(*cli, "topic", "list").stdout.split()
    lines = [f"k{i}:from-container-{i}" for i in range(20)]
    project.client(*cli, "produce", "boxed", "--key-separator", ":",
                   stdin="".join(f"{line}\n" for line in lines))

    tps = [TopicPartition("boxed", p) for p in range(3)]
    values: list[bytes] = []
    with Consumer(project.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(tps)
        deadline = time.monotonic() + 30
        while len(values) < len(lines):
            assert time.monotonic() < deadline, f"the host read {values}"
            values.extend(r.value for r in consumer.poll(timeout_s=1.0))
    assert sorted(values) == sorted(line.split(":", 1)[1].encode() for line in lines)
    with Producer(project.bootstrap, acks="all") as producer:
        for i in range(10):
            producer.send("boxed", f"from-host-{i}".encode(),
                          key=f"h{i}".encode()).result(timeout=30)

    out = project.client(*cli, "consume", "boxed", "--from-beginning", "--max-messages", "30",
                         "--timeout", "30").stdout.split()
    assert sorted(out) == sorted([line.split(":", 1)[1] for line in lines]
                                 + [f"from-host-{i}" for i in range(10)]), out


def test_three_nodes_come_up_healthy_and_advertise_host_reachable_addresses(
    compose_project: type[ComposeProject],
) -> None:
    """Healthchecks pass; Metadata tells host clients 127.0.0.1:<published port> and containers
    nodeN:9091 (per-network listeners), and clients on both sides work; peers reach each other
    as peerN on the internal network only, so disconnecting it is a real partition."""
    started = time.monotonic()
    project = compose_project()
    project.up()
    project.wait_healthy(_services(3), timeout_s=HEALTHY_S_MAX)
    print(f"healthy after {time.monotonic() - started:.1f} s")
    # One data volume per node (v1 also creates the idle volumes of the `monitoring` profile).
    assert {f"{project.name}_node{i}-data" for i in (1, 2, 3)} <= set(project.volumes())

    expected = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(project.ports)}
    deadline = time.monotonic() + 60  # nodes register their advertised address through metadata
    with Admin(project.bootstrap) as admin:
        while {n.id: n.address for n in admin.list_nodes()} != expected:
            assert time.monotonic() < deadline, f"advertised: {admin.list_nodes()}"
            time.sleep(1)

    started = time.monotonic()
    _clients_in_a_container_and_on_the_host(project)
    print(f"clients in a container and on the host: {time.monotonic() - started:.1f} s")

    assert _health_exit_code(project, "node1", "peer2:9091") == 0
    assert _health_exit_code(project, "node1", "peer3:9091") == 0

    network = project.network("cluster")
    node3 = project.container("node3")
    run(["docker", "network", "disconnect", network, node3])
    try:
        assert _health_exit_code(project, "node1", "peer3:9091") == 2
        # ...while the host still reaches node3 through its published port.
        from tidelog.client.health_cli import EXIT_SERVING, check

        assert check(expected[3], timeout_s=5)[0] == EXIT_SERVING
    finally:
        run(["docker", "network", "connect", "--alias", "peer3", network, node3])
    assert _health_exit_code(project, "node1", "peer3:9091") == 0


def test_five_node_variant_comes_up(compose_project: type[ComposeProject]) -> None:
    project = compose_project(files=[COMPOSE_FILE, DEPLOY / "docker-compose.5.yml"], nodes=5)
    project.up()
    project.wait_healthy(_services(5), timeout_s=HEALTHY_S_MAX)
    deadline = time.monotonic() + 60
    with Admin(project.bootstrap) as admin:
        while len(admin.list_nodes()) != 5:
            assert time.monotonic() < deadline, f"nodes: {admin.list_nodes()}"
            time.sleep(1)
        admin.create_topic("five", partitions=5, replication_factor=5)
        assert all(len(p.replicas) == 5 for p in _describe(admin, "five"))


@pytest.mark.timeout(900)
def test_no_acknowledged_message_is_lost_when_a_leader_is_killed(
    compose_project: type[ComposeProject],
) -> None:
    """Issue 7: 10,000 keyed messages with acks=all from the host; `docker kill` the leader of a
    partition mid-stream; keep producing; every acknowledged message is read back at its offset,
    once, in per-key order; the killed node, restarted, catches up (back in every ISR)."""
    project = compose_project()
    project.up()
    project.wait_healthy(_services(3), timeout_s=HEALTHY_S_MAX)

    with Admin(project.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
        assert all(len(p.replicas) == 3 for p in _describe(admin, TOPIC))

        acked: dict[bytes, tuple[int, int]] = {}        # value -> (partition, offset)
        failed: dict[bytes, BaseException] = {}
        victim: int | None = None
        started_at = killed_at = time.monotonic()
        with Producer(project.bootstrap, acks="all") as producer:
            for start in range(0, MESSAGES, CHUNK):
                futures = []
                for seq in range(start, start + CHUNK):
                    key = f"key-{seq % KEYS:02d}".encode()
                    value = key + f":{seq:06d}".encode()
                    futures.append((value, producer.send(TOPIC, value, key=key)))
                if victim is None and start + CHUNK >= KILL_AFTER:
                    # Kill, while this chunk is in flight, the node that itself says it leads
                    # partition 0 (another node's metadata may lag a leadership move).
                    leaders = _confirmed_leaders(project, TOPIC)
                    assert 0 in leaders, f"no node confirms it leads partition 0: {leaders}"
                    victim = leaders[0].leader_id
                    run(["docker", "kill", project.container(f"node{victim}")])
                    killed_at = time.monotonic()
                for value, future in futures:
                    try:
                        metadata = future.result(timeout=ACK_WAIT_S_MAX)
                    except Exception as error:  # noqa: BLE001 - recorded, judged below
                        failed[value] = error
                    else:
                        acked[value] = (metadata.partition, metadata.offset)
        produced_at = time.monotonic()
        assert victim is not None
        assert not failed, (f"{len(failed)} sends failed, e.g. "
                            f"{list(failed.items())[:3]}")
        assert len(acked) == MESSAGES

        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        read: dict[tuple[int, int], bytes] = {}
        with Consumer(project.bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign(tps)
            consumer.seek_to_beginning()
            end = consumer.end_offsets(tps)
            deadline = time.monotonic() + CONSUME_S_MAX
            while any(consumer.position(tp) < end[tp] for tp in tps):
                assert time.monotonic() < deadline, (
                    f"read {len(read)} records in {CONSUME_S_MAX} s; positions "
                    f"{ {tp.partition: consumer.position(tp) for tp in tps} }, ends {end}")
                for record in consumer.poll(timeout_s=1.0):
                    read[(record.partition, record.offset)] = record.value

        lost = [(v, at) for v, at in acked.items() if read.get(at) != v]
        assert not lost, f"{len(lost)} acknowledged messages lost or changed, e.g. {lost[:5]}"
        values = list(read.values())
        assert len(values) == len(set(values)), "a message was written twice"
        by_key: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
        for (partition, offset), value in sorted(read.items()):
            key, _, seq = value.partition(b":")
            by_key[key].append((partition, offset, int(seq)))
        for key, entries in by_key.items():
            assert len({p for p, _, _ in entries}) == 1, f"{key!r} spread over partitions"
            seqs = [seq for _, _, seq in entries]
            assert seqs == sorted(seqs), f"per-key order broken for {key!r}"

        consumed_at = time.monotonic()

        # The killed node comes back with its volume and catches up: every partition's leader
        # (asked itself: only a leader knows its in-sync set) counts it in sync again.
        project.compose("start", f"node{victim}")
        project.wait_healthy([f"node{victim}"], timeout_s=HEALTHY_S_MAX)
        deadline = time.monotonic() + CATCH_UP_S_MAX
        while True:
            leaders = _confirmed_leaders(project, TOPIC)
            if len(leaders) == PARTITIONS and all(victim in p.in_sync for p in leaders.values()):
                break
            assert time.monotonic() < deadline, f"node {victim} not back in sync: {leaders}"
            time.sleep(1)
        caught_up_s = time.monotonic() - consumed_at
        print(f"produced and acked {MESSAGES} in {killed_at - started_at:.0f} s before and "
              f"{produced_at - killed_at:.0f} s after killing node {victim}; consumed in "
              f"{consumed_at - produced_at:.0f} s; caught up {caught_up_s:.0f} s after that")
