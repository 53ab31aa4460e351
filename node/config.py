"""Node configuration: one frozen dataclass, from flags and `TIDELOG_*` variables.

Relationships are validated at construction (STYLE habit 19): no half-configured node.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from tidelog.node.errors import ConfigError
from tidelog.node.listeners import Listener
from tidelog.node.security.config import SecurityConfig


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' → (host, port), with a message a person can act on."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


PEER_PORT_OFFSET = 10_000
"""Default distance of the peer port from the client port (as Redis Cluster's bus port): nodes
given only client addresses in --peers find each other's peer listeners without more flags."""


def peer_address(client_address: str, offset: int) -> str:
    """The peer listener of the node whose client address is given: same host, port + offset."""
    host, port = parse_address(client_address)
    if not 0 < port + offset < 65536:
        raise ConfigError(
            f"peer port of {client_address} would be {port + offset} (client port + "
            f"--peer-port-offset {offset}); pick another offset or client port")
    return f"{host}:{port + offset}"


METRICS_PORT_OFFSET = 1_000
"""Default distance of the Prometheus endpoint's port from the client port (9091 → 10091), so
every node on one host gets its own without a flag (docs/metrics.md)."""

METRICS_OFF = "off"


def parse_peers(text: str) -> dict[int, str]:
    """'1=host:port,2=host:port' → {1: 'host:port', 2: 'host:port'}."""
    peers: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_id, sep, address = item.partition("=")
        if not sep or not node_id.strip().isdigit():
            raise ConfigError(f"expected ID=HOST:PORT in --peers, got {item!r}")
        parse_address(address.strip())
        if int(node_id) in peers:
            raise ConfigError(f"node {node_id} appears twice in --peers")
        peers[int(node_id)] = address.strip()
    return peers


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node needs to start. `peers` includes this node itself.

    Two listeners: `listen` serves clients (Broker, Health); `peer_listen` serves the node-to-node
    Cluster service (Raft streams, metadata forwarding), which clients must never reach (the
    security issue puts it behind mTLS). `peers` holds client addresses; the peer addresses are
    derived from them with `peer_port_offset`.
    """

    node_id: int
    listen: str
    advertise: str
    peers: dict[int, str]
    data_dir: Path
    tick_ms: int = 100
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    fsync: str = "always"
    batch_bytes_max: int = 8 * 1024 * 1024
    request_partitions_max: int = 1024
    metadata_voters_max: int = 5
    leader_balance_interval_ms: int = 3000
    shutdown_transfer_ms_max: int = 3000
    cluster_id: str = "tidelog"
    # --join: client addresses (HOST:PORT, DNS names welcome) of members of a running cluster
    # this new node asks to be let in (node/membership.py); `peers` then holds only this node.
    join: tuple[str, ...] = ()
    peer_listen: str = ""  # empty: the --listen host, port + peer_port_offset
    peer_port_offset: int = PEER_PORT_OFFSET
    security: SecurityConfig = field(default_factory=SecurityConfig)  # docs/security.md
    # The Prometheus endpoint (docs/metrics.md): "" = the --listen host, port + METRICS_PORT_OFFSET;
    # "off" = none; else HOST:PORT.
    metrics_listen: str = ""
    # Named client listeners besides the default one (node/listeners.py), e.g. one per network.
    listeners: tuple[Listener, ...] = ()
    # Snapshot the metadata state every this many applied metadata log entries and truncate the
    # log below the previous snapshot (node/metadata_snapshot.py); 0 = never (TIDELOG_METADATA_
    # SNAPSHOT_EVERY, read here so every way of building a node's config honours it).
    metadata_snapshot_every: int = field(default_factory=lambda: int(
        env_default("metadata_snapshot_every", "1000") or "1000"))
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ConfigError(
                f"--peers must include this node's own id {self.node_id} "
                f"(got ids {sorted(self.peers)})"
            )
        parse_address(self.listen)
        parse_address(self.advertise)
        for seed in self.join:
            parse_address(seed)
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ConfigError("heartbeat ticks must be >= 1 and below the election ticks")
        if self.metadata_snapshot_every < 0:
            raise ConfigError("TIDELOG_METADATA_SNAPSHOT_EVERY must be >= 0 (0: never)")
        if self.tick_ms < 10:
            raise ConfigError("--tick-ms must be at least 10")
        if self.batch_bytes_max < 1024:
            raise ConfigError("batch bytes max must be at least 1 KiB")
        if self.peer_port_offset == 0:
            raise ConfigError("--peer-port-offset must not be 0: the peer listener needs a port "
                              "of its own")
        parse_address(self.peer_listen_address)
        if self.metrics_address is not None:
            parse_address(self.metrics_address)
        self.peer_addresses  # noqa: B018 - validates every derived peer port
        if parse_address(self.peer_listen_address) == parse_address(self.listen):
            raise ConfigError(f"--peer-listen {self.peer_listen_address} is the client "
                              "listener's address; it needs a port of its own")
        self._check_listeners()

    def _check_listeners(self) -> None:
        """Every named listener binds a port no other listener of this node binds."""
        bound = {parse_address(self.listen): "--listen",
                 parse_address(self.peer_listen_address): "--peer-listen"}
        if self.metrics_address is not None:
            bound[parse_address(self.metrics_address)] = "--metrics-listen"
        for listener in self.listeners:
            parse_address(listener.advertise)
            address = parse_address(listener.listen)
            clash = bound.get(address) or next(
                (what for (host, port), what in bound.items()
                 if port == address[1] and "0.0.0.0" in (host, address[0])), None)
            if clash:
                raise ConfigError(f"listener {listener.name} ({listener.listen}) takes the "
                                  f"address of {clash}; it needs a port of its own")
            bound[address] = f"listener {listener.name}"

    @property
    def advertised_listeners(self) -> dict[str, str]:
        """listener name → the address this node tells that listener's clients."""
        return {listener.name: listener.advertise for listener in self.listeners}

    @property
    def peer_listen_address(self) -> str:
        """Where this node serves its peers."""
        return self.peer_listen or peer_address(self.listen, self.peer_port_offset)

    @property
    def metrics_address(self) -> str | None:
        """Where this node serves Prometheus metrics (HTTP GET /metrics); None when turned off."""
        if self.metrics_listen == METRICS_OFF:
            return None
        return self.metrics_listen or peer_address(self.listen, METRICS_PORT_OFFSET)

    @property
    def metrics_explicit(self) -> bool:
        """An address the operator chose: failing to bind it stops the node (a derived default
        that is taken only logs a warning)."""
        return self.metrics_listen not in ("", METRICS_OFF)

    @property
    def peer_addresses(self) -> dict[int, str]:
        """node id → the address its peer listener is reached at."""
        return {node_id: peer_address(address, self.peer_port_offset)
                for node_id, address in self.peers.items()}

    @property
    def metadata_voters(self) -> tuple[int, ...]:
        """The first 3 or 5 node ids (an odd count) vote in the metadata group; others observe."""
        ids = sorted(self.peers)
        count = min(len(ids), self.metadata_voters_max)
        if count % 2 == 0 and count > 1:
            count -= 1
        return tuple(ids[:count])

    def replace(self, **changes: object) -> NodeConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


ENV_PREFIX = "TIDELOG_"


def env_default(name: str, default: str | None = None) -> str | None:
    """The value of TIDELOG_<NAME>, for argparse defaults (flags win over the environment)."""
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)
