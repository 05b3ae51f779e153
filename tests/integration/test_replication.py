"""Chunkserver-to-chunkserver replication over real rpc servers in this process: a complete copy,
a source that fails mid-copy, a source that sends other bytes than its CRCs say, the `replicate`
rpc, and what a restart does with a half-written replica."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mooseng import rpc
from mooseng.chunkserver.replicator import PIECE, Replicator
from mooseng.chunkserver.service import ChunkServerService
from mooseng.chunkserver.store import TMP_SUFFIX, ChunkStore, chunk_path
from mooseng.errors import FsError

MiB = 1 << 20


class _NoMetrics:
    def observe(self, op, seconds, error=""):
        pass


class Node:
    """A store, its service with a replicator, on an rpc.Server; `faults` wraps the read handler."""

    def __init__(self, tmp: Path, name: str):
        self.dir = tmp / name
        (self.dir / "d0").mkdir(parents=True)
        self.store = ChunkStore([str(self.dir / "d0")])
        self.replicator = Replicator(self.store, workers=2, rate_bytes_s=1e9)
        self.service = ChunkServerService(self.store, "127.0.0.1:1", _NoMetrics(), replicator=self.replicator)
        handlers = self.service.handlers()
        self.reads = 0
        self.fail_after: int | None = None  # read calls served before the source "dies"
        self.corrupt = False
        read = handlers["read"]

        def faulty_read(params, data, peer):
            self.reads += 1
            if self.fail_after is not None and self.reads > self.fail_after:
                raise rpc.RpcError(rpc.INTERNAL, "source disk failed")
            reply = read(params, data, peer)
            if self.corrupt:
                return rpc.Reply(reply.result, bytes([reply.data[0] ^ 1]) + bytes(reply.data[1:]))
            return reply

        handlers["read"] = faulty_read
        self.server = rpc.Server("127.0.0.1:0", handlers).start()
        self.addr = f"127.0.0.1:{self.server.port}"

    def files(self) -> list[str]:
        return sorted(p.name for p in self.dir.rglob("chunk_*"))

    def close(self) -> None:
        self.server.stop(1.0)
        self.replicator.close()
        self.service.close()
        self.store.close()


@pytest.fixture
def pair(tmp_path):
    src, dst = Node(tmp_path, "src"), Node(tmp_path, "dst")
    yield src, dst
    src.close()
    dst.close()


def stored(node: Node, chunk_id: int, version: int, data: bytes) -> None:
    node.store.write(chunk_id, version, 0, 0, data)


def test_a_complete_copy_is_checked_synced_and_reported(pair):
    src, dst = pair
    data = os.urandom(9 * MiB + 12345)  # three read pieces, the last one partial
    stored(src, 7, 3, data)
    dst.store.take_changes()
    assert dst.replicator.replicate(7, 3, src.addr) == len(data)
    info = dst.store.get(7)
    assert (info.version, info.length) == (3, len(data))
    assert bytes(dst.store.read(7, 3, 0, len(data))) == data
    added, _ = dst.store.take_changes()
    assert [(c.chunk_id, c.version) for c in added] == [(7, 3)]
    assert dst.files() == [f"chunk_{7:016X}.mng"]
    restarted = ChunkStore([str(dst.dir / "d0")])  # what a restart finds: a whole chunk
    assert restarted.get(7) == info and bytes(restarted.read(7, 3, 0, 100)) == data[:100]


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_a_source_failing_mid_copy_leaves_no_copy(pair, fail_after):
    src, dst = pair
    stored(src, 8, 1, os.urandom(3 * PIECE))
    src.fail_after = fail_after
    with pytest.raises(rpc.RpcError, match="source disk failed"):
        dst.replicator.replicate(8, 1, src.addr)
    assert dst.store.get(8) is None and dst.store.chunks() == []
    assert dst.store.take_changes() == ([], [])
    assert dst.files() == [], "not even a temporary file is left"


def test_bytes_that_do_not_match_the_source_crcs_are_refused(pair):
    src, dst = pair
    stored(src, 9, 2, os.urandom(MiB))
    src.corrupt = True
    with pytest.raises(FsError, match="CRC of block 0 differs"):
        dst.replicator.replicate(9, 2, src.addr)
    assert dst.store.get(9) is None and dst.files() == []


def test_wrong_version_and_existing_copy_are_refused(pair):
    src, dst = pair
    stored(src, 10, 4, b"abc")
    with pytest.raises(rpc.RpcError) as err:
        dst.replicator.replicate(10, 3, src.addr)
    assert err.value.status == rpc.FAILED_PRECONDITION
    stored(dst, 10, 4, b"abc")
    with pytest.raises(FsError, match="already here"):
        dst.replicator.replicate(10, 4, src.addr)


def test_the_replicate_rpc(pair):
    src, dst = pair
    data = os.urandom(100_000)
    stored(src, 11, 1, data)
    client = rpc.Client(dst.addr)
    try:
        reply, _ = client.call("replicate", {"chunk_id": 11, "version": 1, "source": src.addr})
        assert reply == {"bytes": len(data)}
        with pytest.raises(rpc.RpcError) as err:
            client.call("replicate", {"chunk_id": 11, "version": 1, "source": "nowhere"})
        assert err.value.status == rpc.INVALID_ARGUMENT
        with pytest.raises(rpc.RpcError) as err:
            client.call("replicate", {"chunk_id": 11, "version": 1, "source": src.addr})
        assert err.value.status == rpc.ALREADY_EXISTS
    finally:
        client.close()
    assert bytes(dst.store.read(11, 1, 0, len(data))) == data


def test_orders_run_in_the_background_and_report_their_outcome(pair):
    src, dst = pair
    stored(src, 12, 1, os.urandom(MiB))
    done = []
    dst.replicator.on_done = lambda: done.append(1)
    dst.replicator.submit([{"chunk_id": 12, "version": 1, "source": src.addr},
                           {"chunk_id": 13, "version": 1, "source": src.addr}])
    deadline = time.monotonic() + 10
    while len(done) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    results = sorted(dst.replicator.take_results(), key=lambda r: r["chunk_id"])
    assert results[0] == {"chunk_id": 12, "version": 1, "bytes": MiB, "error": ""}
    assert results[1]["chunk_id"] == 13 and "NOT_FOUND" in results[1]["error"]


def test_a_leftover_temporary_file_is_removed_at_start(tmp_path):
    disk = tmp_path / "d0"
    disk.mkdir()
    ChunkStore([str(disk)]).close()
    leftover = Path(chunk_path(str(disk), 5) + TMP_SUFFIX)
    leftover.write_bytes(b"half a chunk")
    store = ChunkStore([str(disk)])
    assert not leftover.exists() and store.chunks() == [] and store.bad_files == []
