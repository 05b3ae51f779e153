"""LocalCluster's optional monitoring services (the demo turns them on): the web dashboard sees the
whole cluster, a real Prometheus scrapes every daemon with the repository's rules, and stop() leaves
no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mooseng import config
from mooseng.localcluster import AUTO_PORTS, RULES_DIR, ClusterError, LocalCluster
from support.polling import wait_for

pytestmark = pytest.mark.fuse


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def monitored(module_cluster_factory):
    return module_cluster_factory(masters=3, chunkservers=3, clients=1, dashboard=True, prometheus=True)


def test_services_are_opt_in_and_on_the_seed_ports_by_default(tmp_path):
    assert [n.name for n in LocalCluster(tmp_path).nodes if n.kind in ("dashboard", "prometheus")] == []
    seed = LocalCluster(tmp_path, masters=3, dashboard=True, prometheus=True)
    assert seed.node("dashboard").ports == {"http": 8080}
    assert seed.node("prometheus").ports == {"http": 9090}
    auto = LocalCluster(tmp_path, port_base=AUTO_PORTS, dashboard=True, prometheus=True)
    ports = [p for n in auto.nodes for p in n.ports.values()]
    assert len(set(ports)) == len(ports) and not {8080, 9090} & set(ports)


def test_prometheus_without_the_binary_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cluster = LocalCluster(tmp_path / "c", port_base=AUTO_PORTS, prometheus=True)
    with pytest.raises(ClusterError, match="prometheus binary is missing: apt-get install -y prometheus"):
        cluster.start()
    assert not (tmp_path / "c" / "master-1").exists()


def test_dashboard_shows_every_master_and_chunkserver(monitored):
    node = monitored.node("dashboard")
    cfg = config.load("dashboard", node.config_path, env={})  # the dashboard's own validation
    assert cfg.listen == node.addr("http") and node.addr("http").startswith("127.0.0.1:")
    assert cfg.master_endpoints == monitored.master_endpoints
    status = get_json(monitored.service_url("dashboard") + "/api/status")
    assert sorted(m["node_id"] for m in status["masters"]) == ["master-1", "master-2", "master-3"]
    assert sum(m["role"] == "leader" for m in status["masters"]) == 1
    assert len(status["chunkservers"]) == 3
    assert all(cs["state"] == "alive" for cs in status["chunkservers"])
    assert status["links"] == {"prometheus": monitored.service_url("prometheus"), "grafana": None}


def test_prometheus_scrapes_every_daemon_with_the_rules(monitored):
    prometheus = monitored.service_url("prometheus")
    expected = {(n.kind, n.name): "up" for n in monitored.nodes if n.kind != "dashboard"}

    def health() -> dict:
        targets = get_json(prometheus + "/api/v1/targets")["data"]["activeTargets"]
        return {(t["labels"]["job"], t["labels"]["node"]): t["health"] for t in targets}

    wait_for("every target up", lambda: health() == expected, 60)  # first scrapes come within 5 s

    def groups() -> list[dict]:
        return get_json(prometheus + "/api/v1/rules")["data"]["groups"]

    wait_for("every rule evaluated", lambda: all(r["health"] == "ok" for g in groups() for r in g["rules"]), 60)
    assert {Path(g["file"]).name for g in groups()} == {p.name for p in RULES_DIR.glob("*.yml")}
    names = {r["name"] for g in groups() for r in g["rules"]}
    assert {"MooseNGChunkserverDown", "MooseNGNoLeader", "cluster:mooseng_chunks:sum"} <= names, names
    assert (monitored.node("prometheus").dir / "tsdb").is_dir()


def run_cli(cluster: LocalCluster, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mooseng.localcluster", command, "--root", str(cluster.root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_command_line_shows_the_services(monitored):
    status = run_cli(monitored, "status")
    assert status.returncode == 0, status.stderr
    assert "\ndashboard " in status.stdout and f"http={monitored.node('prometheus').ports['http']}" in status.stdout
    urls = run_cli(monitored, "urls").stdout
    assert f"dashboard       {monitored.service_url('dashboard')}" in urls
    assert f"prometheus      {monitored.service_url('prometheus')}" in urls
    assert "grafana         not in local mode" in urls


def test_stop_from_the_command_line_leaves_no_process_behind(monitored):
    """As the demo stops it: another process that knows the cluster only from its root directory."""
    pids = {n.name: n.pid for n in monitored.nodes}
    assert all(pid_running(pid) for pid in pids.values()), pids
    stop = run_cli(monitored, "stop")
    assert stop.returncode == 0, stop.stderr
    assert [name for name, pid in pids.items() if pid_running(pid)] == []
    assert not list(monitored.root.glob("*/*.pid"))
    assert not os.path.ismount(monitored.mountpoint(1))
