"""Generated protobuf/gRPC code for package tidelog.v1 (see regenerate.py; never edit by hand)."""
