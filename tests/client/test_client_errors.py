"""Wire errors map to typed, readable client errors in one place (tidelog.client.errors)."""

from __future__ import annotations

import grpc
import pytest
from tidelog.client import errors
from tidelog.proto import broker_pb2


class FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode, details: str, trailers: tuple = ()) -> None:
        self._status, self._details, self._trailers = status, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailers


def detail(code: int, **fields: object) -> tuple:
    blob = broker_pb2.ErrorDetail(code=code, **fields).SerializeToString()
    return ((errors.ERROR_DETAIL_KEY, blob),)


def test_every_wire_error_code_has_a_typed_error() -> None:
    for name, number in broker_pb2.ErrorCode.items():
        if number == 0:
            continue
        error = errors.from_code(number, "msg")
        assert isinstance(error, errors.TidelogError)
        assert error.code == number, name
        if name != "UNKNOWN":
            assert type(error) is not errors.UnknownError, name


@pytest.mark.parametrize(("code", "cls", "retriable"), [
    (broker_pb2.NOT_LEADER, errors.NotLeader, True),
    (broker_pb2.LEADER_NOT_AVAILABLE, errors.LeaderNotAvailable, True),
    (broker_pb2.UNKNOWN_TOPIC_OR_PARTITION, errors.TopicNotFound, False),
    (broker_pb2.TOPIC_ALREADY_EXISTS, errors.TopicAlreadyExists, False),
    (broker_pb2.INVALID_TOPIC_NAME, errors.InvalidTopic, False),
    (broker_pb2.MESSAGE_TOO_LARGE, errors.MessageTooLarge, False),
    (broker_pb2.NOT_ENOUGH_REPLICAS, errors.NotEnoughReplicas, True),
    (broker_pb2.REQUEST_TIMED_OUT, errors.RequestTimedOut, True),
    (broker_pb2.OFFSET_OUT_OF_RANGE, errors.OffsetOutOfRange, False),
    (broker_pb2.CORRUPT_BATCH, errors.CorruptBatch, True),
])
def test_codes_map_to_classes_with_retriability(code: int, cls: type, retriable: bool) -> None:
    error = errors.from_code(code, "broker text", subject="t/0")
    assert type(error) is cls
    assert error.retriable is retriable
    assert str(error).startswith("t/0: broker text")


def test_request_timed_out_is_a_timeout_and_a_builtin_timeout_error() -> None:
    error = errors.from_code(broker_pb2.REQUEST_TIMED_OUT, "slow")
    assert isinstance(error, errors.Timeout) and isinstance(error, TimeoutError)


def test_messages_carry_advice() -> None:
    assert "tidelog topic create" in str(errors.from_code(broker_pb2.UNKNOWN_TOPIC_OR_PARTITION))
    assert "min.insync.replicas" in str(errors.from_code(broker_pb2.NOT_ENOUGH_REPLICAS, "2 of 3"))


def test_error_detail_in_trailers_gives_the_typed_error_and_leader_hint() -> None:
    rpc = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "not the leader of t/3",
                       detail(broker_pb2.NOT_LEADER, leader_id=2,
                              leader_address="127.0.0.1:9092", retriable=True))
    error = errors.from_rpc_error(rpc, subject="t/3")
    assert isinstance(error, errors.NotLeader)
    assert (error.leader_id, error.leader_address) == (2, "127.0.0.1:9092")
    assert "not the leader of t/3" in str(error)


def test_retriable_flag_from_the_broker_wins() -> None:
    rpc = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "disk",
                       detail(broker_pb2.STORAGE_ERROR, retriable=True))
    error = errors.from_rpc_error(rpc)
    assert isinstance(error, errors.StorageError) and error.retriable


def test_a_missing_login_is_authentication_failed_and_a_missing_acl_is_unauthorized() -> None:
    """Both carry the UNAUTHORIZED code on the wire; the gRPC status tells them apart, so a
    program can ask the user for credentials only when credentials are what is missing."""
    how_to = "no credentials: this node requires authentication (--authentication scram)"
    login = errors.from_rpc_error(FakeRpcError(
        grpc.StatusCode.UNAUTHENTICATED, how_to, detail(broker_pb2.UNAUTHORIZED)), subject="t")
    assert isinstance(login, errors.AuthenticationFailed)
    assert isinstance(login, errors.Unauthorized) and not login.retriable
    assert str(login) == f"t: {how_to}"
    expired = errors.from_rpc_error(FakeRpcError(
        grpc.StatusCode.UNAUTHENTICATED, "session expired",
        detail(broker_pb2.UNAUTHORIZED, retriable=True)))
    assert isinstance(expired, errors.AuthenticationFailed) and expired.retriable
    denied = errors.from_rpc_error(FakeRpcError(
        grpc.StatusCode.PERMISSION_DENIED, "User:alice may not WRITE on topic 'orders'",
        detail(broker_pb2.UNAUTHORIZED)))
    assert type(denied) is errors.Unauthorized
    assert "may not WRITE on topic 'orders'" in str(denied)


@pytest.mark.parametrize(("status", "cls"), [
    (grpc.StatusCode.UNAVAILABLE, errors.NodeUnavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.Timeout),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.MessageTooLarge),
    (grpc.StatusCode.INTERNAL, errors.UnknownError),
])
def test_transport_statuses_without_detail(status: grpc.StatusCode, cls: type) -> None:
    error = errors.from_rpc_error(FakeRpcError(status, "boom"), address="127.0.0.1:1")
    assert type(error) is cls
    assert "127.0.0.1:1" in str(error) or cls is errors.UnknownError


def test_buffer_full_is_a_timeout() -> None:
    assert issubclass(errors.BufferFull, errors.Timeout)
