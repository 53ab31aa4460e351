"""Encryption at rest (node/storage/encryption.py): the envelope through the real PartitionLog.

Every test uses the real file keyring (node/security/keyring.py) on tmp_path, the real AES-GCM
of `cryptography`, and the real files on disk."""

from __future__ import annotations

import dataclasses
import random
import struct
from pathlib import Path

import pytest
import xxhash
from storage_helpers import Clock, crash, small_config
from tidelog.node.security.keyring import FileKeyring, create_keyring, rotate_keyring
from tidelog.node.storage import (
    CorruptLogError,
    DamagePolicy,
    InvalidBatchError,
    LogConfig,
    PartitionLog,
)
from tidelog.node.storage.compaction import compact
from tidelog.node.storage.digest import committed_prefix_digest
from tidelog.node.storage.encryption import (
    ENCRYPTED_ATTRIBUTE,
    ENVELOPE_OVERHEAD_BYTES,
    AtRestCipher,
    is_encrypted,
    stored_key_id,
)
from tidelog.node.storage.errors import BatchAuthenticationError, EncryptionKeyError
from tidelog.proto.batch import (
    HEADER_SIZE,
    Codec,
    decode_header,
    decode_records,
    encode_batch,
    iter_batches,
    stamp,
)

MARKER = b"PLAINTEXT-MARKER-7f3a"
CIPHERTEXT_START = HEADER_SIZE + 5 + 12  # header, version + key id, nonce


def marked_batch(i: int, *, codec: Codec = Codec.NONE, records: int = 3,
                 key: bytes | None = None) -> bytes:
    return encode_batch(
        [(key if key is not None else b"key-%d-%d" % (i, r), MARKER + b" value %d/%d" % (i, r),
          [("h", MARKER)], 1_000 + i) for r in range(records)], codec=codec)


def keyring(tmp_path: Path, name: str = "keyring.json") -> Path:
    path = tmp_path / name
    create_keyring(path, now_ms=1)
    return path


def cipher_for(path: Path) -> AtRestCipher:
    return AtRestCipher(FileKeyring(path, reload_interval_s=0.0))


def encrypted_config(cipher: AtRestCipher | None, **overrides: object) -> LogConfig:
    return dataclasses.replace(small_config(**overrides), encryption=cipher)


def open_log(directory: Path, config: LogConfig, **kwargs: object) -> PartitionLog:
    return PartitionLog.open(directory, config, now_ms=Clock(), **kwargs)  # type: ignore[arg-type]


def read_all(log: PartitionLog) -> list[bytes]:
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1 << 20)
        for pos, header in iter_batches(data):
            out.append(bytes(data[pos:pos + header.size]))
            offset = header.last_offset + 1
    return out


def stored_batches(directory: Path) -> list[tuple[Path, int, bytes]]:
    """(segment file, position, stored bytes) of every batch on disk."""
    out = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        out += [(path, pos, data[pos:pos + h.size]) for pos, h in iter_batches(data)]
    return out


def rewrite_checksums(buf: bytearray, pos: int) -> None:
    """What an attacker who knows the format does after altering a stored batch: recompute
    both xxh3 checksums, so only AES-GCM can notice."""
    size = decode_header(buf, pos).size
    struct.pack_into(">Q", buf, pos + 61, xxhash.xxh3_64_intdigest(buf[pos + 77:pos + size]))
    struct.pack_into(">Q", buf, pos + 69, xxhash.xxh3_64_intdigest(buf[pos:pos + 69]))


def test_round_trip_gives_back_the_appended_bytes_and_disk_holds_no_plaintext(
        tmp_path: Path) -> None:
    cipher = cipher_for(keyring(tmp_path))
    log = open_log(tmp_path / "p0", encrypted_config(cipher))
    appended = []
    for i in range(12):  # several segments (2 KiB each): seals, indexes, rolls
        batch = marked_batch(i, codec=Codec.NONE if i % 2 else Codec.LZ4)
        info = log.append(batch, term=1)
        appended.append(stamp(batch, base_offset=info.base_offset, term=1))
    assert len(log.segment_base_offsets) > 1
    assert read_all(log) == appended
    log.close()
    on_disk = stored_batches(tmp_path / "p0")
    assert len(on_disk) == 12 and all(is_encrypted(b) for _, _, b in on_disk)
    assert all(len(b) == len(a) + ENVELOPE_OVERHEAD_BYTES
               for (_, _, b), a in zip(on_disk, appended, strict=True))
    for path in (tmp_path / "p0").iterdir():
        assert MARKER not in path.read_bytes(), path.name
    reopened = open_log(tmp_path / "p0", encrypted_config(cipher), verify_sealed=True)
    assert reopened.recovery.clean
    assert read_all(reopened) == appended
    assert decode_records(read_all(reopened)[3])[0].value == MARKER + b" value 3/0"
    assert reopened.offset_for_timestamp(1_005) == 15  # the time index sees plaintext headers
    reopened.close()


def test_each_batch_gets_its_own_nonce(tmp_path: Path) -> None:
    cipher = cipher_for(keyring(tmp_path))
    log = open_log(tmp_path / "p0", encrypted_config(cipher))
    same = marked_batch(0)
    for _ in range(50):
        log.append(same, term=1)
    log.close()
    nonces = {b[HEADER_SIZE + 5:CIPHERTEXT_START] for _, _, b in stored_batches(tmp_path / "p0")}
    assert len(nonces) == 50


@pytest.mark.parametrize("rehash", [False, True], ids=["bit-rot", "rehashed-tamper"])
def test_a_flipped_ciphertext_byte_is_corruption_never_data(tmp_path: Path,
                                                            rehash: bool) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    cipher = cipher_for(keyring(tmp_path))
    log = open_log(tmp_path / "p0", encrypted_config(cipher, segment_bytes_max=1 << 20))
    for i in range(6):
        log.append(marked_batch(i), term=1)
    log.close()
    path, pos, victim = stored_batches(tmp_path / "p0")[3]
    data = bytearray(path.read_bytes())
    at = pos + rng.randrange(CIPHERTEXT_START, len(victim))
    data[at] ^= 1 << rng.randrange(8)
    if rehash:
        rewrite_checksums(data, pos)
    path.write_bytes(bytes(data))
    # Below the recovery point: the default policy refuses to open, naming the damage.
    with pytest.raises(CorruptLogError) as refused:
        open_log(tmp_path / "p0", encrypted_config(cipher))
    assert ("AES-GCM authentication" if rehash else "checksum") in str(refused.value)
    # A replica quarantines: cut before the damaged batch, the file kept; nothing wrong served.
    log = open_log(tmp_path / "p0", encrypted_config(cipher), on_damage=DamagePolicy.QUARANTINE)
    assert log.recovery.cut_from_offset == 9 and log.recovery.quarantined
    assert [decode_header(b).base_offset for b in read_all(log)] == [0, 3, 6]
    log.close()


def test_a_tampered_sealed_batch_is_refused_on_read(tmp_path: Path) -> None:
    """A sealed segment is not rescanned on open: the read itself authenticates."""
    cipher = cipher_for(keyring(tmp_path))
    log = open_log(tmp_path / "p0", encrypted_config(cipher))
    for i in range(12):
        log.append(marked_batch(i), term=1)
    log.close()
    path, pos, _ = stored_batches(tmp_path / "p0")[0]
    data = bytearray(path.read_bytes())
    struct.pack_into(">q", data, pos + 47, 4242)  # the producer id, in the plaintext header
    rewrite_checksums(data, pos)
    path.write_bytes(bytes(data))
    log = open_log(tmp_path / "p0", encrypted_config(cipher))
    with pytest.raises(CorruptLogError, match="AES-GCM authentication") as refused:
        log.read(0, 1 << 20)
    assert isinstance(refused.value.__cause__, BatchAuthenticationError)
    log.close()


def test_a_missing_key_is_a_clear_error_never_data_and_never_cut(tmp_path: Path) -> None:
    ring = keyring(tmp_path)
    log = open_log(tmp_path / "p0", encrypted_config(cipher_for(ring)))
    for i in range(3):
        log.append(marked_batch(i), term=1)
    log.close()
    before = {p.name: p.read_bytes() for p in (tmp_path / "p0").iterdir() if p.is_file()}
    other = keyring(tmp_path, "other.json")
    rotate_keyring(other)  # holds ids 1 and 2: id 1 is another key
    with pytest.raises(CorruptLogError, match="key 1 in the keyring is not the key"):
        open_log(tmp_path / "p0", encrypted_config(cipher_for(other)))
    with pytest.raises(EncryptionKeyError, match="without an at-rest keyring") as no_ring:
        open_log(tmp_path / "p0", encrypted_config(None), on_damage=DamagePolicy.QUARANTINE)
    assert no_ring.value.key_id == 1
    after = {p.name: p.read_bytes() for p in (tmp_path / "p0").iterdir() if p.is_file()}
    assert after == before  # not taken for damage: nothing cut, nothing quarantined


def test_an_unknown_key_id_is_named_on_read(tmp_path: Path) -> None:
    ring = keyring(tmp_path)
    rotate_keyring(ring)
    log = open_log(tmp_path / "p0", encrypted_config(cipher_for(ring)))
    for i in range(12):  # key 2 is current; several sealed segments
        log.append(marked_batch(i), term=1)
    log.close()
    # Key 2 is gone from the keyring (an operator error): key 1 alone remains. The active
    # segment is scanned on open, so open itself names the missing key.
    with pytest.raises(EncryptionKeyError, match="key id 2, which the keyring does not hold"):
        open_log(tmp_path / "p0", encrypted_config(AtRestCipher(_OnlyKey1(ring))))
    # Sealed segments are read on demand: the read names it, and serves nothing.
    log = open_log(tmp_path / "p0", encrypted_config(cipher_for(ring)))
    log.config = encrypted_config(AtRestCipher(_OnlyKey1(ring)))
    with pytest.raises(EncryptionKeyError, match="offset 0: encrypted at rest with key id 2"):
        log.read(0, 1 << 20)
    log.close()


class _OnlyKey1:
    """The real file keyring, minus key 2 (what a keyring that lost a key looks like)."""

    def __init__(self, path: Path) -> None:
        self._ring = FileKeyring(path)

    def current_key(self) -> tuple[int, bytes]:
        key = self._ring.key(1)
        assert key is not None
        return 1, key

    def key(self, key_id: int) -> bytes | None:
        return self._ring.key(key_id) if key_id == 1 else None


def test_rotation_new_writes_use_the_new_key_and_old_data_stays_readable(
        tmp_path: Path) -> None:
    ring = keyring(tmp_path)
    cipher = cipher_for(ring)
    log = open_log(tmp_path / "p0", encrypted_config(cipher))
    first = [log.append(marked_batch(i), term=1) for i in range(3)]
    rotate_keyring(ring)  # the running log's keyring reloads it (interval 0 here)
    second = [log.append(marked_batch(i), term=1) for i in range(3, 6)]
    assert len(first) == len(second) == 3
    log.close()
    ids = [stored_key_id(b) for _, _, b in stored_batches(tmp_path / "p0")]
    assert ids == [1, 1, 1, 2, 2, 2]
    reopened = open_log(tmp_path / "p0", encrypted_config(cipher_for(ring)), verify_sealed=True)
    assert [decode_records(b)[0].value for b in read_all(reopened)] == \
        [MARKER + b" value %d/0" % i for i in range(6)]
    reopened.close()


def test_a_plaintext_log_stays_readable_after_encryption_is_turned_on(tmp_path: Path) -> None:
    plain = open_log(tmp_path / "p0", encrypted_config(None))
    for i in range(8):
        plain.append(marked_batch(i), term=1)
    plain.close()
    cipher = cipher_for(keyring(tmp_path))
    mixed = open_log(tmp_path / "p0", encrypted_config(cipher), verify_sealed=True)
    for i in range(8, 16):
        mixed.append(marked_batch(i), term=2)
    flags = [is_encrypted(b) for _, _, b in stored_batches(tmp_path / "p0")]
    assert flags == [False] * 8 + [True] * 8
    batches = read_all(mixed)
    assert [decode_records(b)[0].value for b in batches] == \
        [MARKER + b" value %d/0" % i for i in range(16)]
    assert not any(decode_header(b).attributes & ENCRYPTED_ATTRIBUTE for b in batches)
    # A read that spans the switch within one segment returns both kinds, in order.
    spanning = mixed.read(mixed.segment_base_offsets[-1], 1 << 20)
    assert len(list(iter_batches(spanning))) >= 1
    # The same batches in a plaintext replica and in this mixed one digest the same: the
    # digest covers logical batches, not nonces.
    twin = open_log(tmp_path / "p1", encrypted_config(None))
    for batch in batches:
        twin.append(batch)
    end = mixed.log_end_offset - 1
    assert committed_prefix_digest(twin, end) == committed_prefix_digest(mixed, end)
    mixed.close()
    twin.close()


def test_replicas_with_different_keys_and_nonces_digest_equal(tmp_path: Path) -> None:
    logs = [open_log(tmp_path / f"r{n}", encrypted_config(cipher_for(
        keyring(tmp_path, f"ring{n}.json")))) for n in range(2)]
    for i in range(10):
        batch = stamp(marked_batch(i), base_offset=3 * i, term=1)
        for log in logs:
            log.append(batch, base_offset=3 * i)
    assert stored_batches(tmp_path / "r0") != stored_batches(tmp_path / "r1")
    assert committed_prefix_digest(logs[0], 29) == committed_prefix_digest(logs[1], 29)
    for log in logs:
        log.close()


def test_compaction_rewrites_under_the_current_key(tmp_path: Path) -> None:
    ring = keyring(tmp_path)
    plain = open_log(tmp_path / "p0", encrypted_config(None))
    for i in range(4):  # plaintext batches of one key: compaction will drop all but the last
        plain.append(marked_batch(i, key=b"same", records=2), term=1)
    plain.close()
    log = open_log(tmp_path / "p0", encrypted_config(cipher_for(ring)))
    for i in range(4, 20):
        log.append(marked_batch(i, key=b"same", records=2), term=1)
    rotate_keyring(ring)
    sealed = log.sealed_segments(log.log_end_offset)
    assert len(sealed) >= 2
    before = [stored_key_id(b) if is_encrypted(b) else None
              for _, _, b in stored_batches(tmp_path / "p0")]
    assert before[:4] == [None] * 4 and set(before[4:]) == {1}
    result = compact(log, upto_offset=log.log_end_offset, now_ms=10_000)
    assert result.segments_rewritten == len(sealed)
    active = tmp_path / "p0" / f"{log.segment_base_offsets[-1]:020d}.log"
    for path, _, stored in stored_batches(tmp_path / "p0"):
        if path != active:
            assert is_encrypted(stored) and stored_key_id(stored) == 2, path.name
    values = [r.value for b in read_all(log) if not decode_header(b).is_control
              for r in decode_records(b)]
    assert values[-1] == MARKER + b" value 19/1"
    log.close()
    reopened = open_log(tmp_path / "p0", encrypted_config(cipher_for(ring)), verify_sealed=True)
    assert reopened.recovery.corrupt == ()
    reopened.close()


def test_a_torn_encrypted_tail_is_cut_like_any_torn_batch(tmp_path: Path) -> None:
    cipher = cipher_for(keyring(tmp_path))
    log = open_log(tmp_path / "p0", encrypted_config(cipher, segment_bytes_max=1 << 20))
    appended = [stamp(marked_batch(i), base_offset=log.append(marked_batch(i), term=1)
                      .base_offset, term=1) for i in range(5)]
    log.sync()
    log._write_meta(recovery_point=6)  # everything from offset 6 on is the unsynced tail
    crash(log)
    path, pos, last = stored_batches(tmp_path / "p0")[-1]
    with path.open("r+b") as f:
        f.truncate(pos + len(last) // 2)  # torn in the middle of the ciphertext
    reopened = open_log(tmp_path / "p0", encrypted_config(cipher))
    [tail] = reopened.recovery.truncated
    assert tail.from_offset == 12 and tail.position == pos
    assert read_all(reopened) == appended[:4]
    reopened.close()


def test_storage_the_broker_and_raft_refuse_a_batch_that_sets_the_encrypted_bit(
        tmp_path: Path) -> None:
    from tidelog.node import errors as E
    from tidelog.node.produce_validation import ProduceLimits, validate_produce
    from tidelog.proto.batch import assemble_batch

    honest = decode_header(marked_batch(0))
    forged = assemble_batch(
        base_offset=0, term=0, attributes=honest.attributes | ENCRYPTED_ATTRIBUTE,
        last_offset_delta=honest.last_offset_delta, record_count=honest.record_count,
        first_timestamp=honest.first_timestamp, max_timestamp=honest.max_timestamp,
        producer_id=-1, producer_epoch=-1, base_sequence=-1,
        records=marked_batch(0)[HEADER_SIZE:])
    log = open_log(tmp_path / "p0", encrypted_config(None))
    with pytest.raises(InvalidBatchError, match="bit 5"):
        log.append(forged)
    assert log.log_end_offset == 0
    log.close()
    limits = ProduceLimits(request_bytes_max=1 << 20, batch_bytes_max=1 << 20,
                           timestamp_difference_ms_max=2**62)
    with pytest.raises(E.InvalidBatchRequestError, match="bit 5"):
        validate_produce(forged, limits, now_ms=1_000)
    # A peer's AppendEntries carrying one is the peer's fault: dropped before it is stepped.
    from tidelog.node.raft import Entry, EntryKind, LogIndex, Message, MessageType, NodeId, Term
    from tidelog.node.raft_validation import MalformedRaftMessage, decode_raft_message
    from tidelog.node.raft_wire import to_wire

    entry = Entry(term=Term(2), index=LogIndex(5), count=honest.last_offset_delta + 1,
                  kind=EntryKind.DATA, data=forged)
    wire = to_wire("1/0", Message(type=MessageType.APPEND, frm=NodeId(2), to=NodeId(1),
                                  term=Term(2), index=LogIndex(4), log_term=Term(1),
                                  entries=(entry,), commit=LogIndex(3)))
    with pytest.raises(MalformedRaftMessage, match="bit 5"):
        decode_raft_message(wire, self_id=1, from_node=2, members=frozenset({1, 2, 3}))


def test_planted_bug_a_recovery_scan_that_skips_authentication_is_caught(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the scan's GCM check, a rehashed tamper passes recovery (the xxh3 checksums
    hold) and a replica would vote and serve with it: the tamper test above relies on the
    check. Reads still refuse the batch, the second line of defence."""
    cipher = cipher_for(keyring(tmp_path))
    log = open_log(tmp_path / "p0", encrypted_config(cipher, segment_bytes_max=1 << 20))
    for i in range(4):
        log.append(marked_batch(i), term=1)
    log.close()
    path, pos, _ = stored_batches(tmp_path / "p0")[2]
    data = bytearray(path.read_bytes())
    data[pos + CIPHERTEXT_START] ^= 0x01
    rewrite_checksums(data, pos)
    path.write_bytes(bytes(data))
    monkeypatch.setattr(PartitionLog, "_authenticate", lambda self, stored: None)
    log = open_log(tmp_path / "p0", encrypted_config(cipher))  # the bug: nothing noticed
    assert log.recovery.clean
    with pytest.raises(CorruptLogError, match="AES-GCM authentication"):
        log.read(6, 1 << 20)
    log.close()
    monkeypatch.undo()
    with pytest.raises(CorruptLogError, match="AES-GCM authentication"):
        open_log(tmp_path / "p0", encrypted_config(cipher))  # the real scan catches it
