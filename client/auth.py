"""SCRAM-SHA-256 login, the client's half (RFC 5802/7677), and the channel wrapper that uses it.

`ScramAuth` is a gRPC client interceptor on one node's channel (client/security.py make_channel
installs it when `ClientSecurity.username` is set). Before the first call, and whenever its token
has expired, it logs in to that node (Security.SaslStart + SaslFinish on the raw channel) and
then adds `authorization: Bearer <token>` to every call. A node that no longer knows the token
(it restarted; the user's password changed) answers UNAUTHENTICATED: the token is dropped, and a
blocking call is sent once more after a new login; an asynchronous call fails with a retriable
error and its retry logs in again.

The math is RFC 5802's (see tidelog.node.security.scram for the server's half and the theory of
operation); it is repeated here because the client does not import the node. The two halves are
tested against each other and against RFC 7677's vector. The node never sees the password: the
login sends a proof, and `tidelog user create` sends the StoredKey and ServerKey.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from tidelog.client import errors

__all__ = ["AuthenticationFailed", "ScramAuth", "ScramCredential", "client_final",
           "client_first", "derive_credential", "new_credential"]

MECHANISM = "SCRAM-SHA-256"
ITERATIONS_DEFAULT = 16_384  # RFC 7677 asks for >= 4096; each login costs the client one PBKDF2
ITERATIONS_CLIENT_MAX = 10_000_000  # a node asking for more is refused (a denial of service)
SALT_BYTES = 16
LOGIN_TIMEOUT_S = 10.0
EXPIRY_MARGIN_S = 30.0  # log in again this long before the node would refuse the token
_LOGIN_METHODS = ("/tidelog.v1.Security/SaslStart", "/tidelog.v1.Security/SaslFinish")


class AuthenticationFailed(errors.TidelogError):
    """The node refused the login (wrong user or password) or answered something that is not
    SCRAM-SHA-256 (a node that cannot prove it holds the credential)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def derive_credential(password: str, salt: bytes, iterations: int) -> ScramCredential:
    salted = _salted_password(password, salt, iterations)
    return ScramCredential(salt=salt, iterations=iterations,
                           stored_key=hashlib.sha256(_hmac(salted, b"Client Key")).digest(),
                           server_key=_hmac(salted, b"Server Key"))


def new_credential(password: str, iterations: int = ITERATIONS_DEFAULT) -> ScramCredential:
    """A fresh random salt: what `tidelog user create|passwd` sends (never the password)."""
    if not password:
        raise errors.ConfigError("the password must not be empty")
    return derive_credential(password, secrets.token_bytes(SALT_BYTES), iterations)


def client_first(username: str, nonce: str) -> str:
    """client-first-message 'n,,n=USER,r=NONCE' (no channel binding)."""
    name = username.replace("=", "=3D").replace(",", "=2C")
    return f"n,,n={name},r={nonce}"


def client_final(password: str, first: str, server_first: str) -> tuple[str, bytes]:
    """(client-final-message, the ServerSignature the node must answer with)."""
    gs2, _, bare = first.partition(",,")
    attributes = dict(_attributes(server_first))
    nonce, salt_text, iterations_text = (attributes.get("r", ""), attributes.get("s", ""),
                                         attributes.get("i", ""))
    client_nonce = dict(_attributes(bare)).get("r", "")
    if not nonce.startswith(client_nonce) or len(nonce) <= len(client_nonce) \
            or not iterations_text.isdigit() or not salt_text:
        raise AuthenticationFailed(f"the node's SCRAM answer is malformed: {server_first!r}")
    iterations = int(iterations_text)
    if not 4096 <= iterations <= ITERATIONS_CLIENT_MAX:
        raise AuthenticationFailed(f"the node asks for {iterations} PBKDF2 iterations; "
                                   f"expected 4096 to {ITERATIONS_CLIENT_MAX}")
    try:
        salt = base64.b64decode(salt_text, validate=True)
    except ValueError:
        raise AuthenticationFailed("the node's salt is not base64") from None
    salted = _salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c={base64.b64encode((gs2 + ',,').encode()).decode()},r={nonce}"
    auth_message = ",".join((bare, server_first, without_proof)).encode()
    proof = bytes(a ^ b for a, b in zip(client_key, _hmac(stored_key, auth_message),
                                        strict=True))
    server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
    return f"{without_proof},p={base64.b64encode(proof).decode()}", server_signature


def check_server_final(server_final: str, expected: bytes) -> None:
    """The node proves it holds the credential (mutual authentication)."""
    if not server_final.startswith("v="):
        raise AuthenticationFailed(f"the node refused the login: {server_final!r}")
    try:
        signature = base64.b64decode(server_final[2:], validate=True)
    except ValueError:
        raise AuthenticationFailed("the node's server signature is not base64") from None
    if not hmac.compare_digest(signature, expected):
        raise AuthenticationFailed("the node's server signature is wrong: it does not hold "
                                   "this user's credential (an impostor?)")


class ScramAuth(grpc.UnaryUnaryClientInterceptor):
    """Logs in to one node lazily and adds the session token to every unary call."""

    def __init__(self, channel: grpc.Channel, username: str, password: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._channel = channel  # the raw channel: the login itself carries no token
        self._username = username
        self._password = password
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._renew_at = 0.0
        self.logins = 0  # how many times this channel logged in (tests, diagnostics)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        if client_call_details.method in _LOGIN_METHODS:
            return continuation(client_call_details, request)
        token = self.token()
        outcome = continuation(_with_token(client_call_details, token), request)
        if outcome.done():  # a blocking call: retry once after a new login
            if _unauthenticated(outcome) and self._forget(token):
                outcome = continuation(_with_token(client_call_details, self.token()), request)
            return outcome
        outcome.add_done_callback(lambda done: _unauthenticated(done) and self._forget(token))
        return outcome

    def token(self) -> str:
        with self._lock:
            if not self._token or self._clock() >= self._renew_at:
                self._login()
            return self._token

    def _forget(self, token: str) -> bool:
        with self._lock:
            if self._token != token:
                return True  # another thread has logged in again already
            self._token = ""
            return True

    def _login(self) -> None:
        from tidelog.proto import security_pb2 as spb
        from tidelog.proto import security_pb2_grpc

        stub = security_pb2_grpc.SecurityStub(self._channel)
        first = client_first(self._username, secrets.token_urlsafe(24))
        try:
            started = stub.SaslStart(spb.SaslStartRequest(mechanism=MECHANISM,
                                                          client_first=first.encode()),
                                     timeout=LOGIN_TIMEOUT_S)
            final, expected = client_final(self._password, first,
                                           started.server_first.decode(errors="replace"))
            finished = stub.SaslFinish(spb.SaslFinishRequest(exchange_id=started.exchange_id,
                                                             client_final=final.encode()),
                                       timeout=LOGIN_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthenticationFailed(f"login as {self._username!r} refused: "
                                           f"{exc.details()}") from None
            raise errors.from_rpc_error(exc, subject=f"login as {self._username!r}") from None
        check_server_final(finished.server_final.decode(errors="replace"), expected)
        self._token = finished.token
        lifetime_s = finished.expires_in_ms / 1000
        self._renew_at = self._clock() + max(lifetime_s - EXPIRY_MARGIN_S, lifetime_s / 2)
        self.logins += 1


def _unauthenticated(call: Any) -> bool:
    try:
        return call.code() == grpc.StatusCode.UNAUTHENTICATED
    except Exception:  # a call object without a status (cancelled before it started)
        return False


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def _with_token(details: Any, token: str) -> _CallDetails:
    metadata = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
    metadata.append(("authorization", f"Bearer {token}"))
    return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))


@functools.lru_cache(maxsize=16)
def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """Cached: one PBKDF2 per (password, salt) for all the nodes a client logs in to."""
    normalized = unicodedata.normalize("NFKC", password).encode()
    return hashlib.pbkdf2_hmac("sha256", normalized, salt, iterations)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _attributes(text: str) -> list[tuple[str, str]]:
    return [(part[0], part[2:]) for part in text.split(",") if len(part) >= 2 and part[1] == "="]
