"""PartitionLog behaviour: bad input, retention, indexes, durability, descriptors, meta files."""

from __future__ import annotations

import errno
import os
import struct
import threading
from pathlib import Path

import pytest
import xxhash
from storage_helpers import Clock, crash, make_batch, small_config
from tidelog.node.storage import (
    BatchTooLargeError,
    CorruptBatchError,
    CorruptFileError,
    DiskFullError,
    FsyncMode,
    FsyncPolicy,
    InvalidBatchError,
    LogConfig,
    OffsetOutOfOrderError,
    OffsetOutOfRangeError,
    PartitionLog,
    TermOutOfOrderError,
    read_checksummed,
    write_atomic,
    write_checksummed,
)
from tidelog.node.storage import segment as segment_module
from tidelog.node.storage.fs import OsFileSystem
from tidelog.proto.batch import iter_batches

# ------------------------------------------------------------------------------------ bad input


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_bad_batches_raise_typed_errors_and_change_nothing(open_log, tmp_path: Path) -> None:
    log = open_log()
    log.append(make_batch(term=2))
    before = _files(tmp_path / "p0")
    good = make_batch()
    flipped = bytearray(good)
    flipped[-1] ^= 1
    unknown = bytearray(good)
    struct.pack_into(">h", unknown, 21, 6)  # codec 6: intact (re-signed) but unknown
    struct.pack_into(">Q", unknown, 69, xxhash.xxh3_64_intdigest(bytes(unknown[:69])))
    cases = [
        (bytes(flipped), {}, CorruptBatchError),
        (good[:-3], {}, CorruptBatchError),
        (bytes(unknown), {}, InvalidBatchError),
        (make_batch(value_bytes=5000, codec=0), {}, BatchTooLargeError),
        (good, {"base_offset": 0}, OffsetOutOfOrderError),
        (good, {"base_offset": 5}, OffsetOutOfOrderError),
        (good, {"term": 1}, TermOutOfOrderError),
    ]
    for batch, kwargs, error in cases:
        with pytest.raises(error):
            log.append(batch, **kwargs)
    with pytest.raises(CorruptBatchError):
        log.append_many([good, bytes(flipped)])
    assert log.log_end_offset == 1
    assert _files(tmp_path / "p0") == before


class _HalfThenEnospc(OsFileSystem):
    """The real file system, except that while `full`, a write of more than 10 bytes writes
    half and then fails with ENOSPC (a disk filling up mid-write)."""

    full = False

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> int:
        if self.full and len(data) > 10:
            super().pwrite(fd, bytes(data[: len(data) // 2]), position)
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().pwrite(fd, data, position)


class _CountingFsyncs(OsFileSystem):
    def __init__(self) -> None:
        self.fdatasyncs: list[int] = []

    def fdatasync(self, fd: int) -> None:
        self.fdatasyncs.append(fd)
        super().fdatasync(fd)


def test_disk_full_cuts_the_partial_write_back(open_log) -> None:
    fs = _HalfThenEnospc()
    log = open_log(fs=fs)
    log.append(make_batch(tag=1))
    size = log._segments[-1].size_bytes
    fs.full = True
    with pytest.raises(DiskFullError):
        log.append(make_batch(tag=2))
    fs.full = False
    assert os.path.getsize(log._segments[-1].path) == size
    assert log.log_end_offset == 1
    log.append(make_batch(tag=3))
    assert [h.base_offset for _, h in iter_batches(log.read(0, 10_000))] == [0, 1]


def test_reads_outside_the_log_raise(open_log) -> None:
    log = open_log()
    log.append(make_batch(records=3))
    assert log.read(3, 100) == b""
    with pytest.raises(OffsetOutOfRangeError):
        log.read(4, 100)
    log.truncate_prefix(2)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(1, 100)
    assert next(iter_batches(log.read(2, 1)))[1].base_offset == 0  # the batch containing 2


def test_a_read_returns_one_whole_batch_even_over_max_bytes(open_log) -> None:
    log = open_log()
    log.append(make_batch(value_bytes=500, codec=0))
    log.append(make_batch(value_bytes=500, codec=0))
    data = log.read(0, 10)
    assert len(list(iter_batches(data))) == 1


# -------------------------------------------------------------------------- retention & rolling


def test_retention_by_size_keeps_the_active_segment(open_log, tmp_path: Path) -> None:
    log = open_log(small_config(retention_bytes=1500))
    for i in range(60):
        log.append(make_batch(value_bytes=100, tag=i, codec=0))
    assert len(log.segment_base_offsets) > 4
    deleted = log.apply_retention(0)
    assert deleted and (log.size_bytes <= 1500 or len(log.segment_base_offsets) == 1)
    assert log.log_start_offset == log.segment_base_offsets[0] > deleted[-1]
    start = log.log_start_offset
    log.close()
    log = open_log(small_config(retention_bytes=1500))
    assert log.log_start_offset == start
    with pytest.raises(OffsetOutOfRangeError):
        log.read(start - 1, 10)
    tiny = open_log(small_config(retention_bytes=1), tmp_path / "tiny")
    tiny.append(make_batch())
    assert tiny.apply_retention(0) == [] and tiny.log_end_offset == 1


def test_retention_by_age_deletes_old_segments_only(open_log, clock: Clock) -> None:
    config = small_config(retention_ms=60_000)
    log = open_log(config)
    for i in range(30):
        log.append(make_batch(value_bytes=100, codec=0,
                              timestamp_ms=1_000 if i < 15 else 500_000, tag=i))
    old = [b for b in log.segment_base_offsets[:-1]]
    deleted = log.apply_retention(now_ms=100_000)
    assert deleted and set(deleted) <= set(old)
    assert log.offset_for_timestamp(0) == log.log_start_offset
    for base in log.segment_base_offsets[:-1]:
        header = log.batch_header_at(base)
        assert header is not None


def test_segments_roll_by_age(open_log, clock: Clock) -> None:
    log = open_log(small_config(segment_ms_max=1_000))
    log.append(make_batch(timestamp_ms=clock.now_ms))
    log.append(make_batch(timestamp_ms=clock.now_ms))
    assert len(log.segment_base_offsets) == 1
    clock.now_ms += 1_000
    log.append(make_batch(timestamp_ms=clock.now_ms))
    assert log.segment_base_offsets == [0, 2]


def test_offset_for_timestamp_uses_batch_max_timestamps(open_log) -> None:
    log = open_log(small_config(index_interval_bytes=64))
    for i in range(40):
        log.append(make_batch(timestamp_ms=1_000 + 10 * i, tag=i))
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(1_000 + 10 * 17) == 17
    assert log.offset_for_timestamp(1_000 + 10 * 17 - 5) == 17
    assert log.offset_for_timestamp(10_000) is None


# ---------------------------------------------------------------------------------------- indexes


@pytest.mark.parametrize("damage", ["delete", "flip", "truncate", "stale"])
def test_missing_or_inconsistent_indexes_are_rebuilt(open_log, tmp_path: Path,
                                                     damage: str) -> None:
    log = open_log()
    for i in range(60):
        log.append(make_batch(value_bytes=80, timestamp_ms=i, tag=i, codec=0))
    expected = [log.read(o, 1) for o in range(0, 60, 7)]
    log.close()
    index = sorted((tmp_path / "p0").glob("*.index"))[1]
    if damage == "delete":
        index.unlink()
    elif damage == "flip":
        data = bytearray(index.read_bytes())
        data[-1] ^= 4
        index.write_bytes(bytes(data))
    elif damage == "truncate":
        index.write_bytes(index.read_bytes()[:-8])
    else:  # an index written for another version of the segment, with a valid checksum
        payload = bytearray(read_checksummed(index))
        struct.pack_into(">q", payload, 16, 3)
        write_checksummed(index, bytes(payload))
    log = open_log()
    assert [r.segment for r in log.recovery.rebuilt_indexes] == [index.stem + ".log"]
    assert [log.read(o, 1) for o in range(0, 60, 7)] == expected
    assert index.exists()
    log.close()
    assert open_log().recovery.clean


# ------------------------------------------------------------------------------------- durability


def test_group_commit_shares_fsyncs_between_appenders(open_log) -> None:
    fs = _CountingFsyncs()
    log = open_log(LogConfig(), fs=fs)
    calls = fs.fdatasyncs
    calls.clear()  # the open's own sync
    appends = 16 * 20
    errors: list[BaseException] = []

    def appender(tag: int) -> None:
        try:
            for i in range(20):
                info = log.append(make_batch(tag=tag * 100 + i))
                assert log.sync() >= info.log_end_offset
                assert log.durable_end_offset >= info.log_end_offset
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert log.durable_end_offset == log.log_end_offset == appends
    assert len(calls) < appends


def test_needs_sync_follows_the_policy(open_log, clock: Clock) -> None:
    log = open_log(small_config(fsync=FsyncPolicy.parse("interval:100ms,1KiB")))
    assert not log.needs_sync(clock.now_ms)
    log.append(make_batch())
    assert not log.needs_sync(clock.now_ms)
    assert log.needs_sync(clock.now_ms + 100)
    for i in range(12):
        log.append(make_batch(value_bytes=100, tag=i, codec=0))
    assert log.needs_sync(clock.now_ms)
    assert log.durable_end_offset < log.log_end_offset  # only a roll's seal synced anything
    assert log.sync() == log.log_end_offset
    assert not log.needs_sync(clock.now_ms + 10_000)
    always = open_log(small_config(), clock_dir := log.directory.parent / "always")
    assert clock_dir.exists()
    always.append(make_batch())
    assert always.needs_sync(0)


def test_fsync_policy_strings() -> None:
    assert FsyncPolicy.parse("always").mode is FsyncMode.ALWAYS
    policy = FsyncPolicy.parse("interval:250ms,4MiB")
    assert (policy.interval_ms, policy.interval_bytes) == (250, 4 * 1024 * 1024)
    assert FsyncPolicy.parse("interval:2s").interval_ms == 2_000
    for bad in ("sometimes", "interval:", "interval:0ms", "always:5ms"):
        with pytest.raises(ValueError):
            FsyncPolicy.parse(bad)
    with pytest.raises(ValueError):
        LogConfig(segment_bytes_max=4096, batch_bytes_max=8192)


def test_truncation_lowers_the_durable_end(open_log) -> None:
    log = open_log()
    for i in range(5):
        log.append(make_batch(tag=i))
    log.sync()
    log.truncate_after(2)
    assert log.durable_end_offset == 3 == log.log_end_offset
    log.append(make_batch(tag=9))
    assert log.durable_end_offset == 3
    assert log.sync() == 4


def test_reset_is_finished_by_open_after_a_crash(open_log, tmp_path: Path, monkeypatch) -> None:
    log = open_log()
    for i in range(40):
        log.append(make_batch(value_bytes=80, tag=i, codec=0))
    real_create = segment_module.Segment.create

    def crash_on_create(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(segment_module.Segment, "create", crash_on_create)
    with pytest.raises(RuntimeError):
        log.reset(1_000)
    monkeypatch.setattr(segment_module.Segment, "create", real_create)
    crash(log)
    log = open_log()
    assert log.recovery.completed_reset
    assert (log.log_start_offset, log.log_end_offset) == (1_000, 1_000)
    assert [p.name for p in (tmp_path / "p0").glob("*.log")] == [f"{1000:020d}.log"]
    assert log.append(make_batch()).base_offset == 1_000


# ----------------------------------------------------------------------------- descriptors & meta


def test_each_log_holds_one_descriptor(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    logs = []
    for p in range(40):
        log = PartitionLog.open(tmp_path / f"p{p}", small_config(), now_ms=Clock())
        for i in range(30):
            log.append(make_batch(value_bytes=100, tag=i, codec=0))
        log.read(0, 100_000)
        logs.append(log)
    assert len(logs[0].segment_base_offsets) >= 3
    assert open_fds() - before <= 40
    for log in logs:
        log.close()
    assert open_fds() <= before


def test_checksummed_files_detect_damage(tmp_path: Path) -> None:
    path = tmp_path / "raft.state"
    assert read_checksummed(path) is None
    write_checksummed(path, b"term=5 vote=2")
    assert read_checksummed(path) == b"term=5 vote=2"
    raw = bytearray(path.read_bytes())
    for position in range(len(raw)):
        damaged = bytearray(raw)
        damaged[position] ^= 0x20
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptFileError):
            read_checksummed(path)
    path.write_bytes(bytes(raw[:-2]))
    with pytest.raises(CorruptFileError):
        read_checksummed(path)
    write_atomic(path, b"plain")
    assert path.read_bytes() == b"plain"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_segment_left_below_the_start_by_a_roll_on_a_full_disk_is_deleted_by_the_roll(
        tmp_path: Path) -> None:
    """Found by the power-loss model (hypothesis): truncate_prefix up to the end of the active
    segment, then an age roll whose log.meta write hits a full disk. The roll used to stop before
    deleting the sealed segment wholly below the start, so the next open had to clean it up
    (not a clean open after a clean close)."""
    from tidelog.node.sim.simfs import SimFileSystem

    fs, clock = SimFileSystem(), Clock()
    directory = tmp_path / "p"
    config = small_config(segment_ms_max=1000)
    log = PartitionLog.open(directory, config, now_ms=clock, fs=fs)
    log.append(make_batch(records=5), term=1)
    log.sync()
    log.truncate_prefix(5)  # the start is the active segment's end
    clock.now_ms += 10_000  # the next append rolls by age
    fs.capacity_bytes = fs.used_bytes()  # no room: the roll's log.meta write fails
    with pytest.raises(DiskFullError):
        log.append(make_batch(), term=1)
    fs.capacity_bytes = None
    assert [s.base_offset for s in log._segments] == [5]
    log.close()
    reopened = PartitionLog.open(directory, config, now_ms=clock, fs=fs)
    assert reopened.recovery.deleted_segments == ()
    assert (reopened.log_start_offset, reopened.log_end_offset) == (5, 5)
    reopened.close()
