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


@pytest.mark.parametrize("operation", ["encode", "decode", "encode_striped"])
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
        elif operation == "encode_striped":
            codec.encode_striped(1 << 16, 0, [(0, data[0])], data[1:] + parity + [bytearray(size)])
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


# --- striped chunk layout (mooseng/ec.py) ---

B = BLOCK_SIZE


def ref_parts(data, k, m):
    """The layout by its definition: block b in data part b % k at row b // k; parity row by row
    from the reference encoder over the zero-padded row; each part cut to its stored length."""
    blocks = [bytes(data[i:i + B]).ljust(B, b"\0") for i in range(0, len(data), B)]
    rows = -(-len(blocks) // k)
    blocks += [bytes(B)] * (rows * k - len(blocks))
    parts = [b"".join(blocks[r * k + i] for r in range(rows)) for i in range(k)]
    parity = [b""] * m
    for r in range(rows):
        for j, p in enumerate(ref_encode(blocks[r * k:(r + 1) * k], k, m)):
            parity[j] += p
    lengths = ec.part_lengths(len(data), k, m)
    return [p[:n] for p, n in zip(parts + parity, lengths)]


def chunk_data(length, seed):
    return bytearray(random.Random(seed).randbytes(length))


def test_part_lengths():
    assert ec.part_lengths(0, 8, 4) == [0] * 12
    assert ec.part_lengths(1, 8, 4) == [1] + [0] * 7 + [1] * 4
    assert ec.part_lengths(2 * B + 5, 4, 2) == [B, B, 5, 0, B, B]
    assert ec.part_lengths(4 * B + 5, 4, 2) == [B + 5, B, B, B, B + 5, B + 5]
    assert ec.part_lengths(CHUNK_SIZE, 8, 4) == [CHUNK_SIZE // 8] * 12
    assert ec.part_lengths(CHUNK_SIZE - 1, 8, 4) == [CHUNK_SIZE // 8] * 7 + [CHUNK_SIZE // 8 - 1] + [CHUNK_SIZE // 8] * 4
    with pytest.raises(ValueError, match="outside"):
        ec.part_lengths(CHUNK_SIZE + 1, 8, 4)


@pytest.mark.parametrize("k, m", [(8, 4), (4, 2), (3, 1)])
def test_chunk_end_inverts_part_lengths(k, m):
    for length in (1, B - 1, B, B + 1, k * B, k * B + 7, 5 * k * B + 3 * B + 11):
        lengths = ec.part_lengths(length, k, m)
        assert max(ec.chunk_end(i, lengths[i], k) for i in range(k)) == length


@pytest.mark.parametrize("k, m", [(0, 4), (8, 0), (0, 0), (-1, 2), (29, 4), (17, 16), (32, 1)])
def test_invalid_geometries_refused_everywhere(k, m):
    for call in (lambda: ec.check_geometry(k, m), lambda: ec.codec(k, m), lambda: ec.part_lengths(10, k, m)):
        with pytest.raises(ValueError, match=f"invalid erasure code k={k}, m={m}: need k >= 1, m >= 1 and k \\+ m <= 32"):
            call()


def test_codec_is_shared_per_geometry():
    assert ec.codec(8, 4) is ec.codec(8, 4) and (ec.codec(4, 2).k, ec.codec(4, 2).m) == (4, 2)


ODD_LENGTHS = [1, 7, B - 1, B, B + 1, 8 * B - 1, 8 * B + 1, 3 * 8 * B + 5 * B + 123, 1_000_003]


@pytest.mark.parametrize("k, m", [(8, 4), (4, 2), (3, 2)])
@pytest.mark.parametrize("length", ODD_LENGTHS)
def test_encode_chunk_is_the_striped_layout(k, m, length):
    data = chunk_data(length, length + k)
    parts = ec.encode_chunk(ec.codec(k, m), data)
    assert [len(p) for p in parts] == ec.part_lengths(length, k, m)
    assert [bytes(p) for p in parts] == ref_parts(data, k, m)
    assert ec.decode_chunk(ec.codec(k, m), parts, length) == data


@pytest.mark.parametrize("k, m, count", [(8, 4, 495), (4, 2, 15)])
def test_every_way_of_losing_m_parts_rebuilds_the_exact_data(k, m, count):
    """A chunk that is not a multiple of k * 64 KiB, ending in a partial stripe."""
    length = 2 * k * B + 3 * B + 4321
    data = chunk_data(length, k * 100 + m)
    codec = ec.codec(k, m)
    parts = ec.encode_chunk(codec, data)
    lengths = ec.part_lengths(length, k, m)
    patterns = list(itertools.combinations(range(k + m), m))
    assert len(patterns) == count
    for lost in patterns:
        supplied = [None if i in lost else p for i, p in enumerate(parts)]
        assert ec.decode_chunk(codec, supplied, length) == data, f"lost {lost}"
        rebuilt = ec.rebuild(codec, supplied, lost, [lengths[i] for i in lost])
        assert [bytes(r) for r in rebuilt] == [bytes(parts[i]) for i in lost], f"lost {lost}"


@pytest.mark.parametrize("k, m", [(8, 4), (4, 2)])
def test_one_byte_chunk_survives_any_m_losses(k, m):
    codec = ec.codec(k, m)
    parts = ec.encode_chunk(codec, b"\x5a")
    for lost in itertools.combinations(range(k + m), m):
        supplied = [None if i in lost else p for i, p in enumerate(parts)]
        assert ec.decode_chunk(codec, supplied, 1) == b"\x5a"
        assert [bytes(r) for r in ec.rebuild(codec, supplied, lost, [len(parts[i]) for i in lost])] == \
            [bytes(parts[i]) for i in lost]


def test_full_64_mib_chunk_once():
    codec = ec.codec(8, 4)
    data = bytearray(CHUNK_SIZE)
    seed = random.Random(21).randbytes(1 << 20)
    for i in range(0, CHUNK_SIZE, 1 << 20):
        data[i:i + (1 << 20)] = seed[::-1] if i % 3 else seed
        data[i:i + 8] = i.to_bytes(8, "little")
    parts = ec.encode_chunk(codec, data)
    assert [len(p) for p in parts] == [CHUNK_SIZE // 8] * 12
    lost = (0, 3, 8, 11)
    supplied = [None if i in lost else p for i, p in enumerate(parts)]
    assert ec.decode_chunk(codec, supplied, CHUNK_SIZE) == data
    assert [bytes(r) for r in ec.rebuild(codec, supplied, [3, 8], [CHUNK_SIZE // 8] * 2)] == [parts[3], parts[8]]


def test_encode_rows_gives_views_and_reuses_parity_buffers():
    codec = ec.codec(4, 2)
    stripe = bytearray(chunk_data(2 * 4 * B, 22))
    parity = [bytearray(3 * B), bytearray(3 * B)]  # larger than needed: reused across calls
    blocks = ec.encode_rows(codec, stripe, parity)
    assert [len(b) for b in blocks] == [2] * 6
    assert all(v.obj is stripe for part in blocks[:4] for v in part)
    assert [v.obj for v in blocks[4]] == [parity[0]] * 2
    assert b"".join(blocks[4]) + b"".join(blocks[5]) == b"".join(ref_parts(stripe, 4, 2)[4:])
    with pytest.raises(ValueError, match="2 parity buffers of at least"):
        ec.encode_rows(codec, stripe, [bytearray(B), bytearray(B)])


def test_encode_rows_pads_a_short_last_row():
    codec = ec.codec(4, 2)
    stripe = chunk_data(4 * B + B // 2, 23)
    blocks = ec.encode_rows(codec, stripe, [bytearray(2 * B), bytearray(2 * B)])
    assert bytes(blocks[0][1]) == bytes(stripe[4 * B:]) + bytes(B // 2) and not any(blocks[3][1])
    assert [b"".join(p)[:n] for p, n in zip(blocks, ec.part_lengths(len(stripe), 4, 2))] == ref_parts(stripe, 4, 2)



# --- encode_striped: layout and encoding of chunk pieces in one call ------------------------------


def random_pieces(rng, lo, hi):
    """Sorted, disjoint (offset, bytes) pieces over [lo, hi) of odd sizes, with gaps, some empty."""
    pieces, pos = [], lo
    while pos < hi:
        pos += rng.choice([0, 0, rng.randrange(1, 3 * B)])
        n = rng.choice([0, 1, rng.randrange(1, 3 * B)])
        pieces.append((pos, rng.randbytes(n)))
        pos += n
    return pieces


def striped_by_python(codec, base, rows, pieces, stop):
    """The same through the Python path: the rows' chunk bytes zero-filled, encode_rows, joined."""
    k = codec.k
    stripe = bytearray(rows * k * B)
    for offset, data in pieces:
        a, b = max(offset, base), min(offset + len(data), base + len(stripe), stop)
        if a < b:
            stripe[a - base:b - base] = data[a - offset:b - offset]
    blocks = ec.encode_rows(codec, stripe, [bytearray(rows * B) for _ in range(codec.m)])
    return [b"".join(part) for part in blocks]


@pytest.mark.parametrize("k, m", [(8, 4), (4, 2), (3, 2)])
@pytest.mark.parametrize("seed", range(6))
def test_encode_striped_matches_the_python_path(k, m, seed):
    """Pieces with gaps and odd sizes, some before or past the rows, a stop inside a row or none:
    byte exact against laying out with Python and encode_rows, whatever the buffers held before."""
    rng = random.Random(seed * 10 + k)
    codec = ec.codec(k, m)
    rows, base = rng.randrange(1, 5), rng.randrange(0, 3) * k * B
    end = base + rows * k * B
    pieces = random_pieces(rng, max(0, base - 2 * B), end + 2 * B)
    stop = rng.choice([-1, rng.randrange(base, end), base + rng.randrange(0, k) * B + 1])
    parts = [bytearray(rng.randbytes(rows * B)) for _ in range(k + m)]  # reused buffers: stale bytes
    codec.encode_striped(B, base, pieces, parts, stop)
    assert [bytes(p) for p in parts] == striped_by_python(codec, base, rows, pieces, end if stop < 0 else stop)


@pytest.mark.parametrize("k, m", [(8, 4), (4, 2)])
@pytest.mark.parametrize("length", ODD_LENGTHS)
def test_encode_striped_of_a_whole_chunk_is_the_striped_layout(k, m, length):
    """A chunk written as 128 KiB pieces (a FUSE client's writes), its last stripe partial."""
    data = chunk_data(length, length + 7 * k)
    rows = ec.chunk_rows(length, k)
    parts = [bytearray(b"\xff" * rows * B) for _ in range(k + m)]
    pieces = [(o, memoryview(data)[o:o + (128 << 10)]) for o in range(0, length, 128 << 10)]
    ec.codec(k, m).encode_striped(B, 0, pieces, parts, length)
    assert [bytes(p[:n]) for p, n in zip(parts, ec.part_lengths(length, k, m))] == ref_parts(data, k, m)
    assert not any(any(p[n:]) for p, n in zip(parts, ec.part_lengths(length, k, m)))



@pytest.mark.parametrize("size", [1, 4097, 3 * B])
def test_aligned_buffer_is_zeroed_writable_and_starts_on_a_page(size):
    import ctypes
    import mmap
    buf = ec.aligned_buffer(size)
    assert len(buf) == size and not any(buf)
    buf[-1] = 7
    assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) % mmap.PAGESIZE == 0

def test_encode_striped_with_no_pieces_is_zeros():
    parts = [bytearray(b"\x01" * 2 * B) for _ in range(6)]
    ec.codec(4, 2).encode_striped(B, 4 * B, [], parts)
    assert not any(any(p) for p in parts)


def test_encode_striped_refuses_bad_arguments():
    codec = ec.codec(4, 2)
    parts = [bytearray(B) for _ in range(6)]
    with pytest.raises(ValueError, match="overlaps or precedes piece 0"):
        codec.encode_striped(B, 0, [(10, b"abcd"), (12, b"x")], parts)
    with pytest.raises(ValueError, match="overlaps or precedes piece 0"):
        codec.encode_striped(B, 0, [(10, b"a"), (5, b"x")], parts)
    with pytest.raises(ValueError, match="before the chunk"):
        codec.encode_striped(B, 0, [(-1, b"a")], parts)
    with pytest.raises(ValueError, match="needs 6 part buffers, got 5"):
        codec.encode_striped(B, 0, [], parts[:5])
    with pytest.raises(ValueError, match="not whole rows of 65536 bytes"):
        codec.encode_striped(B, 0, [], [bytearray(B + 1) for _ in range(6)])
    with pytest.raises(ValueError, match="part 3 has"):
        codec.encode_striped(B, 0, [], parts[:3] + [bytearray(2 * B)] + parts[4:])
    with pytest.raises(ValueError, match="block 0 must be"):
        codec.encode_striped(0, 0, [], parts)
    with pytest.raises(TypeError, match="part 1: need a writable"):
        codec.encode_striped(B, 0, [], [parts[0], bytes(B)] + parts[2:])
    with pytest.raises(TypeError, match="piece 0: need a contiguous buffer"):
        codec.encode_striped(B, 0, [(0, "text")], parts)
    shared = bytearray(2 * B)
    with pytest.raises(ValueError, match="part 0 overlaps part 1"):
        codec.encode_striped(B, 0, [], [memoryview(shared)[:B], memoryview(shared)[B // 2:B // 2 + B]] + parts[2:])
    with pytest.raises(ValueError, match="piece 0 overlaps part 2"):
        codec.encode_striped(B, 0, [(0, memoryview(parts[2])[5:9])], parts)

@pytest.mark.parametrize("k", [8, 4, 1])
def test_read_plan_and_gather_give_every_range(k):
    length = 3 * k * B + 2 * B + 999
    data = chunk_data(length, 24 + k)
    parts = ec.encode_chunk(ec.codec(k, 2), data)
    rng = random.Random(k)
    ranges = [(0, length), (0, 1), (B - 1, 2), (k * B - 5, 10), (length - 1, 1), (B, k * B), (B + 3, 1)]
    ranges += [(a, rng.randrange(1, length - a + 1)) for a in (rng.randrange(length) for _ in range(40))]
    for offset, size in ranges:
        plan = ec.read_plan(offset, size, k)
        fetched = {part: (start, parts[part][start:stop]) for part, start, stop in plan}
        assert b"".join(ec.gather(fetched, offset, size, k)) == data[offset:offset + size], (offset, size)
        # only the blocks of the range: as many bytes as the range, one span per part
        assert sum(stop - start for _, start, stop in plan) == size and len({p for p, _, _ in plan}) == len(plan)
    assert ec.read_plan(5, 0, k) == []


def test_gather_reads_zeros_past_a_short_part():
    # part 1 stores nothing (a hole at chunk block 1): its rows read as zeros
    assert b"".join(ec.gather({0: (0, b"a" * B), 1: (0, b"")}, B - 2, 4, 2)) == b"aa\0\0"


def test_row_range():
    assert ec.row_range(0, 0, 8) == (0, 0)
    assert ec.row_range(0, 1, 8) == (0, 1)
    assert ec.row_range(8 * B - 1, 2, 8) == (0, 2)
    assert ec.row_range(16 * B, 8 * B, 8) == (2, 3)


def test_decode_rows_of_a_row_range_from_parity():
    k, m = 4, 2
    length = 5 * k * B + 100
    data = chunk_data(length, 25)
    parts = ec.encode_chunk(ec.codec(k, m), data)
    r0, r1 = 2, 6  # past the data of some parts: they are shorter than the range
    rows = [p[r0 * B:r1 * B] for p in parts]
    supplied = [None, rows[1], None, rows[3], rows[4], rows[5]]
    out = [bytearray(B * (r1 - r0)), bytearray(B * (r1 - r0))]
    got = ec.decode_rows(ec.codec(k, m), supplied, r1 - r0, [0, 2], out)
    assert [g.obj for g in got] == out
    assert [bytes(g) for g in got] == [bytes(rows[0]).ljust(4 * B, b"\0"), bytes(rows[2]).ljust(4 * B, b"\0")]
    with pytest.raises(ValueError, match="part 1 has"):
        ec.decode_rows(ec.codec(k, m), [None, parts[1]] + [None] + list(rows[3:]), 1, [0])
    with pytest.raises(NotEnoughFragments):
        ec.decode_rows(ec.codec(k, m), [None, None, None] + list(rows[3:]), r1 - r0, [0])


def test_check_sources_ignores_parts_of_the_wrong_size():
    k, m, length = 4, 2, 2 * 4 * B + 10
    good = dict(enumerate(ec.part_lengths(length, k, m)))
    assert ec.check_sources(good, k, m, length) == (2 * B + 10, {})
    sparse = {**good, 2: B}  # a data part may store less (a hole at its end)
    assert ec.check_sources(sparse, k, m, length) == (2 * B + 10, {})
    P, bad = ec.check_sources({**good, 5: B}, k, m, length)
    assert P == 2 * B + 10 and list(bad) == [5] and f"part 0 and parity store {2 * B + 10}" in bad[5]
    P, bad = ec.check_sources({**good, 3: 3 * B}, k, m, length)
    assert list(bad) == [3] and "more than the" in bad[3]
    P, bad = ec.check_sources({**good, 9: 10}, k, m, length)
    assert list(bad) == [9] and "not one of the 6 parts" in bad[9]
    # a grown file (the master's length is larger): nothing is too long
    assert ec.check_sources(good, k, m, CHUNK_SIZE) == (2 * B + 10, {})
    # a data part with more rows than part 0 and parity agree on
    P, bad = ec.check_sources({0: B, 1: 2 * B, 4: B, 5: B}, k, m, CHUNK_SIZE)
    assert P == B and list(bad) == [1] and "more rows" in bad[1]
