"""CPU cost of Prometheus scraping a daemon's /metrics every second (master and chunkserver).

Starts a LocalCluster (1 master, 3 chunkservers, 1 idle FUSE client) on free ports. For each
namespace size of --chunks (the master keeps its chunk-state counts up to date as chunks change,
so a scrape should cost the same at any size: this checks it) it allocates chunks up to that
count, then alternates idle and scraping phases of --seconds each and compares the CPU time the daemons used (utime + stime from /proc) in each.
The cost is the difference, as a share of one core; the script exits 1 if it is 2% or more for
either daemon at any size.

    PYTHONPATH=daemons .venv/bin/python bench/metrics_cost.py [--chunks 0,2000,20000] [--seconds 15]
                                                             [--rounds 2] [--out BENCHMARKS.md]

With --out, the section between <!-- bench:metrics:start --> and <!-- bench:metrics:end --> of
that file is rewritten (appended if missing); the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mooseng.client.masterclient import MasterClient
from mooseng.localcluster import AUTO_PORTS, LocalCluster

START, END = "<!-- bench:metrics:start -->", "<!-- bench:metrics:end -->"
LIMIT = 0.02  # of one core
TICKS = os.sysconf("SC_CLK_TCK")
CHUNKS_PER_FILE = 1000


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def fill(master: list[str], have: int, want: int) -> None:
    """Allocate chunks `have`..`want` on the master (write_chunk, no data), `CHUNKS_PER_FILE` per file."""
    client = MasterClient(master, timeout_s=30)
    try:
        for n in range(have, want):
            f, index = divmod(n, CHUNKS_PER_FILE)
            if index == 0:
                ino = client.call("mknod", {"parent": 1, "name": f"f{f}".encode(), "mode": 0o100644, "rdev": 0})["ino"]
            client.call("write_chunk", {"ino": ino, "index": index})
    finally:
        client.close()


def phase(pids: dict[str, int], urls: dict[str, str], seconds: float) -> tuple[dict[str, float], int, dict[str, int]]:
    """CPU share per daemon over `seconds`, scraping every url once a second if any are given;
    returns (CPU share per daemon, scrape rounds done, bytes of each daemon's last scrape)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.monotonic()
    scrapes = 0
    sizes: dict[str, int] = {}
    tick = start
    while time.monotonic() - start < seconds:
        if urls and time.monotonic() >= tick:
            for name, url in urls.items():
                with urllib.request.urlopen(url, timeout=5) as reply:
                    sizes[name] = len(reply.read())
            scrapes += 1
            tick += 1.0
        time.sleep(min(0.05, max(0.0, start + seconds - time.monotonic())))
    elapsed = time.monotonic() - start
    return {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}, scrapes, sizes


def render(results: list[dict], args, command: str, started: str, load: tuple[float, float]) -> str:
    rows = [
        f"| {r['daemon']} | {r['chunks']:,} | {r['bytes']:,} | {r['idle'] * 100:.2f}% | {r['scraped'] * 100:.2f}% "
        f"| **{r['cost'] * 100:.2f}%** | {r['per_scrape_ms']:.1f} ms | {'yes' if r['cost'] < LIMIT else 'NO'} |"
        for r in results
    ]
    return "\n".join([
        START,
        "## Metrics endpoint cost: scraping /metrics every second",
        "",
        "Measured by `bench/metrics_cost.py` (this section is rewritten by `--out`): 1 master, 3 chunkservers "
        f"with 4 disks each; per namespace size (chunks allocated on the master), {args.rounds} rounds of "
        f"{args.seconds:g} s idle then {args.seconds:g} s with the master's and chunkserver-1's /metrics scraped "
        "once a second; CPU = utime + stime of the daemon's process from /proc, as a share of one core. "
        "Target: under 2%.",
        "",
        "| daemon | chunks on the master | bytes per scrape | CPU idle | CPU scraped every 1 s | cost of the scrapes "
        "| CPU per scrape | under 2% |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"- Command: `{command}`",
        f"- Date: {started}; machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"1-min load average {load[0]:.2f} at start, {load[1]:.2f} at end (shared machine)",
        END,
    ]) + "\n"  # fmt: skip


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# MooseNG benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", default="0,2000,20000", help="namespace sizes to measure, comma-separated")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="rewrite the metrics section of this markdown file")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.chunks.split(","))
    command = "PYTHONPATH=daemons .venv/bin/python bench/metrics_cost.py " + " ".join(argv or sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="mooseng-metrics-cost-") as root:
        cluster = LocalCluster(Path(root), masters=1, chunkservers=3, clients=1, port_base=AUTO_PORTS)
        cluster.start()
        try:
            nodes = {"master": cluster.node("master-1"), "chunkserver": cluster.node("chunkserver-1")}
            pids = {name: node.pid for name, node in nodes.items()}
            urls = {name: f"http://{node.addr('metrics')}/metrics" for name, node in nodes.items()}
            have = 0
            for size in sizes:
                t = time.monotonic()
                fill(cluster.master_endpoints, have, size)
                have = size
                print(f"{size} chunks allocated ({time.monotonic() - t:.1f} s)", file=sys.stderr)
                results += measure(pids, urls, size, args.rounds, args.seconds)
        finally:
            cluster.stop()
    section = render(results, args, command, started, (load_start, os.getloadavg()[0]))
    print(section)
    if args.out:
        write_section(args.out, section)
    return 0 if all(r["cost"] < LIMIT for r in results) else 1


def measure(pids: dict[str, int], urls: dict[str, str], chunks: int, rounds: int, seconds: float) -> list[dict]:
    idle = dict.fromkeys(pids, 0.0)
    scraped = dict.fromkeys(pids, 0.0)
    scrapes = 0
    sizes: dict[str, int] = {}
    for r in range(rounds):
        idle_cpu, _, _ = phase(pids, {}, seconds)
        scraped_cpu, done, sizes = phase(pids, urls, seconds)
        scrapes += done
        for n in pids:
            idle[n] += idle_cpu[n] / rounds
            scraped[n] += scraped_cpu[n] / rounds
        shares = {n: f"{idle_cpu[n]:.2%} -> {scraped_cpu[n]:.2%}" for n in pids}
        print(f"  round {r + 1}: CPU idle -> scraped {shares}", file=sys.stderr)
    per_second = scrapes / (rounds * seconds)
    return [
        {"daemon": n, "chunks": chunks, "bytes": sizes[n], "idle": idle[n], "scraped": scraped[n],
         "cost": scraped[n] - idle[n], "per_scrape_ms": max(0.0, scraped[n] - idle[n]) / per_second * 1000}
        for n in pids
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
