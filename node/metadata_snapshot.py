"""Snapshots of the metadata state machine: the codec and the files.

Why: without them every node replays the whole metadata log at every start, and the log can never
be truncated, so start time and disk grow with the cluster's history (issue 17). A snapshot is
the APPLIED `MetadataState` at a Raft position (`index`, the last entry it reflects, and `term`,
that entry's term); a node loads the newest usable one and replays only the log after it
(docs/raft.md "Metadata snapshots").

Byte layout of an encoded snapshot (the same bytes on disk, inside a metafile, and on the wire,
so a transferred snapshot is checked exactly as a loaded one):

    offset  size  field
    0       4     magic b"TLMS"
    4       2     version (uint16, big-endian; SNAPSHOT_VERSION)
    6       8     xxh3_64 of the body
    14      4     body length in bytes (uint32)
    18      n     body: JSON {"index": int, "term": int, "state": {field: value}}

Decoding is strict: a wrong magic, an unknown version, a checksum or length mismatch, a missing
or unknown field, or a value of the wrong JSON type raises `SnapshotError`; nothing is ever
half-loaded (the state is built aside and only returned whole).

The state is encoded by its type annotations (see "the state, by its type hints" below): a field
added to `MetadataState` is snapshotted with no change here when its type is made of the usual
parts; otherwise the round-trip test fails and names the one place to extend.

Files: `metadata-<index, 20 digits>.snapshot` in the metadata replica's directory, each written
atomically and durably (node/storage/metafile.py); the newest `SNAPSHOTS_KEPT` are kept so that a
damaged newest one falls back to the previous one plus the log after it (the log is truncated
only below the OLDEST kept snapshot).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import struct
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import xxhash
from tidelog.node.metadata import MetadataState
from tidelog.node.storage import CorruptFileError
from tidelog.node.storage.fs import OS_FS, FileSystem, unlink_quietly
from tidelog.node.storage.metafile import PAYLOAD_BYTES_MAX, read_checksummed, write_checksummed

__all__ = [
    "FIELD_SINCE", "SNAPSHOTS_KEPT", "SNAPSHOT_VERSION", "MetadataSnapshot", "SnapshotError",
    "decode_snapshot", "encode_snapshot", "list_snapshots", "load_newest", "prune_snapshots",
    "snapshot_path", "write_snapshot_file",
]

log = logging.getLogger(__name__)

MAGIC = b"TLMS"
SNAPSHOT_VERSION = 1
_HEADER = struct.Struct(">4sHQI")
SNAPSHOT_BYTES_MAX = PAYLOAD_BYTES_MAX  # what a metafile may hold; a transfer is refused above
SNAPSHOTS_KEPT = 2
_PREFIX, _SUFFIX = "metadata-", ".snapshot"


class SnapshotError(ValueError):
    """A snapshot that cannot be loaded: damaged, of an unknown version, or malformed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataSnapshot:
    index: int
    """The Raft position (an entry's last offset) of the last entry the state reflects."""
    term: int
    """The term of the entry at `index`."""
    state: MetadataState


def encode_snapshot(snapshot: MetadataSnapshot) -> bytes:
    body = json.dumps({"index": snapshot.index, "term": snapshot.term,
                       "state": encode_state(snapshot.state)},
                      separators=(",", ":"), sort_keys=True).encode()
    data = _HEADER.pack(MAGIC, SNAPSHOT_VERSION, xxhash.xxh3_64_intdigest(body), len(body)) + body
    if len(data) > SNAPSHOT_BYTES_MAX:
        raise SnapshotError(f"metadata snapshot of {len(data)} bytes exceeds "
                            f"{SNAPSHOT_BYTES_MAX}")
    return data


def decode_snapshot(data: bytes) -> MetadataSnapshot:
    """Strict: raises SnapshotError (saying what is wrong) for anything encode would not write."""
    if len(data) < _HEADER.size:
        raise SnapshotError(f"{len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, checksum, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if not 1 <= version <= SNAPSHOT_VERSION:
        raise SnapshotError(f"unknown snapshot version {version} (this node reads 1 to "
                            f"{SNAPSHOT_VERSION}): written by a newer release?")
    body = data[_HEADER.size:]
    if len(body) != length:
        raise SnapshotError(f"body is {len(body)} bytes, the header says {length}")
    actual = xxhash.xxh3_64_intdigest(body)
    if actual != checksum:
        raise SnapshotError(f"checksum mismatch: stored {checksum:#x}, computed {actual:#x}")
    try:
        doc = json.loads(body)
        top = _obj(doc, {"index", "term", "state"})
        index, term = _typed(top["index"], int), _typed(top["term"], int)
        state = decode_state(top["state"], version)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"malformed snapshot body: {exc}") from None
    if state.applied_index > index:
        raise SnapshotError(f"state applied up to {state.applied_index}, beyond the snapshot "
                            f"index {index}")
    return MetadataSnapshot(index=index, term=term, state=state)


# -- the state, by its type hints --------------------------------------------------------------
#
# The codec is derived from MetadataState's type annotations, so a field added to the state (or to
# a dataclass inside it) is snapshotted without touching this module as long as its type is built
# from: int, str, bool, bytes (hex), Enum (its value), dataclasses of those (an object with
# exactly its fields), and list / tuple / set / frozenset / dict of those (dicts as [key, value]
# pairs, sets as lists; both sorted, so equal states encode to equal bytes). A type outside that
# set fails the round-trip test (tests/node/test_metadata_snapshot.py) until it is added to
# `_encode` and `_decode` below: that is THE place to extend. A field added after a snapshot
# version was released goes into FIELD_SINCE with the new SNAPSHOT_VERSION, so older snapshots
# load it with its default.

#: field name -> the first snapshot version that holds it (absent: 1).
FIELD_SINCE: dict[str, int] = {}


def state_fields() -> dict[str, Any]:
    """MetadataState's fields and their resolved types, in declaration order."""
    hints = typing.get_type_hints(MetadataState)
    return {f.name: hints[f.name] for f in fields(MetadataState)}


def encode_state(state: MetadataState) -> dict[str, Any]:
    return {name: _encode(getattr(state, name), hint) for name, hint in state_fields().items()}


def decode_state(value: Any, version: int = SNAPSHOT_VERSION) -> MetadataState:
    """Built aside: the caller gets a whole state or a SnapshotError, never part of one."""
    expected = {name: hint for name, hint in state_fields().items()
                if FIELD_SINCE.get(name, 1) <= version}
    doc = _obj(value, set(expected))
    state = MetadataState()  # fields added after `version` keep their defaults
    for name, hint in expected.items():
        try:
            setattr(state, name, _decode(doc[name], hint))
        except SnapshotError as exc:
            raise SnapshotError(f"field {name!r}: {exc}") from None
    return state


def _encode(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        pairs = [[_encode(k, args[0]), _encode(v, args[1])] for k, v in value.items()]
        return sorted(pairs, key=_sort_key)
    if origin in (set, frozenset):
        return sorted((_encode(v, args[0]) for v in value), key=_sort_key)
    if origin in (typing.Union, types.UnionType):
        return None if value is None else _encode(value, _optional(hint))
    if origin in (list, tuple):
        return [_encode(v, t) for v, t in zip(value, _item_types(hint, len(value)), strict=True)]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value.value
    if hint is bytes:
        return value.hex()
    if hint in (int, str, bool):
        assert type(value) is hint, (value, hint)
        return value
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return {f.name: _encode(getattr(value, f.name), hints[f.name])
                for f in fields(hint)}
    raise AssertionError(f"no snapshot codec for type {hint!r}: add it to _encode/_decode in "
                         "node/metadata_snapshot.py")


def _decode(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        pairs = [(_decode(k, args[0]), _decode(v, args[1])) for k, v in _pairs(value)]
        result = dict(pairs)
        if len(result) != len(pairs):
            raise SnapshotError("a map holds a key twice")
        return result
    if origin in (set, frozenset):
        items = [_decode(v, args[0]) for v in _list(value)]
        if len(set(items)) != len(items):
            raise SnapshotError("a set holds an item twice")
        return origin(items)
    if origin in (typing.Union, types.UnionType):
        return None if value is None else _decode(value, _optional(hint))
    if origin in (list, tuple):
        raw = _list(value)
        try:
            items = [_decode(v, t) for v, t in zip(raw, _item_types(hint, len(raw)), strict=True)]
        except ValueError as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"a tuple of the wrong length: {exc}") from None
        return items if origin is list else tuple(items)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise SnapshotError(f"unknown {hint.__name__} {value!r}") from None
    if hint is bytes:
        try:
            return bytes.fromhex(_typed(value, str))
        except ValueError:
            raise SnapshotError(f"expected hex bytes, got {str(value)[:40]!r}") from None
    if hint in (int, str, bool):
        return _typed(value, hint)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        names = [f.name for f in fields(hint)]
        doc = _obj(value, set(names))
        try:  # the dataclass's own checks (__post_init__) run too
            return hint(**{n: _decode(doc[n], hints[n]) for n in names})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"{hint.__name__}: {exc}") from None
    raise AssertionError(f"no snapshot codec for type {hint!r}")


def _optional(hint: Any) -> Any:
    """X of `X | None`; other unions are not supported (say which member a value is)."""
    rest = [a for a in typing.get_args(hint) if a is not type(None)]
    assert len(rest) == 1, f"no snapshot codec for the union {hint!r}"
    return rest[0]


def _item_types(hint: Any, count: int) -> list[Any]:
    """list[X] and tuple[X, ...]: X for every item; tuple[X, Y]: one type per position."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list or (len(args) == 2 and args[1] is Ellipsis):
        return [args[0]] * count
    return list(args)


def _sort_key(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def _typed(value: Any, kind: type) -> Any:
    if type(value) is not kind:  # exact: a bool is not an int
        raise SnapshotError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _pairs(value: Any) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2
                                              for p in value):
        raise SnapshotError(f"expected a list of [key, value] pairs, got {str(value)[:40]}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise SnapshotError(f"expected a list, got {type(value).__name__}")
    return value


def _obj(value: Any, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise SnapshotError(f"expected an object with exactly {sorted(keys)}, got {got}")
    return value


# -- files ------------------------------------------------------------------------------------


def snapshot_path(directory: Path, index: int) -> Path:
    return directory / f"{_PREFIX}{index:020d}{_SUFFIX}"


def list_snapshots(directory: Path, fs: FileSystem = OS_FS) -> list[int]:
    """The indexes of the snapshot files in `directory`, newest first."""
    indexes = []
    for name in fs.listdir(directory):
        stem = name[len(_PREFIX):-len(_SUFFIX)]
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX) and stem.isdigit() \
                and len(stem) == 20:
            indexes.append(int(stem))
    return sorted(indexes, reverse=True)


def write_snapshot_file(directory: Path, data: bytes, index: int,
                        fs: FileSystem = OS_FS) -> None:
    """Atomic and durable (blocking: run it off the event loop). `data` is encode_snapshot's."""
    write_checksummed(snapshot_path(directory, index), data, fs=fs)


def read_snapshot_file(directory: Path, index: int, fs: FileSystem = OS_FS) -> MetadataSnapshot:
    """Raises SnapshotError (damaged, unknown version, missing) naming the file."""
    path = snapshot_path(directory, index)
    try:
        data = read_checksummed(path, fs=fs)
    except CorruptFileError as exc:
        raise SnapshotError(f"{path}: {exc}") from None
    if data is None:
        raise SnapshotError(f"{path}: missing")
    try:
        snapshot = decode_snapshot(data)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from None
    if snapshot.index != index:
        raise SnapshotError(f"{path}: holds index {snapshot.index}, its name says {index}")
    return snapshot


def load_newest(directory: Path, *, covers: int,
                fs: FileSystem = OS_FS) -> MetadataSnapshot | None:
    """The newest snapshot that loads and reaches at least `covers` (the log start - 1: the log
    holds everything after it); None when there is none. Each refused file is logged with why."""
    for index in list_snapshots(directory, fs):
        if index < covers:
            log.warning("%s: metadata snapshot at %d is below the log start %d: not usable",
                        directory, index, covers + 1)
            continue
        try:
            return read_snapshot_file(directory, index, fs)
        except SnapshotError as exc:
            log.error("refusing metadata snapshot %s; trying an older one, then the log or a "
                      "peer", exc)
    return None


def prune_snapshots(directory: Path, *, keep: int = SNAPSHOTS_KEPT, below: int | None = None,
                    fs: FileSystem = OS_FS) -> list[int]:
    """Delete all but the newest `keep` snapshot files (and any with an index below `below`);
    returns the indexes kept, newest first."""
    indexes = list_snapshots(directory, fs)
    kept = [i for i in indexes[:keep] if below is None or i >= below]
    for index in indexes:
        if index not in kept:
            unlink_quietly(fs, snapshot_path(directory, index))
    return kept
