"""The queue coordinator's view of a Node: `QueueHost` (coordinator.py) built from the Node's
metadata service, replica manager and client API, so the coordinator sees nothing else."""

from __future__ import annotations

from typing import Any

from tidelog.node.membership import placement_nodes
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import Command
from tidelog.node.replica import Replica
from tidelog.proto import broker_pb2 as pb


class NodeQueueHost:
    """The queue coordinator's view of a Node (QueueHost), built from the Node's parts."""

    def __init__(self, metadata: Any, replicas: Any, api: Any, config: Any) -> None:
        self._metadata = metadata
        self._replicas = replicas
        self._api = api
        self.node_id: int = config.node_id
        self.batch_bytes_max: int = config.batch_bytes_max
        self._config = config

    @property
    def state(self) -> MetadataState:
        return self._metadata.state

    def node_ids(self) -> list[int]:
        """Where new replicas may go: not joining, draining or removed (node/membership.py)."""
        return placement_nodes(self._config, self._metadata.state)

    def leader_of(self, group: str) -> tuple[int, str] | None:
        return self._replicas.leader_of(group)

    def local_replica(self, group: str) -> Replica | None:
        return self._replicas.partitions.get(group)

    async def propose(self, command: Command, timeout_s: float = 10.0) -> dict[str, Any]:
        return await self._metadata.propose(command, timeout_s)

    async def wait_for_leaders(self, names: list[str], timeout_s: float) -> None:
        await self._replicas.wait_for_leaders(names, timeout_s)

    async def produce(self, request: pb.ProduceRequest) -> pb.ProduceResponse:
        return await self._api.produce(request)
