"""./demo-unified-cluster.sh end to end, in local mode: the seed's commands in the order a user
types them. The demo uses the seed's fixed ports, so this test fails (never skips) when one is
taken, naming the port, instead of interfering with whatever holds it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mooseng.localcluster import LocalCluster

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "demo-unified-cluster.sh"


def seed_ports() -> list[int]:
    demo = LocalCluster(Path("/nonexistent"), masters=3, dashboard=True, prometheus=True)
    return sorted(p for n in demo.nodes for p in n.ports.values())


def taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def demo(tmp_path):
    """run(command...) -> CompletedProcess of the demo script on a root in tmp_path; stops it after."""
    busy = [p for p in seed_ports() if taken(p)]
    if busy:
        pytest.fail(
            f"the demo's seed ports {busy} are in use on 127.0.0.1 (a demo cluster running? "
            f"`./demo-unified-cluster.sh stop`, or find the process with `lsof -i :{busy[0]}`)"
        )
    root = tmp_path / "demo"
    env = {
        **os.environ,
        "MOOSENG_RUNTIME": "local",
        "MOOSENG_SKIP_INSTALL": "1",
        "MOOSENG_LOCAL_ROOT": str(root),
        "MOOSENG_PYTHON": sys.executable,
        # The script runs in tmp_path: the source tree must be importable from there too.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "daemons"), os.environ.get("PYTHONPATH")])),
    }

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(SCRIPT), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)

    run.root = root
    try:
        yield run
    finally:
        run("stop")
        if (root / "cluster.json").exists():  # the script failed to stop it: make sure nothing is left
            LocalCluster.open(root).stop()


def check(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


def test_start_status_test_logs_stop_restart_cleanup(demo):
    out = check(demo("start"))
    assert "local processes" in out.splitlines()[0]
    for url in ("http://127.0.0.1:9423/metrics", "http://127.0.0.1:9425/metrics", "http://127.0.0.1:9447/metrics"):
        assert url in out
    assert str(demo.root / "client-1" / "mnt") in out
    assert "dashboard       http://127.0.0.1:8080" in out and "prometheus      http://127.0.0.1:9090" in out
    with urllib.request.urlopen("http://127.0.0.1:8080/api/status", timeout=10) as reply:
        assert len(json.loads(reply.read())["masters"]) == 3

    out = check(demo("status"))
    assert "DOWN" not in out and "leader" in out and "chunkservers: 3 alive, 0 down" in out

    out = check(demo("urls"))
    assert "127.0.0.1:9421" in out and "http://127.0.0.1:9465/metrics" in out

    out = check(demo("test", timeout=600))
    assert "client-2 read: Hello MooseNG" in out
    assert "identical on 3 clients" in out
    assert "All filesystem tests passed" in out

    out = check(demo("logs"))
    for node in ("master-1", "chunkserver-3", "client-2", "dashboard", "prometheus"):
        assert f"\n{node:<14} | " in "\n" + out

    check(demo("stop"))
    mounts = Path("/proc/mounts").read_text()
    assert str(demo.root) not in mounts
    assert not list(demo.root.glob("*/*.pid"))

    out = check(demo("restart"))  # stop (nothing running) + start: the data survived
    assert (demo.root / "client-3" / "mnt" / "test.txt").read_text() == "Hello MooseNG\n"
    assert (demo.root / "client-1" / "mnt" / "bigfile").stat().st_size == 100 * 1024 * 1024

    check(demo("cleanup"))
    assert not demo.root.exists()
    assert str(demo.root) not in Path("/proc/mounts").read_text()


def test_start_refuses_a_taken_seed_port(demo):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 9421))
        squatter.listen()
        proc = demo("start")
    assert proc.returncode != 0
    assert "port 9421 (master-1 api)" in proc.stderr and "lsof -i :9421" in proc.stderr


def test_commands_on_a_stopped_cluster_fail_clearly(demo):
    proc = demo("test")
    assert proc.returncode != 0 and "start" in proc.stderr
    assert demo("bogus").returncode == 2
