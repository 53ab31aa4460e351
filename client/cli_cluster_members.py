"""`tidelog cluster add-node | decommission | members`: grow and shrink a running cluster
(docs/operations.md "Add and remove nodes").

    tidelog node --id 4 --listen 0.0.0.0:9091 --advertise node4:9091 --join node1:9091,node2:9091
    tidelog cluster add-node 4 --address node4:9091          # admit it: now it joins
    tidelog cluster decommission 3                           # drain node 3, then it leaves
    tidelog cluster decommission --status                    # what is left to move
    tidelog cluster members --output json

`decommission` returns once the node is draining; with `--wait` it waits until it is removed.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the actions to `tidelog cluster` (registered before, by tidelog.node.cli, which
    may not import the client package)."""
    from tidelog.client.cli_tables import add_output_option

    cluster = subparsers.choices["cluster"]
    actions = next(a for a in cluster._actions if isinstance(a, argparse._SubParsersAction))

    add = actions.add_parser(
        "add-node", help="admit a new node (started with `tidelog node --join`)",
        description="Admit node ID, reachable at --address (its client address, as it "
                    "advertises itself). Until admitted the cluster refuses the node; once "
                    "admitted it joins: it replays the metadata as a learner of the metadata "
                    "group, registers, and new topics and reassignments can place replicas on "
                    "it. Metadata voters stay as they are unless --metadata-voter.")
    add.add_argument("node_id", type=int, metavar="ID")
    add.add_argument("--address", required=True, metavar="HOST:PORT",
                     help="the node's client address (its --advertise)")
    add.add_argument("--peer-address", default="", metavar="HOST:PORT",
                     help="its node-to-node listener (default: --address's port + 10000)")
    add.add_argument("--metadata-voter", action="store_true",
                     help="promote it to a voter of the metadata group once it caught up "
                          "(default: a learner; changing voters is the riskier change)")
    add_output_option(add)
    add.set_defaults(func=_add_node)

    dec = actions.add_parser(
        "decommission", help="drain a node, then remove it from the cluster",
        description="Mark node ID draining: new replicas skip it, its leaderships move to "
                    "other nodes, its replicas are reassigned to the others; then it leaves "
                    "the metadata group and the node set, and its process stops. Refused for "
                    "a metadata voter whose removal would leave fewer than 3 voters (unless "
                    "--force) or no live majority of them. --status shows every draining "
                    "node and what it still holds.")
    dec.add_argument("node_id", type=int, nargs="?", metavar="ID")
    dec.add_argument("--status", action="store_true", help="show draining nodes and progress")
    dec.add_argument("--force", action="store_true",
                     help="allow leaving fewer than 3 metadata voters")
    dec.add_argument("--cancel", action="store_true",
                     help="recommission a draining node: it is active again (moves already "
                          "started go on; `tidelog partition reassign --cancel` stops them)")
    dec.add_argument("--wait", action="store_true", help="wait until the node is removed")
    dec.add_argument("--timeout", type=float, default=600.0, metavar="S",
                     help="with --wait: give up after S seconds (default %(default)g)")
    add_output_option(dec)
    dec.set_defaults(func=_decommission)

    members = actions.add_parser(
        "members", help="every node with its state (joining, active, draining, removed)")
    add_output_option(members)
    members.set_defaults(func=_members)


def _run(args: argparse.Namespace, action: Any) -> int:
    from tidelog.client import errors
    from tidelog.client.admin import Admin
    from tidelog.client.cli_tables import fail

    try:
        with Admin(args.bootstrap, security=getattr(args, "security", None)) as admin:
            return int(action(admin) or 0)
    except errors.TidelogError as exc:
        return fail(args, exc)


def _add_node(args: argparse.Namespace) -> int:
    def action(admin: Any) -> None:
        from tidelog.client.cli_tables import emit

        state = admin.add_node(args.node_id, args.address, peer_address=args.peer_address,
                               metadata_voter=args.metadata_voter)
        emit(args, {"node_id": args.node_id, "address": args.address, "state": state},
             f"node {args.node_id} admitted at {args.address}: {state}"
             + (f" (start it with `tidelog node --id {args.node_id} --join ...`)"
                if state == "joining" else ""))

    return _run(args, action)


def _decommission(args: argparse.Namespace) -> int:
    from tidelog.client.cli_tables import fail

    if args.status:
        return _run(args, lambda admin: _show(args, admin, only_leaving=True))
    if args.node_id is None:
        return fail(args, "name the node to decommission (or give --status)", 2)

    def action(admin: Any) -> None:
        from tidelog.client.cli_tables import emit

        if args.cancel:
            state = admin.recommission_node(args.node_id)
            emit(args, {"node_id": args.node_id, "state": state},
                 f"node {args.node_id}: {state} (decommission cancelled)")
            return
        state = admin.decommission_node(args.node_id, force=args.force)
        if args.wait:
            info = admin.wait_member_state(args.node_id, ("removed",), timeout_s=args.timeout)
            state = info.state
        emit(args, {"node_id": args.node_id, "state": state},
             f"node {args.node_id}: {state}" + (
                 "; follow with `tidelog cluster decommission --status`"
                 if state == "draining" else ""))

    return _run(args, action)


def _members(args: argparse.Namespace) -> int:
    return _run(args, lambda admin: _show(args, admin, only_leaving=False))


def _show(args: argparse.Namespace, admin: Any, *, only_leaving: bool) -> None:
    from tidelog.client.cli_tables import emit, table

    leader, members = admin.describe_members()
    if only_leaving:
        members = [m for m in members if m.state in ("draining", "removed")]
    document = {"metadata_leader": leader, "members": [m.to_dict() for m in members]}
    if not members:
        emit(args, document, "no node is draining or removed" if only_leaving else "no nodes")
        return
    rows = [[m.node_id, m.address, m.state, "up" if m.alive else "down",
             ("leader" if m.node_id == leader else m.metadata_role), m.replicas, m.leaderships]
            for m in members]
    emit(args, document, table(["node", "address", "state", "health", "metadata", "replicas",
                                "leaderships"], rows))
