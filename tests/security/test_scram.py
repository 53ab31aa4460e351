"""SCRAM-SHA-256: both halves against RFC 7677's test vector, against each other, and the
node's Sessions (tokens, expiry, revocation, unknown users look like wrong passwords)."""

from __future__ import annotations

import base64
import itertools

import pytest
from tidelog.client import auth as client_scram
from tidelog.node.metadata import MetadataState
from tidelog.node.security import scram
from tidelog.node.security.authn import LoginFailed, Sessions, bearer_token
from tidelog.node.security.principal import Principal, PrincipalKind

# RFC 7677 section 3.
USER, PASSWORD = "user", "pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = ("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
CLIENT_FINAL = ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_server_half_reproduces_rfc7677_exchange() -> None:
    credential = scram.derive_credential(PASSWORD, SALT, 4096)
    first = scram.parse_client_first(CLIENT_FIRST)
    assert (first.username, first.client_nonce) == (USER, CLIENT_NONCE)
    state = scram.server_first(first, credential, SERVER_NONCE)
    assert state.message == SERVER_FIRST
    final = scram.parse_client_final(CLIENT_FINAL)
    assert scram.verify_client_final(state, final, credential) == SERVER_FINAL


def test_client_half_reproduces_rfc7677_exchange() -> None:
    assert client_scram.client_first(USER, CLIENT_NONCE) == CLIENT_FIRST
    final, expected = client_scram.client_final(PASSWORD, CLIENT_FIRST, SERVER_FIRST)
    assert final == CLIENT_FINAL
    client_scram.check_server_final(SERVER_FINAL, expected)
    with pytest.raises(client_scram.AuthenticationFailed, match="impostor"):
        client_scram.check_server_final("v=" + base64.b64encode(b"x" * 32).decode(), expected)


def test_client_and_node_derive_the_same_credential() -> None:
    node = scram.derive_credential("pässword\u00a0", SALT, 5000)
    client = client_scram.derive_credential("pässword\u00a0", SALT, 5000)
    assert (node.stored_key, node.server_key) == (client.stored_key, client.server_key)


def test_wrong_password_fails_verification() -> None:
    credential = scram.derive_credential(PASSWORD, SALT, 4096)
    state = scram.server_first(scram.parse_client_first(CLIENT_FIRST), credential, SERVER_NONCE)
    final, _ = client_scram.client_final("pencil2", CLIENT_FIRST, SERVER_FIRST)
    with pytest.raises(scram.ScramError, match="authentication failed"):
        scram.verify_client_final(state, scram.parse_client_final(final), credential)


@pytest.mark.parametrize("message, error", [
    ("p=tls-unique,,n=user,r=" + CLIENT_NONCE, "channel binding"),
    ("n,a=admin,n=user,r=" + CLIENT_NONCE, "authorization identity"),
    ("n,,n=user,r=short", "nonce of 5"),
    ("n,,m=ext,n=user,r=" + CLIENT_NONCE, "mandatory extensions"),
    ("n,,n=us=er,r=" + CLIENT_NONCE, "escaped"),
    ("n,,r=" + CLIENT_NONCE, "expected 'n=USER"),
    ("n,," + "x" * 3000, "maximum"),
])
def test_malformed_client_first_is_refused(message: str, error: str) -> None:
    with pytest.raises(scram.ScramError, match=error):
        scram.parse_client_first(message)


def test_escaped_user_names_round_trip() -> None:
    first = scram.parse_client_first(client_scram.client_first("a,b=c", CLIENT_NONCE))
    assert first.username == "a,b=c"


def test_credential_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 4096"):
        scram.derive_credential(PASSWORD, SALT, 1000)
    with pytest.raises(ValueError, match="salt of 4 bytes"):
        scram.derive_credential(PASSWORD, b"salt", 4096)


# -- the node's Sessions: a real login, driven by the client half ------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Metadata:
    def __init__(self) -> None:
        self.state = MetadataState()


def _tokens() -> object:
    counter = itertools.count()
    return lambda n: f"tok{next(counter):04d}{'x' * 16}"


def _sessions() -> tuple[Sessions, _Metadata, _Clock]:
    metadata, clock = _Metadata(), _Clock()
    metadata.state.users["alice"] = scram.derive_credential("secret", SALT, 4096)
    return Sessions(metadata, ttl_s=60, clock=clock, token_bytes=_tokens()), metadata, clock


def _login(sessions: Sessions, user: str, password: str) -> str:
    first = client_scram.client_first(user, "c" * 24)
    exchange, server_first = sessions.start("SCRAM-SHA-256", first)
    final, expected = client_scram.client_final(password, first, server_first)
    login = sessions.finish(exchange, final)
    client_scram.check_server_final(login.server_final, expected)
    return login.token


def test_login_gives_a_token_that_names_the_user_until_it_expires() -> None:
    sessions, _, clock = _sessions()
    token = _login(sessions, "alice", "secret")
    assert sessions.principal(token) == Principal(PrincipalKind.USER, "alice")
    clock.now += 61
    assert sessions.principal(token) is None


def test_password_change_and_delete_revoke_tokens() -> None:
    sessions, metadata, _ = _sessions()
    token = _login(sessions, "alice", "secret")
    metadata.state.users["alice"] = scram.derive_credential("new", SALT, 4096)
    assert sessions.principal(token) is None
    token = _login(sessions, "alice", "new")
    del metadata.state.users["alice"]
    assert sessions.principal(token) is None


def test_unknown_user_and_wrong_password_fail_alike() -> None:
    sessions, _, _ = _sessions()
    first = client_scram.client_first("mallory", "c" * 24)
    _, decoy = sessions.start("SCRAM-SHA-256", first)
    assert decoy.startswith("r=" + "c" * 24) and ",s=" in decoy and decoy.endswith(",i=16384")
    other_node = Sessions(sessions._metadata, token_bytes=_tokens())  # another node's Sessions
    assert other_node.start("SCRAM-SHA-256", first)[1].split(",")[1] == decoy.split(",")[1]
    messages = []
    for user, password in (("mallory", "x"), ("alice", "wrong")):
        with pytest.raises(LoginFailed) as refused:
            _login(sessions, user, password)
        messages.append(str(refused.value).replace(user, "USER"))
    assert messages[0] == messages[1]


def test_an_exchange_is_used_once_and_expires() -> None:
    sessions, _, clock = _sessions()
    first = client_scram.client_first("alice", "c" * 24)
    exchange, server_first = sessions.start("SCRAM-SHA-256", first)
    final, _ = client_scram.client_final("secret", first, server_first)
    clock.now += 31
    with pytest.raises(LoginFailed, match="expired"):
        sessions.finish(exchange, final)
    with pytest.raises(LoginFailed, match="unknown"):
        sessions.finish(exchange, final)


def test_bearer_token_parsing() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) == ""
    assert bearer_token((("x", "y"),)) is None


@pytest.mark.parametrize("peer, loopback", [
    ("ipv4:127.0.0.1:5000", True), ("ipv4:127.8.0.2:5000", True), ("ipv6:[::1]:5000", True),
    ("unix:/tmp/s", True), ("ipv4:10.0.0.7:5000", False), ("ipv6:[fe80::1]:5000", False),
    ("ipv4:127.0.0.1.evil:5000", False), ("", False),
])
def test_only_loopback_peers_may_create_the_first_user(peer: str, loopback: bool) -> None:
    from tidelog.node.security.service import is_loopback_peer

    assert is_loopback_peer(peer) is loopback
