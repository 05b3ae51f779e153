"""The core workloads: one function per workload, each working inside the directory it is given.

Every workload has the signature ``fn(directory, params, make_cold) -> Result``;
`make_cold()` is the target's way to make the next read come from storage instead of a cache.
Throughput is MB/s (10**6 bytes per second), rates are per second; higher is always better.

Everything is bounded in time, even on a file system that hangs: fio jobs have a runtime limit
and a hard timeout; the Python loops (metadata, small files) run in a child process
(`python -m bench.workloads PHASE DIR PARAMS`) that is killed if it does not finish, and each of
their phases stops at `params.phase_limit_s` (its rate is then over the operations it did, and a
note says so). A sequential write that hits its limit leaves a shorter file, which the read
workloads then use as it is (again with a note).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.common import BenchError, run

MB = 10**6
MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
SEQ_FILE = "seq.dat"

MakeCold = Callable[[], None]


@dataclass
class Result:
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Params:
    size_mib: int = 1024  # the sequential file, also read by the random-read workloads
    writers: int = 3
    writer_mib: int = 256  # per parallel writer
    rand_runtime_s: int = 15
    meta_files: int = 5000
    meta_dirs: int = 1000
    small_files: int = 2000
    small_bytes: int = 4096
    fio_limit_s: int = 90  # runtime cap of each sequential fio job
    phase_limit_s: float = 45  # cap of each Python-loop phase

    @classmethod
    def for_size(cls, size_mib: int) -> "Params":
        """The seed sizes scale with --size-mb: 1024 gives 1 GiB sequential and 3 x 256 MiB writers."""
        return cls(size_mib=size_mib, writer_mib=max(1, size_mib // 4))


@dataclass(frozen=True)
class Metric:
    workload: str  # the workload that measures it
    key: str
    label: str
    unit: str


def metrics_table(p: Params) -> list[Metric]:
    """The report rows, in order (labels carry the sizes actually used)."""
    size = f"{p.size_mib // 1024} GiB" if p.size_mib % 1024 == 0 else f"{p.size_mib} MiB"
    small = f"{p.small_files:,} files of {p.small_bytes // 1024} KiB"
    return [
        Metric("seq_write", "seq_write", f"sequential write {size} (fio bs=1M, incl. end_fsync)", "MB/s"),
        Metric("seq_read", "seq_read", f"sequential read {size}, cold (fio bs=1M)", "MB/s"),
        Metric("rand_read", "rand_read_1", f"random 4 KiB reads, 1 job ({p.rand_runtime_s} s)", "IOPS"),
        Metric("rand_read", "rand_read_4", f"random 4 KiB reads, 4 jobs ({p.rand_runtime_s} s)", "IOPS"),
        Metric("metadata", "create", f"create {p.meta_files:,} files in one dir", "ops/s"),
        Metric("metadata", "stat", f"stat {p.meta_files:,} files", "ops/s"),
        Metric("metadata", "rename", f"rename {p.meta_files:,} files", "ops/s"),
        Metric("metadata", "unlink", f"unlink {p.meta_files:,} files", "ops/s"),
        Metric("metadata", "mkdir", f"mkdir {p.meta_dirs:,} dirs", "ops/s"),
        Metric("small_files", "small_write", f"{small}: write", "files/s"),
        Metric("small_files", "small_read", f"{small}: cold read", "files/s"),
        Metric("parallel_write", "parallel_write",
               f"{p.writers} parallel writers x {p.writer_mib} MiB (fio, incl. end_fsync)", "MB/s"),
        Metric("classes", "default_write", f"class default (2 copies): sequential write {size} (fio bs=1M)", "MB/s"),
        Metric("classes", "default_read", f"class default (2 copies): sequential read {size}, cold", "MB/s"),
        Metric("classes", "archive_write", f"class archive (EC 8+4): sequential write {size} (fio bs=1M)", "MB/s"),
        Metric("classes", "archive_read", f"class archive (EC 8+4): sequential read {size}, cold", "MB/s"),
        Metric("classes", "archive_read_degraded",
               f"class archive (EC 8+4): sequential read {size}, cold, one chunkserver down", "MB/s"),
    ]


# --- workloads (run in the bench process) ------------------------------------------------------------

def seq_write(directory: Path, p: Params, make_cold: MakeCold) -> Result:
    return _write_seq_file(directory / SEQ_FILE, p)


def seq_read(directory: Path, p: Params, make_cold: MakeCold) -> Result:
    path, result = _seq_file(directory, p)
    make_cold()
    job = fio("seqread", p.fio_limit_s, f"--filename={path}", "--rw=read", "--bs=1M",
              f"--size={path.stat().st_size}", f"--runtime={p.fio_limit_s}")
    if job["read"]["io_bytes"] < path.stat().st_size:
        result.notes.append(f"stopped at the {p.fio_limit_s} s limit after {job['read']['io_bytes'] / MiB:.0f} MiB")
    result.metrics["seq_read"] = mb_per_s(job, "read")
    return result


def rand_read(directory: Path, p: Params, make_cold: MakeCold) -> Result:
    """4 KiB random reads over the sequential file, 1 job then 4 jobs, each from a cold start."""
    path, result = _seq_file(directory, p)
    for jobs in (1, 4):
        make_cold()
        job = fio(f"randread{jobs}", p.rand_runtime_s, f"--filename={path}", "--rw=randread", "--bs=4k",
                  f"--size={path.stat().st_size}", f"--numjobs={jobs}", "--time_based",
                  f"--runtime={p.rand_runtime_s}")
        result.metrics[f"rand_read_{jobs}"] = job["read"]["iops"]
    return result


def metadata(directory: Path, p: Params, make_cold: MakeCold) -> Result:
    """create / stat / rename / unlink of p.meta_files files in one directory, then mkdir of p.meta_dirs."""
    return _in_child(meta_phases, directory, p, phases=5)


def small_files(directory: Path, p: Params, make_cold: MakeCold) -> Result:
    """p.small_files files of random bytes: write them, then read them back cold and check them."""
    result = _in_child(small_write_phase, directory, p, phases=1)
    make_cold()
    read = _in_child(small_read_phase, directory, p, phases=1)
    result.metrics.update(read.metrics)
    result.notes += read.notes
    shutil.rmtree(directory / "small")
    return result


def parallel_write(directory: Path, p: Params, make_cold: MakeCold) -> Result:
    """p.writers fio jobs, each writing its own file; MB/s of all of them by wall clock."""
    base = directory / "parallel"
    base.mkdir()
    job = fio("parwrite", p.fio_limit_s, f"--directory={base}", "--rw=write", "--bs=1M",
              f"--size={p.writer_mib}M", f"--numjobs={p.writers}", "--end_fsync=1",
              f"--runtime={p.fio_limit_s}")
    result = Result({"parallel_write": mb_per_s(job, "write")})
    if job["write"]["io_bytes"] < p.writers * p.writer_mib * MiB:
        result.notes.append(f"stopped at the {p.fio_limit_s} s limit after {job['write']['io_bytes'] / MiB:.0f} MiB")
    shutil.rmtree(base)
    return result


def classes(directory: Path, p: Params, make_cold: MakeCold, target) -> Result:
    """The same sequential write and cold read in a directory of class default (2 copies) and one
    of class archive (EC 8+4), then the archive file read again with one chunkserver stopped
    (every part it held decoded from the others). Needs a target with storage classes and a
    chunkserver to stop (target.set_class, target.degrade, target.restore)."""
    result = Result()
    files = {}
    for sclass in ("default", "archive"):
        sub = directory / sclass
        sub.mkdir()
        target.set_class(sub, sclass)
        files[sclass] = path = sub / SEQ_FILE
        job = fio(f"{sclass}write", p.fio_limit_s, f"--filename={path}", "--rw=write", "--bs=1M",
                  f"--size={p.size_mib}M", "--end_fsync=1", f"--runtime={p.fio_limit_s}")
        result.metrics[f"{sclass}_write"] = mb_per_s(job, "write")
        result.metrics[f"{sclass}_read"] = _cold_read(path, p, make_cold, f"{sclass}read", result)
    target.degrade()
    try:
        result.metrics["archive_read_degraded"] = _cold_read(files["archive"], p, make_cold, "degradedread", result)
    finally:
        target.restore()
    shutil.rmtree(directory / "default")
    shutil.rmtree(directory / "archive")
    return result


classes.needs_target = True


def _cold_read(path: Path, p: Params, make_cold: MakeCold, name: str, result: Result) -> float:
    make_cold()
    size = path.stat().st_size
    job = fio(name, p.fio_limit_s, f"--filename={path}", "--rw=read", "--bs=1M", f"--size={size}",
              f"--runtime={p.fio_limit_s}")
    if job["read"]["io_bytes"] < size:
        result.notes.append(f"{name}: stopped at the {p.fio_limit_s} s limit after {job['read']['io_bytes'] / MiB:.0f} MiB")
    return mb_per_s(job, "read")


# (name, function), in the order they run; seq_read and rand_read use the file seq_write leaves.
# A function with `needs_target` also gets the target (its hooks), as `target`.
WORKLOADS: list[tuple[str, Callable[[Path, Params, MakeCold], Result]]] = [
    ("seq_write", seq_write),
    ("seq_read", seq_read),
    ("rand_read", rand_read),
    ("metadata", metadata),
    ("small_files", small_files),
    ("parallel_write", parallel_write),
    ("classes", classes),
]


# --- fio -------------------------------------------------------------------------------------------

def fio(name: str, limit_s: float, *options: str) -> dict:
    """Run one fio job group; return the (group-reported) job record of its JSON output.

    Sync engine, no fallocate (glibc would emulate it by writing zeros on a FUSE file system),
    data buffers filled with random bytes (fio's default; never zeros: MooseFS skips zero blocks).
    """
    cmd = ["fio", f"--name={name}", "--output-format=json", "--ioengine=psync", "--fallocate=none",
           "--group_reporting", *options]
    out = run(cmd, timeout=limit_s + 60).stdout
    try:
        return json.loads(out[out.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError) as e:
        raise BenchError(f"fio {name}: unreadable output ({e})") from None


def mb_per_s(job: dict, direction: str) -> float:
    """MB/s over the wall-clock time of the fio job(s): fio's `runtime` runs from the first I/O
    through the final fsync (end_fsync), and without fio's own start-up of about 0.3 s; for a
    group of jobs it is the longest job's. Not fio's `bw`, which averages per-job samples."""
    return job[direction]["io_bytes"] / (job[direction]["runtime"] / 1000) / MB


def _write_seq_file(path: Path, p: Params) -> Result:
    """Write the sequential file with fio (final fsync included in the time)."""
    path.unlink(missing_ok=True)
    job = fio("seqwrite", p.fio_limit_s, f"--filename={path}", "--rw=write", "--bs=1M",
              f"--size={p.size_mib}M", "--end_fsync=1", f"--runtime={p.fio_limit_s}")
    done = job["write"]["io_bytes"]
    result = Result({"seq_write": mb_per_s(job, "write")})
    if done < p.size_mib * MiB:
        result.notes.append(f"stopped at the {p.fio_limit_s} s limit after {done / MiB:.0f} of {p.size_mib} MiB")
    return result


def _seq_file(directory: Path, p: Params) -> tuple[Path, Result]:
    """The file seq_write left (maybe short, see there); written now, untimed, if there is none."""
    path = directory / SEQ_FILE
    result = Result()
    if not path.exists() or path.stat().st_size == 0:
        result.notes += _write_seq_file(path, p).notes
    if path.stat().st_size < p.size_mib * MiB:
        result.notes.append(f"on a file of {path.stat().st_size / MiB:.0f} MiB, not {p.size_mib} MiB")
    return path, result


# --- the Python loops, run in a child process ------------------------------------------------------

def _in_child(phase: Callable[[Path, Params], Result], directory: Path, p: Params, phases: int) -> Result:
    """Run `phase` in `python -m bench.workloads`, killed if it has not answered in time."""
    limit = phases * p.phase_limit_s + 60
    cmd = [sys.executable, "-m", "bench.workloads", phase.__name__, str(directory),
           json.dumps(dataclasses.asdict(p))]
    proc = run(cmd, timeout=limit, check=False, cwd=REPO)
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        raise BenchError(lines[-1] if lines else f"{phase.__name__}: exit {proc.returncode}")
    out = json.loads(proc.stdout)
    return Result(out["metrics"], out["notes"])


def _timed(op: Callable[[str], object], items: list[str], p: Params, phase: str, result: Result) -> list[str]:
    """Apply op to each item until done or p.phase_limit_s; record the rate; return the items done."""
    done = 0
    start = time.monotonic()
    deadline = start + p.phase_limit_s
    for item in items:
        op(item)
        done += 1
        if time.monotonic() > deadline:
            break
    result.metrics[phase] = done / (time.monotonic() - start)
    if done < len(items):
        result.notes.append(f"{phase}: stopped at the {p.phase_limit_s:.0f} s limit after {done} of {len(items)}")
    return items[:done]


def meta_phases(directory: Path, p: Params) -> Result:
    files_dir, dirs_dir = directory / "meta", directory / "dirs"
    files_dir.mkdir()
    dirs_dir.mkdir()
    names = [os.fspath(files_dir / f"f{i:05d}") for i in range(p.meta_files)]

    def create(path: str) -> None:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    result = Result()
    names = _timed(create, names, p, "create", result)
    _timed(os.stat, names, p, "stat", result)
    renamed = _timed(lambda n: os.rename(n, n + ".r"), names, p, "rename", result)
    names = [n + ".r" for n in renamed] + names[len(renamed):]
    _timed(os.unlink, names, p, "unlink", result)
    dirs = [os.fspath(dirs_dir / f"d{i:04d}") for i in range(p.meta_dirs)]
    _timed(os.mkdir, dirs, p, "mkdir", result)
    shutil.rmtree(files_dir)
    shutil.rmtree(dirs_dir)
    return result


def _small_payloads(directory: Path, p: Params) -> dict[str, bytes]:
    """Random (never zero) contents, the same in the writing and the reading process."""
    return {os.fspath(directory / "small" / f"s{i:05d}"): random.Random(i).randbytes(p.small_bytes)
            for i in range(p.small_files)}


def small_write_phase(directory: Path, p: Params) -> Result:
    payloads = _small_payloads(directory, p)
    (directory / "small").mkdir()

    def write(path: str) -> None:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            if os.write(fd, payloads[path]) != p.small_bytes:
                raise BenchError(f"short write on {path}")
        finally:
            os.close(fd)

    result = Result()
    _timed(write, list(payloads), p, "small_write", result)
    return result


def small_read_phase(directory: Path, p: Params) -> Result:
    payloads = _small_payloads(directory, p)
    written = sorted(os.fspath(e.path) for e in os.scandir(directory / "small"))

    def read(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, p.small_bytes + 1)
        finally:
            os.close(fd)
        if data != payloads[path]:
            raise BenchError(f"{path}: read back {len(data)} bytes that differ from what was written")

    result = Result()
    _timed(read, written, p, "small_read", result)
    return result


def _child_main(argv: list[str]) -> int:
    phase, directory, params = argv
    p = Params(**json.loads(params))
    try:
        result = {"meta_phases": meta_phases, "small_write_phase": small_write_phase,
                  "small_read_phase": small_read_phase}[phase](Path(directory), p)
    except (BenchError, OSError) as e:
        print(f"{phase}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
