"""The committed generated code must match proto/*.proto (regenerate with `make proto`)."""

from tidelog.proto import regenerate


def test_generated_code_matches_proto_files() -> None:
    stale = regenerate.stale_files()
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
