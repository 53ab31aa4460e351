"""LazyFS: a FUSE file system that keeps unsynced writes in memory and loses them on a power cut.

Jepsen's LazyFS idea (its fault model, not its code), for the chaos harness's power-loss faults.
`pages.py` (unsynced file data), `journal.py` (unsynced directory entries), `fs.py` (the FUSE
operations, mfusepy over libfuse 3), `control.py` (the control socket), `mount.py` (the harness
side), `__main__.py` (the process). See docs/chaos.md, "Power loss".

Importing this package does not load libfuse; `fs.py` does.
"""

from tidelog.chaos.lazyfs.control import ControlError
from tidelog.chaos.lazyfs.mount import LazyFSError, LazyMount, lazyfs_unavailable_reason

__all__ = ["ControlError", "LazyFSError", "LazyMount", "lazyfs_unavailable_reason"]
