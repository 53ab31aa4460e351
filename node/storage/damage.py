"""What open() does with damage below the recovery point, and the quarantine that keeps it.

Damage below the recovery point is data that was fsynced and verified once (and may have been
acknowledged) and now fails its checks: a checksum mismatch (bit rot), a batch out of order, or
bytes missing. It is never a torn write, so it is never cut silently:

* `DamagePolicy.REFUSE` (the default): damage in the active segment makes open() raise
  CorruptLogError and change nothing; damage found in a sealed segment is reported
  (`RecoveryReport.corrupt`) and reads of it raise. An operator decides.
* `DamagePolicy.QUARANTINE`: for a replica that can refill from its peers (issue 11, defect 5).
  The log is cut just before the first damaged batch (everything from it on leaves the log),
  the damaged segment file is first copied, whole, to `<log>/quarantine/<name>.<n>` (kept for
  inspection, never read by the log again), and the cut is made durable before open() returns.
  The report says `cut_from_offset` (the first offset the log no longer has) and `quarantined`.

Crash-safety of the cut: (1) the copy is written and fsynced, and its name made durable, before
anything in the log changes; (2) the recovery point is lowered to the cut, durably, so that if
the process dies during the cut the next open sees what is left of the damage as an unsynced
tail and cuts it (without a second copy); (3) later segments are deleted and the directory
fsynced; (4) the damaged segment is truncated and fdatasynced.
"""

from __future__ import annotations

import enum
from pathlib import Path

from tidelog.node.storage.dirs import ensure_directory
from tidelog.node.storage.fs import FileSystem, SequentialReader, SequentialWriter

__all__ = ["QUARANTINE_DIR", "QUARANTINE_FILES_MAX", "DamagePolicy", "quarantine_copy"]

QUARANTINE_DIR = "quarantine"
QUARANTINE_FILES_MAX = 16  # per log; beyond it damaged files are cut without a copy (logged)
_COPY_BUFFER_BYTES = 1 << 20


class DamagePolicy(enum.Enum):
    """See the module doc."""

    REFUSE = "refuse"
    QUARANTINE = "quarantine"


def quarantine_copy(fs: FileSystem, segment_path: Path) -> Path | None:
    """Copy `segment_path` to `<its directory>/quarantine/<name>.<n>` (n: the first unused,
    from 1), durably: the copy fdatasynced, its name fsynced. None when the quarantine already
    holds QUARANTINE_FILES_MAX files (bounded disk use; the caller logs it)."""
    directory = segment_path.parent / QUARANTINE_DIR
    ensure_directory(directory, fs=fs)
    existing = set(fs.listdir(directory))
    if len(existing) >= QUARANTINE_FILES_MAX:
        return None
    n = 1
    while f"{segment_path.name}.{n}" in existing:
        n += 1
    target = directory / f"{segment_path.name}.{n}"
    size = fs.stat_size(segment_path)
    with SequentialReader(fs, segment_path, buffer_bytes=_COPY_BUFFER_BYTES) as src, \
            SequentialWriter(fs, target, buffer_bytes=_COPY_BUFFER_BYTES) as dst:
        copied = 0
        while copied < size:
            chunk = src.read(min(_COPY_BUFFER_BYTES, size - copied))
            if not chunk:
                break
            dst.write(chunk)
            copied += len(chunk)
        dst.sync()
    fs.fsync_directory(directory)
    return target
