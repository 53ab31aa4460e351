"""Admin: topics, configs, nodes and offsets. Thread-safe (every call is a blocking RPC)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tidelog.client import errors, offsets
from tidelog.client.config import AdminConfig, parse_bootstrap
from tidelog.client.connection import Connections
from tidelog.client.group import CoordinatorClient, tps_from_wire, tps_to_wire
from tidelog.client.group_lag import PartitionLag, first_unconsumed
from tidelog.client.membership_admin import MembershipAdmin
from tidelog.client.metadata import (
    ClusterDescription,
    Metadata,
    NodeDescription,
    TopicDescription,
)
from tidelog.client.queue_admin import QueueAdmin
from tidelog.client.quota_admin import QuotaAdmin
from tidelog.client.reassignment_admin import ReassignmentAdmin
from tidelog.client.records import TopicPartition
from tidelog.client.routing import call_metadata_leader
from tidelog.client.security import ClientSecurity
from tidelog.client.security_admin import SecurityAdmin
from tidelog.client.throttle import check_client_id

__all__ = ["Admin", "GroupDescription", "GroupListing", "GroupMemberDescription",
           "OffsetAndMetadata", "PartitionLag"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupListing:
    group_id: str
    state: str  # empty | reconciling | stable
    members: int
    coordinator_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMemberDescription:
    member_id: str
    member_epoch: int
    client_id: str
    state: str
    subscribed_topics: tuple[str, ...]
    subscribed_pattern: str
    assignment: frozenset[TopicPartition]
    target_assignment: frozenset[TopicPartition]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupDescription:
    group_id: str
    state: str
    group_epoch: int
    assignment_epoch: int
    assignor: str
    coordinator_id: int
    members: tuple[GroupMemberDescription, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OffsetAndMetadata:
    offset: int
    metadata: str = ""
    commit_timestamp_ms: int = 0


def leaders_ready(description: ClusterDescription, name: str, partitions: int) -> bool:
    """Whether the topic has at least `partitions` partitions, each with a leader (shared with
    AIOAdmin: the node answering may apply the metadata change a moment after the commit)."""
    topic = next((t for t in description.topics if t.name == name), None)
    return topic is not None and len(topic.partitions) >= partitions and all(
        p.leader_id >= 0 for p in topic.partitions)


class Admin(QueueAdmin, QuotaAdmin, SecurityAdmin, ReassignmentAdmin, MembershipAdmin):
    """Manage a Tidelog cluster (queues: tidelog.client.queue_admin).

    >>> with Admin("127.0.0.1:9091") as admin:
    ...     admin.create_topic("events", partitions=12, replication_factor=3)
    """

    def __init__(
        self, bootstrap: str | Sequence[str], *, request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100, security: ClientSecurity | None = None,
        client_id: str = "", bootstrap_timeout_s: float = 10.0,
    ) -> None:
        self.config = AdminConfig(bootstrap=parse_bootstrap(bootstrap), security=security,
                                  request_timeout_ms=request_timeout_ms,
                                  retry_backoff_ms=retry_backoff_ms,
                                  client_id=check_client_id(client_id),
                                  bootstrap_timeout_s=bootstrap_timeout_s)
        self._connections = Connections(security, client_id=client_id)
        self._metadata = Metadata(
            self._connections, self.config.bootstrap, request_timeout_ms=request_timeout_ms,
            max_age_ms=0, retry_backoff_ms=retry_backoff_ms,
            bootstrap_timeout_s=bootstrap_timeout_s)
        self._timeout_s = request_timeout_ms / 1000

    # --- topics ----------------------------------------------------------------------------------

    def create_topic(
        self, name: str, *, partitions: int, replication_factor: int,
        configs: Mapping[str, str] | None = None, wait: bool = True,
    ) -> None:
        """Create one topic; raises TopicAlreadyExists, InvalidTopic, InvalidPartitions,
        InvalidReplicationFactor, InvalidConfig... With `wait`, returns once every partition has
        a leader, so a producer can use it at once."""
        from tidelog.proto import broker_pb2

        spec = broker_pb2.TopicSpec(name=name, partitions=partitions,
                                    replication_factor=replication_factor,
                                    configs=dict(configs or {}))
        request = broker_pb2.CreateTopicsRequest(
            topics=[spec], timeout_ms=int(self._timeout_s * 1000))
        response = self._retrying("CreateTopics", request)
        for result in response.results:
            if result.error:
                raise errors.from_code(result.error, result.error_message,
                                       subject=f"topic {result.name!r}")
        if wait:
            self._wait_for_leaders(name)

    def delete_topic(self, name: str) -> None:
        from tidelog.proto import broker_pb2

        request = broker_pb2.DeleteTopicsRequest(topics=[name],
                                                 timeout_ms=int(self._timeout_s * 1000))
        response = self._retrying("DeleteTopics", request)
        for result in response.results:
            if result.error:
                raise errors.from_code(result.error, result.error_message,
                                       subject=f"topic {result.name!r}")

    def create_partitions(self, topic: str, total: int, *, validate_only: bool = False,
                          wait: bool = True) -> None:
        """Grow `topic` to `total` partitions (Kafka's createPartitions); raises InvalidPartitions
        when `total` is not more than it has (partitions never shrink: their records cannot
        move), TopicNotFound, PolicyViolation for an internal topic. The new partitions are
        placed like create_topic's. Producers and consumers see them at their next metadata
        refresh (a keyed record may then go to another partition than before). With `wait`,
        returns once every partition has a leader."""
        from tidelog.proto import broker_pb2

        request = broker_pb2.CreatePartitionsRequest(
            topics=[broker_pb2.PartitionsSpec(topic=topic, total=total)],
            validate_only=validate_only, timeout_ms=int(self._timeout_s * 1000))
        response = self._retrying("CreatePartitions", request)
        for result in response.results:
            if result.error:
                raise errors.from_code(result.error, result.error_message,
                                       subject=f"topic {result.name!r}")
        if wait and not validate_only:
            self._wait_for_leaders(topic, partitions=total)

    def list_topics(self, *, include_internal: bool = False) -> list[str]:
        description = self._metadata.describe(None, include_internal=include_internal)
        return sorted(t.name for t in description.topics)

    def describe_topics(self, names: Iterable[str] | None = None) -> list[TopicDescription]:
        """Partitions, replicas, leaders and configs; raises TopicNotFound for a missing name."""
        wanted = list(names) if names is not None else None
        description = self._metadata.describe(wanted)
        for name in wanted or ():
            if name in description.topic_errors:
                raise description.topic_errors[name]
        return sorted(description.topics, key=lambda t: t.name)

    def describe_topics_from_leaders(
            self, names: Iterable[str] | None = None) -> list[TopicDescription]:
        """describe_topics, with each partition's in-sync replicas and offsets as its leader
        reports them: only a leader knows them, so the node answering describe_topics fills
        them for the partitions it leads and leaves the others empty (`topic describe` showed
        IN-SYNC '-' where `cluster status`, which asks the leaders, showed 1,2,3). One Metadata
        call per leader node, a few seconds at most each; a leader that does not answer leaves
        its partitions as the first answer had them."""
        import dataclasses

        from tidelog.proto import broker_pb2

        topics = self.describe_topics(names)
        wanted = [t.name for t in topics]
        leaders = sorted({p.leader_id for t in topics for p in t.partitions if p.leader_id >= 0})
        views: dict[tuple[str, int], Any] = {}
        for leader_id in leaders:
            address = self._metadata.node_address(leader_id)
            if address is None:
                continue
            try:
                response = self._connections.call(
                    address, "Metadata",
                    broker_pb2.MetadataRequest(topics=wanted, include_internal=True),
                    timeout_s=min(self._timeout_s, 5.0))
            except errors.TidelogError:
                continue
            for t in response.topics:
                for p in t.partitions:
                    if p.leader_id == leader_id and p.high_watermark >= 0:
                        views[(t.name, p.partition)] = p
        out = []
        for topic in topics:
            partitions = []
            for p in topic.partitions:
                view = views.get((topic.name, p.partition))
                if view is not None:
                    p = dataclasses.replace(
                        p, leader_term=view.leader_term, in_sync=tuple(view.in_sync),
                        high_watermark=view.high_watermark, log_end_offset=view.log_end_offset,
                        log_start_offset=view.log_start_offset)
                partitions.append(p)
            out.append(dataclasses.replace(topic, partitions=tuple(partitions)))
        return out

    def describe_cluster(self) -> ClusterDescription:
        return self._metadata.describe([])

    def list_nodes(self) -> list[NodeDescription]:
        return sorted(self._metadata.describe([]).nodes, key=lambda n: n.id)

    # --- configs ---------------------------------------------------------------------------------

    def describe_configs(self, topic: str) -> dict[str, str]:
        """The topic's effective configs, defaults included."""
        from tidelog.proto import broker_pb2

        response = self._retrying("DescribeConfigs",
                                  broker_pb2.DescribeConfigsRequest(topics=[topic]))
        for item in response.topics:
            if item.error:
                raise errors.from_code(item.error, item.error_message, subject=f"topic {topic!r}")
            if item.name == topic:
                return dict(item.configs)
        raise errors.TopicNotFound(f"topic {topic!r}: not in the DescribeConfigs reply")

    def alter_topic_configs(
        self, topic: str, set: Mapping[str, str] | None = None,  # noqa: A002 - mirrors the proto
        delete: Iterable[str] = (), *, validate_only: bool = False,
    ) -> None:
        """Set some configs and return others (`delete`) to their defaults."""
        from tidelog.proto import broker_pb2

        request = broker_pb2.AlterConfigsRequest(topic=topic, set=dict(set or {}),
                                                 delete=list(delete), validate_only=validate_only)
        response = self._retrying("AlterConfigs", request)
        if response.result.error:
            raise errors.from_code(response.result.error, response.result.error_message,
                                   subject=f"topic {topic!r}")

    # --- offsets ---------------------------------------------------------------------------------

    def list_offsets(
        self, specs: Mapping[TopicPartition, str | int]
    ) -> dict[TopicPartition, int | None]:
        """{tp: "earliest" | "latest" | timestamp_ms} -> {tp: offset}; None when no record has
        a timestamp at or after the one asked."""
        wire = offsets.wire_specs(specs)
        found = offsets.list_offsets(self._metadata, self._connections, wire,
                                     timeout_s=self._timeout_s,
                                     backoff_s=self.config.retry_backoff_ms / 1000)
        return {tp: (None if off < 0 else off) for tp, off in found.items()}

    # --- consumer groups -------------------------------------------------------------------------

    def list_groups(self) -> list[GroupListing]:
        """Every group of the cluster (each node lists those it coordinates; merged here)."""
        from tidelog.proto import broker_pb2

        found: dict[str, GroupListing] = {}
        for node in self._metadata.describe([]).nodes:
            try:
                response = self._connections.call(node.address, "ListGroups",
                                                  broker_pb2.ListGroupsRequest(),
                                                  timeout_s=self._timeout_s)
            except errors.TidelogError:
                continue  # a down node coordinates nothing right now
            for g in response.groups:
                found[g.group_id] = GroupListing(group_id=g.group_id, state=g.state,
                                                 members=g.members,
                                                 coordinator_id=g.coordinator_id)
        return sorted(found.values(), key=lambda g: g.group_id)

    def describe_group(self, group_id: str) -> GroupDescription:
        """Members, their partitions and targets; raises GroupIdNotFound."""
        from tidelog.proto import broker_pb2

        response = self._group_call(group_id, "DescribeGroups",
                                    broker_pb2.DescribeGroupsRequest(group_ids=[group_id]))
        g = response.groups[0]
        if g.error:
            raise errors.from_code(g.error, g.error_message, subject=f"group {group_id!r}")
        return GroupDescription(
            group_id=g.group_id, state=g.state, group_epoch=g.group_epoch,
            assignment_epoch=g.assignment_epoch, assignor=g.assignor,
            coordinator_id=g.coordinator_id,
            members=tuple(GroupMemberDescription(
                member_id=m.member_id, member_epoch=m.member_epoch, client_id=m.client_id,
                state=m.state, subscribed_topics=tuple(m.subscribed_topic_names),
                subscribed_pattern=m.subscribed_topic_regex,
                assignment=frozenset(tps_from_wire(m.assignment)),
                target_assignment=frozenset(tps_from_wire(m.target_assignment)))
                for m in g.members))

    def list_group_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets (all, or of these partitions; missing: none)."""
        from tidelog.proto import broker_pb2

        response = self._group_call(group_id, "OffsetFetch", broker_pb2.OffsetFetchRequest(
            group_id=group_id, partitions=tps_to_wire(partitions or ())))
        return {TopicPartition(p.topic, p.partition): OffsetAndMetadata(
            offset=p.offset, metadata=p.metadata, commit_timestamp_ms=p.commit_timestamp_ms)
            for p in response.partitions if p.offset >= 0}

    def list_group_lag(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, PartitionLag]:
        """Lag of the group's committed partitions (all, or these): committed, end_offset (the
        leader's high watermark), lag (records), lag_seconds (now minus the timestamp of the
        first record not consumed; 0.0 when caught up) and first_unconsumed_timestamp_ms.
        One OffsetFetch, then one Fetch of one batch per partition (tidelog.client.group_lag)."""
        committed = self.list_group_offsets(group_id, partitions)
        if not committed:
            return {}
        return first_unconsumed(self._metadata, self._connections,
                                {tp: c.offset for tp, c in committed.items()},
                                timeout_s=self._timeout_s,
                                backoff_s=self.config.retry_backoff_ms / 1000)

    def alter_group_offsets(self, group_id: str, offsets: Mapping[TopicPartition, int],
                            metadata: str = "") -> None:
        """Set committed offsets from outside the group; refused (GroupNotEmpty) while the group
        has members, since they would overwrite them at their next commit."""
        from tidelog.proto import broker_pb2

        self._group_call(group_id, "OffsetCommit", broker_pb2.OffsetCommitRequest(
            group_id=group_id, member_id="", member_epoch=-1,
            partitions=[broker_pb2.OffsetCommitPartition(
                topic=tp.topic, partition=tp.partition, offset=offset, metadata=metadata)
                for tp, offset in sorted(offsets.items())],
            timeout_ms=int(self._timeout_s * 1000)))

    def delete_group(self, group_id: str) -> None:
        """Delete an empty group and its committed offsets; raises GroupNotEmpty,
        GroupIdNotFound."""
        from tidelog.proto import broker_pb2

        response = self._group_call(group_id, "DeleteGroups",
                                    broker_pb2.DeleteGroupsRequest(group_ids=[group_id]))
        result = response.results[0]
        if result.error:
            raise errors.from_code(result.error, result.error_message,
                                   subject=f"group {group_id!r}")

    def _group_call(self, group_id: str, method: str, request: object) -> object:
        coordinator = CoordinatorClient(group_id, self._metadata, self._connections,
                                        backoff_s=self.config.retry_backoff_ms / 1000)
        deadline = time.monotonic() + self._timeout_s
        while True:
            response = coordinator.call(method, request,
                                        timeout_s=max(0.1, deadline - time.monotonic()))
            # Per-item NOT_COORDINATOR (Describe/Delete): the coordinator moved under us.
            items = getattr(response, "groups", None) or getattr(response, "results", None)
            if items and items[0].error in (errors.NotCoordinator.code,
                                            errors.CoordinatorNotAvailable.code) \
                    and time.monotonic() < deadline:
                coordinator.forget()
                time.sleep(self.config.retry_backoff_ms / 1000)
                continue
            return response

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- helpers -----------------------------------------------------------------------------

    def _retrying(self, method: str, request: object) -> object:
        """Call any node; follow a NOT_LEADER hint (a metadata change must reach the metadata
        leader) and retry retriable failures until request_timeout_ms (client/routing.py)."""
        return call_metadata_leader(self._metadata, self._connections, method, request,
                                    timeout_s=self._timeout_s,
                                    backoff_s=self.config.retry_backoff_ms / 1000)

    def _wait_for_leaders(self, name: str, *, partitions: int = 1) -> None:
        """Until the topic has at least `partitions` partitions, each with a leader (the node
        answering may apply the metadata change a moment after the one that committed it)."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            description = self._metadata.describe([name])
            if leaders_ready(description, name, partitions):
                return
            if time.monotonic() >= deadline:
                raise errors.Timeout(f"topic {name!r} created, but not every partition had a "
                                     f"leader within {self._timeout_s:.1f} s")
            time.sleep(self.config.retry_backoff_ms / 1000)
