"""A real mooseng-master process driven with raw rpc calls: namespace ops, malformed requests, fake
chunkservers (rpc servers answering set_version), crash recovery after kill -9, metrics, and
start-up failures."""

import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest

from mooseng import rpc
from mooseng.ec import part_id
from mooseng.master.service import SET_VERSION_TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]
GiB = 1 << 30
S_IFREG = 0o100000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Master:
    """One mooseng-master process on free loopback ports; restartable on the same data dir."""

    def __init__(self, tmp_path: Path, timeout_s: float = 10.0, extra: str = ""):
        self.dir = tmp_path
        self.listen = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.config = tmp_path / "master.toml"
        self.config.write_text(
            "[master]\n"
            f'listen = "{self.listen}"\n'
            f'metrics_listen = "{self.metrics}"\n'
            f'raft_listen = "127.0.0.1:{free_port()}"\n'
            f'data_dir = "{tmp_path / "data"}"\n'
            f"chunkserver_timeout_s = {timeout_s}\n" + extra
        )
        self.proc: subprocess.Popen | None = None
        self.client: rpc.Client | None = None
        self.starts = 0

    def start(self) -> "Master":
        self.starts += 1
        self.log = self.dir / f"master.{self.starts}.log"
        self.proc = spawn(["-c", str(self.config)], self.log)
        self.client = rpc.Client(self.listen, timeout_s=10, connect_timeout_s=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.call("meta", {"op": "getattr", "args": {"ino": 1}})
                return self
            except rpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"master did not start:\n{self.log.read_text()}") from None
                time.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.client.close()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; returns the exit code."""
        if self.client is not None:
            self.client.close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, method: str, params: dict):
        return self.client.call(method, params)[0]

    def meta(self, op, uid=0, gid=0, **args):
        reply = self.call("meta", {"op": op, "args": args, "uid": uid, "gid": gid, "gids": []})
        assert not reply["leader"]
        return reply["errno"], reply["result"], reply["message"]

    def ok(self, op, **args):
        code, result, message = self.meta(op, **args)
        assert code == 0, f"{op} {args}: errno {code} {message}"
        return result

    def last_index(self) -> int:
        return self.ok("status")["master"]["metadata"]["last_index"]

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as r:
            return r.read().decode()


def spawn(args, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemons"))
    env = {k: v for k, v in env.items() if not k.startswith("MOOSENG_")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mooseng.master.main", *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )


@pytest.fixture
def masters(tmp_path):
    """Factory of masters; every process it started is stopped by pid, also when a test fails."""
    made = []

    def make(name="m", **kw):
        path = tmp_path / name
        path.mkdir()
        m = Master(path, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


@pytest.fixture
def master(masters):
    return masters().start()


@pytest.fixture(scope="module")
def shared_master(tmp_path_factory):
    """One master for many small tests that only need it to stay up."""
    m = Master(tmp_path_factory.mktemp("shared"))
    try:
        yield m.start()
    finally:
        m.stop()


class FakeChunkserver:
    """A chunkserver's `set_version` (the spec the real one implements) over copies in memory.

    mode "ok" answers; "refuse" fails every call with FAILED_PRECONDITION; "late" applies the call
    only after the master gave up waiting, as a stalled disk would.
    """

    def __init__(self):
        self.copies: dict[int, list] = {}  # chunk_id -> [version, data]
        self.mode = "ok"
        self.calls = 0
        self.server = rpc.Server("127.0.0.1:0", {"set_version": self.set_version, "read": self.read}).start()
        self.address = f"127.0.0.1:{self.server.port}"

    def set_version(self, params, data, peer):
        self.calls += 1
        if self.mode == "refuse":
            raise rpc.RpcError(rpc.FAILED_PRECONDITION, "refused for the test")
        if self.mode == "late":
            time.sleep(SET_VERSION_TIMEOUT_S + 0.5)
        copy = self.copies.get(params["chunk_id"])
        if copy is None:
            raise rpc.RpcError(rpc.NOT_FOUND, "no such chunk")
        if copy[0] not in (params["expect_version"], params["version"]):
            raise rpc.RpcError(rpc.FAILED_PRECONDITION, f"copy is at version {copy[0]}")
        copy[0] = params["version"]
        return {}

    def read(self, params, data, peer):
        """What a client read at `version` gets: the data, or a refusal of a copy at another version."""
        copy = self.copies.get(params["chunk_id"])
        if copy is None or copy[0] != params["version"]:
            raise rpc.RpcError(rpc.FAILED_PRECONDITION, f"copy is at version {copy and copy[0]}")
        return copy[1]

    def version(self, chunk_id):
        return self.copies[chunk_id][0]

    def stop(self):
        self.server.stop()


@pytest.fixture
def fakes():
    """Three fake chunkservers, by server id."""
    made = {sid: FakeChunkserver() for sid in (1, 2, 3)}
    yield made
    for fake in made.values():
        fake.stop()


def disk(index=0, free=50 * GiB, total=100 * GiB):
    used = total - free
    return {"index": index, "path": f"/d{index}", "total_bytes": total, "used_bytes": used,
            "free_bytes": free, "state": "ok", "chunks": 0}  # fmt: skip


def ref(chunk_id, version):
    return {"chunk_id": chunk_id, "version": version, "disk": 0, "length": 0}


def register(m, sid, cluster="mooseng", chunks=(), address=None, disks=None):
    params = {
        "cluster_id": cluster,
        "server_id": sid,
        "address": address or f"127.0.0.1:{9400 + sid}",
        "disks": disks or [disk()],
        "chunks": [ref(c, v) for c, v in chunks],
    }
    return m.call("register", params)["session"]


def report(chunk_id, version, ok):
    """One entry of commit_write's `chunks`: the copies a client stored."""
    return {"chunk_id": chunk_id, "version": version, "ok": ok}


def heartbeat(m, sid, session, added=(), read=0, written=0):
    params = {
        "server_id": sid,
        "session": session,
        "disks": [disk()],
        "added": [ref(c, v) for c, v in added],
        "removed": [],
        "bytes_read": read,
        "bytes_written": written,
    }
    reply = m.call("heartbeat", params)
    return reply["reregister"], sorted((d["chunk_id"], d["version"]) for d in reply["delete"])


def status_of(call) -> int:
    with pytest.raises(rpc.RpcError) as exc:
        call()
    return exc.value.status


def read_back(chunk):
    """What a client reading the chunk as the master lists it gets from each listed copy."""
    out = []
    for address in chunk["servers"]:
        client = rpc.Client(address)
        try:
            out.append(client.call("read", {"chunk_id": chunk["chunk_id"], "version": chunk["version"]})[0])
        finally:
            client.close()
    return out


# --- namespace over the wire ----------------------------------------------------------------------


def test_namespace_ops_and_errnos(master):
    d = master.ok("mkdir", parent=1, name=b"dir", mode=0o755)
    f = master.ok("mknod", parent=d["ino"], name=b"file", mode=S_IFREG | 0o644)
    assert master.ok("lookup", parent=d["ino"], name=b"file")["ino"] == f["ino"]
    assert [e[0] for e in master.ok("readdir", ino=d["ino"])] == [b"file"]
    master.ok("rename", parent=d["ino"], name=b"file", newparent=1, newname=b"moved")
    assert master.meta("lookup", parent=d["ino"], name=b"file")[0] == errno.ENOENT
    assert master.ok("lookup", parent=1, name=b"moved")["ino"] == f["ino"]
    assert master.ok("unlink", parent=1, name=b"moved")["freed"] == []
    code, _, message = master.meta("lookup", parent=1, name=b"moved")
    assert code == errno.ENOENT and "moved" in message
    assert master.meta("mkdir", parent=1, name=b"dir", mode=0o755)[0] == errno.EEXIST
    assert master.meta("mknod", parent=1, name=b"x" * 256, mode=S_IFREG | 0o644)[0] == errno.ENAMETOOLONG
    assert master.meta("mkdir", parent=d["ino"], name=b"denied", mode=0o755, uid=1000, gid=1000)[0] == errno.EACCES
    assert master.ok("statfs")["inodes"] == 2
    assert master.ok("readdir", ino=1, offset=None, limit=None)[0][0] == b"dir", "nil optional args: defaults"


def test_write_without_chunkservers_is_enospc_and_allocates_nothing(master):
    f = master.ok("mknod", parent=1, name=b"f", mode=S_IFREG | 0o644)
    code, _, message = master.meta("write_chunk", ino=f["ino"], index=0)
    assert code == errno.ENOSPC and "no chunkserver with free space" in message
    assert master.ok("chunks", ino=f["ino"], index=0) == [{"index": 0, "chunk_id": 0, "version": 0, "servers": []}]


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"op": "nosuchop", "args": {}}, "unknown op"),
        ({"op": "mkdir", "args": [1, 2, 3]}, "args must be a map"),
        ({"op": "mkdir", "args": {"parent": "1", "name": b"a", "mode": 0o755}}, "'parent' must be an unsigned integer"),
        ({"op": "mkdir", "args": {"parent": 1, "name": "a", "mode": 0o755}}, "'name' must be bytes"),
        ({"op": "mkdir", "args": {"parent": 1, "name": b"a", "mode": -1}}, "'mode' must be an unsigned integer"),
        ({"op": "mkdir", "args": {"parent": 1, "name": b"a", "mode": True}}, "'mode' must be an unsigned integer"),
        ({"op": "mkdir", "args": {"parent": 1, "name": b"a"}}, "missing arg 'mode'"),
        ({"op": "mkdir", "args": {"parent": 1, "name": b"a", "mode": 1, "evil": 1}}, "unknown arg 'evil'"),
        ({"op": "setattr", "args": {"ino": 1, "atime": "yesterday"}}, "'atime' must be nanoseconds or 'now'"),
        ({"op": "commit_write", "args": {"ino": 2, "size": 1, "chunks": [{"chunk_id": 1}]}}, "'chunks' must be"),
        ({"op": "lookup", "args": {"parent": 1, "name": b"a", 7: 1}}, "unknown arg 7"),
        ({"op": "class_create", "args": {"name": "x", "ec": "8+4"}}, "'ec' must be [k, m]"),
        ({"op": "class_create", "args": {"name": "x", "ec": [8, 4, 1]}}, "'ec' must be [k, m]"),
        ({"op": "class_create", "args": {"name": "x", "copies": -1}}, "'copies' must be an unsigned integer"),
        ({"op": "set_layout", "args": {"chunk_id": 1, "version": 1}}, "unknown op 'set_layout'"),
        ({"op": "commit_write", "args": {"ino": 2, "size": 1, "chunks": [
            {"chunk_id": 1, "version": 1, "ok": ["a:1"], "parts": [0, 1]}]}}, "'chunks' must be"),
        ({"args": {}}, "missing arg 'op'"),
        ({"op": ["getattr"], "args": {"ino": 1}}, "'op' must be a string"),
        ({"op": "getattr"}, "missing arg 'args'"),
        ({"op": "getattr", "args": {"ino": 1}, "uid": -1}, "'uid' must be an unsigned 32-bit integer"),
        ({"op": "getattr", "args": {"ino": 1}, "gids": [1, "2"]}, "'gids' must be a list"),
        ({"op": "getattr", "args": {"ino": 1}, "cookie": 1}, "unknown arg 'cookie'"),
    ],
)
def test_malformed_requests_are_invalid_argument(shared_master, params, fragment):
    with pytest.raises(rpc.RpcError) as exc:
        shared_master.call("meta", params)
    assert exc.value.status == rpc.INVALID_ARGUMENT
    assert fragment in exc.value.message
    assert shared_master.alive()
    assert shared_master.ok("getattr", ino=1)["ino"] == 1


def test_garbage_on_the_wire_is_refused_and_the_master_survives(shared_master):
    host, port = shared_master.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(rpc.MAGIC)
        junk = b"\xc1\xff\x00garbage"
        raw.sendall(struct.pack("<II", len(junk), 0) + junk)
        header_len, _ = struct.unpack("<II", raw.recv(8))
        status, message, _ = msgpack.unpackb(raw.recv(header_len))
        assert status == rpc.INVALID_ARGUMENT and "malformed" in message
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not a MooseNG peer: dropped
        try:
            assert raw.recv(1) == b""
        except ConnectionResetError:
            pass
    assert status_of(lambda: shared_master.call("nosuchmethod", {})) == rpc.INVALID_ARGUMENT
    assert shared_master.alive()
    assert shared_master.ok("getattr", ino=1)["ino"] == 1


def test_malformed_requests_never_reach_the_log(shared_master):
    before = shared_master.last_index()
    for _ in range(3):
        bad = {"op": "mkdir", "args": {"parent": 1, "name": b"a"}}
        assert status_of(lambda: shared_master.call("meta", bad)) == rpc.INVALID_ARGUMENT
    assert shared_master.last_index() == before


# --- chunkservers ---------------------------------------------------------------------------------


def test_registration_rules(master):
    with pytest.raises(rpc.RpcError) as exc:
        register(master, 1, cluster="other")
    assert exc.value.status == rpc.FAILED_PRECONDITION
    assert "'other'" in exc.value.message
    register(master, 1)
    assert status_of(lambda: register(master, 1, address="127.0.0.1:1")) == rpc.ALREADY_EXISTS
    assert status_of(lambda: register(master, 2, address="nowhere")) == rpc.INVALID_ARGUMENT
    assert status_of(lambda: register(master, 0)) == rpc.INVALID_ARGUMENT
    assert heartbeat(master, 3, 12345) == (True, []), "unknown session must re-register"
    log = master.log.read_text()
    assert "refused registration" in log and "belongs to cluster 'other'" in log


GOOD_REGISTER = {"cluster_id": "mooseng", "server_id": 7, "address": "127.0.0.1:9407", "disks": [disk()],
                 "chunks": [ref(1, 1)]}  # fmt: skip
GOOD_HEARTBEAT = {"server_id": 7, "session": 1, "disks": [disk()], "added": [ref(1, 1)], "removed": [],
                  "bytes_read": 0, "bytes_written": 0}  # fmt: skip


@pytest.mark.parametrize(
    "method, change, fragment",
    [
        ("register", {"server_id": 1 << 32}, "'server_id' must be an unsigned 32-bit integer"),
        ("register", {"cluster_id": b"mooseng"}, "'cluster_id' must be a string"),
        ("register", {"address": None}, "'address' must be a string"),
        ("register", {"disks": {"index": 0}}, "'disks' must be a list of"),
        ("register", {"disks": [{**disk(), "total_bytes": -1}]}, "'disks' must be a list of"),
        ("register", {"disks": [{**disk(), "extra": 1}]}, "'disks' must be a list of"),
        ("register", {"chunks": [{"chunk_id": "1", "version": 1, "disk": 0}]}, "'chunks' must be a list of"),
        ("register", {"chunks": [{"chunk_id": 1, "version": 1}]}, "'chunks' must be a list of"),
        ("register", {"chunks": [[1, 1, 0]]}, "'chunks' must be a list of"),
        ("register", {"surprise": 1}, "unknown arg 'surprise'"),
        ("heartbeat", {"session": -1}, "'session' must be an unsigned integer"),
        ("heartbeat", {"added": [{"chunk_id": 1, "version": 1.5, "disk": 0}]}, "'added' must be a list of"),
        ("heartbeat", {"removed": None}, "'removed' must be a list of"),
        ("heartbeat", {"bytes_read": True}, "'bytes_read' must be an unsigned integer"),
        ("heartbeat", {"disks": [{**disk(), "state": 1}]}, "'disks' must be a list of"),
        ("heartbeat", {"damaged": [{**ref(1, 1), "damaged": "yes"}]}, "'damaged' must be a list of"),
        ("heartbeat", {"replicated": [{"chunk_id": 1, "version": 1, "bytes": 5}]}, "'replicated' must be a list of"),
        ("heartbeat", {"replicated": [{"chunk_id": 1, "version": 1, "bytes": 5, "error": 0}]},
         "'replicated' must be a list of"),
        ("heartbeat", {"built": [{"chunk_id": 1, "part": 32, "version": 1, "bytes": 5, "error": ""}]},
         "'built' must be a list of"),
        ("heartbeat", {"built": [{"chunk_id": 1, "part": -2, "version": 1, "bytes": 5, "error": ""}]},
         "'built' must be a list of"),
        ("heartbeat", {"built": [{"chunk_id": 1, "version": 1, "bytes": 5, "error": ""}]}, "'built' must be a list of"),
    ],
)
def test_malformed_chunkserver_reports_are_invalid_argument(shared_master, method, change, fragment):
    params = {**(GOOD_REGISTER if method == "register" else GOOD_HEARTBEAT), **change}
    with pytest.raises(rpc.RpcError) as exc:
        shared_master.call(method, params)
    assert exc.value.status == rpc.INVALID_ARGUMENT
    assert fragment in exc.value.message
    assert shared_master.alive()
    assert shared_master.ok("getattr", ino=1)["ino"] == 1


def test_write_path_with_fake_chunkservers(master, fakes):
    sessions = {sid: register(master, sid, address=fake.address) for sid, fake in fakes.items()}
    by_address = {fake.address: sid for sid, fake in fakes.items()}
    f = master.ok("mknod", parent=1, name=b"data", mode=S_IFREG | 0o644)
    ino = f["ino"]

    w = master.ok("write_chunk", ino=ino, index=0)
    chunk_id = w["chunk_id"]
    assert w["new"] and w["version"] == 1 and w["expect_version"] == 0
    assert len(w["servers"]) == 2 and set(w["servers"]) <= set(by_address)  # default class: 2 copies
    for address in w["servers"]:  # what the client's write does
        fakes[by_address[address]].copies[chunk_id] = [1, b"v1"]
    attr = master.ok("commit_write", ino=ino, size=1000, chunks=[report(chunk_id, 1, w["servers"])])
    assert attr["size"] == 1000
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["chunk_id"] == chunk_id and sorted(chunk["servers"]) == sorted(w["servers"])

    # Rewrite: the holders take version 2 before the master logs it; the write goes out at 2.
    # (The commit below that misses a copy moves the chunk on to version 3.)
    again = master.ok("write_chunk", ino=ino, index=0)
    assert not again["new"] and (again["version"], again["expect_version"]) == (2, 2)
    assert sorted(again["servers"]) == sorted(w["servers"])
    assert [fakes[by_address[a]].version(chunk_id) for a in again["servers"]] == [2, 2]
    # The write fails on one copy: it has version 2 without the data, so it is fenced.
    good, bad = again["servers"]
    fakes[by_address[good]].copies[chunk_id][1] = b"v2"
    master.ok("commit_write", ino=ino, size=1000, chunks=[report(chunk_id, 2, [good])])
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["servers"] == [good] and read_back(chunk) == [b"v2"] and chunk["version"] == 3
    bad_id, good_id = by_address[bad], by_address[good]
    assert heartbeat(master, bad_id, sessions[bad_id], added=[(chunk_id, 2)]) == (False, [(chunk_id, 2)])
    # A chunk the namespace never heard of is deleted too.
    assert heartbeat(master, 1, sessions[1], added=[(999, 1)]) == (False, [(999, 1)])

    info = master.ok("fileinfo", ino=ino)
    assert info["class"]["name"] == "default" and info["attr"]["size"] == 1000
    [chunk] = info["chunks"]
    # The commit moved the copy with the data on to version 3 (logged): the missed one is stale.
    assert [(c["address"], c["version"], c["valid"]) for c in chunk["copies"]] == [(good, 3, True)]
    assert fakes[by_address[good]].version(chunk_id) == 3

    # A class with 3 copies places a new chunk on all three servers.
    assert master.ok("setclass", ino=ino, sclass="fast")["changed"] == 1
    w1 = master.ok("write_chunk", ino=ino, index=1)
    assert sorted(w1["servers"]) == sorted(by_address)
    # An erasure-coded class needs 12 disks; three servers of one disk cannot take a new chunk.
    assert master.ok("setclass", ino=ino, sclass="archive")["changed"] == 1
    code, _, message = master.meta("write_chunk", ino=ino, index=2)
    assert (code, message) == (errno.ENOSPC, "storage class 'archive' (erasure coding 8+4) needs 12 disks with "
                                             "8 MiB free on live chunkservers; the cluster has 3")
    master.ok("setclass", ino=ino, sclass="fast")

    # Chunk 1 was never committed: no copy, so another write session cannot start.
    code, _, message = master.meta("write_chunk", ino=ino, index=1)
    assert code == errno.EIO and f"no valid copy of chunk {w1['chunk_id']}" in message

    status = master.ok("status")
    assert status["master"]["role"] == "leader"
    assert [s["state"] for s in status["chunkservers"]] == ["alive"] * 3
    assert status["chunks"]["by_class"]["fast"] == {
        "stable": 0, "undergoal": 0, "endangered": 1, "missing": 1, "overgoal": 0, "deleting": 0}
    statfs = master.ok("statfs")
    assert statfs["total_bytes"] == 3 * 100 * GiB and statfs["free_bytes"] == 3 * 50 * GiB

    # Unlinking frees the chunks; holders are told to delete them at their next heartbeat.
    assert sorted(master.ok("unlink", parent=1, name=b"data")["freed"]) == sorted([chunk_id, w1["chunk_id"]])
    assert heartbeat(master, good_id, sessions[good_id]) == (False, [(chunk_id, 3)])


def written_file(master, fakes, name=b"f", data=b"v1", size=1000):
    """A file whose chunk 0 is stored at version 1 on two fakes: (ino, chunk_id, servers)."""
    by_address = {fake.address: fake for fake in fakes.values()}
    ino = master.ok("mknod", parent=1, name=name, mode=S_IFREG | 0o644)["ino"]
    w = master.ok("write_chunk", ino=ino, index=0)
    for address in w["servers"]:
        by_address[address].copies[w["chunk_id"]] = [1, data]
    master.ok("commit_write", ino=ino, size=size, chunks=[report(w["chunk_id"], 1, w["servers"])])
    return ino, w["chunk_id"], [by_address[a] for a in w["servers"]]


def test_abandoned_write_session_leaves_the_chunk_readable(master, fakes):
    """A client that got write_chunk and never wrote (died, or every copy failed the write):
    the copies already carry the new version, so the chunk still reads, at its old data."""
    sessions = {sid: register(master, sid, address=fake.address) for sid, fake in fakes.items()}
    ino, chunk_id, holders = written_file(master, fakes)
    w = master.ok("write_chunk", ino=ino, index=0)
    assert (w["version"], w["expect_version"]) == (2, 2)
    # ... and nothing more from that client.
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["version"] == 2 and sorted(chunk["servers"]) == sorted(f.address for f in holders)
    assert read_back(chunk) == [b"v1", b"v1"]
    for sid, fake in fakes.items():
        added = [(chunk_id, fake.version(chunk_id))] if chunk_id in fake.copies else []
        assert heartbeat(master, sid, sessions[sid], added=added) == (False, []), "no copy is stale"
    assert master.ok("status")["chunks"]["by_class"]["default"] == {
        "stable": 1, "undergoal": 0, "endangered": 0, "missing": 0, "overgoal": 0, "deleting": 0}
    # The next session carries on from there.
    w = master.ok("write_chunk", ino=ino, index=0)
    assert (w["version"], w["expect_version"]) == (3, 3) and [f.version(chunk_id) for f in holders] == [3, 3]


def test_one_writer_per_chunk_others_get_eagain_until_it_commits(master, fakes):
    """The write lease (writelease.py): EAGAIN, with nothing bumped or logged, for another
    client's write_chunk or shrink of a chunk being written; the holder itself goes on."""
    for sid, fake in fakes.items():
        register(master, sid, address=fake.address)
    ino, chunk_id, holders = written_file(master, fakes)
    seqs = {1: 0, 2: 0}

    def meta(client, op, **args):
        seqs[client] += 1
        reply = master.call("meta", {"op": op, "args": args, "client_id": client, "seq": seqs[client]})
        return reply["errno"], reply["result"], reply["message"]

    code, first, _ = meta(1, "write_chunk", ino=ino, index=0)
    assert code == 0 and first["version"] == 2
    before = master.last_index()
    code, _, message = meta(2, "write_chunk", ino=ino, index=0)
    assert code == errno.EAGAIN and f"chunk {chunk_id} of inode {ino} is locked" in message
    assert meta(2, "setattr", ino=ino, size=10)[0] == errno.EAGAIN  # a shrink would cut it
    assert master.last_index() == before and [f.version(chunk_id) for f in holders] == [2, 2]
    code, own, _ = meta(1, "write_chunk", ino=ino, index=0)  # the holder's next session
    assert code == 0 and own["version"] == 3
    assert meta(1, "commit_write", ino=ino, size=1000, chunks=[report(chunk_id, 3, own["servers"])])[0] == 0
    code, second, _ = meta(2, "write_chunk", ino=ino, index=0)
    assert code == 0 and second["version"] == 4
    assert meta(1, "write_chunk", ino=ino, index=0)[0] == errno.EAGAIN
    # A session that failed gives the lease back without a commit.
    assert meta(2, "release_write", ino=ino, chunk_id=chunk_id, version=4) == (0, {}, "")
    code, third, _ = meta(1, "write_chunk", ino=ino, index=0)
    assert code == 0 and third["version"] == 5


def test_erasure_coded_chunks_with_fake_chunkservers(masters, fakes):
    """archive (8+4) on three servers of four disks: a new chunk's 12 parts go 4 to a server; a
    commit records the parts each server stored, a rewrite moves every valid part to the new
    version, a part that missed the write is left behind (the stored parts move on to the next
    version), fileinfo lists the parts, and the healer
    orders the missing parts rebuilt from 8 others; the built reports complete the chunk."""
    master = masters(timeout_s=2.0).start()
    four = [disk(i) for i in range(4)]
    sessions = {sid: register(master, sid, address=fake.address, disks=four) for sid, fake in fakes.items()}
    by_address = {fake.address: sid for sid, fake in fakes.items()}
    ino = master.ok("mknod", parent=1, name=b"cold", mode=S_IFREG | 0o644)["ino"]
    master.ok("setclass", ino=ino, sclass="archive")
    w = master.ok("write_chunk", ino=ino, index=0)
    c = w["chunk_id"]
    assert w["ec"] == [8, 4] and len(w["servers"]) == 12
    assert sorted(w["servers"].count(a) for a in by_address) == [4, 4, 4]
    assert len(set(w["servers"][:3])) == 3, "the data parts take the servers in turn"
    parts = [p for p in range(12) if p != 5]  # part 5's write failed
    for p in parts:
        fakes[by_address[w["servers"][p]]].copies[part_id(c, p)] = [1, b"part %d" % p]
    bad = {"chunk_id": c, "version": 1, "ok": w["servers"], "parts": [0]}
    with pytest.raises(rpc.RpcError) as info:
        master.call("meta", {"op": "commit_write", "args": {"ino": ino, "size": 1000, "chunks": [bad]}})
    assert info.value.status == rpc.INVALID_ARGUMENT
    master.ok("commit_write", ino=ino, size=1000,
              chunks=[{"chunk_id": c, "version": 1, "ok": [w["servers"][p] for p in parts], "parts": parts}])
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["ec"] == [8, 4] and chunk["servers"] == [w["servers"][p] if p != 5 else "" for p in range(12)]

    again = master.ok("write_chunk", ino=ino, index=0)
    assert (again["version"], again["expect_version"], again["servers"]) == (2, 2, chunk["servers"])
    assert [fakes[by_address[w["servers"][p]]].version(part_id(c, p)) for p in parts] == [2] * 11
    stored = [p for p in parts if p != 7]  # part 7 took the version but missed the data
    master.ok("commit_write", ino=ino, size=1000,
              chunks=[{"chunk_id": c, "version": 2, "ok": [w["servers"][p] for p in stored], "parts": stored}])
    assert [fakes[by_address[w["servers"][p]]].version(part_id(c, p)) for p in parts] == [
        2 if p == 7 else 3 for p in parts]
    info = master.ok("fileinfo", ino=ino)
    [chunk] = info["chunks"]
    assert (chunk["ec"], chunk["target"], chunk["state"], chunk["version"]) == ([8, 4], [8, 4], "undergoal", 3)
    assert [(x["part"], x["valid"], x["state"]) for x in chunk["copies"]] == [
        (p, p != 7, "stale" if p == 7 else "valid") for p in parts]
    assert info["progress"] == {"converted": 1, "total": 1}
    assert master.ok("status")["chunks"]["by_class"]["archive"]["undergoal"] == 1

    orders, deadline = [], time.monotonic() + 20
    while len(orders) < 2 and time.monotonic() < deadline:
        for sid, session in sessions.items():
            reply = master.call("heartbeat", {"server_id": sid, "session": session, "disks": [], "added": [],
                                              "removed": [], "bytes_read": 0, "bytes_written": 0})
            orders += [(sid, o) for o in reply["build"]]
        time.sleep(0.2)
    assert sorted(o["part"] for _, o in orders) == [5, 7]
    for sid, o in orders:
        assert (o["chunk_id"], o["version"], o["ec"], o["length"]) == (c, 3, [8, 4], 1000)
        assert len(o["sources"]) == 8 and all(s["part"] in stored for s in o["sources"])
        assert all(s["address"] == w["servers"][s["part"]] for s in o["sources"])
    # no server above 4 parts of the chunk: the two parts go to the servers that lost them
    after = [w["servers"][p] for p in stored] + [fakes[sid].address for sid, _ in orders]
    assert sorted(after.count(a) for a in by_address) == [4, 4, 4]
    stale = by_address[w["servers"][7]]  # its chunkserver deleted the stale copy as told
    master.call("heartbeat", {"server_id": stale, "session": sessions[stale], "disks": [], "added": [],
                              "removed": [ref(part_id(c, 7), 2)], "bytes_read": 0, "bytes_written": 0})
    for sid, o in orders:
        fakes[sid].copies[part_id(c, o["part"])] = [3, b"rebuilt"]
        master.call("heartbeat", {
            "server_id": sid, "session": sessions[sid], "disks": [], "bytes_read": 0, "removed": [],
            "bytes_written": 0, "added": [ref(part_id(c, o["part"]), 3)],
            "built": [{"chunk_id": c, "part": o["part"], "version": 3, "bytes": 65536, "error": ""}]})  # fmt: skip
    [chunk] = master.ok("fileinfo", ino=ino)["chunks"]
    assert chunk["state"] == "stable"
    status = master.ok("status")
    assert status["chunks"]["by_class"]["archive"]["stable"] == 1 and status["chunks"]["replication"]["built"] == 2
    text = master.scrape()
    assert "mooseng_build_pieces_total 2.0" in text and "mooseng_build_bytes_total 131072.0" in text
    assert 'mooseng_chunks{sclass="archive",state="stable"} 1.0' in text

    # A failed session (fewer than k parts stored it) fences nothing: the chunk stays stable.
    again = master.ok("write_chunk", ino=ino, index=0)
    assert again["version"] == 4 and "" not in again["servers"]
    master.ok("commit_write", ino=ino, size=1000, chunks=[
        {"chunk_id": c, "version": again["version"], "ok": again["servers"][:3], "parts": [0, 1, 2]}])
    [chunk] = master.ok("fileinfo", ino=ino)["chunks"]
    assert chunk["state"] == "stable" and chunk["version"] == 4

    # Two servers refuse the new version: 4 parts could move, 8 are needed. Nothing is logged and
    # the 4 go back, so the chunk stays readable at version 4.
    refusing = [sid for sid in fakes if sid != by_address[w["servers"][0]]]
    for sid in refusing:
        fakes[sid].mode = "refuse"
    before = master.last_index()
    code, _, message = master.meta("write_chunk", ino=ino, index=0)
    assert code == errno.EIO and message.startswith(f"chunk {c}: 4 parts took the new version, needs 8: ")
    assert master.last_index() == before
    assert {fakes[by_address[a]].version(part_id(c, p)) for p, a in enumerate(again["servers"])} == {4}


def test_setclass_archive_converts_a_chunk_of_copies_into_parts(masters, fakes):
    """A file of 2 copies set to archive: the healer orders its 12 parts built from a copy; once
    the chunkservers report them, the master moves them to a new version, logs the new layout,
    and the old copies (now stale and of no layout the chunk has) are deleted."""
    master = masters(timeout_s=2.0).start()
    four = [disk(i) for i in range(4)]
    sessions = {sid: register(master, sid, address=fake.address, disks=four) for sid, fake in fakes.items()}
    by_address = {fake.address: sid for sid, fake in fakes.items()}
    ino = master.ok("mknod", parent=1, name=b"warm", mode=S_IFREG | 0o644)["ino"]
    w = master.ok("write_chunk", ino=ino, index=0)
    c = w["chunk_id"]
    for address in w["servers"]:
        fakes[by_address[address]].copies[c] = [1, b"data"]
    master.ok("commit_write", ino=ino, size=1000, chunks=[report(c, 1, w["servers"])])
    assert master.ok("setclass", ino=ino, sclass="archive")["changed"] == 1
    info = master.ok("fileinfo", ino=ino)
    assert (info["chunks"][0]["ec"], info["chunks"][0]["target"], info["progress"]) == (
        None, [8, 4], {"converted": 0, "total": 1})

    def beat(sid, **kw):
        params = {"server_id": sid, "session": sessions[sid], "disks": [], "added": [], "removed": [],
                  "bytes_read": 0, "bytes_written": 0, **kw}
        return master.call("heartbeat", params)

    orders, deletes, deadline = {}, [], time.monotonic() + 20
    while len(orders) < 12 and time.monotonic() < deadline:
        for sid in fakes:
            for o in beat(sid)["build"]:
                orders[o["part"]] = (sid, o)
        time.sleep(0.1)
    assert sorted(orders) == list(range(12))
    assert sorted(sorted(sid for sid, _ in orders.values()).count(s) for s in fakes) == [4, 4, 4]
    for part, (sid, o) in orders.items():
        assert (o["chunk_id"], o["version"], o["ec"], o["length"]) == (c, 1, [8, 4], 1000)
        [source] = o["sources"]
        assert source["part"] == -1 and source["address"] in w["servers"]
        fakes[sid].copies[part_id(c, part)] = [1, b"part %d" % part]
        beat(sid, added=[ref(part_id(c, part), 1)],
             built=[{"chunk_id": c, "part": part, "version": 1, "bytes": 1000, "error": ""}])
    while time.monotonic() < deadline:
        for sid in fakes:
            deletes += [(sid, d["chunk_id"], d["version"]) for d in beat(sid)["delete"]]
        info = master.ok("fileinfo", ino=ino)
        if info["chunks"][0]["ec"] == [8, 4] and len(deletes) == 2:
            break
        time.sleep(0.1)
    [chunk] = info["chunks"]
    assert (chunk["ec"], chunk["target"], chunk["version"], chunk["state"]) == ([8, 4], [8, 4], 2, "stable")
    assert info["progress"] == {"converted": 1, "total": 1}
    assert sorted((x["part"], x["valid"]) for x in chunk["copies"]) == [(p, True) for p in range(12)]
    assert [fakes[sid].version(part_id(c, p)) for p, (sid, _) in sorted(orders.items())] == [2] * 12
    assert sorted(deletes) == sorted((by_address[a], c, 1) for a in w["servers"]), "the old copies go"
    assert master.ok("status")["chunks"]["replication"]["conversions"] == 1
    [ref_] = master.ok("chunks", ino=ino, index=0)
    assert ref_["ec"] == [8, 4] and ref_["servers"] == [fakes[sid].address for sid, _ in
                                                        (orders[p] for p in range(12))]

    # and back: 2 copies decoded from 8 parts each, then the 12 parts go
    master.ok("setclass", ino=ino, sclass="default")
    copies, deletes, deadline = {}, [], time.monotonic() + 20
    while len(copies) < 2 and time.monotonic() < deadline:
        for sid in fakes:
            copies.update((sid, o) for o in beat(sid)["build"])
        time.sleep(0.1)
    assert len(copies) == 2
    for sid, o in copies.items():
        assert (o["chunk_id"], o["version"], o["ec"], o["part"]) == (c, 2, [8, 4], -1) and len(o["sources"]) == 8
        fakes[sid].copies[c] = [2, b"data"]
        beat(sid, added=[ref(c, 2)], built=[{"chunk_id": c, "part": -1, "version": 2, "bytes": 1000, "error": ""}])
    while time.monotonic() < deadline and len(deletes) < 12:
        for sid in fakes:
            deletes += [(d["chunk_id"], d["version"]) for d in beat(sid)["delete"]]
        time.sleep(0.1)
    assert sorted(deletes) == sorted((part_id(c, p), 2) for p in range(12))
    info = master.ok("fileinfo", ino=ino)
    [chunk] = info["chunks"]
    assert (chunk["ec"], chunk["target"], chunk["version"], chunk["state"]) == (None, None, 3, "stable")
    assert sorted((x["part"], x["server_id"], x["valid"]) for x in chunk["copies"]) == [
        (-1, sid, True) for sid in sorted(copies)]
    assert [fakes[sid].version(c) for sid in copies] == [3, 3]


def test_no_copy_takes_the_version_is_eio_and_logs_nothing(master, fakes):
    for sid, fake in fakes.items():
        register(master, sid, address=fake.address)
    ino, chunk_id, holders = written_file(master, fakes)
    for fake in holders:
        fake.mode = "refuse"
    before = master.last_index()
    code, _, message = master.meta("write_chunk", ino=ino, index=0)
    assert code == errno.EIO and f"no valid copy of chunk {chunk_id}" in message and "refused for the test" in message
    assert master.last_index() == before
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["version"] == 1 and read_back(chunk) == [b"v1", b"v1"]
    # The same for the tail of a shrink: refused before the size changes.
    code, _, message = master.meta("setattr", ino=ino, size=10)
    assert code == errno.EIO and f"no valid copy of chunk {chunk_id}" in message
    assert master.ok("getattr", ino=ino)["size"] == 1000 and master.last_index() == before


def test_a_copy_that_takes_the_version_late_is_fenced(master, fakes):
    sessions = {sid: register(master, sid, address=fake.address) for sid, fake in fakes.items()}
    ino, chunk_id, (fast, slow) = written_file(master, fakes)
    slow.mode = "late"
    started = time.monotonic()
    w = master.ok("write_chunk", ino=ino, index=0)
    assert time.monotonic() - started < SET_VERSION_TIMEOUT_S + 0.4, "the master does not wait for a stall"
    assert w["servers"] == [fast.address] and w["version"] == 2
    deadline = time.monotonic() + 10
    while slow.version(chunk_id) != 2:  # it lands after all, without the data written meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.05)
    slow_id = next(sid for sid, fake in fakes.items() if fake is slow)
    assert heartbeat(master, slow_id, sessions[slow_id], added=[(chunk_id, 2)]) == (False, [(chunk_id, 2)])
    assert master.ok("chunks", ino=ino, index=0)[0]["servers"] == [fast.address]


def test_copies_that_missed_a_write_stay_invalid_after_the_master_restarts(master, fakes):
    """A fence lives in one master's memory; the version the commit moves the good copies to is
    logged. So after kill -9 and a restart, the copy that missed the write (it took version 2
    without the data) and the copy that took version 2 late are stale, and only the copy with
    the data is read."""
    sessions = {sid: register(master, sid, address=fake.address) for sid, fake in fakes.items()}
    ino, chunk_id, (good, missed) = written_file(master, fakes)
    w = master.ok("write_chunk", ino=ino, index=0)
    assert sorted(w["servers"]) == sorted([good.address, missed.address]) and w["version"] == 2
    good.copies[chunk_id][1] = b"v2"  # the write reaches one copy only
    master.ok("commit_write", ino=ino, size=1000, chunks=[report(chunk_id, 2, [good.address])])
    assert (good.version(chunk_id), missed.version(chunk_id)) == (3, 2)

    ino2, chunk2, (fast, late) = written_file(master, fakes, name=b"g")
    late.mode = "late"  # the session's set_version lands on it after the master gave up on it
    w = master.ok("write_chunk", ino=ino2, index=0)
    assert w["servers"] == [fast.address] and w["version"] == 2
    fast.copies[chunk2][1] = b"g2"
    deadline = time.monotonic() + 10
    while late.version(chunk2) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    master.ok("commit_write", ino=ino2, size=1000, chunks=[report(chunk2, 2, [fast.address])])
    assert (fast.version(chunk2), late.version(chunk2)) == (3, 2)

    master.kill9()
    master.start()
    for sid, fake in fakes.items():
        fake.mode = "ok"
        register(master, sid, address=fake.address, chunks=[(c, v) for c, (v, _) in fake.copies.items()])
    for ino_, chunk_, holder, version, data, other in ((ino, chunk_id, good, 3, b"v2", missed),
                                                       (ino2, chunk2, fast, 3, b"g2", late)):
        [chunk] = master.ok("chunks", ino=ino_, index=0)
        assert (chunk["version"], chunk["servers"], read_back(chunk)) == (version, [holder.address], [data])
        [info] = master.ok("fileinfo", ino=ino_)["chunks"]
        assert sorted((c["address"], c["valid"]) for c in info["copies"]) == sorted(
            [(holder.address, True), (other.address, False)])
    assert len(sessions) == 3


def test_a_copy_whose_server_went_down_mid_write_is_stale_when_it_returns(masters, fakes):
    """The server of one copy goes down during a client's session (its copies leave the
    registry, so no fence can name it); the session's lease knew where the client was sent, so
    the commit still moves the stored copy on, and the returning copy is stale."""
    master = masters(timeout_s=0.5).start()
    sessions = {sid: register(master, sid, address=fake.address) for sid, fake in fakes.items()}
    by_address = {fake.address: sid for sid, fake in fakes.items()}
    ino, chunk_id, (good, gone) = written_file(master, fakes)
    meta = {"op": "write_chunk", "args": {"ino": ino, "index": 0}, "client_id": 77, "seq": 1,
            "uid": 0, "gid": 0, "gids": []}  # fmt: skip
    w = master.call("meta", meta)["result"]
    assert sorted(w["servers"]) == sorted([good.address, gone.address]) and w["version"] == 2
    good.copies[chunk_id][1] = b"v2"
    gone_id = by_address[gone.address]
    deadline = time.monotonic() + 10
    while {s["server_id"]: s["state"] for s in master.ok("status")["chunkservers"]}[gone_id] != "down":
        assert time.monotonic() < deadline
        for sid in sessions:
            if sid != gone_id:
                heartbeat(master, sid, sessions[sid])
        time.sleep(0.1)
    commit = {"op": "commit_write", "client_id": 77, "seq": 2, "uid": 0, "gid": 0, "gids": [],
              "args": {"ino": ino, "size": 1000, "chunks": [report(chunk_id, 2, [good.address])]}}  # fmt: skip
    assert master.call("meta", commit)["errno"] == 0
    assert (good.version(chunk_id), gone.version(chunk_id)) == (3, 2)
    register(master, gone_id, address=gone.address, chunks=[(chunk_id, 2)])
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert (chunk["version"], chunk["servers"], read_back(chunk)) == (3, [good.address], [b"v2"])


def test_truncate_returns_tail_servers(master, fakes):
    for sid, fake in fakes.items():
        register(master, sid, address=fake.address)
    ino, chunk_id, holders = written_file(master, fakes, size=5000)
    servers = sorted(f.address for f in holders)
    result = master.ok("setattr", ino=ino, size=100)
    tail = result["tail"]
    assert (tail["chunk_id"], tail["version"], tail["expect_version"], tail["length"]) == (chunk_id, 2, 2, 100)
    assert sorted(tail["servers"]) == servers and [f.version(chunk_id) for f in holders] == [2, 2]
    master.ok("commit_write", ino=ino, size=0, chunks=[report(chunk_id, 2, tail["servers"])])
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["version"] == 2 and sorted(chunk["servers"]) == servers
    assert master.ok("getattr", ino=ino)["size"] == 100


def test_refused_truncate_puts_the_copies_back(master, fakes):
    for sid, fake in fakes.items():
        register(master, sid, address=fake.address)
    ino, chunk_id, holders = written_file(master, fakes, size=5000)
    assert master.meta("setattr", ino=ino, size=100, uid=1000, gid=1000)[0] == errno.EACCES
    assert [f.version(chunk_id) for f in holders] == [1, 1], "set_version undone: copies match the namespace"
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["version"] == 1 and read_back(chunk) == [b"v1", b"v1"]


def test_a_silent_clients_sustained_files_are_dropped_after_the_session_timeout(masters):
    """A file unlinked by a client that has it open stays (sustained) while that client is
    heard from; a client silent for client_session_timeout_s is gone, and so are its files."""
    m = masters(extra="client_session_timeout_s = 2.0\n").start()

    def by(client, seq, op, **args):
        reply = m.call("meta", {"op": op, "args": args, "client_id": client, "seq": seq, "uid": 0, "gid": 0,
                                "gids": []})  # fmt: skip
        assert reply["errno"] == 0, reply["message"]
        return reply["result"]

    kept = by(5, 1, "mknod", parent=1, name=b"kept", mode=S_IFREG | 0o644)["ino"]
    dropped = by(6, 1, "mknod", parent=1, name=b"dropped", mode=S_IFREG | 0o644)["ino"]
    assert by(5, 2, "unlink", parent=1, name=b"kept", open=[kept])["sustained"]
    assert by(6, 2, "unlink", parent=1, name=b"dropped", open=[dropped])["sustained"]
    deadline = time.monotonic() + 15
    seq = 3
    while m.meta("getattr", ino=dropped)[0] == 0:  # client 6 says nothing more
        assert time.monotonic() < deadline, "client 6's file was never dropped"
        by(5, seq, "getattr", ino=kept)  # client 5 is alive
        seq += 1
        time.sleep(0.2)
    assert m.meta("getattr", ino=dropped)[0] == errno.ENOENT
    assert by(5, seq, "getattr", ino=kept)["nlink"] == 0
    assert "clients [6] silent for over 2 s: dropped 1 unlinked file(s)" in m.log.read_text()
    assert by(5, seq + 1, "release", ino=kept) == {"freed": []}
    assert m.meta("getattr", ino=kept)[0] == errno.ENOENT


def test_silent_chunkserver_goes_down(masters):
    m = masters(timeout_s=0.5).start()
    session = register(m, 1)
    register(m, 2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        heartbeat(m, 1, session)
        states = {s["server_id"]: s["state"] for s in m.ok("status")["chunkservers"]}
        if states[2] == "down":
            break
        time.sleep(0.1)
    assert states == {1: "alive", 2: "down"}
    text = m.scrape()
    assert 'mooseng_chunkservers{state="down"} 1.0' in text
    assert 'mooseng_chunkservers{state="up"} 1.0' in text
    assert 'mooseng_disks{state="ok"} 1.0' in text
    assert "chunkserver 2 at 127.0.0.1:9402 is down" in m.log.read_text()


# --- durability -----------------------------------------------------------------------------------


def test_acknowledged_creates_survive_kill_9(masters):
    m = masters().start()
    acked: list[bytes] = []
    stop = threading.Event()

    def create():
        client = rpc.Client(m.listen, timeout_s=5)
        for i in range(100_000):
            if stop.is_set():
                return
            name = f"f{i:06d}".encode()
            params = {"op": "mknod", "args": {"parent": 1, "name": name, "mode": S_IFREG | 0o644}}
            try:
                reply, _ = client.call("meta", params)
            except rpc.RpcError:
                return  # the master died under us
            assert reply["errno"] == 0, reply["message"]
            acked.append(name)

    writer = threading.Thread(target=create)
    writer.start()
    deadline = time.monotonic() + 20
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    m.kill9()  # while the writer is still creating
    stop.set()
    writer.join(30)
    assert len(acked) >= 300

    m.start()
    names = set()
    offset = 0
    while True:
        page = m.ok("readdir", ino=1, offset=offset)
        if not page:
            break
        names.update(e[0] for e in page)
        offset = page[-1][2]
    missing = [n for n in acked if n not in names]
    assert not missing, f"{len(missing)} acknowledged creates lost, e.g. {missing[:3]}"
    assert m.ok("lookup", parent=1, name=acked[-1])["ino"] > 1


def test_sigterm_stops_cleanly_and_keeps_data(masters):
    m = masters().start()
    m.ok("mkdir", parent=1, name=b"kept", mode=0o755)
    assert m.stop() == 0
    assert "stopped" in m.log.read_text()
    m.start()
    assert m.ok("lookup", parent=1, name=b"kept")["mode"] & 0o777 == 0o755


# --- metrics and start-up -------------------------------------------------------------------------


def test_metrics_endpoint(master):
    session = register(master, 1)
    heartbeat(master, 1, session, read=10, written=100)
    heartbeat(master, 1, session, read=15, written=400)
    before = _metric(master.scrape(), "mooseng_raft_applied_index")
    master.ok("mkdir", parent=1, name=b"m", mode=0o755)
    assert master.meta("lookup", parent=1, name=b"absent")[0] == errno.ENOENT
    text = master.scrape()
    assert 'mooseng_operation_errors_total{error="ENOENT",op="lookup"} 1.0' in text
    assert 'mooseng_operation_errors_total{error="EEXIST"' not in text
    assert "mooseng_raft_leader 1.0" in text
    assert 'mooseng_client_operations_total{op="mkdir"} 1.0' in text
    assert 'mooseng_operation_duration_seconds_count{op="mkdir"} 1.0' in text
    # One master is a Raft group of one: every mutation is one more committed, applied entry.
    applied = _metric(text, "mooseng_raft_applied_index")
    assert applied == before + 1 == _metric(text, "mooseng_raft_commit_index")
    assert _metric(text, "mooseng_metadata_log_index") == applied
    assert _metric(text, "mooseng_raft_term") >= 1 and _metric(text, "mooseng_raft_elections_total") >= 1
    for name in ("mooseng_raft_log_entries", "mooseng_raft_snapshot_index", "mooseng_raft_leader_changes_total",
                 "mooseng_raft_last_snapshot_timestamp_seconds"):
        assert _metric(text, name) >= 0
    assert "mooseng_bytes_written_total 300.0" in text and "mooseng_bytes_read_total 5.0" in text
    assert 'mooseng_disk_bytes{disk="/d0",kind="free",server="1"}' in text
    assert 'mooseng_chunks{sclass="default",state="missing"} 0.0' in text
    assert 'mooseng_chunks{sclass="fast",state="endangered"} 0.0' in text
    assert "mooseng_replication_chunks_total 0.0" in text and "mooseng_replication_failures_total 0.0" in text


def _metric(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_port_in_use_is_one_line_and_exit_1(master, tmp_path):
    clash = tmp_path / "clash.toml"
    clash.write_text(
        f'[master]\nlisten = "{master.listen}"\nmetrics_listen = "127.0.0.1:{free_port()}"\n'
        f'data_dir = "{tmp_path / "d2"}"\n'
    )
    proc = spawn(["-c", str(clash)], tmp_path / "clash.log")
    try:
        assert proc.wait(30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = (tmp_path / "clash.log").read_text().splitlines()
    assert len(lines) == 1 and f"cannot listen on {master.listen}" in lines[0], lines


def test_config_error_is_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[master]\nlisten = "nowhere"\ndata_dir = "/tmp/x"\n')
    proc = spawn(["-c", str(bad)], tmp_path / "bad.log")
    try:
        assert proc.wait(30) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "bad.log").read_text().strip() == "config error: listen = 'nowhere': not host:port: 'nowhere'"


def test_a_retried_rewrite_moves_the_version_once_and_gets_the_first_reply(master, fakes):
    for sid, fake in fakes.items():
        register(master, sid, address=fake.address)
    by_address = {fake.address: sid for sid, fake in fakes.items()}
    ino = master.ok("mknod", parent=1, name=b"retried", mode=S_IFREG | 0o644)["ino"]
    w = master.ok("write_chunk", ino=ino, index=0)
    for address in w["servers"]:
        fakes[by_address[address]].copies[w["chunk_id"]] = [1, b"v1"]
    master.ok("commit_write", ino=ino, size=10, chunks=[report(w["chunk_id"], 1, w["servers"])])

    def rewrite():  # the same call twice, as a client does when the first reply was lost
        params = {"op": "write_chunk", "args": {"ino": ino, "index": 0}, "client_id": 42, "seq": 7}
        reply = master.call("meta", params)
        assert reply["errno"] == 0, reply
        return reply["result"]

    first, retry = rewrite(), rewrite()
    assert (first["version"], retry["version"]) == (2, 2) and retry["expect_version"] == 2
    assert sorted(retry["servers"]) == sorted(first["servers"])
    assert [fakes[by_address[a]].version(w["chunk_id"]) for a in first["servers"]] == [2, 2]
    [chunk] = master.ok("chunks", ino=ino, index=0)
    assert chunk["version"] == 2


def test_a_mutation_retried_after_a_lost_reply_is_applied_once(master):
    params = {"op": "mknod", "args": {"parent": 1, "name": b"once", "mode": S_IFREG | 0o644}, "client_id": 77, "seq": 3}
    first = master.call("meta", params)
    retry = master.call("meta", params)  # the client never saw `first`, and sends the same call again
    assert first["errno"] == retry["errno"] == 0 and retry["result"] == first["result"]
    again = master.call("meta", {**params, "seq": 4})  # a new call of the same client does run
    assert again["errno"] == errno.EEXIST
    restarted = master.call("meta", {**params, "client_id": 78})  # and so does another client's
    assert restarted["errno"] == errno.EEXIST
