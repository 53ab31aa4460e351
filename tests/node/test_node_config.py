"""The peer listener's address: derived from the client address unless given (defect 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tidelog.node.config import NodeConfig
from tidelog.node.errors import ConfigError
from tidelog.node.main import add_node_arguments, config_from_args


def make(**changes: object) -> NodeConfig:
    fields: dict[str, object] = {
        "node_id": 1, "listen": "0.0.0.0:9091", "advertise": "127.0.0.1:19091",
        "peers": {1: "peer1:9091", 2: "peer2:9091"}, "data_dir": Path("/tmp/x")}
    fields.update(changes)
    return NodeConfig(**fields)  # type: ignore[arg-type]


def test_peer_addresses_are_the_client_ports_plus_the_offset() -> None:
    config = make()
    assert config.peer_listen_address == "0.0.0.0:19091"
    assert config.peer_addresses == {1: "peer1:19091", 2: "peer2:19091"}
    other = make(peer_port_offset=-1000, peer_listen="0.0.0.0:7000")
    assert other.peer_listen_address == "0.0.0.0:7000"
    assert other.peer_addresses[2] == "peer2:8091"


@pytest.mark.parametrize(("changes", "message"), [
    ({"peer_port_offset": 0}, "must not be 0"),
    ({"peers": {1: "peer1:60000", 2: "peer2:9091"}, "listen": "0.0.0.0:60000"},
     "would be 70000"),
    ({"peer_listen": "0.0.0.0:9091"}, "needs a port of its own"),
    ({"peer_listen": "nonsense"}, "expected HOST:PORT"),
])
def test_an_unusable_peer_port_is_refused_with_a_reason(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(**changes)


def test_flags_and_environment_set_the_peer_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("TIDELOG_PEER_LISTEN", "127.0.0.1:29999")
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    args = parser.parse_args(["--id", "1", "--listen", "127.0.0.1:9091",
                              "--peers", "1=127.0.0.1:9091"])
    assert config_from_args(args).peer_listen_address == "127.0.0.1:29999"
    args = parser.parse_args(["--id", "1", "--listen", "127.0.0.1:9091", "--peers",
                              "1=127.0.0.1:9091", "--peer-listen", "127.0.0.1:28888"])
    assert config_from_args(args).peer_listen_address == "127.0.0.1:28888"
