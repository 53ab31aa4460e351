"""Log compaction in the storage engine (node/storage/compaction.py): latest record per key,
tombstones, offsets that never change, reads over gaps, crash safety, Raft entries unchanged."""

from __future__ import annotations

import random
from pathlib import Path

from tidelog.node.raft_log import PartitionRaftLog
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.node.storage.compaction import CompactionConfig, compact
from tidelog.proto.batch import Codec, decode_records, encode_batch, iter_batches

KEYS = 1000


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


def open_log(path: Path, clock: Clock) -> PartitionLog:
    config = LogConfig(segment_bytes_max=1024 * 1024, batch_bytes_max=1024 * 1024,
                       segment_ms_max=60_000)
    return PartitionLog.open(path, config, now_ms=clock)


def all_records(plog: PartitionLog) -> dict[int, tuple[bytes | None, bytes | None]]:
    """offset → (key, value) of every data record, read through the public read path."""
    out: dict[int, tuple[bytes | None, bytes | None]] = {}
    offset = plog.log_start_offset
    while offset < plog.log_end_offset:
        raw = plog.read(offset, 1 << 20)
        for pos, header in iter_batches(raw):
            if not header.is_control:
                for r in decode_records(raw[pos:pos + header.size]):
                    out[r.offset] = (r.key, r.value)
            offset = header.last_offset + 1
    return out


def write_updates(plog: PartitionLog, clock: Clock, rounds: int, *,
                  tombstone_keys: set[int] = frozenset(), seed: int = 7) -> dict[bytes, int]:
    """rounds × KEYS updates in batches of 100; returns key → offset of its latest update."""
    rng = random.Random(seed)
    latest: dict[bytes, int] = {}
    for round_ in range(rounds):
        keys = list(range(KEYS))
        rng.shuffle(keys)
        for start in range(0, KEYS, 100):
            chunk = keys[start:start + 100]
            last_round = round_ == rounds - 1
            batch = encode_batch([
                (b"key-%d" % k, None if last_round and k in tombstone_keys
                 else b"value-%d-%d" % (k, round_), (), clock.now_ms) for k in chunk],
                codec=Codec.LZ4 if start % 200 else Codec.NONE)
            info = plog.append(batch, term=1)
            for i, k in enumerate(chunk):
                latest[b"key-%d" % k] = info.base_offset + i
        clock.now_ms += 10
    return latest


def seal_everything(plog: PartitionLog, clock: Clock) -> None:
    """Age the active segment past segment.ms, then append one unrelated record: it rolls."""
    clock.now_ms += 61_000
    plog.append(encode_batch([(b"sentinel", b"s", (), clock.now_ms)]), term=1)


def test_100k_updates_over_1k_keys_compact_to_1k_live_records(tmp_path: Path) -> None:
    clock = Clock()
    plog = open_log(tmp_path / "log", clock)
    latest = write_updates(plog, clock, rounds=100)
    seal_everything(plog, clock)
    end, size_before = plog.log_end_offset, plog.size_bytes
    result = compact(plog, upto_offset=end, now_ms=clock.now_ms)
    assert result.records_before == 100_000 and result.records_after == KEYS
    records = all_records(plog)
    live = {o: kv for o, kv in records.items() if kv[0] != b"sentinel"}
    assert len(live) == KEYS
    # Every surviving record is its key's latest, at its original offset, with its value.
    assert {kv[0]: o for o, kv in live.items()} == latest
    assert all(kv[1] == b"value-%s-99" % kv[0][4:] for kv in live.values())
    assert plog.log_end_offset == end and plog.size_bytes < size_before / 20
    # A second pass finds nothing to do; the log reopens cleanly and reads the same.
    assert compact(plog, upto_offset=end, now_ms=clock.now_ms).segments_rewritten == 0
    plog.close()
    reopened = open_log(tmp_path / "log", clock)
    assert reopened.recovery.clean and all_records(reopened) == records


def test_tombstones_delete_their_key_and_expire_after_delete_retention(tmp_path: Path) -> None:
    clock = Clock()
    plog = open_log(tmp_path / "log", clock)
    write_updates(plog, clock, rounds=3, tombstone_keys=set(range(100)))
    seal_everything(plog, clock)
    config = CompactionConfig(delete_retention_ms=3_600_000)
    kept = compact(plog, upto_offset=plog.log_end_offset, now_ms=clock.now_ms, config=config)
    assert kept.tombstones_kept == 100 and kept.records_after == KEYS
    values = [kv for kv in all_records(plog).values() if kv[0] != b"sentinel"]
    assert sum(1 for _, v in values if v is None) == 100  # consumers still see the deletes
    later = compact(plog, upto_offset=plog.log_end_offset,
                    now_ms=clock.now_ms + 3_600_001, config=config)
    assert later.tombstones_dropped == 100
    values = [kv for kv in all_records(plog).values() if kv[0] != b"sentinel"]
    assert len(values) == KEYS - 100 and all(v is not None for _, v in values)


def test_offsets_terms_and_raft_entries_keep_their_positions(tmp_path: Path) -> None:
    clock = Clock()
    plog = open_log(tmp_path / "log", clock)
    write_updates(plog, clock, rounds=5)
    seal_everything(plog, clock)
    raft = PartitionRaftLog(plog)
    headers = list(plog.iter_headers(plog.log_start_offset))
    before = [(h.base_offset, h.last_offset, h.term) for h in headers]
    compact(plog, upto_offset=plog.log_end_offset, now_ms=clock.now_ms)
    after = [(h.base_offset, h.last_offset, h.term) for h in
             plog.iter_headers(plog.log_start_offset)]
    assert after == before  # every batch (Raft entry) keeps its offsets and term
    assert all(raft.term_at(last) == term for _, last, term in before)
    entries = raft.entries(plog.log_start_offset, 1 << 30)
    got = [(e.index, e.last) for e in entries]  # (one segment's worth)
    assert got and got == [(b, e) for b, e, _ in before][:len(got)]
    # Reads from any offset, inside a compacted gap included, return whole batches from there.
    for offset in range(plog.log_start_offset, plog.log_end_offset, 997):
        assert plog.read(offset, 4096)


def test_a_crash_mid_clean_leaves_a_readable_log(tmp_path: Path) -> None:
    clock = Clock()
    plog = open_log(tmp_path / "log", clock)
    write_updates(plog, clock, rounds=3)
    seal_everything(plog, clock)
    expected = all_records(plog)
    sealed = plog.sealed_segments(plog.log_end_offset)
    base, _, path, _ = sealed[0]
    # 1. Crash while writing the .cleaned file: it is ignored and deleted on open.
    path.with_name(path.name + ".cleaned").write_bytes(b"half a batch")
    # 2. Crash after the index files were dropped, before the rename: index rebuilt on open.
    for suffix in (".index", ".timeindex"):
        path.with_suffix(suffix).unlink(missing_ok=True)
    plog.close()
    reopened = open_log(tmp_path / "log", clock)
    assert not list((tmp_path / "log").glob("*.cleaned"))
    assert all_records(reopened) == expected
    # 3. Crash after the rename, before the new index: the compacted file with no index.
    compact(reopened, upto_offset=reopened.log_end_offset, now_ms=clock.now_ms)
    compacted = all_records(reopened)
    reopened.close()
    for suffix in (".index", ".timeindex"):
        path.with_suffix(suffix).unlink(missing_ok=True)
    again = open_log(tmp_path / "log", clock)
    assert all_records(again) == compacted
    assert {kv[0] for kv in compacted.values()} == {kv[0] for kv in expected.values()}


def test_the_key_map_bound_cleans_a_prefix_and_the_rest_later(tmp_path: Path) -> None:
    clock = Clock()
    plog = open_log(tmp_path / "log", clock)
    write_updates(plog, clock, rounds=60)
    seal_everything(plog, clock)
    small = CompactionConfig(key_map_entries_max=10)
    first = compact(plog, upto_offset=plog.log_end_offset, now_ms=clock.now_ms, config=small)
    assert first.segments_scanned < len(plog.sealed_segments(plog.log_end_offset))
    full = compact(plog, upto_offset=plog.log_end_offset, now_ms=clock.now_ms)
    assert full.records_after == KEYS
