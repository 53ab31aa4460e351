"""`tidelog node`: run one node in the foreground. Every flag has a TIDELOG_* environment twin."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tidelog.node.config import (
    METRICS_PORT_OFFSET,
    PEER_PORT_OFFSET,
    NodeConfig,
    env_default,
    parse_peers,
)
from tidelog.node.errors import ConfigError
from tidelog.node.listeners import parse_listeners
from tidelog.node.security.config import Authentication, ClientAuth, SecurityConfig


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    def env(name: str, default: str | None = None) -> str | None:
        return env_default(name, default)

    parser.add_argument("--id", type=int, default=env("id"),
                        help="this node's id, a positive integer (env TIDELOG_ID)")
    parser.add_argument("--listen", default=env("listen", "127.0.0.1:9091"),
                        help="HOST:PORT to serve gRPC on (env TIDELOG_LISTEN; default %(default)s)")
    parser.add_argument("--advertise", default=env("advertise"),
                        help="HOST:PORT clients are told to use (env TIDELOG_ADVERTISE; "
                             "default: the --listen address)")
    parser.add_argument("--listeners", default=env("listeners", ""),
                        help="named client listeners besides --listen, one per network, "
                             "NAME=HOST:PORT,... e.g. internal=0.0.0.0:9092,external=0.0.0.0:19092"
                             " (env TIDELOG_LISTENERS; node/listeners.py)")
    parser.add_argument("--advertised-listeners", default=env("advertised_listeners", ""),
                        help="NAME=HOST:PORT,...: the address each named listener's clients are "
                             "told, for this node and, in Metadata answers, for every node "
                             "(env TIDELOG_ADVERTISED_LISTENERS; default: each listener's "
                             "--listeners address)")
    parser.add_argument("--peer-listen", default=env("peer_listen", ""),
                        help="HOST:PORT to serve the node-to-node API on, never to be reachable "
                             "by clients (env TIDELOG_PEER_LISTEN; default: the --listen host, "
                             "port + the peer port offset)")
    parser.add_argument("--peer-port-offset", type=int,
                        default=int(env("peer_port_offset", str(PEER_PORT_OFFSET))
                                    or PEER_PORT_OFFSET),
                        help="each peer's node-to-node port is its --peers port plus this "
                             "(env TIDELOG_PEER_PORT_OFFSET; default %(default)s)")
    parser.add_argument("--peers", default=env("peers"),
                        help="ID=HOST:PORT,... of every node including this one: client "
                             "addresses as nodes reach each other; the peer port is derived "
                             "(env TIDELOG_PEERS)")
    parser.add_argument("--join", default=env("join", ""),
                        help="HOST:PORT,... client addresses of members of a running cluster "
                             "this NEW node joins, instead of --peers; it waits until admitted "
                             "with `tidelog cluster add-node` (env TIDELOG_JOIN; "
                             "docs/operations.md)")
    parser.add_argument("--data-dir", default=env("data_dir", "./data"),
                        help="where logs and Raft state live (env TIDELOG_DATA_DIR; "
                             "default %(default)s)")
    parser.add_argument("--fsync", default=env("fsync", "always"),
                        help="default fsync policy: 'always' (fsync before acks=all answers) or "
                             "'interval:100ms' / 'interval:1MiB' (env TIDELOG_FSYNC; "
                             "default %(default)s)")
    parser.add_argument("--tick-ms", type=int, default=int(env("tick_ms", "100") or 100),
                        help="Raft tick (env TIDELOG_TICK_MS; default %(default)s)")
    parser.add_argument("--election-ticks", type=int,
                        default=int(env("election_ticks", "10") or 10),
                        help="election timeout in ticks, randomised up to 2x "
                             "(env TIDELOG_ELECTION_TICKS; default %(default)s)")
    security = parser.add_argument_group("security (docs/security.md)")
    security.add_argument("--tls-cert", default=env("tls_cert"),
                          help="this node's certificate, PEM; with --tls-key and --tls-ca turns "
                               "TLS on for both listeners (env TIDELOG_TLS_CERT)")
    security.add_argument("--tls-key", default=env("tls_key"),
                          help="the certificate's private key, PEM (env TIDELOG_TLS_KEY)")
    security.add_argument("--tls-ca", default=env("tls_ca"),
                          help="the CA that signs the nodes' and clients' certificates, PEM "
                               "(env TIDELOG_TLS_CA)")
    security.add_argument("--tls-client-auth", default=env("tls_client_auth", "none"),
                          choices=[c.value for c in ClientAuth],
                          help="required: clients must present a certificate of the CA on the "
                               "client listener (principal Cert:<subject>); peers always must. "
                               "'optional' is refused at start (grpcio cannot ask without "
                               "requiring) (env TIDELOG_TLS_CLIENT_AUTH; default %(default)s)")
    security.add_argument("--authentication", default=env("authentication", "none"),
                          choices=[a.value for a in Authentication],
                          help="'scram': clients log in with SCRAM-SHA-256 users "
                               "(env TIDELOG_AUTHENTICATION; default %(default)s)")
    security.add_argument("--authorization", action=argparse.BooleanOptionalAction,
                          default=(env("authorization", "off") or "off").lower()
                          in ("1", "on", "true", "yes"),
                          help="refuse whatever no ACL allows (env TIDELOG_AUTHORIZATION=on; "
                               "default off)")
    security.add_argument("--super-users", default=env("super_users", ""),
                          help="comma-separated principals every check lets through, e.g. "
                               "User:admin (env TIDELOG_SUPER_USERS)")
    security.add_argument("--encryption-keyring", default=env("encryption_keyring"),
                          help="keyring file for encryption at rest; new batches are encrypted "
                               "with its newest key (env TIDELOG_ENCRYPTION_KEYRING)")
    parser.add_argument("--metrics-listen", default=env("metrics_listen", ""),
                        help="HOST:PORT of the Prometheus endpoint (GET /metrics), or 'off' "
                             "(env TIDELOG_METRICS_LISTEN; default: the --listen host, port + "
                             f"{METRICS_PORT_OFFSET}, e.g. 9091 -> {9091 + METRICS_PORT_OFFSET}; "
                             "docs/metrics.md)")
    parser.add_argument("--log-level", default=env("log_level", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="(env TIDELOG_LOG_LEVEL; default %(default)s)")
    parser.add_argument("--log-format", default=env("log_format", "text"),
                        choices=["text", "json"],
                        help="'json': one JSON object per line (ts, level, logger, node, msg, "
                             "exc) for log shippers (env TIDELOG_LOG_FORMAT; default "
                             "%(default)s; docs/metrics.md \"Logs\")")


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    if args.id is None:
        raise ConfigError("--id (or TIDELOG_ID) is required")
    join = tuple(s.strip() for s in (args.join or "").split(",") if s.strip())
    if not args.peers and not join:
        raise ConfigError("--peers (or TIDELOG_PEERS) is required, e.g. 1=127.0.0.1:9091; or "
                          "--join HOST:PORT for a node joining a running cluster")
    if args.peers and join:
        raise ConfigError("give --peers (a node of the initial set) or --join (a new node), "
                          "not both")
    advertise = args.advertise or args.listen
    return NodeConfig(
        node_id=int(args.id), listen=args.listen, advertise=advertise, join=join,
        peers=parse_peers(args.peers) if args.peers else {int(args.id): advertise},
        data_dir=Path(args.data_dir), fsync=args.fsync,
        tick_ms=args.tick_ms, election_ticks=args.election_ticks,
        peer_listen=args.peer_listen or "", peer_port_offset=args.peer_port_offset,
        security=security_from_args(args), metrics_listen=args.metrics_listen or "",
        listeners=parse_listeners(args.listeners or "", args.advertised_listeners or ""),
    )


def security_from_args(args: argparse.Namespace) -> SecurityConfig:
    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return SecurityConfig(
        tls_cert=path(args.tls_cert), tls_key=path(args.tls_key), tls_ca=path(args.tls_ca),
        tls_client_auth=ClientAuth(args.tls_client_auth),
        authentication=Authentication(args.authentication),
        authorization=bool(args.authorization),
        super_users=tuple(p.strip() for p in args.super_users.split(",") if p.strip()),
        encryption_keyring=path(args.encryption_keyring),
    )


def run_node(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except (ConfigError, ValueError) as exc:
        print(f"tidelog node: {exc}", file=sys.stderr)
        return 2
    from tidelog.node.logging_setup import configure_logging

    configure_logging(node_id=config.node_id, level=args.log_level,
                      log_format=args.log_format)
    raise_open_files_limit()
    from tidelog.node.server import Node
    from tidelog.node.storage import StorageError

    try:
        asyncio.run(Node(config).run_until_signal())
    except StorageError as exc:  # the operator's to act on (a v1 log, damaged metadata): no trace
        print(f"tidelog node: cannot start on {config.data_dir}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found at start (TLS files that do not match, ...): no trace
        print(f"tidelog node: {exc}", file=sys.stderr)
        return 2
    return 0


def raise_open_files_limit(wanted: int = 65536) -> None:
    """Each partition log keeps its active segment open: lift the soft limit to the hard one (as
    Kafka's docs ask operators to), so 1,000 partitions do not sit at the default 1,024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            logging.getLogger(__name__).info("open files limit raised from %d to %d",
                                             soft, target)
    except (ImportError, ValueError, OSError) as exc:
        logging.getLogger(__name__).warning("could not raise the open files limit: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidelog node", description=__doc__)
    add_node_arguments(parser)
    return run_node(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
