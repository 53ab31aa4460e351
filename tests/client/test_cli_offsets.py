"""`tidelog consume --offset` (client/offset_spec.py) and `-f` (client/record_format.py), pure.

The cluster half (a spec resolved against real partitions, -e, out of range) is in
test_cli_consume_produce_cluster.py."""

from __future__ import annotations

import pytest
from tidelog.client.cli import build_parser, main
from tidelog.client.offset_spec import (
    INT64_MAX,
    Bound,
    Kind,
    OffsetSpecError,
    OutOfRange,
    PartitionRange,
    checked_start,
    parse_offset_spec,
    resolve,
)
from tidelog.client.record_format import FormatError, compile_format
from tidelog.client.records import ConsumerRecord

NOW = 1_764_583_200_000  # 2025-12-01T10:00:00Z


@pytest.mark.parametrize(("text", "start", "stop"), [
    ("start", Bound(Kind.START), None),
    ("end", Bound(Kind.END), None),
    ("42", Bound(Kind.OFFSET, 42), None),
    ("+3", Bound(Kind.AFTER_START, 3), None),
    ("-3", Bound(Kind.BEFORE_END, 3), None),
    ("@1700000000000", Bound(Kind.TIME, 1_700_000_000_000), None),
    ("@2025-12-01T09:00:00Z", Bound(Kind.TIME, NOW - 3_600_000), None),
    ("@2025-12-01T09:00:00", Bound(Kind.TIME, NOW - 3_600_000), None),  # no zone: UTC
    ("@2025-12-01T11:00:00+02:00", Bound(Kind.TIME, NOW - 3_600_000), None),
    ("-1h", Bound(Kind.TIME, NOW - 3_600_000), None),
    ("-15m", Bound(Kind.TIME, NOW - 900_000), None),
    ("-30s", Bound(Kind.TIME, NOW - 30_000), None),
    ("-2d", Bound(Kind.TIME, NOW - 172_800_000), None),
    ("-250ms", Bound(Kind.TIME, NOW - 250), None),
    ("@-1h", Bound(Kind.TIME, NOW - 3_600_000), None),
    ("start:end", Bound(Kind.START), Bound(Kind.END)),
    (":end", Bound(Kind.START), Bound(Kind.END)),
    ("10:20", Bound(Kind.OFFSET, 10), Bound(Kind.OFFSET, 20)),
    ("-1h:end", Bound(Kind.TIME, NOW - 3_600_000), Bound(Kind.END)),
    ("-5:", Bound(Kind.BEFORE_END, 5), None),
    ("@2025-12-01T09:00:00Z:@2025-12-01T10:00:00Z",
     Bound(Kind.TIME, NOW - 3_600_000), Bound(Kind.TIME, NOW)),
    ("@2025-12-01T09:00:00Z:end", Bound(Kind.TIME, NOW - 3_600_000), Bound(Kind.END)),
    ("@1:@2", Bound(Kind.TIME, 1), Bound(Kind.TIME, 2)),
])
def test_every_form_parses(text: str, start: Bound, stop: Bound | None) -> None:
    spec = parse_offset_spec(text, NOW)
    assert (spec.start, spec.stop) == (start, stop)


@pytest.mark.parametrize("text", ["", "soon", "1.5", "+", "-", "@", "@yesterday", "-1y",
                                  "start:later", "1:2:3", "+-1"])
def test_nonsense_is_refused_with_the_syntax(text: str) -> None:
    with pytest.raises(OffsetSpecError, match="expected start"):
        parse_offset_spec(text, NOW)


def test_an_offset_larger_than_int64_is_refused() -> None:
    assert parse_offset_spec(str(INT64_MAX), NOW).start == Bound(Kind.OFFSET, INT64_MAX)
    with pytest.raises(OffsetSpecError, match="larger than the largest offset"):
        parse_offset_spec("999999999999999999999999", NOW)


def test_resolve_clamps_relative_offsets_and_falls_back_to_the_end_for_times() -> None:
    held = PartitionRange(log_start=10, high_watermark=20)
    times = {5: 12}.get
    assert resolve(Bound(Kind.START), held, times) == 10
    assert resolve(Bound(Kind.END), held, times) == 20
    assert resolve(Bound(Kind.AFTER_START, 3), held, times) == 13
    assert resolve(Bound(Kind.AFTER_START, 99), held, times) == 20
    assert resolve(Bound(Kind.BEFORE_END, 3), held, times) == 17
    assert resolve(Bound(Kind.BEFORE_END, 99), held, times) == 10
    assert resolve(Bound(Kind.TIME, 5), held, times) == 12
    assert resolve(Bound(Kind.TIME, 6), held, times) == 20  # nothing that late yet


def test_checked_start_follows_the_reset_policy() -> None:
    held = PartitionRange(log_start=10, high_watermark=20)
    assert checked_start(20, held, "error", "t/0") == 20  # the end is in range: new records
    assert checked_start(25, held, "earliest", "t/0") == 10
    assert checked_start(5, held, "latest", "t/0") == 20
    with pytest.raises(OutOfRange, match=r"offset 25 is out of range for t/0: it holds offsets "
                                         r"10 to 19 \(log start 10, high watermark 20\)"):
        checked_start(25, held, "error", "t/0")
    with pytest.raises(OutOfRange, match="it is empty"):
        checked_start(1, PartitionRange(0, 0), "error", "t/0")


RECORD = ConsumerRecord(topic="orders", partition=2, offset=41, timestamp=1_700_000_000_123,
                        key=b"alice", value=b"hello\xff", headers=(("h1", b"a"), ("h2", b"b")))


def test_format_fields_and_escapes() -> None:
    render = compile_format(r"%t/%p@%o %T %k=%v [%h] %K %V 100%%\t|\n")
    assert render(RECORD) == ("orders/2@41 1700000000123 alice=hello\\xff [h1=a,h2=b] 5 6 "
                              "100%\t|\n")
    null_key = ConsumerRecord(topic="t", partition=0, offset=0, timestamp=0, key=None,
                              value=b"", headers=())
    assert compile_format("[%k] %K %V [%h]")(null_key) == "[] -1 0 []"


@pytest.mark.parametrize(("fmt", "message"), [("%x", "unknown field %x"),
                                              (r"\q", r"unknown escape \\q"),
                                              ("50%", "lone %")])
def test_format_errors(fmt: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        compile_format(fmt)


@pytest.mark.parametrize(("argv", "message"), [
    (["consume", "t", "--offset", "999999999999999999999999"], "larger than the largest offset"),
    (["consume", "t", "-o", "soon"], "'soon' is not an offset: expected start"),
    (["consume", "t", "--from-time", "noon"], "argument --from-time: 'noon'"),
    (["consume", "t", "-f", "%x"], "unknown field %x"),
    (["consume", "t", "-f", "%v", "--output", "json"], "not allowed with argument"),
])
def test_bad_arguments_are_usage_errors_before_any_connection(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """rc 2 from argparse: raised while parsing, so before the CLI probes or asks any node."""
    with pytest.raises(SystemExit) as exited:
        main(["--bootstrap", "127.0.0.1:1", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "tidelog consume: error: " in err and message in err and "Traceback" not in err


@pytest.mark.parametrize(("value", "start"), [
    ("-1h", Bound(Kind.TIME, 0)), ("-10", Bound(Kind.BEFORE_END, 10)),
    ("-10:end", Bound(Kind.BEFORE_END, 10)), ("-15m:end", Bound(Kind.TIME, 0)),
])
def test_negative_and_duration_values_are_taken_after_o(value: str, start: Bound) -> None:
    """argparse reads a word starting with '-' as an option unless it looks like a negative
    number: `-o -1h` and `-o -10:end` must still be the option's value."""
    args = build_parser().parse_args(["consume", "t", "-o", value])
    assert args.offset.start.kind is start.kind
    if start.kind is Kind.BEFORE_END:
        assert args.offset.start == start
