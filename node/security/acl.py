"""ACLs: the model and the one decision function (pure; the interceptor is authz.py).

An ACL binding says: PRINCIPAL is ALLOWed/DENYed OPERATION on RESOURCE-TYPE resources whose name
matches PATTERN (literal, or prefixed). The decision, in Kafka's order:

1. Internal topics (`__consumer_offsets`, `__metadata`, `__queue_state`, ...) are never deleted or
   altered through the client API, by anyone (their content and layout belong to the nodes).
2. Super users (`--super-users`) and other nodes (`Node:` principals) pass every other check.
3. A matching DENY refuses, whatever allows it too ("deny wins").
4. A matching ALLOW permits; DESCRIBE is implied by READ, WRITE, DELETE and ALTER (Kafka's rule),
   so a producer with WRITE can read the metadata of its topic.
5. Nothing else is allowed: with authorization on, what no ACL allows is refused.

Matching: the principal `User:*` matches every `User:` principal; a literal name `*` matches
every resource of the type, and a prefixed pattern every name that starts with it - except
internal topics, which only an ACL naming them literally (or a super user) reaches, so
`topic:* read` does not hand out every group's committed offsets.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from tidelog.node.security.principal import Principal, PrincipalKind

INTERNAL_PREFIX = "__"
RESOURCE_NAME_CHARS_MAX = 1024
PRINCIPAL_CHARS_MAX = 1024
WILDCARD = "*"
_E = TypeVar("_E", bound=enum.Enum)


class ResourceType(enum.Enum):
    TOPIC = "topic"
    GROUP = "group"
    QUEUE = "queue"
    CLUSTER = "cluster"  # the one resource named "kafka-cluster" in Kafka; here "cluster"


class PatternType(enum.Enum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(enum.Enum):
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"
    DESCRIBE = "describe"
    CLUSTER_ACTION = "cluster_action"
    ALL = "all"


class Permission(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


CLUSTER_NAME = "cluster"
_IMPLIES_DESCRIBE = frozenset({Operation.READ, Operation.WRITE, Operation.DELETE,
                               Operation.ALTER, Operation.DESCRIBE, Operation.ALL})


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class AclBinding:
    principal: str  # "User:alice", "User:*", "Cert:CN=x"
    resource_type: ResourceType
    pattern_type: PatternType
    resource_name: str
    operation: Operation
    permission: Permission

    def __post_init__(self) -> None:
        Principal.parse(self.principal)  # ValueError with the accepted forms
        if len(self.principal) > PRINCIPAL_CHARS_MAX:
            raise ValueError(f"principal of {len(self.principal)} characters; the maximum is "
                             f"{PRINCIPAL_CHARS_MAX}")
        if not self.resource_name or len(self.resource_name) > RESOURCE_NAME_CHARS_MAX:
            raise ValueError(f"resource name of {len(self.resource_name)} characters; expected "
                             f"1 to {RESOURCE_NAME_CHARS_MAX}")
        if self.resource_type is ResourceType.CLUSTER and self.resource_name != CLUSTER_NAME:
            raise ValueError(f"the cluster resource is named {CLUSTER_NAME!r}")

    def __str__(self) -> str:
        pattern = "" if self.pattern_type is PatternType.LITERAL else " (prefixed)"
        return (f"{self.permission.value} {self.principal} {self.operation.value} on "
                f"{self.resource_type.value}:{self.resource_name}{pattern}")

    def to_wire(self) -> dict[str, str]:
        return {"principal": self.principal, "resource_type": self.resource_type.value,
                "pattern_type": self.pattern_type.value, "resource_name": self.resource_name,
                "operation": self.operation.value, "permission": self.permission.value}

    @classmethod
    def from_wire(cls, fields: dict[str, str]) -> AclBinding:
        """ValueError naming the field and its accepted values."""
        return cls(principal=fields["principal"],
                   resource_type=_enum(ResourceType, fields["resource_type"], "resource_type"),
                   pattern_type=_enum(PatternType, fields["pattern_type"], "pattern_type"),
                   resource_name=fields["resource_name"],
                   operation=_enum(Operation, fields["operation"], "operation"),
                   permission=_enum(Permission, fields["permission"], "permission"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One thing a request needs: OPERATION on the resource TYPE:NAME."""

    resource_type: ResourceType
    name: str
    operation: Operation

    def __str__(self) -> str:
        return f"{self.operation.value.upper()} on {self.resource_type.value} {self.name!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    allowed: bool
    reason: str  # for the log and the PERMISSION_DENIED message


def decide(principal: Principal, action: Action, acls: Iterable[AclBinding],
           super_users: frozenset[str]) -> Decision:
    """May `principal` perform `action`? (The rules are in the module docstring.)"""
    internal = action.resource_type is ResourceType.TOPIC and is_internal(action.name)
    if internal and action.operation in (Operation.DELETE, Operation.ALTER):
        return Decision(allowed=False, reason=f"{action.name!r} is an internal topic: no one "
                                              "deletes or alters it through the client API")
    if principal.kind is PrincipalKind.NODE or str(principal) in super_users:
        return Decision(allowed=True, reason=f"{principal} is a super user")
    allowed_by: AclBinding | None = None
    for acl in acls:
        if not (_principal_matches(acl.principal, principal)
                and _resource_matches(acl, action.resource_type, action.name)
                and _operation_matches(acl, action.operation)):
            continue
        if acl.permission is Permission.DENY:
            return Decision(allowed=False, reason=f"denied by the ACL '{acl}'")
        allowed_by = allowed_by or acl
    if allowed_by is not None:
        return Decision(allowed=True, reason=f"allowed by the ACL '{allowed_by}'")
    return Decision(allowed=False, reason="no ACL allows it")


def any_allowed(principal: Principal, resource_type: ResourceType, operation: Operation,
                acls: Iterable[AclBinding], super_users: frozenset[str]) -> bool:
    """Whether some ALLOW binding grants `operation` on some resource of the type (e.g.
    InitProducerId: an idempotent producer needs WRITE on some topic, as in Kafka 2.8+)."""
    if principal.kind is PrincipalKind.NODE or str(principal) in super_users:
        return True
    return any(acl.permission is Permission.ALLOW and acl.resource_type is resource_type
               and _principal_matches(acl.principal, principal)
               and _operation_matches(acl, operation) for acl in acls)


def is_internal(topic: str) -> bool:
    return topic.startswith(INTERNAL_PREFIX)


def parse_binding(*, principal: str, resource: str, operation: str, permission: str = "allow",
                  prefixed: bool = False) -> AclBinding:
    """From the CLI's words: resource 'topic:orders' (or 'cluster'); ValueError when wrong."""
    type_text, _, name = resource.partition(":")
    resource_type = _enum(ResourceType, type_text, "resource type")
    if resource_type is ResourceType.CLUSTER:
        name = name or CLUSTER_NAME
    return AclBinding(principal=principal, resource_type=resource_type,
                      pattern_type=PatternType.PREFIXED if prefixed else PatternType.LITERAL,
                      resource_name=name, operation=_enum(Operation, operation, "operation"),
                      permission=_enum(Permission, permission, "permission"))


# -- helpers ------------------------------------------------------------------------------------


def _principal_matches(pattern: str, principal: Principal) -> bool:
    if pattern == str(principal):
        return True
    kind, _, name = pattern.partition(":")
    return name == WILDCARD and kind.lower() == principal.kind.value.lower() \
        and principal.kind is not PrincipalKind.ANONYMOUS


def _resource_matches(acl: AclBinding, resource_type: ResourceType, name: str) -> bool:
    if acl.resource_type is not resource_type:
        return False
    if acl.pattern_type is PatternType.LITERAL and acl.resource_name == name:
        return True
    if resource_type is ResourceType.TOPIC and is_internal(name):
        return False  # only a literal ACL naming an internal topic reaches it
    if acl.pattern_type is PatternType.LITERAL:
        return acl.resource_name == WILDCARD
    return name.startswith(acl.resource_name)


def _operation_matches(acl: AclBinding, operation: Operation) -> bool:
    if acl.operation is Operation.ALL or acl.operation is operation:
        return True
    # DESCRIBE is implied by the others for ALLOW only: a DENY of READ does not deny DESCRIBE.
    return operation is Operation.DESCRIBE and acl.permission is Permission.ALLOW \
        and acl.operation in _IMPLIES_DESCRIBE


def _enum(kind: type[_E], text: str, what: str) -> _E:
    try:
        return kind(text.strip().lower())
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected one of "
                         + ", ".join(k.value for k in kind)) from None
