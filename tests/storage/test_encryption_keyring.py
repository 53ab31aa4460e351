"""The file keyring (node/security/keyring.py) and `tidelog keyring create|rotate|list`."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from tidelog.client.cli import main as tidelog
from tidelog.node.security.keyring import (
    FileKeyring,
    KeyringError,
    create_keyring,
    load_keyring,
    rotate_keyring,
    with_at_rest_encryption,
)
from tidelog.node.storage import LogConfig


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_create_makes_a_private_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    first = create_keyring(path, now_ms=5)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [(e.key_id, e.created_ms, e.key) for e in load_keyring(path)] == \
        [(1, 5, first.key)]
    with pytest.raises(KeyringError, match="exists already"):
        create_keyring(path)
    assert load_keyring(path)[0].key == first.key


def test_rotate_adds_a_current_key_and_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    first = create_keyring(path)
    second = rotate_keyring(path)
    entries = load_keyring(path)
    assert [e.key_id for e in entries] == [1, 2]
    assert entries[0].key == first.key and entries[1].key == second.key != first.key
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert FileKeyring(path).current_key() == (2, second.key)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_keyring_others_may_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    create_keyring(path)
    path.chmod(0o644)
    with pytest.raises(KeyringError, match=f"mode 0644.*chmod 600 {path}"):
        load_keyring(path)
    with pytest.raises(KeyringError):  # a StorageError: the node does not start (main.py)
        with_at_rest_encryption(LogConfig(), path)


@pytest.mark.parametrize(("doc", "message"), [
    ("not json", "not JSON"),
    ('{"format": "x", "version": 1, "keys": []}', '"format"'),
    ('{"format": "tidelog-keyring", "version": 1, "keys": []}', "non-empty"),
    ('{"format": "tidelog-keyring", "version": 1, "keys": '
     '[{"id": 1, "created_ms": 0, "key": "AAAA"}]}', "AES-256 needs 32"),
    ('{"format": "tidelog-keyring", "version": 1, "keys": '
     '[{"id": 1, "created_ms": 0, "key": "%%%"}]}', "not base64"),
    ('{"format": "tidelog-keyring", "version": 1, "keys": '
     '[{"id": 0, "created_ms": 0, "key": ""}]}', "key id 0"),
])
def test_a_malformed_keyring_is_refused_saying_why(tmp_path: Path, doc: str,
                                                   message: str) -> None:
    path = tmp_path / "ring.json"
    path.write_text(doc)
    path.chmod(0o600)
    with pytest.raises(KeyringError, match=message):
        load_keyring(path)


def test_duplicate_key_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    create_keyring(path)
    doc = json.loads(path.read_text())
    doc["keys"].append(dict(doc["keys"][0]))
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="duplicate key ids"):
        load_keyring(path)


def test_a_running_keyring_picks_up_a_rotation_and_survives_a_broken_edit(
        tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    create_keyring(path)
    clock = Clock()
    ring = FileKeyring(path, reload_interval_s=1.0, now_s=clock)
    assert ring.current_key()[0] == 1
    second = rotate_keyring(path)
    assert ring.current_key()[0] == 1  # checked at most once per interval
    clock.now_s += 1.0
    assert ring.current_key() == (2, second.key)
    path.write_text("{ half written")  # not what our tools do, but an operator's editor might
    path.chmod(0o600)
    clock.now_s += 1.0
    assert ring.current_key() == (2, second.key)  # the keys loaded before stay in use
    assert ring.key(1) is not None and ring.key(3) is None


def test_the_cli_creates_rotates_and_lists_without_showing_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ring.json"
    assert tidelog(["keyring", "create", str(path)]) == 0
    assert "key id 1" in capsys.readouterr().out
    assert tidelog(["keyring", "rotate", str(path), "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["current_key_id"] == 2
    assert tidelog(["keyring", "list", str(path), "--output", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["id"], k["current"]) for k in listed] == [(1, False), (2, True)]
    secrets = [e.key for e in load_keyring(path)]
    assert tidelog(["keyring", "list", str(path)]) == 0
    text = capsys.readouterr().out
    header, first, second = text.splitlines()  # the common table (node/tables.py)
    assert header.split() == ["ID", "CREATED-UTC", "FINGERPRINT", "CURRENT"]
    assert first.split()[0] == "1" and not first.endswith("yes")
    assert second.split()[0] == "2" and second.endswith("yes")
    for key in secrets:
        assert base64.b64encode(key).decode() not in text + json.dumps(listed)
    assert tidelog(["keyring", "list", str(path), "--output", "text"]) == 0  # the older name
    assert capsys.readouterr().out == text
    assert tidelog(["keyring", "create", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"tidelog keyring create: keyring {path} exists")
    assert tidelog(["keyring", "create", str(path), "--output", "json"]) == 1
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["type"] == "KeyringError" and "exists already" in error["message"]
