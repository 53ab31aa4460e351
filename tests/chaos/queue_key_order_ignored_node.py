"""A deliberately broken node, for proving the key-ordered queue chaos check can fail (tests
only, never shipped).

Runs the real `tidelog.node.main` after one monkeypatch: the queue core keeps no per-key order
for any partition (`_Part` is built as if the queue were not key-ordered), so a key-ordered
queue hands out a key's records to several consumers at once and before their predecessors are
done. The queue checker must report `queue-locks` (key overlaps) and `queue-key-order`.

Started by tests/chaos/test_queue_chaos.py as
`python -m tests.chaos.queue_key_order_ignored_node ARGS...` with the repository root on
PYTHONPATH; the shipped node has no switch for this.
"""

from __future__ import annotations

import sys
from typing import Any

from tidelog.node.queues import core

_original_init = core._Part.__init__


def _init_without_key_order(self: Any, tp: Any, start: int, key_ordered: bool) -> None:
    _original_init(self, tp, start, False)


core._Part.__init__ = _init_without_key_order  # type: ignore[method-assign]

if __name__ == "__main__":
    from tidelog.node.main import main

    sys.exit(main())
