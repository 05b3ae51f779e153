"""Failures a MooseFS operator expects to survive, on real daemons and real FUSE mounts:
a corrupted block, the master killed mid-workload, a master that stays down, full disks."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mooseng import rpc
from mooseng.chunkserver.store import chunk_path
from mooseng.client.masterclient import MasterClient

pytestmark = pytest.mark.fuse

MiB = 1024 * 1024


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def chunk_copies(cluster, path: Path) -> tuple[int, int, list[str]]:
    """(chunk_id, version, servers in the order clients try them) of the file's first chunk."""
    client = MasterClient(cluster.master_endpoints, timeout_s=10)
    try:
        (chunk,) = client.call("chunks", {"ino": os.stat(path).st_ino, "index": 0, "count": 1})
    finally:
        client.close()
    return chunk["chunk_id"], chunk["version"], chunk["servers"]


def chunk_file_on(cluster, server: str, chunk_id: int) -> Path:
    node = next(n for n in cluster.nodes if n.kind == "chunkserver" and n.addr("api") == server)
    found = [Path(chunk_path(str(disk), chunk_id)) for disk in sorted(node.dir.glob("disk*"))]
    (existing,) = [p for p in found if p.exists()]
    return existing


def test_corrupted_block_is_detected_and_read_from_the_other_copy(cluster_factory):
    cluster = cluster_factory(clients=1)
    path = cluster.mountpoint(1) / "f"
    data = os.urandom(3 * MiB + 123)
    path.write_bytes(data)
    chunk_id, version, servers = chunk_copies(cluster, path)
    assert len(servers) == 2
    first = chunk_file_on(cluster, servers[0], chunk_id)
    with open(first, "r+b") as f:  # flip bytes inside data block 1 of the copy tried first
        f.seek(8192 + 64 * 1024 + 77)
        f.write(bytes(b ^ 0xFF for b in f.read(16)))
    cluster.restart("client-1")  # a cold client: nothing cached
    drop_caches()
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    with pytest.raises(rpc.RpcError) as err:  # the damaged copy itself refuses to serve the block
        rpc.Client(servers[0]).call("read", {"chunk_id": chunk_id, "version": version, "offset": 64 * 1024, "length": 4096})
    assert err.value.status == rpc.DATA_LOSS


# The workload runs in a process of its own: a FUSE file open in the test process would be
# flushed by the exec of the restarted master (exec closes inherited descriptors), and that flush
# waits for the very master being started.
WRITER = """
import hashlib, os, sys, time
root, stop = sys.argv[1], sys.argv[2]
i = 0
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    name = f"f{i:05d}"
    data = os.urandom(4096 + (i * 7919) % (300 * 1024))
    try:
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        print("ACK", name, hashlib.sha256(data).hexdigest(), flush=True)
    except OSError as exc:
        print("FAIL", name, exc, flush=True)
    i += 1
"""


def test_master_killed_mid_workload_loses_no_acknowledged_file(cluster_factory, tmp_path):
    cluster = cluster_factory(clients=1)
    root = cluster.mountpoint(1) / "work"
    root.mkdir()
    stop = tmp_path / "stop"
    out = tmp_path / "writer.out"
    with open(out, "w") as sink:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(stop)], stdout=sink)
    try:
        time.sleep(2)
        before = out.read_text().count("ACK ")
        cluster.kill("master-1")
        time.sleep(1)
        cluster.restart("master-1")
        time.sleep(2)
    finally:
        stop.touch()
        writer.wait(timeout=150)
    lines = out.read_text().splitlines()
    acked = {name: digest for kind, name, digest in (l.split(" ", 2) for l in lines) if kind == "ACK"}
    assert before > 5, "the workload did not run before the kill"
    assert len(acked) > before, f"no file was acknowledged after the master came back: {lines[-3:]}"
    cluster.restart("client-1")
    for name, digest in acked.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


def test_master_down_fails_with_a_clear_error_within_the_bound(cluster_factory):
    cluster = cluster_factory(clients=1, env_extra={"MOOSENG_MASTER_TIMEOUT_S": "3"})
    mnt = cluster.mountpoint(1)
    (mnt / "before").write_bytes(b"x")
    cluster.kill("master-1")
    start = time.monotonic()
    with pytest.raises(OSError) as err:
        os.stat(mnt / "never-created")
    elapsed = time.monotonic() - start
    assert err.value.errno == errno.EIO
    assert elapsed < 15, f"the client hung {elapsed:.1f}s instead of failing after its 3 s bound"
    log = (cluster.node("client-1").log_path).read_text()
    assert "master unreachable" in log


def test_full_disks_refuse_writes_with_enospc(cluster_factory):
    cluster = cluster_factory(clients=1, env_extra={"MOOSENG_LEAVE_FREE_MB": str(1 << 40)})
    path = cluster.mountpoint(1) / "f"
    with pytest.raises(OSError) as err:
        with open(path, "wb") as f:
            f.write(os.urandom(MiB))
            f.flush()
            os.fsync(f.fileno())
    assert err.value.errno == errno.ENOSPC
    st = os.statvfs(cluster.mountpoint(1))
    assert st.f_bavail == 0
