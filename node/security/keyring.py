"""The file keyring: the first KeyProvider (node/storage/encryption.py) for encryption at rest.

A keyring is one JSON file, mode 0600, holding every key a node may need to read its data::

    {"format": "tidelog-keyring", "version": 1,
     "keys": [{"id": 1, "created_ms": 1764600000000, "key": "<base64 of 32 random bytes>"},
              {"id": 2, "created_ms": 1767200000000, "key": "..."}]}

The key with the highest id is the current one: new writes use it; older keys stay, because
data written under them is still on disk (a key removed from the file makes that data
unreadable: reads then fail with EncryptionKeyError naming the id). `tidelog keyring
create|rotate|list` (node/keyring_cli.py) manage it; every write is atomic (temp file with mode
0600, fsync, rename, directory fsync), so a crash during a rotation leaves the old keyring or the
new one, never a keyring missing a key.

A running node re-reads the file when it changes (checked at most once per `reload_interval_s`,
and before reporting a key id as missing), so a rotation takes effect within about a second,
without a restart. A file that fails to load on reload is logged and the keys already loaded
stay in use. The loader refuses a file that group or others may read or write (like ssh with a
private key): the key next to the data it protects is only as secret as this file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tidelog.node.storage import LogConfig, StorageError
from tidelog.node.storage.encryption import KEY_BYTES, KEY_ID_MAX, AtRestCipher

__all__ = ["FileKeyring", "KeyringEntry", "KeyringError", "at_rest_cipher", "create_keyring",
           "load_keyring", "rotate_keyring", "with_at_rest_encryption"]

log = logging.getLogger(__name__)

FORMAT = "tidelog-keyring"
VERSION = 1
KEYS_MAX = 1000  # a keyring with more keys is refused (rotate yearly: centuries of keys)
RELOAD_INTERVAL_S = 1.0
_FILE_MODE = 0o600


class KeyringError(StorageError):
    """The keyring file is missing, unsafe or malformed; the message says which and how to fix.
    A StorageError: a node that cannot load its keyring does not start (node/main.py prints the
    message), and a replica that cannot is not opened."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyringEntry:
    key_id: int
    created_ms: int
    key: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """16 hex digits that identify the key without revealing it (to compare keyrings)."""
        return hashlib.sha256(b"tidelog-keyring-fingerprint\0" + self.key).hexdigest()[:16]


def load_keyring(path: Path) -> tuple[KeyringEntry, ...]:
    """The keys of the keyring at `path`, oldest first; raises KeyringError."""
    path = Path(path)
    try:
        st = os.stat(path)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyringError(f"keyring {path}: no such file (make one with `tidelog keyring "
                           f"create {path}`)") from None
    except OSError as exc:
        raise KeyringError(f"keyring {path}: {exc}") from None
    if st.st_mode & 0o077:
        raise KeyringError(f"keyring {path} may be read or written by others (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`")
    return _parse(path, raw)


def create_keyring(path: Path, *, now_ms: int | None = None) -> KeyringEntry:
    """A new keyring with one fresh key (id 1); refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise KeyringError(f"keyring {path} exists already: `tidelog keyring rotate {path}` "
                           "adds a key to it")
    entry = _new_entry(1, now_ms)
    _write_atomic(path, (entry,))
    return entry


def rotate_keyring(path: Path, *, now_ms: int | None = None) -> KeyringEntry:
    """Add a fresh key that becomes current (id = the highest + 1); older keys stay."""
    entries = load_keyring(path)
    if len(entries) >= KEYS_MAX:
        raise KeyringError(f"keyring {path} holds {len(entries)} keys, the most allowed")
    entry = _new_entry(entries[-1].key_id + 1, now_ms)
    if entry.key_id > KEY_ID_MAX:
        raise KeyringError(f"keyring {path}: key ids are exhausted")
    _write_atomic(Path(path), (*entries, entry))
    return entry


class FileKeyring:
    """KeyProvider over a keyring file, re-read when the file changes. Thread-safe.

    `now_s` is the monotonic clock that paces the change checks (injected for tests)."""

    def __init__(self, path: Path, *, reload_interval_s: float = RELOAD_INTERVAL_S,
                 now_s: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._interval_s = reload_interval_s
        self._now_s = now_s
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()  # before the load: a change in between reloads
        self._entries = load_keyring(self.path)  # raises: a node does not start without keys
        self._by_id = {e.key_id: e for e in self._entries}
        self._checked_s = now_s()

    @property
    def entries(self) -> tuple[KeyringEntry, ...]:
        self._maybe_reload()
        return self._entries

    def current_key(self) -> tuple[int, bytes]:
        self._maybe_reload()
        newest = self._entries[-1]
        return newest.key_id, newest.key

    def key(self, key_id: int) -> bytes | None:
        entry = self._by_id.get(key_id)
        if entry is None:
            self._maybe_reload()  # a key added since (rotated on another node, copied here)
            entry = self._by_id.get(key_id)
        return None if entry is None else entry.key

    def _maybe_reload(self) -> None:
        now = self._now_s()
        if now - self._checked_s < self._interval_s:
            return
        with self._lock:
            if now - self._checked_s < self._interval_s:
                return
            self._checked_s = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            try:
                entries = load_keyring(self.path)
            except KeyringError as exc:
                log.error("keyring changed but cannot be loaded (%s); still using the %d "
                          "keys loaded before", exc, len(self._entries))
                return
            lost = sorted(set(self._by_id) - {e.key_id for e in entries})
            if lost:
                log.warning("keyring %s no longer holds key ids %s: data written under them "
                            "cannot be read", self.path, lost)
            self._entries, self._stamp = entries, stamp
            self._by_id = {e.key_id: e for e in entries}
            log.info("reloaded keyring %s: %d keys, current key id %d", self.path,
                     len(entries), entries[-1].key_id)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns


def at_rest_cipher(path: Path | None) -> AtRestCipher | None:
    """The cipher of `tidelog node --encryption-keyring PATH` (None: no encryption): one per
    keyring file per process, shared by every partition log of the node."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    with _CIPHERS_LOCK:
        cipher = _CIPHERS.get(resolved)
        if cipher is None:
            cipher = _CIPHERS[resolved] = AtRestCipher(FileKeyring(resolved))
        return cipher


def with_at_rest_encryption(config: LogConfig, keyring: Path | None) -> LogConfig:
    """`config` with the node's at-rest cipher (unchanged without a keyring): where the node
    opens a partition log (replica_manager.py, metadata_service.py)."""
    cipher = at_rest_cipher(keyring)
    return config if cipher is None else dataclasses.replace(config, encryption=cipher)


_CIPHERS: dict[Path, AtRestCipher] = {}
_CIPHERS_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------ helpers


def _new_entry(key_id: int, now_ms: int | None) -> KeyringEntry:
    return KeyringEntry(key_id=key_id, key=secrets.token_bytes(KEY_BYTES),
                        created_ms=time.time_ns() // 1_000_000 if now_ms is None else now_ms)


def _parse(path: Path, raw: bytes) -> tuple[KeyringEntry, ...]:
    def bad(why: str) -> KeyringError:
        return KeyringError(f"keyring {path} is malformed: {why}")

    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f'"format" is not "{FORMAT}"')
    if doc.get("version") != VERSION:
        raise bad(f'"version" {doc.get("version")!r}, this version reads {VERSION}')
    keys = doc.get("keys")
    if not isinstance(keys, list) or not keys:
        raise bad('"keys" must be a non-empty list')
    if len(keys) > KEYS_MAX:
        raise bad(f"{len(keys)} keys, at most {KEYS_MAX}")
    entries = []
    for item in keys:
        if not isinstance(item, dict) or set(item) != {"id", "created_ms", "key"}:
            raise bad('each key needs exactly "id", "created_ms" and "key"')
        key_id, created_ms = item["id"], item["created_ms"]
        if type(key_id) is not int or not 1 <= key_id <= KEY_ID_MAX:
            raise bad(f"key id {key_id!r} is not an integer in [1, {KEY_ID_MAX}]")
        if type(created_ms) is not int:
            raise bad(f"key {key_id}: created_ms {created_ms!r} is not an integer")
        try:
            key = base64.b64decode(item["key"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise bad(f"key {key_id}: not base64") from None
        if len(key) != KEY_BYTES:
            raise bad(f"key {key_id}: {len(key)} bytes, AES-256 needs {KEY_BYTES}")
        entries.append(KeyringEntry(key_id=key_id, created_ms=created_ms, key=key))
    ids = [e.key_id for e in entries]
    if len(set(ids)) != len(ids):
        raise bad(f"duplicate key ids in {ids}")
    return tuple(sorted(entries, key=lambda e: e.key_id))


def _write_atomic(path: Path, entries: tuple[KeyringEntry, ...]) -> None:
    doc = {"format": FORMAT, "version": VERSION,
           "keys": [{"id": e.key_id, "created_ms": e.created_ms,
                     "key": base64.b64encode(e.key).decode("ascii")} for e in entries]}
    data = (json.dumps(doc, indent=2) + "\n").encode("ascii")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        try:
            os.fchmod(fd, _FILE_MODE)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
