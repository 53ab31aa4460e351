"""Named client listeners: one address per network, like Kafka's listeners/advertised.listeners.

Why: a node reached from two networks (containers on a compose network call it `node1:9091`, the
host calls it `127.0.0.1:19091`) must tell each client the addresses that work from the client's
own network. A single --advertise cannot: whichever address it names, the other side is told an
address that does not reach the node. So besides the default listener (--listen/--advertise,
unchanged) a node may serve named listeners, each on a gRPC port of its own
(`--listeners internal=0.0.0.0:9092,external=0.0.0.0:19092`) with its advertised address
(`--advertised-listeners internal=node1:9092,external=127.0.0.1:19092`). Every node registers all
its advertised listeners in the metadata; a call that arrives on listener NAME is answered with
each node's NAME address (Metadata nodes, NOT_LEADER hints, FindCoordinator), falling back to the
node's default advertised address when that node has no listener of that name.

The listener a call arrived on is a context variable set in the RPC's own task by
`ListenerInterceptor` (the servers of named listeners put it first), read where addresses are
handed out. Node-to-node traffic never uses these addresses: peers dial the peer listener.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from tidelog.node.errors import ConfigError

DEFAULT_LISTENER = ""
"""The name of the --listen/--advertise listener in `current_listener` (it has no name)."""

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")

current_listener: ContextVar[str] = ContextVar("tidelog_listener", default=DEFAULT_LISTENER)


@dataclass(frozen=True, slots=True)
class Listener:
    """One named client listener: where it binds, and the address clients of its network use."""

    name: str
    listen: str
    advertise: str


def parse_named_addresses(text: str, flag: str) -> dict[str, str]:
    """'a=host:port,b=host:port' → {'a': 'host:port', 'b': 'host:port'} (order kept)."""
    from tidelog.node.config import parse_address  # config imports this module

    named: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        name, address = name.strip(), address.strip()
        if not sep or not NAME_RE.fullmatch(name):
            raise ConfigError(f"expected NAME=HOST:PORT in {flag} (NAME: a letter, then up to 31 "
                              f"letters, digits, _ or -), got {item!r}")
        if name in named:
            raise ConfigError(f"listener {name!r} appears twice in {flag}")
        parse_address(address)
        named[name] = address
    return named


def parse_listeners(listeners: str, advertised: str) -> tuple[Listener, ...]:
    """The --listeners and --advertised-listeners flags → listeners; a listener without an
    advertised address advertises its bind address (as Kafka does)."""
    binds = parse_named_addresses(listeners, "--listeners")
    adverts = parse_named_addresses(advertised, "--advertised-listeners")
    unknown = sorted(set(adverts) - set(binds))
    if unknown:
        raise ConfigError(f"--advertised-listeners names {', '.join(unknown)}, which "
                          f"--listeners does not define (it has: {', '.join(binds) or 'none'})")
    return tuple(Listener(name, address, adverts.get(name, address))
                 for name, address in binds.items())


def address_for_client(listeners: Mapping[int, Mapping[str, str]], node_id: int,
                       default: str) -> str:
    """The address of node `node_id` for the client of the current call: its advertised address
    on the listener the call arrived on, else `default` (its default advertised address)."""
    name = current_listener.get()
    if name == DEFAULT_LISTENER:
        return default
    return listeners.get(node_id, {}).get(name, default)


class ListenerInterceptor(grpc.aio.ServerInterceptor):
    """First interceptor of a named listener's server: marks every call with the listener name."""

    def __init__(self, name: str) -> None:
        self._name = name

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        from tidelog.node.security.cert_auth import wrap_handler

        handler = await continuation(details)
        return None if handler is None else wrap_handler(handler, self._mark)

    async def _mark(self, context: grpc.aio.ServicerContext) -> None:
        current_listener.set(self._name)
