"""AIOAdmin: topics, offsets and group lag from asyncio code (the sync Admin's calls, awaited;
the result types are the sync client's: TopicDescription, ClusterDescription, PartitionLag,
OffsetAndMetadata)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from tidelog.client import errors
from tidelog.client.admin import OffsetAndMetadata, leaders_ready
from tidelog.client.aio import offsets
from tidelog.client.aio.connection import AioConnections
from tidelog.client.aio.group import AioCoordinator
from tidelog.client.aio.metadata import AioMetadata
from tidelog.client.config import AdminConfig, parse_bootstrap
from tidelog.client.group import tps_to_wire
from tidelog.client.group_lag import LagSearch, PartitionLag
from tidelog.client.metadata import ClusterDescription, NodeDescription, TopicDescription
from tidelog.client.offsets import wire_specs
from tidelog.client.records import TopicPartition
from tidelog.client.security import ClientSecurity
from tidelog.client.throttle import check_client_id

__all__ = ["AIOAdmin"]



class AIOAdmin:
    """
    >>> async with AIOAdmin("127.0.0.1:9091") as admin:
    ...     await admin.create_topic("events", partitions=12, replication_factor=3)
    """

    def __init__(self, bootstrap: str | Sequence[str], *, request_timeout_ms: int = 30_000,
                 retry_backoff_ms: int = 100, security: ClientSecurity | None = None,
                 client_id: str = "") -> None:
        self.config = AdminConfig(bootstrap=parse_bootstrap(bootstrap), security=security,
                                  request_timeout_ms=request_timeout_ms,
                                  retry_backoff_ms=retry_backoff_ms,
                                  client_id=check_client_id(client_id))
        self._timeout_s = request_timeout_ms / 1000
        self._backoff_s = retry_backoff_ms / 1000
        self._connections: AioConnections | None = None
        self._metadata: AioMetadata | None = None

    @property
    def metadata(self) -> AioMetadata:
        if self._metadata is None:  # bound to the loop of the first call
            self._connections = AioConnections(self.config.security,
                                               client_id=self.config.client_id)
            self._metadata = AioMetadata(
                self._connections, self.config.bootstrap,
                request_timeout_ms=self.config.request_timeout_ms, max_age_ms=0,
                retry_backoff_ms=self.config.retry_backoff_ms,
                bootstrap_timeout_s=self.config.bootstrap_timeout_s)
        return self._metadata

    async def close(self) -> None:
        if self._connections is not None:
            await self._connections.close()

    async def __aenter__(self) -> AIOAdmin:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- topics ----------------------------------------------------------------------------------

    async def create_topic(self, name: str, *, partitions: int, replication_factor: int,
                           configs: Mapping[str, str] | None = None, wait: bool = True) -> None:
        """Create one topic (errors as Admin.create_topic); with `wait`, returns once every
        partition has a leader."""
        from tidelog.proto import broker_pb2

        spec = broker_pb2.TopicSpec(name=name, partitions=partitions,
                                    replication_factor=replication_factor,
                                    configs=dict(configs or {}))
        response = await self._retrying("CreateTopics", broker_pb2.CreateTopicsRequest(
            topics=[spec], timeout_ms=int(self._timeout_s * 1000)))
        for result in response.results:
            if result.error:
                raise errors.from_code(result.error, result.error_message,
                                       subject=f"topic {result.name!r}")
        if wait:
            await self._wait_for_leaders(name, partitions)

    async def delete_topic(self, name: str) -> None:
        from tidelog.proto import broker_pb2

        response = await self._retrying("DeleteTopics", broker_pb2.DeleteTopicsRequest(
            topics=[name], timeout_ms=int(self._timeout_s * 1000)))
        for result in response.results:
            if result.error:
                raise errors.from_code(result.error, result.error_message,
                                       subject=f"topic {result.name!r}")

    async def list_topics(self, *, include_internal: bool = False) -> list[str]:
        description = await self.metadata.describe_async(None, include_internal=include_internal)
        return sorted(t.name for t in description.topics)

    async def describe_topics(self, names: Iterable[str] | None = None
                              ) -> list[TopicDescription]:
        """Partitions, replicas, leaders and configs; raises TopicNotFound for a missing name."""
        wanted = list(names) if names is not None else None
        description = await self.metadata.describe_async(wanted)
        for name in wanted or ():
            if name in description.topic_errors:
                raise description.topic_errors[name]
        return sorted(description.topics, key=lambda t: t.name)

    async def describe_cluster(self) -> ClusterDescription:
        return await self.metadata.describe_async([])

    async def list_nodes(self) -> list[NodeDescription]:
        return sorted((await self.describe_cluster()).nodes, key=lambda n: n.id)

    # --- offsets and groups -----------------------------------------------------------------------

    async def list_offsets(self, specs: Mapping[TopicPartition, str | int]
                           ) -> dict[TopicPartition, int | None]:
        """{tp: "earliest" | "latest" | timestamp_ms} -> {tp: offset}; None: no such record."""
        wire = wire_specs(specs)
        found = await offsets.list_offsets(self.metadata, wire, timeout_s=self._timeout_s,
                                           backoff_s=self._backoff_s)
        return {tp: (None if off < 0 else off) for tp, off in found.items()}

    async def list_group_offsets(self, group_id: str,
                                 partitions: Iterable[TopicPartition] | None = None
                                 ) -> dict[TopicPartition, OffsetAndMetadata]:
        from tidelog.proto import broker_pb2

        coordinator = AioCoordinator(group_id, self.metadata, backoff_s=self._backoff_s)
        response = await coordinator.call("OffsetFetch", broker_pb2.OffsetFetchRequest(
            group_id=group_id, partitions=tps_to_wire(partitions or ())),
            timeout_s=self._timeout_s)
        return {TopicPartition(p.topic, p.partition): OffsetAndMetadata(
            offset=p.offset, metadata=p.metadata, commit_timestamp_ms=p.commit_timestamp_ms)
            for p in response.partitions if p.offset >= 0}  # type: ignore[attr-defined]

    async def list_group_lag(self, group_id: str,
                             partitions: Iterable[TopicPartition] | None = None
                             ) -> dict[TopicPartition, PartitionLag]:
        """As Admin.list_group_lag: committed, end_offset (the leader's high watermark), lag in
        records and lag_seconds, from one OffsetFetch and one one-batch Fetch per partition
        (client/group_lag.py's sans-I/O `lag_of` and `first_record_timestamp`)."""
        committed = await self.list_group_offsets(group_id, partitions)
        if not committed:
            return {}
        return await self._first_unconsumed({tp: c.offset for tp, c in committed.items()})

    # --- helpers -----------------------------------------------------------------------------

    async def _first_unconsumed(self, committed: Mapping[TopicPartition, int]
                                ) -> dict[TopicPartition, PartitionLag]:
        """The sync Admin's search (client/group_lag.py LagSearch), its calls awaited."""
        metadata = self.metadata
        deadline = time.monotonic() + self._timeout_s
        search = LagSearch(committed)
        for topic in {tp.topic for tp in committed}:
            await metadata.topic_async(topic, timeout_s=self._timeout_s)
        while not search.finished:
            for leader, tps, request in search.requests(metadata):  # type: ignore[arg-type]
                try:
                    response = await metadata.aio.call(
                        leader, "Fetch", request,
                        timeout_s=max(0.1, deadline - time.monotonic()))
                except errors.TidelogError as exc:
                    search.failed(metadata, tps, exc)  # type: ignore[arg-type]
                    continue
                search.answered(metadata, response, int(time.time() * 1000))
            if search.finished:
                break
            if time.monotonic() >= deadline:
                raise search.timeout(self._timeout_s)
            if search.stalled:
                await asyncio.sleep(self._backoff_s)
                try:
                    await metadata.refresh_async(search.positions_topics())
                except errors.TidelogError as exc:
                    search.last_error = exc
        return search.out

    async def _retrying(self, method: str, request: object) -> object:
        """Any node; follow a NOT_LEADER hint (metadata changes go to the metadata leader);
        retry retriable failures until request_timeout_ms."""
        metadata = self.metadata
        deadline = time.monotonic() + self._timeout_s
        hint: str | None = None
        while True:
            try:
                if hint:
                    return await metadata.aio.call(hint, method, request,
                                                   timeout_s=max(0.1, deadline - time.monotonic()))
                return await metadata.call_any_async(method, request)
            except errors.NotLeader as exc:
                hint = exc.leader_address or None
                error: errors.TidelogError = exc
            except errors.TidelogError as exc:
                if not exc.retriable:
                    raise
                hint, error = None, exc
            if time.monotonic() >= deadline:
                raise errors.Timeout(f"{method} did not succeed within {self._timeout_s:.1f} s "
                                     f"(last error: {error})")
            await asyncio.sleep(self._backoff_s)

    async def _wait_for_leaders(self, name: str, partitions: int) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            description = await self.metadata.describe_async([name])
            if leaders_ready(description, name, partitions):
                return
            if time.monotonic() >= deadline:
                raise errors.Timeout(f"topic {name!r} created, but not every partition had a "
                                     f"leader within {self._timeout_s:.1f} s")
            await asyncio.sleep(self._backoff_s)
