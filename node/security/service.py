"""The tidelog.v1.Security servicer: SCRAM login, users and ACLs (proto/security.proto).

Users and ACLs are metadata commands (node/metadata_commands.py), committed through the metadata
Raft group and applied on every node; this servicer checks a request, proposes the command and
answers once it is applied here (read your writes). Authorization of each call is the
interceptor's (authz.py), except the first-user path, which only this servicer can judge:

The first user (bootstrap). While the cluster has no user at all, an unauthenticated
UpsertUser(create) is accepted from a loopback address only (a process on a node's own host),
for a name that is a super user (`--super-users User:NAME`) when authorization is on, and the
command carries `bootstrap`, which apply refuses once any user exists (so two racing first
users cannot both win). The risk, in docs/security.md: until that first user exists, any local
process on a node's host can create it.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Protocol

import grpc
from tidelog.node.config import NodeConfig
from tidelog.node.errors import BrokerError, InvalidRequestError
from tidelog.node.metadata import MetadataState
from tidelog.node.metadata_commands import (
    Command,
    CreateAcls,
    DeleteAcls,
    DeleteUser,
    UpsertUser,
)
from tidelog.node.metadata_service import raise_result
from tidelog.node.security.acl import AclBinding
from tidelog.node.security.authn import LoginFailed, Sessions, sessions_for
from tidelog.node.security.principal import PrincipalKind, current_principal
from tidelog.node.service import _unary
from tidelog.proto import broker_pb2 as pb
from tidelog.proto import security_pb2 as spb
from tidelog.proto import security_pb2_grpc

__all__ = ["SecurityService", "add_security_service", "is_loopback_peer"]

log = logging.getLogger(__name__)

USERS_MAX = 10_000
ACLS_MAX = 100_000


class UnauthorizedError(BrokerError):
    code = pb.UNAUTHORIZED  # answered PERMISSION_DENIED


class MetadataProposer(Protocol):
    @property
    def state(self) -> MetadataState: ...

    async def propose(self, command: Command, timeout_s: float = ...) -> dict[str, Any]: ...


class SecurityService(security_pb2_grpc.SecurityServicer):
    def __init__(self, config: NodeConfig, metadata: MetadataProposer,
                 sessions: Sessions | None = None) -> None:
        self._config = config
        self._metadata = metadata
        self._sessions = sessions or sessions_for(metadata)

    # -- login --------------------------------------------------------------------------------

    @_unary
    async def SaslStart(self, request, context):  # noqa: N802 - gRPC method names
        try:
            exchange_id, server_first = self._sessions.start(
                request.mechanism, request.client_first.decode("utf-8"))
        except (LoginFailed, UnicodeDecodeError) as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"SCRAM: {exc}")
        return spb.SaslStartResponse(exchange_id=exchange_id,
                                     server_first=server_first.encode())

    @_unary
    async def SaslFinish(self, request, context):  # noqa: N802
        try:
            login = self._sessions.finish(request.exchange_id,
                                          request.client_final.decode("utf-8"))
        except (LoginFailed, UnicodeDecodeError) as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"SCRAM: {exc}")
        return spb.SaslFinishResponse(server_final=login.server_final.encode(),
                                      token=login.token, expires_in_ms=login.expires_in_ms,
                                      principal=str(login.principal))

    @_unary
    async def WhoAmI(self, request, context):  # noqa: N802
        principal = current_principal.get()
        return spb.WhoAmIResponse(principal=str(principal),
                                  super_user=str(principal) in self._config.security.super_users)

    # -- users --------------------------------------------------------------------------------

    @_unary
    async def UpsertUser(self, request, context):  # noqa: N802
        bootstrap = current_principal.get().kind is PrincipalKind.ANONYMOUS \
            and not self._metadata.state.users
        if bootstrap:
            self._check_bootstrap(request, context.peer())
        if request.mode == spb.UPSERT_CREATE and len(self._metadata.state.users) >= USERS_MAX:
            raise InvalidRequestError(f"the cluster has {USERS_MAX} users, the maximum")
        command = UpsertUser(
            name=request.name, mode="create" if request.mode == spb.UPSERT_CREATE else "update",
            mechanism=request.mechanism, salt=request.salt, iterations=request.iterations,
            stored_key=request.stored_key, server_key=request.server_key, bootstrap=bootstrap)
        await self._propose(command)
        log.info("user %r %s by %s", request.name,
                 "created" if command.mode == "create" else "updated",
                 "the first-user path" if bootstrap else current_principal.get())
        return spb.UpsertUserResponse()

    @_unary
    async def DeleteUser(self, request, context):  # noqa: N802
        await self._propose(DeleteUser(name=request.name))
        return spb.DeleteUserResponse()

    @_unary
    async def ListUsers(self, request, context):  # noqa: N802
        users = self._metadata.state.users
        return spb.ListUsersResponse(users=[
            spb.UserListing(name=name, mechanism="SCRAM-SHA-256",
                            iterations=users[name].iterations) for name in sorted(users)])

    # -- ACLs ---------------------------------------------------------------------------------

    @_unary
    async def CreateAcls(self, request, context):  # noqa: N802
        acls = _bindings(request.acls)
        if len(self._metadata.state.acls) + len(acls) > ACLS_MAX:
            raise InvalidRequestError(f"the cluster would hold more than {ACLS_MAX} ACLs")
        result = await self._propose(CreateAcls(acls=acls))
        return spb.CreateAclsResponse(created=int(result.get("created", 0)))

    @_unary
    async def DeleteAcls(self, request, context):  # noqa: N802
        result = await self._propose(DeleteAcls(acls=_bindings(request.acls)))
        return spb.DeleteAclsResponse(deleted=int(result.get("deleted", 0)))

    @_unary
    async def ListAcls(self, request, context):  # noqa: N802
        acls = sorted(self._metadata.state.acls, key=_sort_key)
        return spb.ListAclsResponse(acls=[
            spb.AclBinding(**acl.to_wire()) for acl in acls
            if (not request.principal or acl.principal == request.principal)
            and (not request.resource_type or acl.resource_type.value == request.resource_type)
            and (not request.resource_name or acl.resource_name == request.resource_name)])

    # -- helpers ------------------------------------------------------------------------------

    def _check_bootstrap(self, request: Any, peer: str) -> None:
        name = f"User:{request.name}"
        if not is_loopback_peer(peer):
            raise UnauthorizedError(
                "the cluster has no user yet: the first user can only be created from the "
                f"node's own host (loopback), not from {peer}; run `tidelog user create "
                f"{request.name}` there")
        if request.mode != spb.UPSERT_CREATE:
            raise UnauthorizedError("the cluster has no user yet: create the first one")
        security = self._config.security
        if security.authorization and name not in security.super_users:
            raise UnauthorizedError(
                f"the first user must be a super user so that it can grant the others "
                f"(--super-users {name}); the node's super users are "
                f"{', '.join(security.super_users) or 'none'}")

    async def _propose(self, command: Command) -> dict[str, Any]:
        result = await self._metadata.propose(command)
        raise_result(result)
        return result


def is_loopback_peer(peer: str) -> bool:
    """gRPC peer strings: 'ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000', 'unix:...'."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]")
    else:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bindings(items: Any) -> tuple[AclBinding, ...]:
    try:
        return tuple(AclBinding.from_wire({
            "principal": a.principal, "resource_type": a.resource_type,
            "pattern_type": a.pattern_type or "literal", "resource_name": a.resource_name,
            "operation": a.operation, "permission": a.permission or "allow"}) for a in items)
    except ValueError as exc:
        raise InvalidRequestError(f"ACL: {exc}") from None


def _sort_key(acl: AclBinding) -> tuple[str, ...]:
    return (acl.principal, acl.resource_type.value, acl.resource_name, acl.operation.value,
            acl.permission.value, acl.pattern_type.value)


def add_security_service(server: grpc.aio.Server, config: NodeConfig,
                         metadata: MetadataProposer) -> None:
    """Register the Security service on the client listener (node/server.py)."""
    from tidelog.node.service import add_servicer

    add_servicer(server, SecurityService(config, metadata),
                 spb.DESCRIPTOR.services_by_name["Security"])
