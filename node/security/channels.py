"""Every node-to-node gRPC channel: to the other node's PEER listener, with mTLS when TLS is on.

Node-to-node calls never use a client listener: there a node would need a user, a quota and ACLs
like any client, and the client port may be reachable by people. Raft streams (transport.py),
forwarded metadata proposals (metadata_service.py) and the queue coordinator's produce and fetch
to partition leaders (queues/dead_letters.py, queues/reader.py) all dial through `peer_channel`,
and the peer listener serves them as `Node:<id>` (cert_auth.PeerAuthInterceptor).

A target is a node id or a node's CLIENT address (what leader hints and NOT_LEADER errors carry);
the address is mapped to that node's peer listener. The `Node` installs its `PeerDialer` when it is
built (`install`): one node per process, as `tidelog node` runs; callers keep the one-line
`peer_channel(target)` and their own channel caches.

With TLS a channel is a `_ReloadingChannel`: every stub made on it (the callers make one per call
or per stream) gets a channel built from the current certificate files, so rotated certificates
are used by the next call without a restart; the replaced channel is closed a while later, once
its calls are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from tidelog.node.config import NodeConfig
from tidelog.node.errors import ConfigError
from tidelog.node.security.tls import TlsFiles, TlsMaterial

__all__ = ["CHANNEL_OPTIONS", "ChannelTls", "PeerDialer", "TlsClientFiles", "blocking_channel",
           "install", "peer_channel"]

log = logging.getLogger(__name__)

GRPC_MESSAGE_BYTES_MAX = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]
RETIRED_CHANNEL_CLOSE_S = 60.0  # a replaced channel's calls (at most a fetch or produce) end first


class PeerDialer:
    """Maps a node id or client address to the node's peer listener and dials it."""

    def __init__(self, config: NodeConfig, nodes: Callable[[], Mapping[int, str]] = dict,
                 tls: TlsFiles | None = None,
                 peers: Callable[[], Mapping[int, str]] = dict) -> None:
        self._config = config
        self._nodes = nodes  # node id → advertised client address, from the metadata
        # node id → peer listener of the nodes not in --peers (node/membership.py: admitted
        # and joined nodes, learned from the metadata)
        self._peers = peers
        self.tls = tls if tls is not None or not config.security.tls \
            else TlsFiles.from_config(config.security)

    def peer_address(self, target: int | str) -> str:
        node_id = target if isinstance(target, int) else self._node_of(target)
        address = self._config.peer_addresses.get(node_id) or self._peers().get(node_id)
        if address is None:
            raise ConfigError(f"node {node_id} is not a member of this cluster: no peer "
                              "listener to dial")
        return address

    def channel(self, target: int | str) -> grpc.aio.Channel:
        return self.channel_to_address(self.peer_address(target))

    def channel_to_address(self, address: str) -> grpc.aio.Channel:
        """A channel to a peer listener known only by its address (a joining node's seeds)."""
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return _ReloadingChannel(address, self.tls)

    def _node_of(self, client_address: str) -> int:
        for table in (self._nodes(), self._config.peers):
            for node_id, address in table.items():
                if address == client_address:
                    return node_id
        raise ConfigError(f"{client_address} is no node's client address: no peer to dial")


_installed: PeerDialer | None = None


def install(dialer: PeerDialer) -> None:
    global _installed
    _installed = dialer


def peer_channel(target: int | str) -> grpc.aio.Channel:
    """A new channel to the peer listener of the node `target` (an id or its client address)."""
    assert _installed is not None, "the Node installs its PeerDialer before any peer call"
    return _installed.channel(target)


class _ReloadingChannel(grpc.aio.Channel):
    """An aio channel whose multicallables come from a channel made with the newest TLS files."""

    def __init__(self, address: str, tls: TlsFiles) -> None:
        self._address = address
        self._tls = tls
        self._material: TlsMaterial | None = None
        self._inner: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []

    def _current(self) -> grpc.aio.Channel:
        material = self._tls.current()
        if self._inner is None or material is not self._material:
            if self._inner is not None:
                self._retire(self._inner)
            self._material = material
            self._inner = grpc.aio.secure_channel(
                self._address, grpc.ssl_channel_credentials(material.ca, material.key,
                                                            material.cert),
                options=CHANNEL_OPTIONS)
        return self._inner

    def _retire(self, channel: grpc.aio.Channel) -> None:
        self._retired.append(channel)

        async def close_later() -> None:
            await asyncio.sleep(RETIRED_CHANNEL_CLOSE_S)
            with contextlib.suppress(Exception):
                await channel.close()
            with contextlib.suppress(ValueError):
                self._retired.remove(channel)
        with contextlib.suppress(RuntimeError):  # no running loop: close() does it
            asyncio.get_running_loop().create_task(close_later())

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._current().unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._current().unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._current().stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._current().stream_stream(method, *args, **kwargs)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        channels = [*self._retired, *([self._inner] if self._inner is not None else [])]
        self._retired.clear()
        self._inner = None
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close(grace)

    async def __aenter__(self) -> _ReloadingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ------------------------------------------------------------------ node-side tools' channels

class ChannelTls(Protocol):
    """What a blocking tool of the node package (health checks, LocalCluster, `cluster status`)
    needs to dial a TLS node: client.security.ClientSecurity has these fields (the node package
    never imports the client package), and so has `TlsClientFiles`."""

    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def tls_server_name(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsClientFiles:
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str = ""


def blocking_channel(address: str, tls: ChannelTls | None,
                     options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to a node's client listener: plaintext when `tls` is None or has no
    CA, else TLS (and the client certificate, when given)."""
    if tls is None or tls.tls_ca is None:
        return grpc.insecure_channel(address, options=list(options))
    ca = Path(tls.tls_ca).read_bytes()
    cert = Path(tls.tls_cert).read_bytes() if tls.tls_cert else None
    key = Path(tls.tls_key).read_bytes() if tls.tls_key else None
    extra = [("grpc.ssl_target_name_override", tls.tls_server_name)] if tls.tls_server_name \
        else []
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert),
                               options=[*options, *extra])
