"""`tidelog health`: ask a node's standard gRPC health service (grpc.health.v1) whether it serves.

Exit codes, so that Docker's HEALTHCHECK and scripts can use it as is:

- 0: the node answered SERVING;
- 1: it answered, with another status (NOT_SERVING, SERVICE_UNKNOWN for an unknown --service...);
- 2: no answer within --timeout (not listening, refused, too slow).

Without --address it checks this machine's node: $TIDELOG_HEALTH_ADDRESS, else the port of
$TIDELOG_LISTEN on loopback (a wildcard listen host such as 0.0.0.0 is not dialable), else
127.0.0.1:9091. That is what the container image's HEALTHCHECK relies on: it runs inside the node's
container, where TIDELOG_LISTEN is set, and so needs no arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from tidelog.client.security import ClientSecurity, make_channel

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_NO_ANSWER = 2

DEFAULT_ADDRESS = "127.0.0.1:9091"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "health",
        help="check a node's gRPC health service (exit 0 when SERVING)",
        description="Ask a node's grpc.health.v1 service for its status. Exit 0 when SERVING, "
        "1 for any other answer, 2 when the node does not answer in time.",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="HOST:PORT of the node (default: $TIDELOG_HEALTH_ADDRESS, else the port of "
        f"$TIDELOG_LISTEN on 127.0.0.1, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--service",
        default="",
        help="the health service name to ask about (default: '', the whole node)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        dest="timeout_s",
        metavar="S",
        help="seconds to wait for the answer (default %(default)s)",
    )
    # The older name, still used by deploy/'s healthchecks: a hidden alias.
    parser.add_argument("--timeout-s", type=float, dest="timeout_s", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    address = args.address or default_address(os.environ)
    security = getattr(args, "security", None) or ClientSecurity.from_env()
    code, text = check(address, service=args.service, timeout_s=args.timeout_s,
                       security=security)
    if not args.quiet:
        print(f"{address}: {text}", file=sys.stdout if code == EXIT_SERVING else sys.stderr)
    return code


def default_address(environ: Mapping[str, str]) -> str:
    """The address to check when none is given (see the module docstring)."""
    explicit = environ.get("TIDELOG_HEALTH_ADDRESS", "").strip()
    if explicit:
        return explicit
    listen = environ.get("TIDELOG_LISTEN", "").strip()
    if listen:
        host, sep, port = listen.rpartition(":")
        if sep and port:
            return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{port}"
    return DEFAULT_ADDRESS


def check(address: str, *, service: str = "", timeout_s: float = 3.0,
          security: ClientSecurity | None = None) -> tuple[int, str]:
    """(exit code, status text) of one health Check call; never raises for a node's failure.
    Over TLS when `security` has a CA (inside a TLS node's container, TIDELOG_TLS_* are the
    node's own files: its certificate is a valid client certificate too)."""
    # Imported here so that `tidelog --help` and the other subcommands do not pay for grpc.
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with make_channel(address, (), security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            status = error.code() if isinstance(error, grpc.Call) else None
            detail = error.details() if isinstance(error, grpc.Call) else str(error)
            if status == grpc.StatusCode.NOT_FOUND:  # the node answered: no such service
                return EXIT_NOT_SERVING, f"SERVICE_UNKNOWN ({detail})"
            name = status.name if status is not None else "ERROR"
            return EXIT_NO_ANSWER, f"no answer: {name} ({detail})"
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return EXIT_SERVING, status_name
    return EXIT_NOT_SERVING, status_name


if __name__ == "__main__":  # `python -m tidelog.client.health_cli`: the check without the full CLI
    _parser = argparse.ArgumentParser(prog="python -m tidelog.client.health_cli")
    register(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args(["health", *sys.argv[1:]])
    sys.exit(_args.func(_args))
