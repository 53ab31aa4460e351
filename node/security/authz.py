"""Authorization on the client listener: what each RPC needs, checked against the ACLs.

`REQUIREMENTS` maps every Broker, Queues, Security and Quotas method to a function of its request
that lists what the call needs; each need is a tuple of alternatives (`Action`s), any one of
which suffices (CreateTopics: CREATE on the topic, or CREATE on the cluster). A method missing
from the table needs ALTER on the cluster (only super users, by default: a new RPC is closed
until someone decides). The decision itself is acl.decide (deny wins, super users, internal
topics).

A few calls are answered in part rather than refused (Kafka does the same): Metadata, ListGroups
and ListQueues leave out what the caller may not DESCRIBE, so listing never leaks a name.

Kept simple on purpose, and documented in docs/security.md: a queue's Receive/Settle/Peek need
READ on the queue only; READ on the queue's topics is checked when the queue is created (the
creator must be able to read them), as a queue hands out its topics' records by design. A
pattern subscription (subscribed_topic_regex) is not expanded here; Fetch checks READ on each
topic the consumer then reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpc
from tidelog.node.metadata import MetadataState
from tidelog.node.security.acl import (
    CLUSTER_NAME,
    Action,
    Operation,
    ResourceType,
    any_allowed,
    decide,
)
from tidelog.node.security.authn import ERROR_METADATA_KEY
from tidelog.node.security.principal import Principal, PrincipalKind, current_principal
from tidelog.proto import broker_pb2 as pb

__all__ = ["REQUIREMENTS", "AuthzInterceptor", "first_denial"]

log = logging.getLogger(__name__)

Need = tuple[Action, ...]  # alternatives: any one allowed is enough
Requirement = Callable[[Any, Principal, MetadataState], list[Need]]

T, G, Q, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.QUEUE, ResourceType.CLUSTER
R, W, CR, D, A, DE = (Operation.READ, Operation.WRITE, Operation.CREATE, Operation.DELETE,
                      Operation.ALTER, Operation.DESCRIBE)


class _State(Protocol):
    @property
    def state(self) -> MetadataState: ...


def _on(resource_type: ResourceType, operation: Operation,
        names: Callable[[Any], Iterable[str]]) -> Requirement:
    def need(request: Any, principal: Principal, state: MetadataState) -> list[Need]:
        return [(Action(resource_type=resource_type, name=n, operation=operation),)
                for n in sorted(set(names(request)))]
    return need


def _cluster(operation: Operation) -> Requirement:
    return lambda request, principal, state: [_cluster_need(operation)]


def _cluster_need(operation: Operation) -> Need:
    return (Action(resource_type=C, name=CLUSTER_NAME, operation=operation),)


def _both(*parts: Requirement) -> Requirement:
    return lambda request, principal, state: [
        need for part in parts for need in part(request, principal, state)]


def _none(request: Any, principal: Principal, state: MetadataState) -> list[Need]:
    return []


def _creating(resource_type: ResourceType, names: Callable[[Any], Iterable[str]]
              ) -> Requirement:
    def need(request: Any, principal: Principal, state: MetadataState) -> list[Need]:
        return [(Action(resource_type=resource_type, name=n, operation=CR),
                 Action(resource_type=C, name=CLUSTER_NAME, operation=CR))
                for n in sorted(set(names(request)))]
    return need


def _upsert_user(request: Any, principal: Principal, state: MetadataState) -> list[Need]:
    from tidelog.proto import security_pb2 as spb

    if principal.kind is PrincipalKind.ANONYMOUS and not state.users:
        return []  # the first user: the servicer allows loopback callers only
    if request.mode == spb.UPSERT_UPDATE and principal == Principal(PrincipalKind.USER,
                                                                    request.name):
        return []  # anyone may change their own password
    return [_cluster_need(A)]


def _queue(request: Any) -> list[str]:
    return [request.queue]


REQUIREMENTS: dict[str, Requirement] = {
    # Broker
    "/tidelog.v1.Broker/Metadata": _none,  # the answer is filtered (DESCRIBE per topic)
    "/tidelog.v1.Broker/CreateTopics": _creating(T, lambda r: [t.name for t in r.topics]),
    "/tidelog.v1.Broker/DeleteTopics": _on(T, D, lambda r: r.topics),
    "/tidelog.v1.Broker/DescribeConfigs": lambda r, p, s: (
        _on(T, DE, lambda r: r.topics)(r, p, s) if r.topics else [_cluster_need(DE)]),
    "/tidelog.v1.Broker/AlterConfigs": _on(T, A, lambda r: [r.topic]),
    "/tidelog.v1.Broker/CreatePartitions": _on(T, A, lambda r: [t.topic for t in r.topics]),
    "/tidelog.v1.Broker/Produce": _on(T, W, lambda r: [r.topic]),
    "/tidelog.v1.Broker/ProduceMany": _on(T, W, lambda r: [p.topic for p in r.partitions]),
    "/tidelog.v1.Broker/Fetch": _on(T, R, lambda r: [p.topic for p in r.partitions]),
    "/tidelog.v1.Broker/ListOffsets": _on(T, DE, lambda r: [p.topic for p in r.partitions]),
    "/tidelog.v1.Broker/InitProducerId": _none,  # checked by _init_producer_allowed
    "/tidelog.v1.Broker/FindCoordinator": _on(G, DE, lambda r: [r.group_id]),
    "/tidelog.v1.Broker/ConsumerGroupHeartbeat": _both(
        _on(G, R, lambda r: [r.group_id]), _on(T, DE, lambda r: r.subscribed_topic_names)),
    "/tidelog.v1.Broker/OffsetCommit": _both(
        _on(G, R, lambda r: [r.group_id]), _on(T, R, lambda r: [p.topic for p in r.partitions])),
    "/tidelog.v1.Broker/OffsetFetch": _both(
        _on(G, DE, lambda r: [r.group_id]),
        _on(T, DE, lambda r: [p.topic for p in r.partitions])),
    "/tidelog.v1.Broker/ListGroups": _none,  # the answer is filtered (DESCRIBE per group)
    "/tidelog.v1.Broker/DescribeGroups": _on(G, DE, lambda r: r.group_ids),
    "/tidelog.v1.Broker/DeleteGroups": _on(G, D, lambda r: r.group_ids),
    # moving replicas alters the cluster; listing the moves describes it
    "/tidelog.v1.Broker/AlterPartitionReassignments": _cluster(A),
    "/tidelog.v1.Broker/ListPartitionReassignments": _cluster(DE),
    # Queues
    # creating a queue starts with finding its coordinator: CREATE is enough for that too
    "/tidelog.v1.Queues/FindQueueCoordinator": lambda r, p, s: [(
        Action(resource_type=Q, name=r.queue, operation=DE),
        Action(resource_type=Q, name=r.queue, operation=CR))],
    "/tidelog.v1.Queues/CreateQueue": _both(
        _creating(Q, lambda r: [r.config.name]), _on(T, R, lambda r: r.config.topics)),
    "/tidelog.v1.Queues/AlterQueue": _on(Q, A, _queue),
    "/tidelog.v1.Queues/DeleteQueue": _on(Q, D, _queue),
    "/tidelog.v1.Queues/ListQueues": _none,  # the answer is filtered (DESCRIBE per queue)
    "/tidelog.v1.Queues/DescribeQueue": _on(Q, DE, _queue),
    "/tidelog.v1.Queues/Receive": _on(Q, R, _queue),
    "/tidelog.v1.Queues/Settle": _on(Q, R, _queue),
    "/tidelog.v1.Queues/Peek": _on(Q, R, _queue),
    "/tidelog.v1.Queues/Purge": _on(Q, D, _queue),
    "/tidelog.v1.Queues/Redrive": _on(Q, A, _queue),
    # Security
    "/tidelog.v1.Security/SaslStart": _none,
    "/tidelog.v1.Security/SaslFinish": _none,
    "/tidelog.v1.Security/WhoAmI": _none,
    "/tidelog.v1.Security/UpsertUser": _upsert_user,
    "/tidelog.v1.Security/DeleteUser": _cluster(A),
    "/tidelog.v1.Security/ListUsers": _cluster(DE),
    "/tidelog.v1.Security/CreateAcls": _cluster(A),
    "/tidelog.v1.Security/DeleteAcls": _cluster(A),
    "/tidelog.v1.Security/ListAcls": _cluster(DE),
    # Quotas (node/security/quota_service.py)
    "/tidelog.v1.Quotas/SetQuota": _cluster(A),
    "/tidelog.v1.Quotas/RemoveQuota": _cluster(A),
    "/tidelog.v1.Quotas/DescribeQuotas": _cluster(DE),
}
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def first_denial(method: str, request: Any, principal: Principal, state: MetadataState,
                 super_users: frozenset[str]) -> str | None:
    """Why `principal` may not make this call, or None when every need is allowed."""
    if method.endswith("/InitProducerId") and method.startswith("/tidelog.v1.Broker/"):
        if any_allowed(principal, T, W, state.acls, super_users):
            return None
        return (f"{principal} may not InitProducerId: an idempotent producer needs WRITE on "
                "some topic (no ACL allows it)")
    requirement = REQUIREMENTS.get(method, _cluster(A))
    for need in requirement(request, principal, state):
        decisions = [decide(principal, action, state.acls, super_users) for action in need]
        if any(d.allowed for d in decisions):
            continue
        wanted = " or ".join(str(action) for action in need)
        return f"{principal} may not {wanted} ({decisions[0].reason})"
    return None


class AuthzInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (PERMISSION_DENIED) a call that the ACLs do not allow; filters listings."""

    def __init__(self, metadata: _State, super_users: Iterable[str]) -> None:
        self._metadata = metadata
        self._super_users = frozenset(super_users)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        if handler.unary_unary is None:  # no streaming method on the client listener yet
            async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"{method}: streaming calls are not authorized")
            return grpc.unary_stream_rpc_method_handler(refuse_stream) \
                if handler.unary_stream is not None else handler
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal = current_principal.get()
            state = self._metadata.state
            if not hasattr(request, "DESCRIPTOR"):  # MalformedRequest: the servicer refuses it
                return await inner(request, context)
            denial = first_denial(method, request, principal, state, self._super_users)
            if denial is not None:
                log.info("refused %s: %s", method, denial)
                detail = pb.ErrorDetail(code=pb.UNAUTHORIZED, leader_id=-1)
                context.set_trailing_metadata(((ERROR_METADATA_KEY,
                                                detail.SerializeToString()),))
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"not authorized: {denial}")
            response = await inner(request, context)
            _filter(method, request, response, principal, lambda kind, name: decide(
                principal, Action(resource_type=kind, name=name, operation=DE), state.acls,
                self._super_users).allowed)
            return response

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _filter(method: str, request: Any, response: Any, principal: Principal,
            visible: Callable[[ResourceType, str], bool]) -> None:
    """Leave out of a listing what the caller may not DESCRIBE; a topic that Metadata was asked
    for by name is answered UNAUTHORIZED instead (so the client says why, not "unknown")."""
    if method == "/tidelog.v1.Broker/Metadata":
        asked = set(request.topics)
        for topic in response.topics:
            if topic.name in asked and not visible(T, topic.name):
                name = topic.name
                topic.Clear()  # partitions, configs: nothing of it may show
                topic.name = name
                topic.error = pb.UNAUTHORIZED
                topic.error_message = (f"not authorized: {principal} may not DESCRIBE on topic "
                                       f"{topic.name!r} (no ACL allows it)")
        _keep(response.topics, lambda t: t.error == pb.UNAUTHORIZED or visible(T, t.name))
    elif method == "/tidelog.v1.Broker/ListGroups":
        _keep(response.groups, lambda g: visible(G, g.group_id))
    elif method == "/tidelog.v1.Queues/ListQueues":
        _keep(response.queues, lambda q: visible(Q, q.name))


def _keep(items: Any, keep: Callable[[Any], bool]) -> None:
    kept = [item for item in items if keep(item)]
    if len(kept) != len(items):
        copies = [type(item)() for item in kept]
        for copy, item in zip(copies, kept, strict=True):
            copy.CopyFrom(item)
        del items[:]
        items.extend(copies)
