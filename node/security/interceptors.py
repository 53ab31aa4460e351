"""The client listener's interceptor chain, in the order the checks must run.

1. authentication (node/security/authn.py): who is calling; sets `current_principal`,
   or refuses the call with UNAUTHENTICATED;
2. quotas (node/security/quotas.py): slows a principal or client id that is over its rates;
3. authorization (node/security/authz.py): refuses with PERMISSION_DENIED what no ACL allows.

Each interceptor wraps the method handler, so its check runs in the RPC's own task (context
variables set by an earlier one are visible to the later ones and to the servicer).
"""

from __future__ import annotations

from typing import Protocol

import grpc
from tidelog.node.config import NodeConfig
from tidelog.node.metadata import MetadataState
from tidelog.node.security.authn import AuthnInterceptor, sessions_for
from tidelog.node.security.authz import AuthzInterceptor
from tidelog.node.security.cert_auth import CertAuthInterceptor
from tidelog.node.security.config import Authentication
from tidelog.node.security.quota_interceptor import QuotaInterceptor, quota_window_from_env


class MetadataView(Protocol):
    """The replicated state the checks read (users, ACLs, quotas): MetadataService."""

    @property
    def state(self) -> MetadataState: ...


def client_interceptors(config: NodeConfig, metadata: MetadataView
                        ) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors of the client listener (Broker, Queues, Health), outermost first."""
    chain: list[grpc.aio.ServerInterceptor] = []
    if config.security.tls:  # 0. a verified client certificate names a Cert: principal
        chain.append(CertAuthInterceptor())
    if config.security.authentication is Authentication.SCRAM:  # 1. SCRAM session tokens
        chain.append(AuthnInterceptor(metadata, sessions_for(metadata)))
    # 2. quotas: after authentication (it reads current_principal), before authorization
    chain.append(QuotaInterceptor(metadata, window=quota_window_from_env()))
    if config.security.authorization:  # 3. ACLs (deny wins; super users pass)
        chain.append(AuthzInterceptor(metadata, config.security.super_users))
    return chain
