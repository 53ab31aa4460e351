"""The standard gRPC health service (grpc.health.v1) on every node, and a client-side check."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tidelog.node.security.channels import ChannelTls, blocking_channel


def check_health(address: str, timeout_s: float = 2.0, service: str = "",
                 security: ChannelTls | None = None) -> bool:
    """True when the node at address answers SERVING within timeout_s (over TLS when
    `security` has a CA: a TLS node never answers a plaintext check)."""
    try:
        with blocking_channel(address, security) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
