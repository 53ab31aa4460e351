"""How a client reaches a secured cluster: TLS (server verified against a CA, optionally a client
certificate for mTLS) and SCRAM-SHA-256 credentials. One frozen `ClientSecurity` is given to the
Producer, Consumer, Admin and QueueConsumer (`security=`); `make_channel` is the only place the
client builds a gRPC channel. See docs/security.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tidelog.client.errors import ConfigError

__all__ = ["ClientSecurity", "channel_credentials", "make_channel", "tls_options"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSecurity:
    tls_ca: Path | None = None  # the CA to verify the nodes against; None: plaintext
    tls_cert: Path | None = None  # a client certificate for mTLS (with tls_key)
    tls_key: Path | None = None
    tls_server_name: str = ""  # expected name in the node certificates; "" = the host dialled
    username: str = ""  # SCRAM-SHA-256 user; "" = no login
    password: str = ""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("security: a client certificate needs both tls_cert and tls_key")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ConfigError("security: tls_cert needs tls_ca (mTLS runs over TLS)")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"security: {name} {path}: no such file")
        if bool(self.username) != bool(self.password):
            raise ConfigError("security: give both username and password, or neither")

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSecurity | None:
        """TIDELOG_TLS_CA, TIDELOG_TLS_CERT, TIDELOG_TLS_KEY, TIDELOG_TLS_SERVER_NAME,
        TIDELOG_USER, TIDELOG_PASSWORD; None when none is set (a plaintext, anonymous client)."""
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            value = env.get(name, "")
            return Path(value) if value else None

        security = cls(tls_ca=path("TIDELOG_TLS_CA"), tls_cert=path("TIDELOG_TLS_CERT"),
                       tls_key=path("TIDELOG_TLS_KEY"),
                       tls_server_name=env.get("TIDELOG_TLS_SERVER_NAME", ""),
                       username=env.get("TIDELOG_USER", ""),
                       password=env.get("TIDELOG_PASSWORD", ""))
        return None if security == cls() else security


def make_channel(target: str, options: Sequence[tuple[str, Any]],
                 security: ClientSecurity | None) -> grpc.Channel:
    """A channel to one node: plaintext without `security`, else TLS and/or a SCRAM login.

    TLS: the node's certificate is verified against `tls_ca` and must name the host dialled
    (or `tls_server_name`); with `tls_cert`/`tls_key` the client presents its certificate
    (mTLS: the node then knows the caller as `Cert:<subject>`)."""
    if security is None:
        return grpc.insecure_channel(target, options=list(options))
    if security.tls:
        options = [*options, *tls_options(security)]
        channel = grpc.secure_channel(target, channel_credentials(security), options=options)
    else:
        channel = grpc.insecure_channel(target, options=list(options))
    # --- SCRAM login (helper H5): `if security.username:` wraps `channel` here
    # (tidelog.client.auth), over the TLS or plaintext channel made above.
    if security.username:  # log in lazily per node; every call carries the session token
        from tidelog.client.auth import ScramAuth

        channel = grpc.intercept_channel(
            channel, ScramAuth(channel, security.username, security.password))
    return channel


def channel_credentials(security: ClientSecurity) -> grpc.ChannelCredentials:
    """The CA to verify nodes against and, for mTLS, our certificate and key (read now: a
    rotated client certificate is used by channels made after the files change)."""
    assert security.tls_ca is not None, "plaintext security has no TLS credentials"
    try:
        ca = Path(security.tls_ca).read_bytes()
        cert = Path(security.tls_cert).read_bytes() if security.tls_cert else None
        key = Path(security.tls_key).read_bytes() if security.tls_key else None
    except OSError as exc:
        raise ConfigError(f"security: cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def tls_options(security: ClientSecurity) -> list[tuple[str, Any]]:
    """Channel options of a TLS channel: the name the node's certificate must carry."""
    if not security.tls_server_name:
        return []
    return [("grpc.ssl_target_name_override", security.tls_server_name)]


_PLAINTEXT_TO_TLS = ("Socket closed", "Connection reset", "WRONG_VERSION_NUMBER")
_HANDSHAKE = ("handshake", "ssl", "certificate", "tls")


def tls_hint(message: str, security: ClientSecurity | None) -> str:
    """A hint to append to a "node unavailable" message whose cause is likely TLS: gRPC only
    says "Socket closed" when a plaintext client meets a TLS node, or a node refuses a client
    without a certificate; "" when nothing suggests TLS."""
    lowered = message.lower()
    if security is None or not security.tls:
        if any(text.lower() in lowered for text in _PLAINTEXT_TO_TLS):
            return (" (if the cluster uses TLS, give its CA: --tls-ca / TIDELOG_TLS_CA, or "
                    "ClientSecurity(tls_ca=...); see docs/security.md)")
        return ""
    if any(text in lowered for text in _HANDSHAKE) or "socket closed" in lowered:
        mtls = "" if security.tls_cert else (
            "; if the node requires client certificates (mTLS), give one: --tls-cert and "
            "--tls-key")
        return (f" (TLS handshake failed: check that {security.tls_ca} is the CA that signed the "
                f"node certificates and that they name the host dialled{mtls})")
    return ""
