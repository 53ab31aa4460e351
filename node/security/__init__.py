"""Security of a node: TLS on both listeners, authentication (SCRAM-SHA-256, mTLS subjects),
authorization (ACLs), quotas and encryption at rest. See docs/security.md.

The client listener's checks run as gRPC server interceptors (`interceptors.py`), outside the
servicers, so no Broker or Queues method can forget one.
"""
