"""`tidelog chaos run --secure`: the cluster under test with TLS, SCRAM and ACLs on (issue 13).

Theory of operation. A secure run must judge the same cluster users run securely, so the harness
turns on everything at once and then talks to the nodes only the way a secure client can:

- **Certificates**: `tidelog certs dev`'s module (node/security/certs.py) makes a CA, one node
  certificate per node and two client certificates in `<run dir>/cluster/certs`, once the
  backend knows the addresses the nodes will listen on (the local backend's namespace IPs are
  picked at start), so every node certificate names every address peers and clients dial.
- **Nodes**: TLS on both listeners (`--tls-cert/--tls-key/--tls-ca`; the peer listener is
  always mutual), `--tls-client-auth required`, `--authentication scram`, `--authorization`,
  `--super-users User:<user>,Cert:CN=<admin client>`.
- **The first user**: the loopback path (`Admin.create_user` with no login) cannot serve: in
  network namespaces the harness is not on a node's host. So, as docs/security.md advises, a
  super-user client certificate (`Cert:CN=chaos-admin`) creates the SCRAM user, once, before the
  workload; then the harness waits until every node knows it (`whoami` on each node).
- **Every other call** — producers, consumers, group members, queue consumers, the Admin calls,
  the leader observer, the final reads, the DLQ read — runs as `ClientSecurity(tls_ca,
  tls_cert=client-chaos, username, password)`. The certificate `Cert:CN=chaos` has no ACL and is
  no super user: a call whose SCRAM token went missing would be refused (PERMISSION_DENIED), not
  passed through on the certificate, so the run shows that the login is really in use.

The password is random per run and never written to the report.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidelog.client.security import ClientSecurity

__all__ = ["ADMIN_CLIENT", "USER", "WORKLOAD_CLIENT", "ChaosSecurity"]

USER = "chaos"  # the SCRAM user every workload client logs in as (a super user)
ADMIN_CLIENT = "chaos-admin"  # client certificate that creates the user (Cert:CN=chaos-admin)
WORKLOAD_CLIENT = "chaos"  # client certificate every workload client presents (no rights)
USER_READY_S_MAX = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosSecurity:
    """What a secure run needs: where its certificates live, and who the harness is."""

    directory: Path
    node_count: int
    username: str = USER
    admin_client: str = ADMIN_CLIENT
    workload_client: str = WORKLOAD_CLIENT
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)

    @property
    def super_users(self) -> str:
        return f"User:{self.username},Cert:CN={self.admin_client}"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def make_certs(self, hosts: Sequence[str]) -> None:
        """The CA, every node's certificate (naming `hosts` as well as localhost and
        127.0.0.1) and the two client certificates."""
        from tidelog.node.security.certs import make_dev_certs

        make_dev_certs(self.directory, range(1, self.node_count + 1),
                       hosts=list(dict.fromkeys(hosts)),
                       clients=[self.admin_client, self.workload_client])

    def node_args(self, node_id: int) -> tuple[str, ...]:
        """The security flags of `tidelog node` for node `node_id`."""
        return ("--tls-cert", str(self.directory / f"node-{node_id}.pem"),
                "--tls-key", str(self.directory / f"node-{node_id}-key.pem"),
                "--tls-ca", str(self.ca), "--tls-client-auth", "required",
                "--authentication", "scram", "--authorization",
                "--super-users", self.super_users)

    def admin_security(self) -> ClientSecurity:
        """The super-user certificate alone (no login): only to create the user."""
        from tidelog.client.security import ClientSecurity

        return ClientSecurity(tls_ca=self.ca,
                              tls_cert=self.directory / f"client-{self.admin_client}.pem",
                              tls_key=self.directory / f"client-{self.admin_client}-key.pem")

    def client_security(self) -> ClientSecurity:
        """What every workload client, observer and reader of the run uses."""
        from tidelog.client.security import ClientSecurity

        return ClientSecurity(tls_ca=self.ca,
                              tls_cert=self.directory / f"client-{self.workload_client}.pem",
                              tls_key=self.directory / f"client-{self.workload_client}-key.pem",
                              username=self.username, password=self.password)

    def create_user(self, addresses: Sequence[str], *,
                    timeout_s: float = USER_READY_S_MAX) -> None:
        """Create the SCRAM user through the admin certificate, then wait until a login as it
        works on every node (the credential replicates through the metadata group). Raises
        TimeoutError naming the node and the last error."""
        from tidelog.client import Admin, errors

        deadline = time.monotonic() + timeout_s
        created = False
        last = ""
        while not created and time.monotonic() < deadline:
            try:
                with Admin(list(addresses), request_timeout_ms=10_000,
                           security=self.admin_security()) as admin:
                    if self.username not in {u.name for u in admin.list_users()}:
                        admin.create_user(self.username, self.password)
                created = True
            except errors.TidelogError as exc:  # a node still starting, no metadata leader yet
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
        if not created:
            raise TimeoutError(f"could not create user {self.username!r} within "
                               f"{timeout_s:.0f} s: {last}")
        want = f"User:{self.username}"
        for address in addresses:
            while True:
                try:
                    with Admin([address], request_timeout_ms=5_000,
                               security=self.client_security()) as admin:
                        if (seen := admin.whoami()) == want:
                            break
                        last = f"whoami answered {seen}"
                except errors.TidelogError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{address} did not accept a login as {self.username!r} "
                                       f"within {timeout_s:.0f} s: {last}")
                time.sleep(0.3)

    def probe(self, address: str, topic: str) -> tuple[bool, str]:
        """The harness check `security`: is the node really secured? A plaintext Metadata call
        must fail, and a Produce to `topic` with the workload certificate but no login must be
        refused PERMISSION_DENIED (the certificate has no ACL: the workload's calls can only
        pass with the SCRAM login). Returns (passed, detail)."""
        import grpc
        from tidelog.client.security import ClientSecurity, make_channel
        from tidelog.proto import broker_pb2 as pb
        from tidelog.proto import broker_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            try:
                broker_pb2_grpc.BrokerStub(channel).Metadata(pb.MetadataRequest(), timeout=5)
                return False, f"{address} answered a plaintext Metadata call"
            except grpc.RpcError as exc:
                plaintext = exc.code().name
        cert_only = ClientSecurity(
            tls_ca=self.ca, tls_cert=self.directory / f"client-{self.workload_client}.pem",
            tls_key=self.directory / f"client-{self.workload_client}-key.pem")
        with make_channel(address, (), cert_only) as channel:
            try:
                broker_pb2_grpc.BrokerStub(channel).Produce(
                    pb.ProduceRequest(topic=topic, partition=0, acks=pb.ACKS_ALL), timeout=10)
                return False, (f"{address} took a Produce from Cert:CN={self.workload_client} "
                               "without a login")
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                    return False, (f"a Produce without a login got {exc.code().name}, not "
                                   f"PERMISSION_DENIED: {exc.details()}")
        return True, (f"{address}: a plaintext call failed ({plaintext}); a Produce with "
                      f"certificate CN={self.workload_client} and no login was refused "
                      "(PERMISSION_DENIED); logins as "
                      f"{self.username} worked on every node")

    def describe(self) -> str:
        """One line for the report."""
        return (f"TLS on both listeners (peers mutual; clients verify the nodes and present "
                f"certificates: --tls-client-auth required), --authentication scram, "
                f"--authorization, --super-users {self.super_users}; every client logs in as "
                f"User:{self.username} over TLS with certificate CN={self.workload_client} "
                f"(no ACL); certificates in {self.directory}")

    def as_json(self) -> dict[str, object]:
        return {"tls": True, "tls_client_auth": "required", "authentication": "scram",
                "authorization": True, "super_users": self.super_users,
                "user": self.username, "client_certificate": f"CN={self.workload_client}",
                "certs": str(self.directory)}
