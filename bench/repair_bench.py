"""Repair after losing a chunkserver: time to full health, repair rate in MB/s and chunks/s.

    python bench/repair_bench.py [--gib 1] [--file-mib 64] [--timeout 2] [--rate-mb-s 1000]
                                 [--per-server 32] [--workers 4] [--root DIR] [--json]

Starts a local cluster (1 master, 3 chunkservers, goal 2, no FUSE client) on free loopback ports,
writes --gib GiB of random data in files of --file-mib MiB through the client library, then
`kill -9`s the chunkserver holding the most chunks and keeps it down. Reported:
- detection: kill to the master marking it down (the heartbeat timeout, --timeout s);
- full health: kill to every chunk back at goal (the master's status), and the repair window
  (down to full health);
- repair rate: bytes and chunks the chunkservers copied (the master's replication counters) per
  second of the repair window;
and checks every file byte for byte afterwards. MB is 10^6 bytes. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemons"))

from mooseng.client.fs import Client  # noqa: E402
from mooseng.client.masterclient import MasterClient  # noqa: E402
from mooseng.localcluster import AUTO_PORTS, LocalCluster  # noqa: E402

MiB = 1 << 20


def wait(what: str, check, timeout: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"repair_bench: timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def run(args, root: Path) -> dict:
    env = {
        "MOOSENG_CHUNKSERVER_TIMEOUT_S": str(args.timeout),
        "MOOSENG_HEARTBEAT_INTERVAL_S": "0.3",
        "MOOSENG_HEALING_INTERVAL_S": "0.3",
        "MOOSENG_LEAVE_FREE_MB": "0",
        "MOOSENG_REPLICATION_MB_S": str(args.rate_mb_s),
        "MOOSENG_REPLICATION_MAX_PER_SERVER": str(args.per_server),
        "MOOSENG_REPLICATION_WORKERS": str(args.workers),
        "MOOSENG_SCRUB_MB_S": "0",
    }
    cluster = LocalCluster(root, masters=1, chunkservers=3, clients=0, port_base=AUTO_PORTS, env_extra=env)
    cluster.start()
    client = Client(cluster.master_endpoints, timeout_s=60)
    master = MasterClient(cluster.master_endpoints, timeout_s=10)
    try:
        files = {}
        size = args.file_mib * MiB
        count = max(1, args.gib * 1024 // args.file_mib)
        started = time.monotonic()
        for i in range(count):
            data = os.urandom(size)
            client.write_file(f"/r{i:04d}", data)
            files[f"/r{i:04d}"] = hashlib.sha256(data).digest()
        write_s = time.monotonic() - started

        def status():
            return master.call("status")

        def at_goal() -> bool:
            s = status()
            states = s["chunks"]["by_class"].get("default", {})
            return states.get("stable") == s["chunks"]["total"] and sum(states.values()) == states["stable"]

        wait("every chunk at goal after writing", at_goal, 120)
        servers = status()["chunkservers"]
        victim = max(servers, key=lambda s: s["chunks"])
        node = next(n for n in cluster.nodes if n.kind == "chunkserver" and n.addr("api") == victim["address"])
        lost_chunks, lost_bytes = victim["chunks"], victim["used_bytes"]
        before = status()["chunks"]["replication"]
        killed = time.monotonic()
        os.kill(node.pid, signal.SIGKILL)
        down = wait("the master to mark it down", lambda: any(
            s["server_id"] == victim["server_id"] and s["state"] == "down" for s in status()["chunkservers"]), 60)
        healthy = wait("every chunk back at goal", at_goal, 600, 0.1)
        after = status()["chunks"]["replication"]
        window = healthy - down
        copied_bytes = after["bytes"] - before["bytes"]
        copied_chunks = after["chunks"] - before["chunks"]
        for path, digest in files.items():
            if hashlib.sha256(client.read_file(path)).digest() != digest:
                raise SystemExit(f"repair_bench: {path} differs after the repair")
        return {
            "data_gib": count * size / (1 << 30),
            "files": count,
            "chunks": status()["chunks"]["total"],
            "write_s": round(write_s, 2),
            "lost_chunks": lost_chunks,
            "lost_bytes": lost_bytes,
            "detect_s": round(down - killed, 2),
            "full_health_s": round(healthy - killed, 2),
            "repair_window_s": round(window, 2),
            "copied_chunks": copied_chunks,
            "copied_mb": round(copied_bytes / 1e6, 1),
            "repair_mb_s": round(copied_bytes / 1e6 / window, 1),
            "repair_chunks_s": round(copied_chunks / window, 1),
            "failures": after["failures"] - before["failures"],
            "settings": {"timeout_s": args.timeout, "replication_mb_s": args.rate_mb_s,
                         "per_server": args.per_server, "workers": args.workers},
        }
    finally:
        client.close()
        master.close()
        cluster.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=int, default=1, help="data written before the kill (GiB, goal 2)")
    parser.add_argument("--file-mib", type=int, default=64, help="file size (MiB); 64 = one chunk each")
    parser.add_argument("--timeout", type=float, default=2.0, help="the master's chunkserver_timeout_s")
    parser.add_argument("--rate-mb-s", type=float, default=1000.0, help="each chunkserver's replication_mb_s")
    parser.add_argument("--per-server", type=int, default=32, help="the master's replication_max_per_server")
    parser.add_argument("--workers", type=int, default=4, help="each chunkserver's replication_workers")
    parser.add_argument("--root", type=Path, help="cluster directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.root:
        result = run(args, args.root)
    else:
        with tempfile.TemporaryDirectory(prefix="repair-bench-") as tmp:
            result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['data_gib']:.2f} GiB in {result['chunks']} chunks (goal 2, 3 chunkservers); "
              f"killed one holding {result['lost_chunks']} chunks ({result['lost_bytes'] / 2**30:.2f} GiB)")
        print(f"down after {result['detect_s']} s; every chunk at goal {result['full_health_s']} s after kill -9 "
              f"(repair window {result['repair_window_s']} s)")
        print(f"repair: {result['copied_chunks']} chunks, {result['copied_mb']} MB: {result['repair_mb_s']} MB/s, "
              f"{result['repair_chunks_s']} chunks/s; {result['failures']} failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
