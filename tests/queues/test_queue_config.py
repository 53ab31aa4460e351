"""QueueConfig: defaults as queue.proto documents them, validation, the dict form, AlterQueue."""

from __future__ import annotations

import dataclasses

import pytest
from tidelog.node.queues.config import QueueConfig, QueueConfigError


def _cfg(**kw: object) -> QueueConfig:
    return QueueConfig(name="jobs", topics=("orders",), **kw)  # type: ignore[arg-type]


def test_defaults_are_those_of_queue_proto() -> None:
    cfg = _cfg()
    assert (cfg.key_ordered, cfg.max_deliveries, cfg.lock_ms, cfg.backoff_initial_ms,
            cfg.backoff_max_ms, cfg.backoff_multiplier, cfg.dead_letter_topic, cfg.delay_ms,
            cfg.ttl_ms, cfg.max_in_flight, cfg.start) == (
        False, 10, 30_000, 1_000, 60_000, 2.0, "", 0, 0, 5_000, "earliest")
    assert cfg.dlq_topic == "jobs.dlq"
    assert _cfg(dead_letter_topic="poison").dlq_topic == "poison"


@pytest.mark.parametrize("field,value,words", [
    ("name", "", "name"),
    ("name", "has space", "name"),
    ("name", "x" * 201, "name"),
    ("topics", (), "topics"),
    ("topics", ("a", "a"), "twice"),
    ("max_deliveries", 0, "max_deliveries"),
    ("max_deliveries", True, "max_deliveries"),
    ("lock_ms", 0, "lock_ms"),
    ("backoff_initial_ms", -1, "backoff_initial_ms"),
    ("backoff_max_ms", 10, "below backoff_initial_ms"),
    ("backoff_multiplier", 0.5, "backoff_multiplier"),
    ("backoff_multiplier", 11.0, "backoff_multiplier"),
    ("dead_letter_topic", "orders", "own topics"),
    ("dead_letter_topic", "bad/name", "dead_letter_topic"),
    ("delay_ms", -5, "delay_ms"),
    ("ttl_ms", -1, "ttl_ms"),
    ("max_in_flight", 0, "max_in_flight"),
    ("max_in_flight", 100_001, "max_in_flight"),
    ("start", "middle", "start"),
])
def test_validation_names_the_field(field: str, value: object, words: str) -> None:
    kwargs = {"name": "jobs", "topics": ("orders",), field: value}
    with pytest.raises(QueueConfigError, match=words):
        QueueConfig(**kwargs)  # type: ignore[arg-type]
    assert issubclass(QueueConfigError, ValueError)


def test_dict_form_round_trips_and_is_json_able() -> None:
    import json

    cfg = _cfg(key_ordered=True, max_deliveries=3, backoff_multiplier=1.5, ttl_ms=9)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert QueueConfig.from_dict(data) == cfg
    assert set(data) == {f.name for f in dataclasses.fields(QueueConfig)}


@pytest.mark.parametrize("damage", [
    lambda d: d.update(surprise=1),
    lambda d: d.pop("topics"),
    lambda d: d.update(topics="orders"),
    lambda d: d.update(lock_ms="30000"),
    lambda d: d.update(key_ordered=1),
])
def test_from_dict_is_strict(damage) -> None:  # type: ignore[no-untyped-def]
    data = _cfg().to_dict()
    damage(data)
    with pytest.raises(QueueConfigError):
        QueueConfig.from_dict(data)


def test_with_changes_parses_wire_strings_and_validates() -> None:
    cfg = _cfg().with_changes({"key_ordered": "true", "max_deliveries": "5",
                               "backoff_multiplier": "3", "dead_letter_topic": "dead"})
    assert (cfg.key_ordered, cfg.max_deliveries, cfg.backoff_multiplier, cfg.dlq_topic) == (
        True, 5, 3.0, "dead")
    assert cfg.with_changes({"key_ordered": "0"}).key_ordered is False
    assert cfg.with_changes({}) == cfg


@pytest.mark.parametrize("changes,words", [
    ({"name": "other"}, "cannot be altered"),
    ({"topics": "a,b"}, "cannot be altered"),
    ({"colour": "blue"}, "not a queue setting"),
    ({"lock_ms": "soon"}, "not a valid int"),
    ({"key_ordered": "maybe"}, "not a valid bool"),
    ({"max_deliveries": "0"}, "max_deliveries"),
])
def test_with_changes_refuses_bad_changes(changes: dict[str, str], words: str) -> None:
    with pytest.raises(QueueConfigError, match=words):
        _cfg().with_changes(changes)
