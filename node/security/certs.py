"""Development certificates (`tidelog certs dev DIR`): one CA, a certificate per node and per
client, made with the `cryptography` library (never by shelling out to openssl).

A node's identity is in its certificate: the URI SAN `tidelog://node/<id>` (and, for people,
the common name `node-<id>`). The peer listener takes the calling node's id from that URI and
nothing else (node/security/tls.py `node_id_of_certificate`). Node certificates carry DNS and IP
SANs for every name peers and clients dial (127.0.0.1, ::1, localhost and the `--hosts` given),
and both TLS usages, as a node is the server of its listeners and the client of its peers'.
A client certificate names its principal by its subject: `Cert:CN=alice`.

Keys are ECDSA P-256 (fast handshakes, small certificates); private keys are written 0600 and
the directory 0700, certificates 0644. An existing CA in DIR is reused, so clients or nodes can
be added later (and a node's certificate re-issued, for rotation) without re-trusting a new CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["NODE_URI_PREFIX", "DevCerts", "Issued", "issue_client", "issue_node", "load_or_make_ca",
           "make_dev_certs", "node_uri"]

NODE_URI_PREFIX = "tidelog://node/"
DAYS_DEFAULT = 825  # the longest validity browsers accept; dev certificates only
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
DEFAULT_HOSTS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")


def node_uri(node_id: int) -> str:
    return f"{NODE_URI_PREFIX}{node_id}"


@dataclass(frozen=True, slots=True)
class Issued:
    """One issued certificate: its files and the principal or node it names."""

    name: str  # "node-1", "client-alice", "ca"
    cert: Path
    key: Path
    subject: str  # RFC 4514, e.g. "CN=alice"


@dataclass(frozen=True, slots=True)
class DevCerts:
    directory: Path
    ca: Issued
    ca_reused: bool
    nodes: tuple[Issued, ...]
    clients: tuple[Issued, ...]

    def as_json(self) -> dict[str, object]:
        def one(item: Issued) -> dict[str, str]:
            return {"name": item.name, "cert": str(item.cert), "key": str(item.key),
                    "subject": item.subject}
        return {"directory": str(self.directory), "ca": one(self.ca), "ca_reused": self.ca_reused,
                "nodes": [one(n) for n in self.nodes], "clients": [one(c) for c in self.clients]}


def make_dev_certs(directory: Path, node_ids: Sequence[int], *, hosts: Sequence[str] = (),
                   clients: Sequence[str] = (), days: int = DAYS_DEFAULT) -> DevCerts:
    """The CA (reused if DIR has one), then every node's and client's certificate. A host
    containing `{id}` is expanded per node (`node{id}` → node1 for node 1)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)
    ca_key, ca_cert, reused = load_or_make_ca(directory, days=days)
    ca = Issued("ca", directory / "ca.pem", directory / "ca-key.pem",
                ca_cert.subject.rfc4514_string())
    nodes = tuple(issue_node(directory, ca_key, ca_cert, node_id, hosts=hosts, days=days)
                  for node_id in node_ids)
    issued_clients = tuple(issue_client(directory, ca_key, ca_cert, name, days=days)
                           for name in clients)
    return DevCerts(directory, ca, reused, nodes, issued_clients)


def load_or_make_ca(directory: Path, *, days: int = DAYS_DEFAULT,
                    common_name: str = "Tidelog development CA"
                    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bool]:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.is_file() and key_path.is_file():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), f"{key_path}: not an EC key"
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes()), True
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tidelog"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), KEY_MODE)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return key, cert, False


def issue_node(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
               node_id: int, *, hosts: Sequence[str] = (), days: int = DAYS_DEFAULT) -> Issued:
    """node-<id>.pem / node-<id>-key.pem: server and client usage, URI SAN tidelog://node/<id>."""
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *(h.replace("{id}", str(node_id))
                                                  for h in hosts)]))
    dns = [x509.DNSName(n) for n in names if not _is_ip(n)]
    ips = [x509.IPAddress(ipaddress.ip_address(n))
           for n in dict.fromkeys([*DEFAULT_IPS, *(n for n in names if _is_ip(n))])]
    sans = [x509.UniformResourceIdentifier(node_uri(node_id)), *dns, *ips]
    return _issue(directory, f"node-{node_id}", ca_key, ca_cert, common_name=f"node-{node_id}",
                  sans=sans, usages=[ExtendedKeyUsageOID.SERVER_AUTH,
                                     ExtendedKeyUsageOID.CLIENT_AUTH], days=days)


def issue_client(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                 name: str, *, days: int = DAYS_DEFAULT) -> Issued:
    """client-<name>.pem / client-<name>-key.pem: client usage only, subject CN=<name>."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"client name {name!r}: use letters, digits, '-', '_' or '.'")
    return _issue(directory, f"client-{name}", ca_key, ca_cert, common_name=name, sans=[],
                  usages=[ExtendedKeyUsageOID.CLIENT_AUTH], days=days)


# ---------------------------------------------------------------------------- helpers

def _issue(directory: Path, stem: str, ca_key: ec.EllipticCurvePrivateKey,
           ca_cert: x509.Certificate, *, common_name: str, sans: list[x509.GeneralName],
           usages: list[x509.ObjectIdentifier], days: int) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path, cert_path = directory / f"{stem}-key.pem", directory / f"{stem}.pem"
    # The key first: a reloading node that sees the new certificate must find its key.
    _write(key_path, _key_pem(key), KEY_MODE)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return Issued(stem, cert_path, key_path, subject.rfc4514_string())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically (a temp file renamed over), created with its final mode: a key is never
    readable by others, not even for a moment, and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
