"""Which whole segments retention deletes: a pure function of segment summaries and the clock.

Rules (docs/storage.md):
* only a prefix of sealed segments is deleted; the active segment never is;
* by age: a segment whose newest batch (max_timestamp) is older than retention_ms;
* by size: the oldest segments while the log's total size exceeds retention_bytes, so that
  afterwards total <= retention_bytes or only the active segment remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SegmentStat", "segments_to_delete"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentStat:
    base_offset: int
    size_bytes: int
    max_timestamp_ms: int


def segments_to_delete(
    sealed: Sequence[SegmentStat],
    *,
    total_bytes: int,
    now_ms: int,
    retention_ms: int | None,
    retention_bytes: int | None,
) -> int:
    """How many of the oldest sealed segments (in offset order) to delete."""
    count = 0
    remaining = total_bytes
    for stat in sealed:
        too_old = retention_ms is not None and now_ms - stat.max_timestamp_ms > retention_ms
        too_big = retention_bytes is not None and remaining > retention_bytes
        if not (too_old or too_big):
            break
        count += 1
        remaining -= stat.size_bytes
    return count
