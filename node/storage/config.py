"""Log configuration: a frozen dataclass validated at construction, and the fsync policy.

FsyncPolicy strings (`FsyncPolicy.parse`), also accepted from `TIDELOG_FSYNC`-style settings:

    always                  the caller syncs before every ack; needs_sync() is true when dirty
    interval:100ms          sync when 100 ms have passed since the last sync
    interval:1MiB           sync when 1 MiB was appended since the last sync
    interval:100ms,1MiB     whichever comes first

Sizes take B, KiB, MiB, GiB (or plain bytes); durations take ms or s.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from tidelog.node.storage.encryption import AtRestCipher
from tidelog.proto.batch import HEADER_SIZE

__all__ = ["FsyncMode", "FsyncPolicy", "LogConfig", "parse_bytes", "parse_ms"]

MIB = 1024 * 1024
DAY_MS = 24 * 3600 * 1000
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": MIB, "gib": 1024 * MIB, "kb": 1000,
               "mb": 1000**2, "gb": 1000**3}
_TIME_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


class FsyncMode(enum.Enum):
    ALWAYS = "always"
    INTERVAL = "interval"


@dataclass(frozen=True, slots=True, kw_only=True)
class FsyncPolicy:
    mode: FsyncMode = FsyncMode.ALWAYS
    interval_ms: int | None = None
    interval_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.mode is FsyncMode.ALWAYS:
            if self.interval_ms is not None or self.interval_bytes is not None:
                raise ValueError("fsync policy 'always' takes no interval")
            return
        if self.interval_ms is None and self.interval_bytes is None:
            raise ValueError("fsync policy 'interval' needs interval_ms and/or interval_bytes")
        if self.interval_ms is not None and self.interval_ms <= 0:
            raise ValueError(f"fsync interval_ms must be > 0, got {self.interval_ms}")
        if self.interval_bytes is not None and self.interval_bytes <= 0:
            raise ValueError(f"fsync interval_bytes must be > 0, got {self.interval_bytes}")

    @classmethod
    def always(cls) -> FsyncPolicy:
        return cls(mode=FsyncMode.ALWAYS)

    @classmethod
    def interval(cls, *, ms: int | None = None, bytes_: int | None = None) -> FsyncPolicy:
        return cls(mode=FsyncMode.INTERVAL, interval_ms=ms, interval_bytes=bytes_)

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        text = text.strip().lower()
        if text == "always":
            return cls.always()
        kind, sep, rest = text.partition(":")
        if kind != "interval" or not sep or not rest:
            raise ValueError(f"fsync policy {text!r}: expected 'always' or 'interval:<limits>'")
        interval_ms: int | None = None
        interval_bytes: int | None = None
        for part in rest.split(","):
            part = part.strip()
            if re.fullmatch(r"\d+\s*(ms|s|m|h)", part):
                interval_ms = parse_ms(part)
            else:
                interval_bytes = parse_bytes(part)
        return cls(mode=FsyncMode.INTERVAL, interval_ms=interval_ms, interval_bytes=interval_bytes)

    def __str__(self) -> str:
        if self.mode is FsyncMode.ALWAYS:
            return "always"
        parts = []
        if self.interval_ms is not None:
            parts.append(f"{self.interval_ms}ms")
        if self.interval_bytes is not None:
            parts.append(f"{self.interval_bytes}B")
        return "interval:" + ",".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    segment_bytes_max: int = 128 * MIB
    segment_ms_max: int = 7 * DAY_MS
    index_interval_bytes: int = 4096
    batch_bytes_max: int = 8 * MIB
    fsync: FsyncPolicy = field(default_factory=FsyncPolicy.always)
    retention_ms: int | None = None
    retention_bytes: int | None = None
    # Encryption at rest (encryption.py): None stores batches as they come (plaintext); with a
    # cipher every append is sealed under its current key. Plaintext batches already in the log
    # stay readable either way. Compared by identity: it is a live object (its keyring reloads).
    encryption: AtRestCipher | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Positions are stored as uint32 in the index files, hence the 2 GiB ceiling.
        if not 1024 <= self.segment_bytes_max <= 2**31 - 1:
            raise ValueError(
                f"segment_bytes_max must be in [1 KiB, 2 GiB), got {self.segment_bytes_max}"
            )
        if self.segment_ms_max <= 0:
            raise ValueError(f"segment_ms_max must be > 0, got {self.segment_ms_max}")
        if self.index_interval_bytes <= 0:
            raise ValueError(f"index_interval_bytes must be > 0, got {self.index_interval_bytes}")
        if not HEADER_SIZE < self.batch_bytes_max <= self.segment_bytes_max:
            raise ValueError(
                f"batch_bytes_max ({self.batch_bytes_max}) must be above the {HEADER_SIZE}-byte "
                "header and "
                f"at most segment_bytes_max ({self.segment_bytes_max}): a batch must fit a segment"
            )
        if self.retention_ms is not None and self.retention_ms <= 0:
            raise ValueError(f"retention_ms must be > 0 or None, got {self.retention_ms}")
        if self.retention_bytes is not None and self.retention_bytes <= 0:
            raise ValueError(f"retention_bytes must be > 0 or None, got {self.retention_bytes}")


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([a-z]*)", text.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 64KiB, 1MiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_ms(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(ms|s|m|h)", text.strip().lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 100ms, 5s)")
    return int(match.group(1)) * _TIME_UNITS[match.group(2)]
