"""LocalCluster against the real daemons: layout, readiness, failure handling, kill/restart, and the
`python -m mooseng.localcluster` command the demo script drives."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mooseng import config
from mooseng.client.masterclient import MasterClient
from mooseng.localcluster import AUTO_PORTS, ClusterError, LocalCluster

pytestmark = pytest.mark.fuse


def lc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mooseng.localcluster", *args, "--root", str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def fuse_targets() -> set[str]:
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f}


def alive_chunkservers(cluster: LocalCluster) -> int:
    client = MasterClient(cluster.master_endpoints, timeout_s=10)
    try:
        return sum(1 for s in client.call("status")["chunkservers"] if s["state"] == "alive")
    finally:
        client.close()


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- without daemons ----------------------------------------------------------------------------


def test_default_ports_are_the_seeds(tmp_path):
    cluster = LocalCluster(tmp_path, masters=3)
    ports = {n.name: n.ports for n in cluster.nodes}
    assert ports["master-1"] == {"api": 9421, "raft": 9422, "metrics": 9423}
    assert ports["master-3"] == {"api": 9441, "raft": 9442, "metrics": 9443}
    assert [ports[f"chunkserver-{i}"]["api"] for i in (1, 2, 3)] == [9420, 9450, 9460]
    assert [ports[f"chunkserver-{i}"]["metrics"] for i in (1, 2, 3)] == [9425, 9455, 9465]
    assert [ports[f"client-{i}"]["metrics"] for i in (1, 2, 3)] == [9427, 9437, 9447]
    assert cluster.master_endpoints == ["127.0.0.1:9421", "127.0.0.1:9431", "127.0.0.1:9441"]
    assert cluster.mountpoint(2) == tmp_path.resolve() / "client-2" / "mnt"


def test_seed_ports_stop_at_three_of_each(tmp_path):
    with pytest.raises(ValueError, match="pass port_base"):
        LocalCluster(tmp_path, chunkservers=4)


def test_auto_ports_are_distinct_and_outside_the_seed_range(tmp_path):
    cluster = LocalCluster(tmp_path, port_base=AUTO_PORTS)
    ports = [p for n in cluster.nodes for p in n.ports.values()]
    assert len(set(ports)) == len(ports) == 3 + 3 * 2 + 3
    assert not set(ports) & set(range(9420, 9470))


def test_refuses_a_taken_port_and_names_lsof(tmp_path):
    cluster = LocalCluster(tmp_path / "c", port_base=AUTO_PORTS)
    port = cluster.node("chunkserver-2").ports["metrics"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ClusterError) as exc:
            cluster.start()
    assert f"port {port} (chunkserver-2 metrics)" in str(exc.value)
    assert f"lsof -i :{port}" in str(exc.value)
    assert not (tmp_path / "c" / "master-1").exists()  # refused before anything was started


def test_failed_start_stops_what_it_started_and_shows_the_log(tmp_path):
    """Chunkservers reject this setting (masters ignore it): start must fail at the chunkservers,
    quote their log, and leave the already running master stopped."""
    cluster = LocalCluster(tmp_path, port_base=AUTO_PORTS, env_extra={"MOOSENG_LEAVE_FREE_MB": "-1"})
    with pytest.raises(ClusterError) as exc:
        cluster.start()
    message = str(exc.value)
    assert "chunkserver-" in message and "exited with status 2" in message
    assert "config error: leave_free_mb" in message
    status = cluster.status()
    assert not any(n["alive"] for n in status["nodes"])
    assert not list(tmp_path.glob("*/*.pid"))


# --- the shared cluster ---------------------------------------------------------------------------


def test_every_node_has_its_config_log_and_pid(cluster):
    for node in cluster.nodes:
        assert node.config_path.parent == cluster.root / node.name
        cfg = config.load(node.kind, node.config_path, env={})  # the daemons' own validation
        pid = int(node.pid_path.read_text())
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2] == str(node.config_path).encode()
        assert node.log_path.stat().st_size > 0
        if node.kind == "chunkserver":
            assert cfg.data_dirs == [str(cluster.root / node.name / f"disk{i}") for i in (1, 2, 3, 4)]
            assert cfg.master_addrs == cluster.master_endpoints
        if node.kind == "client":
            assert cfg.mount_point == str(cluster.root / node.name / "mnt")


def test_status_reports_every_node_running_and_mounted(cluster):
    status = cluster.status()
    assert status["master_endpoints"] == cluster.master_endpoints
    assert [n["name"] for n in status["nodes"]] == [
        "master-1", "chunkserver-1", "chunkserver-2", "chunkserver-3", "client-1", "client-2", "client-3",
    ]  # fmt: skip
    assert all(n["alive"] for n in status["nodes"])
    assert all(n["mounted"] for n in status["nodes"] if n["kind"] == "client")
    assert alive_chunkservers(cluster) == 3
    for n in (1, 2, 3):
        assert str(cluster.mountpoint(n)) in fuse_targets()


def test_a_file_written_by_one_client_is_read_by_the_others(workdir, cluster):
    digest = write_random(workdir / "f", 3 * 1024 * 1024 + 17)
    for n in (2, 3):
        assert sha256(cluster.mountpoint(n) / workdir.name / "f") == digest


def test_command_line_status_urls_endpoints(cluster):
    status = lc(cluster.root, "status")
    assert status.returncode == 0, status.stderr
    assert "master-1" in status.stdout and "DOWN" not in status.stdout
    assert f"{cluster.mountpoint(3)} (mounted)" in status.stdout
    urls = lc(cluster.root, "urls")
    assert urls.returncode == 0, urls.stderr
    for node in cluster.nodes:
        assert f"http://127.0.0.1:{node.ports['metrics']}/metrics" in urls.stdout
    endpoints = lc(cluster.root, "endpoints")
    assert endpoints.stdout.strip() == ",".join(cluster.master_endpoints)


def test_a_second_start_on_a_running_root_is_refused(cluster):
    again = LocalCluster(cluster.root, port_base=cluster.port_base)
    with pytest.raises(ClusterError, match="already running"):
        again.start()
    assert all(n["alive"] for n in cluster.status()["nodes"])


# --- clusters of their own (they kill and restart nodes) ------------------------------------------


def test_killed_chunkserver_restarts_and_data_stays_readable(cluster_factory):
    cluster = cluster_factory()
    digest = write_random(cluster.mountpoint(1) / "f", 5 * 1024 * 1024)
    cluster.kill("chunkserver-2")
    node = cluster.node("chunkserver-2")
    assert not next(n for n in cluster.status()["nodes"] if n["name"] == node.name)["alive"]
    with pytest.raises(ClusterError, match="not running"):
        cluster.kill("chunkserver-2")
    cluster.restart("chunkserver-2")
    assert alive_chunkservers(cluster) == 3
    assert sha256(cluster.mountpoint(2) / "f") == digest


def test_killed_client_leaves_a_dead_mount_that_restart_replaces(cluster_factory):
    cluster = cluster_factory(clients=2)
    digest = write_random(cluster.mountpoint(2) / "f", 1024 * 1024)
    cluster.kill("client-1")
    with pytest.raises(OSError) as exc:
        os.stat(cluster.mountpoint(1) / "f")
    assert exc.value.errno == errno.ENOTCONN  # the crash left the mount behind, as a real one would
    cluster.restart("client-1")
    assert sha256(cluster.mountpoint(1) / "f") == digest


def test_restarted_master_keeps_the_namespace(cluster_factory):
    cluster = cluster_factory(clients=1)
    digest = write_random(cluster.mountpoint(1) / "f", 1024 * 1024)
    cluster.restart("master-1")
    assert alive_chunkservers(cluster) == 3
    assert sha256(cluster.mountpoint(1) / "f") == digest


def test_sigterm_via_kill_stops_a_client_and_unmounts(cluster_factory):
    cluster = cluster_factory(clients=1)
    cluster.kill("client-1", signal.SIGTERM)
    assert not cluster.status()["nodes"][-1]["alive"]
    assert str(cluster.mountpoint(1)) not in fuse_targets()


def test_stop_and_cleanup_from_another_process(cluster_factory):
    cluster = cluster_factory()
    pids = [n.pid for n in cluster.nodes]
    stop = lc(cluster.root, "stop")
    assert stop.returncode == 0, stop.stderr
    assert not any(n["alive"] for n in cluster.status()["nodes"])
    assert not any(str(cluster.root) in t for t in fuse_targets())
    for pid in pids:  # gone or a zombie of this process, never running
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z"
    cleanup = lc(cluster.root, "cleanup")
    assert cleanup.returncode == 0, cleanup.stderr
    assert not cluster.root.exists()
