"""Old logs (batch format v1, whose term is outside the checksum) are refused on open with an
actionable error, never called corrupt and never served; `tidelog storage migrate` converts them.

The v1 segments are written by the test itself from the documented v1 layout (format_v1.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from format_v1 import write_v1_log
from storage_helpers import Clock, crash, make_batch, small_config
from tidelog.client.cli import main as tidelog_main
from tidelog.node.storage import CorruptBatchError, LogFormatError, PartitionLog
from tidelog.node.storage import log as log_module
from tidelog.node.storage import segment as segment_module
from tidelog.node.storage.fs import OsFileSystem
from tidelog.node.storage.migrate import MigrationError, migrate_log, migrate_tree
from tidelog.proto.batch import MAGIC, decode_records, iter_batches

CONFIG = small_config(segment_bytes_max=4096, batch_bytes_max=2048)
LAYOUT = [[(3, 1), (2, 1), (1, 2)], [(4, 2), (1, 3)], [(2, 3), (2, 5)]]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _read_all(log: PartitionLog) -> list[tuple[int, int, list[tuple[bytes | None, bytes | None,
                                                                      int]]]]:
    out = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1 << 20)
        for pos, header in iter_batches(data):
            records = decode_records(data[pos:pos + header.size])
            out.append((header.base_offset, header.term,
                        [(r.key, r.value, r.timestamp) for r in records]))
            offset = header.last_offset + 1
    return out


def test_open_refuses_a_v1_log_names_the_file_and_the_fix_and_changes_nothing(
        tmp_path: Path) -> None:
    directory = tmp_path / "orders-0"
    write_v1_log(directory, LAYOUT)
    before = _files(directory)
    with pytest.raises(LogFormatError) as raised:
        PartitionLog.open(directory, CONFIG, now_ms=Clock())
    error = raised.value
    assert not isinstance(error, CorruptBatchError), "an old format is not damage"
    assert error.format_version == 1 and error.segment == directory / f"{0:020d}.log"
    message = str(error)
    assert f"{0:020d}.log" in message and "written by batch format v1" in message
    assert f"tidelog storage migrate {directory}" in message
    assert _files(directory) == before


@pytest.mark.parametrize("planted", ["no_open_check", "no_scan_check", "neither"])
def test_each_refusal_layer_alone_keeps_v1_data_from_being_cut_as_a_torn_tail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    """Planted bugs: with one layer switched off the other still refuses; with both off (the old
    behaviour) open takes the v1 batches for a torn tail and cuts every one of them."""
    directory = tmp_path / "p"
    write_v1_log(directory, [[(3, 1), (2, 1)]])  # only an active segment, recovery point 0
    before = _files(directory)
    if planted in ("no_open_check", "neither"):
        monkeypatch.setattr(log_module, "_refuse_old_format", lambda segment: None)
    if planted in ("no_scan_check", "neither"):
        monkeypatch.setattr(segment_module, "UnsupportedFormatError",
                            type("NeverRaised", (Exception,), {}))
    if planted == "neither":
        log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
        assert log.log_end_offset == 0 and log.recovery.truncated, "v1 data was cut"
        log.close()
        return
    with pytest.raises(LogFormatError, match="tidelog storage migrate"):
        PartitionLog.open(directory, CONFIG, now_ms=Clock())
    assert _files(directory) == before


def test_migrate_keeps_every_offset_term_and_record_and_the_log_then_opens(
        tmp_path: Path) -> None:
    directory = tmp_path / "p"
    written = write_v1_log(directory, LAYOUT)
    results = migrate_log(directory)
    assert [r.converted for r in results] == [True, True, True]
    assert [r.batches for r in results] == [len(s) for s in LAYOUT]
    assert all(p.read_bytes()[20] == MAGIC for p in directory.glob("*.log"))
    assert not list(directory.glob("*.migrating"))
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    assert _read_all(log) == written
    assert log.last_term == 5 and log.term_at(written[3][0]) == 2
    info = log.append(make_batch(term=5))
    assert info.base_offset == sum(c for s in LAYOUT for c, _ in s)
    log.close()
    assert migrate_log(directory)[0].converted is False, "running it again changes nothing"


def test_migrate_walks_a_data_directory_and_the_cli_reports(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    data = tmp_path / "node1"
    write_v1_log(data / "partitions" / "a-0.x", LAYOUT[:1])
    write_v1_log(data / "partitions" / "a-1.x", LAYOUT)
    write_v1_log(data / "metadata", LAYOUT[:2])
    (data / "partitions" / "empty-0.x").mkdir()
    assert tidelog_main(["storage", "migrate", str(data)]) == 0
    out = capsys.readouterr().out
    assert "6 segment(s) converted to batch format v2" in out
    for directory in (data / "metadata", data / "partitions" / "a-1.x"):
        PartitionLog.open(directory, CONFIG, now_ms=Clock()).close()
    assert all(not r.converted for r in migrate_tree(data))


def test_a_damaged_v1_batch_stops_the_migration_and_is_left_as_it_was(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "p"
    write_v1_log(directory, LAYOUT)
    second = directory / f"{6:020d}.log"
    data = bytearray(second.read_bytes())
    data[90] ^= 0x01  # in the records of its first batch
    second.write_bytes(bytes(data))
    first_before = (directory / f"{0:020d}.log").read_bytes()
    with pytest.raises(MigrationError, match=rf"{6:020d}\.log at position 0: v1 checksum"):
        migrate_log(directory)
    assert second.read_bytes() == bytes(data)
    assert not list(directory.glob("*.migrating"))
    assert (directory / f"{0:020d}.log").read_bytes() != first_before, "earlier ones converted"
    assert tidelog_main(["storage", "migrate", str(directory)]) == 1
    assert "v1 checksum mismatch" in capsys.readouterr().err
    with pytest.raises(LogFormatError):  # still refused, not served
        PartitionLog.open(directory, CONFIG, now_ms=Clock())


def test_a_v1_term_that_goes_backwards_is_refused_not_sealed_into_a_v2_checksum(
        tmp_path: Path) -> None:
    directory = tmp_path / "p"
    write_v1_log(directory, [[(1, 3), (1, 2)]])
    with pytest.raises(MigrationError, match="term 2 below the previous batch's 3"):
        migrate_log(directory)


def test_a_torn_v1_tail_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    write_v1_log(directory, LAYOUT[:1])
    segment = directory / f"{0:020d}.log"
    os.truncate(segment, segment.stat().st_size - 5)
    with pytest.raises(MigrationError, match="torn or damaged"):
        migrate_log(directory)


class PowerCutOnSecondReplace(OsFileSystem):
    """The real file system, with the process "dying" at the second rename (fault injection)."""

    def __init__(self) -> None:
        self.replaced: list[Path] = []

    def replace(self, src: Path, dst: Path) -> None:
        self.replaced.append(dst)
        if len(self.replaced) == 2:
            raise KeyboardInterrupt("power cut")
        super().replace(src, dst)


def test_a_migration_interrupted_between_segments_finishes_when_run_again(
        tmp_path: Path) -> None:
    directory = tmp_path / "p"
    written = write_v1_log(directory, LAYOUT)
    with pytest.raises(KeyboardInterrupt):
        migrate_log(directory, fs=PowerCutOnSecondReplace())
    with pytest.raises(LogFormatError, match=f"{6:020d}.log"):
        PartitionLog.open(directory, CONFIG, now_ms=Clock())
    assert [r.converted for r in migrate_log(directory)] == [False, True, True]
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    assert _read_all(log) == written
    log.close()


def test_a_torn_first_batch_that_merely_reads_1_at_the_magic_byte_is_cut_not_refused(
        tmp_path: Path) -> None:
    """Garbage after a power cut can hold any byte at position 20: only an intact v1 batch makes
    the log refused; anything else is recovery's business (here: an unsynced, torn tail)."""
    directory = tmp_path / "p"
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    for i in range(3):
        log.append(make_batch(tag=i), term=1)
    crash(log)  # the recovery point is still 0: everything is an unsynced tail
    segment = directory / f"{0:020d}.log"
    data = bytearray(segment.read_bytes())
    data[20] = 1
    segment.write_bytes(bytes(data))
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    assert log.log_end_offset == 0 and log.recovery.truncated
    log.close()
