"""The archive class (8+4 erasure coding) end to end, on real daemons and a real FUSE mount: a
file of several chunks survives a whole chunkserver, a corrupted part is read around and rebuilt,
and a file changes class archive -> default -> archive with its data intact and the old pieces gone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mooseng import ec
from mooseng.chunkserver.store import chunk_path
from mooseng.constants import CHUNK_SIZE

pytestmark = pytest.mark.fuse

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cli(cluster, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "daemons"))
    proc = subprocess.run([sys.executable, "-m", "mooseng.cli.main", "--master", ",".join(cluster.master_endpoints),
                           *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, f"mooseng {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def fileinfo(cluster, path: Path) -> dict:
    return json.loads(cli(cluster, "fileinfo", "--json", str(path)))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cold_digest(cluster, path: Path) -> str:
    cluster.restart("client-1")  # nothing cached in the client
    drop_caches()
    return digest(path)


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        for pos in range(0, len(data), MiB):
            f.write(data[pos:pos + MiB])
        f.flush()
        os.fsync(f.fileno())


def wait_for(check, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def valid(chunk: dict) -> list[dict]:
    return [c for c in chunk["copies"] if c["valid"]]


def in_parts(info: dict, k: int = 8, m: int = 4) -> bool:
    """Every chunk stored as k+m valid parts, one each, and nothing else left."""
    return all(chunk["ec"] == [k, m] and chunk["target"] == [k, m]
               and sorted(c["part"] for c in valid(chunk)) == list(range(k + m))
               and sorted(c["part"] for c in chunk["copies"]) == list(range(k + m))
               for chunk in info["chunks"])


def in_copies(info: dict, copies: int = 2) -> bool:
    return all(chunk["ec"] is None and chunk["target"] is None
               and [c["part"] for c in valid(chunk)] == [-1] * copies
               and [c["part"] for c in chunk["copies"]] == [-1] * copies
               for chunk in info["chunks"])


@pytest.fixture
def archive(cluster_factory):
    """A cluster (3 chunkservers x 4 disks) with a directory of class archive."""
    cluster = cluster_factory(clients=1, env_extra={"MOOSENG_SCRUB_MB_S": "200"})
    directory = cluster.mountpoint(1) / "cold"
    directory.mkdir()
    cli(cluster, "setclass", "archive", str(directory))
    assert "archive" in cli(cluster, "getclass", str(directory))
    return cluster, directory


def test_an_archive_file_survives_a_lost_chunkserver(archive):
    cluster, directory = archive
    path = directory / "big"
    data = os.urandom(2 * CHUNK_SIZE + 3 * MiB + 12345)  # three chunks, the last one partial
    write(path, data)
    info = wait_for(lambda: (i := fileinfo(cluster, path)) and all(c["disk"] is not None for ch in i["chunks"]
                                                                  for c in ch["copies"]) and i,
                    "the disks of the parts (known at their servers' next heartbeat)", timeout=10)
    assert len(info["chunks"]) == 3 and in_parts(info)
    for chunk in info["chunks"]:
        places = [(c["server_id"], c["disk"]) for c in valid(chunk)]
        assert len(set(places)) == 12, "12 distinct disks"
        per_server = [sum(1 for s, _ in places if s == server) for server in {s for s, _ in places}]
        assert per_server == [4, 4, 4], "at most m parts per chunkserver"
    cluster.kill("chunkserver-2")
    assert cold_digest(cluster, path) == hashlib.sha256(data).hexdigest()
    # a range read that starts mid-stripe and crosses a chunk boundary, degraded as well
    with open(path, "rb") as f:
        f.seek(CHUNK_SIZE - 100_000)
        assert f.read(300_000) == data[CHUNK_SIZE - 100_000:CHUNK_SIZE + 200_000]
    # a cut inside a stripe while the server is still down: the 8 parts left take it, and the
    # re-encoded parity of the cut row decodes the missing data parts right
    cut = CHUNK_SIZE + 5 * 64 * 1024 + 1234
    os.truncate(path, cut)
    assert cold_digest(cluster, path) == hashlib.sha256(data[:cut]).hexdigest()


def test_a_corrupted_part_is_read_around_and_rebuilt(archive):
    cluster, directory = archive
    path = directory / "f"
    data = os.urandom(20 * MiB + 777)
    write(path, data)
    info = fileinfo(cluster, path)
    [chunk] = info["chunks"]
    part0 = next(c for c in valid(chunk) if c["part"] == 0)
    node = next(n for n in cluster.nodes if n.kind == "chunkserver" and n.addr("api") == part0["address"])
    stored = ec.part_id(chunk["chunk_id"], 0)
    [file] = [p for p in (Path(chunk_path(str(d), stored)) for d in sorted(node.dir.glob("disk*"))) if p.exists()]
    with open(file, "r+b") as f:  # flip bytes in the part's block 1 (chunk block 8)
        f.seek(8192 + 64 * 1024 + 99)
        f.write(bytes(b ^ 0xFF for b in f.read(32)))
    assert cold_digest(cluster, path) == hashlib.sha256(data).hexdigest()
    assert "parts [0] unreadable" in cluster.node("client-1").log_path.read_text()  # decoded, not served

    seen = []

    def rebuilt():
        [now] = fileinfo(cluster, path)["chunks"]
        seen[:] = [now]
        zero = [c for c in now["copies"] if c["part"] == 0]
        return len(zero) == 1 and zero[0]["valid"] and in_parts({"chunks": [now]}) and now

    try:
        now = wait_for(rebuilt, "part 0 rebuilt from the others and the damaged one deleted")
    except AssertionError as exc:  # say where it stood, and what the master and servers logged
        logs = {n.name: n.log_path.read_text()[-3000:] for n in cluster.nodes if n.kind != "client"}
        raise AssertionError(f"{exc}\nlast fileinfo: {seen}\nlogs: {logs}") from None
    assert now["state"] == "stable"
    assert cold_digest(cluster, path) == hashlib.sha256(data).hexdigest()


def test_class_changes_convert_the_file_both_ways(archive):
    cluster, directory = archive
    path = directory / "g"
    data = os.urandom(CHUNK_SIZE + 5 * MiB + 3)
    write(path, data)
    expected = hashlib.sha256(data).hexdigest()
    assert in_parts(fileinfo(cluster, path))

    cli(cluster, "setclass", "default", str(path))
    info = wait_for(lambda: (i := fileinfo(cluster, path)) and in_copies(i) and i, "conversion to 2 copies")
    assert info["progress"] == {"converted": 2, "total": 2}
    assert cold_digest(cluster, path) == expected

    cli(cluster, "setclass", "archive", str(path))
    wait_for(lambda: in_parts(fileinfo(cluster, path)), "conversion back to 8+4 parts")
    assert cold_digest(cluster, path) == expected
    # and a write into the converted file goes to its parts (read-modify-write of a stripe)
    with open(path, "r+b") as f:
        f.seek(CHUNK_SIZE + 123_456)
        f.write(b"patched" * 1000)
        f.flush()
        os.fsync(f.fileno())
    patched = bytearray(data)
    patched[CHUNK_SIZE + 123_456:CHUNK_SIZE + 130_456] = b"patched" * 1000
    assert cold_digest(cluster, path) == hashlib.sha256(patched).hexdigest()
    assert in_parts(fileinfo(cluster, path))
