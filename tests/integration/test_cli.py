"""The `mooseng` admin command against a real cluster: every command as text and as JSON, paths
through a mount and as mfs:/..., and user errors as one line on stderr with a non-zero exit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mooseng.constants import CHUNK_SIZE

pytestmark = pytest.mark.fuse

TOP = "cli-tree"


def mooseng(*args: str, master: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would; every run must be free of tracebacks."""
    cmd = [sys.executable, "-m", "mooseng.cli.main"] + (["--master", master] if master else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def fails(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """The error: exactly one line on stderr, nothing on stdout."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.strip()


@pytest.fixture(scope="module")
def tree(cluster) -> Path:
    """cli-tree/{big.bin (2 chunks), dir/a.bin, dir/sub/b.bin}, written through client-1."""
    top = cluster.mountpoint(1) / TOP
    (top / "dir" / "sub").mkdir(parents=True)
    (top / "big.bin").write_bytes(os.urandom(CHUNK_SIZE + 4096))
    (top / "dir" / "a.bin").write_bytes(os.urandom(1000))
    (top / "dir" / "sub" / "b.bin").write_bytes(os.urandom(1000))
    return top


@pytest.fixture(scope="module")
def master(cluster) -> str:
    return ",".join(cluster.master_endpoints)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- status / classes -----------------------------------------------------------------------------


def test_status_json(cluster, master, tree):
    status = json.loads(ok(mooseng("status", "--json", master=master)))
    [m] = status["masters"]
    assert {k: m[k] for k in ("endpoint", "role", "node_id", "leader", "lag")} == {
        "endpoint": cluster.master_endpoints[0], "role": "leader", "node_id": "master-1", "leader": "master-1", "lag": 0
    }
    assert m["term"] >= 1 and m["applied"] == m["commit"] >= 1
    servers = status["chunkservers"]
    assert [s["address"] for s in servers] == [n.addr("api") for n in cluster.nodes if n.kind == "chunkserver"]
    assert all(s["state"] == "alive" for s in servers)
    for s in servers:
        assert [Path(d["path"]).name for d in s["disks"]] == ["disk1", "disk2", "disk3", "disk4"]
        assert all(d["state"] == "ok" and d["total_bytes"] > 0 for d in s["disks"])
    default = status["chunks"]["by_class"]["default"]
    assert default["stable"] >= 2 and default["undergoal"] == default["missing"] == 0


def test_status_text(cluster, master, tree):
    out = ok(mooseng("status", master=master))
    assert f"{cluster.master_endpoints[0]}" in out and "leader" in out
    assert "chunkservers: 3 alive, 0 down" in out
    for node in cluster.nodes:
        if node.kind == "chunkserver":
            assert node.addr("api") in out
            assert str(node.dir / "disk4") in out
    assert "CLASS" in out and "default" in out
    assert any(line.split()[:1] == ["archive"] for line in out.splitlines()), "every class has its row"


def test_master_endpoints_default_from_the_environment(cluster, tree):
    out = ok(mooseng("status", env={"MOOSENG_MASTER_ENDPOINTS": ",".join(cluster.master_endpoints)}))
    assert "chunkservers: 3 alive" in out


def test_classes(master):
    classes = json.loads(ok(mooseng("classes", "--json", master=master)))
    assert [(c["name"], c["goal"], c["ec"], c["builtin"]) for c in classes][:3] == [
        ("default", 2, None, True), ("fast", 3, None, True), ("archive", 12, [8, 4], True),
    ]  # fmt: skip
    out = ok(mooseng("classes", master=master))
    assert "fast" in out and "3 copies" in out and "erasure coding 8+4" in out


def test_class_create_list_and_delete(master, tree):
    made = json.loads(ok(mooseng("class", "create", "cold6", "--ec", "4+2", "--tier", "cold", "--json",
                                 master=master)))
    assert (made["name"], made["goal"], made["ec"], made["builtin"]) == ("cold6", 6, [4, 2], False)
    out = ok(mooseng("class", "create", "single", "--copies", "1", master=master))
    assert out == "created storage class single: 1 copy, tier standard\n"
    listed = ok(mooseng("classes", master=master))
    assert "erasure coding 4+2" in listed and "single" in listed
    path = tree / "dir" / "a.bin"
    ok(mooseng("setclass", "cold6", str(path), master=master))
    assert fails(mooseng("class", "delete", "cold6", master=master)) == (
        "mooseng: class delete cold6: storage class 'cold6' is used by 1 inode")
    ok(mooseng("setclass", "default", str(path), master=master))
    assert ok(mooseng("class", "delete", "cold6", master=master)) == "deleted storage class cold6\n"
    assert ok(mooseng("class", "delete", "single", master=master)) == "deleted storage class single\n"
    names = [c["name"] for c in json.loads(ok(mooseng("classes", "--json", master=master)))]
    assert names == ["default", "fast", "archive"]


def test_class_create_refuses_bad_input(master):
    assert fails(mooseng("class", "create", "z", "--ec", "0+4", master=master)) == (
        "mooseng: class create z: storage class 'z': ec must be K+M with K, M >= 1, got (0, 4)")
    assert fails(mooseng("class", "create", "z", "--ec", "30+3", master=master)) == (
        "mooseng: class create z: storage class 'z': ec 30+3 has more than 32 parts")
    assert fails(mooseng("class", "create", "archive", "--copies", "2", master=master)) == (
        "mooseng: class create archive: storage class 'archive' exists")
    assert fails(mooseng("class", "create", "a b", "--copies", "2", master=master)).startswith(
        "mooseng: class create a b: bad storage class name 'a b'")
    assert fails(mooseng("class", "delete", "archive", master=master)) == (
        "mooseng: class delete archive: storage class 'archive' is built in")
    assert fails(mooseng("class", "delete", "gold", master=master)) == (
        "mooseng: class delete gold: no storage class 'gold'")
    assert fails(mooseng("class", "create", "z", "--ec", "8x4", master=master), 2) == (
        "mooseng: class create: --ec: expected K+M (data+parity parts, e.g. 8+4), got '8x4'")
    assert fails(mooseng("class", "create", "z", "--ec", "8+4", "--copies", "2", master=master), 2) == (
        "mooseng: class create: give exactly one of --copies N or --ec K+M")
    assert mooseng("class", "rename", "z", master=master).returncode == 2


def test_status_shows_a_dead_chunkserver_and_undergoal_chunks(cluster_factory):
    cluster = cluster_factory(clients=1, env_extra={"MOOSENG_CHUNKSERVER_TIMEOUT_S": "1"})
    (cluster.mountpoint(1) / "f").write_bytes(os.urandom(3 * CHUNK_SIZE // 2))  # 2 chunks, 2 copies
    cluster.kill("chunkserver-1")
    master = cluster.master_endpoints[0]
    deadline = time.monotonic() + 15
    while True:
        status = json.loads(ok(mooseng("status", "--json", master=master)))
        if status["chunkservers"][0]["state"] == "down" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [s["state"] for s in status["chunkservers"]] == ["down", "alive", "alive"]
    default = status["chunks"]["by_class"]["default"]
    assert default["missing"] == 0 and default["stable"] + default["endangered"] == 2
    out = ok(mooseng("status", master=master))
    assert "chunkservers: 2 alive, 1 down" in out


# --- fileinfo -------------------------------------------------------------------------------------


def test_fileinfo_json_lists_every_chunk_and_copy(cluster, master, tree):
    info = json.loads(ok(mooseng("fileinfo", "--json", str(tree / "big.bin"), master=master)))
    assert info["path"] == str(tree / "big.bin")
    assert info["attr"]["size"] == CHUNK_SIZE + 4096
    assert info["class"]["name"] == "default"
    assert [c["index"] for c in info["chunks"]] == [0, 1]
    chunkservers = {n.addr("api") for n in cluster.nodes if n.kind == "chunkserver"}
    for chunk in info["chunks"]:
        copies = chunk["copies"]
        assert len(copies) == 2 and all(c["valid"] for c in copies)
        assert len({c["address"] for c in copies}) == 2 and {c["address"] for c in copies} <= chunkservers


def test_fileinfo_through_another_mount_and_as_mfs_path_agree(cluster, master, tree):
    via_client1 = json.loads(ok(mooseng("fileinfo", "--json", str(tree / "big.bin"), master=master)))
    via_client3 = json.loads(
        ok(mooseng("fileinfo", "--json", str(cluster.mountpoint(3) / TOP / "big.bin"), master=master))
    )
    via_mfs = json.loads(ok(mooseng("fileinfo", "--json", f"mfs:/{TOP}/dir/../big.bin", master=master)))
    for other in (via_client3, via_mfs):
        assert other["inode"] == via_client1["inode"]
        assert other["chunks"] == via_client1["chunks"]


def test_fileinfo_text(master, tree):
    out = ok(mooseng("fileinfo", str(tree / "big.bin"), master=master))
    lines = out.splitlines()
    assert lines[0].startswith(f"{tree / 'big.bin'}: inode ") and "class default (2 copies)" in lines[0]
    assert sum(1 for line in lines if line.startswith("\tchunk ")) == 2
    assert sum(1 for line in lines if line.startswith("\t\tcopy ") and line.endswith(": VALID")) == 4


def test_fileinfo_of_a_directory_has_no_chunks(master, tree):
    out = ok(mooseng("fileinfo", str(tree / "dir"), master=master))
    assert out.splitlines()[1] == "\tno chunks"


# --- getclass / setclass --------------------------------------------------------------------------


def test_setclass_recursive_and_not(master, tree):
    def getclass(path: Path) -> str:
        return json.loads(ok(mooseng("getclass", "--json", str(path), master=master)))["class"]

    assert ok(mooseng("getclass", str(tree / "dir"), master=master)) == f"{tree / 'dir'}: default\n"
    done = json.loads(ok(mooseng("setclass", "-r", "fast", str(tree / "dir"), "--json", master=master)))
    assert (done["class"], done["recursive"], done["changed"], done["skipped"]) == ("fast", True, 4, 0)
    assert [getclass(p) for p in (tree / "dir", tree / "dir/a.bin", tree / "dir/sub/b.bin")] == ["fast"] * 3
    assert getclass(tree / "big.bin") == "default"

    out = ok(mooseng("setclass", "default", str(tree / "dir"), master=master))
    assert out == f"{tree / 'dir'}: default (1 inode changed)\n"
    assert getclass(tree / "dir") == "default" and getclass(tree / "dir/sub/b.bin") == "fast"
    assert getclass(f"mfs:/{TOP}/dir/sub") == "fast"


def test_setclass_archive_on_a_written_file_starts_its_conversion(master, tree):
    """Through the mount path, as for copies; the chunks convert in the background (the master
    orders the parts built), and fileinfo shows how far that got."""
    path = tree / "cold.bin"
    path.write_bytes(os.urandom(1000))
    assert ok(mooseng("setclass", "archive", str(path), master=master)) == f"{path}: archive (1 inode changed)\n"
    info = json.loads(ok(mooseng("fileinfo", "--json", str(path), master=master)))
    assert (info["class"]["name"], info["class"]["ec"], info["progress"]["total"]) == ("archive", [8, 4], 1)
    [chunk] = info["chunks"]
    assert chunk["target"] == [8, 4]
    if info["progress"]["converted"] == 0:
        assert chunk["ec"] is None
        assert "converting to parts 8+4" in ok(mooseng("fileinfo", str(path), master=master))


# --- user errors ----------------------------------------------------------------------------------


def test_unknown_path(master, tree):
    path = str(tree / "nope")
    for command in (["fileinfo"], ["getclass"], ["setclass", "fast"]):
        assert fails(mooseng(*command, path, master=master)) == f"mooseng: no such file: {path}"
    mfs_path = f"mfs:/{TOP}/nope/x"
    assert fails(mooseng("getclass", mfs_path, master=master)) == f"mooseng: no such file: {mfs_path}"


def test_path_outside_any_mount(master, tmp_path):
    assert fails(mooseng("getclass", str(tmp_path), master=master)).startswith(
        f"mooseng: not inside a MooseNG mount: {tmp_path}"
    )
    assert fails(mooseng("getclass", "mfs:relative", master=master)).startswith("mooseng: not an absolute")


def test_unknown_class(master, tree):
    assert fails(mooseng("setclass", "gold", str(tree), master=master)) == (
        "mooseng: no such storage class: gold (classes: default, fast, archive)"
    )


def test_master_down():
    endpoint = f"127.0.0.1:{free_port()}"
    for command in (["status"], ["classes", "--json"], ["getclass", "mfs:/x"]):
        proc = mooseng("--timeout", "1", *command, master=endpoint)
        assert fails(proc) == f"mooseng: master {endpoint} unreachable"


def test_bad_usage_exits_2():
    proc = mooseng("status", master="not-an-endpoint")
    assert proc.returncode == 2 and "--master: not host:port" in proc.stderr
    assert mooseng("frobnicate").returncode == 2


def test_mount_path_of_another_cluster_is_refused(cluster_factory, cluster, tree):
    """--master must be the mount's cluster: acting on another cluster's file of the same name
    (setclass -r!) would be wrong. The other cluster gets a same-named directory at another inode."""
    other = cluster_factory(chunkservers=1, clients=1)
    twin = other.mountpoint(1) / TOP
    twin.mkdir()
    if twin.stat().st_ino == tree.stat().st_ino:  # the master never reuses an inode number
        twin.rmdir()
        twin.mkdir()
    message = fails(mooseng("setclass", "-r", "fast", str(tree), master=other.master_endpoints[0]))
    assert message.startswith(f"mooseng: {tree} is inode {tree.stat().st_ino} in its mount but inode ")
    assert "another cluster" in message
