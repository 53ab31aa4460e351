"""LazyFS on real FUSE mounts: what survives a power cut is exactly what was fsynced.

Each test mounts a fresh LazyFS (its own process, `python -m tidelog.chaos.lazyfs`) under the
test's temp dir and always unmounts it. Needs root, /dev/fuse and fusermount3 (Debian: fuse3),
as CI has; the tests skip with the reason otherwise.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tidelog.chaos.lazyfs import LazyMount, lazyfs_unavailable_reason

SKIP = lazyfs_unavailable_reason()
pytestmark = [pytest.mark.skipif(SKIP is not None, reason=f"no LazyFS here: {SKIP}"),
              pytest.mark.timeout(120)]
PAGE = 4096


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[LazyMount]:
    mount = LazyMount(tmp_path / "backing", tmp_path / "mnt", control=tmp_path / "ctl.sock",
                      log_path=tmp_path / "lazyfs.log")
    mount.start()
    try:
        yield mount
    finally:
        mount.stop()
        assert not mount.mounted


def _write(path: Path, data: bytes, *, fsync: bool, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_file(lazy: LazyMount, name: str, data: bytes) -> Path:
    path = lazy.mountpoint / name
    _write(path, data, fsync=True)
    _fsync_dir(lazy.mountpoint)
    return path


def test_a_write_without_fsync_is_read_back_then_lost_at_a_power_cut(lazy: LazyMount) -> None:
    path = _durable_file(lazy, "f", b"durable\n")
    _write(path, b"+unsynced", fsync=False, flags=os.O_APPEND)
    assert path.read_bytes() == b"durable\n+unsynced"  # the page cache serves it
    assert path.stat().st_size == 17
    assert (lazy.backing / "f").read_bytes() == b"durable\n"  # not on the "disk"
    report = lazy.cut()
    assert report["files"] == 1 and report["dropped_bytes"] == PAGE
    assert path.stat().st_size == 8  # the kernel's cached size has expired during the cut
    assert path.read_bytes() == b"durable\n"


def test_close_does_not_make_a_write_durable_but_fsync_does(lazy: LazyMount) -> None:
    closed = _durable_file(lazy, "closed", b"a")
    synced = _durable_file(lazy, "synced", b"a")
    _write(closed, b"b" * 10_000, fsync=False)
    _write(synced, b"b" * 10_000, fsync=True)
    lazy.cut()
    assert closed.read_bytes() == b"a"
    assert synced.read_bytes() == b"b" * 10_000


def test_fdatasync_through_another_descriptor_makes_the_data_durable(lazy: LazyMount) -> None:
    path = _durable_file(lazy, "f", b"")
    _write(path, b"x" * 5000, fsync=False)
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.close(fd)
    lazy.cut()
    assert path.read_bytes() == b"x" * 5000


def test_a_new_file_is_lost_without_fsync_of_its_directory(lazy: LazyMount) -> None:
    _write(lazy.mountpoint / "fsynced-file-only", b"data", fsync=True)
    lost = lazy.cut()
    assert lost["undone_names"] == 1
    assert not (lazy.mountpoint / "fsynced-file-only").exists()
    _write(lazy.mountpoint / "kept", b"data", fsync=True)
    _fsync_dir(lazy.mountpoint)
    lazy.cut()
    assert (lazy.mountpoint / "kept").read_bytes() == b"data"


def test_a_new_directory_is_lost_with_its_files_unless_its_parent_is_fsynced(
        lazy: LazyMount) -> None:
    for parent in ("p1", "p2"):
        (lazy.mountpoint / parent).mkdir()
    _fsync_dir(lazy.mountpoint)
    for parent, sync_parent in (("p1", False), ("p2", True)):
        d = lazy.mountpoint / parent / "partition"
        d.mkdir()
        _write(d / "segment", b"records", fsync=True)
        _fsync_dir(d)  # the file's name is durable in d ...
        if sync_parent:
            _fsync_dir(d.parent)  # ... and d's name in its parent
    lazy.cut()
    assert os.listdir(lazy.mountpoint / "p1") == []
    assert (lazy.mountpoint / "p2" / "partition" / "segment").read_bytes() == b"records"


def test_rename_over_a_file_is_undone_until_the_directory_is_fsynced(lazy: LazyMount) -> None:
    """The atomic-replace pattern: temp file, fsync, rename, fsync of the directory."""
    target = _durable_file(lazy, "state", b"old")
    for sync_dir, expect in ((False, b"old"), (True, b"new")):
        tmp = lazy.mountpoint / "state.tmp"
        _write(tmp, b"new", fsync=True)
        os.rename(tmp, target)
        assert target.read_bytes() == b"new"
        if sync_dir:
            _fsync_dir(lazy.mountpoint)
        lazy.cut()
        assert target.read_bytes() == expect
        assert not tmp.exists()


def test_a_rename_across_directories_needs_both_directories_fsynced(lazy: LazyMount) -> None:
    for d in ("a", "b"):
        (lazy.mountpoint / d).mkdir()
    _fsync_dir(lazy.mountpoint)
    for synced, expect in ((("b",), "a"), (("a", "b"), "b")):
        src = _durable_file(lazy, "a/x", b"x") if expect == "a" else lazy.mountpoint / "a" / "x"
        _fsync_dir(lazy.mountpoint / "a")
        os.rename(src, lazy.mountpoint / "b" / "x")
        for d in synced:
            _fsync_dir(lazy.mountpoint / d)
        lazy.cut()
        assert (lazy.mountpoint / expect / "x").read_bytes() == b"x", synced
        other = "b" if expect == "a" else "a"
        assert not (lazy.mountpoint / other / "x").exists(), synced


def test_rename_of_an_unsynced_file_keeps_only_what_was_fsynced(lazy: LazyMount) -> None:
    """The lazy-rename bug pattern (issue 11 item 6): rename without fsync of the data."""
    target = _durable_file(lazy, "state", b"old")
    tmp = lazy.mountpoint / "state.tmp"
    _write(tmp, b"new contents", fsync=False)
    os.rename(tmp, target)
    _fsync_dir(lazy.mountpoint)  # the rename is durable, the data is not
    lazy.cut()
    assert target.read_bytes() == b""


def test_unlink_is_undone_until_the_directory_is_fsynced(lazy: LazyMount) -> None:
    a = _durable_file(lazy, "a", b"1")
    b = _durable_file(lazy, "b", b"2")
    a.unlink()
    b.unlink()
    _fsync_dir(lazy.mountpoint)
    c = _durable_file(lazy, "c", b"3")
    c.unlink()
    assert not c.exists()
    lazy.cut()
    assert sorted(os.listdir(lazy.mountpoint)) == ["c"]
    assert c.read_bytes() == b"3"
    assert sorted(os.listdir(lazy.backing)) == [".lazyfs-grave", "c"]  # graves are hidden
    assert os.listdir(lazy.backing / ".lazyfs-grave") == []


def test_a_deleted_unsynced_file_is_forgotten_once_its_unlink_is_durable(
        lazy: LazyMount) -> None:
    path = lazy.mountpoint / "tmp"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    os.write(fd, b"t" * 3 * PAGE)
    _fsync_dir(lazy.mountpoint)
    path.unlink()
    assert lazy.stats()["pending_files"] == 1  # still open: readable through fd
    _fsync_dir(lazy.mountpoint)
    assert lazy.stats()["pending_files"] == 1
    os.close(fd)
    deadline = time.monotonic() + 5  # the kernel sends FUSE's release after close() returned
    while (stats := lazy.stats())["pending_files"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (stats["pending_files"], stats["pending_bytes"]) == (0, 0)
    assert lazy.cut()["undone_names"] == 0


def test_a_pending_truncation_is_lost_and_an_applied_one_kept(lazy: LazyMount) -> None:
    path = _durable_file(lazy, "f", b"z" * 3 * PAGE)
    os.truncate(path, 100)
    _write(path, b"q", fsync=False, flags=os.O_APPEND)
    assert path.read_bytes() == b"z" * 100 + b"q"
    lazy.cut()
    assert path.read_bytes() == b"z" * 3 * PAGE
    fd = os.open(path, os.O_RDWR)
    os.ftruncate(fd, 100)
    os.ftruncate(fd, 200)  # extension after truncation: zeros, not the old bytes
    assert os.pread(fd, 200, 0) == b"z" * 100 + bytes(100)
    os.fsync(fd)
    os.close(fd)
    lazy.cut()
    assert path.read_bytes() == b"z" * 100 + bytes(100)


def test_open_with_o_trunc_is_a_pending_truncation(lazy: LazyMount) -> None:
    path = _durable_file(lazy, "f", b"old contents")
    _write(path, b"new", fsync=False, flags=os.O_TRUNC)
    assert path.read_bytes() == b"new"
    lazy.cut()
    assert path.read_bytes() == b"old contents"
    _write(path, b"new", fsync=True, flags=os.O_TRUNC)
    lazy.cut()
    assert path.read_bytes() == b"new"


def test_a_torn_cut_keeps_a_page_aligned_prefix_of_the_unsynced_writes(lazy: LazyMount) -> None:
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"torn seed {seed}")
    path = _durable_file(lazy, "log", b"")
    data = bytes(random.Random(seed).randbytes(10 * PAGE + 123))
    fd = os.open(path, os.O_WRONLY)
    for i in range(0, len(data), 1000):  # appends that straddle page boundaries
        os.pwrite(fd, data[i:i + 1000], i)
    os.close(fd)
    report = lazy.cut(torn_seed=seed)
    kept = path.read_bytes()
    assert report["torn"] and report["kept_bytes"] == len(kept)
    assert data.startswith(kept), f"seed {seed}: not a prefix"
    assert len(kept) % PAGE == 0 or len(kept) == len(data), f"seed {seed}: {len(kept)}"
    assert report["kept_bytes"] + report["dropped_bytes"] >= len(data)


def test_a_descriptor_opened_before_the_cut_cannot_write_after_it(lazy: LazyMount) -> None:
    path = _durable_file(lazy, "f", b"before")
    fd = os.open(path, os.O_WRONLY)
    try:
        lazy.cut()
        with pytest.raises(OSError) as caught:
            os.pwrite(fd, b"from a dead process", 0)
        assert caught.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert path.read_bytes() == b"before"


def test_concurrent_writers_on_many_files_keep_exactly_their_fsynced_data(
        lazy: LazyMount) -> None:
    names = [f"seg{i}" for i in range(8)]
    for name in names:
        _durable_file(lazy, name, b"")
    synced_upto: dict[str, int] = {}
    chunk = b"r" * 1500

    def writer(name: str, rounds: int, sync_every: int) -> None:
        fd = os.open(lazy.mountpoint / name, os.O_WRONLY)
        try:
            for i in range(rounds):
                os.pwrite(fd, chunk, i * len(chunk))
                if (i + 1) % sync_every == 0:
                    os.fsync(fd)
                    synced_upto[name] = (i + 1) * len(chunk)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=writer, args=(n, 60, 7 + i)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name in names:
        assert (lazy.mountpoint / name).stat().st_size == 60 * len(chunk)
    lazy.cut()
    for name in names:
        assert (lazy.mountpoint / name).read_bytes() == chunk * (synced_upto[name] // len(chunk))


def test_reads_and_sizes_match_a_dumb_model_and_a_cut_returns_the_fsynced_state(
        lazy: LazyMount) -> None:
    """Random writes, truncates and fsyncs on three files, checked against plain bytearrays."""
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"model seed {seed}")
    rng = random.Random(seed)
    current: dict[str, bytearray] = {}
    durable: dict[str, bytes] = {}
    fds: dict[str, int] = {}
    for name in ("a", "b", "c"):
        _durable_file(lazy, name, b"")
        current[name], durable[name] = bytearray(), b""
        fds[name] = os.open(lazy.mountpoint / name, os.O_RDWR)
    try:
        for step in range(400):
            name = rng.choice("abc")
            fd, model = fds[name], current[name]
            op = rng.random()
            if op < 0.6:
                at = rng.randrange(0, len(model) + 3 * PAGE)
                data = rng.randbytes(rng.randrange(1, 3 * PAGE))
                os.pwrite(fd, data, at)
                model.extend(bytes(max(0, at + len(data) - len(model))))
                model[at:at + len(data)] = data
            elif op < 0.75:
                length = rng.randrange(0, len(model) + PAGE)
                os.ftruncate(fd, length)
                del model[length:]
                model.extend(bytes(length - len(model)))
            elif op < 0.9:
                os.fsync(fd)
                durable[name] = bytes(model)
            else:
                at = rng.randrange(0, len(model) + 1)
                assert os.pread(fd, 2 * PAGE, at) == bytes(model[at:at + 2 * PAGE]), \
                    f"seed {seed} step {step}"
            assert os.fstat(fd).st_size == len(model), f"seed {seed} step {step}"
    finally:
        for fd in fds.values():
            os.close(fd)
    for name in "abc":
        assert (lazy.mountpoint / name).read_bytes() == bytes(current[name]), f"seed {seed}"
    lazy.cut()
    for name in "abc":
        assert (lazy.mountpoint / name).read_bytes() == durable[name], f"seed {seed}"


def test_sync_makes_everything_durable(lazy: LazyMount) -> None:
    (lazy.mountpoint / "d").mkdir()
    _write(lazy.mountpoint / "d" / "f", b"data", fsync=False)
    lazy.sync()
    lazy.cut()
    assert (lazy.mountpoint / "d" / "f").read_bytes() == b"data"


def test_stop_unmounts_even_after_the_file_system_process_was_killed(tmp_path: Path) -> None:
    mount = LazyMount(tmp_path / "backing", tmp_path / "mnt", control=tmp_path / "ctl.sock",
                      log_path=tmp_path / "lazyfs.log", name="doomed")
    mount.start()
    try:
        assert mount.mounted
        mount._supervisor.get("doomed").kill()  # noqa: SLF001 - the crash under test
        mount._supervisor.get("doomed").wait(10)  # noqa: SLF001
    finally:
        mount.stop()
    assert not mount.mounted
    mounts = subprocess.run(["cat", "/proc/mounts"], capture_output=True, text=True).stdout
    assert str(tmp_path / "mnt") not in mounts
