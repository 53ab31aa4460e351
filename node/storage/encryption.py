"""Encryption at rest: each stored batch's records area sealed with AES-256-GCM.

Theory of operation (docs/batch-format.md "Encryption at rest" has the table and the reasons).

* Only storage sees the stored form. `PartitionLog.append` takes a plaintext batch (validated,
  stamped) and writes `AtRestCipher.seal(batch)`; `read` returns `AtRestCipher.unseal(...)` of
  every encrypted batch, so Raft, fetch, compaction's key map, digests and the queue reader all
  keep seeing the logical (plaintext) batch, byte for byte as it was appended.
* The stored form is itself a valid batch of format v2: the 77-byte header stays in plaintext
  (base offset, term, counts, timestamps, producer fields: recovery, the indexes, Raft's term
  reads, retention and producer-state rebuilds need them), with `batch_length` the stored size,
  attribute bit 5 (`ENCRYPTED`) set, and both xxh3 checksums computed over the stored bytes. So
  every check storage already makes (torn tails, bit rot, contiguous offsets) works unchanged on
  the stored bytes, and a torn encrypted batch is simply a torn batch.
* The records area is replaced by an envelope: version (1 byte), key id (uint32), a random
  96-bit nonce, the ciphertext (as long as the plaintext records area), the 16-byte GCM tag.
  The associated data is the stored header's fields [0, 61) (everything but the two checksums,
  which are functions of the rest) plus the envelope's version and key id: a header or
  ciphertext altered by someone who also recomputed the xxh3 checksums fails authentication
  (`BatchAuthenticationError`), and so does a batch moved to another offset or term.
* The plaintext's records checksum is not stored (a 64-bit hash of a guessable value would let a
  reader of the disk confirm guesses); `unseal` recomputes it from the decrypted records, which
  GCM has authenticated, so the logical batch comes back identical to the appended one.
* Nonces: 96 random bits per batch (`secrets.token_bytes`). NIST SP 800-38D bounds random
  nonces at 2^32 encryptions per key (collision probability below 2^-32); at 10,000 batches/s
  per node that is about 5 days of saturated writes on one node, at our measured rates (under
  2,000 batches/s per node, benchmarks/README.md) about a month. Rotate the key (`tidelog
  keyring rotate`) well before; the cipher logs a warning when one key has sealed 2^31 batches
  in this process.
* A batch whose key id the keyring does not hold raises `EncryptionKeyError` naming the key id:
  it is never served, and never taken for damage (recovery does not cut it: the fix is to put
  the key back).
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
from collections.abc import Callable
from typing import Protocol

import xxhash
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tidelog.node.storage.errors import BatchAuthenticationError, EncryptionKeyError
from tidelog.proto.batch import (
    HEADER_CHECKSUM_POSITION,
    HEADER_SIZE,
    LENGTH_PREFIX_SIZE,
    RECORDS_CHECKSUM_POSITION,
    CorruptBatchError,
)

__all__ = [
    "ENCRYPTED_ATTRIBUTE",
    "ENVELOPE_OVERHEAD_BYTES",
    "KEY_BYTES",
    "AtRestCipher",
    "KeyProvider",
    "is_encrypted",
    "stored_key_id",
]

log = logging.getLogger(__name__)

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits: GCM's native nonce size
TAG_BYTES = 16
ENVELOPE_VERSION = 1
ENCRYPTED_ATTRIBUTE = 0x20
"""Attribute bit 5: set only by storage, on the stored form. The broker refuses a produced batch
that sets it (node/produce_validation.py), and `seal` refuses one too."""
KEY_ID_MAX = 2**32 - 1
_ENVELOPE_PREFIX = struct.Struct(">BI")  # version, key id
ENVELOPE_OVERHEAD_BYTES = _ENVELOPE_PREFIX.size + NONCE_BYTES + TAG_BYTES  # 33
_ATTRIBUTES = struct.Struct(">h")
_ATTRIBUTES_POSITION = 21
_LENGTH = struct.Struct(">i")
_LENGTH_POSITION = 8
_UINT64 = struct.Struct(">Q")
_BASE_OFFSET = struct.Struct(">q")
_ENVELOPE_START = HEADER_SIZE
_NONCE_START = _ENVELOPE_START + _ENVELOPE_PREFIX.size
_CIPHERTEXT_START = _NONCE_START + NONCE_BYTES
SEALS_PER_KEY_WARNING = 2**31


class KeyProvider(Protocol):
    """Where the keys come from (the first implementation: tidelog.node.security.keyring's
    FileKeyring). Both methods may be called from any thread."""

    def current_key(self) -> tuple[int, bytes]:
        """(key id, 32-byte key) that new writes use: the newest key."""
        ...

    def key(self, key_id: int) -> bytes | None:
        """The 32-byte key with this id, or None if the provider does not hold it."""
        ...


def is_encrypted(buf: bytes | bytearray | memoryview, pos: int = 0) -> bool:
    """Whether the (stored) batch at `pos` carries an at-rest envelope."""
    (attributes,) = _ATTRIBUTES.unpack_from(buf, pos + _ATTRIBUTES_POSITION)
    return bool(attributes & ENCRYPTED_ATTRIBUTE)


def stored_key_id(buf: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """The key id recorded in the envelope of the stored batch at `pos`."""
    _, key_id = _ENVELOPE_PREFIX.unpack_from(buf, pos + _ENVELOPE_START)
    return key_id


class AtRestCipher:
    """Seals logical batches into their stored form and unseals them back. Thread-safe.

    `random_bytes` is the nonce source (a test may pass a deterministic one; shipped code uses
    the operating system's CSPRNG)."""

    def __init__(self, keys: KeyProvider, *,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.keys = keys
        self._random_bytes = random_bytes
        self._lock = threading.Lock()
        self._aeads: dict[tuple[int, bytes], AESGCM] = {}
        self._seals: dict[int, int] = {}

    def seal(self, batch: bytes | memoryview) -> bytearray:
        """The stored form of a validated, stamped plaintext batch, under the current key (a
        bytearray: built in place, the ciphertext written straight into it)."""
        view = memoryview(batch)
        if is_encrypted(view):
            raise CorruptBatchError("batch already carries the at-rest attribute bit 5; "
                                    "only storage sets it")
        key_id, key = self.keys.current_key()
        aead = self._aead(key_id, key)
        records = view[HEADER_SIZE:]
        stored_length = len(view) - LENGTH_PREFIX_SIZE + ENVELOPE_OVERHEAD_BYTES
        prefix = bytearray(view[:RECORDS_CHECKSUM_POSITION])
        _LENGTH.pack_into(prefix, _LENGTH_POSITION, stored_length)
        (attributes,) = _ATTRIBUTES.unpack_from(prefix, _ATTRIBUTES_POSITION)
        _ATTRIBUTES.pack_into(prefix, _ATTRIBUTES_POSITION, attributes | ENCRYPTED_ATTRIBUTE)
        envelope_prefix = _ENVELOPE_PREFIX.pack(ENVELOPE_VERSION, key_id)
        nonce = self._random_bytes(NONCE_BYTES)
        assert len(nonce) == NONCE_BYTES
        # One buffer, the ciphertext written into place (no copy of the records area).
        out = bytearray(LENGTH_PREFIX_SIZE + stored_length)
        out[:RECORDS_CHECKSUM_POSITION] = prefix
        out[_ENVELOPE_START:_NONCE_START] = envelope_prefix
        out[_NONCE_START:_CIPHERTEXT_START] = nonce
        buf = memoryview(out)
        aead.encrypt_into(nonce, records, bytes(prefix) + envelope_prefix,
                          buf[_CIPHERTEXT_START:])
        _UINT64.pack_into(out, RECORDS_CHECKSUM_POSITION,
                          xxhash.xxh3_64_intdigest(buf[_ENVELOPE_START:]))
        _UINT64.pack_into(out, HEADER_CHECKSUM_POSITION,
                          xxhash.xxh3_64_intdigest(buf[:HEADER_CHECKSUM_POSITION]))
        self._count_seal(key_id)
        return out

    def unseal(self, stored: bytes | memoryview) -> bytearray:
        """The logical batch of a stored encrypted batch whose xxh3 checksums were verified
        (a bytearray, decrypted in place).

        Raises EncryptionKeyError (the key id is not in the keyring) or
        BatchAuthenticationError (the GCM tag does not match: altered bytes, or a different key
        under the same id)."""
        view = memoryview(stored)
        (base_offset,) = _BASE_OFFSET.unpack_from(view, 0)
        if len(view) < HEADER_SIZE + ENVELOPE_OVERHEAD_BYTES:
            raise BatchAuthenticationError(
                f"batch at offset {base_offset}: {len(view)} bytes cannot hold an envelope")
        version, key_id = _ENVELOPE_PREFIX.unpack_from(view, _ENVELOPE_START)
        if version != ENVELOPE_VERSION:
            raise BatchAuthenticationError(
                f"batch at offset {base_offset}: unknown at-rest envelope version {version}")
        key = self.keys.key(key_id)
        if key is None:
            raise EncryptionKeyError(key_id, base_offset=base_offset)
        aead = self._aead(key_id, key)
        aad = bytes(view[:RECORDS_CHECKSUM_POSITION]) + bytes(view[_ENVELOPE_START:_NONCE_START])
        nonce = bytes(view[_NONCE_START:_CIPHERTEXT_START])
        out = bytearray(len(view) - ENVELOPE_OVERHEAD_BYTES)
        buf = memoryview(out)
        try:
            aead.decrypt_into(nonce, view[_CIPHERTEXT_START:], aad, buf[HEADER_SIZE:])
        except InvalidTag:
            raise BatchAuthenticationError(
                f"batch at offset {base_offset} fails AES-GCM authentication under key id "
                f"{key_id}: its ciphertext or header was altered, or key {key_id} in the "
                "keyring is not the key that wrote it") from None
        out[:RECORDS_CHECKSUM_POSITION] = view[:RECORDS_CHECKSUM_POSITION]
        _LENGTH.pack_into(out, _LENGTH_POSITION, len(out) - LENGTH_PREFIX_SIZE)
        (attributes,) = _ATTRIBUTES.unpack_from(out, _ATTRIBUTES_POSITION)
        _ATTRIBUTES.pack_into(out, _ATTRIBUTES_POSITION, attributes & ~ENCRYPTED_ATTRIBUTE)
        _UINT64.pack_into(out, RECORDS_CHECKSUM_POSITION,
                          xxhash.xxh3_64_intdigest(buf[HEADER_SIZE:]))
        _UINT64.pack_into(out, HEADER_CHECKSUM_POSITION,
                          xxhash.xxh3_64_intdigest(buf[:HEADER_CHECKSUM_POSITION]))
        return out

    def authenticate(self, stored: bytes | memoryview) -> None:
        """Raise as `unseal` would (GCM has no check without decrypting: the plaintext is
        dropped). For recovery's verifying scans."""
        self.unseal(stored)

    def _aead(self, key_id: int, key: bytes) -> AESGCM:
        cache_key = (key_id, key)
        aead = self._aeads.get(cache_key)
        if aead is None:
            if len(key) != KEY_BYTES:
                raise EncryptionKeyError(
                    key_id, reason=f"the keyring's key is {len(key)} bytes, not {KEY_BYTES}")
            aead = AESGCM(key)
            with self._lock:
                self._aeads[cache_key] = aead
        return aead

    def _count_seal(self, key_id: int) -> None:
        with self._lock:
            count = self._seals.get(key_id, 0) + 1
            self._seals[key_id] = count
        if count == SEALS_PER_KEY_WARNING:
            log.warning("at-rest key id %d has sealed %d batches in this process: rotate it "
                        "(`tidelog keyring rotate`); random 96-bit nonces are good for 2^32 "
                        "batches per key", key_id, count)

