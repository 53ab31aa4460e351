"""`tidelog consume -f FORMAT`: kcat's format string, compiled once, applied to every record.

    %t topic  %p partition  %o offset  %T timestamp (ms)  %k key  %v value  %h headers (k=v,...)
    %K key length  %V value length (-1 when null, as kcat)  %%  a percent sign
    \\n \\t \\r \\\\  newline, tab, carriage return, backslash

Nothing is added at the end: say `\\n` (kcat does the same). Bytes are decoded as UTF-8 with
backslash escapes for what is not. A null key prints as nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


class FormatError(ValueError):
    """An unknown %x or \\x in a format string."""


def text(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", errors="backslashreplace")


def _length(data: bytes | None) -> str:
    return "-1" if data is None else str(len(data))


_FIELDS: dict[str, Callable[[Any], str]] = {
    "t": lambda r: r.topic,
    "p": lambda r: str(r.partition),
    "o": lambda r: str(r.offset),
    "T": lambda r: str(r.timestamp),
    "k": lambda r: text(r.key),
    "v": lambda r: text(r.value),
    "K": lambda r: _length(r.key),
    "V": lambda r: _length(r.value),
    "h": lambda r: ",".join(f"{name}={text(value)}" for name, value in r.headers),
}

HELP = ("print each record with this kcat-like format: %%t topic, %%p partition, %%o offset, "
        "%%T timestamp ms, %%k key, %%v value, %%h headers, %%K/%%V key/value length, %%%% a %%; "
        "\\n \\t escapes (nothing is added at the end). E.g. '%%p@%%o %%k=%%v\\n'")


def compile_format(fmt: str) -> Callable[[Any], str]:
    """A function ConsumerRecord -> str; raises FormatError on an unknown %x or \\x."""
    parts: list[str | Callable[[Any], str]] = []
    literal: list[str] = []
    index = 0
    while index < len(fmt):
        char = fmt[index]
        if char in "%\\" and index + 1 < len(fmt):
            code = fmt[index + 1]
            index += 2
            if char == "%" and code == "%":
                literal.append("%")
            elif char == "%":
                if code not in _FIELDS:
                    raise FormatError(f"unknown field %{code} in {fmt!r} (known: "
                                      f"{' '.join('%' + c for c in _FIELDS)} %%)")
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(_FIELDS[code])
            elif code in _ESCAPES:
                literal.append(_ESCAPES[code])
            else:
                raise FormatError(f"unknown escape \\{code} in {fmt!r} (known: \\n \\t \\r \\\\)")
            continue
        if char == "%":
            raise FormatError(f"{fmt!r} ends with a lone %")
        literal.append(char)
        index += 1
    if literal:
        parts.append("".join(literal))
    frozen = tuple(parts)

    def render(record: Any) -> str:
        return "".join(p if isinstance(p, str) else p(record) for p in frozen)
    return render
