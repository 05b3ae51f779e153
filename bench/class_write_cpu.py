"""Sequential writes through a FUSE mount in a `default` (2 copies) and an `archive` (EC 8+4)
directory, alternately, with each daemon's CPU time per GiB written.

    sudo PYTHONPATH=daemons python bench/class_write_cpu.py [--size-mb 1024] [--rounds 2]

Starts a LocalCluster (1 master, 3 chunkservers, 1 client) from the `mooseng` package on
PYTHONPATH, then per round one fio write of --size-mb (bs=1M, end_fsync, as bench/run.py's
`classes` workload) in each class, the order alternating, the file removed after each. Per write:
MB/s (fio's io_bytes over its runtime, the fsync included) and the CPU time (user + system, from
/proc) of the client, the chunkservers together and the master, per GiB of file data.

Why: on a shared 2-core machine MB/s moves with the neighbours' load; the client's CPU per GiB
much less. To compare two trees, run this alternately with PYTHONPATH pointing at each (a copy
of the old `daemons/` and its compiled extensions works) and compare medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meta_cpu import cpu_by_node
from mooseng.localcluster import AUTO_PORTS, LocalCluster

CLASSES = ("default", "archive")


def write_once(path: Path, size_mib: int) -> float:
    """fio's sequential write of one file; MB/s as bench/workloads.py computes it."""
    out = subprocess.run(["fio", "--name=write", "--output-format=json", "--ioengine=psync", "--fallocate=none",
                          f"--filename={path}", "--rw=write", "--bs=1M", f"--size={size_mib}M", "--end_fsync=1"],
                         check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]["write"]
    return job["io_bytes"] / (job["runtime"] / 1000) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="MiB per file")
    ap.add_argument("--rounds", type=int, default=2, help="writes per class (medians)")
    args = ap.parse_args(argv)
    rows: dict[str, list[dict[str, float]]] = {c: [] for c in CLASSES}
    with tempfile.TemporaryDirectory(prefix="mooseng-classcpu-") as root:
        cluster = LocalCluster(root=Path(root) / "cluster", masters=1, chunkservers=3, clients=1, port_base=AUTO_PORTS)
        cluster.start()
        try:
            mnt = Path(cluster.mountpoint(1))
            for sclass in CLASSES:
                (mnt / sclass).mkdir()
                subprocess.run([sys.executable, "-m", "mooseng.cli.main", "--master", ",".join(cluster.master_endpoints),
                                "setclass", sclass, str(mnt / sclass)], check=True, stdout=subprocess.DEVNULL)
            gib = args.size_mb / 1024
            for r in range(args.rounds):
                for sclass in CLASSES[:: 1 if r % 2 == 0 else -1]:
                    before = cpu_by_node(cluster)
                    mbps = write_once(mnt / sclass / "file", args.size_mb)
                    after = cpu_by_node(cluster)
                    spent = {name: (after[name] - before[name]) / gib for name in after}
                    row = {"MB/s": mbps, "client": spent["client-1"], "master": spent["master-1"],
                           "chunkservers": sum(v for n, v in spent.items() if n.startswith("chunkserver"))}
                    rows[sclass].append(row)
                    print(f"round {r} {sclass:8s} load {os.getloadavg()[0]:5.1f}  "
                          + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
                    (mnt / sclass / "file").unlink()
                    time.sleep(1)
        finally:
            cluster.stop()
    print(f"\nmedians of {args.rounds}, {args.size_mb} MiB per write (CPU in s per GiB written):")
    for sclass, got in rows.items():
        print(f"  {sclass:8s} " + "  ".join(f"{k} {statistics.median(r[k] for r in got):.2f}" for k in got[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
