"""mooseng-chunkserver [-c FILE]: serve chunks on the configured data dirs and report to the master."""

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from mooseng import config, logsetup, metrics, wire
from mooseng.chunkserver.masterlink import MasterLink
from mooseng.chunkserver.metrics import ChunkserverMetrics
from mooseng.chunkserver.service import ChunkServerService, add_to_server
from mooseng.chunkserver.store import ChunkStore
from mooseng.errors import ConfigError, QuietError

log = logging.getLogger("mooseng.chunkserver")

WORKERS = 32  # concurrent RPCs: each stream holds a worker for its whole life
STOP_GRACE_S = 5.0


def run(cfg) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully. Ports are taken before the (possibly
    long) scan of the data dirs, so a clash fails at once."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    server = grpc.server(ThreadPoolExecutor(WORKERS, thread_name_prefix="rpc"), options=wire.GRPC_OPTIONS)
    _bind(server, cfg.listen)
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
    service = ChunkServerService(store, advertise, ChunkserverMetrics(store))
    add_to_server(service, server)
    server.start()
    link = MasterLink(
        store,
        cluster_id=cfg.cluster_id,
        server_id=cfg.server_id,
        address=advertise,
        master_addrs=cfg.master_addrs,
        interval_s=cfg.heartbeat_interval_s,
    )
    link.start()
    log.info("serving on %s (advertised as %s), metrics on %s", cfg.listen, advertise, cfg.metrics_listen)
    stop.wait()
    log.info("stopping")
    link.stop()
    server.stop(STOP_GRACE_S).wait()
    service.close()
    store.close()
    http.shutdown()
    log.info("stopped")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooseng-chunkserver", description="MooseNG chunkserver")
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML file with a [chunkserver] table")
    args = parser.parse_args(argv)
    try:
        cfg = config.load("chunkserver", args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logsetup.setup(f"chunkserver-{cfg.server_id}", cfg.log_level)
    try:
        run(cfg)
    except QuietError as exc:
        log.error("%s", exc)
        return exc.exitcode
    return 0


if __name__ == "__main__":
    sys.exit(main())
