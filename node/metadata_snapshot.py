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
import functools
import json
import logging
import struct
import types
import typing
from collections.abc import Callable
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
    return _field_types(MetadataState)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """A dataclass's fields and their resolved types (resolving is slow: once per class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def encode_state(state: MetadataState) -> dict[str, Any]:
    return {name: _encoder(hint)(getattr(state, name))
            for name, hint in state_fields().items()}


def decode_state(value: Any, version: int = SNAPSHOT_VERSION) -> MetadataState:
    """Built aside: the caller gets a whole state or a SnapshotError, never part of one."""
    expected = {name: hint for name, hint in state_fields().items()
                if FIELD_SINCE.get(name, 1) <= version}
    doc = _obj(value, set(expected))
    state = MetadataState()  # fields added after `version` keep their defaults
    for name, hint in expected.items():
        try:
            setattr(state, name, _decoder(hint)(doc[name]))
        except SnapshotError as exc:
            raise SnapshotError(f"field {name!r}: {exc}") from None
    return state


# Each type's encoder and decoder is built once from its annotation (interpreting the type for
# every value made a 10,000-quota state take seconds) and cached.

Codec = Callable[[Any], Any]


@functools.cache
def _encoder(hint: Any) -> Codec:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        key, val = _encoder(args[0]), _encoder(args[1])
        return lambda v: _sorted([[key(k), val(x)] for k, x in v.items()])
    if origin in (set, frozenset):
        item = _encoder(args[0])
        return lambda v: _sorted([item(x) for x in v])
    if origin in (typing.Union, types.UnionType):
        inner = _encoder(_optional(hint))
        return lambda v: None if v is None else inner(v)
    if origin in (list, tuple):
        if _homogeneous(hint):
            item = _encoder(args[0])
            return lambda v: [item(x) for x in v]
        items = [_encoder(a) for a in args]
        return lambda v: [f(x) for f, x in zip(items, v, strict=True)]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return lambda v: v.value
    if hint is bytes:
        return lambda v: v.hex()
    if hint in (int, str, bool):
        return lambda v: v
    if dataclasses.is_dataclass(hint):
        parts = [(name, _encoder(t)) for name, t in _field_types(hint).items()]
        return lambda v: {name: f(getattr(v, name)) for name, f in parts}
    raise AssertionError(f"no snapshot codec for type {hint!r}: add it to _encoder/_decoder in "
                         "node/metadata_snapshot.py")


@functools.cache
def _decoder(hint: Any) -> Codec:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        return _dict_decoder(_decoder(args[0]), _decoder(args[1]))
    if origin in (set, frozenset):
        return _set_decoder(_decoder(args[0]), origin)
    if origin in (typing.Union, types.UnionType):
        inner = _decoder(_optional(hint))
        return lambda v: None if v is None else inner(v)
    if origin in (list, tuple):
        return _sequence_decoder(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_decoder(hint)
    if hint is bytes:
        return _hex
    if hint in (int, str, bool):
        return functools.partial(_typed, kind=hint)
    if dataclasses.is_dataclass(hint):
        return _dataclass_decoder(hint)
    raise AssertionError(f"no snapshot codec for type {hint!r}")


def _dict_decoder(key: Codec, val: Codec) -> Codec:
    def decode(value: Any) -> dict[Any, Any]:
        pairs = [(key(k), val(v)) for k, v in _pairs(value)]
        result = dict(pairs)
        if len(result) != len(pairs):
            raise SnapshotError("a map holds a key twice")
        return result
    return decode


def _set_decoder(item: Codec, kind: type) -> Codec:
    def decode(value: Any) -> Any:
        items = [item(v) for v in _list(value)]
        if len(set(items)) != len(items):
            raise SnapshotError("a set holds an item twice")
        return kind(items)
    return decode


def _sequence_decoder(hint: Any) -> Codec:
    args, is_list = typing.get_args(hint), typing.get_origin(hint) is list
    if _homogeneous(hint):
        item = _decoder(args[0])

        def decode(value: Any) -> Any:
            items = [item(v) for v in _list(value)]
            return items if is_list else tuple(items)
        return decode
    items = [_decoder(a) for a in args]

    def decode_fixed(value: Any) -> Any:
        raw = _list(value)
        if len(raw) != len(items):
            raise SnapshotError(f"expected {len(items)} items, got {len(raw)}")
        return tuple(f(v) for f, v in zip(items, raw, strict=True))
    return decode_fixed


def _enum_decoder(kind: type[enum.Enum]) -> Codec:
    def decode(value: Any) -> enum.Enum:
        try:
            return kind(value)
        except ValueError:
            raise SnapshotError(f"unknown {kind.__name__} {value!r}") from None
    return decode


def _hex(value: Any) -> bytes:
    try:
        return bytes.fromhex(_typed(value, str))
    except ValueError:
        raise SnapshotError(f"expected hex bytes, got {str(value)[:40]!r}") from None


def _dataclass_decoder(kind: type) -> Codec:
    parts = [(name, _decoder(t)) for name, t in _field_types(kind).items()]
    names = {name for name, _ in parts}

    def decode(value: Any) -> Any:
        doc = _obj(value, names)
        try:  # the dataclass's own checks (__post_init__) run too
            return kind(**{name: f(doc[name]) for name, f in parts})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"{kind.__name__}: {exc}") from None
    return decode


def _homogeneous(hint: Any) -> bool:
    """list[X] and tuple[X, ...] (vs tuple[X, Y]: one type per position)."""
    args = typing.get_args(hint)
    return typing.get_origin(hint) is list or (len(args) == 2 and args[1] is Ellipsis)


def _optional(hint: Any) -> Any:
    """X of `X | None`; other unions are not supported (say which member a value is)."""
    rest = [a for a in typing.get_args(hint) if a is not type(None)]
    assert len(rest) == 1, f"no snapshot codec for the union {hint!r}"
    return rest[0]


def _sorted(items: list[Any]) -> list[Any]:
    """Sorted so that equal states encode to equal bytes: plain keys directly, others by their
    JSON text."""
    try:
        return sorted(items)
    except TypeError:  # dicts, or mixed types
        return sorted(items, key=_sort_key)


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
