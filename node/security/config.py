"""A node's security settings: one frozen dataclass, from `tidelog node` flags and `TIDELOG_*`
variables (node/main.py), checked when built so that a half-secured node never starts."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from tidelog.node.errors import ConfigError


class ClientAuth(enum.Enum):
    """Whether the client listener asks clients for a certificate (peers always must give one)."""

    NONE = "none"
    OPTIONAL = "optional"  # a certificate, when given, is verified and names a Cert: principal
    REQUIRED = "required"


class Authentication(enum.Enum):
    NONE = "none"  # every caller is Anonymous (unless it presents a client certificate)
    SCRAM = "scram"  # SCRAM-SHA-256 users; a verified client certificate is accepted too


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    tls_cert: Path | None = None  # this node's certificate (PEM); its SAN names the node
    tls_key: Path | None = None
    tls_ca: Path | None = None  # the CA that signs every node's and client's certificate
    tls_client_auth: ClientAuth = ClientAuth.NONE
    authentication: Authentication = Authentication.NONE
    authorization: bool = False  # on: nothing is allowed that no ACL allows
    super_users: tuple[str, ...] = ()  # principals ('User:admin') that every ACL check passes
    encryption_keyring: Path | None = None  # at-rest keyring file; None: stored in plaintext

    def __post_init__(self) -> None:
        given = [name for name in ("tls_cert", "tls_key", "tls_ca")
                 if getattr(self, name) is not None]
        if given and len(given) != 3:
            raise ConfigError("TLS needs all of --tls-cert, --tls-key and --tls-ca "
                              f"(given: {', '.join('--' + g.replace('_', '-') for g in given)})")
        for name in given:
            path = getattr(self, name)
            if not Path(path).is_file():
                raise ConfigError(f"--{name.replace('_', '-')} {path}: no such file")
        if self.tls_client_auth is not ClientAuth.NONE and not self.tls:
            raise ConfigError("--tls-client-auth needs TLS (--tls-cert, --tls-key, --tls-ca)")
        if self.authorization and self.authentication is Authentication.NONE \
                and self.tls_client_auth is ClientAuth.NONE:
            raise ConfigError("--authorization needs a way to know who calls: "
                              "--authentication scram or --tls-client-auth optional|required")
        if self.encryption_keyring is not None and not Path(self.encryption_keyring).is_file():
            raise ConfigError(f"--encryption-keyring {self.encryption_keyring}: no such file "
                              "(make one with `tidelog keyring create`)")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
