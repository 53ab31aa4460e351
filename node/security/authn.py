"""Authentication on the client listener: SCRAM-SHA-256 logins and the session tokens they give.

A login is two calls to one node (Security.SaslStart, Security.SaslFinish; node/security/
service.py drives `Sessions`), answered by the pure functions of scram.py against the user's
credential in the replicated metadata. The node then hands out a random session token, held in
this node's memory only until it expires; every later call carries it as
`authorization: Bearer <token>`. A token dies with its node (a restart), on expiry, and as soon
as its user is deleted or its password changed (each call compares the StoredKey the login used
with the current one). A client logs in again in each of those cases (tidelog.client.auth).

`AuthnInterceptor` (after the certificate interceptor, before quotas and ACLs): a token names
the principal (`User:<name>`; one that is not valid is refused, even over mTLS, so that a client
that logged in never silently runs as its certificate); without a token, a principal already set
from a verified client certificate is accepted; otherwise the call is refused UNAUTHENTICATED
with a message saying how to log in. Health and the login calls stay open; so does
Security.UpsertUser while the cluster has no user at all (the first-user path, checked again by
the servicer: docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from tidelog.node.metadata import MetadataState
from tidelog.node.security import scram
from tidelog.node.security.cert_auth import wrap_handler
from tidelog.node.security.principal import Principal, PrincipalKind, current_principal
from tidelog.proto import broker_pb2 as pb

__all__ = ["AUTHENTICATION_HELP", "AuthnInterceptor", "LoginFailed", "Sessions",
           "bearer_token", "sessions_for"]

log = logging.getLogger(__name__)

TOKEN_TTL_S = 3600.0
EXCHANGE_TTL_S = 30.0  # between SaslStart and SaslFinish
TOKENS_MAX = 65_536  # overflow: the oldest session is dropped (its client logs in again)
EXCHANGES_MAX = 4096  # overflow: the oldest unfinished exchange is dropped
AUTHORIZATION_KEY = "authorization"
ERROR_METADATA_KEY = "tidelog-error-bin"

AUTHENTICATION_HELP = (
    "this node requires authentication (--authentication scram): log in with a SCRAM-SHA-256 "
    "user, `tidelog --user NAME` (or TIDELOG_USER) with the password in TIDELOG_PASSWORD "
    "(Python: ClientSecurity(username=..., password=...)), or present a client certificate "
    "(--tls-cert/--tls-key) when the node accepts them")

#: Methods that run without a principal: health checks and the login itself.
OPEN_METHODS = frozenset({
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/tidelog.v1.Security/SaslStart", "/tidelog.v1.Security/SaslFinish",
})
#: Open while no user exists yet (the first user; the servicer allows loopback callers only).
BOOTSTRAP_METHOD = "/tidelog.v1.Security/UpsertUser"


class LoginFailed(Exception):
    """A login that did not succeed; the message is safe to send (no user enumeration)."""


class _State(Protocol):
    @property
    def state(self) -> MetadataState: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class _Exchange:
    server_first: scram.ServerFirst
    stored_key: bytes | None  # None: the user does not exist (a decoy exchange)
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Session:
    username: str
    stored_key: bytes
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    server_final: str
    token: str
    expires_in_ms: int
    principal: Principal


class Sessions:
    """SCRAM exchanges in progress and the session tokens of this node (event loop only)."""

    def __init__(self, metadata: _State, *, ttl_s: float = TOKEN_TTL_S,
                 clock: Callable[[], float] = time.monotonic,
                 token_bytes: Callable[[int], str] = secrets.token_urlsafe) -> None:
        self._metadata = metadata
        self._ttl_s = ttl_s
        self._clock = clock
        self._random = token_bytes
        self._decoy_secret = secrets.token_bytes(32)  # per node: decoys for unknown users
        self._exchanges: OrderedDict[str, _Exchange] = OrderedDict()
        self._tokens: OrderedDict[str, _Session] = OrderedDict()

    def start(self, mechanism: str, client_first: str) -> tuple[str, str]:
        """SaslStart → (exchange id, server-first-message); an unknown user gets a decoy."""
        if mechanism != scram.MECHANISM:
            raise LoginFailed(f"mechanism {mechanism!r} is not supported; use "
                              f"{scram.MECHANISM}")
        try:
            first = scram.parse_client_first(client_first)
        except scram.ScramError as exc:
            raise LoginFailed(str(exc)) from None
        credential = self._metadata.state.users.get(first.username)
        known = credential is not None
        if credential is None:
            credential = scram.decoy_credential(first.username, self._decoy_key())
        server = scram.server_first(first, credential, self._random(24))
        now = self._clock()
        self._expire(now)
        exchange_id = self._random(16)
        self._exchanges[exchange_id] = _Exchange(
            server_first=server, stored_key=credential.stored_key if known else None,
            deadline=now + EXCHANGE_TTL_S)
        while len(self._exchanges) > EXCHANGES_MAX:
            self._exchanges.popitem(last=False)
        return exchange_id, server.message

    def finish(self, exchange_id: str, client_final: str) -> Login:
        """SaslFinish → the server-final-message and a session token, or LoginFailed."""
        exchange = self._exchanges.pop(exchange_id, None)
        now = self._clock()
        if exchange is None or exchange.deadline < now:
            raise LoginFailed("unknown or expired SCRAM exchange: start again with SaslStart "
                              "on the same node")
        username = exchange.server_first.client_first.username
        credential = self._metadata.state.users.get(username)
        if exchange.stored_key is None or credential is None \
                or credential.stored_key != exchange.stored_key:
            credential = scram.decoy_credential(username, self._decoy_key())
        try:
            final = scram.parse_client_final(client_final)
            server_final = scram.verify_client_final(exchange.server_first, final, credential)
        except scram.ScramError as exc:
            log.info("SCRAM login refused for user %r: %s", username, exc)
            raise LoginFailed(f"authentication failed for user {username!r} (wrong password "
                              "or unknown user)") from None
        token = self._random(32)
        self._tokens[token] = _Session(username=username, stored_key=credential.stored_key,
                                       deadline=now + self._ttl_s)
        while len(self._tokens) > TOKENS_MAX:
            self._tokens.popitem(last=False)
        return Login(server_final=server_final, token=token,
                     expires_in_ms=int(self._ttl_s * 1000),
                     principal=Principal(PrincipalKind.USER, username))

    def principal(self, token: str) -> Principal | None:
        """The user of a live token; None if it is unknown, expired or its credential changed."""
        session = self._tokens.get(token)
        if session is None:
            return None
        credential = self._metadata.state.users.get(session.username)
        if session.deadline < self._clock() or credential is None \
                or not hmac.compare_digest(credential.stored_key, session.stored_key):
            self._tokens.pop(token, None)
            return None
        return Principal(PrincipalKind.USER, session.username)

    def _decoy_key(self) -> bytes:
        """The same on every node, and secret: derived from the StoredKey of the first user by
        name, so that asking two nodes about an unknown user gives the same decoy salt (a
        per-node decoy would differ and tell that the user does not exist)."""
        users = self._metadata.state.users
        if not users:
            return self._decoy_secret
        return hashlib.sha256(b"tidelog-scram-decoy:" + users[min(users)].stored_key).digest()

    def _expire(self, now: float) -> None:
        while self._exchanges:
            first = next(iter(self._exchanges.values()))
            if first.deadline >= now:
                break
            self._exchanges.popitem(last=False)
        while self._tokens:  # insertion order = deadline order (one ttl for every token)
            first_session = next(iter(self._tokens.values()))
            if first_session.deadline >= now:
                break
            self._tokens.popitem(last=False)


def sessions_for(metadata: _State) -> Sessions:
    """The one Sessions of a node, shared by the interceptor and the Security servicer, which
    are built separately (node/server.py); keyed by the node's metadata view."""
    sessions = _SESSIONS.get(id(metadata))
    if sessions is None or sessions._metadata is not metadata:
        sessions = Sessions(metadata)
        _SESSIONS[id(metadata)] = sessions
    return sessions


_SESSIONS: dict[int, Sessions] = {}


def bearer_token(metadata: Any) -> str | None:
    """The token of `authorization: Bearer <token>`, '' if the header is malformed, None if
    absent."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class AuthnInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) a call that is not authenticated; sets `current_principal`."""

    def __init__(self, metadata: _State, sessions: Sessions) -> None:
        self._metadata = metadata
        self._sessions = sessions

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method in OPEN_METHODS:
            return handler
        token = bearer_token(details.invocation_metadata)

        async def check(context: grpc.aio.ServicerContext) -> None:
            if token is None and current_principal.get().kind in (PrincipalKind.CERT,
                                                                  PrincipalKind.NODE):
                return  # a verified certificate authenticated the caller (no SCRAM login)
            if token is None:
                if method == BOOTSTRAP_METHOD and not self._metadata.state.users:
                    return  # the first user: Anonymous; the servicer checks the rest
                await _refuse(context, f"no credentials: {AUTHENTICATION_HELP}",
                              retriable=False)
            principal = self._sessions.principal(token or "")
            if principal is None:
                # Retriable: the client logs in again (expired, or this node restarted).
                await _refuse(context, "session token unknown or expired on this node: log in "
                                       f"again ({AUTHENTICATION_HELP})", retriable=True)
            assert principal is not None
            current_principal.set(principal)

        return wrap_handler(handler, check)


async def _refuse(context: grpc.aio.ServicerContext, message: str, *, retriable: bool) -> None:
    detail = pb.ErrorDetail(code=pb.UNAUTHORIZED, leader_id=-1, retriable=retriable)
    context.set_trailing_metadata(((ERROR_METADATA_KEY, detail.SerializeToString()),))
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
