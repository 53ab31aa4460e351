"""The asyncio client (tidelog.client.aio) against one real 3-node cluster with mTLS required
(`--tls-client-auth required`), shared by the module: every call below goes over TLS with a
client certificate, through grpc.aio channels.

What each test shows: 1,000 records sent with acks=all come back in order per partition, at the
offsets their futures reported, and seek/offsets_for_times find them; two AIOConsumers of one
group split the partitions and between them read each record once, the group's lag is 0 after
their commits, and one that stops calling getmany leaves the group (max_poll_interval_ms); queue
receive + ack settles every message (none redelivered); the admin calls; a SCRAM login over mTLS
(awaited, once per node) names the user, a wrong password is refused; a zombie producer (same
transactional_id) is fenced by its successor; an idempotent producer keeps every record exactly
once across a SIGKILL of the partition's leader (the module's last cluster test: the node is not
restarted). Without a cluster: a damaged fetched batch raises CorruptBatch on every take until a
seek, while another partition's records still come out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.client import Admin, TopicPartition
from tidelog.client.aio import AIOAdmin, AIOConsumer, AIOProducer, AIOQueueConsumer
from tidelog.client.auth import AuthenticationFailed
from tidelog.client.errors import (
    InvalidReplicationFactor,
    ProducerFenced,
    TopicAlreadyExists,
    TopicNotFound,
)
from tidelog.client.security import ClientSecurity
from tidelog.node.local_cluster import LocalCluster

from tests.clusters import dev_certs, running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

# SCRAM on as well: a client certificate alone authenticates (Cert:CN=alice); a SCRAM login over
# mTLS names the user (test_scram_login_over_mtls)
ENV = {"TIDELOG_OFFSETS_TOPIC_PARTITIONS": "2", "TIDELOG_QUEUE_STATE_PARTITIONS": "2",
       "TIDELOG_AUTHENTICATION": "scram"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dev_certs(tmp_path_factory, "aio")


@pytest.fixture(scope="module")
def cluster(certs: Path) -> Iterator[LocalCluster]:
    with running_cluster(certs.parent, ENV, tls_dir=certs, tls_client_auth="required") as running:
        yield running


@pytest.fixture(scope="module")
def security(certs: Path) -> ClientSecurity:
    return ClientSecurity(tls_ca=certs / "ca.pem", tls_cert=certs / "client-alice.pem",
                          tls_key=certs / "client-alice-key.pem")


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def read_all(consumer: AIOConsumer, count: int, timeout_s: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records += batch
    return records


def test_1000_records_acks_all_read_back_in_order(cluster: LocalCluster,
                                                  security: ClientSecurity) -> None:
    topic = name("aio-order")

    async def run() -> None:
        async with AIOAdmin(cluster.bootstrap, security=security) as admin:
            await admin.create_topic(topic, partitions=3, replication_factor=3)
        # buffer_memory well below the 1,000 records' bytes: most wait (not the loop) for space
        async with AIOProducer(cluster.bootstrap, security=security, linger_ms=5,
                               batch_size=4096, buffer_memory=8192) as producer:
            assert producer.config.acks == "all"
            first = await producer.send(topic, b"first", key=b"k0", headers=[("h", b"v")],
                                        partition=0)
            assert (first.partition, first.offset) == (0, 0)
            futures = [producer.send_nowait(topic, f"{i}".encode(), key=f"k{i % 7}".encode())
                       for i in range(999)]
            await producer.flush(30)
            assert all(f.done() for f in futures)
            metas = [f.result() for f in futures]
            assert producer.metrics()["requests_sent"] < 200  # batched, not one per record
            assert producer.metrics()["buffer_used_bytes"] == 0
            # no sender thread (the sync client's are tidelog-*): tasks on this loop
            assert not [t.name for t in threading.enumerate() if t.name.startswith("tidelog")]
        sent: dict[int, list[tuple[int, bytes]]] = {0: [(0, b"first")], 1: [], 2: []}
        for i, meta in enumerate(metas):
            sent[meta.partition].append((meta.offset, f"{i}".encode()))
        async with AIOConsumer(cluster.bootstrap, topics=[topic], security=security,
                               auto_offset_reset="earliest") as consumer:
            records = await read_all(consumer, 1000)
            assert len(records) == 1000
            got: dict[int, list[tuple[int, bytes]]] = {0: [], 1: [], 2: []}
            for r in records:
                got[r.partition].append((r.offset, r.value))
            assert got == sent  # same records, same offsets, in order per partition
            assert records[[r.value for r in records].index(b"first")].headers == (("h", b"v"),)
            tp0 = TopicPartition(topic, 0)
            ends = await consumer.end_offsets([tp0])
            assert ends[tp0] == sent[0][-1][0] + 1
            found = await consumer.offsets_for_times({tp0: first.timestamp})
            assert found[tp0] == 0
            await consumer.seek_to_beginning(tp0)
            again = await consumer.getmany(tp0, timeout_ms=5000, max_records=1)
            assert [r.offset for r in again[tp0]] == [0]
            await consumer.seek_to_end(tp0)
            assert consumer.position(tp0) == ends[tp0]
            assert await consumer.getmany(tp0, timeout_ms=300) == {}

    asyncio.run(run())


def test_two_group_members_split_the_partitions(cluster: LocalCluster,
                                                security: ClientSecurity) -> None:
    topic, group = name("aio-group"), name("g")
    half = 100

    async def poll(members: tuple[AIOConsumer, ...], seen: list, until: object,
                   timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not until() and time.monotonic() < deadline:  # type: ignore[operator]
            for consumer in members:
                for batch in (await consumer.getmany(timeout_ms=100)).values():
                    seen += [(consumer.member_id, r.partition, r.offset) for r in batch]

    async def run() -> None:
        async with AIOAdmin(cluster.bootstrap, security=security) as admin, \
                AIOProducer(cluster.bootstrap, security=security) as producer:
            await admin.create_topic(topic, partitions=4, replication_factor=3)
            for i in range(half):  # read by whoever owns the partition while the group forms
                producer.send_nowait(topic, f"{i}".encode(), key=f"{i}".encode())
            await producer.flush(30)
            options = {"group_id": group, "topics": [topic], "security": security,
                       "auto_offset_reset": "earliest", "session_timeout_ms": 6000}
            one = AIOConsumer(cluster.bootstrap, **options)
            two = AIOConsumer(cluster.bootstrap, max_poll_interval_ms=1500, **options)
            await one.start()
            await two.start()
            try:
                seen: list = []

                def split() -> bool:
                    a, b = one.assignment(), two.assignment()
                    return bool(a and b and len(a | b) == 4 and not a & b)

                await poll((one, two), seen, split)
                assert split(), (one.assignment(), two.assignment())
                owner = {tp.partition: c.member_id for c in (one, two) for tp in c.assignment()}
                for i in range(half, 2 * half):  # read by the partition's owner only
                    producer.send_nowait(topic, f"{i}".encode(), key=f"{i}".encode())
                await producer.flush(30)
                mark = len(seen)
                await poll((one, two), seen, lambda: len(seen) >= 2 * half)
                assert len({(p, o) for _, p, o in seen}) == len(seen) == 2 * half  # each once
                late = seen[mark:]
                assert late and all(owner[p] == m for m, p, _ in late), (owner, late)
                assert {m for m, _, _ in late} == {one.member_id, two.member_id}
                await two.commit()
                await one.commit()
                lag = await admin.list_group_lag(group)
                assert len(lag) == 4 and all(p.lag == 0 for p in lag.values()), lag
                # `two` stops calling getmany: after max_poll_interval_ms it leaves the group
                # and `one` gets every partition
                deadline = time.monotonic() + 20
                while len(one.assignment()) < 4 and time.monotonic() < deadline:
                    assert await one.getmany(timeout_ms=100) == {}  # nothing new, no replay
                assert len(one.assignment()) == 4 and two.assignment() == set()
            finally:
                await one.close()
                await two.close()

    asyncio.run(run())


def test_queue_receive_and_ack(cluster: LocalCluster, security: ClientSecurity) -> None:
    topic, queue = name("aio-jobs"), name("q")
    count = 30

    async def run() -> None:
        async with AIOAdmin(cluster.bootstrap, security=security) as admin:
            await admin.create_topic(topic, partitions=2, replication_factor=3)
        async with AIOProducer(cluster.bootstrap, security=security) as producer:
            for i in range(count):
                producer.send_nowait(topic, f"job-{i}".encode())
            await producer.flush(30)
        async with AIOQueueConsumer(cluster.bootstrap, queue=queue, topics=[topic],
                                    security=security) as consumer:
            got: list = []
            deadline = time.monotonic() + 30
            while len(got) < count and time.monotonic() < deadline:
                got += await consumer.receive(max_messages=10, timeout_s=1)
            assert sorted(m.value for m in got) == sorted(f"job-{i}".encode()
                                                          for i in range(count))
            assert consumer.held == count
            extended = await consumer.extend(got[0], 60)
            assert extended is not None and extended > time.time() * 1000
            results = await asyncio.gather(*(consumer.ack(m) for m in got))
            assert results == [None] * count
            assert consumer.held == 0
            assert await consumer.receive(max_messages=10, timeout_s=0.5) == []
        with Admin(cluster.bootstrap, security=security) as sync_admin:
            stats = sync_admin.describe_queue(queue).stats
        assert (stats.acked_total, stats.in_flight, stats.redelivered_total) == (count, 0, 0), \
            stats.to_dict()

    asyncio.run(run())


def test_admin_topics(cluster: LocalCluster, security: ClientSecurity) -> None:
    topic = name("aio-admin")

    async def run() -> None:
        async with AIOAdmin(cluster.bootstrap, security=security) as admin:
            await admin.create_topic(topic, partitions=2, replication_factor=3,
                                     configs={"retention.ms": "60000"})
            assert topic in await admin.list_topics()
            (described,) = await admin.describe_topics([topic])
            assert len(described.partitions) == 2
            assert all(len(p.replicas) == 3 and p.leader_id > 0 for p in described.partitions)
            assert described.configs.get("retention.ms") == "60000"
            with pytest.raises(TopicAlreadyExists):
                await admin.create_topic(topic, partitions=2, replication_factor=3)
            with pytest.raises(InvalidReplicationFactor):
                await admin.create_topic(name("aio-bad"), partitions=1, replication_factor=5)
            offsets = await admin.list_offsets({TopicPartition(topic, 0): "latest"})
            assert offsets == {TopicPartition(topic, 0): 0}
            assert [n.id for n in await admin.list_nodes()] == [1, 2, 3]
            await admin.delete_topic(topic)
            deadline = time.monotonic() + 15
            while topic in await admin.list_topics() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            with pytest.raises(TopicNotFound):
                await admin.describe_topics([topic])

    asyncio.run(run())


def test_scram_login_over_mtls(cluster: LocalCluster, security: ClientSecurity) -> None:
    topic = name("aio-scram")
    with Admin(cluster.bootstrap, security=security) as sync_admin:
        sync_admin.create_user("bob", "bob-password")
    bob = dataclasses.replace(security, username="bob", password="bob-password")
    wrong = dataclasses.replace(security, username="bob", password="not-it")

    async def run() -> None:
        from tidelog.proto import security_pb2

        async with AIOAdmin(cluster.bootstrap, security=bob) as admin:
            await admin.create_topic(topic, partitions=1, replication_factor=3)
            connections = admin.metadata.aio
            answer = await connections.call(cluster.nodes[0].address, "WhoAmI",
                                            security_pb2.WhoAmIRequest(), timeout_s=10,
                                            service="security")
            assert answer.principal == "User:bob"
            assert connections.logins >= 1
        async with AIOProducer(cluster.bootstrap, security=bob) as producer:
            sent = await producer.send(topic, b"as bob")
        async with AIOConsumer(cluster.bootstrap, topics=[topic], security=bob,
                               auto_offset_reset="earliest") as consumer:
            (record,) = await read_all(consumer, 1)
            assert (record.offset, record.value) == (sent.offset, b"as bob")
        async with AIOAdmin(cluster.bootstrap, security=wrong) as admin:
            with pytest.raises(AuthenticationFailed):
                await admin.list_topics()

    asyncio.run(run())


def test_a_zombie_aio_producer_is_fenced_by_its_successor(cluster: LocalCluster,
                                                          security: ClientSecurity) -> None:
    topic, identity = name("aio-fenced"), name("orders")

    async def run() -> None:
        async with AIOAdmin(cluster.bootstrap, security=security) as admin:
            await admin.create_topic(topic, partitions=1, replication_factor=3)
        options = {"security": security, "transactional_id": identity, "linger_ms": 0}
        async with AIOProducer(cluster.bootstrap, **options) as zombie:
            await zombie.send(topic, b"zombie-1")
            async with AIOProducer(cluster.bootstrap, **options) as successor:
                await successor.send(topic, b"successor-1")
                with pytest.raises(ProducerFenced):
                    await zombie.send(topic, b"zombie-2")
                with pytest.raises(ProducerFenced):
                    zombie.send_nowait(topic, b"zombie-3")  # it stops: nothing more is sent
                await successor.send(topic, b"successor-2")
        async with AIOConsumer(cluster.bootstrap, topics=[topic], security=security,
                               auto_offset_reset="earliest") as consumer:
            values = [r.value for r in await read_all(consumer, 3)]
            assert await consumer.getmany(timeout_ms=200) == {}
        assert values == [b"zombie-1", b"successor-1", b"successor-2"]

    asyncio.run(run())


def test_idempotent_produce_survives_a_leader_kill(cluster: LocalCluster,
                                                   security: ClientSecurity) -> None:
    topic = name("aio-failover")
    total = 400
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    kill_at = rng.randrange(total // 4, total // 2)

    async def run() -> None:
        async with AIOAdmin(cluster.bootstrap, security=security) as admin:
            await admin.create_topic(topic, partitions=1, replication_factor=3)
        leader = cluster.settled_leader_of(topic, 0)
        async with AIOProducer(cluster.bootstrap, security=security, linger_ms=2,
                               batch_size=2048, request_timeout_ms=3000,
                               delivery_timeout_ms=60_000) as producer:
            futures = []
            for i in range(total):
                futures.append(producer.send_nowait(topic, f"{i}".encode()))
                if i == kill_at:
                    cluster.kill(leader)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
            await producer.flush(90)
            metas = [f.result() for f in futures]
            print("producer metrics:", producer.metrics())
            assert producer.metrics()["retries_sent"] >= 1  # batches sent to the dead leader
        offsets = [m.offset for m in metas]
        assert offsets == sorted(offsets) and len(set(offsets)) == total
        assert cluster.leader_of(topic, 0) != leader
        async with AIOConsumer(cluster.bootstrap, topics=[topic], security=security,
                               auto_offset_reset="earliest") as consumer:
            records = await read_all(consumer, total, timeout_s=30)
            extra = await consumer.getmany(timeout_ms=300)
        values = [int(r.value) for r in records] + [int(r.value) for b in extra.values()
                                                    for r in b]
        assert values == list(range(total))  # none lost, no duplicate, in order
        assert [r.offset for r in records] == offsets

    asyncio.run(run())  # the module's last test: the killed node stays down (module teardown)


def test_a_damaged_batch_raises_until_seek_and_does_not_hold_back_others() -> None:
    """No cluster: real encoded batches in the fetcher's buffer, one with a flipped byte in its
    records area (the checksum catches it)."""
    from tidelog.client.aio.connection import AioConnections
    from tidelog.client.aio.fetcher import AioFetcher
    from tidelog.client.aio.metadata import AioMetadata
    from tidelog.client.config import ConsumerConfig
    from tidelog.client.errors import CorruptBatch
    from tidelog.proto import batch as codec

    config = ConsumerConfig(bootstrap=("127.0.0.1:1",))
    fetcher = AioFetcher(config, AioMetadata(AioConnections(), config.bootstrap,
                                             request_timeout_ms=1000, max_age_ms=1000,
                                             retry_backoff_ms=10))
    bad, good = TopicPartition("t", 0), TopicPartition("t", 1)
    fetcher.assign([bad, good])
    records = [(None, f"v{i}".encode(), (), 1_700_000_000_000 + i) for i in range(3)]
    damaged = bytearray(codec.encode_batch(records, codec=codec.Codec.NONE))
    damaged[-2] ^= 0xFF
    for tp, data in ((bad, bytes(damaged)), (good, codec.encode_batch(records))):
        fetcher.seek(tp, 0)
        st = fetcher.states[tp]
        st.raw.append(memoryview(data))
        st.raw_bytes, st.fetch_offset = len(data), 3
    taken: list = []
    for _ in range(2):  # the good partition's records come out whichever is asked first
        with contextlib.suppress(CorruptBatch):
            taken += fetcher.take(10)
    assert [(r.partition, r.value) for r in taken] == [(1, b"v0"), (1, b"v1"), (1, b"v2")]
    for _ in range(2):  # never skipped silently
        with pytest.raises(CorruptBatch):
            fetcher.take(10)
    fetcher.seek(bad, 3)  # past it
    assert fetcher.take(10) == []
    assert fetcher.states[bad].position == 3
