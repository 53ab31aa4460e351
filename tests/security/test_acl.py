"""ACL decisions (acl.decide, authz.first_denial) and the user/ACL metadata commands: strict
decoding, apply, and that a stored credential holds no password."""

from __future__ import annotations

import json

import pytest
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    CommandError,
    CreateAcls,
    DeleteAcls,
    DeleteUser,
    UpsertUser,
    decode_command,
    encode_command,
)
from tidelog.node.security import scram
from tidelog.node.security.acl import (
    AclBinding,
    Action,
    Operation,
    ResourceType,
    decide,
    parse_binding,
)
from tidelog.node.security.authz import first_denial
from tidelog.node.security.principal import ANONYMOUS, Principal, PrincipalKind
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import queue_pb2 as qpb

ALICE = Principal(PrincipalKind.USER, "alice")
BOB = Principal(PrincipalKind.USER, "bob")
SUPER = frozenset({"User:admin"})


def acl(resource: str, operation: str, *, principal: str = "User:alice",
        permission: str = "allow", prefixed: bool = False) -> AclBinding:
    return parse_binding(principal=principal, resource=resource, operation=operation,
                         permission=permission, prefixed=prefixed)


def allowed(principal: Principal, resource_type: ResourceType, name: str, operation: Operation,
            acls: list[AclBinding]) -> bool:
    action = Action(resource_type=resource_type, name=name, operation=operation)
    return decide(principal, action, acls, SUPER).allowed


T, G = ResourceType.TOPIC, ResourceType.GROUP


def test_nothing_is_allowed_without_an_acl() -> None:
    decision = decide(ALICE, Action(resource_type=T, name="orders", operation=Operation.READ),
                      [], SUPER)
    assert not decision.allowed and decision.reason == "no ACL allows it"


def test_literal_allow_is_exact() -> None:
    acls = [acl("topic:orders", "read")]
    assert allowed(ALICE, T, "orders", Operation.READ, acls)
    assert not allowed(ALICE, T, "orders2", Operation.READ, acls)
    assert not allowed(ALICE, T, "orders", Operation.WRITE, acls)
    assert not allowed(BOB, T, "orders", Operation.READ, acls)
    assert not allowed(ALICE, G, "orders", Operation.READ, acls)


def test_prefixed_pattern_matches_names_that_start_with_it() -> None:
    acls = [acl("topic:orders.", "write", prefixed=True)]
    assert allowed(ALICE, T, "orders.eu", Operation.WRITE, acls)
    assert not allowed(ALICE, T, "orders", Operation.WRITE, acls)


def test_deny_wins_over_any_allow() -> None:
    acls = [acl("topic:*", "all"), acl("topic:orders.", "read", prefixed=True),
            acl("topic:orders.secret", "read", permission="deny")]
    assert allowed(ALICE, T, "orders.eu", Operation.READ, acls)
    decision = decide(ALICE, Action(resource_type=T, name="orders.secret",
                                    operation=Operation.READ), acls, SUPER)
    assert not decision.allowed and "denied by the ACL 'deny User:alice read" in decision.reason
    # a deny of READ does not deny DESCRIBE (implied only for allows)
    assert allowed(ALICE, T, "orders.secret", Operation.DESCRIBE, acls)


def test_describe_is_implied_by_read_write_delete_alter() -> None:
    for operation in ("read", "write", "delete", "alter"):
        assert allowed(ALICE, T, "t", Operation.DESCRIBE, [acl("topic:t", operation)])
    assert not allowed(ALICE, T, "t", Operation.DESCRIBE, [acl("topic:t", "create")])


def test_wildcard_principal_matches_every_user_not_anonymous() -> None:
    acls = [acl("topic:t", "read", principal="User:*")]
    assert allowed(BOB, T, "t", Operation.READ, acls)
    assert not allowed(ANONYMOUS, T, "t", Operation.READ, acls)
    assert not allowed(Principal(PrincipalKind.CERT, "CN=x"), T, "t", Operation.READ, acls)


def test_super_users_and_nodes_bypass_acls_and_denies() -> None:
    admin = Principal(PrincipalKind.USER, "admin")
    deny = [acl("topic:t", "all", principal="User:admin", permission="deny")]
    assert allowed(admin, T, "t", Operation.WRITE, deny)
    assert allowed(Principal(PrincipalKind.NODE, "2"), T, "t", Operation.WRITE, [])


def test_internal_topics_need_a_literal_acl_and_are_never_deleted_or_altered() -> None:
    wide = [acl("topic:*", "all"), acl("topic:_", "all", prefixed=True)]
    assert not allowed(ALICE, T, "__consumer_offsets", Operation.READ, wide)
    assert allowed(ALICE, T, "__consumer_offsets", Operation.READ,
                   [acl("topic:__consumer_offsets", "read")])
    admin = Principal(PrincipalKind.USER, "admin")
    for operation in (Operation.DELETE, Operation.ALTER):
        decision = decide(admin, Action(resource_type=T, name="__metadata", operation=operation),
                          wide, SUPER)
        assert not decision.allowed and "internal topic" in decision.reason


def test_binding_validation_names_the_accepted_values() -> None:
    with pytest.raises(ValueError, match="operation 'eat': expected one of read"):
        acl("topic:t", "eat")
    with pytest.raises(ValueError, match="expected KIND:NAME"):
        acl("topic:t", "read", principal="alice")
    with pytest.raises(ValueError, match="resource name of 0"):
        acl("topic:", "read")
    assert acl("cluster", "alter").resource_name == "cluster"


# -- the RPC table -----------------------------------------------------------------------------


def denial(method: str, request: object, principal: Principal = ALICE,
           acls: list[AclBinding] | None = None, users: bool = True) -> str | None:
    state = MetadataState()
    state.acls = set(acls or [])
    if users:
        state.users["alice"] = scram.derive_credential("x", b"s" * 16, 4096)
    return first_denial(f"/tidelog.v1.{method}", request, principal, state, SUPER)


def test_produce_needs_write_and_the_denial_names_principal_resource_operation() -> None:
    request = pb.ProduceRequest(topic="orders")
    assert denial("Broker/Produce", request) == (
        "User:alice may not WRITE on topic 'orders' (no ACL allows it)")
    assert denial("Broker/Produce", request, acls=[acl("topic:orders", "write")]) is None


def test_fetch_needs_read_on_every_topic() -> None:
    request = pb.FetchRequest(partitions=[pb.FetchPartition(topic="a"),
                                          pb.FetchPartition(topic="b")])
    assert "READ on topic 'b'" in denial("Broker/Fetch", request, acls=[acl("topic:a", "read")])


def test_create_topic_needs_create_on_the_topic_or_the_cluster() -> None:
    request = pb.CreateTopicsRequest(topics=[pb.TopicSpec(name="new")])
    assert "CREATE on topic 'new' or CREATE on cluster 'cluster'" in denial(
        "Broker/CreateTopics", request)
    assert denial("Broker/CreateTopics", request, acls=[acl("cluster", "create")]) is None


def test_group_calls_need_the_group_and_the_topics() -> None:
    request = pb.OffsetCommitRequest(group_id="g", partitions=[
        pb.OffsetCommitPartition(topic="t")])
    assert "READ on group 'g'" in denial("Broker/OffsetCommit", request,
                                         acls=[acl("topic:t", "read")])
    assert denial("Broker/OffsetCommit", request,
                  acls=[acl("topic:t", "read"), acl("group:g", "read")]) is None


def test_queue_receive_needs_read_on_the_queue_and_create_needs_the_topics() -> None:
    assert "READ on queue 'jobs'" in denial("Queues/Receive", qpb.ReceiveRequest(queue="jobs"))
    create = qpb.CreateQueueRequest(config=qpb.QueueConfig(name="jobs", topics=["t"]))
    assert "READ on topic 't'" in denial("Queues/CreateQueue", create,
                                         acls=[acl("queue:jobs", "create")])
    find = qpb.FindQueueCoordinatorRequest(queue="jobs")  # the first step of a create
    assert denial("Queues/FindQueueCoordinator", find, acls=[acl("queue:jobs", "create")]) is None
    assert "DESCRIBE on queue 'jobs' or CREATE on queue 'jobs'" in denial(
        "Queues/FindQueueCoordinator", find)


def test_idempotent_producer_needs_write_on_some_topic() -> None:
    request = pb.InitProducerIdRequest()
    assert "WRITE on some topic" in denial("Broker/InitProducerId", request)
    assert denial("Broker/InitProducerId", request, acls=[acl("topic:x", "write")]) is None


def test_security_calls_need_the_cluster_except_own_password_and_first_user() -> None:
    from tidelog.proto import security_pb2 as spb

    create = spb.UpsertUserRequest(name="bob", mode=spb.UPSERT_CREATE)
    assert "ALTER on cluster 'cluster'" in denial("Security/UpsertUser", create)
    assert denial("Security/UpsertUser", spb.UpsertUserRequest(
        name="alice", mode=spb.UPSERT_UPDATE)) is None
    assert denial("Security/UpsertUser", create, principal=ANONYMOUS, users=False) is None
    assert denial("Security/UpsertUser", create, principal=ANONYMOUS) is not None
    assert "ALTER on cluster" in denial("Security/CreateAcls", spb.CreateAclsRequest())


def test_an_unknown_method_is_closed_to_all_but_super_users() -> None:
    assert "ALTER on cluster" in denial("Future/Thing", pb.MetadataRequest())
    assert denial("Future/Thing", pb.MetadataRequest(),
                  principal=Principal(PrincipalKind.USER, "admin")) is None


# -- metadata commands -------------------------------------------------------------------------


def _user(**overrides: object) -> UpsertUser:
    credential = scram.derive_credential("hunter2-password", b"s" * 16, 4096)
    fields = dict(name="alice", mode="create", mechanism="SCRAM-SHA-256", salt=credential.salt,
                  iterations=4096, stored_key=credential.stored_key,
                  server_key=credential.server_key)
    fields.update(overrides)
    return UpsertUser(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", [
    _user(), _user(mode="update", bootstrap=True), DeleteUser(name="alice"),
    CreateAcls(acls=(acl("topic:t", "read"), acl("group:g", "all", prefixed=True))),
    DeleteAcls(acls=(acl("cluster", "alter", permission="deny"),)),
])
def test_commands_round_trip(command: object) -> None:
    assert decode_command(encode_command(command)) == command  # type: ignore[arg-type]


def test_stored_credential_holds_no_password() -> None:
    data = encode_command(_user())
    assert b"hunter2" not in data
    assert set(json.loads(data)) == {"op", "name", "mode", "mechanism", "salt", "iterations",
                                     "stored_key", "server_key", "bootstrap"}


def _mutated(command: object, **changes: object) -> bytes:
    body = json.loads(encode_command(command))  # type: ignore[arg-type]
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize("changes, error", [
    ({"iterations": 1000}, "at least 4096"),
    ({"iterations": True}, "must be an integer"),
    ({"salt": "!!"}, "base64"),
    ({"salt": "c2FsdA=="}, "salt of 4 bytes"),
    ({"stored_key": "c2FsdA=="}, "stored_key of 4 bytes"),
    ({"mode": "replace"}, "'mode' must be"),
    ({"mechanism": "SCRAM-SHA-1"}, "'mechanism' must be"),
    ({"password": "x"}, "unknown fields"),
    ({"name": ""}, "user name ''"),
    ({"name": "*"}, "unambiguous principal"),
    ({"name": "a b"}, "unambiguous principal"),
])
def test_upsert_user_decoding_is_strict(changes: dict[str, object], error: str) -> None:
    with pytest.raises(CommandError, match=error):
        decode_command(_mutated(_user(), **changes))


@pytest.mark.parametrize("acls, error", [
    ([], "list of 1 to 256"),
    ("x", "list of 1 to 256"),
    ([{"principal": "User:a"}], "exactly the string fields"),
    ([{**acl("topic:t", "read").to_wire(), "operation": "eat"}], "operation 'eat'"),
    ([{**acl("topic:t", "read").to_wire(), "host": "*"}], "exactly the string fields"),
    ([{**acl("topic:t", "read").to_wire(), "principal": 3}], "exactly the string fields"),
])
def test_acl_command_decoding_is_strict(acls: object, error: str) -> None:
    with pytest.raises(CommandError, match=error):
        decode_command(json.dumps({"op": "create_acls", "acls": acls}).encode())


def test_apply_users_and_acls() -> None:
    state = MetadataState()
    assert state.apply(1, _user(bootstrap=True)) == {}
    assert "already exists" in state.apply(2, _user())["message"]
    assert "cannot be the first user" in state.apply(3, _user(name="bob", bootstrap=True))[
        "message"]
    assert "does not exist" in state.apply(4, _user(name="bob", mode="update"))["message"]
    read = acl("topic:t", "read")
    assert state.apply(5, CreateAcls(acls=(read, read)))["created"] == 1
    assert state.apply(6, CreateAcls(acls=(read,)))["created"] == 0
    assert state.apply(7, DeleteAcls(acls=(read,)))["deleted"] == 1
    assert state.apply(8, DeleteUser(name="alice")) == {}
    assert "does not exist" in state.apply(9, DeleteUser(name="alice"))["message"]
    assert state.users == {} and state.acls == set()


def test_a_malformed_user_record_in_the_log_is_a_rejected_no_op() -> None:
    state = MetadataState()
    result = state.apply_encoded(1, _mutated(_user(), iterations=10))
    assert result["error"] == "InvalidRequestError" and state.users == {}
