"""The group coordinator inside a Node: the thin asyncio shell around GroupCoordinatorCore.

One core per `__consumer_offsets` partition this node leads. The shell makes no protocol
decisions; it does, in this order for each request:

    leadership + loaded check → core input (validates, mutates memory, returns records)
    → propose the records to the partition's Raft group → wait until committed → answer.

Becoming leader of a partition (the Replica's soft-state callback): wait until the new term's
first entry is committed (so the log holds everything ever acknowledged), replay the partition
from its start into a fresh core, then serve. Until then requests get COORDINATOR_NOT_AVAILABLE
(retriable). Losing leadership drops the core at once; requests get NOT_COORDINATOR.

The internal topic is created by the first FindCoordinator (any node), with
`TIDELOG_OFFSETS_TOPIC_PARTITIONS` partitions (default 16), replication factor min(3, nodes) and
cleanup.policy=compact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidelog.node import errors as E
from tidelog.node.groups import offsets_log as ol
from tidelog.node.groups.assignors import TopicPartition
from tidelog.node.groups.errors import CoordinatorNotAvailableError, NotCoordinatorError
from tidelog.node.groups.lag import GroupLagRefresher
from tidelog.node.groups.state import (
    CommittedOffset,
    Group,
    GroupCoordinatorCore,
    Heartbeat,
    Record,
)
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command, CreateTopic
from tidelog.node.raft import NotLeader, ProposalDropped
from tidelog.node.replica import Replica, ReplicaLostLeadership
from tidelog.node.state_replay import replay_committed
from tidelog.node.topics import partition_group
from tidelog.proto import broker_pb2 as pb
from tidelog.proto.batch import Codec, encode_batch, validate_batch

__all__ = ["GroupCoordinator"]

log = logging.getLogger(__name__)

OFFSETS_TOPIC_PARTITIONS = int(os.environ.get("TIDELOG_OFFSETS_TOPIC_PARTITIONS", "16"))
OFFSETS_RETENTION_MS = int(os.environ.get("TIDELOG_OFFSETS_RETENTION_MS",
                                          str(7 * 24 * 3600 * 1000)))
OFFSETS_TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.bytes": str(16 * 1024 * 1024),
                         "segment.ms": str(3600 * 1000)}
TICK_INTERVAL_S = 0.25
TOPICS_CHECK_INTERVAL_S = 2.0
WRITE_TIMEOUT_S = 10.0
COMMIT_PARTITIONS_MAX = 10_000
DESCRIBE_GROUPS_MAX = 100


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Partition:
    """A `__consumer_offsets` partition this node leads (or is loading)."""

    partition: int
    replica: Replica
    term: int
    core: GroupCoordinatorCore | None = None  # None while loading
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class CoordinatorHost(Protocol):
    """What the coordinator needs of its node: the metadata it reads, where a group's leader
    is, and creating the offsets topic. Nothing else of the Node."""

    @property
    def node_id(self) -> int: ...

    @property
    def batch_bytes_max(self) -> int: ...

    @property
    def state(self) -> MetadataState: ...

    def node_ids(self) -> list[int]: ...

    def leader_of(self, group: str) -> tuple[int, str] | None: ...

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...

    async def wait_for_leaders(self, names: list[str], timeout_s: float) -> None: ...

    def local_replica(self, group: str) -> Replica | None: ...


class GroupCoordinator:
    def __init__(self, host: CoordinatorHost) -> None:
        self.host = host
        self._partitions: dict[int, _Partition] = {}
        self._creating: asyncio.Task[None] | None = None
        # Lag in records and seconds of the groups coordinated here, for metrics (lag.py).
        self.lag = GroupLagRefresher(host, self.committed_offsets)

    # ============================================================== leadership (soft state)

    def on_soft_state(self, replica: Replica) -> None:
        partition = self._offsets_partition_of(replica.group)
        if partition is None:
            return
        current = self._partitions.get(partition)
        if replica.is_leader:
            if current is not None and current.term == replica.term:
                return
            self._drop(partition)
            entry = _Partition(partition=partition, replica=replica, term=replica.term)
            self._partitions[partition] = entry
            entry.task = asyncio.get_running_loop().create_task(
                self._load(entry), name=f"load-offsets-{partition}")
        elif current is not None:
            self._drop(partition)
            log.info("no longer coordinator of __consumer_offsets-%d", partition)

    def _drop(self, partition: int) -> None:
        entry = self._partitions.pop(partition, None)
        if entry is not None and entry.task is not None and not entry.task.done():
            entry.task.cancel()

    async def _load(self, entry: _Partition) -> None:
        replica = entry.replica
        started = time.monotonic()
        try:
            core = GroupCoordinatorCore(offsets_retention_ms=OFFSETS_RETENTION_MS,
                                        partition_counts=self._partition_counts())
            now = _now_ms()
            records = await replay_committed(
                replica, entry.term, lambda key, value: core.replay(key, value, now))
            if records is None:
                return
            if self._partitions.get(entry.partition) is entry and replica.is_leader:
                entry.core = core
                log.info("coordinator of __consumer_offsets-%d loaded: %d records, %d groups "
                         "in %.0f ms", entry.partition, records, len(core.groups),
                         (time.monotonic() - started) * 1000)
                # Offsets of topics deleted while no coordinator was there.
                await self._write(entry, core.set_partition_counts(
                    self._partition_counts(), _now_ms()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("loading __consumer_offsets-%d failed; giving up leadership",
                          entry.partition)
            self._drop(entry.partition)

    # ================================================================== periodic work

    async def run(self) -> None:
        """Session timeouts, group expiry, topic changes: for every loaded partition; the lag
        refresher beside it."""
        lag = asyncio.get_running_loop().create_task(self.lag.run(), name="groups-lag")
        try:
            await self._tick_loop()
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag

    def loaded_groups(self) -> list[Group]:
        """The groups of every loaded partition this node leads, from memory (metrics)."""
        return [group for entry in self._partitions.values()
                if entry.core is not None and entry.replica.is_leader
                for group in entry.core.groups.values()]

    def committed_offsets(self) -> Iterator[tuple[str, TopicPartition, int]]:
        """(group, partition, committed offset) of every group coordinated here."""
        for group in self.loaded_groups():
            for tp, committed in group.offsets.items():
                yield group.group_id, tp, committed.offset

    async def _tick_loop(self) -> None:
        last_topics_check = 0.0
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            now = _now_ms()
            check_topics = time.monotonic() - last_topics_check >= TOPICS_CHECK_INTERVAL_S
            counts = self._partition_counts() if check_topics else {}
            if check_topics:
                last_topics_check = time.monotonic()
            for entry in list(self._partitions.values()):
                core = entry.core
                if core is None:
                    continue
                records = core.tick(now)
                if check_topics and counts != core.partition_counts:
                    records.extend(core.set_partition_counts(counts, now))
                if records:
                    with contextlib.suppress(E.BrokerError):
                        await self._write(entry, records)

    # ===================================================================== requests

    async def find_coordinator(self, request: pb.FindCoordinatorRequest
                               ) -> pb.FindCoordinatorResponse:
        if not request.group_id:
            raise E.InvalidRequestError("group id is empty")
        topic = self.host.state.topics.get(ol.OFFSETS_TOPIC)
        if topic is None:
            await self._ensure_offsets_topic()
            topic = self.host.state.topics.get(ol.OFFSETS_TOPIC)
            if topic is None:
                raise CoordinatorNotAvailableError("the offsets topic is being created; retry")
        partition = ol.partition_for(request.group_id, topic.partitions)
        leader = self.host.leader_of(partition_group(topic.topic_id, partition))
        if leader is None:
            raise CoordinatorNotAvailableError(
                f"__consumer_offsets-{partition} has no leader yet; retry shortly")
        leader_id, address = leader
        return pb.FindCoordinatorResponse(node_id=leader_id, address=address,
                                          partition=partition)

    async def heartbeat(self, request: pb.ConsumerGroupHeartbeatRequest
                        ) -> pb.ConsumerGroupHeartbeatResponse:
        entry, core = self._coordinator_for(request.group_id)
        owned = (frozenset(_tps_from_wire(request.owned)) if request.owned_sent else None)
        hb = Heartbeat(
            group_id=request.group_id, member_id=request.member_id,
            member_epoch=request.member_epoch,
            subscribed_topics=tuple(sorted(set(request.subscribed_topic_names))),
            subscribed_regex=request.subscribed_topic_regex,
            assignor=request.server_assignor, owned=owned,
            session_timeout_ms=request.session_timeout_ms or 45_000,
            rebalance_timeout_ms=request.rebalance_timeout_ms or 300_000,
            client_id=request.client_id)
        result, records = core.heartbeat(hb, _now_ms())
        await self._write(entry, records)
        return pb.ConsumerGroupHeartbeatResponse(
            member_id=result.member_id, member_epoch=result.member_epoch,
            heartbeat_interval_ms=result.heartbeat_interval_ms,
            assignment=_tps_to_wire(result.assignment))

    async def offset_commit(self, request: pb.OffsetCommitRequest) -> pb.OffsetCommitResponse:
        if len(request.partitions) > COMMIT_PARTITIONS_MAX:
            raise E.InvalidRequestError(
                f"{len(request.partitions)} partitions in one commit; at most "
                f"{COMMIT_PARTITIONS_MAX}")
        entry, core = self._coordinator_for(request.group_id)
        now = _now_ms()
        offsets = {}
        for p in request.partitions:
            if p.offset < 0:
                raise E.InvalidRequestError(f"{p.topic}/{p.partition}: offset {p.offset} < 0")
            if len(p.metadata) > ol.METADATA_CHARS_MAX:
                raise E.InvalidRequestError(
                    f"commit metadata of {len(p.metadata)} characters; at most "
                    f"{ol.METADATA_CHARS_MAX}")
            offsets[TopicPartition(p.topic, p.partition)] = CommittedOffset(
                offset=p.offset, metadata=p.metadata, commit_ms=now)
        core.validate_commit(request.group_id, request.member_id, request.member_epoch,
                             offsets)
        if not offsets:
            return pb.OffsetCommitResponse()
        records = core.commit(request.group_id, offsets, now)
        await self._write(entry, records, (request.timeout_ms or 0) / 1000 or WRITE_TIMEOUT_S)
        return pb.OffsetCommitResponse()

    async def offset_fetch(self, request: pb.OffsetFetchRequest) -> pb.OffsetFetchResponse:
        _, core = self._coordinator_for(request.group_id)
        wanted = _tps_from_wire(request.partitions) if request.partitions else None
        found = core.fetch_offsets(request.group_id, wanted)
        response = pb.OffsetFetchResponse()
        for tp in wanted if wanted is not None else sorted(found):
            committed = found.get(tp)
            response.partitions.append(pb.OffsetFetchPartition(
                topic=tp.topic, partition=tp.partition,
                offset=committed.offset if committed else -1,
                metadata=committed.metadata if committed else "",
                commit_timestamp_ms=committed.commit_ms if committed else 0))
        return response

    def list_groups(self) -> pb.ListGroupsResponse:
        response = pb.ListGroupsResponse()
        for entry in self._partitions.values():
            if entry.core is None or not entry.replica.is_leader:
                continue
            for group in entry.core.groups.values():
                response.groups.append(pb.ListedGroup(
                    group_id=group.group_id, state=group.state.value,
                    members=len(group.members), coordinator_id=self.host.node_id))
        return response

    def describe_groups(self, request: pb.DescribeGroupsRequest) -> pb.DescribeGroupsResponse:
        if len(request.group_ids) > DESCRIBE_GROUPS_MAX:
            raise E.InvalidRequestError(f"at most {DESCRIBE_GROUPS_MAX} groups per request")
        response = pb.DescribeGroupsResponse()
        for group_id in request.group_ids:
            out = pb.GroupDescription(group_id=group_id, coordinator_id=self.host.node_id)
            try:
                _, core = self._coordinator_for(group_id)
            except E.BrokerError as exc:
                out.error, out.error_message = exc.code, exc.message
                response.groups.append(out)
                continue
            group = core.describe(group_id)
            if group is None:
                out.error = pb.GROUP_ID_NOT_FOUND
                out.error_message = f"group {group_id!r} does not exist"
                response.groups.append(out)
                continue
            out.state = group.state.value
            out.group_epoch = group.epoch
            out.assignment_epoch = group.assignment_epoch
            out.assignor = group.assignor.value
            for member in sorted(group.members.values(), key=lambda m: m.member_id):
                out.members.append(pb.GroupMember(
                    member_id=member.member_id, member_epoch=member.member_epoch,
                    client_id=member.client_id, client_host=member.client_host,
                    subscribed_topic_names=member.subscribed_topics,
                    subscribed_topic_regex=member.subscribed_regex,
                    assignment=_tps_to_wire(member.assigned),
                    target_assignment=_tps_to_wire(group.target.get(member.member_id, ())),
                    state=member.state.value))
            response.groups.append(out)
        return response

    async def delete_groups(self, request: pb.DeleteGroupsRequest) -> pb.DeleteGroupsResponse:
        response = pb.DeleteGroupsResponse()
        for group_id in request.group_ids[:DESCRIBE_GROUPS_MAX]:
            result = pb.GroupResult(group_id=group_id)
            try:
                entry, core = self._coordinator_for(group_id)
                await self._write(entry, core.delete_group(group_id))
            except E.BrokerError as exc:
                result.error, result.error_message = exc.code, exc.message
            response.results.append(result)
        return response

    # ====================================================================== helpers

    def _coordinator_for(self, group_id: str) -> tuple[_Partition, GroupCoordinatorCore]:
        if not group_id:
            raise E.InvalidRequestError("group id is empty")
        topic = self.host.state.topics.get(ol.OFFSETS_TOPIC)
        if topic is None:
            raise CoordinatorNotAvailableError("the offsets topic does not exist yet; call "
                                               "FindCoordinator first")
        partition = ol.partition_for(group_id, topic.partitions)
        entry = self._partitions.get(partition)
        if entry is None or not entry.replica.is_leader:
            raise NotCoordinatorError(
                f"node {self.host.node_id} is not the coordinator of group {group_id!r} "
                f"(__consumer_offsets-{partition}); find the coordinator again")
        if entry.core is None:
            raise CoordinatorNotAvailableError(
                f"the coordinator of group {group_id!r} is loading its state; retry shortly")
        return entry, entry.core

    async def _write(self, entry: _Partition, records: list[Record],
                     timeout_s: float = WRITE_TIMEOUT_S) -> None:
        """Propose the records as one batch and wait until it is committed."""
        if not records:
            return
        replica = entry.replica
        now = _now_ms()
        batch = encode_batch([(r.key, r.value, (), now) for r in records], codec=Codec.LZ4)
        header = validate_batch(batch, max_bytes=self.host.batch_bytes_max)
        term = replica.term
        try:
            ((_, last),) = replica.propose([(batch, header)])
            await replica.wait_committed(last, term, timeout_s)
        except (NotLeader, ProposalDropped, ReplicaLostLeadership):
            self._drop(entry.partition)
            raise NotCoordinatorError(
                f"node {self.host.node_id} lost leadership of __consumer_offsets-{entry.partition} "
                "while writing; find the coordinator again") from None
        except TimeoutError:
            raise E.RequestTimedOutError(
                f"__consumer_offsets-{entry.partition}: not committed within {timeout_s:.1f} s; "
                "it may still commit") from None

    def _offsets_partition_of(self, group: str) -> int | None:
        topic = self.host.state.topics.get(ol.OFFSETS_TOPIC)
        if topic is None or "/" not in group:
            return None
        topic_id, _, partition = group.partition("/")
        if topic_id != str(topic.topic_id):
            return None
        return int(partition)

    def _partition_counts(self) -> dict[str, int]:
        return {name: t.partitions for name, t in self.host.state.topics.items()
                if not t.internal}

    async def _ensure_offsets_topic(self) -> None:
        if self._creating is None or self._creating.done():
            self._creating = asyncio.get_running_loop().create_task(self._create_offsets_topic())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._creating), 15)

    async def _create_offsets_topic(self) -> None:
        nodes = sorted(self.host.node_ids())
        result = await self.host.propose(CreateTopic(
            name=ol.OFFSETS_TOPIC, partitions=OFFSETS_TOPIC_PARTITIONS,
            replication_factor=min(3, len(nodes)),
            configs=tuple(sorted(OFFSETS_TOPIC_CONFIGS.items())), node_ids=tuple(nodes)))
        if "error" not in result:
            log.info("created %s with %d partitions", ol.OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS)
        await self.host.wait_for_leaders([ol.OFFSETS_TOPIC], 10.0)


def _tps_from_wire(items: object) -> list[TopicPartition]:
    return [TopicPartition(item.topic, p) for item in items for p in item.partitions]  # type: ignore[attr-defined]


def _tps_to_wire(tps: object) -> list[pb.TopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(tps):  # type: ignore[call-overload]
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [pb.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]
