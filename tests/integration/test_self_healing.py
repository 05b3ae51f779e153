"""Self-healing on real daemons: a lost chunkserver, its return, stale copies, a damaged block, a
removed data dir, rebalancing onto a new chunkserver, and registrations the master refuses.

Clusters run with a 2 s heartbeat timeout, 0.3 s heartbeats and planning rounds (localcluster env),
and no FUSE client: files are written and read with the client library, byte for byte.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mooseng.chunkserver.store import chunk_path
from mooseng.client.chunkclient import ChunkClient
from mooseng.client.fs import Client
from mooseng.client.masterclient import MasterClient
from mooseng.constants import CHUNK_SIZE
from mooseng.ec import part_id
from mooseng.localcluster import AUTO_PORTS, LocalCluster
from mooseng.master.registry import (
    ENDANGERED,
    MISSING,
    NO_CLASS,
    OVERGOAL,
    STABLE,
    STATES,
    UNDERGOAL,
    state_of,
)
from support.polling import wait_for

MiB = 1 << 20
ENV = {
    "MOOSENG_CHUNKSERVER_TIMEOUT_S": "2",
    "MOOSENG_HEARTBEAT_INTERVAL_S": "0.3",
    "MOOSENG_HEALING_INTERVAL_S": "0.3",
    "MOOSENG_LEAVE_FREE_MB": "0",
}
REPAIR_BOUND_S = 30.0  # kill -9 to every chunk at goal: 2 s to notice, the rest to copy


class Harness:
    """A started cluster with a client library connection and views of the master and daemons."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.client = Client(cluster.master_endpoints, timeout_s=20)
        self.master = MasterClient(cluster.master_endpoints, timeout_s=10)
        self.files: dict[str, bytes] = {}

    def close(self) -> None:
        self.client.close()
        self.master.close()

    def write(self, name: str, data: bytes) -> None:
        self.client.write_file(f"/{name}", data)
        self.files[name] = data

    def check_data(self) -> None:
        for name, data in self.files.items():
            assert self.client.read_file(f"/{name}") == data, f"{name} differs"

    def status(self) -> dict:
        return self.master.call("status")

    def default(self) -> dict:
        return self.status()["chunks"]["by_class"].get("default", {})

    def at_goal(self) -> bool:
        """Every chunk of the (default class) files exactly at goal, nothing being deleted."""
        status = self.status()
        states = status["chunks"]["by_class"].get("default", {})
        other = sum(n for state, n in states.items() if state != "stable")
        deleting = status["chunks"]["by_class"].get("-", {}).get("deleting", 0)
        return states.get("stable") == status["chunks"]["total"] and not other and not deleting

    def counted_from_copies(self) -> dict[str, dict[str, int]]:
        """Chunks per class and state worked out from every file's copies (fileinfo), the way
        the registry defines the states: what status and the metrics must say."""
        counts: dict[str, dict[str, int]] = {}
        for name in self.files:
            info = self.fileinfo(name)
            sclass, goal = info["class"]["name"], info["class"]["goal"]
            for chunk in info["chunks"]:
                valid = sum(c["valid"] for c in chunk["copies"])
                state = state_of(valid, goal)
                per_class = counts.setdefault(sclass, dict.fromkeys(STATES, 0))
                per_class[state] += 1
        return counts

    def check_counts(self) -> None:
        """status and /metrics agree with the copies, class by class (the deleting state aside:
        heartbeats delete freed chunks' copies at their own pace)."""
        want = self.counted_from_copies()
        status = self.status()
        got = {c: s for c, s in status["chunks"]["by_class"].items() if c != NO_CLASS and any(s.values())}
        assert got == want
        assert status["chunks"]["total"] == sum(sum(s.values()) for s in want.values())
        master = self.cluster.node("master-1")
        for sclass in want:
            for state in (STABLE, UNDERGOAL, ENDANGERED, MISSING, OVERGOAL):
                labels = f'{{sclass="{sclass}",state="{state}"}}'
                assert self.metric(master, "mooseng_chunks", labels) == want[sclass][state], labels

    def fileinfo(self, name: str) -> dict:
        return self.master.call("fileinfo", {"ino": self.client.resolve(f"/{name}").ino})

    def node_of(self, address: str):
        return next(n for n in self.cluster.nodes if n.kind == "chunkserver" and n.addr("api") == address)

    def metric(self, node, name: str, labels: str = "") -> float:
        text = urllib.request.urlopen(f"http://{node.addr('metrics')}/metrics", timeout=5).read().decode()
        match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
        assert match, f"{name}{labels} not in the metrics of {node.name}"
        return float(match.group(1))

    def chunk_files(self, node) -> list[Path]:
        return sorted(node.dir.glob("disk*/chunks/*/chunk_*.mng"))


@pytest.fixture
def harness(cluster_factory):
    made: list[Harness] = []

    def make(**kwargs) -> Harness:
        env = {**ENV, **kwargs.pop("env", {})}
        h = Harness(cluster_factory(clients=0, env_extra=env, **kwargs))
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.close()


def write_files(h: Harness, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for i in range(count - 1):
        h.write(f"f{i:02d}", rng.randbytes(rng.randrange(32 * 1024, 1536 * 1024)))
    h.write(f"f{count - 1:02d}", rng.randbytes(CHUNK_SIZE + MiB // 2))  # two chunks


def test_kill_9_repairs_every_chunk_to_goal_and_the_return_deletes_its_extra_copies(harness):
    h = harness()
    write_files(h, 50)
    total = h.status()["chunks"]["total"]
    assert total == 51 and h.at_goal()
    victim = h.cluster.node("chunkserver-2")
    held = len(h.chunk_files(victim))
    assert held > 10
    killed = time.monotonic()
    h.cluster.kill("chunkserver-2")
    wait_for("chunkserver-2 down", lambda: h.status()["chunkservers"][1]["state"] == "down", 10, 0.05)
    noticed = time.monotonic() - killed
    wait_for("every chunk back at 2 copies", h.at_goal, REPAIR_BOUND_S)
    took = time.monotonic() - killed
    print(f"\n{held} chunks lost with chunkserver-2: down after {noticed:.1f} s, every chunk at goal "
          f"{took:.1f} s after kill -9")
    victim_addr = victim.addr("api")
    for name in h.files:
        for chunk in h.fileinfo(name)["chunks"]:
            assert [c["state"] for c in chunk["copies"]] == ["valid", "valid"]
            assert victim_addr not in [c["address"] for c in chunk["copies"]]
    h.check_data()
    repaired = h.status()["chunks"]["replication"]
    assert repaired["chunks"] >= held and repaired["failures"] == 0
    master = h.cluster.node("master-1")
    assert h.metric(master, "mooseng_replication_chunks_total") >= held
    assert h.metric(master, "mooseng_replication_bytes_total") > 0
    assert h.metric(master, "mooseng_chunkservers", '{state="down"}') == 1

    h.cluster.restart("chunkserver-2")  # back with its old copies: every one is now extra
    wait_for("its extra copies deleted", lambda: not h.chunk_files(victim) and h.at_goal(), 30)
    servers = {s["server_id"]: s for s in h.status()["chunkservers"]}
    assert servers[2]["state"] == "alive" and servers[2]["chunks"] == 0
    h.check_data()
    assert h.metric(victim, "mooseng_bytes_read_total") == 0, "nothing was read from the returned copies"


def test_chunk_counts_follow_a_kill_namespace_changes_and_the_return(harness):
    """The counts are kept up to date event by event, not recounted: check them against the
    copies after each kind of change. Planning waits 60 s (the slowest interval), so no
    replication moves copies under the checks."""
    h = harness(env={"MOOSENG_HEALING_INTERVAL_S": "60"})
    write_files(h, 12)
    h.check_counts()
    assert h.default()[STABLE] == 13
    h.cluster.kill("chunkserver-2")
    wait_for("chunkserver-2 down", lambda: h.status()["chunkservers"][1]["state"] == "down", 10, 0.05)
    h.check_counts()
    assert h.default()[ENDANGERED] > 0, "chunkserver-2 held none of the chunks"
    h.write("new", random.Random(2).randbytes(MiB))  # a new chunk while it is down: on the other two
    h.master.call("setclass", {"ino": h.client.resolve("/f00").ino, "sclass": "fast"})
    h.master.call("unlink", {"parent": 1, "name": b"f01"})
    del h.files["f01"]
    h.write("f02", random.Random(3).randbytes(2 * MiB))  # a rewrite: the chunk takes a new version
    h.check_counts()
    assert h.status()["chunks"]["by_class"]["fast"]
    h.cluster.restart("chunkserver-2")
    wait_for("chunkserver-2 back", lambda: h.status()["chunkservers"][1]["state"] == "alive", 10, 0.05)
    h.check_counts()
    assert h.status()["chunks"]["by_class"]["fast"][UNDERGOAL] == 1, "f00: 2 copies of 3 again"
    h.check_data()


def test_a_copy_that_missed_a_write_is_stale_by_version_never_read_and_deleted(harness):
    h = harness(chunkservers=2)
    h.write("f", os.urandom(MiB))
    [chunk] = h.fileinfo("f")["chunks"]
    old = chunk["version"]
    x, y = h.cluster.node("chunkserver-1"), h.cluster.node("chunkserver-2")
    h.cluster.kill(x.name)
    wait_for("chunkserver-1 down", lambda: h.status()["chunkservers"][0]["state"] == "down", 10)
    new = os.urandom(MiB)
    ino = h.client.resolve("/f").ino
    fh = h.client.open(ino, os.O_RDWR)
    h.client.write(fh, 0, new)
    h.client.release(fh)
    h.files["f"] = new
    [chunk] = h.fileinfo("f")["chunks"]
    assert chunk["version"] > old
    h.cluster.kill(y.name)  # the only current copy goes away too
    wait_for("chunkserver-2 down", lambda: h.status()["chunkservers"][1]["state"] == "down", 10)
    h.cluster.restart(x.name)  # back with the old version

    def stale_listed():
        [c] = h.fileinfo("f")["chunks"]
        return c["copies"] if [x["state"] for x in c["copies"]] == ["stale"] else None

    [copy] = wait_for("the old copy listed as stale", stale_listed, 10)
    assert copy["version"] == old and copy["server_id"] == 1 and not copy["valid"]
    [ref] = h.master.call("chunks", {"ino": ino, "index": 0, "count": 1})
    assert ref["servers"] == [], "a stale copy is never handed to a client"
    assert "INVALID: STALE (version" in mooseng(h, "fileinfo", "mfs:/f")
    assert chunk_file(x, chunk["chunk_id"]).exists(), "kept while it is all that is left"

    h.cluster.restart(y.name)  # the current copy is back: the stale one goes, then is replaced
    line = f"deleted chunk {chunk['chunk_id']:016X} version {old} as the master asked"
    wait_for("the stale copy deleted", lambda: line in x.log_path.read_text(), 15)
    wait_for("the chunk back at goal", h.at_goal, 30)
    h.check_data()
    assert h.metric(x, "mooseng_bytes_read_total") == 0


def mooseng(h: Harness, *args: str) -> str:
    """The CLI's output (it must succeed)."""
    proc = subprocess.run([sys.executable, "-m", "mooseng.cli.main", "--master", h.cluster.master_endpoints[0], *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def chunk_file(node, chunk_id: int) -> Path:
    paths = [Path(chunk_path(str(d), chunk_id)) for d in sorted(node.dir.glob("disk*"))]
    return next((p for p in paths if p.exists()), paths[0])


def test_flipped_bytes_are_found_by_the_scrubber_and_the_copy_is_repaired(harness):
    h = harness(env={"MOOSENG_SCRUB_MB_S": "50"})
    data = os.urandom(3 * MiB + 123)
    h.write("f", data)
    [chunk] = h.fileinfo("f")["chunks"]
    holders = [c["address"] for c in chunk["copies"]]
    spare = next(n for n in h.cluster.nodes if n.kind == "chunkserver" and n.addr("api") not in holders)
    h.cluster.kill(spare.name)  # no repair target yet: the damaged copy stays visible
    bad = h.node_of(holders[0])
    path = chunk_file(bad, chunk["chunk_id"])
    with open(path, "r+b") as f:  # flip bytes inside data block 1
        f.seek(8192 + 64 * 1024 + 77)
        f.write(bytes(b ^ 0xFF for b in f.read(16)))
    wait_for("the scrubber to find the damage", lambda: h.metric(bad, "mooseng_scrub_errors_total") >= 1, 20)
    assert h.metric(bad, "mooseng_scrub_bytes_total") > 0

    def marked():
        [c] = h.fileinfo("f")["chunks"]
        return {x["address"]: x["state"] for x in c["copies"]}

    states = wait_for("the copy marked damaged", lambda: (s := marked()).get(holders[0]) == "damaged" and s, 10)
    assert states[holders[1]] == "valid"
    assert h.default()["endangered"] == 1
    out = mooseng(h, "fileinfo", "mfs:/f")
    assert f"{holders[0]} " in out and "INVALID: DAMAGED" in out
    out = mooseng(h, "status")
    header = next(line for line in out.splitlines() if line.strip().startswith("CLASS")).split()
    row = next(line for line in out.splitlines() if line.strip().startswith("default")).split()
    assert header == ["CLASS", "MISSING", "ENDANGERED", "UNDERGOAL", "STABLE", "OVERGOAL", "DELETING"]
    assert row == ["default", "0", "1", "0", "0", "0", "0"]
    master_log = h.cluster.node("master-1").log_path.read_text()
    assert f"reports its copy of chunk {chunk['chunk_id']} (version {chunk['version']}) damaged" in master_log

    h.cluster.restart(spare.name)
    wait_for("the chunk repaired, then the damaged copy deleted", lambda: h.at_goal() and not path.exists(), 30)
    [after] = h.fileinfo("f")["chunks"]
    assert sorted(c["address"] for c in after["copies"]) == sorted([holders[1], spare.addr("api")])
    assert h.client.read_file("/f") == data


def test_a_read_that_meets_a_bad_block_marks_the_copy_damaged_and_it_is_repaired(harness):
    """With the scrubber off, a client's read is what finds the damage: it is served from the
    other copy, and the bad copy is reported, repaired and deleted without waiting for a scrub."""
    h = harness(env={"MOOSENG_SCRUB_MB_S": "0"})
    data = os.urandom(2 * MiB + 77)
    h.write("f", data)
    [chunk] = h.fileinfo("f")["chunks"]
    holders = [c["address"] for c in chunk["copies"]]
    bad = h.node_of(holders[0])
    path = chunk_file(bad, chunk["chunk_id"])
    with open(path, "r+b") as f:  # flip bytes inside data block 3
        f.seek(8192 + 3 * 64 * 1024 + 5)
        f.write(bytes(b ^ 0xFF for b in f.read(16)))
    chunks = ChunkClient()
    try:
        got = chunks.read(chunk["chunk_id"], chunk["version"], 0, len(data), holders)
    finally:
        chunks.close()
    assert b"".join(got) == data, "read from the good copy after the bad one failed its CRC"
    assert h.metric(bad, "mooseng_crc_errors_total") >= 1
    wait_for("the copy repaired on the third server, then the bad copy deleted",
             lambda: h.at_goal() and not path.exists(), REPAIR_BOUND_S)
    [after] = h.fileinfo("f")["chunks"]
    assert holders[0] not in [c["address"] for c in after["copies"]]
    assert holders[1] in [c["address"] for c in after["copies"]]
    master_log = h.cluster.node("master-1").log_path.read_text()
    assert f"reports its copy of chunk {chunk['chunk_id']} (version {chunk['version']}) damaged" in master_log
    assert h.client.read_file("/f") == data


def test_a_removed_data_dir_is_marked_damaged_and_its_chunks_re_replicated(harness):
    h = harness()
    write_files(h, 20, seed=2)
    node = h.cluster.node("chunkserver-1")
    by_disk: dict[Path, int] = {}
    for path in h.chunk_files(node):
        by_disk[path.parents[2]] = by_disk.get(path.parents[2], 0) + 1
    disk, lost = max(by_disk.items(), key=lambda kv: kv[1])
    assert lost >= 2
    disk.rename(disk.with_name(disk.name + ".removed"))

    def damaged():
        [cs] = [s for s in h.status()["chunkservers"] if s["server_id"] == 1]
        return [d for d in cs["disks"] if d["state"] == "damaged"]

    [d] = wait_for("the disk marked damaged", damaged, 10)
    assert d["path"] == str(disk)
    wait_for("its chunks re-replicated", h.at_goal, REPAIR_BOUND_S)
    h.check_data()
    master = h.cluster.node("master-1")
    assert h.metric(master, "mooseng_disks", '{state="damaged"}') == 1
    assert h.metric(node, "mooseng_disk_damaged", f'{{disk="{disk}"}}') == 1
    assert h.status()["chunks"]["replication"]["chunks"] >= lost


@pytest.fixture
def tmpfs_cluster(tmp_path):
    """4 chunkservers, each on its own 160 MiB tmpfs (so usage percentages mean something)."""
    if os.geteuid() != 0:
        pytest.skip("mounting tmpfs needs root")
    env = {**ENV, "MOOSENG_REBALANCE_MAX_PER_SERVER": "4", "MOOSENG_REBALANCE_THRESHOLD_PCT": "2"}
    cluster = LocalCluster(tmp_path / "c", chunkservers=4, clients=0, port_base=AUTO_PORTS, env_extra=env)
    mounts = []
    try:
        for node in cluster.nodes:
            if node.kind == "chunkserver":
                node.dir.mkdir(parents=True)
                subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", f"heal-{node.name}", str(node.dir)],
                               check=True)
                mounts.append(node.dir)
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            for path in mounts:
                subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_new_chunkserver_receives_chunks_until_usage_is_balanced(tmpfs_cluster):
    cluster = tmpfs_cluster
    cluster.kill("chunkserver-4", 15)  # SIGTERM: it joins later, empty
    h = Harness(cluster)
    try:
        wait_for("chunkserver-4 down", lambda: h.status()["chunkservers"][3]["state"] == "down", 10)
        rng = random.Random(3)
        for i in range(32):
            h.write(f"g{i:02d}", rng.randbytes(3 * MiB))

        def ratios() -> dict[int, float]:
            out = {}
            for s in h.status()["chunkservers"]:
                if s["state"] == "alive":
                    out[s["server_id"]] = s["used_bytes"] / s["total_bytes"]
            return out

        before = ratios()
        assert min(before.values()) > 0.05
        cluster.restart("chunkserver-4")
        wait_for("chunkserver-4 up", lambda: 4 in ratios(), 10)
        assert ratios()[4] < 0.01
        started = time.monotonic()

        def balanced():
            r = ratios()
            return len(r) == 4 and max(r.values()) - min(r.values()) <= 0.02 and h.at_goal() and r

        after = wait_for("usage within 2 percentage points", balanced, 90, interval=0.5)
        print(f"\nrebalanced in {time.monotonic() - started:.1f} s: "
              + ", ".join(f"{sid}: {before.get(sid, 0):.1%} -> {r:.1%}" for sid, r in sorted(after.items())))
        assert after[4] > 0.03
        assert len(h.chunk_files(cluster.node("chunkserver-4"))) >= 4
        h.check_data()
    finally:
        h.close()


def test_foreign_cluster_and_duplicate_server_id_are_refused_with_a_log_line(harness, tmp_path):
    h = harness(chunkservers=1)
    node = h.cluster.node("chunkserver-1")
    master = h.cluster.node("master-1")
    procs = []
    try:
        for name, env in (("foreign", {"MOOSENG_CLUSTER_ID": "other", "MOOSENG_SERVER_ID": "7"}),
                          ("duplicate", {"MOOSENG_SERVER_ID": "1"})):
            port = free_port()
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("MOOSENG_")}, **env,
                   "MOOSENG_MASTER_ADDRS": h.cluster.master_endpoints[0],
                   "MOOSENG_LISTEN": f"127.0.0.1:{port}", "MOOSENG_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                   "MOOSENG_DATA_DIRS": str(tmp_path / name), "PYTHONPATH": os.pathsep.join(sys.path)}
            log = open(tmp_path / f"{name}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "mooseng.chunkserver.main"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        text = lambda: master.log_path.read_text()  # noqa: E731
        wait_for("both refusals logged", lambda: "belongs to cluster 'other'" in text()
                 and "chunkserver id 1 is already in use" in text(), 15)
        assert "refused registration" in text()
        wait_for("the refused chunkservers to say so", lambda: all(
            "no master accepts this chunkserver" in (tmp_path / f"{n}.log").read_text()
            for n in ("foreign", "duplicate")), 15)
        servers = h.status()["chunkservers"]
        assert [(s["server_id"], s["address"], s["state"]) for s in servers] == [(1, node.addr("api"), "alive")]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_archive_chunk_spread_over_three_chunkservers_survives_losing_one(harness):
    """archive (8+4) on 3 chunkservers x 4 disks: the master places 4 parts on each server, counts
    the chunk stable with its 12 parts, endangered (exactly k = 8 left, still readable) while a
    whole server is down, and stable again when it comes back with its parts. The parts are
    written the way an EC client does (one session per part at its part id, then commit_write
    with `parts`); planning waits 60 s so that no rebuild changes what is counted."""
    h = harness(env={"MOOSENG_HEALING_INTERVAL_S": "60"})
    ino = h.master.call("mknod", {"parent": 1, "name": b"cold", "mode": 0o100644})["ino"]
    h.master.call("setclass", {"ino": ino, "sclass": "archive"})
    w = h.master.call("write_chunk", {"ino": ino, "index": 0})
    c, servers = w["chunk_id"], w["servers"]
    assert w["ec"] == [8, 4] and sorted(servers.count(a) for a in set(servers)) == [4, 4, 4]
    rng = random.Random(5)
    parts = [rng.randbytes(256 * 1024) for _ in range(12)]
    chunks = ChunkClient()
    try:
        for p, address in enumerate(servers):
            assert chunks.write(part_id(c, p), 1, 0, [address], [(0, memoryview(parts[p]))]).ok == [address]
        h.master.call("commit_write", {"ino": ino, "size": 2 * MiB, "chunks": [
            {"chunk_id": c, "version": 1, "ok": servers, "parts": list(range(12))}]})  # fmt: skip

        def archive(state: str) -> int:
            return h.status()["chunks"]["by_class"]["archive"][state]

        assert archive(STABLE) == 1
        [chunk] = h.fileinfo("cold")["chunks"]
        assert sorted((x["part"], x["address"], x["valid"]) for x in chunk["copies"]) == [
            (p, servers[p], True) for p in range(12)]
        lost = servers[1]
        victim = h.node_of(lost)
        h.cluster.kill(victim.name)
        wait_for(f"{victim.name} down", lambda: archive(ENDANGERED) == 1, 10, 0.05)
        assert archive(STABLE) == archive(MISSING) == 0
        [chunk] = h.fileinfo("cold")["chunks"]
        assert sorted(x["part"] for x in chunk["copies"] if x["valid"]) == [p for p in range(12) if servers[p] != lost]
        for p, address in enumerate(servers):  # the 8 parts left are all there is to read
            if address != lost:
                assert bytes(b"".join(chunks.read(part_id(c, p), 1, 0, len(parts[p]), [address]))) == parts[p]
        h.cluster.restart(victim.name)
        wait_for(f"{victim.name} back with its parts", lambda: archive(STABLE) == 1, 15, 0.05)
        assert h.master.call("fileinfo", {"ino": ino})["progress"] == {"converted": 1, "total": 1}
    finally:
        chunks.close()
