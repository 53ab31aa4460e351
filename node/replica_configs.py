"""The log and Raft configuration of a replica, from topic configs and the node's config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from tidelog.node.config import NodeConfig
from tidelog.node.raft import NodeId, RaftConfig
from tidelog.node.storage import FsyncPolicy, LogConfig
from tidelog.node.topics import effective_configs


def log_config(config: NodeConfig, configs: Mapping[str, str] | None = None) -> LogConfig:
    """A partition log's settings: the topic's explicit configs over the defaults."""
    eff = effective_configs(configs or {})
    retention_ms = int(eff["retention.ms"])
    retention_bytes = int(eff["retention.bytes"])
    return LogConfig(
        segment_bytes_max=int(eff["segment.bytes"]),
        segment_ms_max=int(eff["segment.ms"]),
        batch_bytes_max=max(int(eff["max.message.bytes"]), 1024 * 1024),
        fsync=FsyncPolicy.parse((configs or {}).get("flush.policy", config.fsync)),
        retention_ms=retention_ms if retention_ms >= 0 else None,
        retention_bytes=retention_bytes if retention_bytes >= 0 else None,
    )


METADATA_SEGMENT_BYTES = 256 * 1024  # ~1,000 commands: about one snapshot interval
METADATA_BATCH_BYTES_MAX = 128 * 1024  # a command is at most 64 KiB (COMMAND_BYTES_MAX)


def metadata_log_config(config: NodeConfig) -> LogConfig:
    """The metadata log fsyncs every write whatever the node's fsync policy (as KRaft's
    controllers do): topics, producer epochs and node registrations are few, small and
    everything else depends on them, so losing one to a power cut under fsync=interval would
    make the nodes disagree about the cluster itself (seen in power-cut-all under interval).
    Its segments are 256 KiB: the log is cut below each metadata snapshot
    (node/metadata_snapshot.py) and only whole sealed segments leave the disk; with 128 MiB ones
    the whole history stayed in the active segment, which every start scans in full
    (benchmarks/README.md "Metadata start")."""
    return dataclasses.replace(log_config(config), fsync=FsyncPolicy.always(),
                               segment_bytes_max=METADATA_SEGMENT_BYTES,
                               batch_bytes_max=METADATA_BATCH_BYTES_MAX)


def raft_config(config: NodeConfig, voters: Sequence[int],
                learners: Sequence[int] = ()) -> RaftConfig:
    return RaftConfig(
        node_id=NodeId(config.node_id), voters=tuple(NodeId(v) for v in voters),
        learners=tuple(NodeId(v) for v in learners),
        election_ticks=config.election_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
        noop_on_committed_log=False,  # a fresh topic starts at offset 0 (docs/raft.md)
        quiesce=True,  # idle groups sleep; node/liveness.py wakes them (docs/raft.md)
    )
