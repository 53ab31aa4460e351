"""Crash recovery: a torn or damaged tail is cut off; damage below the recovery point is reported.

Each case builds a log, crashes it (no close), damages a copy of the active segment, reopens, and
checks that every batch before the damaged one reads back intact and the damaged one is gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from storage_helpers import Clock, crash, make_batch, small_config
from tidelog.node.storage import CorruptLogError, PartitionLog
from tidelog.proto.batch import HEADER_SIZE, iter_batches

CONFIG = small_config(segment_bytes_max=1024, batch_bytes_max=1024, index_interval_bytes=128)


def _build(directory: Path) -> tuple[list[bytes], int]:
    """A log of two sealed segments and an active one; returns served batches and the last's
    position in the active segment."""
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    for i in range(24):
        log.append(make_batch(records=1 + i % 3, value_bytes=60, term=1 + i // 7, tag=i))
    log.sync()
    served = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1)
        served.append(data)
        offset = next(iter_batches(data))[1].last_offset + 1
    active = log._segments[-1]
    assert len(log._segments) >= 3 and active.size_bytes > 0
    last_position = active.size_bytes - len(served[-1])
    crash(log)
    return served, last_position


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes], int]:
    directory = tmp_path_factory.mktemp("pristine")
    served, last_position = _build(directory)
    return directory, served, last_position


def _damaged_copy(pristine_dir: Path, target: Path) -> Path:
    shutil.copytree(pristine_dir, target)
    return sorted(target.glob("*.log"))[-1]


def _assert_prefix_intact(log: PartitionLog, served: list[bytes]) -> None:
    assert log.log_end_offset == next(iter_batches(served[-1]))[1].base_offset
    offset = 0
    for expected in served[:-1]:
        assert log.read(offset, 1) == expected
        offset = next(iter_batches(expected))[1].last_offset + 1


def test_cut_at_every_byte_of_the_last_batch(pristine, tmp_path: Path) -> None:
    directory, served, last_position = pristine
    for cut in range(last_position, last_position + len(served[-1])):
        work = tmp_path / f"cut{cut}"
        segment = _damaged_copy(directory, work)
        os.truncate(segment, cut)
        log = PartitionLog.open(work, CONFIG, now_ms=Clock())
        _assert_prefix_intact(log, served)
        assert os.path.getsize(segment) == last_position
        if cut > last_position:
            assert log.recovery.truncated[0].bytes_removed == cut - last_position
        log.close()
        shutil.rmtree(work)


def test_flipped_bits_in_the_last_batch(pristine, tmp_path: Path) -> None:
    """Format v2 checksums every byte, base offset and term included (v1 could not see a
    raised term): every flipped bit is found and cut as a torn tail."""
    directory, served, last_position = pristine
    size = len(served[-1])
    checked = 0
    for rel in range(size):
        # Every bit of the header; one (rotating) bit of the records.
        for bit in range(8) if rel < HEADER_SIZE else (rel % 8,):
            work = tmp_path / f"flip{rel}-{bit}"
            segment = _damaged_copy(directory, work)
            with open(segment, "r+b") as f:
                f.seek(last_position + rel)
                byte = f.read(1)[0]
                f.seek(last_position + rel)
                f.write(bytes([byte ^ (1 << bit)]))
            log = PartitionLog.open(work, CONFIG, now_ms=Clock())
            _assert_prefix_intact(log, served)
            assert log.recovery.truncated, (rel, bit)
            log.close()
            shutil.rmtree(work)
            checked += 1
    assert checked == size + 7 * HEADER_SIZE


def test_a_lowered_term_is_caught(pristine, tmp_path: Path) -> None:
    directory, served, last_position = pristine
    segment = _damaged_copy(directory, tmp_path / "term")
    with open(segment, "r+b") as f:
        f.seek(last_position + 12)
        f.write((0).to_bytes(8, "big"))
    log = PartitionLog.open(tmp_path / "term", CONFIG, now_ms=Clock())
    _assert_prefix_intact(log, served)
    log.close()


def test_damage_below_the_recovery_point_is_reported_not_served(tmp_path: Path) -> None:
    clock = Clock()
    log = PartitionLog.open(tmp_path, CONFIG, now_ms=clock)
    for i in range(4):
        log.append(make_batch(value_bytes=60, tag=i))
    clock.now_ms += 10_000  # the next sync also records the recovery point
    log.sync()
    crash(log)
    segment = sorted(tmp_path.glob("*.log"))[-1]
    before = segment.read_bytes()
    damaged_at = len(make_batch(value_bytes=60)) + 20  # inside the second batch
    with open(segment, "r+b") as f:
        f.seek(damaged_at)
        byte = f.read(1)[0]
        f.seek(damaged_at)
        f.write(bytes([byte ^ 0x10]))
    with pytest.raises(CorruptLogError) as raised:
        PartitionLog.open(tmp_path, CONFIG, now_ms=clock)
    assert raised.value.segment == segment and 0 < raised.value.position <= damaged_at
    assert len(segment.read_bytes()) == len(before), "open changed nothing"


def test_damage_in_a_sealed_segment_is_found_on_read(tmp_path: Path) -> None:
    served, _ = _build(tmp_path)
    first = sorted(tmp_path.glob("*.log"))[0]
    with open(first, "r+b") as f:
        f.seek(80)
        byte = f.read(1)[0]
        f.seek(80)
        f.write(bytes([byte ^ 1]))
    log = PartitionLog.open(tmp_path, CONFIG, now_ms=Clock())
    with pytest.raises(CorruptLogError) as raised:
        log.read(0, 10_000)
    assert raised.value.segment == first and raised.value.position == 0
    assert log.read(next(iter_batches(served[1]))[1].base_offset, 1) == served[1]
    log.close()


def test_meta_file_damage_falls_back_to_the_segments(pristine, tmp_path: Path) -> None:
    directory, served, _ = pristine
    shutil.copytree(directory, tmp_path / "m")
    meta = tmp_path / "m" / "log.meta"
    meta.write_bytes(meta.read_bytes()[:-1] + b"\xff")
    log = PartitionLog.open(tmp_path / "m", CONFIG, now_ms=Clock())
    assert log.recovery.meta_problem
    offset = 0
    for expected in served:
        assert log.read(offset, 1) == expected
        offset = next(iter_batches(expected))[1].last_offset + 1
    log.close()
