"""One output convention for the admin commands (issue 15: two table styles, --output json on
only two commands). The parser itself is walked, so a new list/describe command without
--output, or with other choices, fails here."""

from __future__ import annotations

import json

import pytest
from tidelog.client.cli import _subcommands, build_parser, main
from tidelog.client.cli_tables import table
from tidelog.node.tables import render_table

CLIENT_ADMIN = ("topic", "group", "queue", "user", "acl", "quota", "cluster")


def admin_views() -> list[tuple[str, ...]]:
    return [path for path, _, _ in _subcommands(build_parser())
            if path[0] in CLIENT_ADMIN and path[-1] in ("list", "describe", "status", "stats")]


def test_every_admin_list_and_describe_has_output_table_or_json() -> None:
    views = admin_views()
    assert {("topic", "list"), ("topic", "describe"), ("group", "list"), ("group", "describe"),
            ("queue", "list"), ("queue", "describe"), ("queue", "stats"), ("user", "list"),
            ("acl", "list"), ("quota", "list"), ("cluster", "status")} <= set(views)
    parsers = {path: sub for path, sub, _ in _subcommands(build_parser())}
    for path in views:
        (output,) = [a for a in parsers[path]._actions if a.dest == "output"]
        assert list(output.choices) == ["table", "json"], path
        assert output.default == "table", path


@pytest.mark.parametrize("given", ["text", "table"])
def test_text_is_the_tables_other_name(given: str) -> None:
    args = build_parser().parse_args(["topic", "list", "--output", given])
    assert args.output == "table"


def test_one_table_style_for_client_and_node_commands() -> None:
    rows = [["orders", 3, None], ["a-much-longer-name", 12, "x"]]
    text = table(["topic", "partitions", "in sync"], rows)
    assert text == render_table(["topic", "partitions", "in sync"], rows)
    assert text.splitlines() == ["TOPIC               PARTITIONS  IN-SYNC",
                                 "orders              3           -",
                                 "a-much-longer-name  12          x"]


def test_cluster_status_with_no_node_answering_is_rc_2(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    argv = ["cluster", "status", "--bootstrap", "127.0.0.1:1", "--timeout", "0.2"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("tidelog cluster status: no node answered")
    assert main([*argv, "--output", "json"]) == 2
    error = json.loads(capsys.readouterr().err)["error"]  # one object, like every json failure
    assert error["type"] == "NoBrokersAvailable" and "no node answered" in error["message"]


def test_status_problems_name_leaderless_and_under_replicated_partitions() -> None:
    """The issue's case: rc 0 while every partition showed `leader none`."""
    from tidelog.node.cli import status_problems

    def status(*partitions: dict) -> dict:
        nodes = [{"id": i, "address": f"h:{i}", "voter": True, "healthy": True}
                 for i in (1, 2, 3)]
        return {"metadata_leader": 1, "nodes": nodes, "partitions": list(partitions)}

    def part(n: int, leader: int, in_sync: list[int]) -> dict:
        return {"topic": "t", "partition": n, "replicas": [1, 2, 3], "leader": leader,
                "in_sync": in_sync, "log_end": 0, "high_watermark": 0}

    assert status_problems(status(part(0, 1, [3, 1, 2]))) == []
    assert status_problems(status(part(0, -1, []), part(1, -1, []))) == [
        "t-0 has no leader", "t-1 has no leader"]
    assert status_problems(status(part(0, 2, [2, 3]))) == [
        "t-0 is under-replicated (in sync 2,3 of 1,2,3)"]


@pytest.mark.parametrize(("argv", "dest"), [
    (["topic", "list"], "timeout"), (["group", "list"], "timeout"),
    (["cluster", "status"], "timeout"), (["queue", "receive", "q"], "timeout_s"),
    (["health"], "timeout_s")])
def test_timeout_is_the_name_and_timeout_s_a_hidden_alias(argv: list[str], dest: str) -> None:
    parser = build_parser()
    assert getattr(parser.parse_args([*argv, "--timeout", "7.5"]), dest) == 7.5
    assert getattr(parser.parse_args([*argv, "--timeout-s", "2"]), dest) == 2.0
    sub = {path: p for path, p, _ in _subcommands(parser)}[tuple(a for a in argv if a != "q")]
    assert "--timeout-s" not in sub.format_help() and "--timeout S" in sub.format_help()


def test_status_merges_a_leader_that_lists_fewer_partitions() -> None:
    """Seen in test_cli_admin_cluster: node 3, just restarted, had not applied a topic's growth
    2 -> 4 yet and led partition 1; `cluster status` indexed its list by partition number and
    died with IndexError for partitions 2 and 3."""
    from tidelog.node.cli import merge_views
    from tidelog.proto import broker_pb2 as pb

    def part(n: int, leader: int, hw: int = -1) -> pb.PartitionMetadata:
        return pb.PartitionMetadata(partition=n, leader_id=leader, replicas=[1, 2, 3],
                                    in_sync=[1, 2, 3] if hw >= 0 else [], high_watermark=hw,
                                    log_end_offset=hw)

    nodes = [pb.NodeInfo(id=i, address=f"h:{i}") for i in (1, 2, 3)]
    first = pb.MetadataResponse(nodes=nodes, metadata_leader_id=1, topics=[pb.TopicMetadata(
        name="t", partitions=[part(0, 1), part(1, 3), part(2, 3), part(3, 1)])])
    lagging = pb.MetadataResponse(nodes=nodes, topics=[pb.TopicMetadata(
        name="t", partitions=[part(0, 1), part(1, 3, hw=5)])])
    leader = pb.MetadataResponse(nodes=nodes, topics=[pb.TopicMetadata(
        name="t", partitions=[part(0, 1, hw=7), part(1, 3), part(2, 3), part(3, 1, hw=2)])])
    status = merge_views(first, {1: leader, 2: None, 3: lagging})
    assert [(p["partition"], p["high_watermark"], p["in_sync"]) for p in status["partitions"]] \
        == [(0, 7, [1, 2, 3]), (1, 5, [1, 2, 3]), (2, -1, []), (3, 2, [1, 2, 3])]
    assert [n["healthy"] for n in status["nodes"]] == [True, False, True]
