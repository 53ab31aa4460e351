"""Queues (issue 12): share-group delivery over topics, with per-message settlement, retries with
server-side backoff, dead letters and key order. This package is the sans-I/O core
(config, model, backoff, deltas, core, state_log) plus the coordinator shell around it."""
