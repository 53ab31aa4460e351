"""committed_prefix_digest: equal committed prefixes give equal digests; a flipped byte, a
missing batch or a different upper bound change it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from storage_helpers import Clock, crash, make_batch, small_config
from tidelog.node.storage import CorruptLogError, PartitionLog
from tidelog.node.storage import digest as digest_module
from tidelog.node.storage.digest import committed_prefix_digest

CONFIG = small_config(segment_bytes_max=1024, batch_bytes_max=1024, index_interval_bytes=128)


def _fill(directory: Path, batches: list[bytes], *, roll_every: int | None = None) -> PartitionLog:
    log = PartitionLog.open(directory, CONFIG, now_ms=Clock())
    for i, batch in enumerate(batches):
        log.append(batch, term=1 + i // 10)
        if roll_every and i % roll_every == roll_every - 1:
            log._roll()  # segment boundaries differ between replicas; the digest must not care
    log.sync()
    return log


@pytest.fixture(params=[11, 12, 13], ids=lambda seed: f"seed{seed}")
def batches(request: pytest.FixtureRequest) -> list[bytes]:
    """Random batch sizes from a fixed seed, named in the test id (replay: pytest -k seed12)."""
    rng = random.Random(request.param)
    return [make_batch(records=rng.randint(1, 4), value_bytes=rng.randint(1, 90), tag=i)
            for i in range(40)]


def test_logs_with_the_same_batches_give_the_same_digest(tmp_path: Path, batches, monkeypatch
                                                         ) -> None:
    monkeypatch.setattr(digest_module, "DIGEST_READ_BYTES_MAX", 300)  # many read steps
    a = _fill(tmp_path / "a", batches)
    b = _fill(tmp_path / "b", batches, roll_every=7)
    assert a.segment_base_offsets != b.segment_base_offsets
    end = a.log_end_offset - 1
    assert committed_prefix_digest(a, end) == committed_prefix_digest(b, end)
    # a prefix that stops inside a batch covers the batches before it only
    wide = next(h for h in a.iter_headers(0) if h.last_offset > h.base_offset)
    assert committed_prefix_digest(a, wide.base_offset) == \
        committed_prefix_digest(b, wide.base_offset - 1)
    assert committed_prefix_digest(a, wide.base_offset) != \
        committed_prefix_digest(a, wide.last_offset)
    # appending past the prefix does not change it
    a.append(make_batch(tag=99), term=9)
    assert committed_prefix_digest(a, end) == committed_prefix_digest(b, end)


def test_one_missing_batch_changes_the_digest(tmp_path: Path, batches) -> None:
    a = _fill(tmp_path / "a", batches)
    b = _fill(tmp_path / "b", batches[:-1])
    upto = a.log_end_offset - 1
    assert committed_prefix_digest(a, upto) != committed_prefix_digest(b, upto)


def test_one_flipped_byte_changes_the_digest_or_is_refused(tmp_path: Path, batches) -> None:
    """A flipped stored byte fails its checksum, so the digest refuses to vouch for it; a batch
    that differs in a checksummed field but is intact (another term) changes the digest."""
    a = _fill(tmp_path / "a", batches)
    upto = a.log_end_offset - 1
    good = committed_prefix_digest(a, upto)
    b = PartitionLog.open(tmp_path / "b", CONFIG, now_ms=Clock())
    for i, batch in enumerate(batches):
        b.append(batch, term=1 + i // 10 + (1 if i == 25 else 0) + (1 if i > 25 else 0))
    assert committed_prefix_digest(b, upto) != good
    crash(a)
    segment = sorted((tmp_path / "a").glob("*.log"))[0]
    data = bytearray(segment.read_bytes())
    data[100] ^= 0x01
    segment.write_bytes(bytes(data))
    reopened = PartitionLog.open(tmp_path / "a", CONFIG, now_ms=Clock())
    with pytest.raises(CorruptLogError):
        committed_prefix_digest(reopened, upto)


def test_from_offset_compares_replicas_whose_log_starts_differ(tmp_path: Path, batches) -> None:
    a = _fill(tmp_path / "a", batches, roll_every=5)
    b = _fill(tmp_path / "b", batches, roll_every=5)
    upto = a.log_end_offset - 1
    headers = list(a.iter_headers(0))
    cut = headers[12]
    assert b.truncate_prefix(cut.base_offset) and b.log_start_offset == cut.base_offset
    assert committed_prefix_digest(a, upto) != committed_prefix_digest(b, upto)
    assert committed_prefix_digest(a, upto, from_offset=cut.base_offset) == \
        committed_prefix_digest(b, upto, from_offset=cut.base_offset)
    # a start inside a batch: that batch is left out on both sides
    inside = next(h for h in headers[13:] if h.last_offset > h.base_offset)
    assert committed_prefix_digest(a, upto, from_offset=inside.base_offset + 1) == \
        committed_prefix_digest(b, upto, from_offset=inside.last_offset + 1)
