"""Erasure-coded chunk I/O of the client (client/ecio.py) against an in-memory fake of the
chunkservers' parts: healthy reads touch only data parts, degraded reads and read-modify-writes
are byte exact, writes need k parts, truncation re-encodes the cut row."""

import errno
import itertools
import random
import threading

import pytest

from mooseng import ec, rpc
from mooseng.client import ecio
from mooseng.client.chunkclient import StaleSession
from mooseng.constants import BLOCK_SIZE as B
from mooseng.constants import CHUNK_SIZE
from mooseng.errors import FsError


class FakeParts:
    """Parts on fake servers ("cs-<p>"): stored id -> (version, bytes). `down` servers fail every
    call; reads of `corrupt` ids fail DATA_LOSS."""

    def __init__(self):
        self.lock = threading.Lock()
        self.files: dict[tuple[str, int], tuple[int, bytearray]] = {}
        self.down: set[str] = set()
        self.corrupt: set[int] = set()
        self.reads: list[tuple[str, int, int, int]] = []
        self.suspects: set[str] = set()  # servers that failed a read a moment ago

    def read_many(self, requests):
        out = []
        for addr, stored_id, version, offset, length in requests:
            with self.lock:
                self.reads.append((addr, stored_id, offset, length))
                f = self.files.get((addr, stored_id))
            if addr in self.down:
                out.append(rpc.RpcError(rpc.UNAVAILABLE, f"{addr} is down"))
            elif f is None:
                out.append(rpc.RpcError(rpc.NOT_FOUND, "no such chunk"))
            elif f[0] != version:
                out.append(rpc.RpcError(rpc.FAILED_PRECONDITION, f"at version {f[0]}, request wants {version}"))
            elif stored_id in self.corrupt:
                out.append(rpc.RpcError(rpc.DATA_LOSS, "CRC mismatch in block 0"))
            else:
                out.append(memoryview(bytes(f[1][offset:offset + length]).ljust(length, b"\0")))
        return out

    def suspect(self, addr):
        return addr in self.suspects

    def write_parts(self, version, expect_version, parts):
        errors = []
        for stored_id, addr, extents in parts:
            f = self.files.get((addr, stored_id))
            have = f[0] if f else 0
            if addr in self.down:
                errors.append(f"UNAVAILABLE: {addr} is down")
                continue
            if have not in (expect_version, version):
                errors.append(f"FAILED_PRECONDITION: at version {have}")
                continue
            data = bytearray(f[1]) if f else bytearray()
            for offset, piece in extents:
                if len(data) < offset + len(piece):
                    data.extend(bytes(offset + len(piece) - len(data)))
                data[offset:offset + len(piece)] = piece
            self.files[(addr, stored_id)] = (version, data)
            errors.append(None)
        if parts and all(e and e.startswith("FAILED_PRECONDITION") for e in errors):
            raise StaleSession("every part is at another version")
        return errors

    def truncate(self, stored_id, version, expect_version, length, servers):
        [addr] = servers
        f = self.files.get((addr, stored_id))
        if addr in self.down or f is None or f[0] not in (expect_version, version):
            raise FsError(errno.EIO, f"part {stored_id:x} at {addr} could not be cut")
        data = f[1][:length]
        data.extend(bytes(length - len(data)))
        self.files[(addr, stored_id)] = (version, data)

    def part(self, chunk, p):
        return bytes(self.files.get((chunk.servers[p], chunk.part(p)), (0, b""))[1])


CHUNK_ID = 5


def chunk_ref(k, m, version):
    return ecio.EcChunk.of(CHUNK_ID, version, [k, m], [f"cs-{p}" for p in range(k + m)])


def write(parts, k, m, version, extents, old_length):
    return ecio.write(parts, chunk_ref(k, m, version), 0 if version == 1 else version, extents, old_length)


def read(parts, k, m, version, offset, length):
    return b"".join(ecio.read(parts, chunk_ref(k, m, version), offset, length))


def test_new_chunk_parts_are_the_layout_and_reads_touch_only_data_parts():
    k, m = 8, 4
    parts = FakeParts()
    data = random.Random(1).randbytes(3 * k * B + 5 * B + 17)
    stored = write(parts, k, m, 1, [(0, data)], 0)
    assert stored.parts == list(range(12)) and stored.ok == [f"cs-{p}" for p in range(12)]
    ref = chunk_ref(k, m, 1)
    assert [parts.part(ref, p) for p in range(12)] == [bytes(p) for p in ec.encode_chunk(ec.codec(k, m), data)]
    for offset, length in [(0, len(data)), (B - 3, 7), (5 * B, 4096), (len(data) - 1, 1), (2 * k * B, k * B)]:
        parts.reads.clear()
        assert read(parts, k, m, 1, offset, length) == data[offset:offset + length]
        assert all(ec.split_part_id(stored_id)[1] < k for _, stored_id, _, _ in parts.reads)
        assert sum(n for *_, n in parts.reads) == length  # exactly the bytes asked for
        assert len(parts.reads) == len({s for _, s, _, _ in parts.reads})  # one request per part


@pytest.mark.parametrize("k, m", [(4, 2), (8, 4)])
def test_degraded_reads_are_byte_exact_for_every_loss_of_m_parts(k, m):
    parts = FakeParts()
    length = 2 * k * B + 3 * B + 999
    data = random.Random(k).randbytes(length)
    write(parts, k, m, 1, [(0, data)], 0)
    rng = random.Random(m)
    ranges = [(0, length), (B - 1, 2 * B + 2), (length - 5, 5)] + [
        (a, rng.randrange(1, length - a + 1)) for a in (rng.randrange(length) for _ in range(3))]
    patterns = list(itertools.combinations(range(k + m), m))
    for lost in patterns[:: max(1, len(patterns) // 60)]:
        parts.down = {f"cs-{p}" for p in lost[:-1]}
        parts.corrupt = {ec.part_id(CHUNK_ID, lost[-1])}
        for offset, size in ranges:
            assert read(parts, k, m, 1, offset, size) == data[offset:offset + size], (lost, offset, size)


def test_a_part_at_another_version_is_decoded_around():
    k, m = 4, 2
    parts = FakeParts()
    data = random.Random(3).randbytes(k * B * 2)
    write(parts, k, m, 1, [(0, data)], 0)
    ref = chunk_ref(k, m, 1)
    parts.files[(ref.servers[1], ref.part(1))] = (7, bytearray(b"x" * 2 * B))  # stale or foreign
    assert read(parts, k, m, 1, 0, len(data)) == data


def test_parts_on_a_suspect_server_are_decoded_around_without_asking_it():
    k, m = 4, 2
    parts = FakeParts()
    data = random.Random(11).randbytes(3 * k * B)
    write(parts, k, m, 1, [(0, data)], 0)
    parts.suspects = {"cs-1"}  # e.g. hung: its last read timed out
    parts.reads.clear()
    assert read(parts, k, m, 1, 0, len(data)) == data
    assert all(addr != "cs-1" for addr, *_ in parts.reads)
    parts.suspects = {"cs-0", "cs-1", "cs-2"}  # more than m: asked anyway, they answer
    parts.reads.clear()
    assert read(parts, k, m, 1, 0, len(data)) == data
    assert {"cs-0", "cs-1", "cs-2"} <= {addr for addr, *_ in parts.reads}


def test_more_than_m_lost_parts_is_eio_naming_them():
    k, m = 4, 2
    parts = FakeParts()
    write(parts, k, m, 1, [(0, b"z" * (5 * B))], 0)
    parts.down = {"cs-0", "cs-4", "cs-5"}
    with pytest.raises(FsError) as info:
        read(parts, k, m, 1, 0, B)
    assert info.value.errno == errno.EIO and "3 of the 4 parts needed" in info.value.message
    assert all(f"part {p}: cs-{p}" in info.value.message for p in (0, 4, 5))


def test_read_modify_write_keeps_old_data_and_parity_consistent():
    k, m = 4, 2
    parts = FakeParts()
    rng = random.Random(4)
    model = bytearray(rng.randbytes(3 * k * B + 100))
    write(parts, k, m, 1, [(0, bytes(model))], 0)
    version = 1
    for step in range(12):
        offset = rng.randrange(0, 4 * k * B)
        extents, pos = [], offset
        for _ in range(rng.randrange(1, 4)):  # sorted, disjoint, with gaps
            n = rng.randrange(1, 3 * B)
            extents.append((pos, rng.randbytes(n)))
            pos += n + rng.randrange(0, B)
        old_length = len(model)
        for a, piece in extents:
            if len(model) < a + len(piece):
                model.extend(bytes(a + len(piece) - len(model)))
            model[a:a + len(piece)] = piece
        version += 1
        for p in range(k + m):  # the master moved every part to the new version first
            key = (f"cs-{p}", ec.part_id(CHUNK_ID, p))
            if key in parts.files:
                parts.files[key] = (version, parts.files[key][1])
        stored = write(parts, k, m, version, extents, old_length)
        assert stored.parts == list(range(6))
        assert read(parts, k, m, version, 0, len(model)) == model, f"step {step}"
        ref = chunk_ref(k, m, version)
        lengths = [len(parts.part(ref, p)) for p in range(k + m)]
        assert lengths[0] == lengths[4] == lengths[5] and max(lengths[:k]) == lengths[0]
        parts.down = {"cs-0", "cs-2"}  # parity matches the data
        assert read(parts, k, m, version, 0, len(model)) == model, f"step {step} degraded"
        parts.down = set()


def test_a_write_succeeds_with_k_parts_and_reports_them():
    k, m = 4, 2
    parts = FakeParts()
    parts.down = {"cs-1", "cs-5"}
    stored = write(parts, k, m, 1, [(0, b"a" * (3 * B))], 0)
    assert stored.parts == [0, 2, 3, 4] and stored.ok == ["cs-0", "cs-2", "cs-3", "cs-4"]
    assert stored.servers(chunk_ref(k, m, 1)) == ["cs-0", "", "cs-2", "cs-3", "cs-4", ""]
    parts.down = set()
    ref = ecio.EcChunk.of(CHUNK_ID, 1, [k, m], stored.servers(chunk_ref(k, m, 1)))
    assert b"".join(ecio.read(parts, ref, 0, 3 * B)) == b"a" * (3 * B)
    parts.down = {"cs-0", "cs-1", "cs-2"}
    with pytest.raises(FsError, match="3 parts stored the data, 4 needed") as info:
        write(parts, k, m, 1, [(0, b"b")], 0)
    assert info.value.errno == errno.EIO


def test_every_part_refusing_the_version_is_a_stale_session():
    k, m = 4, 2
    parts = FakeParts()
    write(parts, k, m, 1, [(0, b"a" * 10)], 0)
    with pytest.raises(StaleSession):
        write(parts, k, m, 3, [(0, b"b")], 10)  # every part is still at 1, the write expects 3


@pytest.mark.parametrize("cut", [0, 1, B, B + 1, 4 * B, 4 * B + 7, 9 * B - 1, 9 * B + 5])
def test_truncate_cuts_every_part_and_re_encodes_the_cut_row(cut):
    k, m = 4, 2
    parts = FakeParts()
    data = random.Random(cut).randbytes(10 * B + 3)
    write(parts, k, m, 1, [(0, data)], 0)
    for p in range(k + m):
        key = (f"cs-{p}", ec.part_id(CHUNK_ID, p))
        parts.files[key] = (2, parts.files[key][1])
    stored = ecio.truncate(parts, chunk_ref(k, m, 2), 2, cut)
    assert stored.parts == list(range(6))
    ref = chunk_ref(k, m, 2)
    assert [parts.part(ref, p) for p in range(6)] == [bytes(p) for p in ec.encode_chunk(ec.codec(k, m), data[:cut])]
    for lost in itertools.combinations(range(6), 2):
        parts.down = {f"cs-{p}" for p in lost}
        assert read(parts, k, m, 2, 0, 10 * B + 3) == data[:cut].ljust(10 * B + 3, b"\0"), lost


def test_bad_server_lists_are_refused():
    with pytest.raises(FsError, match="named 3 servers for the 6 parts"):
        ecio.EcChunk.of(1, 1, [4, 2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="invalid erasure code"):
        ecio.EcChunk.of(1, 1, [0, 2], ["a", "b"])


def test_full_chunk_write_and_degraded_read():
    k, m = 8, 4
    parts = FakeParts()
    data = random.Random(9).randbytes(CHUNK_SIZE // 4)
    write(parts, k, m, 1, [(pos, data[pos:pos + (1 << 20)]) for pos in range(0, len(data), 1 << 20)], 0)
    parts.down = {"cs-0", "cs-7", "cs-8", "cs-11"}
    assert read(parts, k, m, 1, 0, len(data)) == data


class EcMaster:
    """write_chunk / commit_write / chunks for one file of class 4+2, as the contract says."""

    def __init__(self, k=4, m=2, parts=None):
        self.k, self.m = k, m
        self.parts = parts  # FakeParts whose parts write_chunk moves to the new version, as the master does
        self.size = 0
        self.version = 0
        self.commits: list[dict] = []

    def attr(self):
        from mooseng.client.masterclient import Attr
        return Attr(1, 0o100644, 1, 0, 0, 0, self.size, 0, self.version, self.version, "archive")

    def servers(self):
        return [f"cs-{p}" for p in range(self.k + self.m)]

    def call(self, op, args=None, cred=None):
        if op == "write_chunk":
            self.version += 1
            new = self.version == 1
            if self.parts is not None:
                for key, (_, buf) in list(self.parts.files.items()):
                    self.parts.files[key] = (self.version, buf)
            return {"chunk_id": CHUNK_ID, "version": self.version, "expect_version": 0 if new else self.version,
                    "new": new, "servers": self.servers(), "ec": [self.k, self.m]}
        if op == "commit_write":
            self.commits += args["chunks"]
            self.size = max(self.size, args["size"])
            return self.attr()._asdict()
        if op == "chunks":
            return [{"index": 0, "chunk_id": CHUNK_ID, "version": self.version, "servers": self.servers(),
                     "ec": [self.k, self.m]}]
        raise AssertionError(op)


def test_file_handles_write_and_read_ec_chunks_through_ecio():
    from mooseng.client.filehandle import Files

    master, parts = EcMaster(), FakeParts()

    files = Files(master, parts, 64 << 20, 0, flush_bytes=1 << 30)
    try:
        data = random.Random(10).randbytes(5 * 4 * B + 123)
        handle = files.open(master.attr(), 2, None)
        handle.write(0, data)
        files.release(handle.fh)
        assert master.commits == [{"chunk_id": CHUNK_ID, "version": 1, "ok": master.servers(),
                                   "parts": list(range(6))}]
        # a second session rewrites the middle: the master moved every part to version 2 first
        for key, (v, buf) in list(parts.files.items()):
            parts.files[key] = (2, buf)
        handle = files.open(master.attr(), 2, None)
        handle.write(B + 5, b"new" * 1000)
        files.release(handle.fh)
        expected = bytearray(data)
        expected[B + 5:B + 3005] = b"new" * 1000
        assert master.commits[-1]["parts"] == list(range(6)) and master.commits[-1]["version"] == 2
        parts.down = {"cs-1", "cs-4"}
        handle = files.open(master.attr(), 0, None)
        assert bytes(handle.read(0, len(expected) + 10)) == expected
        files.release(handle.fh)
    finally:
        files.close()


def test_a_file_with_erasure_coded_chunks_is_written_a_chunk_at_a_time():
    """Each session of an EC chunk bumps and commits k+m parts: once the client knows the file's
    chunks are EC, it waits for a whole chunk (or a flush) instead of flush_bytes."""
    import time

    from mooseng.client.filehandle import Files

    parts = FakeParts()
    master = EcMaster(parts=parts)
    files = Files(master, parts, 256 << 20, 0, flush_bytes=1 << 20)
    try:
        handle = files.open(master.attr(), 2, None)
        piece = random.Random(13).randbytes(1 << 20)
        handle.write(0, piece)  # flush_bytes reached: a session, which tells the layout
        deadline = time.monotonic() + 10
        while len(master.commits) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for i in range(1, 9):
            handle.write(i << 20, piece)
        time.sleep(0.2)
        assert len(master.commits) == 1, "no session before a whole chunk or a flush"
        files.release(handle.fh)
        assert len(master.commits) == 2
        handle = files.open(master.attr(), 0, None)
        assert bytes(handle.read(0, 9 << 20)) == piece * 9
        files.release(handle.fh)
    finally:
        files.close()


def test_write_buffers_are_page_aligned_and_the_pool_keeps_the_largest(monkeypatch):
    """The pool keeps the ARENAS largest buffers and hands out the smallest that fits."""
    import ctypes
    import mmap
    monkeypatch.setattr(ecio, "_arenas", [])
    held = [ecio._Arena(n * B) for n in (3, 2, 1)]
    bufs = [a._buf for a in held]
    for a in held:
        a.release()
    assert len(ecio._arenas) == ecio.ARENAS == 2 and ecio._arenas[0] is bufs[0] and ecio._arenas[1] is bufs[1]
    again = ecio._Arena(2 * B)
    assert again._buf is bufs[1] and len(again.view) == 2 * B
    assert ctypes.addressof(ctypes.c_char.from_buffer(again.view)) % mmap.PAGESIZE == 0
