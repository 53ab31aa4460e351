"""The node's metric registry, with the process's own series (CPU, RSS, open files, GC)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

NAMESPACE = "tidelog"

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace=NAMESPACE, registry=REGISTRY)  # tidelog_process_cpu_seconds_total, ...
PlatformCollector(registry=REGISTRY)  # python_info
GCCollector(registry=REGISTRY)  # python_gc_*
