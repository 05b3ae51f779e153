"""Metadata and small-file rates through a FUSE mount, with each daemon kind's CPU time per op.

    sudo PYTHONPATH=daemons python bench/meta_cpu.py [--masters 1] [--files 2000] [--rounds 1]

Starts a LocalCluster (1 or 3 masters, 3 chunkservers, 1 client) from the `mooseng` package on
PYTHONPATH, then from one thread: create, stat (after the kernel's 1 s entry timeout), rename,
unlink of --files files, mkdir of half as many directories, write and cold read of half as many
4 KiB files. Per phase: ops/s, and the CPU time (user + system, from /proc) of the masters, the
client and the chunkservers divided by the ops, plus each master's own (the leader's stands out).

Why: on a shared 2-core machine a rate moves with the neighbours' load, the CPU a daemon spends
per op much less. To compare two trees, run this alternately with PYTHONPATH pointing at each
(a copy of the old `daemons/` works) and compare medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mooseng.localcluster import AUTO_PORTS, LocalCluster

PHASES = ("create", "stat", "rename", "unlink", "mkdir", "small_write", "small_read")
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_by_node(cluster: LocalCluster) -> dict[str, float]:
    return {n.name: cpu_seconds(n.pid) for n in cluster.nodes if n.pid}


def one_round(cluster: LocalCluster, files: int, base: Path) -> dict[str, dict]:
    """Every phase once under `base` (a fresh directory of the mount)."""
    meta, dirs, small = base / "meta", base / "dirs", base / "small"
    for d in (meta, dirs, small):
        d.mkdir()
    names = [os.fspath(meta / f"f{i:05d}") for i in range(files)]
    smalls = [os.fspath(small / f"s{i:05d}") for i in range(files // 2)]
    payload = random.Random(1).randbytes(4096)

    def create(path):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    def small_write(path):
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)

    def small_read(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.read(fd, 8192) != payload:
                raise RuntimeError(f"{path}: read back other bytes than written")
        finally:
            os.close(fd)

    plan = {
        "create": (create, names),
        "stat": (os.stat, names),
        "rename": (lambda p: os.rename(p, p + ".r"), names),
        "unlink": (os.unlink, [p + ".r" for p in names]),
        "mkdir": (os.mkdir, [os.fspath(dirs / f"d{i:05d}") for i in range(files // 2)]),
        "small_write": (small_write, smalls),
        "small_read": (small_read, smalls),
    }
    out = {}
    for phase in PHASES:
        op, items = plan[phase]
        if phase == "stat":
            time.sleep(1.2)  # past the kernel's entry timeout: every stat is a lookup
        if phase == "small_read":
            os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
        before = cpu_by_node(cluster)
        start = time.monotonic()
        for item in items:
            op(item)
        elapsed = time.monotonic() - start
        after = cpu_by_node(cluster)
        per_op = {name: (after[name] - before[name]) / len(items) * 1e6 for name in before}
        kinds = {}
        for name, us in per_op.items():
            kind = name.rsplit("-", 1)[0]
            kinds[kind] = kinds.get(kind, 0.0) + us
        out[phase] = {"ops_per_s": len(items) / elapsed, "cpu_us": kinds,
                      "masters_us": [per_op[n] for n in sorted(per_op) if n.startswith("master-")]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masters", type=int, choices=(1, 3), default=1)
    ap.add_argument("--files", type=int, default=2000, help="files per metadata phase (half for the others)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per cluster; medians are shown")
    ap.add_argument("--json", type=Path, help="also write every round's figures here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (FUSE mount, drop_caches)")
    if args.files < 2:
        ap.error("--files must be at least 2")
    root = Path(tempfile.mkdtemp(prefix="mooseng-metacpu-"))
    cluster = LocalCluster(root=root / "cluster", masters=args.masters, chunkservers=3, clients=1, port_base=AUTO_PORTS)
    rounds = []
    try:
        cluster.start()
        if args.masters > 1:
            cluster.leader()
        mount = Path(cluster.mountpoint(1))
        for n in range(args.rounds):
            base = mount / f"round{n}"
            base.mkdir()
            rounds.append(one_round(cluster, args.files, base))
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.masters} master(s), {args.files} files, {args.rounds} round(s), "
          f"1-min load average {os.getloadavg()[0]:.1f}; CPU in us per op")
    print(f"{'phase':12} {'ops/s':>8} {'masters':>8} {'client':>8} {'chunksrv':>8}  each master")
    for phase in PHASES:
        med = lambda f: statistics.median(f(r[phase]) for r in rounds)  # noqa: E731
        each = [statistics.median(r[phase]["masters_us"][i] for r in rounds) for i in range(args.masters)]
        print(f"{phase:12} {med(lambda p: p['ops_per_s']):8,.0f} {med(lambda p: p['cpu_us']['master']):8,.0f} "
              f"{med(lambda p: p['cpu_us']['client']):8,.0f} {med(lambda p: p['cpu_us']['chunkserver']):8,.0f}  "
              + " / ".join(f"{v:,.0f}" for v in each))
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
