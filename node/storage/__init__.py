"""Tidelog's storage engine: a partition log as a directory of segments of record batches.

Public API (everything else in this package is private):

* `PartitionLog.open(directory, config, now_ms=..., fs=...)` and its methods (see log.py)
* the file-system seam: `FileSystem` (Protocol), `OsFileSystem`, `OS_FS` (fs.py); the in-memory
  power-loss twin is `tidelog.node.sim.simfs.SimFileSystem`
* `ensure_directory`, `remove_directory`: directories created/removed durably (dirs.py)
* `LogConfig`, `FsyncPolicy`, `FsyncMode`
* encryption at rest: `AtRestCipher` (LogConfig.encryption) over a `KeyProvider` (encryption.py)
* `AppendInfo`, `RecoveryReport` and its parts
* `write_atomic`, `write_checksummed`, `read_checksummed`, `fsync_directory` for small
  metadata files
* the errors (errors.py), including the codec's, re-exported
"""

from tidelog.node.storage.config import FsyncMode, FsyncPolicy, LogConfig
from tidelog.node.storage.damage import DamagePolicy
from tidelog.node.storage.dirs import ensure_directory, remove_directory
from tidelog.node.storage.encryption import AtRestCipher, KeyProvider
from tidelog.node.storage.errors import (
    BatchAuthenticationError,
    BatchError,
    BatchTooLargeError,
    CorruptBatchError,
    CorruptFileError,
    CorruptLogError,
    DiskFullError,
    EncryptionKeyError,
    InvalidBatchError,
    LogClosedError,
    LogFormatError,
    NotOnBatchBoundaryError,
    OffsetOutOfOrderError,
    OffsetOutOfRangeError,
    StorageError,
    StorageIOError,
    TermOutOfOrderError,
)
from tidelog.node.storage.fs import OS_FS, FileSystem, OsFileSystem
from tidelog.node.storage.log import (
    AppendInfo,
    CorruptRegion,
    PartitionLog,
    RebuiltIndex,
    RecoveryReport,
    TruncatedTail,
)
from tidelog.node.storage.metafile import (
    fsync_directory,
    read_checksummed,
    write_atomic,
    write_checksummed,
)
from tidelog.node.storage.segment import Position

__all__ = [
    "OS_FS",
    "AppendInfo",
    "AtRestCipher",
    "BatchAuthenticationError",
    "BatchError",
    "BatchTooLargeError",
    "CorruptBatchError",
    "CorruptFileError",
    "CorruptLogError",
    "CorruptRegion",
    "DamagePolicy",
    "DiskFullError",
    "EncryptionKeyError",
    "FileSystem",
    "FsyncMode",
    "FsyncPolicy",
    "InvalidBatchError",
    "KeyProvider",
    "LogClosedError",
    "LogConfig",
    "LogFormatError",
    "NotOnBatchBoundaryError",
    "OffsetOutOfOrderError",
    "OffsetOutOfRangeError",
    "OsFileSystem",
    "PartitionLog",
    "Position",
    "RebuiltIndex",
    "RecoveryReport",
    "StorageError",
    "StorageIOError",
    "TermOutOfOrderError",
    "TruncatedTail",
    "ensure_directory",
    "fsync_directory",
    "read_checksummed",
    "remove_directory",
    "write_atomic",
    "write_checksummed",
]
