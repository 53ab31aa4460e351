"""The storage engine under power loss (SimFileSystem), one claim per test; and ensure_directory.

Randomized cases loop over fixed seeds; a failure message names the seed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tidelog.node.storage.log as log_module
from storage_helpers import Clock, CutsPowerAfter, PowerCut, crash, make_batch, small_config
from tidelog.node.sim.simfs import SimFileSystem
from tidelog.node.storage import (
    LogClosedError,
    PartitionLog,
    StorageError,
    StorageIOError,
    ensure_directory,
    remove_directory,
)
from tidelog.node.storage.fs import FileSystem

DATA = Path("/data")
SEEDS = range(30)


def _sim_with_data_dir() -> SimFileSystem:
    fs = SimFileSystem()
    fs.mkdir(DATA)
    fs.fsync_directory(Path("/"))
    return fs


def _open(fs: FileSystem, directory: Path = DATA / "p0") -> PartitionLog:
    return PartitionLog.open(directory, small_config(), now_ms=Clock(), fs=fs)


def _synced_log_survives(seed: int) -> bool:
    fs = _sim_with_data_dir()
    log = _open(fs)
    for i in range(5):
        log.append(make_batch(tag=i))
    assert log.sync() == 5
    fs.power_loss(random.Random(seed))
    reopened = _open(fs)
    return reopened.log_end_offset == 5


def test_a_new_log_directory_survives_power_loss_once_synced() -> None:
    """Defect 8: the partition directory's own name must be durable in its parent."""
    failed = [seed for seed in SEEDS if not _synced_log_survives(seed)]
    assert not failed, f"synced data lost after power loss, seeds {failed}"


def test_planted_bug_plain_mkdir_loses_the_directory_and_is_caught(monkeypatch) -> None:
    """The old code (mkdir without fsync of the parent), re-injected: some power loss takes the
    whole directory, synced data included. Shows the test above can fail."""

    def old_mkdir(path: Path, *, fs: FileSystem) -> list[Path]:
        fs.mkdir(path, parents=True, exist_ok=True)
        return []

    monkeypatch.setattr(log_module, "ensure_directory", old_mkdir)
    failed = [seed for seed in SEEDS if not _synced_log_survives(seed)]
    assert failed, "the planted bug was not caught"


def test_a_directory_left_by_a_crash_before_its_parent_fsync_is_made_durable_on_open() -> None:
    for seed in SEEDS:
        fs = _sim_with_data_dir()
        fs.mkdir(DATA / "p0")  # a process died right after this mkdir
        fs.crash()
        log = _open(fs)
        log.append(make_batch())
        log.sync()
        fs.power_loss(random.Random(seed))
        assert _open(fs).log_end_offset == 1, seed


def test_ensure_directory_creates_parents_and_fsyncs_each_parent(tmp_path: Path) -> None:
    fs = _sim_with_data_dir()
    created = ensure_directory(DATA / "a" / "b" / "c", fs=fs)
    assert created == [DATA / "a", DATA / "a" / "b", DATA / "a" / "b" / "c"]
    assert fs.listdir_durable(DATA) == ["a"]
    assert fs.listdir_durable(DATA / "a" / "b") == ["c"]
    assert ensure_directory(DATA / "a", fs=fs) == []
    real = ensure_directory(tmp_path / "x" / "y")
    assert real == [tmp_path / "x", tmp_path / "x" / "y"] and (tmp_path / "x" / "y").is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        ensure_directory(tmp_path / "file" / "sub")


def test_remove_directory_is_durable() -> None:
    for seed in SEEDS:
        fs = _sim_with_data_dir()
        log = _open(fs)
        log.append(make_batch())
        log.close()
        assert remove_directory(DATA / "p0", fs=fs)
        assert not remove_directory(DATA / "p0", fs=fs)
        fs.power_loss(random.Random(seed))
        assert fs.listdir(DATA) == [], seed


def test_log_start_beyond_the_lost_unsynced_tail_reopens_empty_at_the_start() -> None:
    """Found by the power-loss model: truncate_prefix past the durable end, then power loss;
    the survivors end below the (durable) start. Open used to refuse the log
    (CorruptLogError); nothing below the start belongs to the log, so it restarts there."""
    emptied = 0
    for seed in SEEDS:
        fs = _sim_with_data_dir()
        log = _open(fs)
        for i in range(3):
            log.append(make_batch(tag=i))
        log.truncate_prefix(3)
        fs.power_loss(random.Random(seed))
        reopened = _open(fs)
        assert (reopened.log_start_offset, reopened.log_end_offset) == (3, 3), seed
        emptied += reopened.recovery.emptied_below_start
        assert reopened.append(make_batch()).base_offset == 3
    assert emptied > 0


def test_a_failed_fsync_cuts_the_unsynced_tail_so_a_reopen_cannot_call_it_durable() -> None:
    """Linux after a write-back error (fsyncgate): the failed pages are marked clean, the cache
    still serves them and the next fsync succeeds without writing them. The fenced log cuts
    its active segment back to what was fsynced, so the reopened log holds only durable data."""
    for seed in SEEDS:
        fs = _sim_with_data_dir()
        log = _open(fs)
        log.append(make_batch(tag=0))
        assert log.sync() == 1
        log.append(make_batch(tag=1))
        fs.fail_next_fsync(log._segments[-1].path)
        with pytest.raises(StorageIOError):
            log.sync()
        with pytest.raises(LogClosedError):
            log.append(make_batch(tag=2))
        fs.crash()
        reopened = _open(fs)
        assert reopened.log_end_offset == 1, "the failed tail is gone, not re-declared durable"
        assert reopened.durable_end_offset == 1
        crash(reopened)
        fs.power_loss(random.Random(seed))
        assert _open(fs).log_end_offset == 1, seed


def _keyed_log(fs: FileSystem) -> tuple[PartitionLog, dict[bytes, bytes]]:
    """Small segments of 3 rounds of updates to 20 keys, all sealed; key -> latest value."""
    from tidelog.proto.batch import encode_batch

    log = PartitionLog.open(DATA / "p0", small_config(segment_bytes_max=1024,
                                                      batch_bytes_max=1024),
                            now_ms=Clock(), fs=fs)
    latest = {}
    for round_ in range(3):
        for k in range(0, 20, 4):
            records = [(b"key-%d" % j, b"v%d-%d" % (j, round_), (), 1_000)
                       for j in range(k, k + 4)]
            log.append(encode_batch(records), term=1)
            latest.update({key: value for key, value, _, _ in records})
    log.append(encode_batch([(b"x" * 500, b"y" * 400, (), 1_000)]), term=1)  # rolls
    log.append(encode_batch([(b"x" * 500, b"y" * 400, (), 1_000)]), term=1)
    log.sync()
    return log, latest


def _latest_values(log: PartitionLog) -> dict[bytes, bytes]:
    from tidelog.proto.batch import decode_records, iter_batches

    out: dict[bytes, bytes] = {}
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        raw = log.read(offset, 1 << 20)
        for pos, header in iter_batches(raw):
            if not header.is_control:
                for r in decode_records(raw[pos:pos + header.size]):
                    if r.key is not None and r.value is not None and r.key.startswith(b"key"):
                        out[r.key] = r.value
            offset = header.last_offset + 1
    return out


def test_compaction_under_power_loss_keeps_every_key_latest_value() -> None:
    """A power cut at any step of a compaction round (before, during or after the segment
    swaps) leaves a log that opens, keeps its offsets, and reads every key's latest value."""
    from tidelog.node.storage.compaction import compact

    cut_during, completed = 0, 0
    for k in range(120):
        fs = _sim_with_data_dir()
        log, latest = _keyed_log(fs)
        end = log.log_end_offset
        fs.__class__ = CutsPowerAfter  # the same disk, counting changes from here on
        fs.armed_after = k
        try:
            compact(log, upto_offset=end, now_ms=2_000)
            completed += 1
        except PowerCut:
            cut_during += 1
        fs.armed_after = None
        crash(log)
        fs.power_loss(random.Random(k))
        reopened = _open(fs)
        assert reopened.log_end_offset == end, k
        assert _latest_values(reopened) == latest, k
        if completed > 3:
            break
    assert cut_during > 10, "a compaction round takes many steps, each one cut once"


def test_planted_bug_compaction_swapping_in_an_unsynced_rewrite_is_caught(monkeypatch) -> None:
    """The rewrite is renamed over the segment without its fdatasync: a power loss after the
    swap leaves a segment whose bytes never reached the disk."""
    from tidelog.node.storage import fs as fs_module

    monkeypatch.setattr(fs_module.SequentialWriter, "sync",
                        lambda self: self._flush())  # no fdatasync
    with pytest.raises((AssertionError, StorageError)):
        test_compaction_under_power_loss_keeps_every_key_latest_value()
