"""`python -m tidelog.chaos.lazyfs BACKING MOUNTPOINT --control SOCKET`: one LazyFS, foreground.

Mounts BACKING at MOUNTPOINT (libfuse 3, multi-threaded) and serves the control socket. SIGTERM
or SIGINT unmounts cleanly (libfuse's own handlers); the harness also runs `fusermount3 -u` in a
`finally`. See docs/chaos.md, "Power loss".
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tidelog.chaos.lazyfs",
                                     description="A FUSE passthrough that loses unsynced writes "
                                                 "on a power cut (see docs/chaos.md).")
    parser.add_argument("backing", type=Path, help="directory holding the durable state")
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--control", type=Path, required=True, metavar="SOCKET",
                        help="unix socket for ping/stats/sync/cut (outside the mount)")
    parser.add_argument("--pending-mib-max", type=int, default=512,
                        help="unsynced data kept in memory before write-back (default "
                             "%(default)s)")
    parser.add_argument("--threads", choices=["multi", "single"], default="multi",
                        help="libfuse's loop: a thread per concurrent request, or one thread "
                             "(default %(default)s)")
    parser.add_argument("--debug", action="store_true", help="libfuse debug output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lazyfs %(levelname)s %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    import mfusepy
    from tidelog.chaos.lazyfs.control import serve
    from tidelog.chaos.lazyfs.fs import LazyOperations

    args.backing.mkdir(parents=True, exist_ok=True)
    ops = LazyOperations(str(args.backing), pending_bytes_max=args.pending_mib_max << 20)
    server = serve(args.control, ops)
    logging.info("mounting %s at %s (control %s)", args.backing, args.mountpoint, args.control)
    try:
        mfusepy.FUSE(ops, str(args.mountpoint), foreground=True, debug=args.debug,
                     fsname="lazyfs", subtype="lazyfs", nothreads=args.threads == "single")
    except RuntimeError as exc:
        # libfuse's loop ends with an error code when a signal (SIGTERM) stopped it; that is
        # our normal stop. Anything that leaves the mount in place is a failure.
        if args.mountpoint.is_mount():
            raise
        logging.info("stopped (%s)", exc)
    finally:
        server.shutdown()
        server.server_close()
        args.control.unlink(missing_ok=True)
    logging.info("unmounted %s: %s", args.mountpoint, ops.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
