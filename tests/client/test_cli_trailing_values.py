"""`tidelog queue send NAME --key K VALUE ...`: values after the options are values, not errors.

argparse stops filling a `VALUE ...` positional at the first option; the README's
`tidelog queue send --key poison jobs "always fails"` worked but the natural
`tidelog queue send jobs --key poison "always fails"` failed with "unrecognized arguments".
"""

from __future__ import annotations

import pytest
from tidelog.client.cli import _take_trailing_values, build_parser


def parse(argv: list[str]):  # type: ignore[no-untyped-def]
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    _take_trailing_values(parser, args, extras)
    return args


def test_values_after_the_options_are_sent_in_order() -> None:
    args = parse(["queue", "send", "jobs", "first", "--key", "k", "second", "third"])
    assert (args.name, args.key, args.values) == ("jobs", "k", ["first", "second", "third"])


def test_an_unknown_option_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["queue", "send", "jobs", "--key", "k", "v", "--bogus"])
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_commands_without_trailing_values_refuse_extra_words() -> None:
    with pytest.raises(SystemExit):
        parse(["topic", "list", "extra"])
