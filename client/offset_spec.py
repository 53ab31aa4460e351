"""`tidelog consume --offset`, rpk-like: where to start and, for `A:B`, where to stop.

Parsing is pure (the current time is an argument) so every form is unit-tested without a cluster;
`resolve` turns a bound into an offset of one partition given its log start, high watermark and a
time lookup (the consumer's offsets_for_times), which is the only I/O and stays with the caller.

    start | end | N | +N | -N | @MS | @ISO8601 | -DURATION | @-DURATION | A:B

`+N` is N offsets after the log start, `-N` N offsets before the high watermark (both clamped to
the log), `-1h`/`-15m`/`-30s`/`-2d`/`-500ms` a time back from now. `A:B` reads from A up to B,
B excluded like a Python slice (`end` is the high watermark when consuming starts, a time stops
before the first record at or after it); an empty A is `start`, an empty B follows new records.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

INT64_MAX = 2**63 - 1
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"-(\d+)(ms|s|m|h|d)")


class OffsetSpecError(ValueError):
    """Text that is not an offset spec; the message says what is accepted."""


class Kind(enum.Enum):
    START = "start"
    END = "end"
    OFFSET = "offset"  # an absolute offset
    AFTER_START = "after-start"  # +N
    BEFORE_END = "before-end"  # -N
    TIME = "time"  # ms since the epoch (relative times are made absolute when parsed)


@dataclass(frozen=True)
class Bound:
    kind: Kind
    value: int = 0


@dataclass(frozen=True)
class OffsetSpec:
    """start: where to begin; stop: the first offset not read (None: follow new records)."""

    start: Bound
    stop: Bound | None
    text: str

    @property
    def explicit_offset(self) -> bool:
        """An absolute start offset: the one form whose range is checked (--reset error)."""
        return self.start.kind is Kind.OFFSET


@dataclass(frozen=True)
class PartitionRange:
    """What a partition holds now: offsets [log_start, high_watermark)."""

    log_start: int
    high_watermark: int


class OutOfRange(Exception):
    """An absolute --offset outside [log start, high watermark] under --reset error."""


START = OffsetSpec(Bound(Kind.START), None, "start")
END = OffsetSpec(Bound(Kind.END), None, "end")

SYNTAX = ("start | end | N | +N (N after the start) | -N (N before the end) | @MS | "
          "@2026-12-01T10:00:00Z | -1h, -15m, -30s, -2d (back from now) | A:B, e.g. start:end, "
          "-1h:end, @t1:@t2, 10:20 (B excluded; empty A: start; empty B: follow)")
HELP = f"where to start, and with A:B where to stop: {SYNTAX}"


def parse_offset_spec(text: str, now_ms: int) -> OffsetSpec:
    """Parse the whole `--offset` value; relative times count back from now_ms."""
    text = text.strip()
    single = _bound(text, now_ms)
    if single is not None:
        return OffsetSpec(single, None, text)
    # A time like 10:00:00 holds colons too: take the first split whose both sides parse.
    for index, char in enumerate(text):
        if char != ":":
            continue
        left, right = text[:index], text[index + 1:]
        start = Bound(Kind.START) if left == "" else _bound(left, now_ms)
        stop = None if right == "" else _bound(right, now_ms)
        if start is not None and (right == "" or stop is not None):
            return OffsetSpec(start, stop, text)
    raise OffsetSpecError(f"{text!r} is not an offset: expected {SYNTAX}")


def _bound(text: str, now_ms: int) -> Bound | None:
    if text == "start":
        return Bound(Kind.START)
    if text == "end":
        return Bound(Kind.END)
    if text.isdigit():
        return Bound(Kind.OFFSET, _offset(text))
    if text[:1] == "+" and text[1:].isdigit():
        return Bound(Kind.AFTER_START, _offset(text[1:]))
    if text[:1] == "-" and text[1:].isdigit():
        return Bound(Kind.BEFORE_END, _offset(text[1:]))
    relative = _DURATION.fullmatch(text.removeprefix("@"))
    if relative is not None:
        return Bound(Kind.TIME, now_ms - int(relative.group(1)) * _UNIT_MS[relative.group(2)])
    if text[:1] == "@" and len(text) > 1:
        moment = text[1:]
        if moment.isdigit():
            return Bound(Kind.TIME, _offset(moment))
        try:
            return Bound(Kind.TIME, parse_time_ms(moment))
        except ValueError:
            return None
    return None


def _offset(digits: str) -> int:
    value = int(digits)
    if value > INT64_MAX:
        raise OffsetSpecError(f"{digits} is larger than the largest offset (2^63-1 = {INT64_MAX})")
    return value


def parse_time_ms(text: str) -> int:
    """ISO 8601 to ms since the epoch; a time without a zone is UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def resolve(bound: Bound, held: PartitionRange, first_at: Callable[[int], int | None]) -> int:
    """The offset `bound` names in a partition holding `held`. first_at(ms) is the first offset
    whose timestamp is >= ms (None: none yet, which resolves to the high watermark)."""
    if bound.kind is Kind.START:
        return held.log_start
    if bound.kind is Kind.END:
        return held.high_watermark
    if bound.kind is Kind.OFFSET:
        return bound.value
    if bound.kind is Kind.AFTER_START:
        return min(held.log_start + bound.value, held.high_watermark)
    if bound.kind is Kind.BEFORE_END:
        return max(held.high_watermark - bound.value, held.log_start)
    found = first_at(bound.value)
    return held.high_watermark if found is None else found


def checked_start(offset: int, held: PartitionRange, reset: str, where: str) -> int:
    """An absolute start offset inside [log start, high watermark] as it is; outside it, what
    the reset policy says: 'earliest', 'latest', or 'error' (OutOfRange naming the range)."""
    if held.log_start <= offset <= held.high_watermark:
        return offset
    if reset == "earliest":
        return held.log_start
    if reset == "latest":
        return held.high_watermark
    raise OutOfRange(
        f"offset {offset} is out of range for {where}: it holds offsets {held.log_start} to "
        f"{held.high_watermark - 1} (log start {held.log_start}, high watermark "
        f"{held.high_watermark}); use --reset earliest|latest to start at an end instead"
        if held.high_watermark > held.log_start else
        f"offset {offset} is out of range for {where}: it is empty (log start and high "
        f"watermark {held.high_watermark}); use --reset earliest|latest to start at an end "
        "instead")
