"""Random appends, reads, truncations, rolls, retention and reopens agree with an in-memory model.

The model is a list of (base_offset, last_offset, term, batch bytes): the dumb oracle of the log.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from storage_helpers import crash, make_batch, small_config
from tidelog.node.storage import (
    NotOnBatchBoundaryError,
    OffsetOutOfOrderError,
    OffsetOutOfRangeError,
    PartitionLog,
)
from tidelog.proto.batch import iter_batches, stamp


class LogMachine(RuleBasedStateMachine):
    @initialize(segment_bytes=st.sampled_from([1024, 2048, 4096]),
                interval=st.sampled_from([64, 512, 4096]))
    def setup(self, segment_bytes: int, interval: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tidelog-model-"))
        self.config = small_config(segment_bytes_max=segment_bytes, batch_bytes_max=1024,
                                   index_interval_bytes=interval)
        self.now = 1_000_000
        self.log = PartitionLog.open(self.dir, self.config, now_ms=lambda: self.now)
        self.model: list[tuple[int, int, int, bytes]] = []
        self.start = 0
        self.end = 0
        self.term = 1

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

    @rule()
    def sync(self) -> None:
        assert self.log.sync() == self.end
        assert self.log.durable_end_offset == self.end

    @rule()
    def close_and_reopen(self) -> None:
        self.log.close()
        self.log = PartitionLog.open(self.dir, self.config, now_ms=lambda: self.now)
        assert self.log.recovery.clean, self.log.recovery

    @rule()
    def crash_and_reopen(self) -> None:
        # Nothing was lost from the page cache (a process crash), so everything comes back.
        crash(self.log)
        self.log = PartitionLog.open(self.dir, self.config, now_ms=lambda: self.now)
        assert not self.log.recovery.truncated and not self.log.recovery.corrupt

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
