"""Admin's user and ACL methods (mixed into tidelog.client.admin.Admin; proto/security.proto,
docs/security.md).

A user's password never leaves this process: `create_user` and `change_password` send a fresh
random salt, the PBKDF2 iteration count and the SCRAM StoredKey and ServerKey computed from it
(tidelog.client.auth.new_credential). Any node takes a change (it forwards it to the metadata
leader) and answers once it has applied it.

The calls go to the bootstrap nodes, not through Metadata: the very first user of a cluster is
created before anyone can log in (the first-user path, from a node's own host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidelog.client.auth import ITERATIONS_DEFAULT, new_credential
from tidelog.client.routing import call_first_answering

if TYPE_CHECKING:
    from tidelog.client.config import AdminConfig
    from tidelog.client.connection import Connections

__all__ = ["AclEntry", "SecurityAdmin", "UserListing"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UserListing:
    name: str
    mechanism: str
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mechanism": self.mechanism, "iterations": self.iterations}


@dataclass(frozen=True, slots=True, kw_only=True)
class AclEntry:
    """One ACL binding; the strings are those of docs/security.md (lower case)."""

    principal: str  # "User:alice", "User:*", "Cert:CN=x"
    resource_type: str  # topic | group | queue | cluster
    resource_name: str
    operation: str  # read | write | create | delete | alter | describe | cluster_action | all
    permission: str = "allow"  # allow | deny
    pattern_type: str = "literal"  # literal | prefixed

    def to_dict(self) -> dict[str, str]:
        return {"principal": self.principal, "resource_type": self.resource_type,
                "pattern_type": self.pattern_type, "resource_name": self.resource_name,
                "operation": self.operation, "permission": self.permission}

    def __str__(self) -> str:
        prefix = "*" if self.pattern_type == "prefixed" else ""
        return (f"{self.permission} {self.principal} {self.operation} "
                f"{self.resource_type}:{self.resource_name}{prefix}")


class SecurityAdmin:
    """Mixin: needs the Admin's `config`, `_connections` and `_timeout_s`."""

    config: AdminConfig
    _connections: Connections
    _timeout_s: float

    # -- users ------------------------------------------------------------------------------------

    def create_user(self, name: str, password: str, *,
                    iterations: int = ITERATIONS_DEFAULT) -> None:
        """Raises InvalidRequest if the user exists; Unauthorized without ALTER on the cluster
        (or, for the first user, when not called from a node's own host)."""
        self._upsert_user(name, password, iterations, create=True)

    def change_password(self, name: str, password: str, *,
                        iterations: int = ITERATIONS_DEFAULT) -> None:
        """A user may change its own password; others need ALTER on the cluster. Sessions of
        the user on every node end at once (their StoredKey no longer matches)."""
        self._upsert_user(name, password, iterations, create=False)

    def delete_user(self, name: str) -> None:
        from tidelog.proto import security_pb2

        self._security_call("DeleteUser", security_pb2.DeleteUserRequest(name=name))

    def list_users(self) -> list[UserListing]:
        from tidelog.proto import security_pb2

        response = self._security_call("ListUsers", security_pb2.ListUsersRequest())
        return [UserListing(name=u.name, mechanism=u.mechanism, iterations=u.iterations)
                for u in response.users]

    def whoami(self) -> str:
        """The principal the node sees for this client ('User:alice', 'Cert:CN=x', ...)."""
        from tidelog.proto import security_pb2

        return str(self._security_call("WhoAmI", security_pb2.WhoAmIRequest()).principal)

    # -- ACLs -------------------------------------------------------------------------------------

    def create_acls(self, acls: list[AclEntry]) -> int:
        """Returns how many were new (an ACL already present is not an error)."""
        from tidelog.proto import security_pb2

        response = self._security_call("CreateAcls", security_pb2.CreateAclsRequest(
            acls=[security_pb2.AclBinding(**a.to_dict()) for a in acls]))
        return int(response.created)

    def delete_acls(self, acls: list[AclEntry]) -> int:
        """Returns how many were present."""
        from tidelog.proto import security_pb2

        response = self._security_call("DeleteAcls", security_pb2.DeleteAclsRequest(
            acls=[security_pb2.AclBinding(**a.to_dict()) for a in acls]))
        return int(response.deleted)

    def list_acls(self, *, principal: str = "", resource_type: str = "",
                  resource_name: str = "", node_address: str | None = None) -> list[AclEntry]:
        """The ACLs as the node asked (a bootstrap node, or `node_address`) has applied them."""
        from tidelog.proto import security_pb2

        response = self._security_call("ListAcls", security_pb2.ListAclsRequest(
            principal=principal, resource_type=resource_type, resource_name=resource_name),
            address=node_address)
        return [AclEntry(principal=a.principal, resource_type=a.resource_type,
                         resource_name=a.resource_name, operation=a.operation,
                         permission=a.permission, pattern_type=a.pattern_type)
                for a in response.acls]

    # -- helpers ----------------------------------------------------------------------------------

    def _upsert_user(self, name: str, password: str, iterations: int, *, create: bool) -> None:
        from tidelog.proto import security_pb2

        credential = new_credential(password, iterations)
        self._security_call("UpsertUser", security_pb2.UpsertUserRequest(
            name=name, mode=security_pb2.UPSERT_CREATE if create else security_pb2.UPSERT_UPDATE,
            mechanism="SCRAM-SHA-256", salt=credential.salt, iterations=credential.iterations,
            stored_key=credential.stored_key, server_key=credential.server_key))

    def _security_call(self, method: str, request: Any, *, address: str | None = None) -> Any:
        """On the first bootstrap node that answers, retrying retriable failures until the
        timeout."""
        from tidelog.proto import security_pb2_grpc

        return call_first_answering(
            self._connections, security_pb2_grpc.SecurityStub, method, request,
            candidates=lambda: [address] if address else list(self.config.bootstrap),
            subject=method, timeout_s=self._timeout_s,
            backoff_s=self.config.retry_backoff_ms / 1000)
