"""The power-loss model of SimFileSystem (node/sim/simfs.py): each claim of its fault model.

Randomized cases loop over fixed seeds and print the seed of a failure in the assertion message.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from tidelog.node.sim.simfs import SECTOR_BYTES, SimFileSystem

D = Path("/data")
F = D / "f"
SEEDS = range(40)


def _fs_with_dir(**kwargs: object) -> SimFileSystem:
    fs = SimFileSystem(**kwargs)  # type: ignore[arg-type]
    fs.mkdir(D)
    fs.fsync_directory(Path("/"))
    return fs


def _create(fs: SimFileSystem, path: Path = F, *, durable_name: bool = True) -> int:
    fd = fs.open(path, os.O_RDWR | os.O_CREAT)
    if durable_name:
        fs.fsync_directory(path.parent)
    return fd


def test_unsynced_write_is_lost_in_some_power_loss_and_never_garbles_durable_data() -> None:
    outcomes = set()
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"A" * 100, 0)
        fs.fsync(fd)
        fs.pwrite(fd, b"B" * 100, 100)
        fs.power_loss(random.Random(seed))
        content = fs.read(F)
        assert content[:100] == b"A" * 100, seed
        assert set(content[100:]) <= {ord("B")}, seed
        outcomes.add(len(content))
    assert 100 in outcomes, "an unsynced write must be lost by some power loss"
    assert 200 in outcomes, "and kept by another (the page may have been written back)"


def test_fsynced_write_survives_every_power_loss() -> None:
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"x" * 3000, 0)
        fs.fdatasync(fd)
        fs.power_loss(random.Random(seed))
        assert fs.read(F) == b"x" * 3000, seed
        assert fs.read_durable(F) == b"x" * 3000


def test_descriptors_die_at_power_loss_and_at_crash() -> None:
    fs = _fs_with_dir()
    fd = _create(fs)
    fs.power_loss(random.Random(0))
    with pytest.raises(OSError) as info:
        fs.pwrite(fd, b"x", 0)
    assert info.value.errno == errno.EBADF
    fd2 = fs.open(F, os.O_RDWR)
    assert fd2 != fd, "descriptor numbers are never reused"
    fs.crash()
    with pytest.raises(OSError):
        fs.fsync(fd2)


def test_crash_keeps_the_page_cache() -> None:
    fs = _fs_with_dir()
    fd = fs.open(F, os.O_RDWR | os.O_CREAT)
    fs.pwrite(fd, b"cached", 0)
    fs.crash()
    assert fs.read(F) == b"cached"
    assert fs.read_durable(F) is None  # neither name nor data is durable yet


def test_new_name_is_lost_without_a_directory_fsync() -> None:
    lost = 0
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs, durable_name=False)
        fs.pwrite(fd, b"data", 0)
        fs.fsync(fd)  # the data, not the name
        fs.power_loss(random.Random(seed))
        lost += not fs.exists(F)
    assert lost > len(SEEDS) // 3


def test_new_name_survives_after_the_directory_fsync() -> None:
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs, durable_name=False)
        fs.pwrite(fd, b"data", 0)
        fs.fsync(fd)
        fs.fsync_directory(D)
        fs.power_loss(random.Random(seed))
        assert fs.read(F) == b"data", seed


def test_a_new_directory_needs_its_parent_fsynced() -> None:
    """Defect 8's mechanism: a file fsynced with its own directory is still lost when the new
    directory's entry in its parent was never made durable."""
    lost = 0
    for seed in SEEDS:
        fs = SimFileSystem()
        fs.mkdir(D)
        fd = _create(fs)  # fsyncs D, not "/"
        fs.pwrite(fd, b"data", 0)
        fs.fsync(fd)
        fs.power_loss(random.Random(seed))
        lost += not fs.exists(F)
        assert not fs.exists(F) or fs.read(F) == b"data"
    assert lost > len(SEEDS) // 3


def test_unlink_and_rename_not_yet_durable_come_back() -> None:
    undone = 0
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"old", 0)
        fs.fsync(fd)
        fs.replace(F, D / "g")
        fs.power_loss(random.Random(seed))
        names = fs.listdir(D)
        assert names in (["f"], ["g"]), (seed, names)
        undone += names == ["f"]
    assert 0 < undone < len(SEEDS)


def test_replace_is_atomic() -> None:
    """write temp, fsync, replace, fsync dir: the target is the old or the new file, whole."""
    seen = set()
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"old" * 300, 0)
        fs.fsync(fd)
        fs.close(fd)
        tmp = D / "f.tmp"
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fs.pwrite(fd, b"new" * 300, 0)
        fs.fsync(fd)
        fs.close(fd)
        fs.replace(tmp, F)
        fs.power_loss(random.Random(seed))
        content = fs.read(F)
        assert content in (b"old" * 300, b"new" * 300), seed
        assert not (content == b"new" * 300 and fs.exists(tmp)), seed
        seen.add(content)
    assert len(seen) == 2


def test_replace_without_fsync_of_the_temp_file_can_leave_a_garbled_target() -> None:
    """Defect 6's mechanism: the rename may become durable before the data."""
    garbled = 0
    for seed in SEEDS:
        fs = _fs_with_dir()
        tmp = D / "f.tmp"
        fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fs.pwrite(fd, b"n" * 2000, 0)
        fs.close(fd)
        fs.replace(tmp, F)
        fs.fsync_directory(D)  # e.g. a later, unrelated durable write in the same directory
        fs.power_loss(random.Random(seed))
        garbled += fs.read(F) != b"n" * 2000
    assert garbled > 0


def test_writes_tear_at_sector_granularity() -> None:
    torn = 0
    for seed in range(200):
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"\0" * (4 * SECTOR_BYTES), 0)
        fs.fsync(fd)
        fs.pwrite(fd, b"\xff" * (3 * SECTOR_BYTES), SECTOR_BYTES // 2)
        fs.power_loss(random.Random(seed))
        content = fs.read(F)
        assert len(content) == 4 * SECTOR_BYTES, seed
        for s in range(4):
            sector = content[s * SECTOR_BYTES: (s + 1) * SECTOR_BYTES]
            lo, hi = max(0, SECTOR_BYTES // 2 - s * SECTOR_BYTES), SECTOR_BYTES
            if s == 3:
                hi = SECTOR_BYTES // 2
            written = sector[lo:hi]
            assert written in (b"\0" * len(written), b"\xff" * len(written)), (seed, s)
            assert sector[:lo] == b"\0" * lo and sector[hi:] == b"\0" * (SECTOR_BYTES - hi)
        kinds = {content[s * SECTOR_BYTES + SECTOR_BYTES - 1] for s in range(3)}
        torn += len(kinds) == 2
    assert torn > 0, "some power loss keeps part of a multi-sector write"


def test_unsynced_extension_past_a_lost_sector_leaves_zeros() -> None:
    zeros = 0
    for seed in range(200):
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"\x01" * (3 * SECTOR_BYTES), 0)
        fs.power_loss(random.Random(seed))
        content = fs.read(F)
        assert set(content) <= {0, 1}, seed
        zeros += 0 in content
    assert zeros > 0


def test_unsynced_truncation_may_or_may_not_survive() -> None:
    sizes = set()
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"z" * 1000, 0)
        fs.fsync(fd)
        fs.ftruncate(fd, 10)
        assert fs.fstat_size(fd) == 10
        fs.power_loss(random.Random(seed))
        content = fs.read(F)
        assert content in (b"z" * 10, b"z" * 1000), seed
        sizes.add(len(content))
    assert sizes == {10, 1000}


def test_fsync_on_a_dup_syncs_the_inode() -> None:
    for seed in SEEDS:
        fs = _fs_with_dir()
        fd = _create(fs)
        fs.pwrite(fd, b"via original", 0)
        dup = fs.dup(fd)
        fs.close(fd)
        fs.fsync(dup)
        fs.power_loss(random.Random(seed))
        assert fs.read(F) == b"via original"


def test_failed_fsync_raises_and_what_it_covered_may_be_lost_even_after_a_later_fsync() -> None:
    """Linux's fsyncgate: after EIO the pages are clean; a later fsync succeeds, writes nothing."""
    lost = 0
    for seed in SEEDS:
        fs = _fs_with_dir(seed=seed)
        fd = _create(fs)
        fs.pwrite(fd, b"q" * 2048, 0)
        fs.fail_next_fsync(F)
        with pytest.raises(OSError) as info:
            fs.fsync(fd)
        assert info.value.errno == errno.EIO
        assert fs.read(F) == b"q" * 2048, "the cache still serves it"
        fs.fsync(fd)  # succeeds
        fs.power_loss(random.Random(seed))
        lost += fs.read(F) != b"q" * 2048
    assert lost > 0
    assert fs.stats.failed_fsyncs == 1


def test_fail_next_fsync_targets_one_file_and_takes_an_errno() -> None:
    fs = _fs_with_dir()
    fd = _create(fs)
    other = _create(fs, D / "other")
    fs.fail_next_fsync(F, errno.ENOSPC)
    fs.fsync(other)  # not the target
    with pytest.raises(OSError) as info:
        fs.fdatasync(fd)
    assert info.value.errno == errno.ENOSPC
    fs.fsync(fd)  # armed once


def test_capacity_gives_enospc_after_a_short_write() -> None:
    fs = _fs_with_dir(capacity_bytes=1000)
    fd = _create(fs)
    assert fs.pwrite(fd, b"a" * 600, 0) == 600
    assert fs.pwrite(fd, b"b" * 600, 600) == 400  # short: what fits
    with pytest.raises(OSError) as info:
        fs.pwrite(fd, b"c", 1000)
    assert info.value.errno == errno.ENOSPC
    assert fs.pwrite(fd, b"d" * 10, 0) == 10, "overwriting needs no room"
    fs.ftruncate(fd, 100)
    assert fs.pwrite(fd, b"e" * 900, 100) == 900, "a truncation frees room"
    with pytest.raises(OSError):
        fs.ftruncate(fd, 2000)
    assert fs.stats.enospc == 2


def test_flip_bit_damages_durable_content_within_the_range() -> None:
    fs = _fs_with_dir()
    fd = _create(fs)
    fs.pwrite(fd, bytes(4096), 0)
    fs.fsync(fd)
    bit = fs.flip_bit(F, random.Random(7), start=1000, end=2000)
    assert 1000 * 8 <= bit < 2000 * 8
    damaged = fs.read_durable(F)
    assert damaged is not None and damaged[bit // 8] == 1 << (bit % 8)
    assert fs.read(F) == damaged, "the cached copy shows it too"
    assert sum(damaged) == 1 << (bit % 8)


def test_listdir_rmtree_and_errors_mirror_os() -> None:
    fs = _fs_with_dir()
    fs.mkdir(D / "a" / "b", parents=True)
    _create(fs, D / "a" / "b" / "x")
    assert fs.listdir(D) == ["a"]
    with pytest.raises(FileExistsError):
        fs.mkdir(D / "a")
    fs.mkdir(D / "a", exist_ok=True)
    with pytest.raises(FileNotFoundError):
        fs.open(D / "nope", os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        fs.mkdir(D / "q" / "r")
    with pytest.raises(IsADirectoryError):
        fs.unlink(D / "a")
    with pytest.raises(NotADirectoryError):
        fs.listdir(D / "a" / "b" / "x")
    assert fs.is_dir(D / "a") and not fs.is_dir(D / "a" / "b" / "x")
    assert fs.listdir_durable(D) == [], "'a' was never made durable in D"
    assert fs.listdir_durable(D / "a" / "b") is None, "so nothing below it is durable"
    fs.rmtree(D / "a")
    assert not fs.exists(D / "a" / "b" / "x") and fs.listdir(D) == []
    fs.close(fs.open(D / "e", os.O_RDWR | os.O_CREAT | os.O_EXCL))
    with pytest.raises(FileExistsError):
        fs.open(D / "e", os.O_RDWR | os.O_CREAT | os.O_EXCL)


def test_same_seed_same_outcome() -> None:
    def run() -> bytes:
        fs = _fs_with_dir()
        fd = _create(fs)
        for i in range(20):
            fs.pwrite(fd, bytes([i]) * 700, i * 700)
            if i % 7 == 0:
                fs.fsync(fd)
        fs.power_loss(random.Random(1234))
        return fs.read(F)

    assert run() == run()


def test_sim_file_system_has_every_method_of_the_seam_with_the_same_signature() -> None:
    import inspect

    from tidelog.node.storage.fs import FileSystem, OsFileSystem

    names = [n for n, v in vars(FileSystem).items() if callable(v) and not n.startswith("_")]
    assert len(names) >= 18
    for name in names:
        wanted = inspect.signature(getattr(FileSystem, name))
        for impl in (SimFileSystem, OsFileSystem):
            assert inspect.signature(getattr(impl, name)) == wanted, (impl, name)


def test_memory_stays_bounded_by_live_files_when_files_come_and_go() -> None:
    """Index files and temp files are written and unlinked all day: forgotten inodes must go,
    but not one a power loss could bring back (an unlink not yet durable)."""
    fs = _fs_with_dir()
    keep = _create(fs, D / "keep")
    fs.pwrite(keep, b"k", 0)
    fs.fsync(keep)
    for i in range(5000):
        path = D / f"tmp{i}"
        fd = fs.open(path, os.O_WRONLY | os.O_CREAT)
        fs.pwrite(fd, b"x" * 100, 0)
        fs.close(fd)
        fs.unlink(path)
        if i % 100 == 0:
            fs.fsync_directory(D)
    assert fs.inode_count < 1200, fs.inode_count
    fd = fs.open(D / "late", os.O_WRONLY | os.O_CREAT)
    fs.fsync_directory(D)
    fs.unlink(D / "late")  # not yet durable: a power loss may bring it back
    for i in range(2 * 1024):
        fs.close(fs.open(D / f"t{i}", os.O_WRONLY | os.O_CREAT))
        fs.unlink(D / f"t{i}")
    fs.close(fd)
    assert fs.read_durable(D / "late") == b"", "still durably named: its inode must stay"
    fs.power_loss(random.Random(3))
    assert fs.read(D / "keep") == b"k"
