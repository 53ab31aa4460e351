"""Tidelog's Python client. The batch codec (`tidelog.client.batch`) is shared with the node."""
