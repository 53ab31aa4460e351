"""A "topic does not exist" answer is final only once the metadata leader says so.

Any node answers Metadata from its own copy of the metadata, which may lag the leader's by a
moment; a CI run under load saw a consumer told that a topic created a moment before by another
client did not exist (tests/client/test_cli_admin_cluster.py). The client now asks the metadata
leader before believing it (client/metadata.py `not_found_to_confirm`, `_confirmed_by`)."""

from __future__ import annotations

from tidelog.client import errors
from tidelog.client.connection import Connections
from tidelog.client.metadata import Metadata, _description_from
from tidelog.proto import broker_pb2 as pb


def answer(*, leader: int, error: int = 0) -> object:
    return _description_from(pb.MetadataResponse(
        metadata_leader_id=leader,
        nodes=[pb.NodeInfo(id=i, address=f"127.0.0.1:{9000 + i}") for i in (1, 2, 3)],
        topics=[pb.TopicMetadata(name="t", error=error, error_message="no such topic")]))


def metadata() -> Metadata:
    cache = Metadata(Connections(), ("127.0.0.1:1",), request_timeout_ms=1000,
                     max_age_ms=60_000, retry_backoff_ms=10)
    cache._learn(answer(leader=2))  # type: ignore[arg-type]  # the nodes' addresses
    return cache


def test_a_not_found_answer_is_confirmed_with_the_metadata_leader() -> None:
    not_found = answer(leader=2, error=pb.UNKNOWN_TOPIC_OR_PARTITION)
    assert isinstance(not_found.topic_errors["t"], errors.TopicNotFound)  # type: ignore[attr-defined]
    assert metadata().not_found_to_confirm(not_found, "t") == "127.0.0.1:9002"  # type: ignore[arg-type]


def test_other_answers_need_no_confirmation() -> None:
    cache = metadata()
    assert cache.not_found_to_confirm(answer(leader=2), "t") is None  # type: ignore[arg-type]
    no_leader = answer(leader=-1, error=pb.UNKNOWN_TOPIC_OR_PARTITION)
    assert cache.not_found_to_confirm(no_leader, "t") is None  # type: ignore[arg-type]
    other = answer(leader=2, error=pb.LEADER_NOT_AVAILABLE)
    assert cache.not_found_to_confirm(other, "t") is None  # type: ignore[arg-type]


def test_an_unreachable_leader_leaves_the_first_answer() -> None:
    not_found = answer(leader=2, error=pb.UNKNOWN_TOPIC_OR_PARTITION)
    kept = metadata()._confirmed_by("127.0.0.1:1", "t", not_found, 0.5)  # type: ignore[arg-type]
    assert kept is not_found
