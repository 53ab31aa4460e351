"""Storage errors, split by who is at fault.

* The caller broke the log's contract (offsets out of order or range, a cut in the middle of a
  batch): `OffsetOutOfOrderError`, `OffsetOutOfRangeError`, `NotOnBatchBoundaryError`,
  `TermOutOfOrderError`, `LogClosedError`.
* The log was written by an older batch format (`LogFormatError`): not damage; the log is
  refused whole until `tidelog storage migrate` converts it.
* The disk failed us: `DiskFullError` (ENOSPC; the partial write was cut back), `CorruptLogError`
  (damaged bytes found in data that should be intact: reported, never served),
  `CorruptFileError` (a checksummed metadata file does not match its checksum).
* Encryption at rest (encryption.py): `BatchAuthenticationError` (a stored batch fails AES-GCM
  authentication: damage or tampering, handled like any CorruptBatchError) and
  `EncryptionKeyError` (the keyring lacks the batch's key id: the operator's to fix, never
  taken for damage).
* A sender's batch is bad: the codec errors from `tidelog.proto.batch`, re-exported here.

Every error carries the facts a person needs to act on it (segment, position, offsets).
"""

from __future__ import annotations

from pathlib import Path

from tidelog.proto.batch import (
    MAGIC,
    BatchError,
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
)

__all__ = [
    "BatchAuthenticationError",
    "BatchError",
    "BatchTooLargeError",
    "CorruptBatchError",
    "CorruptFileError",
    "CorruptLogError",
    "DiskFullError",
    "EncryptionKeyError",
    "InvalidBatchError",
    "LogClosedError",
    "LogFormatError",
    "NotOnBatchBoundaryError",
    "OffsetOutOfOrderError",
    "OffsetOutOfRangeError",
    "StorageError",
    "StorageIOError",
    "TermOutOfOrderError",
]


class StorageError(Exception):
    """Base of the storage engine's own errors."""


class CorruptLogError(StorageError, CorruptBatchError):
    """Damaged data found where the log must be intact (before the recoverable tail, or on read).

    It is also a `CorruptBatchError`, so code that handles the codec's error handles this one.
    """

    def __init__(self, message: str, *, segment: Path | None = None,
                 position: int | None = None) -> None:
        where = ""
        if segment is not None:
            where = f" [{segment.name}" + (f" at position {position}]" if position is not None
                                           else "]")
        super().__init__(message + where)
        self.segment = segment
        self.position = position


class LogFormatError(StorageError):
    """A segment holds batches of an older format version (v1 left the Raft term outside its
    checksum). Never treated as damage or a torn tail, never served: open() refuses the log and
    changes nothing, and the message says how to convert it."""

    def __init__(self, *, segment: Path, format_version: int) -> None:
        super().__init__(
            f"{segment}: written by batch format v{format_version}; this version reads only "
            f"v{MAGIC} and refuses to open the log. Stop the node and run "
            f"`tidelog storage migrate {segment.parent}` (or on the whole data directory)")
        self.segment = segment
        self.format_version = format_version


class CorruptFileError(StorageError):
    """A checksummed metadata file failed its checksum or is malformed."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class OffsetOutOfRangeError(StorageError):
    """The offset is below the log start or beyond the log end."""

    def __init__(self, offset: int, *, log_start_offset: int, log_end_offset: int) -> None:
        super().__init__(
            f"offset {offset} is outside the log [{log_start_offset}, {log_end_offset})"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class OffsetOutOfOrderError(StorageError):
    """An append's base offset is not the log end offset (offsets must be contiguous)."""

    def __init__(self, base_offset: int, *, log_end_offset: int) -> None:
        super().__init__(
            f"batch base offset {base_offset} does not continue the log, whose end is "
            f"{log_end_offset}"
        )
        self.base_offset = base_offset
        self.log_end_offset = log_end_offset


class TermOutOfOrderError(StorageError):
    """An append's term is lower than the last batch's term (Raft terms never go backwards)."""

    def __init__(self, term: int, *, last_term: int) -> None:
        super().__init__(f"batch term {term} is below the log's last term {last_term}")
        self.term = term
        self.last_term = last_term


class NotOnBatchBoundaryError(StorageError):
    """truncate_after(offset) where offset is not the last offset of a batch."""

    def __init__(self, offset: int, *, batch_base_offset: int, batch_last_offset: int) -> None:
        super().__init__(
            f"cannot truncate after offset {offset}: it is inside the batch "
            f"[{batch_base_offset}, {batch_last_offset}]"
        )
        self.offset = offset


class DiskFullError(StorageError):
    """ENOSPC while writing; the partial write was cut back, so the log is unchanged."""


class StorageIOError(StorageError):
    """Any other OSError while writing; the partial write was cut back when possible."""


class LogClosedError(StorageError):
    """The log was closed (or failed and fenced itself off) and accepts no more calls."""


class BatchAuthenticationError(CorruptBatchError):
    """A stored encrypted batch fails AES-GCM authentication although its xxh3 checksums hold:
    its bytes were altered by someone who recomputed them, or the keyring holds a different key
    under the batch's key id. Damage like any other: never served."""


class EncryptionKeyError(StorageError):
    """A stored batch is encrypted under a key id that the node's keyring does not hold (or the
    node has no keyring). Not damage: recovery never cuts such a batch, and reads refuse it;
    the fix is to give the node that key again (`tidelog keyring list` shows the ids held)."""

    def __init__(self, key_id: int, *, base_offset: int | None = None,
                 reason: str = "which the keyring does not hold") -> None:
        subject = f"batch at offset {base_offset}: encrypted at rest with key id {key_id}, " \
            if base_offset is not None else f"at-rest key id {key_id}: "
        super().__init__(subject + reason + "; it is not served (give the node that key: "
                         "`tidelog keyring list FILE` shows the key ids a keyring holds)")
        self.key_id = key_id
        self.base_offset = base_offset
