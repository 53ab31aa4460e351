"""Node-side commands: `tidelog node`, `tidelog cluster up`, `tidelog cluster status`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from tidelog.node.main import add_node_arguments, run_node

    node = subparsers.add_parser(
        "node", help="run one node in the foreground",
        description="Run one Tidelog node. Every flag can also be set by a TIDELOG_* variable.")
    add_node_arguments(node)
    node.set_defaults(func=run_node)

    cluster = subparsers.add_parser("cluster", help="run or inspect a cluster",
                                    description="Run a local cluster, or show a cluster's status.")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    actions.required = True
    up = actions.add_parser(
        "up", help="run an N-node cluster on this machine in the foreground",
        description="Start N node processes on 127.0.0.1 and keep them in the foreground. "
                    "Nothing is restarted behind your back; Ctrl-C stops every node cleanly.")
    up.add_argument("--nodes", type=int, default=3, help="how many nodes (default %(default)s)")
    up.add_argument("--base-port", type=int, default=9091,
                    help="node N listens on base-port + N - 1 (default %(default)s)")
    up.add_argument("--data-dir", default=".tidelog",
                    help="one folder per node below this (default %(default)s)")
    up.add_argument("--tls-dir", default="",
                    help="TLS on every node, certificates from `tidelog certs dev` in this folder "
                         "(made there when missing, with a client 'admin')")
    up.add_argument("--tls-client-auth", choices=["none", "required"], default="none",
                    help="with --tls-dir: whether clients must present a certificate")
    up.set_defaults(func=cluster_up)
    status = actions.add_parser(
        "status", help="nodes, partitions, leaders and offsets, as a table",
        description="Ask every node for its view and print nodes with their health, and each "
                    "partition's leader, in-sync replicas, log end offset and high watermark.")
    status.add_argument("--output", choices=["table", "json"], default="table")
    status.add_argument("--topic", action="append", default=[],
                        help="only these topics (repeatable)")
    status.set_defaults(func=cluster_status)


def cluster_up(args: argparse.Namespace) -> int:
    from tidelog.node.local_cluster import LocalCluster

    if not 1 <= args.nodes <= 9:
        print("tidelog cluster up: --nodes must be between 1 and 9", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir).resolve()
    tls_dir = Path(args.tls_dir).resolve() if args.tls_dir else None
    cluster = LocalCluster(args.nodes, data_dir, base_port=args.base_port, tls_dir=tls_dir,
                           tls_client_auth=args.tls_client_auth)
    print(f"starting {args.nodes} nodes; data and logs in {data_dir}", flush=True)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster.start()
    try:
        cluster.wait_healthy(timeout_s=60)
    except (TimeoutError, RuntimeError) as exc:
        print(f"tidelog cluster up: {exc}", file=sys.stderr)
        cluster.stop()
        return 1
    for node in cluster.nodes:
        print(f"  node {node.id}  {node.address}  pid {node.pid}  log {node.log_path}")
    print(f"cluster is up. bootstrap: {cluster.bootstrap}")
    tls = ""
    if cluster.security is not None:
        tls = f"TIDELOG_TLS_CA={cluster.security.tls_ca} "
        if args.tls_client_auth == "required":
            tls += (f"TIDELOG_TLS_CERT={cluster.security.tls_cert} "
                    f"TIDELOG_TLS_KEY={cluster.security.tls_key} ")
    print(f"  try: {tls}TIDELOG_BOOTSTRAP={cluster.bootstrap} tidelog cluster status")
    print("Ctrl-C stops every node.", flush=True)
    reported: set[int] = set()
    while not stop:
        time.sleep(0.5)
        for node in cluster.nodes:
            if not node.running and node.id not in reported:
                reported.add(node.id)
                code = node.process.returncode if node.process else None
                print(f"node {node.id} exited (code {code}); not restarting it. "
                      f"See {node.log_path}", flush=True)
    print("stopping nodes (leadership is handed over first)...", flush=True)
    cluster.stop()
    print("all nodes stopped.")
    return 0


def gather_status(bootstrap: str, topics: list[str], security: object = None) -> dict:
    """Every reachable node's Metadata, merged: leaders report offsets for what they lead.
    `security`: the CLI's ClientSecurity (node/security/channels.ChannelTls) or None."""
    import grpc
    from tidelog.node.security.channels import blocking_channel
    from tidelog.proto import broker_pb2 as pb
    from tidelog.proto import broker_pb2_grpc

    def ask(address: str) -> pb.MetadataResponse | None:
        try:
            with blocking_channel(address, security) as channel:  # type: ignore[arg-type]
                return broker_pb2_grpc.BrokerStub(channel).Metadata(
                    pb.MetadataRequest(topics=topics), timeout=3)
        except grpc.RpcError:
            return None

    first = None
    for address in bootstrap.split(","):
        first = ask(address.strip())
        if first is not None:
            break
    if first is None:
        raise ConnectionError(f"no node answered at {bootstrap}")
    views = {n.id: ask(n.address) for n in first.nodes}
    nodes = [{"id": n.id, "address": n.address, "voter": n.voter,
              "healthy": views.get(n.id) is not None} for n in first.nodes]
    partitions = []
    for topic in first.topics:
        for p in topic.partitions:
            row = {"topic": topic.name, "partition": p.partition, "replicas": list(p.replicas),
                   "leader": p.leader_id, "in_sync": [], "log_end": -1, "high_watermark": -1}
            view = views.get(p.leader_id)
            if view is not None:
                for t in view.topics:
                    if t.name == topic.name:
                        lp = t.partitions[p.partition]
                        row.update(leader=lp.leader_id, in_sync=list(lp.in_sync),
                                   log_end=lp.log_end_offset, high_watermark=lp.high_watermark)
            partitions.append(row)
    return {"metadata_leader": first.metadata_leader_id, "nodes": nodes, "partitions": partitions}


def cluster_status(args: argparse.Namespace) -> int:
    try:
        status = gather_status(args.bootstrap, args.topic, getattr(args, "security", None))
    except ConnectionError as exc:
        print(f"tidelog cluster status: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(status, indent=2))
        return 0
    from tidelog.node.tables import render_table

    print(render_table(
        ["node", "address", "health", "metadata"],
        [[n["id"], n["address"], "up" if n["healthy"] else "DOWN",
          ("leader" if n["id"] == status["metadata_leader"] else
           "voter" if n["voter"] else "observer")] for n in status["nodes"]]))
    if status["partitions"]:
        print()
        print(render_table(
            ["topic", "partition", "leader", "replicas", "in sync", "log end", "high watermark"],
            [[p["topic"], p["partition"], p["leader"] if p["leader"] >= 0 else "none",
              ",".join(map(str, p["replicas"])), ",".join(map(str, p["in_sync"])) or "?",
              p["log_end"], p["high_watermark"]] for p in status["partitions"]]))
    healthy = all(n["healthy"] for n in status["nodes"])
    return 0 if healthy and os.environ.get("TIDELOG_STATUS_STRICT") != "0" else 3
