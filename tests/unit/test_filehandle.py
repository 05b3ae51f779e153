"""The client's write-back buffer and read-ahead (client/filehandle.py), against in-memory fakes
of the master and the chunkservers so that only the buffer logic is under test."""

import errno
import os
import random
import threading
import time

import pytest

from mooseng.client import filehandle
from mooseng.client.chunkclient import StaleSession, WriteResult
from mooseng.client.filehandle import Extents, Files
from mooseng.client.masterclient import ROOT, Attr
from mooseng.constants import BLOCK_SIZE, CHUNK_SIZE
from mooseng.errors import FsError

MiB = 1 << 20
RDWR = os.O_RDWR
SERVERS = ["cs-a:1", "cs-b:2"]


class FakeMaster:
    """write_chunk / commit_write / release_write / chunks / getattr with the master's rules, and a
    log of ops. An inode not in `files` is gone (ENOENT, as when another client unlinked it)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.files: dict[int, dict] = {}
        self.chunks: dict[int, int] = {}  # chunk_id -> version
        self.next_chunk = 1
        self.clock = 1000
        self.ops: list[tuple] = []

    def create(self, ino: int) -> Attr:
        self.files[ino] = {"size": 0, "mtime": 0, "ctime": 0, "chunks": {}}
        return self.attr(ino)

    def attr(self, ino: int) -> Attr:
        f = self.files[ino]
        return Attr(ino, 0o100644, 1, 0, 0, 0, f["size"], 0, f["mtime"], f["ctime"], "default")

    def call(self, op, args=None, cred=ROOT):
        with self.lock:
            self.clock += 1
            f = self.files.get(args["ino"])
            if f is None:
                raise FsError(errno.ENOENT, f"no inode {args['ino']}")
            if op == "write_chunk":
                index = args["index"]
                chunk_id = f["chunks"].get(index)
                if chunk_id is None:
                    chunk_id = f["chunks"][index] = self.next_chunk
                    self.next_chunk += 1
                    self.chunks[chunk_id] = 0
                self.chunks[chunk_id] += 1
                version = self.chunks[chunk_id]
                self.ops.append(("write_chunk", index, chunk_id, version))
                return {"chunk_id": chunk_id, "version": version, "expect_version": version - 1,
                        "new": version == 1, "servers": list(SERVERS)}
            if op == "commit_write":
                f["size"] = max(f["size"], args["size"])
                f["mtime"] = f["ctime"] = self.clock
                self.ops.append(("commit_write", args["size"], [(c["chunk_id"], c["version"]) for c in args["chunks"]]))
                return self.attr(args["ino"])._asdict()
            if op == "release_write":
                self.ops.append(("release_write", args["chunk_id"], args["version"]))
                return {}
            if op == "chunks":
                out = []
                for i in range(args["index"], args["index"] + args["count"]):
                    chunk_id = f["chunks"].get(i, 0)
                    out.append({"index": i, "chunk_id": chunk_id, "version": self.chunks.get(chunk_id, 0),
                                "servers": list(SERVERS) if chunk_id else []})
                self.ops.append(("chunks", args["index"]))
                return out
            raise AssertionError(f"unexpected op {op}")


class FakeChunks:
    """Chunk copies in memory. `gate` (cleared) holds writes; `fail` makes writes raise EIO."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data: dict[int, bytearray] = {}
        self.versions: dict[int, int] = {}
        self.reads: list[tuple[int, int, int]] = []  # (chunk_id, offset, length)
        self.writes: list[tuple[int, int, list[tuple[int, int]]]] = []  # (chunk_id, version, [(offset, len)])
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.stale = 0  # this many writes raise StaleSession (a newer session moved the copies)
        self.writing = threading.Event()  # set while a write waits at the gate
        self.threads: list[str] = []  # the thread of each write

    def read(self, chunk_id, version, offset, length, servers):
        with self.lock:
            if self.versions.get(chunk_id) != version:
                raise FsError(errno.EIO, f"chunk {chunk_id}: version {version} is stale")
            self.reads.append((chunk_id, offset, length))
            chunk = self.data[chunk_id]
            out = bytearray(length)
            piece = chunk[offset:offset + length]
            out[:len(piece)] = piece
            # In pieces, as a chunkserver sends them.
            return [memoryview(bytes(out[pos:pos + 300_000])) for pos in range(0, length, 300_000)]

    def write(self, chunk_id, version, expect_version, servers, extents):
        self.threads.append(threading.current_thread().name)
        self.writing.set()
        assert self.gate.wait(10), "test gate never opened"
        if self.fail:
            raise FsError(errno.EIO, f"chunk {chunk_id}: no copy stored the data")
        if self.stale:
            self.stale -= 1
            with self.lock:  # the copies moved on, as the next write_chunk's bump does
                self.versions[chunk_id] = version
            raise StaleSession(f"chunk {chunk_id}: every copy is at another version")
        with self.lock:
            assert self.versions.get(chunk_id, 0) == expect_version, "writes to one chunk must not overlap"
            chunk = self.data.setdefault(chunk_id, bytearray())
            for offset, data in extents:
                if len(chunk) < offset + len(data):
                    chunk.extend(bytes(offset + len(data) - len(chunk)))
                chunk[offset:offset + len(data)] = data
            self.versions[chunk_id] = version
            self.writes.append((chunk_id, version, [(o, len(d)) for o, d in extents]))
        return WriteResult(list(servers), [])


@pytest.fixture
def env():
    master, chunks = FakeMaster(), FakeChunks()
    made = []

    def make(cache_mb=64, readahead_mb=0, flush_bytes=4 * MiB):
        files = Files(master, chunks, cache_mb * MiB, readahead_mb * MiB, flush_bytes=flush_bytes)
        made.append(files)
        return files

    yield master, chunks, make
    chunks.gate.set()
    for files in made:
        files.close()


def stored(master: FakeMaster, chunks: FakeChunks, ino: int) -> bytes:
    """The file as the fake cluster has it."""
    f = master.files[ino]
    out = bytearray(f["size"])
    for index, chunk_id in f["chunks"].items():
        piece = chunks.data.get(chunk_id, b"")[: max(0, f["size"] - index * CHUNK_SIZE)]
        out[index * CHUNK_SIZE:index * CHUNK_SIZE + len(piece)] = piece
    return bytes(out)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# --- the dirty extents --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_extents_match_a_plain_buffer(seed):
    """Random overlapping writes: the extents hold exactly what a flat buffer holds and stay
    sorted and disjoint."""
    rng = random.Random(seed)
    size = 4096
    flat = bytearray(size)
    written = bytearray(size)  # 1 where some write landed
    ext = Extents()
    for step in range(60):
        start = rng.randrange(size - 1)
        length = rng.randrange(1, min(400, size - start) + 1)
        data = bytes([step + 1]) * length
        grown = ext.add(start, memoryview(data))
        new = sum(1 for i in range(start, start + length) if not written[i])
        assert grown == new
        flat[start:start + length] = data
        written[start:start + length] = b"\x01" * length
        assert ext.nbytes == sum(written)
        for (s1, d1), (s2, _) in zip(ext.items(), ext.items()[1:]):
            assert s1 + len(d1) <= s2, "extents must be sorted and disjoint"
        for s, d in ext.items():
            assert bytes(d) == bytes(flat[s:s + len(d)])
            assert all(written[s:s + len(d)])
    for s, d in ext.slices(1000, 3000):
        assert 1000 <= s and s + len(d) <= 3000 and bytes(d) == bytes(flat[s:s + len(d)])


def test_writes_are_kept_without_copying():
    ext = Extents()
    pieces = [bytes([i]) * 1000 for i in range(5)]
    for i, piece in enumerate(pieces):
        ext.add(i * 1000, piece)
    assert [p is q for (_, p), q in zip(ext.items(), pieces)] == [True] * 5
    ext.add(1500, b"z" * 2000)  # cuts pieces 1 and 3, replaces 2
    assert [(s, bytes(p)) for s, p in ext.items()] == [
        (0, pieces[0]), (1000, pieces[1][:500]), (1500, b"z" * 2000), (3500, pieces[3][500:]), (4000, pieces[4])]
    assert ext.nbytes == ext.end() == 5000


# --- write-back -----------------------------------------------------------------------------------


def test_read_your_writes_before_and_after_flush(env):
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, b"hello world")
    h.write(6, b"WORLD!")
    h.write(100, b"tail")
    assert not chunks.writes, "small writes stay buffered"
    assert bytes(h.read(0, 200)) == b"hello WORLD!" + bytes(88) + b"tail"
    assert h.inode.current_attr().size == 104
    h.inode.flush(h)
    assert stored(master, chunks, 1) == b"hello WORLD!" + bytes(88) + b"tail"
    assert bytes(h.read(0, 200)) == b"hello WORLD!" + bytes(88) + b"tail"
    files.release(h.fh)


def test_handles_of_one_inode_share_the_buffer(env):
    master, chunks, make = env
    files = make()
    attr = master.create(1)
    writer, reader = files.open(attr, RDWR, ROOT), files.open(attr, os.O_RDONLY, ROOT)
    assert writer.inode is reader.inode
    writer.write(10, b"shared")
    assert bytes(reader.read(0, 100)) == bytes(10) + b"shared"
    with pytest.raises(FsError) as exc:
        reader.write(0, b"x")
    assert exc.value.errno == errno.EBADF


def test_flush_order_is_write_chunk_data_commit(env):
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    data = os.urandom(CHUNK_SIZE + 3 * MiB)  # two chunks
    h.write(0, data)
    files.release(h.fh)
    assert stored(master, chunks, 1) == data
    # For every chunk: write_chunk, then its data, then a commit naming that version.
    per_chunk = {}
    for op in master.ops:
        if op[0] == "write_chunk":
            per_chunk.setdefault(op[2], []).append(op[3])
    written = [(c, v) for c, v, _ in chunks.writes]
    commits = [pair for op in master.ops if op[0] == "commit_write" for pair in op[2]]
    assert written == commits, "each commit reports exactly the session just written"
    for chunk_id, versions in per_chunk.items():
        assert versions == sorted(versions) == list(range(1, len(versions) + 1))
    assert master.files[1]["size"] == len(data)


def test_close_writes_a_small_file_from_its_own_thread(env):
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, b"x" * 4096)
    files.release(h.fh)
    assert stored(master, chunks, 1) == b"x" * 4096
    assert chunks.threads == [threading.current_thread().name], "no hand-off to the flush pool and back"


def test_threshold_flushes_in_background_without_blocking_the_writer(env):
    master, chunks, make = env
    files = make(cache_mb=64, flush_bytes=1 * MiB)
    h = files.open(master.create(1), RDWR, ROOT)
    chunks.gate.clear()
    start = time.monotonic()
    h.write(0, os.urandom(3 * MiB))  # passes the threshold: a flush starts and waits at the gate
    assert time.monotonic() - start < 2
    wait_for(chunks.writing.is_set)
    assert not chunks.writes
    # While the flush is held, its data stays readable from the buffer.
    assert len(h.read(0, 3 * MiB)) == 3 * MiB
    chunks.gate.set()
    files.release(h.fh)
    assert len(stored(master, chunks, 1)) == 3 * MiB


def test_crossing_into_the_next_chunk_writes_out_the_previous_one(env):
    master, chunks, make = env
    files = make(flush_bytes=64 * MiB)
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(CHUNK_SIZE - 100, b"a" * 200)  # the tail of chunk 0 and the head of chunk 1
    wait_for(lambda: len(chunks.writes) == 1)
    assert chunks.writes[0][2] == [(CHUNK_SIZE - 100, 100)]
    assert not h.inode.clean(), "chunk 1 stays buffered"
    files.release(h.fh)


def test_writer_waits_when_the_budget_is_spent(env):
    master, chunks, make = env
    files = make(cache_mb=2, flush_bytes=1 * MiB)
    h = files.open(master.create(1), RDWR, ROOT)
    chunks.gate.clear()
    done = threading.Event()

    def writer():
        for i in range(6):
            h.write(i * MiB, bytes([i]) * MiB)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    wait_for(chunks.writing.is_set)
    time.sleep(0.3)
    assert not done.is_set(), "6 MiB cannot fit a 2 MiB budget while nothing drains"
    assert files.cache.dirty <= 2 * MiB
    chunks.gate.set()
    t.join(10)
    assert done.is_set()
    files.release(h.fh)
    assert stored(master, chunks, 1) == b"".join(bytes([i]) * MiB for i in range(6))
    assert files.cache.dirty == 0


def test_budget_flushes_other_files_small_buffers(env):
    """Buffers below the per-chunk threshold are written when the budget runs out."""
    master, chunks, make = env
    files = make(cache_mb=2, flush_bytes=64 * MiB)
    handles = [files.open(master.create(ino), RDWR, ROOT) for ino in (1, 2, 3)]
    for ino, h in zip((1, 2, 3), handles):
        h.write(0, bytes([ino]) * (MiB - 4096))
    assert chunks.writes, "the third file needed room: the others were written"
    for h in handles:
        files.release(h.fh)
    for ino in (1, 2, 3):
        assert stored(master, chunks, ino) == bytes([ino]) * (MiB - 4096)


def test_background_error_surfaces_once_per_handle(env):
    master, chunks, make = env
    files = make(flush_bytes=1 * MiB)
    attr = master.create(1)
    h1, h2 = files.open(attr, RDWR, ROOT), files.open(attr, RDWR, ROOT)
    chunks.fail = True
    h1.write(0, bytes(2 * MiB))  # starts a background write that fails
    wait_for(lambda: h1.inode.errors == 1)
    with pytest.raises(FsError) as exc:
        h1.write(2 * MiB, b"more")
    assert exc.value.errno == errno.EIO and "no copy stored" in exc.value.message
    with pytest.raises(FsError) as exc:
        files.handle(h2.fh).inode.flush(h2)  # the other handle hears about it too
    assert exc.value.errno == errno.EIO
    h3 = files.open(attr, RDWR, ROOT)  # opened after the failure: nothing to report
    chunks.fail = False
    h1.write(CHUNK_SIZE, b"more")  # h1 was told already: its next write and flush work
    h1.inode.flush(h1)
    h3.inode.flush(h3)
    assert master.files[1]["size"] == CHUNK_SIZE + 4
    for h in (h1, h2, h3):
        files.release(h.fh)


def test_fsync_reports_an_error_that_a_close_already_reported(env):
    """A forked child's close() flushes the shared open file and hears of the failure; the
    parent's fsync() on the same file must still report it (Linux's errseq rule)."""
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, b"data")
    chunks.fail = True
    with pytest.raises(FsError):
        h.inode.flush(h)  # the close in the child
    with pytest.raises(FsError) as exc:
        h.inode.flush(h, fsync=True)
    assert exc.value.errno == errno.EIO
    h.inode.flush(h, fsync=True)  # reported once: the next fsync has nothing new to say
    chunks.fail = False
    files.release(h.fh)


def test_a_failed_session_gives_the_write_lease_back(env):
    """Else other clients' writes of the chunk would wait for the lease to expire."""
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, b"data")
    chunks.fail = True
    with pytest.raises(FsError):
        h.inode.flush(h)
    chunks.fail = False
    assert master.ops[-2:] == [("write_chunk", 0, 1, 1), ("release_write", 1, 1)]
    files.release(h.fh)


def test_a_session_every_copy_refused_as_outdated_is_started_again(env):
    """It stored nothing (its lease died with a leader and another writer moved the copies)."""
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, b"data")
    chunks.stale = filehandle.SESSION_ATTEMPTS - 1
    h.inode.flush(h)
    assert [op[0] for op in master.ops] == ["write_chunk", "release_write"] * 2 + ["write_chunk", "commit_write"]
    assert stored(master, chunks, 1) == b"data"
    h.write(0, b"more")
    chunks.stale = filehandle.SESSION_ATTEMPTS  # a bounded number of times
    with pytest.raises(FsError) as exc:
        h.inode.flush(h)
    assert exc.value.errno == errno.EIO
    files.release(h.fh)


def test_writing_back_to_a_file_unlinked_meanwhile_succeeds(env):
    """As on Linux, where the data of an unlinked open file is dropped at its last close."""
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, b"data")
    del master.files[1]  # another client unlinked it
    h.inode.flush(h)
    assert files.release(h.fh) is None  # no change of ours reached the master
    assert not chunks.writes


def test_release_returns_the_attr_of_this_clients_own_latest_commit(env):
    """What the FUSE mount records as "our own version" for its page cache (client/fuse.py)."""
    master, chunks, make = env
    files = make()
    reader = files.open(master.create(1), os.O_RDONLY, ROOT)
    writer = files.open(master.attr(1), RDWR, ROOT)
    assert files.release(reader.fh) is None  # nothing written yet
    writer.write(0, b"data")
    own = files.release(writer.fh)
    assert own is not None and own.size == 4


def test_release_reports_a_failed_write(env):
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, b"data")
    chunks.fail = True
    with pytest.raises(FsError) as exc:
        files.release(h.fh)
    assert exc.value.errno == errno.EIO
    assert files.inode(1) is None, "the handle is gone even though close failed"


def test_sparse_writes_read_zeros_in_holes(env):
    master, chunks, make = env
    files = make()
    h = files.open(master.create(1), RDWR, ROOT)
    far = 3 * CHUNK_SIZE + 12345
    h.write(far, b"end")
    files.release(h.fh)
    h = files.open(master.attr(1), os.O_RDONLY, ROOT)
    assert h.inode.current_attr().size == far + 3
    assert bytes(h.read(CHUNK_SIZE - 10, 20)) == bytes(20)
    assert bytes(h.read(far - 2, 10)) == b"\0\0end"
    assert len(master.files[1]["chunks"]) == 1, "holes take no chunks"


def test_concurrent_writers_on_different_files(env):
    master, chunks, make = env
    files = make(cache_mb=8, flush_bytes=1 * MiB)
    payloads = {ino: os.urandom(5 * MiB + ino) for ino in range(1, 5)}
    handles = {ino: files.open(master.create(ino), RDWR, ROOT) for ino in payloads}
    errors = []

    def writer(ino):
        try:
            data = payloads[ino]
            for pos in range(0, len(data), 128 * 1024):
                handles[ino].write(pos, data[pos:pos + 128 * 1024])
            files.release(handles[ino].fh)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(ino,)) for ino in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for ino, data in payloads.items():
        assert stored(master, chunks, ino) == data


# --- reading --------------------------------------------------------------------------------------


def _stored_file(master, chunks, make, size, **kwargs):
    files = make(**kwargs)
    data = os.urandom(size)
    h = files.open(master.create(1), RDWR, ROOT)
    h.write(0, data)
    files.release(h.fh)
    chunks.reads.clear()
    return files, data


def test_random_reads_fetch_one_block(env):
    master, chunks, make = env
    files, data = _stored_file(master, chunks, make, 8 * MiB, readahead_mb=4)
    h = files.open(master.attr(1), os.O_RDONLY, ROOT)
    for off in (5 * MiB + 100, 1 * MiB + 7, 7 * MiB):
        assert bytes(h.read(off, 4096)) == data[off:off + 4096]
    assert [length for _, _, length in chunks.reads] == [BLOCK_SIZE] * 3
    assert bytes(h.read(5 * MiB + 200, 1000)) == data[5 * MiB + 200:5 * MiB + 1200]
    assert len(chunks.reads) == 3, "a re-read of a cached block costs no fetch"


def test_a_large_read_is_fetched_in_parallel_pieces(env):
    master, chunks, make = env
    files, data = _stored_file(master, chunks, make, 20 * MiB)
    h = files.open(master.attr(1), os.O_RDONLY, ROOT)
    assert bytes(h.read(MiB, 18 * MiB)) == data[MiB:19 * MiB]
    assert sorted(length for _, _, length in chunks.reads) == [3 * MiB, 3 * MiB] + [filehandle.RA_UNIT] * 3


def test_sequential_reads_prefetch_ahead(env):
    master, chunks, make = env
    files, data = _stored_file(master, chunks, make, 24 * MiB, readahead_mb=8)
    h = files.open(master.attr(1), os.O_RDONLY, ROOT)
    step = 128 * 1024
    for off in range(0, (filehandle.SEQ_STREAK + 1) * step, step):
        assert bytes(h.read(off, step)) == data[off:off + step]
    wait_for(lambda: sum(length for _, _, length in chunks.reads) >= 8 * MiB)
    prefetched = [(off, length) for _, off, length in chunks.reads if length > BLOCK_SIZE]
    assert prefetched and all(length <= filehandle.RA_UNIT for _, length in prefetched)
    fetched = len(chunks.reads)
    for off in range((filehandle.SEQ_STREAK + 1) * step, 4 * MiB, step):  # served from what was prefetched
        assert bytes(h.read(off, step)) == data[off:off + step]
    reads_in_window = [r for r in chunks.reads[fetched:] if r[1] < 4 * MiB]
    assert not reads_in_window
    for off in range(4 * MiB, 24 * MiB, step):
        assert bytes(h.read(off, step)) == data[off:off + step]
    assert bytes(h.read(24 * MiB - 10, 100)) == data[-10:]


def test_a_random_reader_landing_near_its_last_read_does_not_prefetch(env):
    """One near-sequential pair of reads in a random pattern is chance, not a stream: no
    read-ahead window is fetched for it."""
    master, chunks, make = env
    files, data = _stored_file(master, chunks, make, 24 * MiB, readahead_mb=8)
    h = files.open(master.attr(1), os.O_RDONLY, ROOT)
    for off in (20 * MiB, 3 * MiB, 3 * MiB + 4096, 11 * MiB, 7 * MiB):
        assert bytes(h.read(off, 4096)) == data[off:off + 4096]
    time.sleep(0.2)  # a prefetch would have been queued by now
    assert all(length <= BLOCK_SIZE for _, _, length in chunks.reads)


def test_reads_see_writes_of_a_flush_in_progress(env):
    master, chunks, make = env
    files, data = _stored_file(master, chunks, make, 2 * MiB)
    h = files.open(master.attr(1), RDWR, ROOT)
    assert bytes(h.read(0, 100)) == data[:100]  # now cached
    chunks.gate.clear()
    h.write(50, b"NEW")
    flusher = threading.Thread(target=h.inode.flush)
    flusher.start()
    wait_for(chunks.writing.is_set)
    assert bytes(h.read(0, 100)) == data[:50] + b"NEW" + data[53:100]
    chunks.gate.set()
    flusher.join(10)
    assert bytes(h.read(0, 100)) == data[:50] + b"NEW" + data[53:100], "the stale cached block was dropped"
    files.release(h.fh)


def test_read_retries_with_fresh_locations(env):
    """Another client wrote the chunk (new version): the cached location fails, a fresh one works."""
    master, chunks, make = env
    files, data = _stored_file(master, chunks, make, 1 * MiB)
    h = files.open(master.attr(1), os.O_RDONLY, ROOT)
    assert bytes(h.read(0, 10)) == data[:10]
    chunk_id = master.files[1]["chunks"][0]
    with master.lock:
        master.chunks[chunk_id] += 1
    chunks.versions[chunk_id] += 1
    assert bytes(h.read(512 * 1024, 10)) == data[512 * 1024:512 * 1024 + 10]
