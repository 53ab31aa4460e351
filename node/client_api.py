"""The client-facing API of a node: the Broker service's operations.

Topic administration goes through the metadata group (`MetadataProposer`); produce, fetch and
list-offsets go to the local partition replicas (`ReplicaDirectory`), on their leader only: any
other node answers NOT_LEADER with the leader's address. Each collaborator is seen only through
the narrow Protocol below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

from tidelog.node import errors as E
from tidelog.node.config import NodeConfig
from tidelog.node.listeners import address_for_client
from tidelog.node.membership import member_ids, placement_nodes
from tidelog.node.metadata import INTERNAL_TOPIC_PREFIX, MetadataState, TopicInfo
from tidelog.node.metadata_commands import (
    AlterConfigs,
    Command,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    InitProducer,
)
from tidelog.node.metadata_service import raise_result
from tidelog.node.metrics.produce import record_committed, record_produced
from tidelog.node.produce_validation import ProduceLimits, validate_produce
from tidelog.node.producer_state import Duplicate
from tidelog.node.raft import NotLeader, ProposalDropped
from tidelog.node.reassignment_api import ReassignmentApi
from tidelog.node.replica import Replica, ReplicaLostLeadership
from tidelog.node.replica_manager import LeaderHint
from tidelog.node.storage import StorageError
from tidelog.node.topics import effective_configs, partition_group
from tidelog.proto import broker_pb2 as pb
from tidelog.proto.batch import decode_records, iter_batches

FETCH_BYTES_MAX = 32 * 1024 * 1024  # per Fetch answer; below the 64 MiB gRPC message limit
FETCH_PARTITION_BYTES_DEFAULT = 1024 * 1024
FETCH_WAIT_MS_MAX = 30_000


class MetadataProposer(Protocol):
    """The metadata group as the client API uses it."""

    @property
    def state(self) -> MetadataState: ...

    @property
    def leader_id(self) -> int | None: ...

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...


class ReplicaDirectory(Protocol):
    """This node's partition replicas and what it knows of every group's leader."""

    @property
    def partitions(self) -> Mapping[str, Replica]: ...

    @property
    def leader_hints(self) -> Mapping[str, LeaderHint]: ...

    def alive(self, node_id: int) -> bool: ...

    def client_address(self, node_id: int) -> str: ...

    async def wait_for_leaders(self, names: list[str], timeout_s: float) -> None: ...


class ClientApi:
    """The Broker service's operations (node/service.py maps them to gRPC)."""

    def __init__(self, config: NodeConfig, *, metadata: MetadataProposer,
                 replicas: ReplicaDirectory) -> None:
        self.config = config
        self.id = config.node_id
        self._metadata = metadata
        self._replicas = replicas
        self.reassignments = ReassignmentApi(metadata=metadata, replicas=replicas)

    def address_for_client(self, node_id: int, fallback: str | None = None) -> str:
        """Node `node_id`'s address for the client of the current call: its address on the
        listener the call came in on (node/listeners.py), else its advertised address."""
        default = self._metadata.state.nodes.get(node_id)
        if default is None:
            default = fallback if fallback is not None else self._replicas.client_address(node_id)
        return address_for_client(self._metadata.state.listeners, node_id, default)

    def metadata_response(self, topics: list[str], include_internal: bool) -> pb.MetadataResponse:
        leader = self._metadata.leader_id
        response = pb.MetadataResponse(cluster_id=self.config.cluster_id,
                                       metadata_leader_id=leader if leader is not None else -1)
        voters = self._metadata_voters()
        state = self._metadata.state
        for node_id in sorted(member_ids(self.config, state)):  # joined nodes too
            response.nodes.append(pb.NodeInfo(
                id=node_id, address=self.address_for_client(
                    node_id, self.config.peers.get(node_id) or (
                        m.address if (m := state.members.get(node_id)) else "")),
                alive=self._replicas.alive(node_id),
                voter=node_id in voters))
        names = topics or sorted(self._metadata.state.topics)
        for name in names:
            topic = self._metadata.state.topics.get(name)
            if topic is None:
                response.topics.append(pb.TopicMetadata(
                    name=name, error=pb.UNKNOWN_TOPIC_OR_PARTITION,
                    error_message=f"topic {name!r} does not exist"))
                continue
            if topic.internal and not include_internal and not topics:
                continue
            response.topics.append(self._topic_metadata(topic))
        return response

    def _metadata_voters(self) -> set[int]:
        """The metadata group's voters as this node's replica knows them (they change when a
        node joins with --metadata-voter or a voter is removed); --peers' first ones before."""
        replica = getattr(self._metadata, "replica", None)
        if replica is None:
            return set(self.config.metadata_voters)
        return {int(v) for v in replica.core.membership.voters}

    def _topic_metadata(self, topic: TopicInfo) -> pb.TopicMetadata:
        out = pb.TopicMetadata(name=topic.name, configs=effective_configs(topic.configs),
                               internal=topic.internal)
        for partition, replicas in enumerate(topic.replicas):
            group = partition_group(topic.topic_id, partition)
            replica = self._replicas.partitions.get(group)
            hint = self._replicas.leader_hints.get(group)
            meta = pb.PartitionMetadata(
                partition=partition, leader_id=hint.leader_id if hint else -1,
                leader_term=hint.term if hint else 0, replicas=replicas,
                high_watermark=-1, log_end_offset=-1, log_start_offset=-1)
            if replica is not None and replica.is_leader:
                meta.in_sync.extend(replica.in_sync_replicas(self._replicas.alive))
                meta.high_watermark = replica.high_watermark
                meta.log_end_offset = replica.log.log_end_offset
                meta.log_start_offset = replica.log.log_start_offset
            out.partitions.append(meta)
        return out

    async def create_topics(self, request: pb.CreateTopicsRequest) -> pb.CreateTopicsResponse:
        response = pb.CreateTopicsResponse()
        timeout_s = _timeout_s(request.timeout_ms, 10_000)
        self._check_topic_count(len(request.topics))
        created = []
        for spec in request.topics:
            try:
                _refuse_internal(spec.name, "created")
                result = await self._metadata.propose(CreateTopic(
                    name=spec.name, partitions=spec.partitions,
                    replication_factor=spec.replication_factor,
                    configs=tuple(sorted(spec.configs.items())),
                    node_ids=tuple(placement_nodes(self.config, self._metadata.state)),
                    validate_only=request.validate_only,
                ), timeout_s)
            except (E.InvalidRequestError, E.PolicyViolationError) as exc:
                result = {"error": type(exc).__name__, "code": exc.code, "message": exc.message}
            response.results.append(_topic_result(spec.name, result))
            if "error" not in result and not request.validate_only:
                created.append(spec.name)
        await self._replicas.wait_for_leaders(created, min(timeout_s, 10.0))
        return response

    async def delete_topics(self, request: pb.DeleteTopicsRequest) -> pb.DeleteTopicsResponse:
        response = pb.DeleteTopicsResponse()
        timeout_s = _timeout_s(request.timeout_ms, 10_000)
        self._check_topic_count(len(request.topics))
        for name in request.topics:
            try:
                _refuse_internal(name, "deleted")
                result = await self._metadata.propose(DeleteTopic(name=name), timeout_s)
            except (E.InvalidRequestError, E.PolicyViolationError) as exc:
                result = {"error": type(exc).__name__, "code": exc.code, "message": exc.message}
            response.results.append(_topic_result(name, result))
        return response

    def describe_configs(self, request: pb.DescribeConfigsRequest) -> pb.DescribeConfigsResponse:
        response = pb.DescribeConfigsResponse()
        for name in request.topics or sorted(self._metadata.state.topics):
            topic = self._metadata.state.topics.get(name)
            if topic is None:
                response.topics.append(pb.TopicConfigs(
                    name=name, error=pb.UNKNOWN_TOPIC_OR_PARTITION,
                    error_message=f"topic {name!r} does not exist"))
            else:
                response.topics.append(pb.TopicConfigs(
                    name=name, configs=effective_configs(topic.configs)))
        return response

    async def alter_configs(self, request: pb.AlterConfigsRequest) -> pb.AlterConfigsResponse:
        _refuse_internal(request.topic, "altered")
        result = await self._metadata.propose(AlterConfigs(
            name=request.topic, set=tuple(sorted(request.set.items())),
            delete=tuple(request.delete), validate_only=request.validate_only))
        raise_result(result)
        return pb.AlterConfigsResponse(result=_topic_result(request.topic, result))

    async def create_partitions(
            self, request: pb.CreatePartitionsRequest) -> pb.CreatePartitionsResponse:
        """Grow topics through the metadata log; answers once the new partitions have leaders
        (best effort, like create_topics), so a producer that refreshes can use them at once."""
        response = pb.CreatePartitionsResponse()
        timeout_s = _timeout_s(request.timeout_ms, 10_000)
        self._check_topic_count(len(request.topics))
        grown = []
        for spec in request.topics:
            try:
                _refuse_internal(spec.topic, "given partitions")
                result = await self._metadata.propose(CreatePartitions(
                    name=spec.topic, total=spec.total,
                    node_ids=tuple(placement_nodes(self.config, self._metadata.state)),
                    validate_only=request.validate_only), timeout_s)
            except (E.InvalidRequestError, E.PolicyViolationError) as exc:
                result = {"error": type(exc).__name__, "code": exc.code, "message": exc.message}
            response.results.append(_topic_result(spec.topic, result))
            if "error" not in result and not request.validate_only:
                grown.append(spec.topic)
        await self._replicas.wait_for_leaders(grown, min(timeout_s, 10.0))
        return response

    async def init_producer_id(
            self, request: pb.InitProducerIdRequest) -> pb.InitProducerIdResponse:
        """Kafka's InitProducerId: a fresh id at epoch 0, or, for a known producer (its id and
        epoch, or its transactional id), the same id at the next epoch, which fences every
        older instance of it (committed through metadata, so every node agrees)."""
        if request.producer_id < 0:
            raise E.InvalidRequestError(f"producer_id {request.producer_id} is negative "
                                        "(0: ask for a new producer id)")
        result = await self._metadata.propose(InitProducer(
            producer_id=request.producer_id or -1,
            producer_epoch=request.producer_epoch if request.producer_id else -1,
            transactional_id=request.transactional_id))
        raise_result(result)
        return pb.InitProducerIdResponse(producer_id=result["producer_id"],
                                         producer_epoch=result["producer_epoch"])

    # ---------------------------------------------------------------- produce

    def _check_topic_count(self, count: int) -> None:
        if count > self.config.request_partitions_max:
            raise E.InvalidRequestError(
                f"{count} topics in one request; the maximum is "
                f"{self.config.request_partitions_max}")

    def _topic(self, name: str) -> TopicInfo:
        topic = self._metadata.state.topics.get(name)
        if topic is None:
            raise E.UnknownTopicError(f"topic {name!r} does not exist")
        return topic

    def _replica_for(self, topic_name: str, partition: int) -> tuple[TopicInfo, Replica]:
        topic = self._topic(topic_name)
        if not 0 <= partition < topic.partitions:
            raise E.UnknownTopicError(
                f"topic {topic_name!r} has partitions 0..{topic.partitions - 1}, not {partition}")
        group = partition_group(topic.topic_id, partition)
        replica = self._replicas.partitions.get(group)
        if replica is None or not replica.is_leader:
            hint = self._replicas.leader_hints.get(group)
            leader_id = replica.leader_id if replica is not None else (
                hint.leader_id if hint else None)
            if leader_id is None or leader_id == self.id:
                raise E.LeaderNotAvailableError(
                    f"{topic_name}-{partition} has no leader right now; retry shortly")
            raise E.NotLeaderError(
                f"node {self.id} is not the leader of {topic_name}-{partition}; "
                f"node {leader_id} is",
                leader_id=leader_id, leader_address=self.address_for_client(leader_id))
        return topic, replica

    async def produce(self, request: pb.ProduceRequest) -> pb.ProduceResponse:
        if request.acks not in (pb.ACKS_ALL, pb.ACKS_LEADER):
            raise E.InvalidRequestError(
                f"acks {request.acks} is unknown; use ACKS_ALL (0) or ACKS_LEADER (1)")
        timeout_s = _timeout_s(request.timeout_ms, 30_000)
        _refuse_internal(request.topic, "written to by clients")
        topic, replica = self._replica_for(request.topic, request.partition)
        if replica.storage_error is not None:
            raise E.DiskFullRequestError(
                f"{request.topic}-{request.partition}: node {self.id} is out of disk space; "
                "writes are refused until space returns")
        if replica.error is not None:
            raise E.StorageRequestError(
                f"{request.topic}-{request.partition}: replica on node {self.id} stopped after a "
                f"storage failure: {replica.error}")
        configs = effective_configs(topic.configs)
        limits = ProduceLimits(
            request_bytes_max=self.config.batch_bytes_max,
            batch_bytes_max=int(configs["max.message.bytes"]),
            timestamp_difference_ms_max=int(configs["message.timestamp.difference.max.ms"]))
        # All or nothing: every batch is checked, and every producer sequence planned, before
        # any is proposed; the new ones are then proposed in one call.
        batches = validate_produce(request.batches, limits, int(time.time() * 1000))
        planned = replica.producers.check_request(
            [b.header for b in batches],
            lambda pid: self._metadata.state.producer_epochs.get(pid, -1))
        term = replica.term
        fresh = [(b.data, b.header) for b, dup in zip(batches, planned, strict=True)
                 if dup is None]
        try:
            proposed = iter(replica.propose(fresh) if fresh else [])
            proposed_at_s = time.perf_counter()  # tidelog_commit_latency_seconds
        except (NotLeader, ProposalDropped):
            raise self._not_leader(request.topic, request.partition, replica) from None
        offsets: list[tuple[int, int]] = []
        dups: list[tuple[int, Duplicate]] = []  # (producer id, earlier attempt)
        for b, dup in zip(batches, planned, strict=True):
            if dup is None:
                offsets.append(next(proposed))
            else:
                dups.append((b.header.producer_id, dup))
                offsets.append((dup.base_offset, dup.last_offset))
        duplicate = bool(dups)
        last = offsets[-1][1]
        try:
            # A retry is answered with the earlier attempt's offsets only if the entry there is
            # still the one written in the attempt's term: a proposal can be dropped from the log
            # tail in a leadership change while its producer-state record survives, and then
            # those offsets hold another entry (found by `tidelog chaos run pause-leader`).
            last_dup = dups[-1][1] if dups and dups[-1][1].last_offset == last else None
            if last_dup is not None and last_dup.term >= 0:
                wait_term = last_dup.term
            else:
                wait_term = replica.raft_log.term_at(last) if duplicate else term
                wait_term = wait_term if wait_term is not None else term
            if request.acks == pb.ACKS_ALL:
                await replica.wait_committed(last, wait_term, timeout_s)
                if fresh:
                    record_committed(proposed_at_s)
                for _, dup in dups:  # committed already (below last): checks the term at once
                    if dup.term >= 0:
                        await replica.wait_committed(dup.last_offset, dup.term, timeout_s)
            else:
                await replica.wait_appended(last, wait_term, timeout_s)
        except ReplicaLostLeadership:
            for producer_id, dup in dups:
                if dup.term >= 0 and replica.raft_log.term_at(dup.last_offset) != dup.term:
                    # Stale record: forget it (and later ones) so the retry is written again.
                    replica.producers.forget_from(producer_id, dup.base_offset)
            raise self._not_leader(request.topic, request.partition, replica) from None
        except TimeoutError:
            raise E.RequestTimedOutError(
                f"{request.topic}-{request.partition}: not committed within {timeout_s:.1f} s; "
                "the write may still commit (retry with the same idempotent producer)") from None
        except StorageError as exc:
            raise E.StorageRequestError(f"{request.topic}-{request.partition}: {exc}") from None
        record_produced(request.topic, sum(b.header.record_count for b in batches),
                        len(request.batches))
        return pb.ProduceResponse(
            base_offset=offsets[0][0], last_offset=last, high_watermark=replica.high_watermark,
            log_start_offset=replica.log.log_start_offset, duplicate=duplicate)

    def _not_leader(self, topic: str, partition: int, replica: Replica) -> E.BrokerError:
        leader = replica.leader_id
        if leader is None or leader == self.id:
            return E.LeaderNotAvailableError(
                f"{topic}-{partition}: leadership is changing; retry shortly")
        return E.NotLeaderError(
            f"node {self.id} is no longer the leader of {topic}-{partition}; node {leader} is",
            leader_id=leader,
            leader_address=self.address_for_client(leader))

    # ---------------------------------------------------------------- fetch

    async def fetch(self, request: pb.FetchRequest) -> pb.FetchResponse:
        if len(request.partitions) > self.config.request_partitions_max:
            raise E.InvalidRequestError(
                f"{len(request.partitions)} partitions in one fetch; the maximum is "
                f"{self.config.request_partitions_max}")
        if request.max_wait_ms < 0 or request.max_bytes < 0 or any(
                p.max_bytes < 0 for p in request.partitions):
            raise E.InvalidRequestError(
                "max_wait_ms and max_bytes must not be negative (0: the default)")
        max_wait_s = min(request.max_wait_ms, FETCH_WAIT_MS_MAX) / 1000
        deadline = time.monotonic() + max_wait_s
        while True:
            response, waitable = self._fetch_once(request)
            size = sum(len(p.batches) for p in response.partitions)
            errors = any(p.error for p in response.partitions)
            remaining = deadline - time.monotonic()
            if size >= max(request.min_bytes, 1) or errors or remaining <= 0 or not waitable:
                return response
            waits = [asyncio.ensure_future(r.wait_for_data(remaining)) for r in waitable]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    def _fetch_once(self, request: pb.FetchRequest) -> tuple[pb.FetchResponse, list[Replica]]:
        response = pb.FetchResponse()
        # Clamped to the server's maximum: the answer must fit one gRPC message.
        budget = min(request.max_bytes or FETCH_BYTES_MAX, FETCH_BYTES_MAX)
        waitable = []
        for want in request.partitions:
            result = pb.FetchPartitionResult(topic=want.topic, partition=want.partition,
                                             leader_id=-1, high_watermark=-1, log_start_offset=-1)
            try:
                _, replica = self._replica_for(want.topic, want.partition)
                result.leader_id = self.id
                result.high_watermark = replica.high_watermark
                result.log_start_offset = replica.log.log_start_offset
                # Above the high watermark but within the log is not out of range: a new leader's
                # high watermark can briefly lag the old one's until it commits in its term.
                if not replica.log.log_start_offset <= want.offset <= max(
                        replica.high_watermark, replica.log.log_end_offset):
                    raise E.OffsetOutOfRangeRequestError(
                        f"offset {want.offset} is outside {want.topic}-{want.partition}'s "
                        f"range [{replica.log.log_start_offset}, {replica.high_watermark}]")
                result.control_records = replica.control_records_between(
                    want.offset, replica.high_watermark)
                if budget > 0:
                    data = replica.read_committed(
                        want.offset, min(want.max_bytes or FETCH_PARTITION_BYTES_DEFAULT, budget))
                    result.batches = data
                    budget -= len(data)
                if not result.batches:
                    waitable.append(replica)
            except E.BrokerError as exc:
                result.error = exc.code
                result.error_message = exc.message
                if isinstance(exc, E.NotLeaderError) and exc.leader_id is not None:
                    result.leader_id = exc.leader_id
            except StorageError as exc:
                result.error = pb.STORAGE_ERROR
                result.error_message = f"{want.topic}-{want.partition}: {exc}"
            response.partitions.append(result)
        return response, waitable

    # ---------------------------------------------------------------- list offsets

    @staticmethod
    def _offset_for_timestamp(replica: Replica, timestamp_ms: int) -> int | None:
        """The first record (not batch) with timestamp >= timestamp_ms: the index finds the batch,
        then only that one batch is decoded (ListOffsets is not on the hot path)."""
        offset = replica.log.offset_for_timestamp(timestamp_ms)
        while offset is not None and offset < replica.log.log_end_offset:
            raw = replica.log.read(offset, 1)
            for pos, header in iter_batches(raw):
                if header.max_timestamp >= timestamp_ms and not header.is_control:
                    found = _record_offset_for_timestamp(raw[pos:pos + header.size],
                                                         timestamp_ms)
                    if found is not None and found >= offset:
                        return found
                offset = header.last_offset + 1
        return None

    def list_offsets(self, request: pb.ListOffsetsRequest) -> pb.ListOffsetsResponse:
        response = pb.ListOffsetsResponse()
        if len(request.partitions) > self.config.request_partitions_max:
            raise E.InvalidRequestError(
                f"{len(request.partitions)} partitions in one request; the maximum is "
                f"{self.config.request_partitions_max}")
        for want in request.partitions:
            result = pb.ListOffsetsResult(topic=want.topic, partition=want.partition,
                                          offset=-1, leader_id=-1)
            try:
                if want.spec not in (pb.EARLIEST, pb.LATEST, pb.TIMESTAMP):
                    raise E.InvalidRequestError(f"offset spec {want.spec} is unknown")
                _, replica = self._replica_for(want.topic, want.partition)
                result.leader_id = self.id
                if want.spec == pb.EARLIEST:
                    result.offset = replica.log.log_start_offset
                elif want.spec == pb.LATEST:
                    result.offset = replica.high_watermark
                else:
                    found = self._offset_for_timestamp(replica, want.timestamp_ms)
                    result.offset = found if found is not None and \
                        found < replica.high_watermark else -1
            except E.BrokerError as exc:
                result.error = exc.code
                result.error_message = exc.message
                if isinstance(exc, E.NotLeaderError) and exc.leader_id is not None:
                    result.leader_id = exc.leader_id
            except StorageError as exc:
                result.error = pb.STORAGE_ERROR
                result.error_message = f"{want.topic}-{want.partition}: {exc}"
            response.results.append(result)
        return response


def _timeout_s(timeout_ms: int, default_ms: int) -> float:
    """A request's timeout: 0 means the default; a negative one is refused, not waited."""
    if timeout_ms < 0:
        raise E.InvalidRequestError(f"timeout_ms {timeout_ms} is negative")
    return (timeout_ms or default_ms) / 1000


def _record_offset_for_timestamp(batch: bytes, timestamp_ms: int) -> int | None:
    for record in decode_records(batch):
        if record.timestamp >= timestamp_ms:
            return record.offset
    return None


def _topic_result(name: str, result: dict[str, Any]) -> pb.TopicResult:
    if "error" not in result:
        return pb.TopicResult(name=name)
    return pb.TopicResult(name=name, error=result.get("code", pb.UNKNOWN),
                          error_message=result.get("message", ""))


def _refuse_internal(name: str, what: str) -> None:
    """Internal topics (`__consumer_offsets`, `__queue_state`, ...) belong to the cluster: a client
    that deleted, altered or wrote one would break every group or queue stored in it."""
    if name.startswith(INTERNAL_TOPIC_PREFIX):
        raise E.PolicyViolationError(
            f"topic {name!r}: names starting with {INTERNAL_TOPIC_PREFIX!r} are internal topics "
            f"managed by the cluster and cannot be {what} through the client API")
