"""Batch format v1 bytes, written from its documented layout (docs/batch-format.md, "Format v1")
without the codec, so tests of v1 refusal and migration do not trust the code they test.

v1 header, 69 bytes: base_offset q | batch_length i | term q | magic b = 1 |
checksum Q = xxh3_64 of bytes [29, end) | attributes h | last_offset_delta i | record_count i |
first_timestamp q | max_timestamp q | producer_id q | producer_epoch h | base_sequence i;
then the records, uncompressed here (codec 0)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import xxhash

V1Record = tuple[bytes | None, bytes | None, int]  # key, value, timestamp_ms


def encode_v1(records: Sequence[V1Record], *, base_offset: int, term: int,
              control_type: int = 0) -> bytes:
    parts = []
    for delta, (key, value, ts) in enumerate(records):
        key_length = -1 if key is None else len(key)
        body = (b"\xff\xff\xff\xff" if value is None else struct.pack(">i", len(value)) + value) \
            + b"\x00\x00"
        length = 1 + 4 + 4 + 4 + max(key_length, 0) + len(body)
        parts.append(struct.pack(">ibiii", length, 0, delta, ts - records[0][2], key_length)
                     + (key or b"") + body)
    raw = b"".join(parts)
    attributes = 0 if not control_type else 0x10 | (control_type << 8)
    tail = struct.pack(">hiiqqqhi", attributes, len(records) - 1, len(records), records[0][2],
                       max(r[2] for r in records), -1, -1, -1) + raw
    return struct.pack(">qiqbQ", base_offset, 69 - 12 + len(raw), term, 1,
                       xxhash.xxh3_64_intdigest(tail)) + tail


def write_v1_log(directory: Path, segments: Sequence[Sequence[tuple[int, int]]]) -> list[
        tuple[int, int, list[V1Record]]]:
    """A v1 log as a v1 node left it: segment files of v1 batches, no index files (they are
    rebuilt), no log.meta (open then takes the first segment as the log start). `segments`
    lists, per segment, (record count, term) of each batch. Returns (base, term, records) per
    batch, in offset order."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    offset = 0
    for batches in segments:
        base = offset
        data = []
        for count, term in batches:
            records = [(b"k%d" % (offset + i), b"v1-value-%d" % (offset + i), 1_000 + offset + i)
                       for i in range(count)]
            data.append(encode_v1(records, base_offset=offset, term=term))
            written.append((offset, term, records))
            offset += count
        (directory / f"{base:020d}.log").write_bytes(b"".join(data))
    return written
