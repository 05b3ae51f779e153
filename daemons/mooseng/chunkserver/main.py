"""mooseng-chunkserver [-c FILE]: serve chunks on the configured data dirs and report to the master."""

import argparse
import logging
import os
import signal
import sys
import threading

from mooseng import daemon, metrics, rpc
from mooseng.chunkserver.builder import Builder
from mooseng.chunkserver.masterlink import MasterLink
from mooseng.chunkserver.metrics import ChunkserverMetrics
from mooseng.chunkserver.replicator import Replicator
from mooseng.chunkserver.scrubber import Scrubber
from mooseng.chunkserver.service import ChunkServerService
from mooseng.chunkserver.store import ChunkStore
from mooseng.errors import QuietError

log = logging.getLogger("mooseng.chunkserver")

STOP_GRACE_S = 5.0


def run(cfg) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully. Ports are taken before the (possibly
    long) scan of the data dirs, so a clash fails at once."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    handlers: dict[str, rpc.Handler] = {}  # filled once the store exists; nothing is served before start()
    try:
        server = rpc.Server(cfg.listen, handlers, name="chunkserver")
    except OSError as exc:
        raise QuietError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
    try:
        http = metrics.serve(cfg.metrics_listen)
    except OSError as exc:
        raise QuietError(f"cannot serve metrics on {cfg.metrics_listen}: {exc.strerror}") from None
    for path in cfg.data_dirs:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            log.error("cannot create data dir %s: %s (it will be reported damaged)", path, exc.strerror)
    store = ChunkStore(cfg.data_dirs, cfg.leave_free_mb << 20)
    advertise = cfg.advertise or cfg.listen
    replicator = Replicator(store, cfg.replication_workers, cfg.replication_mb_s * 1e6)
    builder = Builder(store, cfg.replication_workers, replicator.pacer)
    scrubber = Scrubber(store, cfg.scrub_mb_s * 1e6) if cfg.scrub_mb_s > 0 else None
    service = ChunkServerService(store, advertise, ChunkserverMetrics(store, scrubber), replicator=replicator,
                                 builder=builder)
    handlers.update(service.handlers())
    server.start()
    link = MasterLink(
        store,
        cluster_id=cfg.cluster_id,
        server_id=cfg.server_id,
        address=advertise,
        master_addrs=cfg.master_addrs,
        interval_s=cfg.heartbeat_interval_s,
        replicator=replicator,
        builder=builder,
    )
    replicator.on_done = builder.on_done = link.wake
    link.start()
    if scrubber is not None:
        scrubber.start()
    log.info("serving on %s (advertised as %s), metrics on %s", cfg.listen, advertise, cfg.metrics_listen)
    stop.wait()
    log.info("stopping")
    if scrubber is not None:
        scrubber.stop()
    link.stop()
    builder.close()
    replicator.close()
    server.stop(STOP_GRACE_S)
    service.close()
    store.close()
    http.shutdown()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooseng-chunkserver", description="MooseNG chunkserver")
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML file with a [chunkserver] table")
    args = parser.parse_args(argv)
    return daemon.run("chunkserver", args.config, lambda cfg: f"chunkserver-{cfg.server_id}", run)


if __name__ == "__main__":
    sys.exit(main())
