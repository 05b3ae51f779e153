"""Erasure coding (cext/ec.pyx, mooseng/ec.py): checked against an independent pure-Python
GF(2^8) Reed-Solomon reference, and against the original bytes for every loss pattern."""

import array
import itertools
import random
import sys
import threading

import pytest

from mooseng import ec
from mooseng.constants import BLOCK_SIZE, CHUNK_SIZE
from mooseng.ec import Codec, NotEnoughFragments

# --- reference: GF(2^8) with ISA-L's polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D), generator 2 ---

EXP = [0] * 510
LOG = [0] * 256
_x = 1
for _i in range(255):
    EXP[_i] = EXP[_i + 255] = _x
    LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D


def gf_mul(a, b):
    return 0 if a == 0 or b == 0 else EXP[LOG[a] + LOG[b]]


def gf_inv(a):
    return EXP[255 - LOG[a]]


# Multiplying a byte string by a constant c is a byte substitution: MUL[c] is its translate table.
MUL = [bytes(gf_mul(c, x) for x in range(256)) for c in range(256)]


def ref_matrix(k, m):
    """ISA-L's gf_gen_cauchy1_matrix by its definition: identity over rows 1 / (i xor j)."""
    identity = [[int(i == j) for j in range(k)] for i in range(k)]
    return identity + [[gf_inv(i ^ j) for j in range(k)] for i in range(k, k + m)]


def ref_encode(data_frags, k, m):
    size = len(data_frags[0])
    parity = []
    for row in ref_matrix(k, m)[k:]:
        acc = 0
        for coef, frag in zip(row, data_frags):
            acc ^= int.from_bytes(bytes(frag).translate(MUL[coef]), "little")
        parity.append(acc.to_bytes(size, "little"))
    return parity


def test_reference_field_is_gf256_with_0x11d():
    assert gf_mul(2, 0x80) == 0x1D
    assert sorted(EXP[:255]) == list(range(1, 256))  # 2 generates the whole multiplicative group
    assert all(gf_mul(a, gf_inv(a)) == 1 for a in range(1, 256))
    assert all(gf_mul(a, b) == gf_mul(b, a) for a in range(0, 256, 7) for b in range(256))


# --- helpers ---


def make_fragments(codec, size, seed):
    rng = random.Random(seed)
    data = [bytearray(rng.randbytes(size)) for _ in range(codec.k)]
    parity = [bytearray(size) for _ in range(codec.m)]
    codec.encode(data, parity)
    return data + parity


def rebuild_and_check(codec, frags, lost):
    supplied = [None if i in lost else frag for i, frag in enumerate(frags)]
    out = [bytearray(len(frags[0])) for _ in lost]
    codec.decode(supplied, lost, out)
    for w, got in zip(lost, out):
        assert got == frags[w], f"fragment {w} differs after losing {lost}"


# --- encode against the reference ---

GEOMETRIES = [(1, 1), (2, 1), (3, 2), (4, 2), (6, 3), (8, 4), (10, 4), (16, 16), (31, 1), (1, 31)]
# Around ISA-L's SIMD widths (16/32/64 bytes) and its scalar tail.
SIZES = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 255, 256, 1000, 4097]


@pytest.mark.parametrize("k, m", GEOMETRIES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_encode_matches_reference(k, m, seed):
    codec = Codec(k, m)
    for size in SIZES:
        frags = make_fragments(codec, size, seed * 1000 + size)
        assert frags[k:] == ref_encode(frags[:k], k, m), f"k={k} m={m} size={size}"


def test_encode_matches_reference_on_block_sized_fragments():
    codec = Codec(8, 4)
    frags = make_fragments(codec, BLOCK_SIZE + 7, seed=9)
    assert frags[8:] == ref_encode(frags[:8], 8, 4)


# --- decode: every loss pattern ---


@pytest.mark.parametrize("k, m, size", [(8, 4, 4133), (8, 4, 1), (4, 2, 4133), (4, 2, 1), (6, 3, 777)])
def test_every_loss_pattern_rebuilds_data_and_parity(k, m, size):
    codec = Codec(k, m)
    frags = make_fragments(codec, size, seed=size)
    for lost_count in range(1, m + 1):
        patterns = list(itertools.combinations(range(k + m), lost_count))
        for lost in patterns:
            rebuild_and_check(codec, frags, list(lost))
    assert len(patterns) == {(8, 4): 495, (4, 2): 15, (6, 3): 84}[(k, m)]


@pytest.mark.parametrize("seed", [11, 12])
def test_all_495_patterns_of_8_plus_4_on_block_sized_fragments(seed):
    codec = Codec(8, 4)
    frags = make_fragments(codec, BLOCK_SIZE + 3, seed)
    for lost in itertools.combinations(range(12), 4):
        rebuild_and_check(codec, frags, list(lost))


def test_decode_from_data_and_parity_survivors():
    codec = Codec(8, 4)
    frags = make_fragments(codec, 5000, seed=5)
    # survivors 2..7 (data) and 9, 11 (parity): the inverse mixes both kinds of rows
    rebuild_and_check(codec, frags, [0, 1, 8, 10])
    # only two data survivors, the rest from parity
    rebuild_and_check(codec, frags, [0, 1, 2, 3])
    rebuild_and_check(codec, frags, [2, 3, 4, 5])


def test_decode_wanted_subset_in_any_order():
    codec = Codec(8, 4)
    frags = make_fragments(codec, 3000, seed=6)
    supplied = [None if i in (1, 4, 9, 10) else f for i, f in enumerate(frags)]
    out = [bytearray(3000), bytearray(3000)]
    codec.decode(supplied, [10, 4], out)
    assert out == [frags[10], frags[4]]


def test_decode_reads_only_the_first_k_survivors():
    codec = Codec(4, 2)
    frags = make_fragments(codec, 999, seed=7)
    supplied = [None] + frags[1:5] + [b"garbage"]  # fragment 5 is never read
    out = [bytearray(999)]
    codec.decode(supplied, [0], out)
    assert out[0] == frags[0]


def test_decode_with_nothing_wanted_is_a_no_op():
    codec = Codec(4, 2)
    frags = make_fragments(codec, 10, seed=8)
    codec.decode(frags, [], [])


@pytest.mark.parametrize("lost", [(0, 1, 2, 3, 4), (0, 2, 4, 6, 8, 10), tuple(range(12))])
def test_fewer_than_k_survivors_refused(lost):
    codec = Codec(8, 4)
    frags = make_fragments(codec, 100, seed=9)
    supplied = [None if i in lost else f for i, f in enumerate(frags)]
    with pytest.raises(NotEnoughFragments) as info:
        codec.decode(supplied, [lost[0]], [bytearray(100)])
    assert (info.value.available, info.value.needed) == (12 - len(lost), 8)
    assert f"{12 - len(lost)} fragments available, 8 needed" in str(info.value)


@pytest.mark.parametrize("cache_size", [0, 1, 64])
def test_decode_tables_cache_gives_the_same_results(cache_size):
    codec = Codec(4, 2, decode_cache_size=cache_size)
    frags = make_fragments(codec, 300, seed=10)
    for _ in range(3):  # alternate patterns so that a small cache evicts and refills
        for lost in ([0, 1], [2, 5], [0, 1], [3, 4], [1], [0, 1]):
            rebuild_and_check(codec, frags, lost)


def test_codec_shared_between_threads():
    codec = Codec(8, 4, decode_cache_size=4)
    frags = make_fragments(codec, 1 << 16, seed=12)
    patterns = list(itertools.combinations(range(12), 4))[::7]
    errors = []

    def worker(offset):
        try:
            for lost in patterns[offset::4]:
                rebuild_and_check(codec, frags, list(lost))
            parity = [bytearray(1 << 16) for _ in range(4)]
            codec.encode(frags[:8], parity)
            assert parity == frags[8:]
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("operation", ["encode", "decode"])
def test_coding_releases_the_gil(operation):
    """With a switch interval far longer than the test, a thread holding the GIL is never preempted:
    the main thread runs before the worker's call has finished only if the call released the GIL."""
    codec = Codec(8, 4)
    size = 16 << 20  # long enough for the main thread to be scheduled while the call runs
    data = [bytearray(size) for _ in range(8)]
    parity = [bytearray(size) for _ in range(4)]
    started = threading.Event()
    finished = []

    def worker():
        started.set()
        if operation == "encode":
            codec.encode(data, parity)
        else:
            codec.decode([None] * 4 + data[4:] + parity, [0, 1, 2, 3], data[:4])
        finished.append(True)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        started.wait()
        ran_during_call = not finished
    finally:
        sys.setswitchinterval(interval)
    thread.join()
    assert ran_during_call


# --- argument checking ---


@pytest.mark.parametrize("k, m", [(0, 4), (8, 0), (0, 0), (-1, 2), (29, 4), (17, 16), (1, 32), (32, 1)])
def test_invalid_geometry_refused(k, m):
    with pytest.raises(ValueError, match=f"k={k}, m={m}"):
        Codec(k, m)


@pytest.mark.parametrize("k, m", [(1, 1), (31, 1), (1, 31), (16, 16)])
def test_extreme_geometries_accepted(k, m):
    codec = Codec(k, m)
    assert (codec.k, codec.m, repr(codec)) == (k, m, f"Codec(k={k}, m={m})")


def test_wrong_fragment_counts_refused():
    codec = Codec(4, 2)
    data = [bytearray(8) for _ in range(4)]
    with pytest.raises(ValueError, match="4 data and 2 parity"):
        codec.encode(data[:3], [bytearray(8)] * 2)
    with pytest.raises(ValueError, match="needs 6 fragments"):
        codec.decode(data, [4], [bytearray(8)])
    with pytest.raises(ValueError, match="2 wanted fragments but 1 output"):
        codec.decode(data + [None, None], [4, 5], [bytearray(8)])


def test_mismatched_sizes_refused():
    codec = Codec(4, 2)
    frags = make_fragments(codec, 64, seed=13)
    with pytest.raises(ValueError, match="parity fragment 1 has 63 bytes"):
        codec.encode(frags[:4], [bytearray(64), bytearray(63)])
    with pytest.raises(ValueError, match="data fragment 2 has 65 bytes"):
        codec.encode(frags[:2] + [bytearray(65), frags[3]], [bytearray(64), bytearray(64)])
    supplied = [None] + frags[1:]
    with pytest.raises(ValueError, match=r"output 0 \(fragment 0\) has 32 bytes"):
        codec.decode(supplied, [0], [bytearray(32)])
    supplied[2] = frags[2][:60]
    with pytest.raises(ValueError, match="fragment 2 has 60 bytes"):
        codec.decode(supplied, [0], [bytearray(64)])


@pytest.mark.parametrize("want, message", [([6], "out of range 0..5"), ([-1], "out of range"),
                                           ([1, 1], "repeat"), ([2], "fragment 2 was supplied")])
def test_bad_wanted_fragments_refused(want, message):
    codec = Codec(4, 2)
    frags = make_fragments(codec, 16, seed=14)
    supplied = [None, None] + frags[2:]
    with pytest.raises(ValueError, match=message):
        codec.decode(supplied, want, [bytearray(16) for _ in want])


def test_any_contiguous_buffer_accepted():
    codec = Codec(4, 2)
    frags = make_fragments(codec, 64, seed=15)
    data = [bytes(frags[0]), memoryview(frags[1]), array.array("I", bytes(frags[2])), frags[3]]
    parity = [array.array("B", bytes(64)), memoryview(bytearray(128))[32:96]]
    codec.encode(data, parity)
    assert [bytes(p) for p in parity] == frags[4:]


def test_unusable_buffers_refused():
    codec = Codec(4, 2)
    data = [bytearray(64) for _ in range(4)]
    with pytest.raises(TypeError, match="parity fragment 0: need a writable contiguous buffer"):
        codec.encode(data, [bytes(64), bytearray(64)])
    with pytest.raises(TypeError, match="data fragment 1: need a contiguous buffer"):
        codec.encode([data[0], memoryview(bytearray(128))[::2], data[2], data[3]], [bytearray(64)] * 2)
    with pytest.raises(TypeError, match="data fragment 0"):
        codec.encode(["text", *data[1:]], [bytearray(64), bytearray(64)])


def test_overlapping_outputs_refused():
    codec = Codec(4, 2)
    data = [bytearray(64) for _ in range(4)]
    shared = bytearray(64)
    with pytest.raises(ValueError, match="parity fragment 0 overlaps parity fragment 1"):
        codec.encode(data, [shared, shared])
    with pytest.raises(ValueError, match="parity fragment 0 overlaps data fragment 2"):
        codec.encode(data, [memoryview(data[2]), bytearray(64)])
    backing = memoryview(bytearray(100))
    with pytest.raises(ValueError, match="overlaps"):
        codec.encode(data, [backing[:64], backing[36:]])
    frags = make_fragments(codec, 64, seed=16)
    with pytest.raises(ValueError, match=r"output 0 \(fragment 0\) overlaps fragment 1"):
        codec.decode([None] + frags[1:], [0], [frags[1]])
    codec.encode([shared] * 4, [bytearray(64), bytearray(64)])  # inputs may share memory


def test_zero_length_fragments():
    codec = Codec(8, 4)
    codec.encode([b""] * 8, [bytearray()] * 4)
    codec.decode([None] * 4 + [b""] * 8, [0, 1, 2, 3], [bytearray()] * 4)


@pytest.mark.slow
def test_fragment_longer_than_an_int_goes_through_in_slices():
    """ec_encode_data takes an int length; fragments past 1 GiB go through in 1 GiB slices."""
    size = (1 << 30) + 4099
    codec = Codec(2, 1)
    rng = random.Random(17)
    # random patterns of prime lengths, repeated: cheap to make, unaligned with the 1 GiB seam
    data = [(bytearray(rng.randbytes(p)) * (size // p + 1))[:size] for p in (4099, 4111)]
    parity = [bytearray(size)]
    codec.encode(data, parity)
    for start in (0, (1 << 30) - 2048, size - 4096):  # first slice, the seam, the tail
        window = slice(start, start + 4096)
        assert parity[0][window] == ref_encode([d[window] for d in data], 2, 1)[0]


# --- chunk layout helpers (mooseng/ec.py) ---


@pytest.mark.parametrize("length, k, expected", [
    (0, 8, 0), (1, 8, BLOCK_SIZE), (8 * BLOCK_SIZE, 8, BLOCK_SIZE), (8 * BLOCK_SIZE + 1, 8, 2 * BLOCK_SIZE),
    (CHUNK_SIZE, 8, CHUNK_SIZE // 8), (CHUNK_SIZE + 1, 8, CHUNK_SIZE // 8 + BLOCK_SIZE),
    (CHUNK_SIZE, 4, CHUNK_SIZE // 4), (3 * BLOCK_SIZE, 4, BLOCK_SIZE),
])
def test_fragment_size_is_whole_crc_blocks(length, k, expected):
    assert ec.fragment_size(length, k) == expected


def test_fragment_lengths():
    assert ec.fragment_lengths(0, 8, 4) == [0] * 12
    assert ec.fragment_lengths(1, 8, 4) == [1] + [0] * 7 + [1] * 4
    b = BLOCK_SIZE
    assert ec.fragment_lengths(2 * b + 5, 4, 2) == [b, b, 5, 0, b, b]
    size = CHUNK_SIZE // 8 + b
    assert ec.fragment_lengths(CHUNK_SIZE + 1, 8, 4) == [size] * 7 + [CHUNK_SIZE + 1 - 7 * size] + [size] * 4


def test_fragment_size_refuses_nonsense():
    with pytest.raises(ValueError):
        ec.fragment_size(-1, 8)
    with pytest.raises(ValueError):
        ec.fragment_size(10, 0)


CHUNK_LENGTHS = [0, 1, 7, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 8 * BLOCK_SIZE - 1, 8 * BLOCK_SIZE + 1,
                 1_000_003, CHUNK_SIZE, CHUNK_SIZE + 1]


@pytest.mark.parametrize("k, m", [(8, 4), (4, 2)])
@pytest.mark.parametrize("length", CHUNK_LENGTHS)
def test_chunk_round_trip_through_lost_fragments(k, m, length):
    codec = Codec(k, m)
    rng = random.Random(length * 31 + k)
    data = bytearray(rng.randbytes(length))
    frags = ec.encode_chunk(codec, data)
    assert [len(f) for f in frags] == ec.fragment_lengths(length, k, m)

    # the unstored tail of every fragment is zeros: encoding the padded layout gives the same bytes
    size, padded = ec.split(data, k)
    parity = [bytearray(size) for _ in range(m)]
    codec.encode(padded, parity)
    for frag, full in zip(frags, padded + parity):
        full = bytes(full)  # bytes compare with memcmp, memoryviews byte by byte
        assert bytes(frag) == full[: len(frag)] and full.count(0, len(frag)) == size - len(frag)

    assert bytes(ec.decode_chunk(codec, frags, length)) == data
    for lost in (rng.sample(range(k + m), m), list(range(m)), list(range(k, k + m))):
        supplied = [None if i in lost else f for i, f in enumerate(frags)]
        assert bytes(ec.decode_chunk(codec, supplied, length)) == data, f"lost {lost}"
        rebuilt = ec.rebuild(codec, supplied, length, lost)
        assert [bytes(r) for r in rebuilt] == [bytes(frags[i]) for i in lost]


def test_chunk_parity_matches_reference():
    codec = Codec(4, 2)
    data = random.Random(18).randbytes(3 * BLOCK_SIZE + 5)
    frags = ec.encode_chunk(codec, data)
    size, padded = ec.split(data, 4)
    assert [bytes(p) for p in frags[4:]] == [p[: len(frags[4])] for p in ref_encode(padded, 4, 2)]


def test_split_copies_only_the_last_fragment():
    data = bytearray(random.Random(19).randbytes(5 * BLOCK_SIZE + 1))
    size, frags = ec.split(data, 4)
    assert size == 2 * BLOCK_SIZE
    assert [f.obj is data for f in frags] == [True, True, False, False]
    assert bytes(frags[2]) == data[2 * size :] + bytes(size - BLOCK_SIZE - 1)
    assert not any(frags[3])


def test_decode_chunk_refuses_too_few_or_too_long_fragments():
    codec = Codec(4, 2)
    frags = ec.encode_chunk(codec, b"x" * 100_000)
    with pytest.raises(NotEnoughFragments):
        ec.decode_chunk(codec, [None, None, None] + frags[3:], 100_000)
    with pytest.raises(ValueError, match="fragment 0 has"):
        ec.decode_chunk(codec, [bytes(BLOCK_SIZE + 1)] + frags[1:], 100_000)
    with pytest.raises(ValueError, match="needs 6 fragments"):
        ec.decode_chunk(codec, frags[:5], 100_000)
