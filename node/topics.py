"""Topic rules: valid names, the topic config schema with defaults, and replica placement.

Pure functions: the metadata state machine calls them while applying commands, so every node
reaches the same answer from the same log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tidelog.node.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidTopicNameError,
)

TOPIC_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
TOPIC_NAME_CHARS_MAX = 249
PARTITIONS_MAX = 4096
# One year either side of the broker's clock: far enough for replays of old data, near enough to
# refuse garbage (a timestamp of 0, or the year 292 million) that would defeat time retention.
TIMESTAMP_DIFFERENCE_MS_MAX_DEFAULT = 365 * 24 * 3600 * 1000


def partition_group(topic_id: int, partition: int) -> str:
    """The Raft group of a partition: "<topic_id>/<partition>" (ids survive renames and
    re-creation under the same name)."""
    return f"{topic_id}/{partition}"


def validate_topic_name(name: str) -> None:
    """Kafka's rules: 1-249 characters of [A-Za-z0-9._-], not '.' or '..'."""
    if not name:
        raise InvalidTopicNameError("topic name is empty")
    if len(name) > TOPIC_NAME_CHARS_MAX:
        raise InvalidTopicNameError(
            f"topic name is {len(name)} characters; the maximum is {TOPIC_NAME_CHARS_MAX}"
        )
    if name in (".", ".."):
        raise InvalidTopicNameError(f"topic name {name!r} is reserved")
    if not TOPIC_NAME_RE.match(name):
        raise InvalidTopicNameError(
            f"topic name {name!r} may only contain letters, digits, '.', '_' and '-'"
        )


def _int_at_least(minimum: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            number = int(value)
        except ValueError:
            raise InvalidConfigError(f"expected an integer, got {value!r}") from None
        if number < minimum:
            raise InvalidConfigError(f"must be at least {minimum}, got {number}")
        return str(number)

    return check


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise InvalidConfigError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def _fsync_policy(value: str) -> str:
    if value == "always" or re.fullmatch(r"interval:\d+(ms|B|KiB|MiB)", value):
        return value
    raise InvalidConfigError(
        f"expected 'always' or 'interval:<N>ms' / 'interval:<N>MiB', got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class ConfigKey:
    name: str
    default: str
    check: Callable[[str], str]
    doc: str


TOPIC_CONFIGS: dict[str, ConfigKey] = {
    key.name: key
    for key in (
        ConfigKey("retention.ms", "604800000", _int_at_least(-1),
                  "delete closed segments older than this (-1: keep forever)"),
        ConfigKey("retention.bytes", "-1", _int_at_least(-1),
                  "delete oldest closed segments past this size per partition (-1: no limit)"),
        ConfigKey("segment.bytes", str(128 * 1024 * 1024), _int_at_least(1024 * 1024),
                  "roll the active segment at this size"),
        ConfigKey("segment.ms", "604800000", _int_at_least(1000),
                  "roll the active segment at this age"),
        ConfigKey("max.message.bytes", str(8 * 1024 * 1024), _int_at_least(1024),
                  "largest batch a producer may send"),
        ConfigKey("cleanup.policy", "delete", _one_of("delete", "compact", "compact,delete"),
                  "delete old segments, or compact to the latest record per key"),
        ConfigKey("delete.retention.ms", "86400000", _int_at_least(0),
                  "how long compaction keeps tombstones"),
        ConfigKey("message.timestamp.difference.max.ms", str(TIMESTAMP_DIFFERENCE_MS_MAX_DEFAULT),
                  _int_at_least(0),
                  "refuse a produced record whose timestamp is further than this from the "
                  "broker's clock (Kafka's meaning)"),
        ConfigKey("flush.policy", "always", _fsync_policy,
                  "fsync before acks=all answers ('always'), or every N ms / N bytes"),
    )
}


def validate_configs(configs: Mapping[str, str]) -> dict[str, str]:
    """Checked, normalised explicit settings; unknown keys are refused, never ignored."""
    checked: dict[str, str] = {}
    for name, value in configs.items():
        key = TOPIC_CONFIGS.get(name)
        if key is None:
            raise InvalidConfigError(
                f"unknown topic config {name!r}; known: {', '.join(sorted(TOPIC_CONFIGS))}"
            )
        try:
            checked[name] = key.check(str(value))
        except InvalidConfigError as exc:
            raise InvalidConfigError(f"topic config {name}: {exc.message}") from None
    return checked


def validate_config_relations(explicit: Mapping[str, str]) -> None:
    """Settings that are valid alone but not together (a batch must fit in a segment)."""
    eff = effective_configs(explicit)
    if int(eff["segment.bytes"]) < int(eff["max.message.bytes"]):
        raise InvalidConfigError(
            f"segment.bytes ({eff['segment.bytes']}) must be at least max.message.bytes "
            f"({eff['max.message.bytes']}): a batch has to fit in one segment; lower "
            "max.message.bytes too")


def effective_configs(explicit: Mapping[str, str]) -> dict[str, str]:
    """Explicit settings over defaults: what DescribeConfigs reports."""
    return {name: explicit.get(name, key.default) for name, key in TOPIC_CONFIGS.items()}


def validate_layout(partitions: int, replication_factor: int, node_count: int) -> None:
    if not 1 <= partitions <= PARTITIONS_MAX:
        raise InvalidPartitionsError(
            f"partitions must be between 1 and {PARTITIONS_MAX}, got {partitions}"
        )
    if replication_factor < 1:
        raise InvalidReplicationFactorError(
            f"replication factor must be at least 1, got {replication_factor}"
        )
    if replication_factor > node_count:
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} is larger than the {node_count} "
            "nodes in the cluster"
        )


def assign_replicas(
    partitions: int, replication_factor: int, node_ids: Sequence[int], rotation: int
) -> list[list[int]]:
    """Replica lists, the first of each being the preferred leader.

    Round-robin from a per-topic rotation, so that over many partitions (and many topics) every
    node holds the same number of replicas and is preferred leader equally often.
    """
    nodes = sorted(node_ids)
    count = len(nodes)
    assert 1 <= replication_factor <= count
    layout = []
    for partition in range(partitions):
        first = (rotation + partition) % count
        layout.append([nodes[(first + k) % count] for k in range(replication_factor)])
    return layout
