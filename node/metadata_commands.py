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

import json
from dataclasses import dataclass
from typing import Any

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


class CommandError(ValueError):
    """A metadata command that is malformed (the proposer's fault); the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterNode:
    """A node's client-facing (advertised) address."""

    node_id: int
    address: str


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


Command = (RegisterNode | CreateTopic | DeleteTopic | AlterConfigs | AllocateProducerId
           | InitProducer)

_OPS: dict[type, str] = {
    RegisterNode: "register_node",
    CreateTopic: "create_topic",
    DeleteTopic: "delete_topic",
    AlterConfigs: "alter_configs",
    AllocateProducerId: "allocate_producer_id",
    InitProducer: "init_producer",
}


def command_op(command: Command) -> str:
    return _OPS[type(command)]


def encode_command(command: Command) -> bytes:
    body: dict[str, Any] = {"op": command_op(command)}
    match command:
        case RegisterNode(node_id=node_id, address=address):
            body.update(node_id=node_id, address=address)
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
        case AllocateProducerId():
            pass
        case InitProducer():
            body.update(producer_id=command.producer_id, producer_epoch=command.producer_epoch,
                        transactional_id=command.transactional_id)
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
                address=fields.string("address", ADDRESS_CHARS_MAX))
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
        case "allocate_producer_id":
            command = AllocateProducerId()
        case "init_producer":
            command = InitProducer(
                producer_id=fields.integer("producer_id", -1, PRODUCER_ID_MAX),
                producer_epoch=fields.integer("producer_epoch", -1, EPOCH_MAX),
                transactional_id=fields.string("transactional_id", TRANSACTIONAL_ID_CHARS_MAX,
                                               default=""))
        case _:
            raise CommandError(f"unknown metadata command {op!r}")
    fields.no_more(op)
    return command


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
