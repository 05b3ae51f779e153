"""mooseng-master: load the configuration, recover the metadata, serve gRPC and metrics until a signal.

Exit codes: 0 after SIGTERM/SIGINT, 1 when the master cannot start (address in use, data dir
unusable) or its metadata store fails while running, 2 for a configuration error.
"""

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from concurrent import futures

import grpc

from mooseng import config, logsetup, metrics, wire
from mooseng.errors import ConfigError, QuietError
from mooseng.master.metastore import MetaStore, MetaStoreError
from mooseng.master.metrics import MasterMetrics
from mooseng.master.registry import Registry
from mooseng.master.service import MasterService
from mooseng.proto import mooseng_pb2_grpc as pb_grpc

log = logging.getLogger("mooseng.master")

GRPC_WORKERS = 32
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

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="grpc"), options=wire.GRPC_OPTIONS
    )
    _bind(server, cfg.listen)
    try:
        metrics_server = metrics.serve(cfg.metrics_listen)
    except OSError as exc:
        raise QuietError(f"cannot serve metrics on {cfg.metrics_listen}: {exc.strerror}") from None

    store = MetaStore(cfg.data_dir, cfg.snapshot_every)
    try:
        store.open()
    except (MetaStoreError, OSError) as exc:
        metrics_server.shutdown()
        raise QuietError(f"cannot open metadata in {cfg.data_dir}: {exc}") from None

    # Sessions start from the wall clock so that sessions from an earlier run are never reused.
    registry = Registry(cfg.cluster_id, cfg.chunkserver_timeout_s, first_session=time.time_ns())
    master_metrics = MasterMetrics()
    service = MasterService(store, registry, master_metrics, cfg.node_id)
    master_metrics.watch(service.gauges)
    pb_grpc.add_MasterServicer_to_server(service, server)
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
    server.stop(STOP_GRACE_S).wait()
    service.stop()
    store.close()
    metrics_server.shutdown()
    log.info("stopped")
    return exitcode


def _bind(server: grpc.Server, addr: str) -> None:
    """Bind the gRPC port, failing with one line that names the address.

    A plain socket tries first because gRPC, on failure, also prints its own multi-part error.
    """
    host, port = wire.parse_addr(addr)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    except OSError as exc:
        raise QuietError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    try:
        bound = server.add_insecure_port(addr)
    except RuntimeError:
        bound = 0
    if not bound:
        raise QuietError(f"cannot listen on {addr}")


if __name__ == "__main__":
    sys.exit(main())
