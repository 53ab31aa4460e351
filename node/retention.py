"""Retention on a node: periodically deletes the oldest segments of every local partition
replica whose topic's cleanup.policy includes `delete` (retention.ms / retention.bytes).

Every replica, leader or follower, deletes from its own log (as Kafka and Redpanda do): the rule
depends only on the replica's segments and the clock, so the cuts may differ by a segment between
replicas, which Raft does not mind (a follower below the leader's log start is reset to it by
INSTALL_LOG_START). Which segments go is node/storage/retention.py's pure function; the cut is
clamped to the Raft rule of docs/raft.md (entries up to min(applied, persisted), at an entry
boundary) and made through Replica.truncate_prefix, which records the new log start and its
term in raft.state before the log deletes anything. Compacted internal topics
(`__consumer_offsets`, `__queue_state`: cleanup.policy=compact) are never retention-deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from tidelog.node.cleaner import LocalPartitions
from tidelog.node.raft import LogIndex
from tidelog.node.replica import Replica
from tidelog.node.topics import effective_configs

__all__ = ["RETENTION_CHECK_MS", "RetentionPolicy", "retention_cut", "run_retention"]

log = logging.getLogger(__name__)

# Kafka's log.retention.check.interval.ms default (5 minutes); tests set it small.
RETENTION_CHECK_MS = int(os.environ.get("TIDELOG_RETENTION_CHECK_MS", "300000"))


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    retention_ms: int | None
    retention_bytes: int | None


def policy_of(configs: dict[str, str]) -> RetentionPolicy | None:
    """The topic's retention, or None when retention does not apply (compact-only, or both
    limits -1)."""
    eff = effective_configs(configs)
    if "delete" not in eff["cleanup.policy"].split(","):
        return None
    ms, size = int(eff["retention.ms"]), int(eff["retention.bytes"])
    if ms < 0 and size < 0:
        return None
    return RetentionPolicy(ms if ms >= 0 else None, size if size >= 0 else None)


def retention_cut(replica: Replica, policy: RetentionPolicy, now_ms: int) -> int | None:
    """The entry boundary `upto` to pass to Replica.truncate_prefix, or None for nothing to do.

    Retention keeps the segment starting at `start`; Raft lets it remove entries up to
    min(applied, persisted) only, and only whole entries."""
    plog = replica.log
    current = plog.log_start_offset
    start = plog.retention_start(now_ms, retention_ms=policy.retention_ms,
                                 retention_bytes=policy.retention_bytes)
    if start <= current:
        return None
    core = replica.core
    limit = min(start - 1, core.applied, core.log.persisted_index())
    if limit < current:
        return None
    upto = core.log.boundary_at_or_before(LogIndex(limit))
    return int(upto) if upto >= current else None


async def run_retention(node: LocalPartitions, interval_ms: int | None = None) -> None:
    """Forever: every `interval_ms` (TIDELOG_RETENTION_CHECK_MS), one pass over the replicas."""
    interval_s = (interval_ms if interval_ms is not None else RETENTION_CHECK_MS) / 1000
    while True:
        await asyncio.sleep(interval_s)
        await retention_pass(node, int(time.time() * 1000))


async def retention_pass(node: LocalPartitions, now_ms: int) -> int:
    """Cut every local replica retention applies to; returns how many were cut."""
    cut = 0
    for group, replica in node.partition_replicas():
        topic = node.topic_of(group)
        if topic is None:
            continue
        policy = policy_of(dict(topic.configs))
        if policy is None:
            continue
        try:
            upto = retention_cut(replica, policy, now_ms)
            if upto is None:
                continue
            before = replica.log.log_start_offset
            await replica.truncate_prefix(upto)
        except Exception as exc:  # noqa: BLE001 - a closed (deleted) replica or a full disk:
            log.warning("retention of %s skipped: %s", group, exc)  # the next pass retries
            continue
        cut += 1
        log.info("retention: %s (%s) log start %d -> %d", topic.name, group, before, upto + 1)
    return cut
