"""ChunkStore: the chunk file format, version rules, CRC checks and disk handling, on real files."""

import errno
import os
import random
import shutil
import struct
import threading
import time
import zlib

import pytest

from mooseng import _chunkio as chunkio
from mooseng import ec
from mooseng.chunkserver.store import (
    DAMAGED,
    HEADER_SIZE,
    OK,
    ChunkInfo,
    ChunkNotFound,
    ChunkStore,
    CrcError,
    StaleChunk,
    chunk_path,
)
from mooseng.constants import BLOCK_SIZE, CHUNK_SIZE
from mooseng.errors import FsError

MiB = 1 << 20


@pytest.fixture
def dirs(tmp_path):
    paths = [str(tmp_path / f"disk{i}") for i in range(2)]
    for path in paths:
        os.mkdir(path)
    return paths


@pytest.fixture
def store(dirs):
    s = ChunkStore(dirs)
    yield s
    s.close()


def file_of(store, chunk_id):
    info = store.get(chunk_id)
    return chunk_path(store.disk_stats()[info.disk].path, chunk_id)


def on_disk_table(path, blocks):
    with open(path, "rb") as f:
        f.seek(4096)
        return list(struct.unpack(f"<{blocks}I", f.read(4 * blocks)))


def expected_table(data, blocks):
    return [zlib.crc32(data[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")) for i in range(blocks)]


def test_new_chunk_file_has_the_documented_layout(store):
    store.write(0x1234, 7, 0, 0, b"hello")
    path = file_of(store, 0x1234)
    assert path.endswith(os.path.join("chunks", "34", "chunk_0000000000001234.mng"))
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:8] == b"MNGCHK01"
    assert struct.unpack_from("<QQ", raw, 8) == (0x1234, 7)
    assert len(raw) == HEADER_SIZE + 5
    assert raw[HEADER_SIZE:] == b"hello"
    assert on_disk_table(path, 3) == [zlib.crc32(b"hello".ljust(BLOCK_SIZE, b"\0")), chunkio.ZERO_BLOCK_CRC,
                                      chunkio.ZERO_BLOCK_CRC]
    assert store.get(0x1234) == ChunkInfo(0x1234, 7, store.get(0x1234).disk, 5)


def test_round_trips_at_odd_offsets_and_sizes(store):
    rng = random.Random(1)
    model = bytearray()
    version = 1
    store.write(9, version, 0, 0, b"")
    for _ in range(60):
        offset = rng.randrange(3 * MiB)
        data = rng.randbytes(rng.choice([1, 100, BLOCK_SIZE - 1, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 5, rng.randrange(MiB)]))
        store.write(9, version + 1, version, offset, data)
        version += 1
        if offset > len(model):
            model.extend(bytes(offset - len(model)))
        model[offset:offset + len(data)] = data
        start = rng.randrange(len(model))
        size = rng.randrange(2 * MiB)
        assert store.read(9, version, start, size) == bytes(model[start:start + size]).ljust(size, b"\0")
    assert store.read(9, version, 0, len(model)) == model
    blocks = -(-len(model) // BLOCK_SIZE)
    assert on_disk_table(file_of(store, 9), blocks) == expected_table(bytes(model), blocks)
    assert store.get(9).length == len(model)


def test_holes_and_data_past_the_end_read_as_zeros(store):
    store.write(5, 1, 0, 5 * BLOCK_SIZE + 3, b"xyz")
    assert store.read(5, 1, 0, 5 * BLOCK_SIZE + 3) == bytes(5 * BLOCK_SIZE + 3)
    assert store.read(5, 1, 5 * BLOCK_SIZE, 10) == b"\0\0\0xyz\0\0\0\0"
    assert store.read(5, 1, CHUNK_SIZE - 10, 10) == bytes(10)


def test_a_session_writes_many_pieces_and_commits_once(store):
    with store.open_write(3, 1, 0) as session:
        for i in range(4):
            session.write(i * MiB, bytes([i]) * MiB)
        assert store.get(3) is None  # not committed yet: not reported
        session.commit()
    assert store.get(3).version == 1
    assert store.read(3, 1, 0, 4 * MiB) == b"".join(bytes([i]) * MiB for i in range(4))


def test_version_rules(store):
    store.write(1, 5, 0, 0, b"v5")
    with pytest.raises(StaleChunk):
        store.write(1, 7, 6, 0, b"x")
    with pytest.raises(StaleChunk):
        store.write(1, 9, 0, 0, b"x")  # "new chunk", but a committed copy exists
    with pytest.raises(ChunkNotFound):
        store.write(2, 3, 2, 0, b"x")
    with pytest.raises(StaleChunk):
        store.read(1, 4, 0, 2)
    with pytest.raises(ChunkNotFound):
        store.read(2, 1, 0, 2)
    store.write(1, 6, 5, 0, b"v6")
    store.write(1, 6, 5, 2, b"+")  # a later stream of the same session (copy already at 6)
    assert store.read(1, 6, 0, 3) == b"v6+"
    for bad in [(0, 1, 0), (1, 0, 0)]:
        with pytest.raises(FsError) as info:
            store.open_write(*bad)
        assert info.value.errno == errno.EINVAL


def test_set_version_moves_a_copy_before_a_session(store, dirs):
    store.write(1, 3, 0, 0, b"data")
    store.take_changes()
    store.set_version(1, 3, 4)
    store.set_version(1, 3, 4)  # a retried call: already there
    assert store.get(1).version == 4
    assert store.take_changes()[0] == [ChunkInfo(1, 4, store.get(1).disk, 4)]
    store.write(1, 4, 4, 4, b"+more")  # the session then writes with expect_version == version
    assert store.read(1, 4, 0, 9) == b"data+more"
    with pytest.raises(StaleChunk):
        store.set_version(1, 7, 8)
    with pytest.raises(ChunkNotFound):
        store.set_version(2, 1, 2)
    with store.open_write(1, 5, 4):
        with pytest.raises(FsError) as info:
            store.set_version(1, 4, 6)
        assert info.value.errno == errno.EBUSY
    store.close()
    again = ChunkStore(dirs)
    try:
        assert again.get(1).version == 4
    finally:
        again.close()


def test_one_session_at_a_time_and_readers_see_the_new_version(store):
    store.write(1, 1, 0, 0, b"old")
    with store.open_write(1, 2, 1) as session:
        session.write(0, b"new")
        with pytest.raises(FsError) as info:
            store.open_write(1, 2, 1)
        assert info.value.errno == errno.EBUSY
        assert store.read(1, 2, 0, 3) == b"new"
        assert store.read(1, 1, 0, 3) == b"new"
        assert not store.delete(1)
        session.commit()
    assert store.get(1).version == 2


def test_aborted_sessions(store, dirs):
    store.write(1, 1, 0, 0, b"keep")
    with store.open_write(1, 2, 1) as session:
        session.write(0, b"half")
    assert store.get(1).version == 1
    with store.open_write(2, 1, 0) as session:
        session.write(0, b"never committed")
    assert store.get(2) is None
    assert not any(os.path.exists(chunk_path(d, 2)) for d in dirs)
    store.write(2, 1, 0, 0, b"second try")
    assert store.read(2, 1, 0, 10) == b"second try"


def test_offsets_beyond_the_chunk_are_refused(store):
    store.write(1, 1, 0, 0, b"x")
    for call in (lambda: store.write(1, 2, 1, CHUNK_SIZE - 1, b"ab"), lambda: store.read(1, 1, CHUNK_SIZE, 1),
                 lambda: store.truncate(1, 2, 1, CHUNK_SIZE + 1), lambda: store.read(1, 1, -1, 1)):
        with pytest.raises(FsError) as info:
            call()
        assert info.value.errno == errno.EINVAL
    store.write(1, 2, 1, CHUNK_SIZE - 2, b"ab")
    assert store.read(1, 2, CHUNK_SIZE - 3, 3) == b"\0ab"


@pytest.mark.parametrize("cut", [0, 1, BLOCK_SIZE, BLOCK_SIZE + 77, 3 * BLOCK_SIZE - 1])
def test_truncate_shrink_then_grow_reads_zeros(store, cut):
    data = random.Random(cut).randbytes(3 * BLOCK_SIZE + 500)
    store.write(4, 1, 0, 0, data)
    store.truncate(4, 2, 1, cut)
    assert store.get(4).length == cut
    assert store.read(4, 2, 0, len(data)) == data[:cut].ljust(len(data), b"\0")
    store.truncate(4, 3, 2, len(data))
    assert store.read(4, 3, 0, len(data)) == data[:cut].ljust(len(data), b"\0")
    store.write(4, 4, 3, cut + 10, b"z")
    expected = bytearray(data[:cut].ljust(len(data), b"\0"))
    expected[cut + 10] = ord("z")
    assert store.read(4, 4, 0, len(data)) == expected
    blocks = -(-len(data) // BLOCK_SIZE)
    assert on_disk_table(file_of(store, 4), blocks + 2) == expected_table(bytes(expected), blocks + 2)
    with pytest.raises(StaleChunk):
        store.truncate(4, 9, 8, 0)


def test_truncate_can_create_a_chunk(store):
    store.truncate(8, 1, 0, 1000)
    assert store.read(8, 1, 0, 1000) == bytes(1000)


def test_restart_rescans_every_disk(dirs):
    first = ChunkStore(dirs)
    for chunk_id in range(1, 6):
        first.write(chunk_id, chunk_id + 10, 0, chunk_id * 1000, bytes([chunk_id]) * 3000)
    before = sorted(first.chunks(), key=lambda c: c.chunk_id)
    first.close()
    second = ChunkStore(dirs)
    try:
        assert sorted(second.chunks(), key=lambda c: c.chunk_id) == before
        assert second.read(3, 13, 3000, 3000) == b"\3" * 3000
        assert second.bad_files == []
        assert sum(d.chunks for d in second.disk_stats()) == 5
    finally:
        second.close()


def test_bad_files_are_reported_and_never_served(dirs):
    good = ChunkStore(dirs)
    good.write(1, 1, 0, 0, b"fine")
    good.write(2, 1, 0, 0, b"will lose its magic")
    good.close()
    sub = os.path.join(dirs[0], "chunks", "03")
    with open(os.path.join(sub, "chunk_0000000000000003.mng"), "wb") as f:
        f.write(b"short")
    with open(os.path.join(sub, "notes.txt"), "wb") as f:
        f.write(b"x")
    path2 = next(chunk_path(d, 2) for d in dirs if os.path.exists(chunk_path(d, 2)))
    with open(path2, "r+b") as f:
        f.write(b"XXXXXXXX")
    uncommitted = os.path.join(dirs[1], "chunks", "04", "chunk_0000000000000004.mng")
    with open(uncommitted, "wb") as f:
        f.write(b"MNGCHK01" + struct.pack("<QQ", 4, 0) + bytes(HEADER_SIZE - 24))
    s = ChunkStore(dirs)
    try:
        assert [c.chunk_id for c in s.chunks()] == [1]
        assert sorted(s.bad_files) == sorted([os.path.join(sub, "chunk_0000000000000003.mng"),
                                              os.path.join(sub, "notes.txt"), path2])
        with pytest.raises(ChunkNotFound):
            s.read(2, 1, 0, 4)
        assert not os.path.exists(uncommitted)
    finally:
        s.close()


def test_corrupt_byte_fails_only_its_block(store):
    data = random.Random(2).randbytes(4 * BLOCK_SIZE)
    store.write(6, 1, 0, 0, data)
    with open(file_of(store, 6), "r+b") as f:
        f.seek(HEADER_SIZE + 2 * BLOCK_SIZE + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CrcError) as info:
        store.read(6, 1, 2 * BLOCK_SIZE + 5000, 10)
    assert (info.value.chunk_id, info.value.block) == (6, 2)
    with pytest.raises(CrcError):
        store.read(6, 1, 0, 4 * BLOCK_SIZE)
    with pytest.raises(CrcError):
        store.write(6, 2, 1, 2 * BLOCK_SIZE + 1, b"partial over the bad block")
    assert store.read(6, 1, 0, 2 * BLOCK_SIZE) == data[:2 * BLOCK_SIZE]
    assert store.read(6, 1, 3 * BLOCK_SIZE, BLOCK_SIZE) == data[3 * BLOCK_SIZE:]
    assert store.crc_errors == 3
    [damaged] = store.take_damaged()
    assert (damaged.chunk_id, damaged.version, damaged.damaged) == (6, 1, True), "reported once, by the first read"
    assert store.get(6).damaged


def fake_statvfs(free_by_path):
    """Replaces ChunkStore._statvfs: (total, available) bytes per data dir."""
    return lambda disk: (1 << 40, free_by_path[disk.path])


def test_new_chunks_go_to_the_disk_with_most_free_space(store, dirs, monkeypatch):
    monkeypatch.setattr(ChunkStore, "_statvfs", staticmethod(fake_statvfs({dirs[0]: 500 * MiB, dirs[1]: 900 * MiB})))
    store.write(1, 1, 0, 0, b"a")
    assert store.get(1).disk == 1
    monkeypatch.setattr(ChunkStore, "_statvfs", staticmethod(fake_statvfs({dirs[0]: 500 * MiB, dirs[1]: 100 * MiB})))
    store.write(2, 1, 0, 0, b"b")
    assert store.get(2).disk == 0


def test_disks_with_equal_free_space_fill_in_turn(store, dirs, monkeypatch):
    """Data directories on one file system report the same free space: spread, not pile up."""
    monkeypatch.setattr(ChunkStore, "_statvfs", staticmethod(fake_statvfs({dirs[0]: 50 << 30, dirs[1]: 50 << 30})))
    for chunk_id in range(1, 7):
        store.write(chunk_id, 1, 0, 0, b"x")
    assert sorted(store.get(c).disk for c in range(1, 7)) == [0, 0, 0, 1, 1, 1]


def test_parts_of_one_chunk_go_to_distinct_disks(tmp_path, monkeypatch):
    """One disk has by far the most room, so copies pile onto it; the parts of an erasure-coded
    chunk still take a disk each while one holds none of them, then share (never refused)."""
    paths = [str(tmp_path / f"disk{i}") for i in range(4)]
    for path in paths:
        os.mkdir(path)
    free = {paths[0]: 900 << 30, paths[1]: 10 << 30, paths[2]: 10 << 30, paths[3]: 10 << 30}
    monkeypatch.setattr(ChunkStore, "_statvfs", staticmethod(fake_statvfs(free)))
    s = ChunkStore(paths)
    try:
        for chunk_id in (1, 2, 3):
            s.write(chunk_id, 1, 0, 0, b"copy")
        assert [s.get(c).disk for c in (1, 2, 3)] == [0, 0, 0]
        for part in range(4):
            s.write(ec.part_id(7, part), 1, 0, 0, b"part")
        assert sorted(s.get(ec.part_id(7, p)).disk for p in range(4)) == [0, 1, 2, 3]
        s.write(ec.part_id(7, 4), 1, 0, 0, b"part")  # a fifth part: every disk has one
        assert s.get(ec.part_id(7, 4)).disk == 0
        s.write(ec.part_id(8, 0), 1, 0, 0, b"another chunk's part")  # siblings are per chunk
        assert s.get(ec.part_id(8, 0)).disk == 0
        replica = s.open_replica(ec.part_id(8, 1), 1)  # a rebuilt part, too
        other = s.open_replica(ec.part_id(8, 2), 1)  # sees the first while it is still a .tmp file
        assert len({replica.disk.index, other.disk.index, 0}) == 3
        with pytest.raises(FsError, match="already here"):
            s.open_replica(ec.part_id(8, 1), 1)
        other.abort()
        replica.write(b"rebuilt")
        replica.finish(7, None)
        assert s.get(ec.part_id(8, 1)).disk != 0
    finally:
        s.close()


def test_parts_created_at_once_still_take_distinct_disks(tmp_path, monkeypatch):
    """Sessions creating the parts of one chunk in parallel (as a client's write does): each
    disk choice sees the parts chosen before it (a slow statvfs widens the window)."""
    paths = [str(tmp_path / f"disk{i}") for i in range(4)]
    for path in paths:
        os.mkdir(path)
    real = ChunkStore._statvfs

    def slow(disk):
        time.sleep(0.002)
        return real(disk)

    monkeypatch.setattr(ChunkStore, "_statvfs", staticmethod(slow))
    s = ChunkStore(paths)
    try:
        for chunk_id in range(1, 6):
            barrier = threading.Barrier(4)

            def create(part):
                barrier.wait()
                s.write(ec.part_id(chunk_id, part), 1, 0, 0, b"part")

            threads = [threading.Thread(target=create, args=(p,)) for p in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(s.get(ec.part_id(chunk_id, p)).disk for p in range(4)) == [0, 1, 2, 3]
    finally:
        s.close()


def test_leave_free_gives_enospc_for_new_chunks_only(dirs, monkeypatch):
    monkeypatch.setattr(ChunkStore, "_statvfs", staticmethod(fake_statvfs({dirs[0]: 300 * MiB, dirs[1]: 200 * MiB})))
    s = ChunkStore(dirs, leave_free_bytes=200 * MiB)
    try:
        s.write(1, 1, 0, 0, b"fits on disk0")
        assert s.get(1).disk == 0
        assert [d.free_bytes for d in s.disk_stats()] == [100 * MiB, 0]
        s.leave_free = 250 * MiB
        with pytest.raises(FsError) as info:
            s.write(2, 1, 0, 0, b"no room")
        assert info.value.errno == errno.ENOSPC
        s.write(1, 2, 1, 0, b"existing chunks still take writes")
    finally:
        s.close()


def test_removed_data_dir_is_marked_damaged(store, dirs):
    for chunk_id in range(1, 9):
        store.write(chunk_id, 1, 0, 0, b"data")
    store.take_changes()
    on_disk1 = {c.chunk_id for c in store.chunks() if c.disk == 1}
    shutil.rmtree(dirs[1])
    stats = store.disk_stats()
    assert [d.state for d in stats] == [OK, DAMAGED]
    assert (stats[1].chunks, stats[1].free_bytes) == (0, 0)
    added, removed = store.take_changes()
    assert {c.chunk_id for c in removed} == on_disk1
    for chunk_id in on_disk1:
        with pytest.raises(ChunkNotFound):
            store.read(chunk_id, 1, 0, 4)
    store.write(100, 1, 0, 0, b"new chunks avoid the damaged disk")
    assert store.get(100).disk == 0


def test_io_error_on_an_uncached_chunk_marks_the_disk_damaged(dirs):
    s = ChunkStore(dirs, fd_cache_size=1)
    try:
        s.write(1, 1, 0, 0, b"a")
        disk = s.get(1).disk
        s.write(2, 1, 0, 0, b"b")  # evicts chunk 1's file from the cache
        shutil.rmtree(dirs[disk])
        with pytest.raises(FsError) as info:
            s.read(1, 1, 0, 1)
        assert info.value.errno == errno.EIO
        assert s.disk_stats()[disk].state == DAMAGED
    finally:
        s.close()


def test_missing_data_dir_at_start_is_damaged(tmp_path):
    s = ChunkStore([str(tmp_path / "absent"), str(tmp_path)])
    try:
        assert [d.state for d in s.disk_stats()] == [DAMAGED, OK]
    finally:
        s.close()


def test_delete_and_change_deltas(store):
    store.write(1, 1, 0, 0, b"a")
    store.write(2, 1, 0, 0, b"b")
    added, removed = store.take_changes()
    assert sorted(c.chunk_id for c in added) == [1, 2] and removed == []
    assert not store.delete(1, version=2)
    assert store.delete(1, version=1)
    assert store.delete(2)
    assert not store.delete(2)
    added, removed = store.take_changes()
    assert added == [] and sorted((c.chunk_id, c.version) for c in removed) == [(1, 1), (2, 1)]
    assert store.chunks() == []
    assert sum(d.used_bytes for d in store.disk_stats()) == 0
    assert store.take_changes() == ([], [])


def test_disk_usage_is_tracked(store):
    store.write(1, 1, 0, 0, bytes(1000))
    store.write(1, 2, 1, 5000, b"x")
    stats = store.disk_stats()
    disk = stats[store.get(1).disk]
    assert (disk.used_bytes, disk.chunks) == (HEADER_SIZE + 5001, 1)
    assert disk.total_bytes > 0 and disk.free_bytes > 0


def test_parallel_sessions_on_different_chunks(dirs):
    s = ChunkStore(dirs, fd_cache_size=3)
    errors = []

    def worker(chunk_id):
        try:
            payload = random.Random(chunk_id).randbytes(300_000)
            for version in range(1, 6):
                s.write(chunk_id, version, version - 1, version * 1000, payload)
                expected = bytes(version * 1000) + payload
                assert s.read(chunk_id, version, 0, len(expected))[version * 1000:] == payload
        except Exception as exc:  # collected for the main thread to report
            errors.append(exc)

    before = len(os.listdir("/proc/self/fd"))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()
    assert errors == []
    assert len(os.listdir("/proc/self/fd")) <= before


def test_error_types_carry_errnos():
    assert ChunkNotFound(1).errno == errno.ENOENT
    assert StaleChunk(1, 2, "3").errno == errno.ESTALE
    assert CrcError(1, 2).errno == errno.EIO
