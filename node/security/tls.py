"""TLS for a node's two listeners and its outbound peer channels, with certificates that reload
on change without a restart.

`TlsFiles` watches the three PEM files (certificate, key, CA) by modification time and size. The
listeners use grpc's dynamic server credentials: grpc calls our fetcher at each new handshake, and
a changed set of files (checked first: the key must match the certificate) replaces the served
certificate and the trusted CA for that handshake and later ones; connections already open keep
theirs. A half-written rotation (a key that does not match the certificate yet) keeps the old
material and is tried again at the next handshake. Outbound channels ask `TlsFiles.current()`
whenever they make a channel (node/security/channels.py).

Who is calling is read from the verified peer certificate in the call's auth context
(`x509_pem_cert`, parsed with `cryptography`): a node by its URI SAN `tidelog://node/<id>`
(node/security/certs.py), a client by its subject (`Cert:CN=alice`).

Client authentication on the client listener: grpcio's Python API can either require and verify a
client certificate or not ask for one at all; it cannot ask for one and accept its absence. So
`--tls-client-auth optional` is refused at start with a message (use `required`, or `none` plus
SCRAM); see docs/security.md.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tidelog.node.errors import ConfigError
from tidelog.node.security.certs import NODE_URI_PREFIX
from tidelog.node.security.config import ClientAuth, SecurityConfig

__all__ = ["TlsFiles", "TlsMaterial", "certificate_of", "node_id_of_certificate",
           "server_credentials", "subject_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One consistent set of PEM bytes, and the file signature it was read at."""

    cert: bytes
    key: bytes
    ca: bytes
    signature: tuple[tuple[int, int], ...]  # (mtime_ns, size) of cert, key, ca


class TlsFiles:
    """A node's certificate, key and CA, re-read when any of the files changes. Thread-safe:
    grpc calls the server fetcher on its own threads."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.paths = (Path(cert), Path(key), Path(ca))
        self._lock = threading.Lock()
        material = self._read()
        if material is None:
            raise ConfigError(f"--tls-key {key} does not match --tls-cert {cert}, or a file "
                              "is not PEM")
        self._material = material
        self.reloads = 0

    @classmethod
    def from_config(cls, security: SecurityConfig) -> TlsFiles:
        assert security.tls_cert and security.tls_key and security.tls_ca, "TLS is off"
        return cls(security.tls_cert, security.tls_key, security.tls_ca)

    def current(self) -> TlsMaterial:
        """The newest consistent material (the files are stat'ed, re-read only on change)."""
        signature = self._signature()
        with self._lock:
            if signature is None or signature == self._material.signature:
                return self._material
            material = self._read()
            if material is None:
                return self._material  # mid-rotation: keep serving the old pair
            self._material = material
            self.reloads += 1
        log.info("TLS certificate files changed: now serving %s (subject %s)", self.paths[0],
                 subject_of(x509.load_pem_x509_certificate(material.cert)))
        return material

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For outbound peer channels: verify the peer against our CA, present our cert."""
        material = self.current()
        return grpc.ssl_channel_credentials(material.ca, material.key, material.cert)

    def _signature(self) -> tuple[tuple[int, int], ...] | None:
        try:
            stats = [os.stat(p) for p in self.paths]
        except OSError:
            return None
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def _read(self) -> TlsMaterial | None:
        signature = self._signature()
        try:
            cert, key, ca = (p.read_bytes() for p in self.paths)
            if signature != self._signature():
                return None  # changed while we read: next time
            certificate = x509.load_pem_x509_certificate(cert)
            private = serialization.load_pem_private_key(key, password=None)
            x509.load_pem_x509_certificates(ca)
        except (OSError, ValueError, TypeError):
            return None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(serialization.Encoding.DER, public) != \
                certificate.public_key().public_bytes(serialization.Encoding.DER, public):
            return None
        assert signature is not None
        return TlsMaterial(cert, key, ca, signature)


def server_credentials(files: TlsFiles, *, require_client_auth: bool) -> grpc.ServerCredentials:
    """Dynamic credentials: each new handshake may pick up rotated files."""
    def configuration(material: TlsMaterial) -> object:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.ca)

    served = [files.current().signature]

    def fetch() -> object | None:
        material = files.current()
        if material.signature == served[0]:
            return None
        served[0] = material.signature
        return configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        configuration(files.current()), fetch, require_client_authentication=require_client_auth)


def client_listener_requires_cert(security: SecurityConfig) -> bool:
    if security.tls_client_auth is ClientAuth.OPTIONAL:
        raise ConfigError(
            "--tls-client-auth optional is not supported: grpcio can require a client "
            "certificate or not ask for one, not ask and accept none. Use `required` (every "
            "client presents a certificate), or `none` with --authentication scram")
    return security.tls_client_auth is ClientAuth.REQUIRED


def certificate_of(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    """The caller's certificate, verified by the TLS handshake against our CA; None when the
    connection is plaintext or the caller presented none."""
    pems = context.auth_context().get("x509_pem_cert")
    return _parse(pems[0]) if pems else None


def node_id_of_certificate(cert: x509.Certificate) -> int | None:
    """The node id of a node certificate's URI SAN `tidelog://node/<id>`; None if it has none
    (or more than one: a certificate naming two nodes names none)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ids = {uri[len(NODE_URI_PREFIX):] for uri in
           sans.get_values_for_type(x509.UniformResourceIdentifier)
           if uri.startswith(NODE_URI_PREFIX)}
    if len(ids) != 1:
        return None
    (text,) = ids
    return int(text) if text.isdigit() else None


def subject_of(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


@functools.lru_cache(maxsize=256)
def _parse(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)
