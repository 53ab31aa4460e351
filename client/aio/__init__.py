"""Tidelog's asyncio client: AIOProducer, AIOConsumer, AIOAdmin, AIOQueueConsumer.

Native asyncio over grpc.aio (no thread wrapped in futures), sharing the sync client's sans-I/O
parts: options (client/config.py), the record accumulator, partitioners and delivery state
(idempotence, sequence numbers, retries), the batch codec, the fetch decoding, the group wire
helpers, the queue decoding and settlement coalescing, the SCRAM math. See docs/client.md,
"asyncio client".

    from tidelog.client.aio import AIOProducer, AIOConsumer, AIOAdmin, AIOQueueConsumer
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["AIOAdmin", "AIOConsumer", "AIOProducer", "AIOQueueConsumer"]

_LAZY = {
    "AIOAdmin": "tidelog.client.aio.admin",
    "AIOConsumer": "tidelog.client.aio.consumer",
    "AIOProducer": "tidelog.client.aio.producer",
    "AIOQueueConsumer": "tidelog.client.aio.queue",
}

if TYPE_CHECKING:
    from tidelog.client.aio.admin import AIOAdmin
    from tidelog.client.aio.consumer import AIOConsumer
    from tidelog.client.aio.producer import AIOProducer
    from tidelog.client.aio.queue import AIOQueueConsumer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidelog.client.aio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
