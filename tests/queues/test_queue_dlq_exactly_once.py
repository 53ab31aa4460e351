"""Dead letters exactly once on a real 3-node cluster: deterministic DLQ batches against a zombie
coordinator, a DLQ leader restart and a lost reply (node/queues/dlq_ledger.py).

The nodes run through tests/queues/dlq_crash_node.py (marker files switch its faults on): the
coordinator stops itself (SIGSTOP) just before its DLQ write, leaving the exact write it was
about to send; its successor writes the batch and more after it; the test delivers the zombie's
write late, again and again (a write delayed in the network), also after the DLQ partition's
leader restarted; the DLQ leader never appends it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tidelog.client import Admin
from tidelog.node.local_cluster import LocalCluster
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import broker_pb2_grpc
from tidelog.proto import queue_pb2 as qpb

from tests.queues.test_queue_rpc_cluster import (
    RETRIABLE,
    Queues,
    create_queue,
    detail_of,
    produce,
    read_topic,
    receive_until,
    settle,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

CRASH_NODE = Path(__file__).with_name("dlq_crash_node.py")
LATER_BATCHES = 6    # > PENDING_BATCHES_MAX: the zombie's copy is older than the last 5


class FaultNodeCluster(LocalCluster):
    def command(self, node: Any) -> list[str]:
        base = super().command(node)
        assert base[1:3] == ["-m", "tidelog.node.main"], base
        return [sys.executable, str(CRASH_NODE), *base[3:]]


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, markers: Path) -> Iterator[LocalCluster]:
    running = FaultNodeCluster(3, tmp_path_factory.mktemp("dlq-once") / "cluster", env={
        "TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2", "TIDELOG_QUEUE_STATE_PARTITIONS": "4",
        "TIDELOG_TEST_MARKERS": str(markers)})
    running.start()
    try:
        running.wait_healthy(timeout_s=60)
        with Admin(running.bootstrap) as admin:
            admin.create_topic("once", partitions=1, replication_factor=3)
        yield running
    finally:
        running.stop()


class ShortQueues(Queues):
    """Queues whose calls give up on an unresponsive node after ATTEMPT_S (a paused
    coordinator that clients still point at would hold each call for its whole timeout)."""

    ATTEMPT_S = 5.0

    def call(self, method: str, request: Any, queue: str, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.coordinator(queue, timeout_s)
            try:
                return getattr(self.stub(found.address), method)(request,
                                                                 timeout=self.ATTEMPT_S)
            except grpc.RpcError as exc:
                detail = detail_of(exc)
                retriable = (detail is not None and detail.code in RETRIABLE) or \
                    exc.code() in (grpc.StatusCode.UNAVAILABLE,  # type: ignore[attr-defined]
                                   grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retriable or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


@pytest.fixture
def queues(cluster: LocalCluster) -> Iterator[Queues]:
    q = ShortQueues(cluster)
    yield q
    q.close()


def dead_lettered(queues: Queues, name: str) -> int:
    return queues.call("DescribeQueue", qpb.DescribeQueueRequest(queue=name), name,
                       timeout_s=90).stats.dead_lettered_total


def sources(cluster: LocalCluster, dlq: str) -> list[int]:
    """The source offsets of the dead letters in partition 0 of `dlq`, in DLQ order."""
    return [int(dict(r.headers)["tidelog-dlq-source-offset"]) for r in read_topic(cluster, dlq, 0)]


def reject_one(queues: Queues, name: str) -> None:
    (m,) = receive_until(queues, name, "c", 1, ack=False)
    assert not settle(queues, name, "c", [m], qpb.REJECT, reason="poison").results


def queue_apart_from_its_dlq_leader(queues: Queues, cluster: LocalCluster, prefix: str
                                    ) -> tuple[str, int]:
    """A new queue whose coordinator does not lead its DLQ partition 0 (the zombie's copy then
    travels to another node's DLQ leader, the case the producer check is for)."""
    for i in range(12):
        name = f"{prefix}{i}-q"
        create_queue(queues, name, ["once"], start="latest")
        coordinator = cluster.settled_leader_of("__queue_state", queues.coordinator(name).partition)
        if coordinator != cluster.settled_leader_of(f"{name}.dlq", 0):
            return name, coordinator
    raise AssertionError("every queue's coordinator also led its DLQ partition")


def send_copy(cluster: LocalCluster, topic: str, batches: bytes, node_id: int) -> Any:
    """Deliver the zombie's write to `node_id` (the DLQ partition's leader) as it would have
    sent it: the ProduceResponse, or the error code it is refused with."""
    request = pb.ProduceRequest(topic=topic, partition=0, acks=pb.ACKS_ALL, timeout_ms=10_000,
                                batches=batches)
    with grpc.insecure_channel(cluster.node(node_id).address) as channel:
        try:
            return broker_pb2_grpc.BrokerStub(channel).Produce(request, timeout=20)
        except grpc.RpcError as exc:
            detail = detail_of(exc)
            assert detail is not None, exc
            return detail.code


def test_a_zombie_copy_lands_never_again_at_any_later_time(
        cluster: LocalCluster, queues: Queues, markers: Path) -> None:
    """The coordinator stops (SIGSTOP) right before its DLQ write of committed batch 0; its
    successor writes that batch and six more. The zombie's write is then delivered three times:
    right after the successor's (answered as a duplicate), after the six (an older sequence:
    refused) and after the DLQ leader restarted and rebuilt its producer state from its log
    (refused); then the zombie itself resumes. Each dead letter is in the DLQ once."""
    name, _ = queue_apart_from_its_dlq_leader(queues, cluster, "zombie")
    dlq = f"{name}.dlq"
    produce(cluster, "once", [(b"k0", b"first", [])])
    (markers / f"{name}.pause").touch()
    reject_one(queues, name)           # committed as DlqBatch sequence 0, then the pause
    paused = wait_until(lambda: list(markers.glob(f"{name}.paused-*")), 30,
                        "the coordinator stopping just before its DLQ write")
    zombie = next(n for n in cluster.nodes if n.pid == int(paused[0].name.rsplit("-", 1)[1]))
    copy = (markers / f"{name}.copy").read_bytes()
    wait_until(lambda: dead_lettered(queues, name) == 1, 90, "the successor's write of batch 0")
    (first,) = read_topic(cluster, dlq, 0)
    early = send_copy(cluster, dlq, copy, cluster.leader_of(dlq, 0))
    assert isinstance(early, pb.ProduceResponse) and early.duplicate, early
    assert early.base_offset == first.offset
    produce(cluster, "once", [(b"k", b"later %d" % i, []) for i in range(LATER_BATCHES)])
    for i in range(LATER_BATCHES):     # one batch each: sequences 1..6 on the DLQ partition
        reject_one(queues, name)
        wait_until(lambda i=i: dead_lettered(queues, name) == i + 2, 60, f"dead letter {i + 2}")
    assert send_copy(cluster, dlq, copy, cluster.leader_of(dlq, 0)) == \
        pb.OUT_OF_ORDER_SEQUENCE
    # The DLQ partition's (preferred) leader restarts (SIGKILL) and leads again: its producer
    # state now comes from its log, read back when it opened.
    dlq_leader = cluster.settled_leader_of(dlq, 0)
    assert dlq_leader != zombie.id
    cluster.kill(dlq_leader)
    cluster.start(dlq_leader)
    cluster.wait_healthy(timeout_s=60, node_ids=[dlq_leader])
    assert cluster.settled_leader_of(dlq, 0, timeout_s=60) == dlq_leader
    assert send_copy(cluster, dlq, copy, dlq_leader) == pb.OUT_OF_ORDER_SEQUENCE
    cluster.resume(zombie.id)
    cluster.wait_healthy(timeout_s=60)
    wait_until(lambda: dead_lettered(queues, name) == 1 + LATER_BATCHES, 60,
               "the queue served after the zombie resumed")
    landed = sources(cluster, dlq)
    assert len(landed) == len(set(landed)) == 1 + LATER_BATCHES, landed   # each exactly once


@pytest.mark.parametrize("planted", [False, True], ids=["idempotent", "planted-not-idempotent"])
def test_a_dead_letter_whose_reply_was_lost_is_written_again_and_lands_once(
        cluster: LocalCluster, queues: Queues, markers: Path, planted: bool) -> None:
    """The DLQ write succeeds but its reply is lost (`<queue>.loseack`): the coordinator writes
    the same batch again, which the DLQ leader answers as a duplicate. Planted bug
    (`<queue>.noidem`: written without the producer sequence): two copies."""
    name = f"lost-{'planted' if planted else 'idem'}-q"
    create_queue(queues, name, ["once"], start="latest")
    produce(cluster, "once", [(b"lk", b"lost reply", [])])
    (markers / f"{name}.loseack").touch()
    if planted:
        (markers / f"{name}.noidem").touch()
    reject_one(queues, name)
    wait_until(lambda: dead_lettered(queues, name) == 1, 30, "the dead letter committed")
    assert not (markers / f"{name}.loseack").exists(), "the reply was not lost"
    time.sleep(0.5)    # nothing else is pending: a third copy would not come later
    landed = sources(cluster, f"{name}.dlq")
    assert len(landed) == (2 if planted else 1) and len(set(landed)) == 1, landed


def test_an_ack_sent_again_after_a_lost_reply_is_answered_ok(
        cluster: LocalCluster, queues: Queues) -> None:
    """Issue 12 (chaos isolate-leader seed 4): the same Settle sent again, as a client does
    when the reply is lost, is OK, also after the queue's coordinator moved; another
    consumer's ack of the record is still LOCK_LOST."""
    name = "resettle-q"
    create_queue(queues, name, ["once"], start="latest")
    produce(cluster, "once", [(b"a", b"ack me twice", [])])
    (m,) = receive_until(queues, name, "c", 1, ack=False)
    for _ in range(2):
        assert not settle(queues, name, "c", [m], qpb.ACK).results
    coordinator = cluster.leader_of("__queue_state", queues.coordinator(name).partition)
    cluster.kill(coordinator)
    cluster.start(coordinator)
    cluster.wait_healthy(timeout_s=60)
    assert not settle(queues, name, "c", [m], qpb.ACK).results       # on the successor
    (other,) = settle(queues, name, "other", [m], qpb.ACK).results
    assert other.error == pb.LOCK_LOST, other
    stats = queues.call("DescribeQueue", qpb.DescribeQueueRequest(queue=name), name).stats
    assert stats.acked_total == 1, stats
