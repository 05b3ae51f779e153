"""CPU cost of Prometheus scraping a daemon's /metrics every second (master and chunkserver).

Starts a LocalCluster (1 master, 3 chunkservers, 1 idle FUSE client) on free ports, gives the master a
namespace of --chunks chunks (the master's gauges walk the whole chunk table at every scrape, so
the cost grows with it), then alternates idle and scraping phases of --seconds each and compares
the CPU time the daemons used (utime + stime from /proc) in each. The cost is the difference, as
a share of one core; the script exits 1 if it is 2% or more for either daemon.

    PYTHONPATH=daemons .venv/bin/python bench/metrics_cost.py [--chunks 20000] [--seconds 20]
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


def fill(master: list[str], chunks: int) -> None:
    """Files whose chunks are allocated on the master (write_chunk), `CHUNKS_PER_FILE` each."""
    client = MasterClient(master, timeout_s=30)
    try:
        for f in range((chunks + CHUNKS_PER_FILE - 1) // CHUNKS_PER_FILE):
            ino = client.call("mknod", {"parent": 1, "name": f"f{f}".encode(), "mode": 0o100644, "rdev": 0})["ino"]
            for index in range(min(CHUNKS_PER_FILE, chunks - f * CHUNKS_PER_FILE)):
                client.call("write_chunk", {"ino": ino, "index": index})
    finally:
        client.close()


def phase(pids: dict[str, int], urls: list[str], seconds: float) -> tuple[dict[str, float], int, int]:
    """CPU seconds per daemon over `seconds`, scraping each url once a second if urls are given;
    returns (cpu per daemon, scrapes done, bytes of the last master scrape)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.monotonic()
    scrapes = size = 0
    tick = start
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        if urls and now >= tick:
            for i, url in enumerate(urls):
                with urllib.request.urlopen(url, timeout=5) as reply:
                    body = reply.read()
                if i == 0:
                    size = len(body)
            scrapes += 1
            tick += 1.0
        time.sleep(min(0.05, max(0.0, start + seconds - time.monotonic())))
    elapsed = time.monotonic() - start
    return {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}, scrapes, size


def render(results: dict, args, command: str, started: str, load: tuple[float, float]) -> str:
    rows = []
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['idle'] * 100:.2f}% | {r['scraped'] * 100:.2f}% | **{r['cost'] * 100:.2f}%** "
            f"| {r['per_scrape_ms']:.1f} ms | {'yes' if r['cost'] < LIMIT else 'NO'} |"
        )
    size = results["master"]["bytes"]
    return "\n".join([
        START,
        "## Metrics endpoint cost: scraping /metrics every second",
        "",
        f"Measured by `bench/metrics_cost.py` (this section is rewritten by `--out`). Master with {args.chunks:,} "
        f"chunks in its namespace ({size:,} bytes per scrape), 3 chunkservers with 4 disks each; "
        f"{args.rounds} rounds of {args.seconds:g} s idle then {args.seconds:g} s scraped once a second; CPU = utime + "
        "stime of the daemon's process from /proc, as a share of one core. Target: under 2%.",
        "",
        "| daemon | CPU idle | CPU scraped every 1 s | cost of the scrapes | CPU per scrape | under 2% |",
        "|---|---:|---:|---:|---:|---|",
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
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="rewrite the metrics section of this markdown file")
    args = parser.parse_args(argv)
    command = "PYTHONPATH=daemons .venv/bin/python bench/metrics_cost.py " + " ".join(argv or sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mooseng-metrics-cost-") as root:
        cluster = LocalCluster(Path(root), masters=1, chunkservers=3, clients=1, port_base=AUTO_PORTS)
        cluster.start()
        try:
            t = time.monotonic()
            fill(cluster.master_endpoints, args.chunks)
            print(f"allocated {args.chunks} chunks in {time.monotonic() - t:.1f} s", file=sys.stderr)
            nodes = {"master": cluster.node("master-1"), "chunkserver": cluster.node("chunkserver-1")}
            pids = {name: node.pid for name, node in nodes.items()}
            urls = [f"http://{node.addr('metrics')}/metrics" for node in nodes.values()]
            idle = {n: 0.0 for n in pids}
            scraped = {n: 0.0 for n in pids}
            scrapes = size = 0
            for r in range(args.rounds):
                idle_cpu, _, _ = phase(pids, [], args.seconds)
                scraped_cpu, done, size = phase(pids, urls, args.seconds)
                scrapes += done
                for n in pids:
                    idle[n] += idle_cpu[n] / args.rounds
                    scraped[n] += scraped_cpu[n] / args.rounds
                shares = {n: f"{idle_cpu[n]:.2%} -> {scraped_cpu[n]:.2%}" for n in pids}
                print(f"round {r + 1}: CPU idle -> scraped {shares}", file=sys.stderr)
        finally:
            cluster.stop()
    per_second = scrapes / (args.rounds * args.seconds)
    results = {
        n: {"idle": idle[n], "scraped": scraped[n], "cost": scraped[n] - idle[n],
            "per_scrape_ms": max(0.0, scraped[n] - idle[n]) / per_second * 1000, "bytes": size}
        for n in pids
    }  # fmt: skip
    section = render(results, args, command, started, (load_start, os.getloadavg()[0]))
    print(section)
    if args.out:
        write_section(args.out, section)
    return 0 if all(r["cost"] < LIMIT for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
