"""The storage model of test_storage_model.py (power losses, torn sectors, failing fsyncs, bit
rot then quarantine, crashes, truncations, retention, resets) with encryption at rest on.

The same claims hold on the stored (encrypted) form: (a) every batch below the reported durable
end survives, byte for byte as appended (read returns the logical batch); (b) nothing else is
served; (c) open never fails. A torn encrypted batch is a torn batch: cut as a tail.
Nonces come from a seeded generator so that hypothesis replays an example exactly."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from test_storage_model import PowerLossMachine
from tidelog.node.security.keyring import FileKeyring, create_keyring
from tidelog.node.storage.encryption import AtRestCipher, is_encrypted
from tidelog.proto.batch import iter_batches

_KEYRING: list[Path] = []


class EncryptedPowerLossMachine(PowerLossMachine):
    def _open(self, **kwargs: object):  # type: ignore[no-untyped-def]
        if self.config.encryption is None:
            nonces = random.Random(0)
            cipher = AtRestCipher(FileKeyring(_KEYRING[0]), random_bytes=nonces.randbytes)
            self.config = dataclasses.replace(self.config, encryption=cipher)
        return super()._open(**kwargs)

    def teardown(self) -> None:
        if hasattr(self, "log") and self.log.size_bytes:  # the stored form really is sealed
            for segment in self.log._segments:
                data = self.fs.read(segment.path)
                assert all(is_encrypted(data, pos) for pos, _ in iter_batches(data))


@pytest.fixture(scope="module", autouse=True)
def keyring(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("ring") / "keyring.json"
    create_keyring(path)
    _KEYRING[:] = [path]


EncryptedPowerLossMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TestEncryptedLogSurvivesPowerLoss = EncryptedPowerLossMachine.TestCase
