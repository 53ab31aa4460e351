"""Tidelog's Python client. The batch codec lives in `tidelog.proto.batch`, shared with the node.

Public API (imported lazily, PEP 562, so that importing one client module does not pull in gRPC,
threads or the producer)::

    from tidelog.client import Producer, Consumer, Admin, TopicPartition
    from tidelog.client import QueueConsumer, QueueMessage, LockLostError
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Admin",
    "Consumer",
    "ConsumerRecord",
    "LockLostError",
    "Producer",
    "QueueConsumer",
    "QueueMessage",
    "RecordFuture",
    "RecordMetadata",
    "TidelogError",
    "TopicPartition",
    "errors",
]

_LAZY = {
    "Admin": "tidelog.client.admin",
    "Consumer": "tidelog.client.consumer",
    "ConsumerRecord": "tidelog.client.records",
    "LockLostError": "tidelog.client.errors",
    "Producer": "tidelog.client.producer",
    "QueueConsumer": "tidelog.client.queue",
    "QueueMessage": "tidelog.client.queue",
    "RecordFuture": "tidelog.client.future",
    "RecordMetadata": "tidelog.client.records",
    "TidelogError": "tidelog.client.errors",
    "TopicPartition": "tidelog.client.records",
}

if TYPE_CHECKING:
    from tidelog.client import errors
    from tidelog.client.admin import Admin
    from tidelog.client.consumer import Consumer
    from tidelog.client.errors import LockLostError, TidelogError
    from tidelog.client.future import RecordFuture
    from tidelog.client.producer import Producer
    from tidelog.client.queue import QueueConsumer, QueueMessage
    from tidelog.client.records import ConsumerRecord, RecordMetadata, TopicPartition


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("tidelog.client.errors")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidelog.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
