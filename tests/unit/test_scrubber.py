"""Scrubbing: the store's full-chunk CRC check, the background scrubber, and its rate pacing."""

import os
import time

from mooseng.chunkserver.replicator import Pacer
from mooseng.chunkserver.scrubber import Scrubber
from mooseng.chunkserver.store import HEADER_SIZE, ChunkStore, chunk_path

MiB = 1 << 20


def flip(store_dir, chunk_id: int, offset: int) -> None:
    with open(chunk_path(str(store_dir), chunk_id), "r+b") as f:
        f.seek(HEADER_SIZE + offset)
        byte = f.read(1)
        f.seek(HEADER_SIZE + offset)
        f.write(bytes([byte[0] ^ 0x55]))


def test_scrub_checks_every_block_and_marks_a_damaged_copy(tmp_path):
    store = ChunkStore([str(tmp_path)])
    store.write(1, 1, 0, 0, os.urandom(3 * MiB + 5))
    store.write(2, 1, 0, 0, os.urandom(MiB))
    buf = bytearray(MiB)
    assert store.scrub(1, buf) == 3 * MiB + 5
    assert store.take_damaged() == []
    flip(tmp_path, 1, 2 * MiB + 70_000)  # a block the reads in this test never touch
    assert store.scrub(1, buf) == 3 * MiB, "stops at the piece with the bad block"
    [damaged] = store.take_damaged()
    assert (damaged.chunk_id, damaged.damaged) == (1, True)
    assert store.take_damaged() == [], "reported once"
    assert store.get(1).damaged and not store.get(2).damaged
    assert store.scrub(1, buf) == 0, "a known damaged copy is not scrubbed again"
    assert bytes(store.read(1, 1, 0, 100)) == bytes(store.read(1, 1, 0, 100)), "its good blocks still read"


def test_the_scrubber_walks_all_chunks_and_counts_errors(tmp_path):
    store = ChunkStore([str(tmp_path)])
    for chunk_id in range(1, 6):
        store.write(chunk_id, 1, 0, 0, os.urandom(256 * 1024))
    flip(tmp_path, 4, 100)
    scrubber = Scrubber(store, rate_bytes_s=100e6)
    scrubber.start()
    try:
        deadline = time.monotonic() + 10
        while scrubber.passes < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scrubber.stop()
    assert scrubber.passes >= 2
    assert scrubber.errors == 1
    assert scrubber.bytes >= 4 * 256 * 1024 * 2
    assert [c.chunk_id for c in store.chunks() if c.damaged] == [4]


def test_many_small_chunks_are_paced_by_their_count_too(tmp_path):
    store = ChunkStore([str(tmp_path)])
    for chunk_id in range(1, 41):
        store.write(chunk_id, 1, 0, 0, os.urandom(4096))
    scrubber = Scrubber(store, rate_bytes_s=8e6)  # the default: ~8 opens a second, not ~2,000
    scrubber.start()
    try:
        deadline = time.monotonic() + 10
        while not scrubber.bytes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scrubber.bytes, "the first chunk is checked at once"
        time.sleep(0.5)
    finally:
        scrubber.stop()
    assert scrubber.passes == 0, "40 small chunks take ~5 s, not 20 ms"
    assert scrubber.bytes <= 8 * 4096


def test_pacer_keeps_the_rate():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    pacer = Pacer(1000.0, clock=lambda: now[0], sleep=sleep)
    pacer.take(500)  # the first half second is paid for at once...
    pacer.take(500)
    pacer.take(1000)
    assert slept == [0.5, 0.5]
    assert now[0] == 1.0, "...so 2000 bytes take 2 s of budget, 1 s of it waited for so far"
    now[0] = 10.0  # idle time is not saved up beyond the present
    pacer.take(100)
    assert slept == [0.5, 0.5]
