"""Fixtures for the storage tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from storage_helpers import Clock, crash, small_config
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.node.storage.fs import OS_FS, FileSystem


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_log(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., PartitionLog]]:
    opened: list[PartitionLog] = []

    def _open(config: LogConfig | None = None, directory: Path | None = None,
              fs: FileSystem = OS_FS) -> PartitionLog:
        log = PartitionLog.open(directory or tmp_path / "p0", config or small_config(),
                                now_ms=clock, fs=fs)
        opened.append(log)
        return log

    yield _open
    for log in opened:
        if not log._closed:
            crash(log)
