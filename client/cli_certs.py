"""`tidelog certs dev DIR`: a CA and certificates for every node and client of a development or
compose cluster (node/security/certs.py; docs/security.md "TLS and mTLS").

    tidelog certs dev certs --nodes 3 --hosts 'node{id}' --clients alice,bob
    tidelog node --id 1 ... --tls-cert certs/node-1.pem --tls-key certs/node-1-key.pem \\
        --tls-ca certs/ca.pem
    tidelog --tls-ca certs/ca.pem --tls-cert certs/client-alice.pem \\
        --tls-key certs/client-alice-key.pem topic list
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tidelog.node.security.certs import DAYS_DEFAULT, make_dev_certs


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = subparsers.add_parser("certs", help="make TLS certificates (development)",
                                  description="Make TLS certificates for Tidelog.")
    actions = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    actions.required = True
    dev = actions.add_parser(
        "dev", help="a CA plus node and client certificates in DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make a development CA (reused when DIR already has one) and a certificate "
        "per node and per client, with the cryptography library.\n\n"
        "Files: ca.pem, ca-key.pem, node-<id>.pem, node-<id>-key.pem, client-<name>.pem, "
        "client-<name>-key.pem. Keys are written 0600, DIR 0700.\n"
        "A node's identity is the URI SAN tidelog://node/<id> of its certificate (CN "
        "node-<id>); its SANs also hold 127.0.0.1, ::1, localhost and every --hosts name.\n"
        "A client certificate's subject is its principal: --clients alice gives Cert:CN=alice.\n"
        "Not for production: the CA key sits next to the certificates.")
    dev.add_argument("directory", metavar="DIR", help="where the files go (made if missing)")
    dev.add_argument("--nodes", type=int, default=3,
                     help="node ids 1..N get a certificate (default %(default)s)")
    dev.add_argument("--node-ids", default="",
                     help="comma-separated node ids instead of 1..N (e.g. 4,5)")
    dev.add_argument("--hosts", default="",
                     help="comma-separated extra DNS names or IPs for every node certificate; "
                          "{id} is the node id (compose: 'node{id}')")
    dev.add_argument("--clients", default="",
                     help="comma-separated client names, one certificate each (alice,bob)")
    dev.add_argument("--days", type=int, default=DAYS_DEFAULT,
                     help="validity in days (default %(default)s)")
    dev.add_argument("--output", choices=["table", "json"], default="table")
    dev.set_defaults(func=certs_dev)


def certs_dev(args: argparse.Namespace) -> int:
    try:
        node_ids = ([int(x) for x in _items(args.node_ids)] if args.node_ids
                    else list(range(1, args.nodes + 1)))
    except ValueError:
        print(f"tidelog certs dev: --node-ids {args.node_ids!r}: expected numbers like 1,2,3",
              file=sys.stderr)
        return 2
    if not node_ids and not args.clients:
        print("tidelog certs dev: nothing to make (--nodes 0 and no --clients)", file=sys.stderr)
        return 2
    if args.days < 1:
        print("tidelog certs dev: --days must be at least 1", file=sys.stderr)
        return 2
    try:
        made = make_dev_certs(Path(args.directory), node_ids, hosts=_items(args.hosts),
                              clients=_items(args.clients), days=args.days)
    except (OSError, ValueError) as exc:
        print(f"tidelog certs dev: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(made.as_json(), indent=2))
        return 0
    print(f"CA {'reused' if made.ca_reused else 'made'}: {made.ca.cert}")
    for item in made.nodes:
        print(f"node {item.name.removeprefix('node-')}: {item.cert} (key {item.key})")
    for item in made.clients:
        print(f"client Cert:{item.subject}: {item.cert} (key {item.key})")
    return 0


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
