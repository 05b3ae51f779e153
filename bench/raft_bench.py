"""Raft benchmark: metadata ops/s through the client library with 3 masters against 1, and the
failover time over repeated `kill -9` of the leader.

    PYTHONPATH=daemons python bench/raft_bench.py [--seconds 3] [--rounds 3] [--threads 16[,32...]]
                                                  [--kills 20] [--json FILE]

Both clusters (1 and 3 masters) are LocalClusters on free ports (one chunkserver, no FUSE
client), up at the same time. Each phase runs `--threads` threads, each with its own
MasterClient, for `--seconds`: create (mknod of new names), stat (lookup of those names), rename
(of those files, back and forth). Phases alternate between the clusters, `--rounds` times per op,
and the median counts: the machine is shared, and alternating spreads other load over both.
Several thread counts (`--threads 4,16,32`) run one after the other, each in its own directory.
The headline is 16 threads: "batching keeps three masters within 80% of one" presumes
concurrent clients (a batch holds at most as many entries as there are callers waiting), and
16 is where the ratio stops climbing with concurrency here (BENCHMARKS.md).
CPU per op (user + system time from /proc) is given for all masters together and for the
busiest one, the leader: a follower's share is the difference, halved.
Failover: the leader is killed with SIGKILL; the time is from the
kill until a write through a fresh MasterClient (all endpoints) is acknowledged; the killed
master is restarted and the cluster waits until it has caught up before the next kill.
"""

from __future__ import annotations

import argparse
import json
import os
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


class OpsRunner:
    """Runs timed phases of one op kind against one cluster; keeps the files it made."""

    def __init__(self, endpoints: list[str], threads: int, pids: list[int]):
        self.endpoints = endpoints
        self.pids = pids  # the masters': their CPU time per op is measured too
        self.threads = threads
        setup = MasterClient(endpoints, timeout_s=30)
        self.base = setup.call("mkdir", {"parent": 1, "name": b"bench-%d" % time.monotonic_ns(), "mode": 0o755})["ino"]
        setup.close()
        self.made: list[list[bytes]] = [[] for _ in range(threads)]  # current names, per thread
        self.created = [0] * threads

    def rate(self, phase: str, seconds: float) -> tuple[float, float, float]:
        """(ops/s, master CPU seconds per op of all masters together, of the busiest one: the
        leader) of `phase` (create, stat, rename) over `seconds` with all threads."""
        counts = [0] * self.threads

        def work(n: int) -> None:
            client = MasterClient(self.endpoints, timeout_s=30)
            names = self.made[n]
            end = time.monotonic() + seconds
            i = 0
            try:
                while time.monotonic() < end:
                    if phase == "create":
                        name = b"f%d-%d" % (n, self.created[n])
                        self.created[n] += 1
                        client.call("mknod", {"parent": self.base, "name": name, "mode": S_IFREG | 0o644})
                        names.append(name)
                    elif phase == "stat":
                        client.call("lookup", {"parent": self.base, "name": names[i % len(names)]})
                    else:
                        k = i % len(names)
                        new = names[k][:-2] if names[k].endswith(b".r") else names[k] + b".r"
                        client.call("rename", {"parent": self.base, "name": names[k], "newparent": self.base,
                                               "newname": new})  # fmt: skip
                        names[k] = new
                    i += 1
            finally:
                client.close()
            counts[n] = i

        cpu = [cpu_seconds([pid]) for pid in self.pids]
        started = time.monotonic()
        workers = [threading.Thread(target=work, args=(n,)) for n in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        ops = sum(counts)
        used = [cpu_seconds([pid]) - before for pid, before in zip(self.pids, cpu)]
        return ops / (time.monotonic() - started), sum(used) / max(ops, 1), max(used) / max(ops, 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far (from /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def compare(runners: dict[int, OpsRunner], seconds: float, rounds: int) -> dict[int, dict[str, list[float]]]:
    """Median [ops/s, CPU s per op of all masters, of the busiest] per cluster size and op; the
    sizes alternate within each round, so that the load other processes put on the machine weighs
    on both alike."""
    rates: dict[int, dict[str, list]] = {m: {} for m in runners}
    for phase in ("create", "stat", "rename"):
        for _ in range(rounds):
            for masters, runner in runners.items():
                rates[masters].setdefault(phase, []).append(runner.rate(phase, seconds))
    return {
        m: {op: [statistics.median(x) for x in zip(*v)] for op, v in ops.items()}
        for m, ops in rates.items()
    }


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
    parser.add_argument("--seconds", type=float, default=3.0, help="per phase (op kind, cluster size, round)")
    parser.add_argument("--rounds", type=int, default=3, help="phases per op kind and cluster size (median)")
    parser.add_argument("--threads", default="16", help="client threads; a comma list runs each in turn")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    opts = parser.parse_args(argv)
    try:
        threads = [int(t) for t in opts.threads.split(",")]
        if min(threads) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--threads: expected positive counts separated by commas, got {opts.threads!r}")
    result: dict = {"seconds": opts.seconds, "rounds": opts.rounds, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as tmp:
        clusters = {m: LocalCluster(Path(tmp) / f"m{m}", masters=m, chunkservers=1, clients=0, port_base=AUTO_PORTS)
                    for m in (1, 3)}  # fmt: skip
        try:
            for cluster in clusters.values():
                cluster.start()
                cluster.leader()
            for n in threads:
                runners = {
                    m: OpsRunner(c.master_endpoints, n, [node.pid for node in c.nodes if node.kind == "master"])
                    for m, c in clusters.items()
                }
                rates = compare(runners, opts.seconds, opts.rounds)
                result["runs"][n] = {"ops_1": rates[1], "ops_3": rates[3]}
            clusters[1].stop()
            if opts.kills:
                result["failover_s"] = failovers(clusters[3], opts.kills)
        finally:
            for cluster in clusters.values():
                cluster.stop()
    print("| op | threads | 1 master (ops/s) | 3 masters (ops/s) | 3 / 1 | CPU per op, 1 master | all 3 masters | leader |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for op in ("create", "stat", "rename"):
        for n, run in result["runs"].items():
            (one, cpu1, _), (three, cpu3, lead3) = run["ops_1"][op], run["ops_3"][op]
            print(f"| {op} | {n} | {one:,.0f} | {three:,.0f} | {three / one:.0%} | {cpu1 * 1e6:,.0f} us "
                  f"| {cpu3 * 1e6:,.0f} us | {lead3 * 1e6:,.0f} us |")  # fmt: skip
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
