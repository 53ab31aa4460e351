"""SCRAM and client certificates together, through the client listener's real interceptor chain
(node/security/interceptors.py) on an in-process gRPC server with mTLS and the real Security
servicer: a certificate alone authenticates (Cert:<subject>), a SCRAM login over mTLS names the
user, and an invalid token is refused even though the certificate is valid (it never falls
back to the certificate's principal)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tidelog.client.security import ClientSecurity, make_channel
from tidelog.node.config import NodeConfig
from tidelog.node.metadata import MetadataState
from tidelog.node.security import scram
from tidelog.node.security.certs import make_dev_certs
from tidelog.node.security.config import Authentication, ClientAuth, SecurityConfig
from tidelog.node.security.interceptors import client_interceptors
from tidelog.node.security.service import add_security_service
from tidelog.node.security.tls import TlsFiles, server_credentials
from tidelog.proto import security_pb2 as spb
from tidelog.proto import security_pb2_grpc


class _Metadata:
    """The node's metadata as the interceptors and this servicer's WhoAmI read it (no
    proposals are made by these tests)."""

    def __init__(self) -> None:
        self.state = MetadataState()

    async def propose(self, command: Any, timeout_s: float = 10.0) -> dict[str, Any]:
        raise AssertionError("these tests make no metadata proposals")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, _Metadata]]:
    certs = tmp_path_factory.mktemp("certs")
    make_dev_certs(certs, [1], clients=["alice"])
    security = SecurityConfig(tls_cert=certs / "node-1.pem", tls_key=certs / "node-1-key.pem",
                              tls_ca=certs / "ca.pem", tls_client_auth=ClientAuth.REQUIRED,
                              authentication=Authentication.SCRAM, authorization=True)
    config = NodeConfig(node_id=1, listen="127.0.0.1:1", advertise="127.0.0.1:1",
                        peers={1: "127.0.0.1:1"}, data_dir=certs, security=security)
    metadata = _Metadata()
    metadata.state.users["bob"] = scram.derive_credential("bob-password", b"s" * 16, 4096)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=client_interceptors(config, metadata))
        add_security_service(server, config, metadata)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(
            TlsFiles.from_config(security), require_client_auth=True))
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield f"127.0.0.1:{port}", certs, metadata
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def whoami(address: str, security: ClientSecurity, metadata: Any = None) -> str:
    channel = make_channel(address, [], security)
    try:
        stub = security_pb2_grpc.SecurityStub(channel)
        return stub.WhoAmI(spb.WhoAmIRequest(), timeout=10, metadata=metadata).principal
    finally:
        channel.close()


def _alice(certs: Path, **login: str) -> ClientSecurity:
    return ClientSecurity(tls_ca=certs / "ca.pem", tls_cert=certs / "client-alice.pem",
                          tls_key=certs / "client-alice-key.pem", **login)


def test_a_client_certificate_alone_authenticates(node: tuple[str, Path, _Metadata]) -> None:
    address, certs, _ = node
    assert whoami(address, _alice(certs)) == "Cert:CN=alice"


def test_a_scram_login_over_mtls_names_the_user(node: tuple[str, Path, _Metadata]) -> None:
    address, certs, _ = node
    assert whoami(address, _alice(certs, username="bob", password="bob-password")) == "User:bob"


def test_an_invalid_token_is_refused_despite_a_valid_certificate(
        node: tuple[str, Path, _Metadata]) -> None:
    address, certs, _ = node
    with pytest.raises(grpc.RpcError) as refused:
        whoami(address, _alice(certs), metadata=(("authorization", "Bearer forged-token"),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown or expired" in refused.value.details()
