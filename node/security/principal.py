"""Who is calling: the principal an authenticated request runs as.

Authentication (node/security/authn.py) sets `current_principal` for the duration of one RPC;
authorization and quotas read it. A principal is a kind plus a name, written `User:alice`,
`Cert:CN=client-1` or `Node:2` (Kafka writes principals the same way, `User:alice`).
"""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass


class PrincipalKind(enum.Enum):
    ANONYMOUS = "Anonymous"  # authentication is off, or nothing was presented
    USER = "User"  # SCRAM-SHA-256
    CERT = "Cert"  # the subject of a verified client certificate (mTLS)
    NODE = "Node"  # another node of this cluster (its certificate names its node id)


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Principal:
        """'User:alice' → Principal(USER, 'alice'); ValueError with the accepted forms."""
        kind_text, sep, name = text.partition(":")
        kinds = {kind.value.lower(): kind for kind in PrincipalKind}
        kind = kinds.get(kind_text.strip().lower())
        if not sep or kind is None or not name:
            raise ValueError(f"principal {text!r}: expected KIND:NAME with KIND one of "
                             + ", ".join(k.value for k in PrincipalKind))
        return cls(kind, name)


ANONYMOUS = Principal(PrincipalKind.ANONYMOUS, "anonymous")

current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "tidelog_principal", default=ANONYMOUS)
