"""Small helpers shared by the targets and the workloads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence


class BenchError(Exception):
    """A workload or a target failed; the message goes into the report as "failed: <message>"."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], timeout: float = 60, check: bool = True, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command and capture its output, killing it after `timeout` seconds.

    On a timeout, or (with check) a non-zero exit, raise BenchError with the last line it printed.
    A process that SIGKILL cannot end within 10 s (stuck in the kernel) is left behind, so that
    the run stays bounded.
    """
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"{cmd[0]} (pid {proc.pid}) does not die; left behind")
        raise BenchError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    except BaseException:  # KeyboardInterrupt: do not leave it running
        proc.kill()
        proc.wait()
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd[:3]))}: exit {proc.returncode}: {last_line(err or out)}")
    return result


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def drop_kernel_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (needs root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise BenchError(f"cannot drop caches (run as root): {e}") from None


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM one process we started, SIGKILL it after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
