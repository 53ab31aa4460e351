"""Prometheus metrics of a node (docs/metrics.md is the catalogue).

- `registry.REGISTRY`: the node's own registry (never prometheus_client's global one, so a client
  imported in the same process never mixes its series in). One process runs one node.
- Hot-path instruments (counters, histograms) are module-level objects in the module of the part
  they measure (`produce.py`, `raft.py`, `storage.py`, ...), registered on REGISTRY at import.
- State read at scrape time (offsets, leaders, lag) comes from collectors that run on the event
  loop (`on_loop.OnLoopCollector`): a consistent view, and no cost between scrapes.
- `exporter.MetricsExporter`: the HTTP endpoint (GET /metrics) in a thread, started by the Node.
"""
