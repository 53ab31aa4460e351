"""Issue 13, TLS without a cluster: `tidelog certs dev` (files, modes, SANs, the node identity,
CA reuse), certificate reload in TlsFiles (a half-done rotation keeps the old pair), the from_node
rule, `--tls-client-auth optional` refused, and the client's TLS hints."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from tidelog.client.cli import main
from tidelog.client.security import ClientSecurity, tls_hint
from tidelog.node.errors import ConfigError
from tidelog.node.security.cert_auth import UNVERIFIED_NODE, forged_from_node
from tidelog.node.security.certs import issue_node, load_or_make_ca, make_dev_certs
from tidelog.node.security.config import ClientAuth, SecurityConfig
from tidelog.node.security.principal import Principal, PrincipalKind
from tidelog.node.security.tls import (
    TlsFiles,
    client_listener_requires_cert,
    node_id_of_certificate,
    subject_of,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_dev_makes_a_ca_node_and_client_certificates_with_safe_modes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "certs"
    assert main(["certs", "dev", str(directory), "--nodes", "2", "--hosts", "node{id},10.0.0.5",
                 "--clients", "alice,bob", "--output", "json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in made["nodes"]] == ["node-1", "node-2"]
    assert [c["subject"] for c in made["clients"]] == ["CN=alice", "CN=bob"]
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for item in [made["ca"], *made["nodes"], *made["clients"]]:
        assert stat.S_IMODE(os.stat(item["key"]).st_mode) == 0o600, item["key"]
        assert stat.S_IMODE(os.stat(item["cert"]).st_mode) == 0o644, item["cert"]
    ca = load(directory / "ca.pem")
    node = load(directory / "node-2.pem")
    node.verify_directly_issued_by(ca)
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["tidelog://node/2"]
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "node2"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1", "10.0.0.5"}
    assert node_id_of_certificate(node) == 2
    alice = load(directory / "client-alice.pem")
    alice.verify_directly_issued_by(ca)
    assert subject_of(alice) == "CN=alice"
    assert node_id_of_certificate(alice) is None  # a client certificate names no node
    # A second run keeps the CA (already trusted everywhere) and adds what is asked.
    assert main(["certs", "dev", str(directory), "--nodes", "0", "--clients", "carol"]) == 0
    assert "CA reused" in capsys.readouterr().out
    assert load(directory / "ca.pem") == ca
    load(directory / "client-carol.pem").verify_directly_issued_by(ca)


def test_certs_dev_help_says_where_the_node_identity_is(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["certs", "dev", "--help"])
    assert exit_info.value.code == 0
    assert "tidelog://node/<id>" in capsys.readouterr().out


def test_a_half_done_rotation_keeps_the_old_pair_until_the_files_match(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path, [1])
    files = TlsFiles(made.nodes[0].cert, made.nodes[0].key, made.ca.cert)
    first = files.current()
    assert files.current() is first  # unchanged files: the same material, nothing re-read
    ca_key, ca_cert, _ = load_or_make_ca(tmp_path)
    elsewhere = tmp_path / "next"
    elsewhere.mkdir()
    rotated = issue_node(elsewhere, ca_key, ca_cert, 1)
    # The new certificate lands before its key: the pair does not match, the old one stays.
    (tmp_path / "node-1.pem").write_bytes(rotated.cert.read_bytes())
    assert files.current() is first
    (tmp_path / "node-1-key.pem").write_bytes(rotated.key.read_bytes())
    second = files.current()
    assert second.cert == rotated.cert.read_bytes() and second.key == rotated.key.read_bytes()
    assert files.reloads == 1


def test_a_mismatched_pair_at_start_is_a_config_error(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path, [1, 2])
    with pytest.raises(ConfigError, match="does not match"):
        TlsFiles(made.nodes[0].cert, made.nodes[1].key, made.ca.cert)


def test_a_peer_speaks_only_as_the_node_its_certificate_names() -> None:
    node_2 = Principal(PrincipalKind.NODE, "2")
    assert forged_from_node(node_2, 2) is None
    refused = forged_from_node(node_2, 3)
    assert refused is not None and "certificate names node 2" in refused
    assert forged_from_node(UNVERIFIED_NODE, 3) is None  # plaintext: nothing to check against


def test_optional_client_auth_is_refused_with_the_alternatives(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path, [1])
    config = SecurityConfig(tls_cert=made.nodes[0].cert, tls_key=made.nodes[0].key,
                            tls_ca=made.ca.cert, tls_client_auth=ClientAuth.OPTIONAL)
    with pytest.raises(ConfigError, match="Use `required`"):
        client_listener_requires_cert(config)
    assert client_listener_requires_cert(SecurityConfig(
        tls_cert=made.nodes[0].cert, tls_key=made.nodes[0].key, tls_ca=made.ca.cert,
        tls_client_auth=ClientAuth.REQUIRED))


def test_tls_hints_name_the_likely_cause(tmp_path: Path) -> None:
    made = make_dev_certs(tmp_path, [], clients=["alice"])
    closed = "node at x:1 unavailable: failed to connect to all addresses; Socket closed"
    assert "give its CA" in tls_hint(closed, None)
    with_ca = ClientSecurity(tls_ca=made.ca.cert)
    assert "give one: --tls-cert" in tls_hint(closed, with_ca)
    assert tls_hint("node at x:1 unavailable: Connection refused", None) == ""
