"""producers.snapshot (node/producer_snapshot.py): restoring the snapshot taken at a retention
cut and replaying the batches after it gives the table that replaying the whole log gives, for
random histories of several producers (epoch bumps, more batches than the table keeps); the
file round-trips, and a damaged one is ignored rather than trusted."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tidelog.node.producer_snapshot import (
    PRODUCER_SNAPSHOT_FILE,
    ProducerSnapshot,
    read_snapshot,
    write_snapshot,
)
from tidelog.node.producer_state import ProducerStateTable
from tidelog.proto.batch import BatchHeader, decode_header, encode_batch


def _history(rng: random.Random, batches: int) -> list[tuple[BatchHeader, int]]:
    """(header, base offset) of a log written by three idempotent producers."""
    seq = {pid: 0 for pid in (7, 8, 9)}
    epoch = dict.fromkeys(seq, 0)
    out, offset = [], 0
    for _ in range(batches):
        pid = rng.choice(list(seq))
        if rng.random() < 0.05:
            epoch[pid], seq[pid] = epoch[pid] + 1, 0
        count = rng.randint(1, 3)
        header = decode_header(encode_batch(
            [(None, b"v", (), 1) for _ in range(count)], producer_id=pid,
            producer_epoch=epoch[pid], base_sequence=seq[pid]))
        out.append((header, offset))
        seq[pid] += count
        offset += count
    return out


def _replayed(history: list[tuple[BatchHeader, int]], start: int = 0,
              table: ProducerStateTable | None = None) -> ProducerStateTable:
    table = table or ProducerStateTable()
    for header, base in history:
        if base >= start:
            table.record(header, base, term=1)
    return table


@pytest.mark.parametrize("seed", range(20))
def test_snapshot_then_replay_equals_the_full_replay(seed: int, tmp_path: Path) -> None:
    print(f"seed {seed}")
    rng = random.Random(seed)
    history = _history(rng, rng.randint(1, 60))
    full = _replayed(history)
    cut = rng.choice([base for _, base in history])  # retention cuts at batch boundaries
    write_snapshot(tmp_path, ProducerSnapshot(cut, full.snapshot_below(cut)))
    snapshot = read_snapshot(tmp_path)
    assert snapshot is not None and snapshot.start == cut
    restored = ProducerStateTable()
    restored.restore(snapshot.producers)
    assert _replayed(history, cut, restored)._producers == full._producers


def test_a_damaged_snapshot_is_ignored(tmp_path: Path) -> None:
    write_snapshot(tmp_path, ProducerSnapshot(5, {}))
    path = tmp_path / PRODUCER_SNAPSHOT_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert read_snapshot(tmp_path) is None
    assert read_snapshot(tmp_path / "absent") is None
