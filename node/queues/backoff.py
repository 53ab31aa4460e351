"""Server-side retry backoff: exponential with a deterministic +-20% jitter.

Deterministic because lock expiry is computed, not persisted: a replayed core must reach the same
availability time for the same (record, attempt) as the live core did, so the jitter comes from
xxh3_64 of "topic/partition/offset/count" instead of a random generator.
"""

from __future__ import annotations

import xxhash

__all__ = ["JITTER", "backoff_ms"]

JITTER = 0.2
_EXPONENT_MAX = 200          # multiplier <= 10: 10**200 is still a finite float
_TWO_64 = float(1 << 64)


def backoff_ms(*, initial_ms: int, max_ms: int, multiplier: float, topic: str, partition: int,
               offset: int, count: int) -> int:
    """Wait before redelivering a record whose `count`-th delivery failed (count >= 1)."""
    exponent = min(max(count - 1, 0), _EXPONENT_MAX)
    base = min(float(max_ms), initial_ms * multiplier ** exponent)
    if base <= 0:
        return 0
    digest = xxhash.xxh3_64_intdigest(f"{topic}/{partition}/{offset}/{count}".encode())
    factor = 1.0 - JITTER + 2.0 * JITTER * (digest / _TWO_64)
    return int(base * factor)
