"""Three real masters: `mooseng status`, raft metrics and `raft_status` on every master, cluster
identity (a foreign cluster or an unknown node is refused and logged; another cluster's data dir
is refused at start), and configuration errors in raft_peers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mooseng import rpc
from mooseng.client.fs import Client
from mooseng.client.masterclient import MasterClient
from mooseng.localcluster import AUTO_PORTS, LocalCluster
from support.polling import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("raft"), masters=3, chunkservers=1, clients=0, port_base=AUTO_PORTS)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_master(tmp_path: Path, name: str, cluster_id: str, peers: str, node_id: str,
                 **extra: str) -> tuple[subprocess.Popen, Path]:  # fmt: skip
    """A master process configured through MOOSENG_* only; its log file."""
    data = tmp_path / name
    data.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    raft = peers.split(f"{node_id}=")[1].split(",")[0] if f"{node_id}=" in peers else f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOSENG_")}
    env.update(
        PYTHONPATH=str(REPO / "daemons"), MOOSENG_NODE_ID=node_id, MOOSENG_CLUSTER_ID=cluster_id,
        MOOSENG_RAFT_PEERS=peers, MOOSENG_DATA_DIR=str(data), MOOSENG_LISTEN=f"127.0.0.1:{free_port()}",
        MOOSENG_RAFT_LISTEN=raft, MOOSENG_METRICS_LISTEN=f"127.0.0.1:{free_port()}", **extra,
    )  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mooseng.master.main"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)  # fmt: skip
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raft_status(addr: str) -> dict:
    client = rpc.Client(addr, timeout_s=2)
    try:
        return client.call("raft_status", {})[0]
    finally:
        client.close()


def test_status_shows_every_masters_role_term_and_lag(masters):
    leader = masters.leader()
    cmd = [sys.executable, "-m", "mooseng.cli.main", "--master", ",".join(masters.master_endpoints), "status"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemons")}
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    rows = json.loads(out)["masters"]
    assert sorted(r["node_id"] for r in rows) == ["master-1", "master-2", "master-3"]
    assert [r["node_id"] for r in rows if r["role"] == "leader"] == [leader]
    assert all(r["role"] in ("leader", "follower") and r["term"] >= 1 and r["lag"] >= 0 for r in rows)
    assert len({r["term"] for r in rows}) == 1 and all(r["leader"] == leader for r in rows)
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    assert "ROLE" in text and "LAG" in text and f"{leader}" in text and "follower" in text


def test_raft_status_and_metrics_on_every_master(masters):
    leader = masters.leader()
    rows = {n.name: raft_status(n.addr("api")) for n in masters.nodes if n.kind == "master"}
    lead = rows[leader]
    assert {p["node_id"] for p in lead["peers"]} == set(rows) and all(p["match"] is not None for p in lead["peers"])
    assert all(r["leader_id"] == leader for r in rows.values())
    for node in masters.nodes:
        if node.kind != "master":
            continue
        with urllib.request.urlopen(f"http://{node.addr('metrics')}/metrics", timeout=10) as r:
            text = r.read().decode()
        value = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("mooseng_raft")}
        assert value["mooseng_raft_leader"] == (1.0 if node.name == leader else 0.0)
        for name in ("term", "commit_index", "applied_index", "log_entries", "snapshot_index",
                     "last_snapshot_timestamp_seconds", "elections_total", "leader_changes_total"):
            assert f"mooseng_raft_{name}" in value, name
        assert value["mooseng_raft_leader_changes_total"] >= 1 and value["mooseng_raft_term"] >= 1


def test_foreign_cluster_and_unknown_node_are_refused_and_logged(masters, tmp_path):
    target = masters.node("master-2")
    term = raft_status(target.addr("api"))["term"]
    foreign, foreign_log = spawn_master(
        tmp_path, "foreign", "another-cluster", f"intruder=127.0.0.1:{free_port()},master-2={target.addr('raft')}",
        "intruder",
    )
    stranger, stranger_log = spawn_master(
        tmp_path, "stranger", "mooseng", f"stranger=127.0.0.1:{free_port()},master-2={target.addr('raft')}", "stranger"
    )
    try:
        wait_for("the intruders to be refused",
                 lambda: "refused" in foreign_log.read_text() and "refused" in stranger_log.read_text(), 15)  # fmt: skip
        time.sleep(3)  # several more election rounds of the intruders
    finally:
        stop(foreign)
        stop(stranger)
    log = target.log_path.read_text()
    refused = [line for line in log.splitlines() if "refused raft messages" in line]
    assert len([line for line in refused if "belongs to cluster 'another-cluster'" in line]) == 1, refused
    assert len([line for line in refused if "'stranger'" in line and "is not a member" in line]) == 1, refused
    assert "FAILED_PRECONDITION" in foreign_log.read_text()
    # The cluster did not notice: same leader, same term.
    assert raft_status(target.addr("api"))["term"] == term


def test_data_dir_of_another_cluster_is_refused_at_start(tmp_path):
    proc, log = spawn_master(tmp_path, "m", "first", "", "m1")
    try:
        wait_for("the master to start", lambda: "serving on" in log.read_text(), 15)
    finally:
        stop(proc)
    proc, log = spawn_master(tmp_path, "m", "second", "", "m1")
    assert proc.wait(30) == 1
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "belongs to cluster 'first', not 'second'" in lines[0], lines


@pytest.mark.parametrize(
    "peers, node_id, message",
    [
        ("m1=127.0.0.1:1,m2", "m1", "raft_peers = 'm1=127.0.0.1:1,m2': expected name=host:port, got 'm2'"),
        ("m1=127.0.0.1:1,m1=127.0.0.1:2", "m1", "'m1' is listed twice"),
        ("m1=nowhere,m2=127.0.0.1:2", "m1", "not host:port: 'nowhere'"),
        ("m2=127.0.0.1:1,m3=127.0.0.1:2", "m1", "node_id = 'm1': not in raft_peers (m2, m3)"),
    ],
)
def test_bad_raft_peers_is_a_one_line_config_error(tmp_path, peers, node_id, message):
    proc, log = spawn_master(tmp_path, "m", "c", peers, node_id)
    assert proc.wait(30) == 2
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def mooseng(endpoints: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mooseng.cli.main", "--master", ",".join(endpoints), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemons")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_add_transfer_remove_a_master_through_the_cli(tmp_path):
    cluster = LocalCluster(tmp_path / "c", masters=3, chunkservers=1, clients=0, port_base=AUTO_PORTS)
    newcomer = None
    try:
        cluster.start()
        endpoints = cluster.master_endpoints
        client = MasterClient(endpoints, timeout_s=20)
        for i in range(30):
            client.call("mkdir", {"parent": 1, "name": b"d%d" % i, "mode": 0o755})
        client.close()
        raft4 = f"127.0.0.1:{free_port()}"
        peers = ",".join(f"{n.name}={n.addr('raft')}" for n in cluster.nodes if n.kind == "master")
        newcomer, log4 = spawn_master(tmp_path, "m4", "mooseng", f"{peers},master-4={raft4}", "master-4",
                                      MOOSENG_RAFT_JOIN="1")  # fmt: skip
        wait_for("master-4 to start", lambda: "serving on" in log4.read_text(), 15)
        addr4 = log4.read_text().split("serving on ")[1].split(",")[0]

        done = mooseng(endpoints, "master", "add", f"master-4={raft4}")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"added master-4 ({raft4})"
        leader = cluster.leader()
        leader_api = cluster.node(leader).addr("api")
        wait_for("master-4 to catch up (snapshot, then log)",
                 lambda: raft_status(addr4)["applied"] >= raft_status(leader_api)["commit"]
                 and raft_status(addr4)["role"] == "follower", 15)  # fmt: skip
        assert "master-4" in {p["node_id"] for p in raft_status(cluster.node(leader).addr("api"))["peers"]}

        again = mooseng(endpoints, "master", "add", f"master-4={raft4}")
        assert again.returncode == 1 and "already a member" in again.stderr, again.stderr

        moved = mooseng(endpoints + [addr4], "master", "transfer-leader", "master-4")
        assert moved.returncode == 0, moved.stderr
        assert raft_status(addr4)["role"] == "leader"
        client = MasterClient([addr4], timeout_s=20)
        assert len(client.call("readdir", {"ino": 1, "offset": 0, "limit": 100})) == 30
        client.call("mkdir", {"parent": 1, "name": b"on-4", "mode": 0o755})
        client.close()

        gone = mooseng(endpoints + [addr4], "master", "remove", leader)
        assert gone.returncode == 0, gone.stderr
        members = {p["node_id"] for p in raft_status(addr4)["peers"]}
        assert members == {"master-1", "master-2", "master-3", "master-4"} - {leader}
        cluster.kill(leader)  # removed: the other three go on without it
        client = MasterClient(endpoints + [addr4], timeout_s=20)
        client.call("mkdir", {"parent": 1, "name": b"after-remove", "mode": 0o755})
        assert len(client.call("readdir", {"ino": 1, "offset": 0, "limit": 100})) == 32
        client.close()
    finally:
        if newcomer is not None:
            stop(newcomer)
        cluster.stop()


def test_malformed_raft_calls_are_refused_and_the_master_lives_on(masters):
    from mooseng.master.raftnode import raft_id

    node = masters.node("master-3")
    client = rpc.Client(node.addr("raft"), timeout_s=5)
    member = {"cluster_id": "mooseng", "from": raft_id("master-1"), "from_name": "master-1", "api": ""}
    try:
        for params, status in [
            ({}, rpc.FAILED_PRECONDITION),  # no cluster id
            ({**member, "msgs": "nonsense"}, rpc.INVALID_ARGUMENT),
            ({**member, "msgs": [[99, 0, 0]]}, rpc.INVALID_ARGUMENT),
            ({**member, "msgs": [[17, raft_id("master-2"), raft_id("master-1"), 1, 0, 0, [], 0, False, 0, None, b""]]},
             rpc.INVALID_ARGUMENT),  # addressed to another node
        ]:
            with pytest.raises(rpc.RpcError) as exc:
                client.call("raft", params)
            assert exc.value.status == status, (params, exc.value)
    finally:
        client.close()
    assert raft_status(node.addr("api"))["role"] in ("leader", "follower")


def test_only_the_leader_exports_chunk_states(masters):
    """A follower knows no chunkserver, so counting would call every chunk missing."""
    client = Client(masters.master_endpoints, timeout_s=20)
    try:
        client.write_file("/chunk-states", b"x" * 1000)
    finally:
        client.close()
    leader = masters.leader()

    def states(node) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{node.addr('metrics')}/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        return {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("mooseng_chunks{")}

    wait_for("the leader to count the chunk", lambda: states(masters.node(leader)).get(
        'mooseng_chunks{sclass="default",state="endangered"}', 0) == 1, timeout=20)
    for node in masters.nodes:
        if node.kind == "master" and node.name != leader:
            assert states(node) == {}, node.name
