"""A real mooseng-master process driven with raw gRPC: namespace ops, malformed requests, fake
chunkservers, crash recovery after kill -9, metrics, and start-up failures."""

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from mooseng import wire
from mooseng.proto import mooseng_pb2 as pb
from mooseng.proto import mooseng_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
GiB = 1 << 30
S_IFREG = 0o100000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Master:
    """One mooseng-master process on free loopback ports; restartable on the same data dir."""

    def __init__(self, tmp_path: Path, timeout_s: float = 10.0):
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
            f"chunkserver_timeout_s = {timeout_s}\n"
        )
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.MasterStub | None = None
        self.starts = 0

    def start(self) -> "Master":
        self.starts += 1
        self.log = self.dir / f"master.{self.starts}.log"
        self.proc = spawn(["-c", str(self.config)], self.log)
        self.channel = grpc.insecure_channel(self.listen, options=wire.GRPC_OPTIONS)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=15)
        except grpc.FutureTimeoutError:
            raise AssertionError(f"master did not start:\n{self.log.read_text()}") from None
        self.stub = pb_grpc.MasterStub(self.channel)
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.channel.close()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; returns the exit code."""
        if self.channel is not None:
            self.channel.close()
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

    def meta(self, op, uid=0, gid=0, **args):
        reply = self.stub.Meta(pb.MetaRequest(op=op, args=wire.pack(args), uid=uid, gid=gid), timeout=10)
        return reply.errno, (wire.unpack(reply.result) if reply.result else None), reply.message

    def ok(self, op, **args):
        code, result, message = self.meta(op, **args)
        assert code == 0, f"{op} {args}: errno {code} {message}"
        return result

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


def disk(index=0, free=50 * GiB, total=100 * GiB):
    return pb.DiskInfo(index=index, path=f"/d{index}", total_bytes=total, used_bytes=total - free, free_bytes=free, state="ok")


def register(m, sid, cluster="mooseng", chunks=(), address=None):
    request = pb.RegisterRequest(
        cluster_id=cluster,
        server_id=sid,
        address=address or f"127.0.0.1:{9400 + sid}",
        disks=[disk()],
        chunks=[pb.ChunkRef(chunk_id=c, version=v, disk=0) for c, v in chunks],
    )
    return m.stub.Register(request, timeout=10).session


def heartbeat(m, sid, session, added=(), read=0, written=0):
    request = pb.HeartbeatRequest(
        server_id=sid,
        session=session,
        disks=[disk()],
        added=[pb.ChunkRef(chunk_id=c, version=v, disk=0) for c, v in added],
        bytes_read=read,
        bytes_written=written,
    )
    reply = m.stub.Heartbeat(request, timeout=10)
    return reply.reregister, sorted((d.chunk_id, d.version) for d in reply.delete)


# --- namespace over the wire ----------------------------------------------------------------------


def test_namespace_ops_and_errnos(master):
    d = master.ok("mkdir", parent=1, name=b"dir", mode=0o755)
    f = master.ok("mknod", parent=d["ino"], name=b"file", mode=S_IFREG | 0o644)
    assert master.ok("lookup", parent=d["ino"], name=b"file")["ino"] == f["ino"]
    assert [e[0] for e in master.ok("readdir", ino=d["ino"])] == [b"file"]
    master.ok("rename", parent=d["ino"], name=b"file", newparent=1, newname=b"moved")
    assert master.meta("lookup", parent=d["ino"], name=b"file")[0] == errno.ENOENT
    assert master.ok("lookup", parent=1, name=b"moved")["ino"] == f["ino"]
    assert master.ok("unlink", parent=1, name=b"moved") == {"freed": []}
    code, _, message = master.meta("lookup", parent=1, name=b"moved")
    assert code == errno.ENOENT and "moved" in message
    assert master.meta("mkdir", parent=1, name=b"dir", mode=0o755)[0] == errno.EEXIST
    assert master.meta("mknod", parent=1, name=b"x" * 256, mode=S_IFREG | 0o644)[0] == errno.ENAMETOOLONG
    assert master.meta("mkdir", parent=d["ino"], name=b"denied", mode=0o755, uid=1000, gid=1000)[0] == errno.EACCES
    assert master.ok("statfs")["inodes"] == 2


def test_write_without_chunkservers_is_enospc_and_allocates_nothing(master):
    f = master.ok("mknod", parent=1, name=b"f", mode=S_IFREG | 0o644)
    code, _, message = master.meta("write_chunk", ino=f["ino"], index=0)
    assert code == errno.ENOSPC and "no chunkserver with free space" in message
    assert master.ok("chunks", ino=f["ino"], index=0) == [{"index": 0, "chunk_id": 0, "version": 0, "servers": []}]


@pytest.mark.parametrize(
    "op, raw_args, fragment",
    [
        ("nosuchop", wire.pack({}), "unknown op"),
        ("mkdir", b"\xc1\xff\x00garbage", "malformed msgpack"),
        ("mkdir", wire.pack([1, 2, 3]), "args must be a map"),
        ("mkdir", wire.pack({"parent": "1", "name": b"a", "mode": 0o755}), "'parent' must be an unsigned integer"),
        ("mkdir", wire.pack({"parent": 1, "name": "a", "mode": 0o755}), "'name' must be bytes"),
        ("mkdir", wire.pack({"parent": 1, "name": b"a", "mode": -1}), "'mode' must be an unsigned integer"),
        ("mkdir", wire.pack({"parent": 1, "name": b"a", "mode": True}), "'mode' must be an unsigned integer"),
        ("mkdir", wire.pack({"parent": 1, "name": b"a"}), "missing arg 'mode'"),
        ("mkdir", wire.pack({"parent": 1, "name": b"a", "mode": 1, "evil": 1}), "unknown arg 'evil'"),
        ("setattr", wire.pack({"ino": 1, "atime": "yesterday"}), "'atime' must be nanoseconds or 'now'"),
        ("commit_write", wire.pack({"ino": 2, "size": 1, "chunks": [{"chunk_id": 1}]}), "'chunks' must be"),
        ("lookup", wire.pack({"parent": 1, "name": b"a", 7: 1}), "unknown arg 7"),
    ],
)
def test_malformed_requests_are_invalid_argument(master, op, raw_args, fragment):
    with pytest.raises(grpc.RpcError) as exc:
        master.stub.Meta(pb.MetaRequest(op=op, args=raw_args), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in exc.value.details()
    assert master.alive()
    assert master.ok("getattr", ino=1)["ino"] == 1


def test_malformed_requests_never_reach_the_log(masters):
    m = masters().start()
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            m.stub.Meta(pb.MetaRequest(op="mkdir", args=wire.pack({"parent": 1, "name": b"a"})), timeout=10)
    assert m.ok("status")["master"]["metadata"]["last_index"] == 0


# --- chunkservers ---------------------------------------------------------------------------------


def test_registration_rules(master):
    with pytest.raises(grpc.RpcError) as exc:
        register(master, 1, cluster="other")
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'other'" in exc.value.details()
    register(master, 1)
    with pytest.raises(grpc.RpcError) as exc:
        register(master, 1, address="127.0.0.1:1")
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as exc:
        register(master, 2, address="nowhere")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert heartbeat(master, 3, 12345) == (True, []), "unknown session must re-register"
    log = master.log.read_text()
    assert "refused registration" in log and "belongs to cluster 'other'" in log


def test_write_path_with_fake_chunkservers(master):
    sessions = {sid: register(master, sid) for sid in (1, 2, 3)}
    addresses = {f"127.0.0.1:{9400 + sid}" for sid in sessions}
    f = master.ok("mknod", parent=1, name=b"data", mode=S_IFREG | 0o644)
    ino = f["ino"]

    w = master.ok("write_chunk", ino=ino, index=0)
    assert w["new"] and w["version"] == 1 and w["expect_version"] == 0
    assert len(w["servers"]) == 2 and set(w["servers"]) <= addresses  # default class: 2 copies
    attr = master.ok("commit_write", ino=ino, size=1000, chunks=[{"chunk_id": w["chunk_id"], "version": 1, "ok": w["servers"]}])
    assert attr["size"] == 1000
    [ref] = master.ok("chunks", ino=ino, index=0)
    assert ref["chunk_id"] == w["chunk_id"] and sorted(ref["servers"]) == sorted(w["servers"])

    # Rewrite: the same holders, a new version; the one that fails the write becomes stale.
    again = master.ok("write_chunk", ino=ino, index=0)
    assert not again["new"] and (again["version"], again["expect_version"]) == (2, 1)
    assert sorted(again["servers"]) == sorted(w["servers"])
    good, bad = again["servers"]
    master.ok("commit_write", ino=ino, size=1000, chunks=[{"chunk_id": w["chunk_id"], "version": 2, "ok": [good]}])
    assert master.ok("chunks", ino=ino, index=0)[0]["servers"] == [good]
    bad_id = int(bad.rsplit(":", 1)[1]) - 9400
    # The stale server reports the copy at version 1 (as a registration would): told to delete it.
    assert heartbeat(master, bad_id, sessions[bad_id], added=[(w["chunk_id"], 1)]) == (False, [(w["chunk_id"], 1)])
    # A chunk the namespace never heard of is deleted too.
    assert heartbeat(master, 1, sessions[1], added=[(999, 1)]) == (False, [(999, 1)])

    info = master.ok("fileinfo", ino=ino)
    assert info["class"]["name"] == "default" and info["attr"]["size"] == 1000
    [chunk] = info["chunks"]
    assert [(c["address"], c["version"], c["valid"]) for c in chunk["copies"]] == [(good, 2, True)]

    # A class with 3 copies places a new chunk on all three servers.
    assert master.ok("setclass", ino=ino, sclass="fast")["changed"] == 1
    w1 = master.ok("write_chunk", ino=ino, index=1)
    assert sorted(w1["servers"]) == sorted(addresses)
    assert master.meta("setclass", ino=ino, sclass="archive")[0] == errno.ENOTSUP

    # Chunk 1 was never committed: no copy, so another write session cannot start.
    code, _, message = master.meta("write_chunk", ino=ino, index=1)
    assert code == errno.EIO and f"no valid copy of chunk {w1['chunk_id']}" in message

    status = master.ok("status")
    assert status["master"]["role"] == "leader"
    assert [s["state"] for s in status["chunkservers"]] == ["alive"] * 3
    assert status["chunks"]["by_class"]["fast"] == {"stable": 0, "undergoal": 1, "missing": 1}
    statfs = master.ok("statfs")
    assert statfs["total_bytes"] == 3 * 100 * GiB and statfs["free_bytes"] == 3 * 50 * GiB

    # Unlinking frees the chunks; holders are told to delete them at their next heartbeat.
    assert sorted(master.ok("unlink", parent=1, name=b"data")["freed"]) == sorted([w["chunk_id"], w1["chunk_id"]])
    good_id = int(good.rsplit(":", 1)[1]) - 9400
    assert heartbeat(master, good_id, sessions[good_id]) == (False, [(w["chunk_id"], 2)])


def test_truncate_returns_tail_servers(master):
    for sid in (1, 2):
        register(master, sid)
    ino = master.ok("mknod", parent=1, name=b"t", mode=S_IFREG | 0o644)["ino"]
    w = master.ok("write_chunk", ino=ino, index=0)
    master.ok("commit_write", ino=ino, size=5000, chunks=[{"chunk_id": w["chunk_id"], "version": 1, "ok": w["servers"]}])
    result = master.ok("setattr", ino=ino, size=100)
    tail = result["tail"]
    assert (tail["chunk_id"], tail["version"], tail["expect_version"], tail["length"]) == (w["chunk_id"], 2, 1, 100)
    assert sorted(tail["servers"]) == sorted(w["servers"])
    master.ok("commit_write", ino=ino, size=0, chunks=[{"chunk_id": w["chunk_id"], "version": 2, "ok": tail["servers"]}])
    [ref] = master.ok("chunks", ino=ino, index=0)
    assert ref["version"] == 2 and sorted(ref["servers"]) == sorted(w["servers"])
    assert master.ok("getattr", ino=ino)["size"] == 100


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
    assert 'mooseng_chunkservers{state="alive"} 1.0' in text
    assert "chunkserver 2 at 127.0.0.1:9402 is down" in m.log.read_text()


# --- durability -----------------------------------------------------------------------------------


def test_acknowledged_creates_survive_kill_9(masters):
    m = masters().start()
    acked: list[bytes] = []
    stop = threading.Event()

    def create():
        stub = m.stub
        for i in range(100_000):
            if stop.is_set():
                return
            name = f"f{i:06d}".encode()
            args = wire.pack({"parent": 1, "name": name, "mode": S_IFREG | 0o644})
            try:
                reply = stub.Meta(pb.MetaRequest(op="mknod", args=args), timeout=5)
            except grpc.RpcError:
                return  # the master died under us
            assert reply.errno == 0, reply.message
            acked.append(name)

    threads = [threading.Thread(target=create) for _ in range(1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    m.kill9()
    stop.set()
    for t in threads:
        t.join(30)
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
    master.ok("mkdir", parent=1, name=b"m", mode=0o755)
    text = master.scrape()
    assert "mooseng_raft_leader 1.0" in text
    assert 'mooseng_client_operations_total{op="mkdir"} 1.0' in text
    assert 'mooseng_operation_duration_seconds_count{op="mkdir"} 1.0' in text
    assert "mooseng_metadata_log_index 1.0" in text
    assert "mooseng_bytes_written_total 300.0" in text and "mooseng_bytes_read_total 5.0" in text
    assert 'mooseng_disk_bytes{disk="/d0",kind="free",server="1"}' in text
    assert 'mooseng_chunks{state="missing"} 0.0' in text


def test_port_in_use_is_one_line_and_exit_1(master, tmp_path):
    clash = tmp_path / "clash.toml"
    clash.write_text(f'[master]\nlisten = "{master.listen}"\nmetrics_listen = "127.0.0.1:{free_port()}"\ndata_dir = "{tmp_path / "d2"}"\n')
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
