"""Consumer groups on the node: the sans-I/O group state machine (`state`), the pure assignors
(`assignors`), the record format of `__consumer_offsets` (`offsets_log`) and the thin asyncio
shell that hosts them inside the Node (`coordinator`). See docs/consumer-groups.md.

`state`, `assignors` and `offsets_log` import no asyncio, grpc, time, os or random (the tidy test
in tests/groups checks it): time comes in as `now_ms`, member ids come from the clients.
"""
