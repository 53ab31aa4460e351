"""A queue's configuration: the defaults of queue.proto's QueueConfig, validated at construction.

The coordinator persists `to_dict()` in the queue's snapshot and `SetConfig` deltas, so `from_dict`
is strict: an unknown field or a wrong type is a `QueueConfigError` (the record is not ours, or is
damaged), never silently ignored. `with_changes` is AlterQueue: string values from the wire, parsed
per field; name and topics cannot change (the state is keyed by them).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACKOFF_MULTIPLIER_MAX",
    "DELAY_MS_MAX",
    "LOCK_MS_MAX",
    "MAX_DELIVERIES_MAX",
    "MAX_IN_FLIGHT_MAX",
    "QueueConfig",
    "QueueConfigError",
]

NAME_CHARS_MAX = 200          # leaves room for the ".dlq" suffix within a topic name's 249
TOPICS_MAX = 100
MAX_DELIVERIES_MAX = 1000
LOCK_MS_MAX = 12 * 3600 * 1000
BACKOFF_MS_MAX = 24 * 3600 * 1000
BACKOFF_MULTIPLIER_MAX = 10.0
DELAY_MS_MAX = 15 * 24 * 3600 * 1000     # SQS allows 15 minutes per queue; a log can hold more
TTL_MS_MAX = 365 * 24 * 3600 * 1000
MAX_IN_FLIGHT_MAX = 100_000
DEDUP_WINDOW_MS_MAX = 24 * 3600 * 1000
STARTS = ("earliest", "latest")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_FIXED = ("name", "topics")


class QueueConfigError(ValueError):
    """The operator's configuration is not acceptable; the message says which field and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    name: str
    topics: tuple[str, ...]
    key_ordered: bool = False
    max_deliveries: int = 10
    lock_ms: int = 30_000
    backoff_initial_ms: int = 1_000
    backoff_max_ms: int = 60_000
    backoff_multiplier: float = 2.0
    dead_letter_topic: str = ""
    delay_ms: int = 0
    ttl_ms: int = 0
    max_in_flight: int = 5_000
    start: str = "earliest"
    dedup_window_ms: int = 300_000   # -1: off (SQS FIFO's and Service Bus's default: 5 minutes)

    def __post_init__(self) -> None:
        if isinstance(self.topics, list):
            object.__setattr__(self, "topics", tuple(self.topics))
        self.validate()

    @property
    def dlq_topic(self) -> str:
        """Where dead letters go: `dead_letter_topic`, or `<name>.dlq` when it is empty."""
        return self.dead_letter_topic or f"{self.name}.dlq"

    def validate(self) -> None:
        """Raise QueueConfigError naming the first field that is out of range."""
        _check_name("name", self.name, NAME_CHARS_MAX)
        if not isinstance(self.topics, tuple) or not self.topics:
            raise QueueConfigError("topics: a queue needs at least one topic")
        if len(self.topics) > TOPICS_MAX:
            raise QueueConfigError(f"topics: at most {TOPICS_MAX} topics, got {len(self.topics)}")
        for topic in self.topics:
            _check_name("topics", topic, 249)
        if len(set(self.topics)) != len(self.topics):
            raise QueueConfigError(f"topics: listed twice in {list(self.topics)}")
        _check_type("key_ordered", self.key_ordered, bool)
        _check_int("max_deliveries", self.max_deliveries, 1, MAX_DELIVERIES_MAX)
        _check_int("lock_ms", self.lock_ms, 1, LOCK_MS_MAX)
        _check_int("backoff_initial_ms", self.backoff_initial_ms, 0, BACKOFF_MS_MAX)
        _check_int("backoff_max_ms", self.backoff_max_ms, 0, BACKOFF_MS_MAX)
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise QueueConfigError(
                f"backoff_max_ms ({self.backoff_max_ms}) is below backoff_initial_ms "
                f"({self.backoff_initial_ms})")
        if (not isinstance(self.backoff_multiplier, (int, float))
                or isinstance(self.backoff_multiplier, bool)
                or not 1.0 <= self.backoff_multiplier <= BACKOFF_MULTIPLIER_MAX):
            raise QueueConfigError("backoff_multiplier: must be within "
                                   f"1.0..{BACKOFF_MULTIPLIER_MAX}, got "
                                   f"{self.backoff_multiplier!r}")
        if self.dead_letter_topic:
            _check_name("dead_letter_topic", self.dead_letter_topic, 249)
        if self.dlq_topic in self.topics:
            raise QueueConfigError(f"dead_letter_topic: {self.dlq_topic!r} is one of the queue's "
                                   "own topics")
        _check_int("delay_ms", self.delay_ms, 0, DELAY_MS_MAX)
        _check_int("ttl_ms", self.ttl_ms, 0, TTL_MS_MAX)
        _check_int("max_in_flight", self.max_in_flight, 1, MAX_IN_FLIGHT_MAX)
        if self.dedup_window_ms != -1:
            _check_int("dedup_window_ms", self.dedup_window_ms, 1, DEDUP_WINDOW_MS_MAX)
        if self.start not in STARTS:
            raise QueueConfigError(f"start: must be one of {list(STARTS)}, got {self.start!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, every field present (the snapshot and SetConfig delta form)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["topics"] = list(self.topics)
        out["backoff_multiplier"] = float(self.backoff_multiplier)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueueConfig:
        """Strict: unknown fields or wrong types raise QueueConfigError (a ValueError)."""
        if not isinstance(data, Mapping):
            raise QueueConfigError(f"queue config: expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise QueueConfigError(f"queue config: unknown fields {sorted(unknown)}")
        for needed in _FIXED:
            if needed not in data:
                raise QueueConfigError(f"queue config: {needed} is missing")
        kwargs = dict(data)
        topics = kwargs["topics"]
        if not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) for t in topics):
            raise QueueConfigError("topics: expected a list of names")
        kwargs["topics"] = tuple(topics)
        if isinstance(kwargs.get("backoff_multiplier"), int) and not isinstance(
                kwargs.get("backoff_multiplier"), bool):
            kwargs["backoff_multiplier"] = float(kwargs["backoff_multiplier"])
        return cls(**kwargs)

    def with_changes(self, set: Mapping[str, str]) -> QueueConfig:  # noqa: A002 (the wire's name)
        """AlterQueue: field name -> string value; returns the new, validated config."""
        changes: dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for name, raw in set.items():
            if name in _FIXED:
                raise QueueConfigError(f"{name}: cannot be altered (create a new queue)")
            if name not in types:
                raise QueueConfigError(f"{name}: not a queue setting (known: "
                                       f"{sorted(n for n in types if n not in _FIXED)})")
            changes[name] = _parse(name, str(types[name]), raw)
        return dataclasses.replace(self, **changes)


def _parse(name: str, type_name: str, raw: str) -> Any:
    text = raw.strip()
    try:
        if type_name == "bool":
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
    except ValueError:
        raise QueueConfigError(f"{name}: {raw!r} is not a valid {type_name}") from None
    return raw


def _check_name(field: str, value: object, chars_max: int) -> None:
    if not isinstance(value, str) or not value:
        raise QueueConfigError(f"{field}: a non-empty name is required")
    if len(value) > chars_max:
        raise QueueConfigError(f"{field}: {value[:40]!r}... is longer than {chars_max} characters")
    if not _NAME.match(value) or value in (".", ".."):
        raise QueueConfigError(f"{field}: {value!r} may use only letters, digits, '.', '_', '-'")


def _check_type(field: str, value: object, kind: type) -> None:
    if not isinstance(value, kind):
        raise QueueConfigError(f"{field}: expected {kind.__name__}, got {value!r}")


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise QueueConfigError(f"{field}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise QueueConfigError(f"{field}: must be within {low}..{high}, got {value}")
