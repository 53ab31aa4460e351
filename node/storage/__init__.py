"""Tidelog's storage engine: a partition log as a directory of segments of record batches.

Public API (everything else in this package is private):

* `PartitionLog.open(directory, config, now_ms=...)` and its methods (see log.py)
* `LogConfig`, `FsyncPolicy`, `FsyncMode`
* `AppendInfo`, `RecoveryReport` and its parts
* `write_atomic`, `write_checksummed`, `read_checksummed` for small metadata files
* the errors (errors.py), including the codec's, re-exported
"""

from tidelog.node.storage.config import FsyncMode, FsyncPolicy, LogConfig
from tidelog.node.storage.errors import (
    BatchError,
    BatchTooLargeError,
    CorruptBatchError,
    CorruptFileError,
    CorruptLogError,
    DiskFullError,
    InvalidBatchError,
    LogClosedError,
    NotOnBatchBoundaryError,
    OffsetOutOfOrderError,
    OffsetOutOfRangeError,
    StorageError,
    StorageIOError,
    TermOutOfOrderError,
)
from tidelog.node.storage.log import (
    AppendInfo,
    CorruptRegion,
    PartitionLog,
    RebuiltIndex,
    RecoveryReport,
    TruncatedTail,
)
from tidelog.node.storage.metafile import read_checksummed, write_atomic, write_checksummed
from tidelog.node.storage.segment import Position

__all__ = [
    "AppendInfo",
    "BatchError",
    "BatchTooLargeError",
    "CorruptBatchError",
    "CorruptFileError",
    "CorruptLogError",
    "CorruptRegion",
    "DiskFullError",
    "FsyncMode",
    "FsyncPolicy",
    "InvalidBatchError",
    "LogClosedError",
    "LogConfig",
    "NotOnBatchBoundaryError",
    "OffsetOutOfOrderError",
    "OffsetOutOfRangeError",
    "PartitionLog",
    "Position",
    "RebuiltIndex",
    "RecoveryReport",
    "StorageError",
    "StorageIOError",
    "TermOutOfOrderError",
    "TruncatedTail",
    "read_checksummed",
    "write_atomic",
    "write_checksummed",
]
