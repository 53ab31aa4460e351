"""The log cleaner of a node: periodically compacts the local replicas of topics whose
cleanup.policy includes `compact` (node/storage/compaction.py does the work).

One replica at a time, in an executor thread, only up to the replica's high watermark (commit
index + 1: never decide on records a new leader may still replace). A replica is cleaned again
only when a new segment was sealed since, or when it kept tombstones that may have expired.
Every replica (leader or follower) cleans its own log; the result is the same because the rule
depends only on the committed records and the clock, and batches keep their offsets and terms,
so Raft's log matching is unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Protocol

from tidelog.node.metadata import TopicInfo
from tidelog.node.replica import Replica
from tidelog.node.storage.compaction import CompactionConfig, compact
from tidelog.node.topics import effective_configs


class LocalPartitions(Protocol):
    """What the cleaner needs: this node's partition replicas and their topics."""

    def partition_replicas(self) -> list[tuple[str, Replica]]: ...

    def topic_of(self, group: str) -> TopicInfo | None: ...


__all__ = ["run_cleaner"]

log = logging.getLogger(__name__)

CLEANER_INTERVAL_MS = int(os.environ.get("TIDELOG_CLEANER_INTERVAL_MS", "15000"))
CLEANER_IO_BYTES_PER_S_MAX = int(os.environ.get("TIDELOG_CLEANER_IO_BYTES_PER_S_MAX",
                                                str(64 * 1024 * 1024)))
TOMBSTONE_RECHECK_MS = 60_000


async def run_cleaner(node: LocalPartitions) -> None:
    done: dict[str, tuple[int, float]] = {}  # group → (sealed end cleaned, when tombstones left)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(CLEANER_INTERVAL_MS / 1000)
        for group, replica in node.partition_replicas():
            topic = node.topic_of(group)
            if topic is None:
                continue
            configs = effective_configs(topic.configs)
            if "compact" not in configs["cleanup.policy"].split(","):
                continue
            upto = replica.high_watermark
            try:
                sealed = replica.log.sealed_segments(upto)
            except Exception:  # noqa: BLE001 - a closed log (replica deleted): skip it
                continue
            sealed_end = sealed[-1][1] if sealed else 0
            last_end, recheck_at = done.get(group, (-1, 0.0))
            if not sealed or (sealed_end == last_end and time.monotonic() < recheck_at):
                continue
            config = CompactionConfig(
                delete_retention_ms=int(configs["delete.retention.ms"]),
                io_bytes_per_s_max=CLEANER_IO_BYTES_PER_S_MAX,
                batch_bytes_max=max(int(configs["max.message.bytes"]), 1024 * 1024))
            try:
                result = await loop.run_in_executor(
                    None, lambda r=replica, u=upto, c=config: compact(
                        r.log, upto_offset=u, now_ms=int(time.time() * 1000), config=c))
            except Exception as exc:  # noqa: BLE001 - one bad log must not stop the cleaner
                log.error("compaction of %s failed: %s", group, exc)
                done[group] = (sealed_end, time.monotonic() + TOMBSTONE_RECHECK_MS / 1000)
                continue
            recheck_s = (min(TOMBSTONE_RECHECK_MS, config.delete_retention_ms) / 1000
                         if result.tombstones_kept else float("inf"))
            covered_all = result.cleaned_upto_offset >= sealed_end
            done[group] = (sealed_end if covered_all else -1, time.monotonic() + recheck_s)
