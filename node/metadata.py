"""The cluster metadata state machine, replicated by the metadata Raft group.

Commands (typed, in node/metadata_commands.py) are small JSON objects carried as records in
ordinary batches of the metadata log. Every node applies the committed log in order and reaches the
same state; a command that is not valid against the state (a topic that already exists, say) or
that does not even decode is applied as a no-op whose result carries the error, so the proposer
gets a precise answer, all replicas stay identical, and no record can stop a replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tidelog.node.errors import (
    BrokerError,
    InvalidPartitionsError,
    InvalidRequestError,
    ProducerFencedError,
    TopicExistsError,
    UnknownTopicError,
)
from tidelog.node.membership_state import (
    NodeMember,
    apply_add_node,
    apply_decommission,
    apply_recommission,
    apply_remove,
    check_register,
    placeable,
)
from tidelog.node.membership_state import after_register as _after_register
from tidelog.node.metadata_commands import (
    AddNode,
    AllocateProducerId,
    AlterConfigs,
    AlterPartitionReassignment,
    Command,
    CommandError,
    CompletePartitionReassignment,
    CreateAcls,
    CreatePartitions,
    CreateTopic,
    DecommissionNode,
    DeleteAcls,
    DeleteTopic,
    DeleteUser,
    InitProducer,
    RecommissionNode,
    RegisterNode,
    RemoveNode,
    RemoveQuota,
    SetQuota,
    UpsertUser,
    decode_command,
)
from tidelog.node.reassignment_state import (
    PartitionReassignment,
    alter_reassignment,
    complete_reassignment,
    drop_reassignments,
)
from tidelog.node.security.acl import AclBinding
from tidelog.node.security.quotas import QuotaEntity, QuotaKind
from tidelog.node.security.scram import ScramCredential
from tidelog.node.topics import (
    assign_replicas,
    effective_configs,
    validate_config_relations,
    validate_configs,
    validate_layout,
    validate_topic_name,
)

INTERNAL_TOPIC_PREFIX = "__"
PRODUCER_EPOCH_MAX = 2**15 - 1  # the batch header's producer_epoch is an int16


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
    #: node id → its named listeners' advertised addresses (node/listeners.py); only nodes that
    #: registered some.
    listeners: dict[int, dict[str, str]] = field(default_factory=dict)
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    deleted_topic_ids: set[int] = field(default_factory=set)
    next_topic_id: int = 1
    next_producer_id: int = 1
    producer_epochs: dict[int, int] = field(default_factory=dict)  # id → latest epoch handed out
    transactional_ids: dict[str, int] = field(default_factory=dict)  # identity → producer id
    #: client quotas (node/security/quotas.py). Invariant: no entity maps to an empty dict.
    quotas: dict[QuotaEntity, dict[QuotaKind, int]] = field(default_factory=dict)
    #: SCRAM users (node/security): name → credential; never a password.
    users: dict[str, ScramCredential] = field(default_factory=dict)
    acls: set[AclBinding] = field(default_factory=set)  # node/security/acl.py
    #: partition group → its reassignment in progress (node/reassignment_state.py)
    reassignments: dict[str, PartitionReassignment] = field(default_factory=dict)
    #: admitted and decommissioned nodes with their state (node/membership_state.py); the
    #: initial --peers nodes are ACTIVE without an entry until decommissioned.
    members: dict[int, NodeMember] = field(default_factory=dict)
    applied_index: int = -1

    def apply_encoded(self, index: int, data: bytes) -> dict[str, Any]:
        """Apply one committed record; one that does not decode is a rejected no-op (the same
        on every node), never an exception that would stop the replica."""
        try:
            command = decode_command(data)
        except CommandError as exc:
            assert index > self.applied_index, (index, self.applied_index)
            self.applied_index = index
            return _error_result(InvalidRequestError(f"rejected metadata command: {exc}"))
        return self.apply(index, command)

    def apply(self, index: int, command: Command) -> dict[str, Any]:
        """Apply one committed command; returns its result ({'error': name, 'code': ...})."""
        assert index > self.applied_index, (index, self.applied_index)
        self.applied_index = index
        try:
            match command:
                case RegisterNode():
                    return self._register_node(command)
                case CreateTopic():
                    return self._create_topic(command)
                case DeleteTopic():
                    return self._delete_topic(command)
                case AlterConfigs():
                    return self._alter_configs(command)
                case CreatePartitions():
                    return self._create_partitions(command)
                case AllocateProducerId():
                    return self._new_producer()
                case InitProducer():
                    return self._init_producer(command)
                case SetQuota():
                    return _set_quota(self, command)
                case RemoveQuota():
                    return _remove_quota(self, command)
                case UpsertUser():
                    return _upsert_user(self, command)
                case DeleteUser():
                    return _delete_user(self, command)
                case CreateAcls():
                    return _create_acls(self, command)
                case DeleteAcls():
                    return _delete_acls(self, command)
                case AlterPartitionReassignment():
                    return alter_reassignment(self, command)
                case CompletePartitionReassignment():
                    return complete_reassignment(self, command)
                case AddNode():
                    return apply_add_node(self, command)
                case DecommissionNode():
                    return apply_decommission(self, command)
                case RemoveNode():
                    return apply_remove(self, command)
                case RecommissionNode():
                    return apply_recommission(self, command)
        except BrokerError as exc:  # handlers check everything before they change anything
            return _error_result(exc)
        raise AssertionError(f"no handler for {command!r}")

    def restore(self, other: MetadataState) -> None:
        """Become `other` (a loaded or received snapshot, node/metadata_snapshot.py) in place,
        field by field in one synchronous step: whoever holds this object sees the old state or
        the new one, never a mix."""
        for f in fields(MetadataState):
            setattr(self, f.name, getattr(other, f.name))

    def topic_by_id(self, topic_id: int) -> TopicInfo | None:
        return next((t for t in self.topics.values() if t.topic_id == topic_id), None)

    # -- handlers -------------------------------------------------------------------------------

    def _register_node(self, command: RegisterNode) -> dict[str, Any]:
        check_register(self, command)
        self.nodes[command.node_id] = command.address
        _after_register(self, command.node_id)
        if command.listeners:
            self.listeners[command.node_id] = dict(command.listeners)
        else:
            self.listeners.pop(command.node_id, None)
        return {}

    def _create_topic(self, command: CreateTopic) -> dict[str, Any]:
        name = command.name
        validate_topic_name(name)
        if name in self.topics:
            raise TopicExistsError(f"topic {name!r} already exists")
        node_ids = placeable(self, set(command.node_ids) if command.node_ids is not None
                             else set(self.nodes))
        validate_layout(command.partitions, command.replication_factor, len(node_ids))
        configs = validate_configs(dict(command.configs))
        validate_config_relations(configs)
        if command.validate_only:
            return {}
        topic_id = self.next_topic_id
        self.next_topic_id += 1
        self.topics[name] = TopicInfo(
            topic_id=topic_id,
            name=name,
            replicas=assign_replicas(command.partitions, command.replication_factor, node_ids,
                                     topic_id),
            configs=configs,
        )
        return {"topic_id": topic_id}

    def _delete_topic(self, command: DeleteTopic) -> dict[str, Any]:
        topic = self.topics.pop(command.name, None)
        if topic is None:
            raise UnknownTopicError(f"topic {command.name!r} does not exist")
        self.deleted_topic_ids.add(topic.topic_id)
        drop_reassignments(self, topic.topic_id)
        return {"topic_id": topic.topic_id}

    def _alter_configs(self, command: AlterConfigs) -> dict[str, Any]:
        topic = self.topics.get(command.name)
        if topic is None:
            raise UnknownTopicError(f"topic {command.name!r} does not exist")
        merged = {**topic.configs, **validate_configs(dict(command.set))}
        for key in command.delete:
            merged.pop(key, None)
        validate_config_relations(merged)
        if not command.validate_only:
            topic.configs = merged
        return {"configs": effective_configs(merged)}

    def _create_partitions(self, command: CreatePartitions) -> dict[str, Any]:
        """Grow only: a partition's records cannot move, so shrinking would lose them. The
        new partitions continue create_topic's round-robin from the topic's rotation (its id),
        on the topic's replication factor."""
        topic = self.topics.get(command.name)
        if topic is None:
            raise UnknownTopicError(f"topic {command.name!r} does not exist")
        current = topic.partitions
        if command.total <= current:
            raise InvalidPartitionsError(
                f"topic {command.name!r} has {current} partitions; it can only grow (asked for "
                f"{command.total}): a partition's records cannot be moved to others")
        node_ids = placeable(self, set(command.node_ids) if command.node_ids is not None
                             else set(self.nodes))
        replication_factor = len(topic.replicas[0])
        validate_layout(command.total, replication_factor, len(node_ids))
        if command.validate_only:
            return {"partitions": current}
        layout = assign_replicas(command.total, replication_factor, node_ids, topic.topic_id)
        topic.replicas.extend(layout[current:])
        return {"partitions": command.total, "previous": current}

    def _new_producer(self) -> dict[str, Any]:
        producer_id = self.next_producer_id
        self.next_producer_id += 1
        self.producer_epochs[producer_id] = 0
        return {"producer_id": producer_id, "producer_epoch": 0}

    def _init_producer(self, command: InitProducer) -> dict[str, Any]:
        """Kafka's InitProducerId with an identity: the epoch goes up by one, fencing the
        previous instance; past the int16 range the identity moves to a fresh id at epoch 0."""
        producer_id = command.producer_id
        if command.transactional_id:
            known = self.transactional_ids.get(command.transactional_id)
            if producer_id >= 0 and known != producer_id:
                raise InvalidRequestError(
                    f"producer id {producer_id} does not belong to transactional id "
                    f"{command.transactional_id!r}")
            if known is None:
                result = self._new_producer()
                self.transactional_ids[command.transactional_id] = result["producer_id"]
                return result
            producer_id = known
        if producer_id < 0:
            return self._new_producer()
        if producer_id not in self.producer_epochs:
            raise InvalidRequestError(
                f"producer id {producer_id} was never allocated by this cluster")
        current = self.producer_epochs[producer_id]
        if command.producer_epoch >= 0 and command.producer_epoch != current:
            # KIP-360: only the latest instance may bump; an older one must not fence it.
            raise ProducerFencedError(
                f"producer {producer_id} epoch {command.producer_epoch} is not the latest "
                f"({current}): another instance took over")
        epoch = current + 1
        if epoch > PRODUCER_EPOCH_MAX:
            result = self._new_producer()
            if command.transactional_id:
                self.transactional_ids[command.transactional_id] = result["producer_id"]
            return result
        self.producer_epochs[producer_id] = epoch
        return {"producer_id": producer_id, "producer_epoch": epoch}


def _set_quota(state: MetadataState, command: SetQuota) -> dict[str, Any]:
    state.quotas.setdefault(command.entity, {}).update(command.limits)
    return {}


def _remove_quota(state: MetadataState, command: RemoveQuota) -> dict[str, Any]:
    """Idempotent; the result says how many quotas were removed (0: none was set)."""
    limits = state.quotas.get(command.entity, {})
    kinds = command.kinds or tuple(limits)
    removed = sum(limits.pop(kind, None) is not None for kind in kinds)
    if not limits:
        state.quotas.pop(command.entity, None)
    return {"removed": removed}


def _upsert_user(state: MetadataState, command: UpsertUser) -> dict[str, Any]:
    exists = command.name in state.users
    if command.bootstrap and state.users:
        raise InvalidRequestError(
            f"user {command.name!r} cannot be the first user: users exist already (log in as "
            "one of them)")
    if command.mode == "create" and exists:
        raise InvalidRequestError(f"user {command.name!r} already exists (change its password "
                                  "with `tidelog user passwd`)")
    if command.mode == "update" and not exists:
        raise InvalidRequestError(f"user {command.name!r} does not exist")
    state.users[command.name] = ScramCredential(
        salt=command.salt, iterations=command.iterations, stored_key=command.stored_key,
        server_key=command.server_key)
    return {}


def _delete_user(state: MetadataState, command: DeleteUser) -> dict[str, Any]:
    if state.users.pop(command.name, None) is None:
        raise InvalidRequestError(f"user {command.name!r} does not exist")
    return {}


def _create_acls(state: MetadataState, command: CreateAcls) -> dict[str, Any]:
    """Idempotent: an ACL already present is not counted."""
    new = set(command.acls) - state.acls
    state.acls |= new
    return {"created": len(new)}


def _delete_acls(state: MetadataState, command: DeleteAcls) -> dict[str, Any]:
    """Idempotent: the result counts the ACLs that were present."""
    gone = set(command.acls) & state.acls
    state.acls -= gone
    return {"deleted": len(gone)}


def _error_result(exc: BrokerError) -> dict[str, Any]:
    return {"error": type(exc).__name__, "code": exc.code, "message": exc.message}
