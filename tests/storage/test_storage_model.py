"""Random appends, reads, truncations, rolls, retention, crashes, power losses agree with a model.

The model is a list of (base_offset, last_offset, term, batch bytes): the dumb oracle of the log.

`LogMachine` runs on the real file system and models process crashes (the page cache survives, so
nothing may be lost). `PowerLossMachine` runs the same rules on SimFileSystem and adds power
losses and failing fsyncs; after each power loss the reopened log must
(a) hold every batch below the durable end the log had reported, byte for byte,
(b) hold nothing else but batches that were really appended at those offsets (no invented or
    garbled batch is ever served), and
(c) open without error (only unsynced data was lost);
and after bit rot in durable data, reopening with DamagePolicy.QUARANTINE must keep exactly the
batches before the damaged one.
Each power loss draws a seed for SimFileSystem.power_loss; a failing example lists the seeds in
its steps, and hypothesis prints the example's own seed and a @reproduce_failure line.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, note, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from storage_helpers import CutsPowerAfter, PowerCut, crash, make_batch, small_config
from tidelog.node.sim.simfs import SimFileSystem
from tidelog.node.storage import (
    OS_FS,
    DamagePolicy,
    DiskFullError,
    FileSystem,
    LogClosedError,
    NotOnBatchBoundaryError,
    OffsetOutOfOrderError,
    OffsetOutOfRangeError,
    PartitionLog,
    StorageError,
    StorageIOError,
)
from tidelog.node.storage.segment import Segment
from tidelog.proto.batch import BatchHeader, iter_batches, stamp


def _note(message: str) -> None:
    """hypothesis.note inside a hypothesis run (shown with a failing example), else print."""
    if currently_in_test_context():
        note(message)
    else:
        print(message)


class LogMachine(RuleBasedStateMachine):
    fs: FileSystem = OS_FS

    @initialize(segment_bytes=st.sampled_from([1024, 2048, 4096]),
                interval=st.sampled_from([64, 512, 4096]))
    def setup(self, segment_bytes: int, interval: int) -> None:
        self.dir = self._make_directory()
        self.config = small_config(segment_bytes_max=segment_bytes, batch_bytes_max=1024,
                                   index_interval_bytes=interval)
        self.now = 1_000_000
        self.index_files_may_be_missing = False
        self.log = self._open()
        self.model: list[tuple[int, int, int, bytes]] = []
        self.start = 0
        self.end = 0
        self.term = 1

    def _make_directory(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="tidelog-model-"))

    def _open(self, **kwargs: object) -> PartitionLog:
        return PartitionLog.open(self.dir, self.config, now_ms=lambda: self.now, fs=self.fs,
                                 **kwargs)  # type: ignore[arg-type]

    def teardown(self) -> None:
        if hasattr(self, "log"):
            crash(self.log)
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------------------- actions

    @rule(records=st.integers(1, 8), value_bytes=st.integers(0, 100),
          bump_term=st.booleans(), ts=st.integers(0, 10_000))
    def append(self, records: int, value_bytes: int, bump_term: bool, ts: int) -> None:
        if bump_term:
            self.term += 1
        batch = make_batch(records, value_bytes, timestamp_ms=ts, tag=self.end)
        info = self.log.append(batch, term=self.term)
        assert info.base_offset == self.end
        stamped = stamp(batch, base_offset=self.end, term=self.term)
        self.model.append((self.end, info.last_offset, self.term, stamped))
        self.end = info.last_offset + 1
        self._appended(stamped, self.model[-1][0])

    def _appended(self, stamped: bytes, base_offset: int) -> None:
        """Hook: PowerLossMachine remembers every batch ever written at each offset."""

    @rule(data=st.data())
    def follower_append_checks_offsets(self, data: st.DataObject) -> None:
        wrong = data.draw(st.integers(0, self.end + 3).filter(lambda x: x != self.end))
        try:
            self.log.append(make_batch(), base_offset=wrong, term=self.term)
        except OffsetOutOfOrderError:
            pass
        else:
            raise AssertionError("append at a wrong base offset was accepted")

    @rule(data=st.data(), max_bytes=st.integers(1, 3000))
    def read(self, data: st.DataObject, max_bytes: int) -> None:
        offset = data.draw(st.integers(max(0, self.start - 2), self.end + 2), label="offset")
        if not self.start <= offset <= self.end:
            try:
                self.log.read(offset, max_bytes)
            except OffsetOutOfRangeError:
                return
            raise AssertionError(f"read at {offset} outside [{self.start}, {self.end}]")
        got = self.log.read(offset, max_bytes)
        if offset == self.end:
            assert got == b""
            return
        first = next(i for i, (_, last, _, _) in enumerate(self.model) if last >= offset)
        headers = [h for _, h in iter_batches(got)]
        assert headers, "a read inside the log returns at least one batch"
        expected = b"".join(b for _, _, _, b in self.model[first: first + len(headers)])
        assert got == expected
        assert len(headers) == 1 or len(got) <= max_bytes

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate_after(self, data: st.DataObject) -> None:
        visible = [m for m in self.model if m[1] >= self.start]
        choices = [m[1] for m in visible] + [self.start - 1]
        offset = data.draw(st.sampled_from(choices), label="truncate_after")
        self.log.truncate_after(offset)
        if offset == self.start - 1:
            self.model = []
            self.end = self.start
        else:
            self.model = [m for m in self.model if m[1] <= offset]
            self.end = offset + 1

    @precondition(lambda self: any(m[1] > m[0] for m in self.model))
    @rule(data=st.data())
    def truncate_inside_a_batch_is_refused(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from([m for m in self.model if m[1] > m[0]]))
        if batch[1] - 1 < self.start:
            return  # truncate_after(log_start - 1) is legal: it keeps nothing
        try:
            self.log.truncate_after(batch[1] - 1)
        except NotOnBatchBoundaryError:
            return
        raise AssertionError("truncation inside a batch was accepted")

    @rule(data=st.data())
    def truncate_prefix(self, data: st.DataObject) -> None:
        new_start = data.draw(st.integers(self.start, self.end), label="new_start")
        self.log.truncate_prefix(new_start)
        self.start = max(self.start, new_start)

    @rule(start=st.integers(0, 500))
    def reset(self, start: int) -> None:
        self.log.reset(start)
        self.model, self.start, self.end = [], start, start
        self._was_reset()

    def _was_reset(self) -> None:
        """Hook: PowerLossMachine forgets what was written before a reset."""

    @rule(keep_bytes=st.integers(1, 5000))
    def retention_by_size(self, keep_bytes: int) -> None:
        config = small_config(segment_bytes_max=self.config.segment_bytes_max,
                              batch_bytes_max=1024, retention_bytes=keep_bytes,
                              index_interval_bytes=self.config.index_interval_bytes)
        self.log.config = config
        self.log.apply_retention(self.now)
        self.log.config = self.config
        assert self.log.log_start_offset >= self.start
        self.start = self.log.log_start_offset

    @rule(ms=st.sampled_from([1, 1_000, 8 * 24 * 3_600_000]))
    def time_passes(self, ms: int) -> None:
        """Moves the clock: the recovery point moves at most once a second, and a week rolls
        the active segment by age at the next append."""
        self.now += ms

    @rule()
    def sync(self) -> None:
        assert self.log.sync() == self.end
        assert self.log.durable_end_offset == self.end

    @rule()
    def close_and_reopen(self) -> None:
        self.log.close()
        self.log = self._open()
        report = self.log.recovery
        if self.index_files_may_be_missing:  # a full disk at a roll: rebuilt by this open
            report = dataclasses.replace(report, rebuilt_indexes=())
            self.index_files_may_be_missing = False
        assert report.clean, report

    @rule()
    def crash_and_reopen(self) -> None:
        # Nothing was lost from the page cache (a process crash), so everything comes back.
        self._crash()
        self.log = self._open()
        assert not self.log.recovery.truncated and not self.log.recovery.corrupt

    def _crash(self) -> None:
        crash(self.log)

    # ---------------------------------------------------------------------------- invariants

    @invariant()
    def offsets_match(self) -> None:
        if not hasattr(self, "log"):
            return
        assert self.log.log_start_offset == self.start
        assert self.log.log_end_offset == self.end
        assert self.log.durable_end_offset <= self.end

    @invariant()
    def terms_match(self) -> None:
        if not hasattr(self, "log"):
            return
        visible = [m for m in self.model if m[1] >= self.start]
        for base, last, term, _ in visible[-3:]:
            assert self.log.term_at(last) == term
            assert self.log.batch_header_at(max(base, self.start)).last_offset == last
        if visible:
            assert self.log.last_term == visible[-1][2]
        headers = list(self.log.iter_headers(self.start))
        assert [(h.base_offset, h.last_offset) for h in headers] == [
            (b, last) for b, last, _, _ in visible]


LogMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
TestLogAgreesWithModel = LogMachine.TestCase


class PowerLossMachine(LogMachine):
    """The same rules on SimFileSystem, plus power losses and a failing fsync."""

    DATA = Path("/data")

    def _make_directory(self) -> Path:
        self.fs = CutsPowerAfter()
        self.fs.mkdir(self.DATA)
        self.fs.fsync_directory(Path("/"))
        self.written: dict[int, set[bytes]] = {}  # base offset -> every batch appended there
        self.power_losses = 0
        return self.DATA / "p0"

    def teardown(self) -> None:
        pass  # nothing on the real disk

    def _appended(self, stamped: bytes, base_offset: int) -> None:
        self.written.setdefault(base_offset, set()).add(stamped)

    def _was_reset(self) -> None:
        self.written.clear()  # a reset is durable before it returns: nothing older comes back

    def _crash(self) -> None:
        crash(self.log)
        self.fs.crash()

    @rule(seed=st.integers(0, 2**32 - 1))
    def power_loss_and_reopen(self, seed: int) -> None:
        self._power_loss(seed, durable_end=self.log.durable_end_offset, starts={self.start})

    @rule(op=st.sampled_from(["append", "sync", "truncate_after", "truncate_prefix", "reset",
                              "retention", "close"]),
          changes=st.one_of(st.integers(0, 3), st.integers(0, 12)),
          seed=st.integers(0, 2**32 - 1), data=st.data())
    def power_cut_during(self, op: str, changes: int, seed: int, data: st.DataObject) -> None:
        """Power fails after `changes` file-system changes of one operation (between any two
        of its writes, fsyncs, renames and unlinks): what it had made durable must hold."""
        durable, start, end = self.log.durable_end_offset, self.start, self.end
        _note(f"power cut during {op} after {changes} changes")
        self.fs.armed_after = changes
        target = None
        try:
            if op == "append":
                self.append(records=data.draw(st.integers(1, 8)), value_bytes=60,
                            bump_term=data.draw(st.booleans()), ts=0)
            elif op == "sync":
                self.sync()
            elif op == "truncate_after" and self.model:
                visible = [m[1] for m in self.model if m[1] >= self.start]
                target = data.draw(st.sampled_from([*visible[:-1], self.start - 1]))
                self.log.truncate_after(target)
                self.model = [m for m in self.model if m[1] <= target]
                self.end = max(target + 1, self.start)
            elif op == "truncate_prefix":
                target = data.draw(st.integers(self.start, self.end))
                self.log.truncate_prefix(target)
                self.start = max(self.start, target)
            elif op == "reset":
                target = data.draw(st.integers(0, 500))
                self.reset(start=target)
            elif op == "retention":
                self.retention_by_size(keep_bytes=data.draw(st.integers(1, 600)))
            elif op == "close":
                self.log.close()
            done = True
        except PowerCut:
            done = False
        finally:
            self.fs.armed_after = None
        if done:
            self._power_loss(seed, durable_end=self.log.durable_end_offset, starts={self.start})
        elif op == "truncate_after":
            assert target is not None
            self._power_loss(seed, durable_end=min(durable, target + 1), starts={start})
        elif op == "reset":
            # Either not begun (the old log, whole) or finished by open (empty at the target).
            self._power_loss(seed, durable_end=durable, starts={start, target},
                             durable_end_if_moved=target)
        elif op in ("truncate_prefix", "retention"):
            self._power_loss(seed, durable_end=durable, starts=set(range(start, end + 1)))
        else:
            self._power_loss(seed, durable_end=durable, starts={start})

    def _power_loss(self, seed: int, *, durable_end: int, starts: set[int | None],
                    durable_end_if_moved: int | None = None) -> None:
        _note(f"power loss #{self.power_losses} with seed {seed}, durable end {durable_end}, "
             f"log end {self.end}")
        self.power_losses += 1
        crash(self.log)
        self.fs.power_loss(random.Random(seed))
        self.log = self._open()  # (c): raises if it cannot open
        start = self.log.log_start_offset
        assert start in starts, f"log start {start}, expected one of {sorted(starts)[:5]}"
        empty_at_target = (start, self.log.log_end_offset) == (durable_end_if_moved,) * 2
        if durable_end_if_moved is not None and (start != self.start or empty_at_target):
            # An interrupted reset that open() finished: empty at its target (which may be
            # the old start too); otherwise the old log, checked below.
            assert empty_at_target, "a reset that moved the start leaves an empty log"
            durable_end = durable_end_if_moved
            self.model = []
        survivors = self._read_all()
        wanted = [m for m in self.model if m[1] >= start and m[1] < durable_end]
        assert survivors[: len(wanted)] == [(m[0], m[3]) for m in wanted], \
            f"(a) batches below the durable end {durable_end} lost or changed (seed {seed})"
        for base, batch in survivors[len(wanted):]:
            assert batch in self.written.get(base, ()), \
                f"(b) batch at {base} was never appended there (seed {seed})"
        self.model = [(base, h.last_offset, h.term, batch) for (base, batch), (_, h) in
                      zip(survivors, (next(iter_batches(b)) for _, b in survivors), strict=True)]
        self.start = start
        self.end = self.log.log_end_offset
        self.term = max(self.term, self.log.last_term)

    @precondition(lambda self: self.log.durable_end_offset < self.end)
    @rule()
    def failed_sync_then_restart(self) -> None:
        """The disk fails the fsync of the active segment: sync() must raise and fence the log;
        the restarted process must not report that data durable (Linux marks the failed pages
        clean, so a second fsync 'succeeds' without writing them)."""
        self.fs.fail_next_fsync(self.log._segments[-1].path)
        try:
            self.log.sync()
        except StorageIOError:
            pass
        else:
            raise AssertionError("sync() returned although the disk failed the fsync")
        try:
            self.log.append(make_batch())
        except LogClosedError:
            pass
        else:
            raise AssertionError("a log whose fsync failed accepted an append")
        self._crash()
        self.log = self._open()
        survivors = self._read_all()
        self.model = [(base, h.last_offset, h.term, batch) for (base, batch), (_, h) in
                      zip(survivors, (next(iter_batches(b)) for _, b in survivors), strict=True)]
        self.end = self.log.log_end_offset
        self.term = max(self.term, self.log.last_term)

    @precondition(lambda self: self.log.durable_end_offset < self.end)
    @rule()
    def failed_fsync_then_killed_before_the_fence(self) -> None:
        """The fdatasync of the active segment fails and the process dies at once (kill -9
        before sync() could fence and cut): the pages that failed stay in the cache, marked
        clean. The next process must not call them durable on a plain, 'successful' fsync."""
        fd = self.log._segments[-1].dup_writer()
        assert fd is not None
        self.fs.fail_next_fsync(self.log._segments[-1].path)
        try:
            self.fs.fdatasync(fd)
        except OSError:
            pass
        else:
            raise AssertionError("the armed fsync failure did not fire")
        self._crash()
        self.log = self._open()
        assert self.log.log_end_offset == self.end, "a process crash loses nothing from the cache"

    @rule(room=st.integers(0, 300), records=st.integers(1, 8), value_bytes=st.integers(0, 100))
    def append_on_a_full_disk(self, room: int, records: int, value_bytes: int) -> None:
        """ENOSPC midway through a batch: DiskFullError, and the log is as before (the partial
        write was cut back), or the batch fitted."""
        self.fs.capacity_bytes = self.fs.used_bytes() + room
        try:
            self.append(records=records, value_bytes=value_bytes, bump_term=False, ts=0)
        except DiskFullError:
            pass
        finally:
            self.fs.capacity_bytes = None
            self.index_files_may_be_missing = True

    @precondition(lambda self: self.end > self.start)
    @rule(seed=st.integers(0, 2**32 - 1), in_index=st.booleans())
    def bit_rot_then_quarantine(self, seed: int, in_index: bool) -> None:
        """A bit flips in durable data (a segment or its index); a replica reopens with
        QUARANTINE and verify_sealed: the log must be exactly the batches before the damaged
        one, byte for byte (all of them if only an index was hit), then reopen clean."""
        self.log.close()
        rng = random.Random(seed)
        names = [n for n in self.fs.listdir(self.dir)
                 if n.endswith(".index" if in_index else ".log")
                 and (self.fs.read_durable(self.dir / n) or b"")]
        if not names:
            self.log = self._open()
            return
        name = rng.choice(names)
        # Where each batch of the file lies (the file is closed: cache and disk agree).
        extents = [(pos, h) for pos, h in _batch_extents(self.fs.read(self.dir / name))] \
            if name.endswith(".log") else []
        bit = self.fs.flip_bit(self.dir / name, rng)
        _note(f"bit rot in {name} at bit {bit} (seed {seed})")
        self.log = self._open(on_damage=DamagePolicy.QUARANTINE, verify_sealed=True)
        survivors = self._read_all()
        visible = [(m[0], m[3]) for m in self.model if m[1] >= self.start]
        assert survivors == visible[: len(survivors)], "a prefix, byte for byte"
        if name.endswith(".log"):
            damaged = next((h.base_offset for pos, h in extents
                            if pos <= bit // 8 < pos + h.size), None)
            assert damaged is not None, "the file holds whole batches only"
            # A damaged batch wholly below the log start still ends the walk: the log then
            # restarts empty at the start (the replica refills from its peers).
            kept = sum(1 for b, _ in visible if b < damaged)
            assert len(survivors) == kept, (len(survivors), kept, damaged)
            report = self.log.recovery
            assert report.cut_from_offset == damaged, report
            assert report.quarantined, report
        else:
            assert len(survivors) == len(visible)
        self.model = [m for m in self.model if m[1] < self.log.log_end_offset]
        self.end = self.log.log_end_offset
        self.log.close()
        self.log = self._open()
        assert not (self.log.recovery.corrupt or self.log.recovery.truncated)

    def _read_all(self) -> list[tuple[int, bytes]]:
        out = []
        offset = self.log.log_start_offset
        while offset < self.log.log_end_offset:
            data = self.log.read(offset, 1 << 20)
            for _, header in iter_batches(data):
                out.append((header.base_offset, data[:header.size]))
                data = data[header.size:]
                offset = header.last_offset + 1
        return out


def _batch_extents(data: bytes) -> list[tuple[int, BatchHeader]]:
    out, position = [], 0
    for _, header in iter_batches(data):
        out.append((position, header))
        position += header.size
    assert position == len(data)
    return out


POWER_LOSS_SETTINGS = settings(max_examples=500, stateful_step_count=50, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
PowerLossMachine.TestCase.settings = POWER_LOSS_SETTINGS
TestLogSurvivesPowerLoss = PowerLossMachine.TestCase


# ------------------------------------------------------------------------------ planted bugs

PLANTED_SETTINGS = settings(max_examples=200, stateful_step_count=40, deadline=None,
                            phases=[Phase.generate], database=None,
                            suppress_health_check=list(HealthCheck))


def _assert_caught(max_examples: int = PLANTED_SETTINGS.max_examples) -> None:
    """The model fails: a broken claim (AssertionError) or a log that cannot open (c)."""
    with pytest.raises((AssertionError, StorageError, Flaky)):
        run_state_machine_as_test(PowerLossMachine, settings=settings(
            PLANTED_SETTINGS, max_examples=max_examples))


def test_planted_bug_sync_that_skips_the_fsync_is_caught(monkeypatch) -> None:
    """sync() publishes the durable end without fsyncing (a node that skips fsync)."""
    monkeypatch.setattr(Segment, "dup_writer", lambda self: None)
    _assert_caught()


def test_planted_bug_disk_that_ignores_fdatasync_is_caught(monkeypatch) -> None:
    """A lying disk (or tmpfs under a chaos run): fdatasync returns and writes nothing."""
    monkeypatch.setattr(SimFileSystem, "fdatasync", lambda self, fd: None)
    _assert_caught()


def test_planted_bug_open_that_only_fsyncs_the_surviving_tail_is_caught(monkeypatch) -> None:
    """open() fsyncs what survived in the cache without rewriting it: after a failed fsync
    whose process died before fencing, the clean-but-unwritten pages are called durable."""
    monkeypatch.setattr(Segment, "rewrite_from", lambda self, position: None)
    _assert_caught()


def test_planted_bug_truncation_that_keeps_the_recovery_point_is_caught(monkeypatch) -> None:
    """truncate_after cuts below the recovery point without lowering it first: after a power
    loss the shorter log looks like lost acknowledged data and open refuses it (c). A directed
    run of the model's own rules (random runs need a durable point, a cut below it and a power
    loss in a row, which a bounded budget finds only sometimes)."""
    real = PartitionLog._write_meta

    def never_lowers(self: PartitionLog, *, recovery_point: int | None = None) -> None:
        if recovery_point is not None and recovery_point < self._recovery_point:
            recovery_point = None
        real(self, recovery_point=recovery_point)

    def one_run(seed: int) -> bool:
        machine = PowerLossMachine()
        machine.setup(segment_bytes=4096, interval=64)
        for _ in range(3):
            machine.append(records=1, value_bytes=10, bump_term=False, ts=0)
        machine.close_and_reopen()  # the recovery point is now the log end
        machine.log.truncate_after(machine.model[0][1])
        machine.model, machine.end = machine.model[:1], machine.model[0][1] + 1
        try:
            machine.power_loss_and_reopen(seed=seed)
        except (AssertionError, StorageError):
            return True
        return False

    assert not any(one_run(seed) for seed in range(20)), "the real code passes this run"
    monkeypatch.setattr(PartitionLog, "_write_meta", never_lowers)
    caught = [seed for seed in range(20) if one_run(seed)]
    assert caught, "the planted bug was not caught"


# Not a planted bug here: a fence that keeps the failed tail (no Segment.discard_unsynced).
# Since open() rewrites the surviving tail before its fsync, the model cannot tell; the cut
# itself is pinned by tests/storage/test_storage_power_loss.py.
