"""Core benchmark: the same workloads on a local directory, MooseFS CE and MooseNG.

    python bench/run.py [--targets local,moosefs,mooseng] [--size-mb 1024] [--out BENCHMARKS.md]

Needs root (drop_caches, network namespaces, FUSE mounts) and fio. Writes the table between the
bench:core markers of BENCHMARKS.md and the raw results to bench/results/core.json.
A target or workload that fails is reported as "failed: <reason>"; the run goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import errno
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.common import BenchError, log, run  # noqa: E402
from bench.targets import TARGETS, MooseNGTarget, Target  # noqa: E402
from bench.workloads import WORKLOADS, Params, metrics_table  # noqa: E402

RESULTS = REPO / "bench" / "results" / "core.json"
VENV = REPO / ".venv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="local,moosefs,mooseng",
                    help="comma-separated, from: " + ", ".join(TARGETS))
    ap.add_argument("--size-mb", type=int, default=1024,
                    help="sequential file size in MiB (parallel writers write a quarter each)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="Markdown file to update")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the whole suite per target; each metric is the median")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temporary work directory")
    ap.add_argument("--workloads", default=",".join(name for name, _ in WORKLOADS),
                    help="comma-separated subset to run, from: " + ", ".join(name for name, _ in WORKLOADS)
                    + " (rows of the others read 'not run')")
    ap.add_argument("--mooseng-port-base", type=int, default=0,
                    help="LocalCluster port_base (default 0: a free block on 127.0.0.1)")
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown or not args.targets:
        ap.error(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workloads if w not in dict(WORKLOADS)]
    if unknown or not args.workloads:
        ap.error(f"unknown workload(s) {unknown}; choose from {', '.join(name for name, _ in WORKLOADS)}")
    if args.size_mb < 4:
        ap.error("--size-mb must be at least 4")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return args


def reexec_in_venv() -> None:
    """MooseNG runs in-process from the project's venv; switch to it if we are not in it."""
    python = VENV / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != VENV.resolve() \
            and not os.environ.get("MOOSENG_BENCH_REEXEC"):
        os.environ["MOOSENG_BENCH_REEXEC"] = "1"
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def describe_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno:
        where = f" on {e.filename}" if e.filename else ""
        return f"{errno.errorcode.get(e.errno, e.errno)} ({e.strerror}){where}"
    return str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"


def run_target(target: Target, params: Params, repeat: int, workloads: list[str]) -> dict:
    """setup; every selected workload `repeat` times (a failure is recorded, the next one runs); teardown.

    Each metric is the median of its samples (a failed round gives none).
    """
    res = {"error": None, "description": "", "metrics": {}, "samples": {}, "errors": {}, "notes": [],
           "not_applicable": [], "seconds": 0.0}
    start = time.monotonic()
    log(f"{target.name}: setting up")
    try:
        try:
            target.setup()
        except Exception as e:
            res["error"] = f"setup: {describe_error(e)}"
            log(f"{target.name}: {res['error']}")
            return res
        res["description"] = target.description
        for rnd in range(1, repeat + 1):
            work = target.mountpoint / f"bench{rnd}"
            work.mkdir()
            for name, workload in WORKLOADS:
                if name not in workloads:
                    continue
                if getattr(workload, "needs_target", False) and not target.storage_classes:
                    if name not in res["not_applicable"]:
                        res["not_applicable"].append(name)
                    continue
                t0 = time.monotonic()
                try:
                    if getattr(workload, "needs_target", False):
                        out = workload(work, params, target.make_cold, target=target)
                    else:
                        out = workload(work, params, target.make_cold)
                except Exception as e:
                    res["errors"].setdefault(name, describe_error(e))
                    log(f"{target.name}: {name} failed after {time.monotonic() - t0:.1f} s: {describe_error(e)}")
                    continue
                for key, value in out.metrics.items():
                    res["samples"].setdefault(key, []).append(value)
                res["notes"] += [f"{name}: {n}" for n in out.notes]
                shown = ", ".join(f"{k} {v:,.0f}" for k, v in out.metrics.items())
                log(f"{target.name}: {name}: {shown} ({time.monotonic() - t0:.1f} s)")
            shutil.rmtree(work, ignore_errors=True)
        res["metrics"] = {key: statistics.median(values) for key, values in res["samples"].items()}
    finally:
        try:
            target.teardown()
        except Exception as e:
            res["notes"].append(f"teardown: {describe_error(e)}")
        res["seconds"] = time.monotonic() - start
        log(f"{target.name}: done in {res['seconds']:.0f} s")
    return res


def machine_note() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), "Linux")
    fio = run(["fio", "--version"], check=False).stdout.strip()
    return (f"nproc {os.cpu_count()}, {cpu}, {mem_kib / 2**20:.0f} GiB RAM, {os_name}, "
            f"kernel {platform.release()}, Python {platform.python_version()}, {fio}")


def load_average() -> str:
    """The 1-minute load average: the machine is shared, so say how busy it was."""
    return Path("/proc/loadavg").read_text().split()[0]


def method_note(p: Params, repeat: int) -> str:
    rounds = f"median of {repeat} rounds of the whole suite per target; " if repeat > 1 else "one round; "
    return (rounds + f"fio psync engine, fallocate=none, random buffer contents, sequential jobs capped at "
            f"{p.fio_limit_s} s; MB/s = bytes / fio's runtime, the wall clock of the job from its first "
            f"I/O through its final fsync (end_fsync=1 on writes), without fio's own start-up; for the "
            f"parallel writers, all bytes / the longest job. Metadata and small-file loops are Python "
            f"os calls from one thread, each phase capped at {p.phase_limit_s:.0f} s. Before every cold "
            f"read: sync and `echo 3 > /proc/sys/vm/drop_caches`, plus a fresh client on FUSE targets "
            f"(see each target). The machine is shared: compare ratios from the same run.")


def cleanup(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(root))]
    if mounts:
        log(f"leaving {root}: still mounted: {', '.join(mounts)}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "mooseng" in args.targets:
        reexec_in_venv()
    if os.geteuid() != 0:
        print("bench/run.py must run as root (drop_caches, network namespaces, FUSE mounts)", file=sys.stderr)
        return 2
    if shutil.which("fio") is None:
        print("fio not found: apt-get install -y fio", file=sys.stderr)
        return 2

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    params = Params.for_size(args.size_mb)
    command = shlex.join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    root = Path(tempfile.mkdtemp(prefix="mooseng-bench-", dir=args.workdir))
    log(f"work directory {root}; targets {', '.join(args.targets)}; sequential size {params.size_mib} MiB")
    start = time.monotonic()
    load_start = load_average()
    results = {}
    try:
        for name in args.targets:
            kwargs = {"port_base": args.mooseng_port_base} if TARGETS[name] is MooseNGTarget else {}
            results[name] = run_target(TARGETS[name](root / name, **kwargs), params, args.repeat, args.workloads)
    finally:
        cleanup(root)

    meta = {"command": command, "date": date, "seconds": time.monotonic() - start, "targets": args.targets, "workloads": args.workloads,
            "machine": f"{machine_note()}; 1-min load average {load_start} at start, {load_average()} at end",
            "method": method_note(params, args.repeat),
            "params": dataclasses.asdict(params)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    section = report.render(results, metrics_table(params), meta)
    report.update(args.out, section)
    print(section)
    log(f"wrote {args.out} and {RESULTS.relative_to(REPO)} in {meta['seconds']:.0f} s")
    complete = all(not r["error"] and not r["errors"] for r in results.values())
    return 0 if complete else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started was torn down")
        sys.exit(130)
