"""Several client processes writing the same chunk at once, through separate client library
instances (each caches per process, as separate machines would): no write may fail, and what is
left is one writer's data per write, or every writer's data for disjoint ranges.

Without the master's per-chunk write lease, a second writer's write_chunk bumped the version
under the first one: the copies refused it (EBUSY, "no valid copy of chunk") or refused the
first writer's pieces (stale), and about two thirds of such writes ended in EIO.
"""

import errno
import os
import threading
import time

import pytest

from mooseng import rpc
from mooseng.client.chunkclient import ChunkClient, StaleSession
from mooseng.client.fs import Client
from mooseng.constants import ROOT_INODE
from mooseng.errors import FsError
from mooseng.master.registry import DELETING, NO_CLASS
from support.polling import run_together

KiB = 1 << 10
WRITERS = 4
ROUNDS = 12


@pytest.fixture(scope="module")
def cluster(module_cluster_factory):
    return module_cluster_factory(clients=0)


@pytest.fixture
def clients(cluster):
    made = [Client(cluster.master_endpoints, timeout_s=20) for _ in range(WRITERS + 1)]
    try:
        yield made
    finally:
        for c in made:
            c.close()


def write_at(fs: Client, ino: int, offset: int, data: bytes) -> None:
    fh = fs.open(ino, os.O_WRONLY)
    try:
        fs.write(fh, offset, data)
    finally:
        fs.release(fh)


def read_all(fs: Client, ino: int) -> bytes:
    fh = fs.open(ino, os.O_RDONLY)
    try:
        return bytes(fs.read(fh, 0, 1 << 24))
    finally:
        fs.release(fh)


def pattern(writer: int, round_: int, size: int) -> bytes:
    return f"w{writer}r{round_}.".encode().ljust(16, b".") * (size // 16)


def test_overlapping_writes_to_one_chunk(clients):
    setup, writers = clients[0], clients[1:]
    ino = setup.create(ROOT_INODE, "overlap", 0o644)[1].ino
    size = 256 * KiB
    write_at(setup, ino, 0, bytes(size))
    for r in range(ROUNDS):
        datas = [pattern(i, r, size) for i in range(WRITERS)]
        errors = run_together([lambda fs=fs, d=d: write_at(fs, ino, 0, d) for fs, d in zip(writers, datas)])
        assert not errors, errors
        content = read_all(setup, ino)
        assert content in datas, f"round {r}: the content is no writer's data: {content[:64]!r}..."


def test_disjoint_ranges_of_one_chunk(clients):
    setup, writers = clients[0], clients[1:]
    ino = setup.create(ROOT_INODE, "disjoint", 0o644)[1].ino
    part = 64 * KiB
    write_at(setup, ino, 0, bytes(part * WRITERS))
    for r in range(ROUNDS):
        datas = [pattern(i, r, part) for i in range(WRITERS)]
        errors = run_together([lambda fs=fs, i=i, d=d: write_at(fs, ino, i * part, d)
                          for i, (fs, d) in enumerate(zip(writers, datas))])
        assert not errors, errors
        assert read_all(setup, ino) == b"".join(datas), f"round {r}: a writer's range was lost"


def test_whole_small_files(clients):
    """write_file truncates (O_TRUNC) then writes: truncations and writes of the same chunk race.
    Every write covers the whole file, so whatever the order the last one is the content."""
    setup, writers = clients[0], clients[1:]
    names = [f"small{i}" for i in range(3)]
    for name in names:
        setup.write_file(name, b"")
    for r in range(ROUNDS):
        datas = {(i, name): pattern(i, r, 48) for i in range(WRITERS) for name in names}

        def writer(i):
            for name in names:
                writers[i].write_file(name, datas[i, name])
        errors = run_together([lambda i=i: writer(i) for i in range(WRITERS)])
        assert not errors, errors
        for name in names:
            content = setup.read_file(name)
            assert content in [datas[i, name] for i in range(WRITERS)], f"round {r} {name}: {content!r}"


def test_write_to_a_file_unlinked_meanwhile_succeeds_and_leaves_nothing(cluster, clients):
    """As on Linux, a write to a file that another client unlinks while it is open succeeds;
    its data goes nowhere (the file is gone) and no chunk of it stays behind."""
    setup, writer = clients[0], clients[1]
    for r in range(ROUNDS):
        created, attr = setup.create(ROOT_INODE, f"doomed{r}", 0o644)
        setup.release(created)  # else setup's own unlink keeps the file (sustained) for that handle
        fh = writer.open(attr.ino, os.O_WRONLY)
        writer.write(fh, 0, b"x" * (64 * KiB))
        errors = run_together([lambda: writer.release(fh), lambda: setup.unlink(ROOT_INODE, f"doomed{r}")])
        assert not errors, errors
        with pytest.raises(FsError) as exc:
            setup.getattr(attr.ino)
        assert exc.value.errno == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # freed chunks go at the chunkservers' next heartbeats
        leftover = setup.master.call("status")["chunks"]["by_class"].get(NO_CLASS, {}).get(DELETING, 0)
        if not leftover:
            break
        time.sleep(0.5)
    assert not leftover, f"{leftover} chunks of unlinked files stayed on the chunkservers"


def test_a_writer_waits_for_the_lock_within_its_timeout(cluster, clients):
    """A lease that is never given back: the other client retries for its master timeout, then
    EIO naming the lock; once the holder commits, writing works again."""
    setup, holder = clients[0], clients[1]
    ino = setup.create(ROOT_INODE, "held", 0o644)[1].ino
    write_at(setup, ino, 0, b"a" * 64)
    chunk = holder.master.call("write_chunk", {"ino": ino, "index": 0})  # and never writes
    impatient = Client(cluster.master_endpoints, timeout_s=1)
    try:
        started = time.monotonic()
        with pytest.raises(FsError) as exc:
            write_at(impatient, ino, 0, b"b" * 64)
        assert exc.value.errno == errno.EIO and "locked" in exc.value.message
        assert 0.9 < time.monotonic() - started < 5
        holder.master.call("commit_write", {"ino": ino, "size": 0, "chunks": [
            {"chunk_id": chunk["chunk_id"], "version": chunk["version"], "ok": chunk["servers"]}]})
        write_at(impatient, ino, 0, b"c" * 64)
    finally:
        impatient.close()
    assert read_all(setup, ino) == b"c" * 64


def test_a_session_the_master_gave_no_lease_for_makes_the_next_writer_wait(clients):
    """A write session open on a copy that the master holds no lease for (it was opened under
    the previous leader): the bump is refused there (EBUSY), the copies it moved are moved back,
    and the writer retries until the session committed; no copy is fenced."""
    setup, writer = clients[0], clients[1]
    ino = setup.create(ROOT_INODE, "inherited", 0o644)[1].ino
    write_at(setup, ino, 0, b"a" * 64)
    [ref] = setup.master.call("chunks", {"ino": ino, "index": 0})
    chunk_id, version, first = ref["chunk_id"], ref["version"], ref["servers"][0]
    copy = rpc.Client(first, timeout_s=10)
    try:
        # Open a session at the current version on one copy, writing what is there already.
        copy.call("write", {"chunk_id": chunk_id, "version": version, "expect_version": version, "offset": 0,
                            "chain": []}, b"a" * 64)
        done = threading.Event()
        errors = []

        def write():
            try:
                write_at(writer, ino, 0, b"b" * 64)
            except FsError as exc:
                errors.append(exc)
            done.set()
        thread = threading.Thread(target=write)
        thread.start()
        # (well within the 2 s after which a set_version aborts an idle session as abandoned)
        assert not done.wait(0.5), f"the write did not wait for the open session: {errors}"
        copy.call("commit", {"chunk_id": chunk_id, "version": version, "chain": []})
        thread.join(20)
    finally:
        copy.close()
    assert not errors, errors
    assert read_all(setup, ino) == b"b" * 64
    info = setup.master.call("fileinfo", {"ino": ino})
    assert [c["state"] for c in info["chunks"][0]["copies"]] == ["valid", "valid"], info


@pytest.mark.parametrize("mode", ["fanout", "chain"])
def test_a_session_overtaken_by_a_newer_version_is_reported_stale(cluster, clients, mode):
    """What a writer whose lease died with the leader sees when another writer moved the copies
    first: StaleSession (nothing stored), which the write-back answers with a new session."""
    setup = clients[0]
    ino = setup.create(ROOT_INODE, f"overtaken-{mode}", 0o644)[1].ino
    write_at(setup, ino, 0, b"a" * 64)
    late = setup.master.call("write_chunk", {"ino": ino, "index": 0})
    setup.master.call("commit_write", {"ino": ino, "size": 0, "chunks": [
        {"chunk_id": late["chunk_id"], "version": late["version"], "ok": late["servers"]}]})
    write_at(setup, ino, 0, b"b" * 64)  # the newer session (the same client: no lease in the way)
    chunks = ChunkClient(mode)
    try:
        with pytest.raises(StaleSession):
            chunks.write(late["chunk_id"], late["version"], late["expect_version"], late["servers"],
                         [(0, memoryview(b"c" * 64))])
    finally:
        chunks.close()
    assert read_all(setup, ino) == b"b" * 64
