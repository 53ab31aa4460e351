"""Shared helpers for the storage tests (imported by file name: tests/ is not a package)."""

from __future__ import annotations

from tidelog.node.sim.simfs import SimFileSystem
from tidelog.node.storage import LogConfig, PartitionLog
from tidelog.proto.batch import Codec, encode_batch


def make_batch(records: int = 1, value_bytes: int = 20, *, timestamp_ms: int = 1_000,
               term: int = 0, tag: int = 0, codec: Codec = Codec.LZ4) -> bytes:
    value = (b"%d-" % tag) * (value_bytes // 3 + 1)
    return encode_batch(
        [(b"k%d" % i, value[:value_bytes], (), timestamp_ms) for i in range(records)],
        codec=codec, term=term,
    )


def small_config(**overrides: object) -> LogConfig:
    values: dict[str, object] = dict(segment_bytes_max=2048, batch_bytes_max=2048,
                                     index_interval_bytes=256)
    values.update(overrides)
    return LogConfig(**values)  # type: ignore[arg-type]


def crash(log: PartitionLog) -> None:
    """Abandon the log like a killed process: close descriptors, write nothing more."""
    for segment in log._segments:
        segment.close()
    log._closed = True


class Clock:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class PowerCut(Exception):
    pass


class CutsPowerAfter(SimFileSystem):
    """Raises PowerCut at the k-th file-system change once armed (then the test cuts power)."""

    armed_after: int | None = None

    def _tick(self) -> None:
        if self.armed_after is not None:
            self.armed_after -= 1
            if self.armed_after < 0:
                self.armed_after = None
                raise PowerCut

    def pwrite(self, fd, data, position):  # type: ignore[no-untyped-def]
        self._tick()
        return super().pwrite(fd, data, position)

    def ftruncate(self, fd, length):  # type: ignore[no-untyped-def]
        self._tick()
        super().ftruncate(fd, length)

    def fsync(self, fd):  # type: ignore[no-untyped-def]
        self._tick()
        super().fsync(fd)

    def fsync_directory(self, path):  # type: ignore[no-untyped-def]
        self._tick()
        super().fsync_directory(path)

    def unlink(self, path):  # type: ignore[no-untyped-def]
        self._tick()
        super().unlink(path)

    def replace(self, src, dst):  # type: ignore[no-untyped-def]
        self._tick()
        super().replace(src, dst)
