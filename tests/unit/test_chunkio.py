"""The Cython block I/O layer against zlib.crc32 and a byte-array model of a chunk."""

import errno
import os
import random
import struct
import zlib
from array import array

import pytest

from mooseng import _chunkio as chunkio
from mooseng.constants import BLOCK_SIZE, BLOCKS_PER_CHUNK

DATA_START = 8192
SEEDS = [0, 1, 0xFFFFFFFF, 0x12345678] + [random.Random(i).getrandbits(32) for i in range(8)]
SIZES = list(range(0, 70)) + [
    127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097,
    BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 17, 1 << 20,
]


def test_block_size_matches_constants():
    assert chunkio.BLOCK_SIZE == BLOCK_SIZE
    assert chunkio.ZERO_BLOCK_CRC == zlib.crc32(bytes(BLOCK_SIZE))


@pytest.mark.parametrize("size", SIZES)
def test_crc32_equals_zlib(size):
    data = random.Random(size).randbytes(size)
    for seed in SEEDS:
        assert chunkio.crc32(data, seed) == zlib.crc32(data, seed)
    assert chunkio.crc32(data) == zlib.crc32(data)


def test_crc32_continues_like_zlib():
    data = random.Random(7).randbytes(300_000)
    crc = 0
    for start in range(0, len(data), 4099):
        crc = chunkio.crc32(data[start:start + 4099], crc)
    assert crc == zlib.crc32(data)


def test_crc32_takes_any_contiguous_buffer():
    data = random.Random(3).randbytes(8192)
    expected = zlib.crc32(data)
    assert chunkio.crc32(bytearray(data)) == expected
    assert chunkio.crc32(memoryview(data)) == expected
    assert chunkio.crc32(array("I", data)) == expected
    with pytest.raises(TypeError):
        chunkio.crc32("text")
    with pytest.raises(BufferError):
        chunkio.crc32(memoryview(data)[::2])


def padded_block_crcs(data):
    return [
        zlib.crc32(data[i:i + BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0"))
        for i in range(0, len(data), BLOCK_SIZE)
    ]


def table_values(table, count):
    return list(struct.unpack_from(f"<{count}I", table))


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 999])
def test_crc32_blocks_pads_last_block_with_zeros(size):
    data = random.Random(size).randbytes(size)
    table = bytearray(4 * BLOCKS_PER_CHUNK)
    count = chunkio.crc32_blocks(data, table)
    assert count == -(-size // BLOCK_SIZE)
    assert table_values(table, count) == padded_block_crcs(data)
    assert not any(table[4 * count:])


def test_crc32_blocks_refuses_a_short_table():
    with pytest.raises(ValueError):
        chunkio.crc32_blocks(bytes(2 * BLOCK_SIZE + 1), bytearray(8))
    with pytest.raises(BufferError):
        chunkio.crc32_blocks(b"x", b"read-only table")


class Model:
    """A chunk file driven through chunkio next to a bytearray holding what it must contain."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, DATA_START)
        self.table = bytearray(struct.pack("<I", chunkio.ZERO_BLOCK_CRC) * BLOCKS_PER_CHUNK)
        self.data = bytearray()

    def write(self, offset, payload):
        chunkio.pwrite_update(self.fd, payload, DATA_START, offset, len(self.data), self.table)
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + len(payload)] = payload

    def expected(self, offset, size):
        return bytes(self.data[offset:offset + size]).ljust(size, b"\0")

    def read(self, offset, size):
        out = bytearray(size)
        chunkio.pread_verify(self.fd, out, DATA_START, offset, len(self.data), self.table)
        return bytes(out)


@pytest.fixture
def model(tmp_path):
    m = Model(tmp_path / "chunk")
    yield m
    os.close(m.fd)


def test_random_writes_and_reads_match_the_model(model):
    rng = random.Random(42)
    limit = 40 * BLOCK_SIZE
    for _ in range(200):
        offset = rng.choice([rng.randrange(limit), rng.randrange(40) * BLOCK_SIZE])
        size = rng.choice([rng.randrange(1, 3 * BLOCK_SIZE), BLOCK_SIZE, 1, rng.randrange(1, 300)])
        size = min(size, limit - offset) or 1
        model.write(offset, rng.randbytes(size))
        offset = rng.randrange(limit + BLOCK_SIZE)
        size = rng.randrange(0, 4 * BLOCK_SIZE)
        assert model.read(offset, size) == model.expected(offset, size)
    assert table_values(model.table, -(-len(model.data) // BLOCK_SIZE)) == padded_block_crcs(bytes(model.data))
    assert model.read(0, len(model.data) + 3 * BLOCK_SIZE) == model.expected(0, len(model.data) + 3 * BLOCK_SIZE)


def test_write_past_the_end_leaves_a_hole_of_zeros(model):
    model.write(10 * BLOCK_SIZE + 5, b"tail")
    assert model.read(0, 11 * BLOCK_SIZE) == bytes(10 * BLOCK_SIZE + 5) + b"tail" + bytes(BLOCK_SIZE - 9)


def test_bytes_past_data_length_read_as_zeros_whatever_the_file_holds(model):
    model.write(0, b"a" * 100)
    os.pwrite(model.fd, b"garbage", DATA_START + 100)
    assert model.read(0, 200) == b"a" * 100 + bytes(100)


def test_whole_chunk_round_trip(model):
    payload = random.Random(1).randbytes(BLOCKS_PER_CHUNK * BLOCK_SIZE)
    model.write(0, payload)
    assert model.read(0, len(payload)) == payload


def corrupt(model, position):
    byte = os.pread(model.fd, 1, DATA_START + position)
    os.pwrite(model.fd, bytes([byte[0] ^ 0x40]), DATA_START + position)


@pytest.mark.parametrize("offset,size", [(0, 8 * BLOCK_SIZE), (3 * BLOCK_SIZE + 7, 10), (BLOCK_SIZE, 3 * BLOCK_SIZE)])
def test_corruption_is_detected_in_the_block_it_hits(model, offset, size):
    model.write(0, random.Random(5).randbytes(8 * BLOCK_SIZE))
    corrupt(model, 3 * BLOCK_SIZE + 12345)
    with pytest.raises(chunkio.CrcMismatch) as info:
        model.read(offset, size)
    assert info.value.block == 3
    assert model.read(0, 3 * BLOCK_SIZE) == model.expected(0, 3 * BLOCK_SIZE)
    assert model.read(4 * BLOCK_SIZE, 4 * BLOCK_SIZE) == model.expected(4 * BLOCK_SIZE, 4 * BLOCK_SIZE)


def test_partial_write_over_a_bad_block_refuses_and_writes_nothing(model):
    model.write(0, b"x" * (2 * BLOCK_SIZE))
    corrupt(model, BLOCK_SIZE + 1)
    before = os.pread(model.fd, 2 * BLOCK_SIZE, DATA_START)
    table = bytes(model.table)
    with pytest.raises(chunkio.CrcMismatch) as info:
        chunkio.pwrite_update(model.fd, b"new", DATA_START, BLOCK_SIZE + 100, 2 * BLOCK_SIZE, model.table)
    assert info.value.block == 1
    assert os.pread(model.fd, 2 * BLOCK_SIZE, DATA_START) == before
    assert bytes(model.table) == table


def test_whole_block_overwrite_heals_a_bad_block(model):
    model.write(0, b"x" * (2 * BLOCK_SIZE))
    corrupt(model, BLOCK_SIZE + 1)
    model.write(BLOCK_SIZE, b"y" * BLOCK_SIZE)
    assert model.read(0, 2 * BLOCK_SIZE) == b"x" * BLOCK_SIZE + b"y" * BLOCK_SIZE


def test_bad_table_entry_past_the_data_is_detected(model):
    model.write(0, b"x")
    model.table[4 * 5:4 * 6] = b"\1\2\3\4"
    with pytest.raises(chunkio.CrcMismatch) as info:
        model.read(0, 6 * BLOCK_SIZE)
    assert info.value.block == 5


def test_ranges_beyond_the_table_are_refused(model):
    with pytest.raises(ValueError):
        model.read(BLOCKS_PER_CHUNK * BLOCK_SIZE - 1, 2)
    with pytest.raises(ValueError):
        chunkio.pwrite_update(model.fd, b"ab", DATA_START, BLOCKS_PER_CHUNK * BLOCK_SIZE - 1, 0, model.table)
    with pytest.raises(ValueError):
        chunkio.pread_verify(model.fd, bytearray(1), DATA_START, 0, 0, bytes(6))


def test_io_errors_raise_oserror_and_leave_the_table_alone(model, tmp_path):
    model.write(0, b"x" * 10)
    table = bytes(model.table)
    fd = os.open(tmp_path / "chunk", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            chunkio.pwrite_update(fd, b"y" * BLOCK_SIZE, DATA_START, 0, 10, model.table)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert bytes(model.table) == table
    with pytest.raises(OSError) as info:
        chunkio.pread_verify(fd, bytearray(10), DATA_START, 0, 10, model.table)
    assert info.value.errno == errno.EBADF


def test_start_writeback(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, bytes(1 << 20), 0)
        chunkio.start_writeback(fd, 0, 1 << 20)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        chunkio.start_writeback(fd, 0, 1)
    assert info.value.errno == errno.EBADF
