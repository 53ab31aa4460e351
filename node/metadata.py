"""The cluster metadata state machine, replicated by the metadata Raft group.

Commands are small JSON objects carried as records in ordinary batches of the metadata log. Every
node applies the committed log in order and reaches the same state; a command that is not valid
against the state (a topic that already exists, say) is applied as a no-op whose result carries the
error, so the proposer gets a precise answer and all replicas stay identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tidelog.node.errors import BrokerError, TopicExistsError, UnknownTopicError
from tidelog.node.topics import (
    assign_replicas,
    effective_configs,
    validate_config_relations,
    validate_configs,
    validate_layout,
    validate_topic_name,
)

INTERNAL_TOPIC_PREFIX = "__"


@dataclass(slots=True)
class TopicInfo:
    topic_id: int
    name: str
    replicas: list[list[int]]
    configs: dict[str, str]

    @property
    def partitions(self) -> int:
        return len(self.replicas)

    @property
    def internal(self) -> bool:
        return self.name.startswith(INTERNAL_TOPIC_PREFIX)


@dataclass(slots=True)
class MetadataState:
    """What the committed metadata log says. Mutated only by `apply`."""

    nodes: dict[int, str] = field(default_factory=dict)  # node id → client address
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    deleted_topic_ids: set[int] = field(default_factory=set)
    next_topic_id: int = 1
    next_producer_id: int = 1
    applied_index: int = -1

    def apply(self, index: int, command: dict[str, Any]) -> dict[str, Any]:
        """Apply one committed command; returns its result ({'error': code, 'message': ...})."""
        assert index > self.applied_index, (index, self.applied_index)
        self.applied_index = index
        handler = _HANDLERS.get(command.get("op", ""))
        if handler is None:
            return {"error": "INVALID_REQUEST", "message": f"unknown command {command!r}"}
        try:
            return handler(self, command)
        except BrokerError as exc:
            return {"error": type(exc).__name__, "code": exc.code, "message": exc.message}

    def topic_by_id(self, topic_id: int) -> TopicInfo | None:
        return next((t for t in self.topics.values() if t.topic_id == topic_id), None)

    # -- handlers -------------------------------------------------------------------------------

    def _register_node(self, command: dict[str, Any]) -> dict[str, Any]:
        self.nodes[int(command["node_id"])] = str(command["address"])
        return {}

    def _create_topic(self, command: dict[str, Any]) -> dict[str, Any]:
        name = str(command["name"])
        validate_topic_name(name)
        if name in self.topics:
            raise TopicExistsError(f"topic {name!r} already exists")
        partitions = int(command["partitions"])
        replication_factor = int(command["replication_factor"])
        node_ids = sorted(int(n) for n in command.get("node_ids") or self.nodes)
        validate_layout(partitions, replication_factor, len(node_ids))
        configs = validate_configs(command.get("configs") or {})
        validate_config_relations(configs)
        if command.get("validate_only"):
            return {}
        topic_id = self.next_topic_id
        self.next_topic_id += 1
        self.topics[name] = TopicInfo(
            topic_id=topic_id,
            name=name,
            replicas=assign_replicas(partitions, replication_factor, node_ids, topic_id),
            configs=configs,
        )
        return {"topic_id": topic_id}

    def _delete_topic(self, command: dict[str, Any]) -> dict[str, Any]:
        name = str(command["name"])
        topic = self.topics.pop(name, None)
        if topic is None:
            raise UnknownTopicError(f"topic {name!r} does not exist")
        self.deleted_topic_ids.add(topic.topic_id)
        return {"topic_id": topic.topic_id}

    def _alter_configs(self, command: dict[str, Any]) -> dict[str, Any]:
        name = str(command["name"])
        topic = self.topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"topic {name!r} does not exist")
        merged = {**topic.configs, **validate_configs(command.get("set") or {})}
        for key in command.get("delete") or ():
            merged.pop(key, None)
        validate_config_relations(merged)
        if not command.get("validate_only"):
            topic.configs = merged
        return {"configs": effective_configs(merged)}

    def _allocate_producer_id(self, command: dict[str, Any]) -> dict[str, Any]:
        producer_id = self.next_producer_id
        self.next_producer_id += 1
        return {"producer_id": producer_id}


_HANDLERS = {
    "register_node": MetadataState._register_node,
    "create_topic": MetadataState._create_topic,
    "delete_topic": MetadataState._delete_topic,
    "alter_configs": MetadataState._alter_configs,
    "allocate_producer_id": MetadataState._allocate_producer_id,
}


def encode_command(command: dict[str, Any]) -> bytes:
    return json.dumps(command, separators=(",", ":"), sort_keys=True).encode()


def decode_command(value: bytes) -> dict[str, Any]:
    return json.loads(value)
