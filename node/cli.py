"""Node-side commands: `tidelog node`, `tidelog cluster up`, `tidelog cluster status`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


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
                    "Nothing is restarted behind your back; Ctrl-C stops every node this "
                    "command started, cleanly. A node whose port already answers (it runs, "
                    "say from an earlier `cluster up` of which one node died) is left alone: "
                    "run `cluster up` again with the same --nodes/--base-port/--data-dir to "
                    "start just the missing nodes.")
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
    up.add_argument("--timeout", type=float, default=60.0, metavar="S",
                    help="give up when the nodes are not healthy after S seconds "
                         "(default %(default)g)")
    up.add_argument("--timeout-s", type=float, dest="timeout", help=argparse.SUPPRESS)
    up.set_defaults(func=cluster_up)
    status = actions.add_parser(
        "status", help="nodes, partitions, leaders and offsets, as a table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ask every node for its view and print nodes with their health, and\n"
                    "each partition's leader, in-sync replicas, log end offset and high\n"
                    "watermark (in-sync and offsets as the partition's leader reports them).\n\n"
                    "exit codes:\n"
                    "  0  healthy: every node up, every partition led and fully in sync\n"
                    "  1  degraded: a node down, a partition without a leader, or one whose "
                    "in-sync set is\n     smaller than its replicas (under-replicated)\n"
                    "  2  usage error, or no node answered")
    status.add_argument("--output", type=lambda v: "table" if v == "text" else v,
                        choices=["table", "json"], default="table",
                        help="table (default) or json (one object)")
    status.add_argument("--topic", action="append", default=[],
                        help="only these topics (repeatable)")
    status.add_argument("--timeout", type=float, default=3.0, metavar="S",
                        help="wait at most S seconds for each node's answer (default %(default)g)")
    status.add_argument("--timeout-s", type=float, dest="timeout", help=argparse.SUPPRESS)
    # It probes the bootstrap itself: an unreachable cluster is exit code 2 here, not 1.
    status.set_defaults(func=cluster_status, needs_cluster=False)


STATUS_HEALTHY = 0
STATUS_DEGRADED = 1
STATUS_UNREACHABLE = 2  # also argparse's usage errors


def cluster_up(args: argparse.Namespace) -> int:
    from tidelog.node.local_cluster import LocalCluster

    if not 1 <= args.nodes <= 9:
        print("tidelog cluster up: --nodes must be between 1 and 9", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir).resolve()
    tls_dir = Path(args.tls_dir).resolve() if args.tls_dir else None
    cluster = LocalCluster(args.nodes, data_dir, base_port=args.base_port, tls_dir=tls_dir,
                           tls_client_auth=args.tls_client_auth)
    already = [node for node in cluster.nodes if port_answers(node.address)]
    missing = [node for node in cluster.nodes if node not in already]
    for node in already:
        print(f"  node {node.id}  {node.address}  already running: left alone", flush=True)
    if not missing:
        print(f"all {args.nodes} nodes already run (bootstrap {cluster.bootstrap}); nothing "
              "to start")
        return 0
    print(f"starting {'nodes' if len(missing) > 1 else 'node'} "
          f"{', '.join(str(n.id) for n in missing)} of {args.nodes}; data and logs in "
          f"{data_dir}", flush=True)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for node in missing:
        cluster.start(node.id)
    try:
        cluster.wait_healthy(timeout_s=args.timeout, node_ids=[n.id for n in missing])
    except (TimeoutError, RuntimeError) as exc:
        print(f"tidelog cluster up: {exc}", file=sys.stderr)
        cluster.stop()
        return 1
    for node in missing:
        print(f"  node {node.id}  {node.address}  pid {node.pid}  log {node.log_path}")
    print(f"cluster is up. bootstrap: {cluster.bootstrap}")
    tls = ""
    if cluster.security is not None:
        tls = f"TIDELOG_TLS_CA={cluster.security.tls_ca} "
        if args.tls_client_auth == "required":
            tls += (f"TIDELOG_TLS_CERT={cluster.security.tls_cert} "
                    f"TIDELOG_TLS_KEY={cluster.security.tls_key} ")
    print(f"  try: {tls}TIDELOG_BOOTSTRAP={cluster.bootstrap} tidelog cluster status")
    print("Ctrl-C stops every node this command started"
          + (f" (not {', '.join(str(n.id) for n in already)})." if already else "."),
          flush=True)
    reported: set[int] = set()
    while not stop:
        time.sleep(0.5)
        for node in missing:
            if not node.running and node.id not in reported:
                reported.add(node.id)
                code = node.process.returncode if node.process else None
                print(f"node {node.id} exited (code {code}); not restarting it. "
                      f"See {node.log_path}; `tidelog cluster up` with the same options "
                      "starts it again", flush=True)
    print("stopping nodes (leadership is handed over first)...", flush=True)
    cluster.stop()
    print("all nodes stopped.")
    return 0


def port_answers(address: str, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at HOST:PORT: a node of this cluster still
    running (starting another there would only fail to bind)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def gather_status(bootstrap: str, topics: list[str], security: object = None, *,
                  timeout_s: float = 3.0) -> dict:
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
                    pb.MetadataRequest(topics=topics), timeout=timeout_s)
        except grpc.RpcError:
            return None

    first = None
    for address in (a.strip() for a in bootstrap.split(",")):
        if not address:
            continue
        first = ask(address)
        if first is not None:
            break
    if first is None:
        raise ConnectionError(f"no node answered at {bootstrap}")
    views = {n.id: ask(n.address) for n in first.nodes}
    members = member_states([n.address for n in first.nodes if views.get(n.id) is not None],
                            security, timeout_s)
    status = merge_views(first, views, states={i: s for i, (s, _) in members.items()})
    listed = {n["id"] for n in status["nodes"]}  # Metadata lists no removed node: add them
    status["nodes"] += [{"id": i, "address": a, "voter": False, "healthy": False, "state": s}
                        for i, (s, a) in sorted(members.items()) if i not in listed]
    return status


def member_states(addresses: list[str], security: object,
                  timeout_s: float) -> dict[int, tuple[str, str]]:
    """node id → (joining | active | draining | removed, its address), from the first node that
    answers DescribeMembership (node/membership_service.py); empty when none does."""
    import grpc
    from tidelog.node.security.channels import blocking_channel
    from tidelog.proto import membership_pb2 as mpb
    from tidelog.proto import membership_pb2_grpc

    for address in addresses:
        try:
            with blocking_channel(address, security) as channel:  # type: ignore[arg-type]
                answer = membership_pb2_grpc.NodeMembershipStub(channel).DescribeMembership(
                    mpb.DescribeMembershipRequest(), timeout=timeout_s)
        except grpc.RpcError:
            continue
        return {m.node_id: (m.state, m.address) for m in answer.members}
    return {}


def merge_views(first: Any, views: dict[int, Any], states: dict[int, str] | None = None) -> dict:
    """The status document from the first Metadata answer (nodes, topics, leaders) and each
    node's own answer (None: it did not answer); a partition's in-sync set and offsets come
    from its leader's answer."""
    nodes = [{"id": n.id, "address": n.address, "voter": n.voter,
              "healthy": views.get(n.id) is not None,
              "state": (states or {}).get(n.id, "active")} for n in first.nodes]
    partitions = []
    for topic in first.topics:
        for p in topic.partitions:
            row = {"topic": topic.name, "partition": p.partition, "replicas": list(p.replicas),
                   "leader": p.leader_id, "in_sync": [], "log_end": -1, "high_watermark": -1}
            view = views.get(p.leader_id)
            # By partition number, not position: a node that has not applied a topic's growth
            # yet (just restarted, say) lists fewer partitions than the first answer did.
            lp = next((lp for t in (view.topics if view is not None else ())
                       if t.name == topic.name for lp in t.partitions
                       if lp.partition == p.partition), None)
            if lp is not None:
                row.update(leader=lp.leader_id, in_sync=list(lp.in_sync),
                           log_end=lp.log_end_offset, high_watermark=lp.high_watermark)
            partitions.append(row)
    return {"metadata_leader": first.metadata_leader_id, "nodes": nodes, "partitions": partitions}


def status_problems(status: dict) -> list[str]:
    """Why the cluster is degraded (empty: healthy). Under-replicated: the leader counts fewer
    replicas in sync than the partition has (a follower down or behind), or no leader
    answered with its in-sync set."""
    problems = [f"node {n['id']} is down" for n in status["nodes"]
                if not n["healthy"] and n.get("state") not in ("removed", "joining")]
    for p in status["partitions"]:
        name = f"{p['topic']}-{p['partition']}"
        if p["leader"] < 0:
            problems.append(f"{name} has no leader")
        elif set(p["in_sync"]) != set(p["replicas"]):
            problems.append(f"{name} is under-replicated (in sync "
                            f"{','.join(map(str, p['in_sync'])) or 'unknown'} of "
                            f"{','.join(map(str, p['replicas']))})")
    return problems


def cluster_status(args: argparse.Namespace) -> int:
    try:
        status = gather_status(args.bootstrap, args.topic, getattr(args, "security", None),
                               timeout_s=max(0.1, args.timeout))
    except ConnectionError as exc:
        if args.output == "json":  # the form of every --output json failure (cli_tables.fail)
            print(json.dumps({"error": {"type": "NoBrokersAvailable", "code": 0,
                                        "message": str(exc)}}), file=sys.stderr)
        else:
            print(f"tidelog cluster status: {exc}", file=sys.stderr)
        return STATUS_UNREACHABLE
    problems = status_problems(status)
    status["healthy"] = not problems
    status["problems"] = problems
    if args.output == "json":
        print(json.dumps(status))
        return STATUS_DEGRADED if problems else STATUS_HEALTHY
    from tidelog.node.tables import render_table

    print(render_table(
        ["node", "address", "state", "health", "metadata"],
        [[n["id"], n["address"], n["state"], "up" if n["healthy"] else
          "-" if n["state"] in ("removed", "joining") else "DOWN",
          ("leader" if n["id"] == status["metadata_leader"] else "voter" if n["voter"] else
           "-" if n["state"] == "removed" else "observer")] for n in status["nodes"]]))
    if status["partitions"]:
        print()
        print(render_table(
            ["topic", "partition", "leader", "replicas", "in sync", "log end", "high watermark"],
            [[p["topic"], p["partition"], p["leader"] if p["leader"] >= 0 else None,
              ",".join(map(str, p["replicas"])), ",".join(map(str, p["in_sync"])) or None,
              p["log_end"] if p["log_end"] >= 0 else None,
              p["high_watermark"] if p["high_watermark"] >= 0 else None]
             for p in status["partitions"]]))
    if problems:
        print()
        shown = problems[:10]
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        print(f"DEGRADED: {'; '.join(shown)}{more}")
        return STATUS_DEGRADED
    return STATUS_HEALTHY
