"""Which fsync policy each kind of replica gets."""

from __future__ import annotations

from pathlib import Path

from tidelog.node.config import NodeConfig
from tidelog.node.replica_configs import (
    METADATA_SEGMENT_BYTES,
    log_config,
    metadata_log_config,
)
from tidelog.node.storage import FsyncMode


def _config(tmp_path: Path, fsync: str) -> NodeConfig:
    return NodeConfig(node_id=1, listen="127.0.0.1:9091", advertise="127.0.0.1:9091",
                      peers={1: "127.0.0.1:9091"}, data_dir=tmp_path, fsync=fsync)


def test_the_metadata_log_fsyncs_every_write_even_when_partitions_fsync_by_interval(
        tmp_path: Path) -> None:
    config = _config(tmp_path, "interval:1000ms")
    assert log_config(config).fsync.mode is FsyncMode.INTERVAL
    assert metadata_log_config(config).fsync.mode is FsyncMode.ALWAYS


def test_the_metadata_log_keeps_the_node_s_other_log_settings(tmp_path: Path) -> None:
    config = _config(tmp_path, "always")
    partition, metadata = log_config(config), metadata_log_config(config)
    # ... but 1 MiB segments, so a cut below a metadata snapshot frees the disk (and the
    # start-up scan) soon, not after 128 MiB of history.
    assert metadata.segment_bytes_max == METADATA_SEGMENT_BYTES < partition.segment_bytes_max
    assert metadata.retention_ms == partition.retention_ms
