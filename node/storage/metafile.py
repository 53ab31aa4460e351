"""Small metadata files written atomically, optionally with a checksum.

`write_atomic` makes the new content durable or leaves the old one: write a temp file in the same
directory, fsync it, rename it over the target (atomic on POSIX), fsync the directory so the rename
itself survives a crash. `write_checksummed` adds a header so that a flipped bit or a torn file is
detected on read (`CorruptFileError`) instead of being trusted. The Raft runtime keeps term/vote
here; the log keeps its start offset and recovery point, and closed segments' indexes.

Checksummed layout: magic b"TLMF" | uint32 payload length | uint64 xxh3_64(payload) | payload.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import xxhash
from tidelog.node.storage.errors import CorruptFileError
from tidelog.node.storage.fs import OS_FS, FileSystem, pwrite_all, read_file, unlink_quietly

__all__ = ["fsync_directory", "read_checksummed", "write_atomic", "write_checksummed"]

_MAGIC = b"TLMF"
_HEADER = struct.Struct(">4sIQ")
PAYLOAD_BYTES_MAX = 64 * 1024 * 1024  # metadata, not data: refuse anything bigger


def write_atomic(path: Path, data: bytes, *, durable: bool = True, fs: FileSystem = OS_FS) -> None:
    """Replace `path` with `data`, durably: temp file, fsync, rename, fsync of the directory.

    `durable=False` skips both fsyncs: a process crash still leaves the old or the new file
    whole, but a power loss may leave the old one, none, or a garbled one (the rename can reach
    the disk before the data). Only for checksummed files that are rebuilt when lost (indexes).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pwrite_all(fs, fd, data, 0)
        if durable:
            fs.fsync(fd)
    except BaseException:
        fs.close(fd)
        unlink_quietly(fs, tmp)
        raise
    fs.close(fd)
    fs.replace(tmp, path)
    if durable:
        fs.fsync_directory(path.parent)


def write_checksummed(path: Path, payload: bytes, *, durable: bool = True,
                      fs: FileSystem = OS_FS) -> None:
    if len(payload) > PAYLOAD_BYTES_MAX:
        raise ValueError(f"metadata payload of {len(payload)} bytes exceeds {PAYLOAD_BYTES_MAX}")
    header = _HEADER.pack(_MAGIC, len(payload), xxhash.xxh3_64_intdigest(payload))
    write_atomic(path, header + payload, durable=durable, fs=fs)


def read_checksummed(path: Path, *, fs: FileSystem = OS_FS) -> bytes | None:
    """The payload, or None if the file does not exist. CorruptFileError if it does not check."""
    path = Path(path)
    try:
        data = read_file(fs, path)
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        raise CorruptFileError(path, f"{len(data)} bytes, shorter than the {_HEADER.size}-byte "
                                     "header")
    magic, length, checksum = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptFileError(path, f"bad magic {magic!r}")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise CorruptFileError(path, f"payload is {len(payload)} bytes, header says {length}")
    actual = xxhash.xxh3_64_intdigest(payload)
    if actual != checksum:
        raise CorruptFileError(path, f"checksum mismatch: stored {checksum:#x}, computed "
                                     f"{actual:#x}")
    return payload


def fsync_directory(directory: Path, *, fs: FileSystem = OS_FS) -> None:
    """Make creations, renames and deletions of the directory's entries durable."""
    fs.fsync_directory(Path(directory))
