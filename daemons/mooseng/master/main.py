"""mooseng-master: load the configuration, recover the metadata, serve rpc and metrics until a signal.

Exit codes: 0 after SIGTERM/SIGINT, 1 when the master cannot start (address in use, data dir
unusable) or its metadata store fails while running, 2 for a configuration error.
"""

import argparse
import logging
import signal
import sys
import threading
import time

from mooseng import config, logsetup, metrics, rpc
from mooseng.errors import ConfigError, QuietError
from mooseng.master import healer
from mooseng.master.healing import Limits
from mooseng.master.metastore import MetaStore, MetaStoreError
from mooseng.master.metrics import MasterMetrics
from mooseng.master.registry import Registry
from mooseng.master.service import MasterService

log = logging.getLogger("mooseng.master")

STOP_GRACE_S = 5.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mooseng-master", description="MooseNG metadata master")
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML file with a [master] table")
    opts = parser.parse_args(argv)
    try:
        cfg = config.load("master", opts.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logsetup.setup(cfg.node_id, cfg.log_level)
    try:
        return serve(cfg)
    except QuietError as exc:
        log.error("%s", exc)
        return exc.exitcode


def serve(cfg) -> int:
    """Run the master until SIGTERM/SIGINT (returns 0) or a metadata store failure (returns 1)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())

    store = MetaStore(cfg.data_dir, cfg.snapshot_every)
    # Sessions start from the wall clock so that sessions from an earlier run are never reused.
    registry = Registry(cfg.cluster_id, cfg.chunkserver_timeout_s, first_session=time.time_ns())
    master_metrics = MasterMetrics()
    service = MasterService(store, registry, master_metrics, cfg.node_id, healing=healing_settings(cfg))
    # Bound before the (possibly long) recovery so that a clash fails at once; requests wait in
    # the listen backlog until server.start().
    try:
        server = rpc.Server(cfg.listen, service.handlers(), name="master")
    except OSError as exc:
        raise QuietError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
    try:
        metrics_server = metrics.serve(cfg.metrics_listen)
    except OSError as exc:
        raise QuietError(f"cannot serve metrics on {cfg.metrics_listen}: {exc.strerror}") from None
    try:
        store.open()
    except (MetaStoreError, OSError) as exc:
        metrics_server.shutdown()
        raise QuietError(f"cannot open metadata in {cfg.data_dir}: {exc}") from None

    master_metrics.watch(service.gauges)
    server.start()
    service.start()
    log.info(
        "master %s of cluster %s serving on %s, metrics on %s, metadata at index %d",
        cfg.node_id, cfg.cluster_id, cfg.listen, cfg.metrics_listen, store.last_index,
    )  # fmt: skip

    exitcode = 0
    while not stop.wait(0.5):
        if store.failure is not None:
            log.critical("metadata store failed (%s): stopping", store.failure)
            exitcode = 1
            break
    log.info("stopping")
    server.stop(STOP_GRACE_S)
    service.stop()
    store.close()
    metrics_server.shutdown()
    log.info("stopped")
    return exitcode


def healing_settings(cfg) -> healer.Settings:
    """The replication manager's settings; it starts planning one heartbeat timeout after the
    master starts, when every live chunkserver has registered again."""
    return healer.Settings(
        interval_s=cfg.healing_interval_s,
        timeout_s=cfg.replication_timeout_s,
        start_delay_s=cfg.chunkserver_timeout_s,
        limits=Limits(
            per_server=cfg.replication_max_per_server,
            rebalance_per_server=cfg.rebalance_max_per_server,
            rebalance_threshold=cfg.rebalance_threshold_pct / 100,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
