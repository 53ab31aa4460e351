"""Named listeners without a cluster: flag parsing, the node's checks, the metadata record, and
the address a call is answered with on each listener (node/listeners.py)."""

from __future__ import annotations

import argparse
import contextvars
from pathlib import Path

import pytest
from tidelog.node.errors import ConfigError
from tidelog.node.listeners import (
    Listener,
    address_for_client,
    current_listener,
    parse_listeners,
)
from tidelog.node.main import add_node_arguments, config_from_args
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import RegisterNode, decode_command, encode_command


def _config(*flags: str):  # noqa: ANN202 - NodeConfig
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return config_from_args(parser.parse_args(
        ["--id", "1", "--peers", "1=127.0.0.1:9091", "--data-dir", str(Path("/nonexistent")),
         *flags]))


def test_flags_make_listeners_and_an_unadvertised_one_advertises_its_bind_address() -> None:
    config = _config("--listen", "0.0.0.0:9091", "--listeners",
                     "internal=0.0.0.0:9092,external=0.0.0.0:19092",
                     "--advertised-listeners", "internal=node1:9092")
    assert config.listeners == (Listener("internal", "0.0.0.0:9092", "node1:9092"),
                                Listener("external", "0.0.0.0:19092", "0.0.0.0:19092"))
    assert config.advertised_listeners == {"internal": "node1:9092",
                                           "external": "0.0.0.0:19092"}
    assert _config().listeners == ()  # --listen/--advertise alone: no named listener


def test_environment_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDELOG_LISTENERS", "ext=127.0.0.1:29092")
    monkeypatch.setenv("TIDELOG_ADVERTISED_LISTENERS", "ext=example.org:29092")
    assert _config().listeners == (Listener("ext", "127.0.0.1:29092", "example.org:29092"),)


@pytest.mark.parametrize(("flags", "message"), [
    (("--listeners", "ext=127.0.0.1:9091"), "takes the address of --listen"),
    (("--listen", "0.0.0.0:9091", "--listeners", "ext=127.0.0.1:9091"),
     "takes the address of --listen"),
    (("--listeners", "ext=127.0.0.1:19091"), "takes the address of --peer-listen"),
    (("--listeners", "ext=127.0.0.1:10091"), "takes the address of --metrics-listen"),
    (("--listeners", "a=127.0.0.1:9500,b=127.0.0.1:9500"), "takes the address of listener a"),
    (("--listeners", "a=127.0.0.1:9500,a=127.0.0.1:9501"), "appears twice"),
    (("--listeners", "9a=127.0.0.1:9500"), "expected NAME=HOST:PORT"),
    (("--listeners", "a=127.0.0.1"), "expected HOST:PORT"),
    (("--listeners", "a=127.0.0.1:9500", "--advertised-listeners", "b=x:1"),
     "--advertised-listeners names b"),
])
def test_bad_listener_flags_are_refused_with_a_reason(flags: tuple[str, ...],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(*flags)


def test_register_node_round_trips_listeners_and_stays_byte_identical_without() -> None:
    plain = RegisterNode(node_id=2, address="node2:9091")
    assert encode_command(plain) == b'{"address":"node2:9091","node_id":2,"op":"register_node"}'
    named = RegisterNode(node_id=2, address="node2:9091",
                         listeners=(("external", "127.0.0.1:19092"),))
    assert decode_command(encode_command(named)) == named
    state = MetadataState()
    state.apply(0, named)
    assert state.listeners == {2: {"external": "127.0.0.1:19092"}}
    state.apply(1, plain)  # re-registered without listeners: none are left behind
    assert state.listeners == {} and state.nodes == {2: "node2:9091"}


def test_address_for_client_follows_the_listener_of_the_call() -> None:
    listeners = {1: {"external": "127.0.0.1:19091"}}

    def answer(listener: str, node_id: int) -> str:
        def inner() -> str:
            current_listener.set(listener)
            return address_for_client(listeners, node_id, f"node{node_id}:9091")
        return contextvars.copy_context().run(inner)

    assert answer("", 1) == "node1:9091"
    assert answer("external", 1) == "127.0.0.1:19091"
    assert answer("external", 2) == "node2:9091"  # no such listener on node 2: its default
    assert parse_listeners("", "") == ()
