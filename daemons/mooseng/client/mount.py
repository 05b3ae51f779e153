"""mooseng-mount [-c FILE] [--foreground] [MOUNTPOINT]: mount MooseNG with FUSE and serve it.

It always runs in the foreground (a launcher backgrounds it and keeps the pid). Exit codes: 0 after
an unmount or SIGTERM/SIGINT (buffered data written, file system unmounted), 1 when it cannot
mount or could not write buffered data at the end, 2 for a configuration error.
"""

import argparse
import ctypes
import errno
import logging
import os
import socket
import stat
import sys

import llfuse

from mooseng import daemon
from mooseng.client import metrics
from mooseng.client.fs import Client
from mooseng.client.fuse import Operations
from mooseng.errors import FsError, QuietError

log = logging.getLogger("mooseng.client")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)
WORKERS = 16  # FUSE request threads: concurrent writers and parallel kernel read-ahead
MAX_WRITE = 128 * 1024  # the kernel's limit without FUSE_MAX_PAGES, which libfuse 2.9 lacks
FUSE_OPTIONS = (
    "fsname=mooseng",
    "subtype=mooseng",
    "default_permissions",
    "allow_other",
    "big_writes",
    f"max_write={MAX_WRITE}",
    f"max_read={MAX_WRITE}",
    f"max_readahead={MAX_WRITE}",
    "async_read",
)


def node_name(mountpoint: str) -> str:
    """The client's node id in log lines: the host tells apart clients in containers or on hosts
    that all mount at /mnt/mooseng, the mount point several mounts on one host."""
    return f"client@{socket.gethostname()}:{mountpoint}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooseng-mount", description="Mount MooseNG with FUSE")
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML file with a [client] table")
    parser.add_argument("--foreground", action="store_true", help="accepted for compatibility: it always is")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"FUSE worker threads (default {WORKERS})")
    parser.add_argument("mountpoint", nargs="?", help="default: mount_point from the configuration")
    opts = parser.parse_args(argv)

    def mountpoint(cfg) -> str:
        return os.path.abspath(opts.mountpoint or cfg.mount_point)

    return daemon.run("client", opts.config, lambda cfg: node_name(mountpoint(cfg)),
                      lambda cfg: run(cfg, mountpoint(cfg), max(1, opts.workers)))


def _keep_freed_memory() -> None:
    """Make glibc reuse freed memory instead of returning it to the kernel.

    Every data message the client receives or sends, and every buffer a FUSE request brings, is a
    large allocation; by default glibc maps each one fresh and unmaps it when freed, so every
    4 KiB of data costs a page fault (a quarter of the client's CPU when reading). With a fixed,
    high mmap threshold and no trimming, the heap keeps those pages; it stays as big as its peak,
    which the cache budget bounds.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: keep the defaults
        log.debug("mallopt is not available")


def _preflight(mountpoint: str) -> None:
    if not os.path.exists("/dev/fuse"):
        raise QuietError("/dev/fuse is missing: load the fuse module (or give the container --device /dev/fuse)")
    try:
        mode = os.stat(mountpoint).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise QuietError(f"mount point {mountpoint} is a dead FUSE mount: run fusermount -u {mountpoint}") from None
        raise QuietError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise QuietError(f"mount point {mountpoint} is not a directory")


def run(cfg, mountpoint: str, workers: int) -> int:
    """Mount and serve until unmounted or signalled; then write buffers and unmount."""
    _preflight(mountpoint)
    _keep_freed_memory()
    try:
        http = metrics.serve(cfg.metrics_listen)
    except OSError as exc:
        raise QuietError(f"cannot serve metrics on {cfg.metrics_listen}: {exc.strerror}") from None
    # The kernel checks permissions itself (default_permissions).
    client = Client.from_config(cfg, check_access=False)
    try:
        try:
            client.statfs()
        except FsError as exc:
            raise QuietError(f"master {','.join(cfg.master_endpoints)} does not answer: {exc.message}") from None
        ops = Operations(client, cfg.attr_timeout_s, cfg.entry_timeout_s)
        options = set(FUSE_OPTIONS)
        try:
            llfuse.init(ops, mountpoint, options)
        except RuntimeError as exc:
            raise QuietError(f"cannot mount on {mountpoint}: {exc} (see the kernel log)") from None
        log.info("mounted on %s (masters %s, %d workers, metrics on %s)",
                 mountpoint, ",".join(cfg.master_endpoints), workers, cfg.metrics_listen)
        return _serve(client, workers)
    finally:
        client.close()
        http.shutdown()


def _serve(client: Client, workers: int) -> int:
    exitcode = 0
    unmount = True
    try:
        signum = llfuse.main(workers=workers)
        if signum is None:
            log.info("unmounted")
            unmount = False
        else:
            log.info("signal %d: writing buffered data, then unmounting", signum)
    except Exception:
        log.exception("FUSE main loop failed")
        exitcode = 1
    try:
        if client.files.flush_all():
            exitcode = 1
    except Exception:
        log.exception("writing buffered data failed")
        exitcode = 1
    llfuse.close(unmount=unmount)
    return exitcode


if __name__ == "__main__":
    sys.exit(main())
