"""Raft reads terms from stored headers (term_at: log matching, conflict search) without
reading records. With format v2 those header reads are verified by the header checksum, so a
flipped term bit in a sealed segment (which open() does not rescan) is reported as damage
instead of being believed (issue 11, defect 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
from storage_helpers import Clock, make_batch, small_config
from tidelog.node.storage import CorruptLogError, PartitionLog
from tidelog.node.storage import segment as segment_module
from tidelog.proto.batch import decode_header

CONFIG = small_config(segment_bytes_max=1024, batch_bytes_max=1024, index_interval_bytes=128)


def _log_with_a_flipped_term(directory: Path) -> tuple[int, int]:
    """A cleanly closed log of several sealed segments; one term bit flipped in the third batch
    of the first segment. Returns (that batch's last offset, its true term)."""
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    for i in range(30):
        log.append(make_batch(records=2, value_bytes=40, tag=i, timestamp_ms=1_000 + i), term=3)
    assert len(log.segment_base_offsets) >= 3
    victim = list(log.iter_headers(0))[2]
    log.close()
    segment = directory / f"{0:020d}.log"
    data = bytearray(segment.read_bytes())
    position = 2 * len(make_batch(records=2, value_bytes=40))
    assert decode_header(data, position).base_offset == victim.base_offset
    data[position + 12 + 7] ^= 0x04  # term 3 -> 7: the flip v1 could not see
    segment.write_bytes(bytes(data))
    return victim.last_offset, victim.term


def test_a_flipped_term_in_a_sealed_segment_is_damage_not_a_term(tmp_path: Path) -> None:
    last_offset, term = _log_with_a_flipped_term(tmp_path / "p")
    log = PartitionLog.open(tmp_path / "p", CONFIG, now_ms=Clock())
    assert log.recovery.clean, "sealed segments with good index files are not rescanned"
    assert log.term_at(last_offset - 2) == term  # the batch before it is fine
    with pytest.raises(CorruptLogError, match="header checksum"):
        log.term_at(last_offset)
    log.close()


def test_planted_unverified_header_reads_believe_the_flipped_term(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect re-injected (header reads without the checksum, as v1 had to): term_at then
    answers 7 for an entry written in term 3, which is what the test above refuses."""
    last_offset, term = _log_with_a_flipped_term(tmp_path / "p")
    monkeypatch.setattr(segment_module, "decode_verified_header", decode_header)
    log = PartitionLog.open(tmp_path / "p", CONFIG, now_ms=Clock())
    assert log.term_at(last_offset) == 7 != term
    log.close()


def test_a_damaged_header_met_by_a_time_lookup_is_a_typed_corruption(tmp_path: Path) -> None:
    last_offset, _ = _log_with_a_flipped_term(tmp_path / "p")
    log = PartitionLog.open(tmp_path / "p", CONFIG, now_ms=Clock())
    with pytest.raises(CorruptLogError, match="by time"):
        log.offset_for_timestamp(1_002)  # the third batch's time: the walk meets its header
    log.close()
