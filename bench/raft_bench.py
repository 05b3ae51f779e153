"""Raft benchmark: metadata ops/s through the client library with 3 masters against 1, and the
failover time over repeated `kill -9` of the leader.

    PYTHONPATH=daemons python bench/raft_bench.py [--seconds 5] [--threads 4] [--kills 20] [--json FILE]

Each cluster is a LocalCluster on free ports (one chunkserver, no FUSE client). The ops phase
runs `--threads` threads, each with its own MasterClient, for `--seconds` per op kind: create
(mknod of new names), stat (lookup + getattr... here `getattr` of a created inode), rename (of
its own files to new names). Failover: the leader is killed with SIGKILL; the time is from the
kill until a write through a fresh MasterClient (all endpoints) is acknowledged; the killed
master is restarted and the cluster waits until it has caught up before the next kill.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from stat import S_IFREG

from mooseng import rpc
from mooseng.client.masterclient import MasterClient
from mooseng.localcluster import AUTO_PORTS, LocalCluster


def run_ops(endpoints: list[str], threads: int, seconds: float) -> dict[str, float]:
    """ops/s of create, stat and rename with `threads` concurrent clients."""
    setup = MasterClient(endpoints, timeout_s=30)
    base = setup.call("mkdir", {"parent": 1, "name": b"bench-%d" % time.monotonic_ns(), "mode": 0o755})["ino"]
    setup.close()
    made: list[list[tuple[bytes, int]]] = [[] for _ in range(threads)]
    rates = {}
    for phase in ("create", "stat", "rename"):
        counts = [0] * threads

        def work(n: int) -> None:
            client = MasterClient(endpoints, timeout_s=30)
            end = time.monotonic() + seconds
            i = 0
            try:
                while time.monotonic() < end:
                    if phase == "create":
                        name = b"f%d-%d" % (n, i)
                        ino = client.call("mknod", {"parent": base, "name": name, "mode": S_IFREG | 0o644})["ino"]
                        made[n].append((name, ino))
                    elif phase == "stat":
                        name, ino = made[n][i % len(made[n])]
                        client.call("lookup", {"parent": base, "name": name})
                    else:
                        if i >= len(made[n]):
                            break
                        name, ino = made[n][i]
                        client.call("rename", {"parent": base, "name": name, "newparent": base, "newname": name + b".r"})
                    i += 1
            finally:
                client.close()
            counts[n] = i

        started = time.monotonic()
        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates[phase] = sum(counts) / (time.monotonic() - started)
    return rates


def raft_status(addr: str) -> dict | None:
    client = rpc.Client(addr, timeout_s=1, connect_timeout_s=1)
    try:
        return client.call("raft_status", {})[0]
    except rpc.RpcError:
        return None
    finally:
        client.close()


def wait_caught_up(cluster: LocalCluster, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [raft_status(n.addr("api")) for n in cluster.nodes if n.kind == "master"]
        if all(rows) and min(r["applied"] for r in rows) >= max(r["commit"] for r in rows):
            return
        time.sleep(0.1)
    raise RuntimeError("masters did not catch up")


def failovers(cluster: LocalCluster, kills: int) -> list[float]:
    times = []
    for _ in range(kills):
        old = cluster.leader()
        killed = time.monotonic()
        cluster.kill(old)
        client = MasterClient(cluster.master_endpoints, timeout_s=30)
        try:
            client.call("mknod", {"parent": 1, "name": b"probe-%d" % time.monotonic_ns(), "mode": S_IFREG | 0o644})
        finally:
            client.close()
        times.append(time.monotonic() - killed)
        cluster.restart(old)
        wait_caught_up(cluster)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per op kind and cluster size")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    opts = parser.parse_args(argv)
    result: dict = {"threads": opts.threads, "seconds": opts.seconds}
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as tmp:
        for masters in (1, 3):
            cluster = LocalCluster(Path(tmp) / f"m{masters}", masters=masters, chunkservers=1, clients=0,
                                   port_base=AUTO_PORTS)  # fmt: skip
            try:
                cluster.start()
                cluster.leader()
                result[f"ops_{masters}"] = run_ops(cluster.master_endpoints, opts.threads, opts.seconds)
                if masters == 3 and opts.kills:
                    result["failover_s"] = failovers(cluster, opts.kills)
            finally:
                cluster.stop()
    print("| op | 1 master (ops/s) | 3 masters (ops/s) | 3 / 1 |")
    print("|---|---|---|---|")
    for op in ("create", "stat", "rename"):
        one, three = result["ops_1"][op], result["ops_3"][op]
        print(f"| {op} | {one:.0f} | {three:.0f} | {three / one:.0%} |")
    if result.get("failover_s"):
        t = sorted(result["failover_s"])
        p90 = t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
        print()
        print(f"failover over {len(t)} leader kills (s): min {t[0]:.2f}, median {statistics.median(t):.2f}, "
              f"p90 {p90:.2f}, max {t[-1]:.2f}")  # fmt: skip
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
