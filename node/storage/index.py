"""A segment's sparse offset index and time index.

Offset index: every `index_interval_bytes` of batches, one entry (base offset of a batch, its
byte position). To find the batch holding offset X, take the last entry <= X and walk batch
headers from there: at most about one interval of bytes.

Time index: entries (T, O) meaning "every batch that starts before offset O has
max_timestamp <= T", with T strictly increasing. To find the first batch whose max_timestamp >= ts,
take the last entry with T < ts and walk from O. Entries are added next to offset-index entries,
so O always has an exact offset-index entry.

In memory both are `array('q')` pairs (16 bytes an entry, bisect works on them). On disk, written
when a segment is sealed (the active segment's index lives only in memory and is rebuilt by the
recovery scan), as checksummed files (see metafile.py):

    <base>.index      summary (base_offset, end_offset, size_bytes, max_timestamp_ms,
                      last_term, entry count: 6 x int64), then entries of
                      (uint32 offset - base, uint32 position)
    <base>.timeindex  entries of (int64 T, uint32 O - base)

Positions are uint32, which is why segments stay below 2 GiB. Missing, corrupt or inconsistent
files are rebuilt by scanning the segment.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

__all__ = ["SegmentIndex", "SegmentSummary", "decode_index_files", "encode_index_files"]

_SUMMARY = struct.Struct(">qqqqqq")
_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")
NO_TIMESTAMP = -(2**63)


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentSummary:
    """What a sealed segment holds, stored with its index so reopening needs no scan."""

    base_offset: int
    end_offset: int  # next offset after the segment's last batch
    size_bytes: int
    max_timestamp_ms: int
    last_term: int


@dataclass(slots=True, kw_only=True)
class SegmentIndex:
    base_offset: int
    interval_bytes: int
    # Invariant: offsets and positions strictly increase together; len(offsets) == len(positions)
    offsets: array = field(default_factory=lambda: array("q"))
    positions: array = field(default_factory=lambda: array("q"))
    # Invariant: times strictly increase; each time_offsets value is also in offsets.
    times: array = field(default_factory=lambda: array("q"))
    time_offsets: array = field(default_factory=lambda: array("q"))
    bytes_since_entry: int = 0
    running_max_timestamp_ms: int = NO_TIMESTAMP

    def on_batch(self, *, base_offset: int, position: int, size_bytes: int,
                 max_timestamp_ms: int) -> None:
        """Account for a batch appended (or scanned) at `position`."""
        if self.bytes_since_entry >= self.interval_bytes:
            self.offsets.append(base_offset)
            self.positions.append(position)
            if self.running_max_timestamp_ms > (self.times[-1] if self.times else NO_TIMESTAMP):
                self.times.append(self.running_max_timestamp_ms)
                self.time_offsets.append(base_offset)
            self.bytes_since_entry = 0
        self.bytes_since_entry += size_bytes
        if max_timestamp_ms > self.running_max_timestamp_ms:
            self.running_max_timestamp_ms = max_timestamp_ms

    def floor(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last entry at or below `offset`; the segment start if none."""
        i = bisect_right(self.offsets, offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.offsets[i], self.positions[i]

    def floor_time(self, timestamp_ms: int) -> tuple[int, int]:
        """Where to start walking for the first batch with max_timestamp >= timestamp_ms."""
        i = bisect_left(self.times, timestamp_ms) - 1
        if i < 0:
            return self.base_offset, 0
        return self.floor(self.time_offsets[i])


def encode_index_files(index: SegmentIndex, summary: SegmentSummary) -> tuple[bytes, bytes]:
    base = index.base_offset
    offset_part = b"".join(
        _OFFSET_ENTRY.pack(o - base, p) for o, p in zip(index.offsets, index.positions,
                                                          strict=True)
    )
    time_part = b"".join(
        _TIME_ENTRY.pack(t, o - base) for t, o in zip(index.times, index.time_offsets,
                                                        strict=True)
    )
    head = _SUMMARY.pack(summary.base_offset, summary.end_offset, summary.size_bytes,
                         summary.max_timestamp_ms, summary.last_term, len(index.offsets))
    return head + offset_part, time_part


def decode_index_files(offset_payload: bytes, time_payload: bytes, *, base_offset: int,
                       interval_bytes: int) -> tuple[SegmentIndex, SegmentSummary]:
    """Parse and sanity-check; ValueError describes the first inconsistency found."""
    if len(offset_payload) < _SUMMARY.size:
        raise ValueError("offset index shorter than its summary")
    (summary_base, end_offset, size_bytes, max_ts, last_term,
     count) = _SUMMARY.unpack_from(offset_payload)
    summary = SegmentSummary(base_offset=summary_base, end_offset=end_offset,
                             size_bytes=size_bytes, max_timestamp_ms=max_ts, last_term=last_term)
    if summary_base != base_offset:
        raise ValueError(f"summary base offset {summary_base} != file name's {base_offset}")
    entries = offset_payload[_SUMMARY.size:]
    if len(entries) != count * _OFFSET_ENTRY.size or len(time_payload) % _TIME_ENTRY.size:
        raise ValueError("index entry area has the wrong length")
    index = SegmentIndex(base_offset=base_offset, interval_bytes=interval_bytes,
                         running_max_timestamp_ms=max_ts)
    for rel, pos in _OFFSET_ENTRY.iter_unpack(entries):
        if index.offsets and (base_offset + rel <= index.offsets[-1]
                              or pos <= index.positions[-1]):
            raise ValueError("offset index entries do not increase")
        if not (0 < pos < size_bytes and base_offset + rel < end_offset):
            raise ValueError(f"offset index entry ({rel}, {pos}) outside the segment")
        index.offsets.append(base_offset + rel)
        index.positions.append(pos)
    known = set(index.offsets)
    for t, rel in _TIME_ENTRY.iter_unpack(time_payload):
        if (index.times and t <= index.times[-1]) or base_offset + rel not in known:
            raise ValueError("time index entries do not increase or point between entries")
        index.times.append(t)
        index.time_offsets.append(base_offset + rel)
    return index, summary
