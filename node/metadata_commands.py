"""The metadata commands as typed, frozen data, and their strict wire form.

Every command that enters the metadata log passes `decode_command` twice: once before it is
proposed (the proposer's fault: refused with INVALID_REQUEST, nothing reaches the log) and once
when a committed record is applied (`MetadataState.apply_encoded`). The second pass matters for
logs written by an older or faulty node: a record that does not decode is applied as a rejected
command, the same on every node, and never stops the replica (issue 11, defect 13: one malformed
`ProposeMetadata` used to raise JSONDecodeError/KeyError in apply on every node, at every restart).

Wire form: one JSON object, compact and with sorted keys, `op` naming the command. The decoder is
strict: exact key sets (optional keys have defaults), exact JSON types (a bool is not an int),
bounded sizes. The JSON shape is the one the log has always held, so existing logs replay.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from tidelog.node.security.acl import AclBinding
from tidelog.node.security.quotas import QUOTA_LIMIT_MAX, QuotaEntity, QuotaKind
from tidelog.node.security.scram import MECHANISM, check_credential_shape

COMMAND_BYTES_MAX = 64 * 1024
NODE_ID_MAX = 2**31 - 1
ADDRESS_CHARS_MAX = 1024
NAME_CHARS_MAX = 1024  # topic-name rules proper are checked in apply (topics.validate_topic_name)
CONFIG_ENTRIES_MAX = 256
CONFIG_CHARS_MAX = 4096
NODE_IDS_MAX = 4096
INT32_MAX = 2**31 - 1
PRODUCER_ID_MAX = 2**63 - 1
EPOCH_MAX = 2**15 - 1
TRANSACTIONAL_ID_CHARS_MAX = 1024
THROTTLE_BYTES_PER_S_MAX = 2**40  # node/reassignment_state.py


class CommandError(ValueError):
    """A metadata command that is malformed (the proposer's fault); the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterNode:
    """A node's client-facing (advertised) address, and those of its named listeners
    (node/listeners.py; sorted (name, address) pairs, none for a node without any)."""

    node_id: int
    address: str
    listeners: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AddNode:
    """Admit a new node (node/membership.py, docs/operations.md "Add and remove nodes"): until
    this commits, the cluster's nodes refuse its Raft streams and its Join. `address` is its
    client address (as in --peers), `peer_address` its node-to-node listener; with
    `metadata_voter` it is promoted to a voter of the metadata group once caught up (else it
    stays a learner)."""

    node_id: int
    address: str
    peer_address: str
    metadata_voter: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DecommissionNode:
    """Mark a node draining: new placements skip it, its leaderships and replicas move away."""

    node_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommissionNode:
    """Cancel a decommission: a draining node is active again (reassignments the drain already
    started go on; cancel them with `tidelog partition reassign --cancel`)."""

    node_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveNode:
    """A drained node leaves the node set (refused while a replica is still assigned to it,
    unless `force`); it stops itself when it applies this."""

    node_id: int
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateTopic:
    name: str
    partitions: int
    replication_factor: int
    configs: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    node_ids: tuple[int, ...] | None = None  # None: every registered node
    validate_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteTopic:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatePartitions:
    """Grow a topic to `total` partitions; the new ones are placed on `node_ids` (None: every
    registered node) as create_topic would have placed them, so a grown topic looks like one
    created with `total` partitions."""

    name: str
    total: int
    node_ids: tuple[int, ...] | None = None
    validate_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AlterConfigs:
    name: str
    set: tuple[tuple[str, str], ...] = ()
    delete: tuple[str, ...] = ()
    validate_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocateProducerId:
    """A fresh producer id (epoch 0), for a producer without an identity."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InitProducer:
    """Kafka's InitProducerId for a known producer: bump the epoch of `producer_id`, or of the
    id bound to `transactional_id` (allocating one the first time). The new epoch fences every
    older instance of the producer on every partition (see producer_state)."""

    producer_id: int = -1  # -1: look it up by transactional_id
    producer_epoch: int = -1  # with producer_id: the caller's epoch, which must be the latest
    transactional_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AlterPartitionReassignment:
    """Move a partition's replicas to `target` (first = preferred leader), or with `cancel` back
    to the replicas it had when its reassignment began (node/reassignment_state.py). The
    partition's leader then changes its Raft group one server at a time."""

    topic: str
    partition: int
    target: tuple[int, ...] = ()  # empty with cancel
    cancel: bool = False
    throttle_bytes_per_s: int = 0  # catch-up bytes/s per learner; 0: unthrottled


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletePartitionReassignment:
    """Proposed by the partition's leader once the group's committed membership is `target`:
    the replica list becomes `target` (refused if the reassignment's target is another)."""

    topic_id: int
    partition: int
    target: tuple[int, ...]


# -- users and ACLs (node/security; docs/security.md) ------------------------------------------

USER_NAME_CHARS_MAX = 128
USER_NAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,128}")
USER_SECRET_BYTES_MAX = 64  # salt, stored_key, server_key (checked exactly by scram.py)
ACLS_PER_COMMAND_MAX = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class UpsertUser:
    """A user's SCRAM-SHA-256 credential: salt, iterations, StoredKey, ServerKey; never the
    password (RFC 5802 section 5.1). `mode` 'create' refuses an existing user, 'update' a
    missing one; `bootstrap` (the first user, docs/security.md) refuses if any user exists,
    checked in apply so that two racing first users cannot both succeed."""

    name: str
    mode: str  # "create" | "update"
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
    bootstrap: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteUser:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAcls:
    acls: tuple[AclBinding, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAcls:
    acls: tuple[AclBinding, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetQuota:
    """Set some quotas of one entity (node/security/quotas.py); its other quotas stay."""

    entity: QuotaEntity
    limits: tuple[tuple[QuotaKind, int], ...]  # sorted by kind name; at least one


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveQuota:
    """Remove some (empty: all) quotas of one entity; removing what is not set is a no-op."""

    entity: QuotaEntity
    kinds: tuple[QuotaKind, ...] = ()


Command = (RegisterNode | CreateTopic | DeleteTopic | AlterConfigs | AllocateProducerId
           | CreatePartitions | InitProducer | SetQuota | RemoveQuota | UpsertUser | DeleteUser
           | CreateAcls | DeleteAcls | AddNode | DecommissionNode | RemoveNode | RecommissionNode)
# Partition reassignment (node/reassignment_state.py), kept on a line of its own:
Command = Command | AlterPartitionReassignment | CompletePartitionReassignment

_OPS: dict[type, str] = {
    AlterPartitionReassignment: "alter_partition_reassignment",
    CompletePartitionReassignment: "complete_partition_reassignment",
    RegisterNode: "register_node",
    CreateTopic: "create_topic",
    DeleteTopic: "delete_topic",
    AlterConfigs: "alter_configs",
    CreatePartitions: "create_partitions",
    AllocateProducerId: "allocate_producer_id",
    InitProducer: "init_producer",
    SetQuota: "set_quota",
    RemoveQuota: "remove_quota",
    UpsertUser: "upsert_user",
    DeleteUser: "delete_user",
    CreateAcls: "create_acls",
    DeleteAcls: "delete_acls",
    AddNode: "add_node",
    DecommissionNode: "decommission_node",
    RemoveNode: "remove_node",
    RecommissionNode: "recommission_node",
}


def command_op(command: Command) -> str:
    return _OPS[type(command)]


def encode_command(command: Command) -> bytes:
    body: dict[str, Any] = {"op": command_op(command)}
    match command:
        case RegisterNode(node_id=node_id, address=address, listeners=listeners):
            body.update(node_id=node_id, address=address)
            if listeners:  # absent when none: the records of older nodes stay byte-identical
                body["listeners"] = dict(listeners)
        case CreateTopic():
            body.update(name=command.name, partitions=command.partitions,
                        replication_factor=command.replication_factor,
                        configs=dict(command.configs), validate_only=command.validate_only)
            if command.node_ids is not None:
                body["node_ids"] = list(command.node_ids)
        case DeleteTopic(name=name):
            body["name"] = name
        case AlterConfigs():
            body.update(name=command.name, set=dict(command.set), delete=list(command.delete),
                        validate_only=command.validate_only)
        case CreatePartitions():
            body.update(name=command.name, total=command.total,
                        validate_only=command.validate_only)
            if command.node_ids is not None:
                body["node_ids"] = list(command.node_ids)
        case AlterPartitionReassignment():
            body.update(topic=command.topic, partition=command.partition,
                        target=list(command.target), cancel=command.cancel,
                        throttle_bytes_per_s=command.throttle_bytes_per_s)
        case CompletePartitionReassignment():
            body.update(topic_id=command.topic_id, partition=command.partition,
                        target=list(command.target))
        case AllocateProducerId():
            pass
        case InitProducer():
            body.update(producer_id=command.producer_id, producer_epoch=command.producer_epoch,
                        transactional_id=command.transactional_id)
        case SetQuota(entity=entity, limits=limits):
            body.update(_quota_entity_body(entity), limits={k.value: v for k, v in limits})
        case RemoveQuota(entity=entity, kinds=kinds):
            body.update(_quota_entity_body(entity), kinds=[k.value for k in kinds])
        case UpsertUser():
            body.update(name=command.name, mode=command.mode, mechanism=command.mechanism,
                        salt=_b64(command.salt), iterations=command.iterations,
                        stored_key=_b64(command.stored_key),
                        server_key=_b64(command.server_key), bootstrap=command.bootstrap)
        case DeleteUser(name=name):
            body["name"] = name
        case CreateAcls(acls=acls) | DeleteAcls(acls=acls):
            body["acls"] = [acl.to_wire() for acl in acls]
        case AddNode():
            body.update(node_id=command.node_id, address=command.address,
                        peer_address=command.peer_address,
                        metadata_voter=command.metadata_voter)
        case DecommissionNode(node_id=node_id) | RecommissionNode(node_id=node_id):
            body["node_id"] = node_id
        case RemoveNode(node_id=node_id, force=force):
            body.update(node_id=node_id, force=force)
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > COMMAND_BYTES_MAX:
        raise CommandError(f"metadata command of {len(data)} bytes; the maximum is "
                           f"{COMMAND_BYTES_MAX}")
    return data


def decode_command(data: bytes) -> Command:
    """Strict: raises CommandError for anything `encode_command` would not produce."""
    if len(data) > COMMAND_BYTES_MAX:
        raise CommandError(f"metadata command of {len(data)} bytes; the maximum is "
                           f"{COMMAND_BYTES_MAX}")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CommandError(f"metadata command is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError(f"metadata command must be a JSON object, got {type(body).__name__}")
    fields = _Fields(body)
    op = fields.string("op", NAME_CHARS_MAX)
    match op:
        case "register_node":
            command: Command = RegisterNode(
                node_id=fields.integer("node_id", 1, NODE_ID_MAX),
                address=fields.string("address", ADDRESS_CHARS_MAX),
                listeners=fields.string_map("listeners"))
        case "create_topic":
            node_ids = fields.int_list("node_ids", 1, NODE_ID_MAX, NODE_IDS_MAX, optional=True)
            command = CreateTopic(
                name=fields.string("name", NAME_CHARS_MAX),
                partitions=fields.integer("partitions", -INT32_MAX, INT32_MAX),
                replication_factor=fields.integer("replication_factor", -INT32_MAX, INT32_MAX),
                configs=fields.string_map("configs"),
                node_ids=tuple(node_ids) if node_ids is not None else None,
                validate_only=fields.boolean("validate_only"))
        case "delete_topic":
            command = DeleteTopic(name=fields.string("name", NAME_CHARS_MAX))
        case "alter_configs":
            command = AlterConfigs(
                name=fields.string("name", NAME_CHARS_MAX), set=fields.string_map("set"),
                delete=tuple(fields.string_list("delete")),
                validate_only=fields.boolean("validate_only"))
        case "create_partitions":
            node_ids = fields.int_list("node_ids", 1, NODE_ID_MAX, NODE_IDS_MAX, optional=True)
            command = CreatePartitions(
                name=fields.string("name", NAME_CHARS_MAX),
                total=fields.integer("total", -INT32_MAX, INT32_MAX),
                node_ids=tuple(node_ids) if node_ids is not None else None,
                validate_only=fields.boolean("validate_only"))
        case "alter_partition_reassignment":
            command = AlterPartitionReassignment(
                topic=fields.string("topic", NAME_CHARS_MAX),
                partition=fields.integer("partition", 0, INT32_MAX),
                target=tuple(fields.int_list("target", 1, NODE_ID_MAX, NODE_IDS_MAX) or ()),
                cancel=fields.boolean("cancel"),
                throttle_bytes_per_s=fields.integer("throttle_bytes_per_s", 0,
                                                    THROTTLE_BYTES_PER_S_MAX))
            if command.cancel == bool(command.target):
                raise CommandError("alter_partition_reassignment needs a target, or cancel "
                                   "without one")
        case "complete_partition_reassignment":
            command = CompletePartitionReassignment(
                topic_id=fields.integer("topic_id", 1, INT32_MAX),
                partition=fields.integer("partition", 0, INT32_MAX),
                target=tuple(fields.int_list("target", 1, NODE_ID_MAX, NODE_IDS_MAX) or ()))
            if not command.target:
                raise CommandError("complete_partition_reassignment needs a target")
        case "allocate_producer_id":
            command = AllocateProducerId()
        case "init_producer":
            command = InitProducer(
                producer_id=fields.integer("producer_id", -1, PRODUCER_ID_MAX),
                producer_epoch=fields.integer("producer_epoch", -1, EPOCH_MAX),
                transactional_id=fields.string("transactional_id", TRANSACTIONAL_ID_CHARS_MAX,
                                               default=""))
        case "set_quota":
            command = SetQuota(entity=_quota_entity(fields), limits=_quota_limits(fields))
        case "remove_quota":
            command = RemoveQuota(entity=_quota_entity(fields), kinds=_quota_kinds(fields))
        case "upsert_user":
            command = _decode_upsert_user(fields)
        case "delete_user":
            command = DeleteUser(name=fields.string("name", USER_NAME_CHARS_MAX))
        case "create_acls":
            command = CreateAcls(acls=_decode_acls(fields))
        case "delete_acls":
            command = DeleteAcls(acls=_decode_acls(fields))
        case "add_node":
            command = AddNode(
                node_id=fields.integer("node_id", 1, NODE_ID_MAX),
                address=fields.string("address", ADDRESS_CHARS_MAX),
                peer_address=fields.string("peer_address", ADDRESS_CHARS_MAX),
                metadata_voter=fields.boolean("metadata_voter"))
            _check_address(command.address, "address")
            _check_address(command.peer_address, "peer_address")
        case "decommission_node":
            command = DecommissionNode(node_id=fields.integer("node_id", 1, NODE_ID_MAX))
        case "recommission_node":
            command = RecommissionNode(node_id=fields.integer("node_id", 1, NODE_ID_MAX))
        case "remove_node":
            command = RemoveNode(node_id=fields.integer("node_id", 1, NODE_ID_MAX),
                                 force=fields.boolean("force"))
        case _:
            raise CommandError(f"unknown metadata command {op!r}")
    fields.no_more(op)
    return command


def _check_address(text: str, key: str) -> None:
    """HOST:PORT, as --peers takes it (a DNS name or an IP literal; no scheme, no spaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or any(c.isspace() for c in host) or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise CommandError(f"{key!r} must be HOST:PORT, got {text[:80]!r}")


class _Fields:
    """Takes typed fields out of a decoded JSON object; whatever is left over is an error."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._left = dict(body)

    def _take(self, key: str, default: Any) -> Any:
        if key not in self._left:
            if default is _REQUIRED:
                raise CommandError(f"metadata command lacks {key!r}")
            return default
        return self._left.pop(key)

    def string(self, key: str, chars_max: int, default: Any = None) -> str:
        value = self._take(key, _REQUIRED if default is None else default)
        if not isinstance(value, str):
            raise CommandError(f"{key!r} must be a string, got {type(value).__name__}")
        if len(value) > chars_max:
            raise CommandError(f"{key!r} is {len(value)} characters; the maximum is {chars_max}")
        return value

    def integer(self, key: str, minimum: int, maximum: int) -> int:
        value = self._take(key, _REQUIRED)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CommandError(f"{key!r} must be an integer, got {type(value).__name__}")
        if not minimum <= value <= maximum:
            raise CommandError(f"{key!r} must be between {minimum} and {maximum}, got {value}")
        return value

    def boolean(self, key: str) -> bool:
        value = self._take(key, False)
        if not isinstance(value, bool):
            raise CommandError(f"{key!r} must be true or false, got {type(value).__name__}")
        return value

    def int_list(self, key: str, minimum: int, maximum: int, items_max: int, *,
                 optional: bool = False) -> list[int] | None:
        value = self._take(key, None if optional else _REQUIRED)
        if value is None and optional:
            return None
        if not isinstance(value, list) or len(value) > items_max:
            raise CommandError(f"{key!r} must be a list of at most {items_max} integers")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or \
                    not minimum <= item <= maximum:
                raise CommandError(f"{key!r} holds {item!r}; expected integers in "
                                   f"[{minimum}, {maximum}]")
        return value

    def string_list(self, key: str) -> list[str]:
        value = self._take(key, [])
        if not isinstance(value, list) or len(value) > CONFIG_ENTRIES_MAX or not all(
                isinstance(v, str) and len(v) <= CONFIG_CHARS_MAX for v in value):
            raise CommandError(f"{key!r} must be a list of at most {CONFIG_ENTRIES_MAX} strings")
        return value

    def string_map(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self._take(key, {})
        if not isinstance(value, dict) or len(value) > CONFIG_ENTRIES_MAX:
            raise CommandError(f"{key!r} must be an object of at most {CONFIG_ENTRIES_MAX} "
                               "string entries")
        for k, v in value.items():
            if not isinstance(v, str) or len(k) > CONFIG_CHARS_MAX or len(v) > CONFIG_CHARS_MAX:
                raise CommandError(f"{key!r}: entry {k!r} must map to a string of at most "
                                   f"{CONFIG_CHARS_MAX} characters")
        return tuple(sorted(value.items()))

    def no_more(self, op: str) -> None:
        if self._left:
            raise CommandError(f"unknown fields in {op}: {', '.join(sorted(self._left))}")


_REQUIRED = object()


# -- quotas (SetQuota, RemoveQuota) -----------------------------------------------------------


def _quota_entity_body(entity: QuotaEntity) -> dict[str, Any]:
    return {"user": entity.user, "user_default": entity.user_default,
            "client_id": entity.client_id, "client_id_default": entity.client_id_default}


def _quota_entity(fields: _Fields) -> QuotaEntity:
    try:
        return QuotaEntity(user=fields.string("user", NAME_CHARS_MAX, default=""),
                           user_default=fields.boolean("user_default"),
                           client_id=fields.string("client_id", NAME_CHARS_MAX, default=""),
                           client_id_default=fields.boolean("client_id_default"))
    except ValueError as exc:
        if isinstance(exc, CommandError):
            raise
        raise CommandError(f"quota entity: {exc}") from None


def _quota_kind(text: object) -> QuotaKind:
    try:
        return QuotaKind(text)
    except ValueError:
        raise CommandError(f"unknown quota {text!r}; known: "
                           + ", ".join(k.value for k in QuotaKind)) from None


def _quota_limits(fields: _Fields) -> tuple[tuple[QuotaKind, int], ...]:
    value = fields._take("limits", _REQUIRED)
    if not isinstance(value, dict) or not 1 <= len(value) <= len(QuotaKind):
        raise CommandError(f"'limits' must be an object of 1 to {len(QuotaKind)} quotas")
    limits = []
    for key, limit in value.items():
        if isinstance(limit, bool) or not isinstance(limit, int) or \
                not 1 <= limit <= QUOTA_LIMIT_MAX:
            raise CommandError(f"quota {key!r} must be an integer in [1, {QUOTA_LIMIT_MAX}] "
                               f"(per second), got {limit!r}")
        limits.append((_quota_kind(key), limit))
    return tuple(sorted(limits, key=lambda item: item[0].value))


def _quota_kinds(fields: _Fields) -> tuple[QuotaKind, ...]:
    value = fields._take("kinds", [])
    if not isinstance(value, list) or len(value) > len(QuotaKind):
        raise CommandError(f"'kinds' must be a list of at most {len(QuotaKind)} quota names")
    kinds = [_quota_kind(item) for item in value]
    if len(set(kinds)) != len(kinds):
        raise CommandError(f"'kinds' names a quota twice: {value}")
    return tuple(sorted(kinds, key=lambda k: k.value))


# -- users and ACLs: decoding helpers -----------------------------------------------------------


def _decode_upsert_user(fields: _Fields) -> UpsertUser:
    mode = fields.string("mode", 16)
    if mode not in ("create", "update"):
        raise CommandError(f"'mode' must be 'create' or 'update', got {mode!r}")
    mechanism = fields.string("mechanism", 32)
    if mechanism != MECHANISM:
        raise CommandError(f"'mechanism' must be {MECHANISM!r}, got {mechanism!r}")
    command = UpsertUser(
        name=fields.string("name", USER_NAME_CHARS_MAX), mode=mode, mechanism=mechanism,
        salt=_unb64(fields.string("salt", 4 * USER_SECRET_BYTES_MAX), "salt"),
        iterations=fields.integer("iterations", 1, INT32_MAX),
        stored_key=_unb64(fields.string("stored_key", 4 * USER_SECRET_BYTES_MAX), "stored_key"),
        server_key=_unb64(fields.string("server_key", 4 * USER_SECRET_BYTES_MAX), "server_key"),
        bootstrap=fields.boolean("bootstrap"))
    if not USER_NAME_PATTERN.fullmatch(command.name):
        raise CommandError(f"user name {command.name[:40]!r}: 1 to {USER_NAME_CHARS_MAX} of "
                           "A-Z a-z 0-9 . _ @ - (so that User:NAME is one unambiguous principal)")
    try:
        check_credential_shape(command.salt, command.iterations, command.stored_key,
                               command.server_key)
    except ValueError as exc:
        raise CommandError(f"upsert_user {command.name!r}: {exc}") from None
    return command


def _decode_acls(fields: _Fields) -> tuple[AclBinding, ...]:
    value = fields._take("acls", _REQUIRED)
    if not isinstance(value, list) or not 1 <= len(value) <= ACLS_PER_COMMAND_MAX:
        raise CommandError(f"'acls' must be a list of 1 to {ACLS_PER_COMMAND_MAX} ACL objects")
    acls = []
    for item in value:
        if not isinstance(item, dict) or set(item) != _ACL_KEYS or not all(
                isinstance(v, str) for v in item.values()):
            raise CommandError(f"'acls' holds {str(item)[:80]!r}; expected an object with "
                               f"exactly the string fields {', '.join(sorted(_ACL_KEYS))}")
        try:
            acls.append(AclBinding.from_wire(item))
        except ValueError as exc:
            raise CommandError(f"ACL {str(item)[:80]}: {exc}") from None
    return tuple(acls)


_ACL_KEYS = frozenset({"principal", "resource_type", "pattern_type", "resource_name",
                       "operation", "permission"})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, key: str) -> bytes:
    try:
        data = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(f"{key!r} must be base64") from None
    if _b64(data) != text:  # one spelling only: what encode_command writes
        raise CommandError(f"{key!r} is not canonical base64")
    return data
