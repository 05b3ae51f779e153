"""mooseng-master: load the configuration, recover the metadata, serve rpc and metrics until a signal.

Exit codes: 0 after SIGTERM/SIGINT, 1 when the master cannot start (address in use, data dir
unusable) or its metadata log fails while running, 2 for a configuration error.
"""

import argparse
import functools
import logging
import signal
import sys
import threading
import time

from mooseng import daemon, metrics, rpc, wire
from mooseng.errors import QuietError
from mooseng.master import healer, raftnode
from mooseng.master.healing import Limits
from mooseng.master.metastore import MetaStore
from mooseng.master.raftlog import StorageError
from mooseng.master.metrics import MasterMetrics
from mooseng.master.registry import Registry
from mooseng.master.service import MasterService

log = logging.getLogger("mooseng.master")

STOP_GRACE_S = 5.0
SWITCH_INTERVAL_S = 0.0005


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mooseng-master", description="MooseNG metadata master")
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML file with a [master] table")
    opts = parser.parse_args(argv)
    return daemon.run("master", opts.config, lambda cfg: cfg.node_id, serve)


def serve(cfg) -> int:
    """Run the master until SIGTERM/SIGINT (returns 0) or a metadata store failure (returns 1)."""
    # A write passes through about eight threads (rpc, Ready loop, raft senders, on the leader and
    # a follower); with the default 5 ms GIL switch interval each hand-off can wait that long.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())

    try:
        peers = raftnode.parse_peers(cfg.raft_peers) or {cfg.node_id: cfg.raft_listen}
    except ValueError as exc:
        raise QuietError(f"config error: raft_peers = {cfg.raft_peers!r}: {exc}", 2) from None
    if cfg.node_id not in peers:
        raise QuietError(f"config error: node_id = {cfg.node_id!r}: not in raft_peers ({', '.join(peers)})", 2)
    node = raftnode.RaftNode(cfg.node_id, cfg.cluster_id, peers, _advertise(cfg, peers), cfg.data_dir,
                             cfg.snapshot_every, join=cfg.raft_join)  # fmt: skip
    store = MetaStore(node)
    # Sessions start from the wall clock so that sessions from an earlier run are never reused.
    registry = Registry(cfg.cluster_id, cfg.chunkserver_timeout_s, first_session=time.time_ns())
    master_metrics = MasterMetrics()
    service = MasterService(store, registry, master_metrics, cfg.node_id, raft_status=node.status,
                            raft_admin=functools.partial(_admin, node), healing=healing_settings(cfg),
                            session_timeout_s=cfg.client_session_timeout_s, lease_s=cfg.write_lease_s)  # fmt: skip
    # Bound before the (possibly long) recovery so that a clash fails at once; requests wait in
    # the listen backlog until server.start().
    try:
        server = rpc.Server(cfg.listen, service.handlers(), name="master")
    except OSError as exc:
        raise QuietError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
    try:
        transport = raftnode.RaftTransport(node, cfg.raft_listen)
    except OSError as exc:
        server.stop(0)
        raise QuietError(f"cannot listen for raft on {cfg.raft_listen}: {exc.strerror or exc}") from None
    try:
        metrics_server = metrics.serve(cfg.metrics_listen)
    except OSError as exc:
        raise QuietError(f"cannot serve metrics on {cfg.metrics_listen}: {exc.strerror}") from None
    try:
        node.open()
    except (StorageError, OSError, ValueError) as exc:
        metrics_server.shutdown()
        raise QuietError(f"cannot open metadata in {cfg.data_dir}: {exc}") from None

    master_metrics.watch(service.gauges)
    transport.start()
    node.start(transport)
    server.start()
    service.start()
    log.info(
        "master %s of cluster %s serving on %s, raft on %s with %s, metrics on %s, metadata at index %d",
        cfg.node_id, cfg.cluster_id, cfg.listen, cfg.raft_listen, ",".join(sorted(peers)), cfg.metrics_listen,
        node.applied,
    )  # fmt: skip

    exitcode = 0
    while not stop.wait(0.5):
        if node.failure is not None:
            log.critical("metadata log failed (%s): stopping", node.failure)
            exitcode = 1
            break
    log.info("stopping")
    server.stop(STOP_GRACE_S)
    service.stop()
    transport.stop()
    node.stop()
    metrics_server.shutdown()
    log.info("stopped")
    return exitcode


def _advertise(cfg, peers: dict[str, str]) -> str:
    """The client address other masters redirect to: `advertise`, else `listen` unless that is a
    wildcard, then the host this node has in raft_peers with the listen port."""
    if cfg.advertise:
        try:
            wire.parse_addr(cfg.advertise)
        except ValueError as exc:
            raise QuietError(f"config error: advertise = {cfg.advertise!r}: {exc}", 2) from None
        return cfg.advertise
    host, port = wire.parse_addr(cfg.listen, allow_any_port=True)
    if host in ("0.0.0.0", "::", ""):
        host = wire.parse_addr(peers[cfg.node_id])[0]
    return f"{host}:{port}"


def _admin(node: raftnode.RaftNode, action: str, name: str, address: str) -> None:
    """`mooseng master add|remove|transfer-leader` arrive here (on the leader)."""
    if action == "add":
        if not address:
            raise ValueError("add needs the new master's raft address (NAME=HOST:PORT)")
        node.add_member(name, address)
    elif action == "remove":
        node.remove_member(name)
    else:
        node.transfer_leadership(name)


def healing_settings(cfg) -> healer.Settings:
    """The replication manager's settings; it starts planning one heartbeat timeout after this
    master becomes the leader, when every live chunkserver has registered with it."""
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
