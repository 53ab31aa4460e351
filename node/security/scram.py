"""SCRAM-SHA-256, the server's half (RFC 5802 with RFC 7677's SHA-256), as pure functions.

Theory of operation (RFC 5802 section 3). A user's password P never reaches the node:

    SaltedPassword = PBKDF2-HMAC-SHA-256(P, salt, iterations)   (computed by the client only)
    ClientKey      = HMAC(SaltedPassword, "Client Key")
    StoredKey      = SHA-256(ClientKey)                          (stored, replicated)
    ServerKey      = HMAC(SaltedPassword, "Server Key")          (stored, replicated)
    AuthMessage    = client-first-bare + "," + server-first + "," + client-final-without-proof
    ClientProof    = ClientKey XOR HMAC(StoredKey, AuthMessage)
    ServerSignature= HMAC(ServerKey, AuthMessage)

The server recovers ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage) and accepts when
SHA-256(ClientKey) == StoredKey; it answers with ServerSignature so the client knows the server
holds the credential too. A stolen StoredKey/ServerKey does not give the password and cannot
be replayed as a proof (it lets the thief impersonate the *server*, RFC 5802 section 9).

Channel binding is not used: the GS2 header must be "n,," (or "y,," - the client supports it but
thinks the server does not); "p=" is refused. Nonces come from the caller (`secrets` in the
shell) so this module stays deterministic and testable against RFC 7677's vector.

Passwords are UTF-8 after NFKC normalization (SASLprep's mapping step, RFC 4013); the prohibited
character tables of full SASLprep are not applied. Client and node use the same rule
(tidelog.client.auth), so any password works between them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
ITERATIONS_MIN = 4096  # RFC 7677 section 4
ITERATIONS_MAX = 10_000_000  # bounds the client's work an evil credential could ask for
SALT_BYTES_MIN = 16
SALT_BYTES_MAX = 64
KEY_BYTES = 32  # SHA-256
NONCE_CHARS_MIN = 16
NONCE_CHARS_MAX = 256
MESSAGE_CHARS_MAX = 2048
USERNAME_CHARS_MAX = 128
DECOY_ITERATIONS = 16_384  # the client's default (tidelog.client.auth), so a decoy looks usual


class ScramError(ValueError):
    """A SCRAM message that is malformed or a proof that does not verify (the client's fault).
    Its message is safe to send back: it never says whether the user exists."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScramCredential:
    """What the node stores for a user (RFC 5802 section 5.1: never the password)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def __post_init__(self) -> None:
        check_credential_shape(self.salt, self.iterations, self.stored_key, self.server_key)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientFirst:
    gs2_header: str  # "n,," or "y,,"
    username: str  # unescaped (=2C → ",", =3D → "=")
    client_nonce: str
    bare: str  # client-first-message-bare, as sent: part of AuthMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerFirst:
    """The server's state between its first message and the client's final one."""

    client_first: ClientFirst
    nonce: str  # client nonce + server nonce
    message: str  # server-first-message, as sent


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientFinal:
    channel_binding: str  # base64 of the GS2 header
    nonce: str
    proof: bytes
    without_proof: str  # client-final-message-without-proof: part of AuthMessage


def normalize_password(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode()


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", normalize_password(password), salt, iterations)


def derive_credential(password: str, salt: bytes, iterations: int) -> ScramCredential:
    """The stored form of a password (what `tidelog user create` sends, computed client-side)."""
    salted = salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramCredential(salt=salt, iterations=iterations,
                           stored_key=hashlib.sha256(client_key).digest(),
                           server_key=_hmac(salted, b"Server Key"))


def check_credential_shape(salt: bytes, iterations: int, stored_key: bytes,
                           server_key: bytes) -> None:
    """ValueError unless the parts have the sizes SCRAM-SHA-256 gives them."""
    if not SALT_BYTES_MIN <= len(salt) <= SALT_BYTES_MAX:
        raise ValueError(f"salt of {len(salt)} bytes; expected {SALT_BYTES_MIN} to "
                         f"{SALT_BYTES_MAX}")
    if isinstance(iterations, bool) or not ITERATIONS_MIN <= iterations <= ITERATIONS_MAX:
        raise ValueError(f"{iterations} PBKDF2 iterations; expected {ITERATIONS_MIN} to "
                         f"{ITERATIONS_MAX} (RFC 7677 asks for at least 4096)")
    for name, key in (("stored_key", stored_key), ("server_key", server_key)):
        if len(key) != KEY_BYTES:
            raise ValueError(f"{name} of {len(key)} bytes; SHA-256 keys have {KEY_BYTES}")


def parse_client_first(message: str) -> ClientFirst:
    """client-first-message = gs2-header client-first-message-bare (RFC 5802 section 7)."""
    _bounded(message)
    parts = message.split(",", 2)
    if len(parts) != 3:
        raise ScramError("client-first-message: expected 'n,,n=USER,r=NONCE'")
    cbind, authzid, bare = parts
    if cbind == "p" or cbind.startswith("p="):
        raise ScramError("channel binding is not supported; use the GS2 header 'n,,'")
    if cbind not in ("n", "y"):
        raise ScramError(f"client-first-message: GS2 flag {cbind!r}; expected 'n'")
    if authzid:
        raise ScramError("an authorization identity (a=) is not supported")
    attributes = _attributes(bare)
    if attributes[:1] and attributes[0][0] == "m":
        raise ScramError("mandatory extensions (m=) are not supported")
    if [key for key, _ in attributes[:2]] != ["n", "r"]:
        raise ScramError("client-first-message-bare: expected 'n=USER,r=NONCE'")
    username = unescape_username(attributes[0][1])
    nonce = attributes[1][1]
    _check_nonce(nonce)
    if not username or len(username) > USERNAME_CHARS_MAX:
        raise ScramError(f"user name of {len(username)} characters; expected 1 to "
                         f"{USERNAME_CHARS_MAX}")
    return ClientFirst(gs2_header=f"{cbind},,", username=username, client_nonce=nonce, bare=bare)


def server_first(client_first: ClientFirst, credential: ScramCredential,
                 server_nonce: str) -> ServerFirst:
    """server-first-message = r=NONCE,s=SALT,i=ITERATIONS."""
    _check_nonce(server_nonce)
    nonce = client_first.client_nonce + server_nonce
    message = (f"r={nonce},s={base64.b64encode(credential.salt).decode()},"
               f"i={credential.iterations}")
    return ServerFirst(client_first=client_first, nonce=nonce, message=message)


def parse_client_final(message: str) -> ClientFinal:
    """client-final-message = c=BIND,r=NONCE,p=PROOF."""
    _bounded(message)
    head, sep, proof_text = message.rpartition(",p=")
    if not sep:
        raise ScramError("client-final-message: no proof (p=)")
    attributes = _attributes(head)
    if [key for key, _ in attributes] != ["c", "r"]:
        raise ScramError("client-final-message: expected 'c=BIND,r=NONCE,p=PROOF'")
    return ClientFinal(channel_binding=attributes[0][1], nonce=attributes[1][1],
                       proof=_b64(proof_text, "proof"), without_proof=head)


def verify_client_final(state: ServerFirst, final: ClientFinal,
                        credential: ScramCredential) -> str:
    """The server-final-message (v=SIGNATURE) when the proof verifies, else ScramError."""
    expected_binding = base64.b64encode(state.client_first.gs2_header.encode()).decode()
    if final.channel_binding != expected_binding:
        raise ScramError("client-final-message: channel binding does not match the GS2 header")
    if not hmac.compare_digest(final.nonce, state.nonce):
        raise ScramError("client-final-message: the nonce is not the one this exchange uses")
    if len(final.proof) != KEY_BYTES:
        raise ScramError("authentication failed")
    auth_message = ",".join((state.client_first.bare, state.message,
                             final.without_proof)).encode()
    signature = _hmac(credential.stored_key, auth_message)
    client_key = bytes(a ^ b for a, b in zip(final.proof, signature, strict=True))
    if not hmac.compare_digest(hashlib.sha256(client_key).digest(), credential.stored_key):
        raise ScramError("authentication failed")
    server_signature = _hmac(credential.server_key, auth_message)
    return "v=" + base64.b64encode(server_signature).decode()


def escape_username(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def unescape_username(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "=":
            code = text[i:i + 3]
            if code not in ("=2C", "=3D"):
                raise ScramError("user name: '=' must be escaped as =3D and ',' as =2C")
            out.append("," if code == "=2C" else "=")
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def decoy_credential(username: str, secret: bytes) -> ScramCredential:
    """A stable fake credential for an unknown user, so SaslStart answers the same way whether
    or not the user exists (RFC 5802 section 9 on user enumeration); its keys match no proof."""
    salt = _hmac(secret, b"decoy-salt:" + username.encode())[:SALT_BYTES_MIN]
    return ScramCredential(salt=salt, iterations=DECOY_ITERATIONS,
                           stored_key=_hmac(secret, b"decoy-stored:" + username.encode()),
                           server_key=_hmac(secret, b"decoy-server:" + username.encode()))


# -- helpers ------------------------------------------------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _bounded(message: str) -> None:
    if len(message) > MESSAGE_CHARS_MAX:
        raise ScramError(f"SCRAM message of {len(message)} characters; the maximum is "
                         f"{MESSAGE_CHARS_MAX}")


def _attributes(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1 or not key.isalpha():
            raise ScramError(f"SCRAM attribute {part[:40]!r}: expected 'k=value'")
        pairs.append((key, value))
    return pairs


def _check_nonce(nonce: str) -> None:
    if not NONCE_CHARS_MIN <= len(nonce) <= NONCE_CHARS_MAX:
        raise ScramError(f"nonce of {len(nonce)} characters; expected {NONCE_CHARS_MIN} to "
                         f"{NONCE_CHARS_MAX}")
    if any(not 0x21 <= ord(c) <= 0x7E or c == "," for c in nonce):
        raise ScramError("nonce: printable ASCII except ',' only")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ScramError(f"{what}: not base64") from None
