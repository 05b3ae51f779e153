"""Two real chunkserver processes on 127.0.0.1, no master (their masterlinks keep retrying)."""

import os
import random
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

from mooseng import rpc, wire
from mooseng.chunkserver.store import HEADER_SIZE, chunk_path
from mooseng.constants import CHUNK_SIZE
from mooseng.proto import mooseng_pb2 as pb
from mooseng.proto import mooseng_pb2_grpc as pb_grpc

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
        channel = grpc.insecure_channel(self.addr, options=wire.GRPC_OPTIONS)
        try:
            grpc.channel_ready_future(channel).result(timeout=20)
        except grpc.FutureTimeoutError:
            raise AssertionError(f"chunkserver did not start:\n{self.log.read_text()}") from None
        finally:
            channel.close()

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


@pytest.fixture
def servers(tmp_path):
    master = f"127.0.0.1:{free_port()}"  # nothing listens there
    pair = [Chunkserver(tmp_path, 1, master), Chunkserver(tmp_path, 2, master)]
    try:
        for cs in pair:
            cs.start()
        yield pair
    finally:
        codes = [cs.stop() for cs in pair]
    for cs, code in zip(pair, codes):
        assert code in (0, -signal.SIGKILL), f"exit code {code}:\n{cs.log.read_text()}"


class Client:
    def __init__(self):
        self._channels = {}

    def stub(self, addr) -> pb_grpc.ChunkServerStub:
        if addr not in self._channels:
            self._channels[addr] = grpc.insecure_channel(addr, options=wire.GRPC_OPTIONS)
        return pb_grpc.ChunkServerStub(self._channels[addr])

    def channel(self, addr) -> grpc.Channel:
        self.stub(addr)
        return self._channels[addr]

    def write(self, addr, chunk_id, version, expect, chain, extents, piece=MiB, timeout=60):
        def messages():
            yield pb.WriteRequest(chunk_id=chunk_id, version=version, expect_version=expect, chain=chain)
            for offset, data in extents:
                for pos in range(0, len(data), piece):
                    yield pb.WriteRequest(offset=offset + pos, data=data[pos:pos + piece])

        return self.stub(addr).Write(messages(), timeout=timeout)

    def read(self, addr, chunk_id, version, offset, length) -> bytes:
        request = pb.ReadRequest(chunk_id=chunk_id, version=version, offset=offset, length=length)
        return b"".join(r.data for r in self.stub(addr).Read(request, timeout=60))

    def close(self):
        for channel in self._channels.values():
            channel.close()


@pytest.fixture
def client():
    c = Client()
    yield c
    c.close()


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()




def test_chained_write_lands_byte_exact_on_both(servers, client):
    cs1, cs2 = servers
    data = random.Random(1).randbytes(CHUNK_SIZE)
    reply = client.write(cs1.addr, 77, 1, 0, [cs2.addr], [(0, data)], timeout=None)
    assert (list(reply.ok), list(reply.failed), reply.written) == ([cs1.addr, cs2.addr], [], CHUNK_SIZE)
    for cs in servers:
        assert client.read(cs.addr, 77, 1, 0, CHUNK_SIZE) == data
        assert client.read(cs.addr, 77, 1, 12345, 3 * MiB + 7) == data[12345:12345 + 3 * MiB + 7]

    patch = random.Random(2).randbytes(300_001)
    reply = client.write(cs1.addr, 77, 2, 1, [cs2.addr], [(5, patch), (40 * MiB + 1, patch)], piece=100_000)
    assert list(reply.ok) == [cs1.addr, cs2.addr]
    expected = bytearray(data)
    expected[5:5 + len(patch)] = patch
    expected[40 * MiB + 1:40 * MiB + 1 + len(patch)] = patch
    for cs in servers:
        assert client.read(cs.addr, 77, 2, 0, CHUNK_SIZE) == expected


def test_holes_and_reads_past_the_data_are_zeros(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 5, 1, 0, [], [(2 * MiB, b"tail")])
    assert client.read(cs1.addr, 5, 1, 0, 2 * MiB + 10) == bytes(2 * MiB) + b"tail" + bytes(6)
    assert client.read(cs1.addr, 5, 1, 0, 0) == b""


def test_truncate(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 6, 1, 0, [], [(0, b"x" * 100_000)])
    client.stub(cs1.addr).Truncate(pb.TruncateRequest(chunk_id=6, version=2, expect_version=1, length=10), timeout=10)
    assert client.read(cs1.addr, 6, 2, 0, 100) == b"x" * 10 + bytes(90)
    code = status_of(lambda: client.stub(cs1.addr).Truncate(
        pb.TruncateRequest(chunk_id=6, version=9, expect_version=8, length=0), timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_errors_map_to_status_codes(servers, client):
    cs1, _ = servers
    client.write(cs1.addr, 8, 3, 0, [], [(0, bytes(range(256)) * 1024)])
    assert status_of(lambda: client.read(cs1.addr, 999, 1, 0, 10)) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.read(cs1.addr, 8, 2, 0, 10)) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(lambda: client.write(cs1.addr, 8, 5, 4, [], [(0, b"x")])) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(lambda: client.write(cs1.addr, 9, 2, 1, [], [(0, b"x")])) == grpc.StatusCode.NOT_FOUND
    path = next(p for p in (chunk_path(d, 8) for d in cs1.data_dirs) if os.path.exists(p))
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + 70_000)
        f.write(b"\xff\xfe")
    assert status_of(lambda: client.read(cs1.addr, 8, 3, 65536, 10)) == grpc.StatusCode.DATA_LOSS
    assert client.read(cs1.addr, 8, 3, 0, 65536) == (bytes(range(256)) * 256)
    metrics = urllib.request.urlopen(f"http://{cs1.metrics}/metrics", timeout=10).read().decode()
    assert "mooseng_crc_errors_total 1.0" in metrics
    assert "mooseng_chunks_total 1.0" in metrics
    assert 'mooseng_disk_bytes{disk="%s",kind="free"}' % cs1.data_dirs[0] in metrics
    assert 'mooseng_operation_duration_seconds_count{op="read"}' in metrics


def test_malformed_requests_get_invalid_argument(servers, client):
    cs1, cs2 = servers
    channel = client.channel(cs1.addr)
    raw_read = channel.unary_stream("/mooseng.v1.ChunkServer/Read")
    raw_write = channel.stream_unary("/mooseng.v1.ChunkServer/Write")
    raw_truncate = channel.unary_unary("/mooseng.v1.ChunkServer/Truncate")
    garbage = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage"
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: list(raw_read(garbage, timeout=10))) == invalid
    assert status_of(lambda: raw_truncate(garbage, timeout=10)) == invalid
    assert status_of(lambda: raw_write(iter([garbage]), timeout=10)) == invalid
    assert status_of(lambda: raw_write(iter([b"\x32\x10short"]), timeout=10)) == invalid
    assert status_of(lambda: raw_write(iter([]), timeout=10)) == invalid
    assert status_of(lambda: client.read(cs1.addr, 0, 1, 0, 10)) == invalid
    assert status_of(lambda: client.read(cs1.addr, 1, 1, CHUNK_SIZE - 1, 2)) == invalid
    assert status_of(lambda: client.write(cs1.addr, 0, 1, 0, [], [(0, b"x")])) == invalid
    assert status_of(lambda: client.write(cs1.addr, 3, 1, 0, ["no-port"], [(0, b"x")])) == invalid
    assert status_of(lambda: client.write(cs1.addr, 3, 1, 0, [], [(CHUNK_SIZE - 1, b"xy")])) == invalid
    first = pb.WriteRequest(chunk_id=4, version=1, expect_version=0, chain=[cs2.addr]).SerializeToString()
    assert status_of(lambda: raw_write(iter([first, garbage]), timeout=10)) == invalid
    assert status_of(lambda: client.stub(cs1.addr).Truncate(pb.TruncateRequest(chunk_id=1), timeout=10)) == invalid
    assert status_of(lambda: client.read(cs1.addr, 4, 1, 0, 1)) == grpc.StatusCode.NOT_FOUND
    # Both daemons still serve.
    client.write(cs1.addr, 3, 1, 0, [cs2.addr], [(0, b"still up")])
    assert client.read(cs2.addr, 3, 1, 0, 8) == b"still up"
    assert all(cs.proc.poll() is None for cs in servers)


def test_downstream_killed_mid_write_fails_only_downstream(servers, client):
    cs1, cs2 = servers
    data = random.Random(3).randbytes(32 * MiB)
    killed = threading.Event()

    def messages():
        yield pb.WriteRequest(chunk_id=11, version=1, expect_version=0, chain=[cs2.addr])
        for pos in range(0, len(data), MiB):
            if pos == 8 * MiB:
                os.kill(cs2.proc.pid, signal.SIGKILL)
                cs2.proc.wait()
                killed.set()
            yield pb.WriteRequest(offset=pos, data=data[pos:pos + MiB])

    reply = client.stub(cs1.addr).Write(messages(), timeout=60)
    assert killed.is_set()
    assert (list(reply.ok), list(reply.failed), reply.written) == ([cs1.addr], [cs2.addr], len(data))
    assert client.read(cs1.addr, 11, 1, 0, len(data)) == data
    # The chain toward a dead server keeps failing fast, and cs1 keeps storing.
    reply = client.write(cs1.addr, 12, 1, 0, [cs2.addr], [(0, b"after")])
    assert (list(reply.ok), list(reply.failed)) == ([cs1.addr], [cs2.addr])


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
        fake_master.wait_for(lambda m: {c["chunk_id"] for b in m.beats for c in b["added"]} >= {31, 32}, "added deltas")
        added = {c["chunk_id"]: c for b in fake_master.beats for c in b["added"]}
        assert (added[31]["version"], added[31]["length"]) == (2, 1000)
        fake_master.wait_for(lambda m: m.beats[-1]["bytes_written"] == 1001, "byte counters")

        with fake_master.lock:
            fake_master.deletes = [{"chunk_id": 31, "version": 1, "disk": 0}, {"chunk_id": 32, "version": 0, "disk": None}]
        fake_master.wait_for(lambda m: any(c["chunk_id"] == 32 for b in m.beats for c in b["removed"]), "removed delta")
        assert status_of(lambda: client.read(cs.addr, 32, 5, 0, 1)) == grpc.StatusCode.NOT_FOUND
        assert client.read(cs.addr, 31, 2, 0, 3) == b"xxx"  # version 1 asked: not this copy

        with fake_master.lock:
            fake_master.reregister = True
        fake_master.wait_for(lambda m: len(m.registers) >= 2, "re-registration")
        assert [(c["chunk_id"], c["version"], c["length"]) for c in fake_master.registers[-1]["chunks"]] == [(31, 2, 1000)]
    finally:
        assert cs.stop() == 0
    text = cs.log.read_text()
    assert text.count(f"registered with master {fake_master.addr}") == 2
    assert "Traceback" not in text


def test_a_write_cut_off_by_the_client_can_be_retried(servers, client):
    cs1, cs2 = servers
    data = random.Random(4).randbytes(6 * MiB)

    def messages():
        yield pb.WriteRequest(chunk_id=41, version=1, expect_version=0, chain=[cs2.addr])
        for pos in range(0, 4 * MiB, MiB):
            yield pb.WriteRequest(offset=pos, data=data[pos:pos + MiB])
        time.sleep(0.5)
        raise RuntimeError("client gave up")

    future = client.stub(cs1.addr).Write.future(messages(), timeout=60)
    with pytest.raises(grpc.RpcError):
        future.result()
    deadline = time.monotonic() + 10
    while True:  # the servers may still be closing the cut-off session (UNAVAILABLE: busy)
        try:
            reply = client.write(cs1.addr, 41, 1, 0, [cs2.addr], [(0, data)])
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc
            time.sleep(0.05)
    assert (list(reply.ok), list(reply.failed)) == ([cs1.addr, cs2.addr], [])
    for cs in servers:
        assert client.read(cs.addr, 41, 1, 0, len(data)) == data
        assert "Traceback" not in cs.log.read_text()
