"""Real chunkserver processes on 127.0.0.1 spoken to over rpc.py, without a master (their
masterlinks keep retrying) or with a fake one; plus the session lifecycle on an in-process service."""

import contextlib
import errno
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest

from mooseng import rpc
from mooseng.chunkserver import service as service_module
from mooseng.chunkserver.service import ChunkServerService
from mooseng.chunkserver.store import HEADER_SIZE, ChunkStore, chunk_path
from mooseng.client.chunkclient import ChunkClient
from mooseng.constants import CHUNK_SIZE
from mooseng.errors import FsError

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chunkserver:
    def __init__(self, tmp: Path, server_id: int, master: str | list[str]):
        self.dir = tmp / f"cs{server_id}"
        self.dir.mkdir()
        self.addr = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.data_dirs = [str(self.dir / "d0"), str(self.dir / "d1")]
        self.config = self.dir / "cs.toml"
        self.config.write_text(
            "[chunkserver]\n"
            f"server_id = {server_id}\n"
            f'master_addrs = "{master if isinstance(master, str) else ",".join(master)}"\n'
            f'listen = "{self.addr}"\n'
            f'metrics_listen = "{self.metrics}"\n'
            f"data_dirs = {self.data_dirs!r}\n".replace("'", '"')
            + "heartbeat_interval_s = 0.2\nleave_free_mb = 0\n"
        )
        self.log = self.dir / "log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = run_chunkserver(self.config, self.log)
        probe = rpc.Client(self.addr, timeout_s=5, connect_timeout_s=0.5)
        deadline = time.monotonic() + 20
        try:
            while True:
                assert self.proc.poll() is None, f"chunkserver exited:\n{self.log.read_text()}"
                try:
                    probe.call("read", {"chunk_id": 1, "version": 1, "offset": 0, "length": 0})
                    return
                except rpc.RpcError as exc:
                    if exc.status != rpc.UNAVAILABLE:
                        return  # it answers
                assert time.monotonic() < deadline, f"chunkserver did not start:\n{self.log.read_text()}"
                time.sleep(0.05)
        finally:
            probe.close()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError("chunkserver ignored SIGTERM") from None


def run_chunkserver(config: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "daemons"))
    env = {k: v for k, v in env.items() if not k.startswith("MOOSENG_")}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mooseng.chunkserver.main", "-c", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip


@contextlib.contextmanager
def masterless(tmp_path: Path, count: int):
    """`count` chunkservers (ids 1..count) whose master address has nobody listening, stopped
    afterwards; each must have exited cleanly (or been killed by the test)."""
    master = f"127.0.0.1:{free_port()}"
    started = [Chunkserver(tmp_path, i, master) for i in range(1, count + 1)]
    try:
        for cs in started:
            cs.start()
        yield started
    finally:
        codes = [cs.stop() for cs in started]
    for cs, code in zip(started, codes):
        assert code in (0, -signal.SIGKILL), f"exit code {code}:\n{cs.log.read_text()}"


@pytest.fixture
def servers(tmp_path):
    with masterless(tmp_path, 2) as pair:
        yield pair


class Client:
    """The chunkserver protocol by hand: pieces (several in flight), then commit."""

    def __init__(self):
        self._clients: dict[str, rpc.Client] = {}
        self._pool = ThreadPoolExecutor(4)

    def call(self, addr, method, params, data=b""):
        if addr not in self._clients:
            self._clients[addr] = rpc.Client(addr, timeout_s=60)
        return self._clients[addr].call(method, params, data)

    def piece(self, addr, chunk_id, version, expect, chain, offset, data) -> dict:
        params = {"chunk_id": chunk_id, "version": version, "expect_version": expect, "offset": offset, "chain": chain}
        return self.call(addr, "write", params, data)[0]

    def commit(self, addr, chunk_id, version, chain) -> dict:
        return self.call(addr, "commit", {"chunk_id": chunk_id, "version": version, "chain": chain})[0]

    def write(self, addr, chunk_id, version, expect, chain, extents, piece=MiB) -> dict:
        pieces = [(offset + pos, data[pos:pos + piece]) for offset, data in extents for pos in range(0, len(data), piece)]
        for reply in self._pool.map(lambda p: self.piece(addr, chunk_id, version, expect, chain, *p), pieces):
            assert reply["ok"][0] == addr
        return self.commit(addr, chunk_id, version, chain)

    def read(self, addr, chunk_id, version, offset, length) -> bytes:
        result, data = self.call(addr, "read", {"chunk_id": chunk_id, "version": version, "offset": offset, "length": length})
        assert result == {"length": len(data)}
        return bytes(data)

    def close(self):
        self._pool.shutdown()
        for client in self._clients.values():
            client.close()


@pytest.fixture
def client():
    c = Client()
    yield c
    c.close()


def status_of(call) -> int:
    with pytest.raises(rpc.RpcError) as info:
        call()
    return info.value.status


def test_chained_write_lands_byte_exact_on_both(servers, client):
    cs1, cs2 = servers
    data = random.Random(1).randbytes(CHUNK_SIZE)
    assert client.write(cs1.addr, 77, 1, 0, [cs2.addr], [(0, data)]) == {"ok": [cs1.addr, cs2.addr], "failed": []}
    for cs in servers:
        assert client.read(cs.addr, 77, 1, 0, CHUNK_SIZE) == data
        assert client.read(cs.addr, 77, 1, 12345, 3 * MiB + 7) == data[12345:12345 + 3 * MiB + 7]

    patch = random.Random(2).randbytes(300_001)
    reply = client.write(cs1.addr, 77, 2, 1, [cs2.addr], [(5, patch), (40 * MiB + 1, patch)], piece=100_000)
    assert reply["ok"] == [cs1.addr, cs2.addr]
    expected = bytearray(data)
    expected[5:5 + len(patch)] = patch
    expected[40 * MiB + 1:40 * MiB + 1 + len(patch)] = patch
    for cs in servers:
        assert client.read(cs.addr, 77, 2, 0, CHUNK_SIZE) == expected


def test_chunk_client_chain_and_fanout(servers):
    cs1, cs2 = servers
    data = random.Random(5).randbytes(9 * MiB + 3)
    for mode, chunk_id in (("chain", 51), ("fanout", 52)):
        chunks = ChunkClient(mode)
        try:
            extents = [(0, data[:MiB // 2]), (MiB // 2, data[MiB // 2:]), (20 * MiB, b"end")]
            assert chunks.write(chunk_id, 1, 0, [cs1.addr, cs2.addr], extents) == ([cs1.addr, cs2.addr], [])
            for cs in servers:
                got = b"".join(chunks.read(chunk_id, 1, 0, 20 * MiB + 3, [cs.addr]))
                assert got == data + bytes(20 * MiB - len(data)) + b"end"
            assert chunks.write(chunk_id, 2, 1, [cs1.addr, cs2.addr], []) == ([cs1.addr, cs2.addr], [])
            assert b"".join(chunks.read(chunk_id, 2, 0, 4, [cs2.addr])) == data[:4]
        finally:
            chunks.close()


def test_chunk_client_fails_over(servers):
    cs1, cs2 = servers
    chunks = ChunkClient()
    try:
        chunks.write(61, 1, 0, [cs1.addr, cs2.addr], [(0, b"a" * 200_000)])
        path = next(p for p in (chunk_path(d, 61) for d in cs1.data_dirs) if os.path.exists(p))
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + 10)
            f.write(b"!")
        assert b"".join(chunks.read(61, 1, 0, 100, [cs1.addr, cs2.addr])) == b"a" * 100  # DATA_LOSS on cs1
    finally:
        chunks.close()
    # A dead server is left out (in a chain: a dead head makes the next copy the head).
    dead = f"127.0.0.1:{free_port()}"
    for mode, chunk_id in (("chain", 62), ("fanout", 66)):
        chunks = ChunkClient(mode)
        try:
            assert chunks.write(chunk_id, 1, 0, [dead, cs2.addr], [(0, b"b")]) == ([cs2.addr], [dead])
            assert chunks.write(chunk_id + 1, 1, 0, [cs1.addr, dead], [(0, b"c")]) == ([cs1.addr], [dead])
            with pytest.raises(FsError) as info:
                chunks.write(chunk_id + 2, 1, 0, [dead], [(0, b"d")])
            assert info.value.errno == errno.EIO and "no copy stored the data" in info.value.message
        finally:
            chunks.close()


def test_full_disks_are_resource_exhausted_and_enospc_when_every_copy_is_full(tmp_path, servers, client):
    """A chunkserver whose disks are full (here: leave_free above the disks' size) answers a new
    chunk with RESOURCE_EXHAUSTED; a write that no copy could take is ENOSPC, not EIO, so the
    application sees "no space left" as MooseFS reports it. One copy with room is enough."""
    full = Chunkserver(tmp_path, 3, f"127.0.0.1:{free_port()}")
    full.config.write_text(full.config.read_text().replace("leave_free_mb = 0", "leave_free_mb = 1000000000"))
    full.start()
    chunks = ChunkClient()
    try:
        assert status_of(lambda: client.write(full.addr, 71, 1, 0, [], [(0, b"x")])) == rpc.RESOURCE_EXHAUSTED
        with pytest.raises(FsError) as info:
            chunks.write(72, 1, 0, [full.addr], [(0, b"y")])
        assert info.value.errno == errno.ENOSPC and "RESOURCE_EXHAUSTED" in info.value.message
        assert chunks.write(73, 1, 0, [full.addr, servers[0].addr], [(0, b"z")]) == ([servers[0].addr], [full.addr])
    finally:
        chunks.close()
        assert full.stop() == 0


def test_holes_and_reads_past_the_data_are_zeros(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 5, 1, 0, [], [(2 * MiB, b"tail")])
    assert client.read(cs1.addr, 5, 1, 0, 2 * MiB + 10) == bytes(2 * MiB) + b"tail" + bytes(6)
    assert client.read(cs1.addr, 5, 1, 0, 0) == b""


def test_truncate(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 6, 1, 0, [], [(0, b"x" * 100_000)])
    assert client.call(cs1.addr, "truncate", {"chunk_id": 6, "version": 2, "expect_version": 1, "length": 10})[0] == {}
    assert client.read(cs1.addr, 6, 2, 0, 100) == b"x" * 10 + bytes(90)
    code = status_of(lambda: client.call(cs1.addr, "truncate", {"chunk_id": 6, "version": 9, "expect_version": 8, "length": 0}))
    assert code == rpc.FAILED_PRECONDITION


def test_set_version(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 7, 1, 0, [], [(0, b"before")])

    def set_version(chunk_id, expect, version):
        return client.call(cs1.addr, "set_version", {"chunk_id": chunk_id, "expect_version": expect, "version": version})[0]

    assert set_version(7, 1, 2) == {}
    assert client.read(cs1.addr, 7, 2, 0, 6) == b"before"
    assert status_of(lambda: client.read(cs1.addr, 7, 1, 0, 6)) == rpc.FAILED_PRECONDITION
    assert set_version(7, 1, 2) == {}  # already there
    assert status_of(lambda: set_version(7, 5, 6)) == rpc.FAILED_PRECONDITION
    assert status_of(lambda: set_version(70, 1, 2)) == rpc.NOT_FOUND
    # As the master does it: the version moves first, then the write expects it.
    assert client.write(cs1.addr, 7, 2, 2, [], [(0, b"after")]) == {"ok": [cs1.addr], "failed": []}
    assert client.read(cs1.addr, 7, 2, 0, 6) == b"aftere"


def test_errors_map_to_status_codes(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 8, 3, 0, [], [(0, bytes(range(256)) * 1024)])
    assert status_of(lambda: client.read(cs1.addr, 999, 1, 0, 10)) == rpc.NOT_FOUND
    assert status_of(lambda: client.read(cs1.addr, 8, 2, 0, 10)) == rpc.FAILED_PRECONDITION
    assert status_of(lambda: client.write(cs1.addr, 8, 5, 4, [], [(0, b"x")])) == rpc.FAILED_PRECONDITION
    assert status_of(lambda: client.write(cs1.addr, 9, 2, 1, [], [(0, b"x")])) == rpc.NOT_FOUND
    assert status_of(lambda: client.commit(cs1.addr, 8, 9, [])) == rpc.FAILED_PRECONDITION  # no such session
    path = next(p for p in (chunk_path(d, 8) for d in cs1.data_dirs) if os.path.exists(p))
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + 70_000)
        f.write(b"\xff\xfe")
    assert status_of(lambda: client.read(cs1.addr, 8, 3, 65536, 10)) == rpc.DATA_LOSS
    assert client.read(cs1.addr, 8, 3, 0, 65536) == (bytes(range(256)) * 256)
    metrics = urllib.request.urlopen(f"http://{cs1.metrics}/metrics", timeout=10).read().decode()
    assert "mooseng_crc_errors_total 1.0" in metrics
    assert 'mooseng_operation_errors_total{error="DATA_LOSS",op="read"} 1.0' in metrics
    assert 'mooseng_operation_errors_total{error="NOT_FOUND",op="read"} ' in metrics  # start-up probes too
    assert "mooseng_chunks_total 1.0" in metrics
    assert 'mooseng_disk_bytes{disk="%s",kind="free"}' % cs1.data_dirs[0] in metrics
    for op in ("read", "write", "commit"):
        assert 'mooseng_operation_duration_seconds_count{op="%s"}' % op in metrics


def raw_call(addr, header: bytes, data: bytes = b"") -> tuple[int, str]:
    """Send one frame with any header bytes; the reply's (status, message)."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(rpc.MAGIC + struct.pack("<II", len(header), len(data)) + header + data)
        size, data_size = struct.unpack("<II", sock.recv(8, socket.MSG_WAITALL))
        status, message, _ = msgpack.unpackb(sock.recv(size, socket.MSG_WAITALL))
        return status, message


def test_malformed_requests_get_invalid_argument(servers, client):
    cs1, cs2 = servers
    read = {"chunk_id": 1, "version": 1, "offset": 0, "length": 10}
    piece = {"chunk_id": 3, "version": 1, "expect_version": 0, "offset": 0, "chain": []}
    bad_calls = [
        ("read", {**read, "chunk_id": 0}, b""),
        ("read", {**read, "chunk_id": "1"}, b""),
        ("read", {**read, "version": True}, b""),
        ("read", {**read, "offset": -1}, b""),
        ("read", {**read, "offset": CHUNK_SIZE - 1, "length": 2}, b""),
        ("read", {**read, "length": CHUNK_SIZE + 1}, b""),
        ("read", {"chunk_id": 1, "version": 1, "offset": 0}, b""),
        ("read", {**read, "extra": 1}, b""),
        ("read", {**read, 7: 1}, b""),
        ("read", read, b"data on a read"),
        ("write", {**piece, "chunk_id": 0}, b"x"),
        ("write", {**piece, "chain": ["no-port"]}, b"x"),
        ("write", {**piece, "chain": "127.0.0.1:1"}, b"x"),
        ("write", {**piece, "chain": [cs2.addr, cs2.addr]}, b"x"),
        ("write", {**piece, "chain": [cs1.addr]}, b"x"),
        ("write", {**piece, "chain": [f"127.0.0.1:{i + 1}" for i in range(17)]}, b"x"),
        ("write", {**piece, "offset": CHUNK_SIZE - 1}, b"xy"),
        ("write", {**piece, "expect_version": None}, b"x"),
        ("commit", {"chunk_id": 3, "version": 1}, b""),
        ("commit", {"chunk_id": 3, "version": 1, "chain": [b"bytes"]}, b""),
        ("truncate", {"chunk_id": 1}, b""),
        ("truncate", {"chunk_id": 1, "version": 2, "expect_version": 1, "length": CHUNK_SIZE + 1}, b""),
        ("set_version", {"chunk_id": 1, "expect_version": 1, "version": 0}, b""),
        ("set_version", {"chunk_id": 1.5, "expect_version": 1, "version": 2}, b""),
        ("nonsense", {}, b""),
    ]
    for method, params, data in bad_calls:
        assert status_of(lambda: client.call(cs1.addr, method, params, data)) == rpc.INVALID_ARGUMENT, (method, params)
    for header in (b"\xc1\xc1garbage", msgpack.packb(["read"]), msgpack.packb(["read", [1, 2]]), msgpack.packb(7)):
        assert raw_call(cs1.addr, header)[0] == rpc.INVALID_ARGUMENT
    # Nothing of the refused pieces was stored, and both daemons still serve.
    assert status_of(lambda: client.read(cs1.addr, 3, 1, 0, 1)) == rpc.NOT_FOUND
    assert client.write(cs1.addr, 3, 1, 0, [cs2.addr], [(0, b"still up")]) == {"ok": [cs1.addr, cs2.addr], "failed": []}
    assert client.read(cs2.addr, 3, 1, 0, 8) == b"still up"
    assert all(cs.proc.poll() is None for cs in servers)
    assert all("Traceback" not in cs.log.read_text() for cs in servers)


def test_downstream_killed_mid_write_fails_only_downstream(servers, client):
    cs1, cs2 = servers
    data = random.Random(3).randbytes(32 * MiB)
    replies = []
    for pos in range(0, len(data), MiB):
        if pos == 8 * MiB:
            os.kill(cs2.proc.pid, signal.SIGKILL)
            cs2.proc.wait()
        replies.append(client.piece(cs1.addr, 11, 1, 0, [cs2.addr], pos, data[pos:pos + MiB]))
    assert replies[7] == {"ok": [cs1.addr, cs2.addr], "failed": []}
    assert replies[8:] == [{"ok": [cs1.addr], "failed": [cs2.addr]}] * 24
    assert client.commit(cs1.addr, 11, 1, [cs2.addr]) == {"ok": [cs1.addr], "failed": [cs2.addr]}
    assert client.read(cs1.addr, 11, 1, 0, len(data)) == data
    # The chain toward a dead server keeps failing fast, and cs1 keeps storing.
    started = time.monotonic()
    assert client.write(cs1.addr, 12, 1, 0, [cs2.addr], [(0, b"after")]) == {"ok": [cs1.addr], "failed": [cs2.addr]}
    assert time.monotonic() - started < 5


def test_restart_serves_the_same_chunks(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 21, 4, 0, [], [(1000, b"persisted")])
    assert cs1.stop() == 0
    assert "stopped" in cs1.log.read_text()
    cs1.start()
    assert client.read(cs1.addr, 21, 4, 1000, 9) == b"persisted"


def test_no_master_is_logged_once(servers):
    time.sleep(1.5)  # several heartbeat intervals of 0.2 s
    text = servers[0].log.read_text()
    assert text.count("no master accepts this chunkserver") == 1
    [line] = [line for line in text.splitlines() if "no master accepts" in line]
    assert " ERROR node=" in line  # a chunkserver that serves nothing is an error for `grep -i error`
    assert "Traceback" not in text


def test_port_in_use_is_one_clear_line(servers, tmp_path):
    cs1, _ = servers
    config = tmp_path / "clash.toml"
    config.write_text(cs1.config.read_text().replace(cs1.metrics, f"127.0.0.1:{free_port()}"))
    log = tmp_path / "clash.log"
    proc = run_chunkserver(config, log)
    assert proc.wait(30) == 1
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and "ERROR" in lines[0] and f"cannot listen on {cs1.addr}" in lines[0], lines


def test_config_error_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[chunkserver]\nserver_id = 0\nmaster_addrs = "127.0.0.1:1"\ndata_dirs = "/tmp/x"\n')
    log = tmp_path / "bad.log"
    proc = run_chunkserver(config, log)
    assert proc.wait(30) == 2
    assert log.read_text().strip() == "config error: server_id = 0: must be >= 1"


class FakeMaster:
    """Records what the chunkserver reports (rpc.py, as the master speaks it); hands out deletes
    and re-registration on demand."""

    def __init__(self):
        self.lock = threading.Lock()
        self.registers: list[dict] = []
        self.beats: list[dict] = []
        self.deletes: list[dict] = []
        self.reregister = False
        self.session = 100
        self.server = rpc.Server("127.0.0.1:0", {"register": self.register, "heartbeat": self.heartbeat}).start()
        self.addr = f"127.0.0.1:{self.server.port}"

    def register(self, params, data, peer):
        with self.lock:
            self.registers.append(params)
            self.session += 1
            return {"session": self.session}

    def heartbeat(self, params, data, peer):
        with self.lock:
            self.beats.append(params)
            if params["session"] != self.session or self.reregister:
                self.reregister = False
                return {"reregister": True, "delete": []}
            deletes, self.deletes = self.deletes, []
            return {"reregister": False, "delete": deletes}

    def wait_for(self, predicate, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if predicate(self):
                    return
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)


@pytest.fixture
def fake_master():
    master = FakeMaster()
    yield master
    master.server.stop()


def test_registers_heartbeats_and_runs_deletes(tmp_path, fake_master, client):
    dead = f"127.0.0.1:{free_port()}"  # first in the list: the link must move on to the next
    cs = Chunkserver(tmp_path, 7, [dead, fake_master.addr])
    try:
        cs.start()
        fake_master.wait_for(lambda m: m.registers, "registration")
        first = fake_master.registers[0]
        assert (first["cluster_id"], first["server_id"], first["address"]) == ("mooseng", 7, cs.addr)
        assert [d["path"] for d in first["disks"]] == cs.data_dirs and first["chunks"] == []
        assert all(d["state"] == "ok" and d["total_bytes"] > 0 for d in first["disks"])

        client.write(cs.addr, 31, 2, 0, [], [(0, b"x" * 1000)])
        client.write(cs.addr, 32, 5, 0, [], [(0, b"y")])
        client.piece(cs.addr, 33, 1, 0, [], 0, b"never committed")
        fake_master.wait_for(lambda m: {c["chunk_id"] for b in m.beats for c in b["added"]} >= {31, 32}, "added deltas")
        added = {c["chunk_id"]: c for b in fake_master.beats for c in b["added"]}
        assert (added[31]["version"], added[31]["length"]) == (2, 1000)
        fake_master.wait_for(lambda m: m.beats[-1]["bytes_written"] == 1001 + 15, "byte counters")

        with fake_master.lock:
            fake_master.deletes = [{"chunk_id": 31, "version": 1, "disk": 0}, {"chunk_id": 32, "version": 0, "disk": None}]
        fake_master.wait_for(lambda m: any(c["chunk_id"] == 32 for b in m.beats for c in b["removed"]), "removed delta")
        assert status_of(lambda: client.read(cs.addr, 32, 5, 0, 1)) == rpc.NOT_FOUND
        assert client.read(cs.addr, 31, 2, 0, 3) == b"xxx"  # version 1 asked: not this copy

        with fake_master.lock:
            fake_master.reregister = True
        fake_master.wait_for(lambda m: len(m.registers) >= 2, "re-registration")
        fake_master.wait_for(lambda m: m.beats[-1]["session"] == m.session, "a heartbeat of the new session")
        assert [(c["chunk_id"], c["version"], c["length"]) for c in fake_master.registers[-1]["chunks"]] == [(31, 2, 1000)]
        assert all(c["chunk_id"] != 33 for b in fake_master.beats for c in b["added"] + b["removed"])
    finally:
        assert cs.stop() == 0
    text = cs.log.read_text()
    assert text.count(f"registered with master {fake_master.addr}") == 2
    assert "Traceback" not in text


def test_a_write_cut_off_by_the_client_can_be_retried(servers, client):
    cs1, cs2 = servers
    data = random.Random(4).randbytes(6 * MiB)
    for pos in range(0, 4 * MiB, MiB):  # the client gives up after 4 of 6 pieces: no commit
        client.piece(cs1.addr, 41, 1, 0, [cs2.addr], pos, data[pos:pos + MiB])
    reply = client.write(cs1.addr, 41, 1, 0, [cs2.addr], [(0, data)])
    assert reply == {"ok": [cs1.addr, cs2.addr], "failed": []}
    for cs in servers:
        assert client.read(cs.addr, 41, 1, 0, len(data)) == data
        assert "Traceback" not in cs.log.read_text()


class _NoMetrics:
    def observe(self, op, seconds, error=""):
        pass


@contextlib.contextmanager
def served(tmp_path, metrics, **kwargs):
    """A service in this process on an rpc.Server: (store, its address)."""
    (tmp_path / "d0").mkdir()
    store = ChunkStore([str(tmp_path / "d0")])
    service = ChunkServerService(store, "127.0.0.1:1", metrics, **kwargs)
    server = rpc.Server("127.0.0.1:0", service.handlers()).start()
    try:
        yield store, f"127.0.0.1:{server.port}"
    finally:
        server.stop(1.0)
        service.close()
        store.close()


@pytest.fixture
def local(tmp_path):
    """A service in this process (its timeouts shortened) on an rpc.Server, and a client to it."""
    with served(tmp_path, _NoMetrics(), session_timeout_s=0.5) as (store, addr):
        conn = rpc.Client(addr)
        try:
            yield store, conn
        finally:
            conn.close()


def test_an_uncommitted_session_is_aborted_and_its_late_pieces_refused(local):
    store, conn = local
    piece = {"chunk_id": 90, "version": 1, "expect_version": 0, "offset": 0, "chain": []}
    conn.call("write", piece, b"half")
    assert store.chunks() == [] and store.take_changes() == ([], [])  # not a copy the master may count
    deadline = time.monotonic() + 10
    while store.chunk_count():
        assert time.monotonic() < deadline, "the idle session was never aborted"
        time.sleep(0.05)
    assert not list(Path(store.disk_stats()[0].path).rglob("chunk_*"))
    for method, params in (("write", {**piece, "offset": 4}), ("commit", {"chunk_id": 90, "version": 1, "chain": []})):
        with pytest.raises(rpc.RpcError) as info:
            conn.call(method, params, b"rest" if method == "write" else b"")
        assert info.value.status == rpc.FAILED_PRECONDITION and "idle" in info.value.message
    assert store.take_changes() == ([], [])


def test_set_version_supersedes_an_abandoned_session(local, monkeypatch):
    store, conn = local
    monkeypatch.setattr(service_module, "SUPERSEDE_IDLE_S", 0.0)
    conn.call("write", {"chunk_id": 91, "version": 1, "expect_version": 0, "offset": 0, "chain": []}, b"v1")
    conn.call("commit", {"chunk_id": 91, "version": 1, "chain": []})
    conn.call("set_version", {"chunk_id": 91, "expect_version": 1, "version": 2})
    conn.call("write", {"chunk_id": 91, "version": 2, "expect_version": 2, "offset": 0, "chain": []}, b"v2")
    # The writer of version 2 went away; the master moves the chunk on for the next one.
    conn.call("set_version", {"chunk_id": 91, "expect_version": 2, "version": 3})
    assert store.get(91).version == 3
    with pytest.raises(rpc.RpcError) as info:
        conn.call("commit", {"chunk_id": 91, "version": 2, "chain": []})
    assert info.value.status == rpc.FAILED_PRECONDITION and "superseded" in info.value.message


def test_write_commit_is_a_whole_session_in_one_request_down_the_chain(servers, client):
    cs1, cs2 = servers
    params = {"chunk_id": 95, "version": 1, "expect_version": 0, "offset": 10, "chain": [cs2.addr]}
    reply, _ = client.call(cs1.addr, "write_commit", params, b"small file")
    assert reply == {"ok": [cs1.addr, cs2.addr], "failed": []}
    for cs in servers:
        assert client.read(cs.addr, 95, 1, 0, 20) == bytes(10) + b"small file"
    with pytest.raises(rpc.RpcError) as info:  # the session is over: nothing to commit
        client.commit(cs1.addr, 95, 1, [cs2.addr])
    assert info.value.status == rpc.FAILED_PRECONDITION
    reply, _ = client.call(cs1.addr, "write_commit", {**params, "version": 2, "expect_version": 1, "chain": []}, b"v2")
    assert reply == {"ok": [cs1.addr], "failed": []}
    assert client.read(cs1.addr, 95, 2, 10, 4) == b"v2al"
    assert status_of(lambda: client.read(cs2.addr, 95, 2, 0, 1)) == rpc.FAILED_PRECONDITION  # left at version 1


class _Ops:
    def __init__(self):
        self.ops = []

    def observe(self, op, seconds, error=""):
        self.ops.append(op)


def test_the_chunk_client_sends_a_one_piece_session_as_one_request(tmp_path):
    seen = _Ops()
    with served(tmp_path, seen) as (store, addr):
        chunks = ChunkClient()
        try:
            assert chunks.write(96, 1, 0, [addr], [(0, b"x" * 4096)]) == ([addr], [])
            assert seen.ops == ["write_commit"], "a small file: one round trip, not a write and a commit"
            assert store.get(96).version == 1
            seen.ops.clear()
            big = random.Random(6).randbytes(3 * MiB)  # two pieces: written, then committed
            assert chunks.write(96, 2, 1, [addr], [(0, big)]) == ([addr], [])
            assert sorted(seen.ops) == ["commit", "write", "write"]
            assert b"".join(chunks.read(96, 2, 0, len(big), [addr])) == big
        finally:
            chunks.close()


def test_write_commit_joins_a_session_a_cut_off_client_began(local):
    store, conn = local
    piece = {"chunk_id": 97, "version": 1, "expect_version": 0, "offset": 0, "chain": []}
    conn.call("write", piece, b"first ")
    assert store.chunks() == []
    assert conn.call("write_commit", {**piece, "offset": 6}, b"second")[0] == {"ok": ["127.0.0.1:1"], "failed": []}
    assert bytes(store.read(97, 1, 0, 12)) == b"first second"


def test_a_server_without_write_commit_gets_a_write_and_a_commit(tmp_path):
    (tmp_path / "d0").mkdir()
    store = ChunkStore([str(tmp_path / "d0")])
    seen = _Ops()
    service = ChunkServerService(store, "127.0.0.1:1", seen)
    handlers = service.handlers()
    del handlers["write_commit"]  # a chunkserver older than the client
    server = rpc.Server("127.0.0.1:0", handlers).start()
    chunks = ChunkClient()
    addr = f"127.0.0.1:{server.port}"
    try:
        assert chunks.write(98, 1, 0, [addr], [(0, b"y" * 4096)]) == ([addr], [])
        assert seen.ops == ["write", "commit"]
        assert bytes(store.read(98, 1, 0, 4096)) == b"y" * 4096
    finally:
        chunks.close()
        server.stop(1.0)
        service.close()
        store.close()
