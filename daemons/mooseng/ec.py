"""How a chunk of an erasure-coded class (archive = 8+4) maps to the k+m parts it is stored as.

Striped layout (docs/DESIGN.md "Erasure coding"): with B = BLOCK_SIZE (64 KiB), chunk block b
(bytes [b*B, (b+1)*B)) lives in data part b % k at part block b // k, the *row*; parity part k+j's
block r is parity j of row r's k data blocks (zero-padded past the chunk's data). So an append or a
partial write touches one stripe, a sequential read hits all k data parts at once, and a part's
block is one CRC block of its file: a healthy read of a chunk block reads and checks one part
block, a degraded read rebuilds it from row r of k other parts.

A part stores only bytes up to its data: a data part's tail is where the chunk's data ends in it,
every parity part stores as much as data part 0 (always the longest; the code is linear, so parity
is zero wherever every data block is). Bytes past a part's stored length read as zeros, which is
exactly the padding, so the functions here accept parts at any stored length up to their rows.

Everything here is pure; the chunkserver's builder and the client's ecio do the I/O.
"""

from __future__ import annotations

import functools
import mmap
from collections import Counter
from typing import TYPE_CHECKING, Sequence

from mooseng._ec import Codec, NotEnoughFragments
from mooseng.constants import BLOCK_SIZE, CHUNK_SIZE

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "Codec",
    "NotEnoughFragments",
    "MAX_PARTS",
    "aligned_buffer",
    "check_geometry",
    "check_sources",
    "chunk_end",
    "chunk_rows",
    "codec",
    "decode_chunk",
    "decode_rows",
    "encode_chunk",
    "encode_rows",
    "gather",
    "part_id",
    "part_lengths",
    "read_plan",
    "rebuild",
    "row_range",
    "split_part_id",
]

B = BLOCK_SIZE
MAX_PARTS = 32
PART_SHIFT = 56
MAX_CHUNK_ID = (1 << PART_SHIFT) - 1
_ZERO_BLOCK = memoryview(bytes(B))


def part_id(chunk_id: int, part: int) -> int:
    """The id a chunkserver stores part `part` (0-based, < 32) of chunk `chunk_id` under."""
    if not 0 < chunk_id <= MAX_CHUNK_ID or not 0 <= part < MAX_PARTS:
        raise ValueError(f"part_id(chunk_id={chunk_id}, part={part}): chunk id must be 1..2^56-1, part 0..31")
    return chunk_id | (part + 1) << PART_SHIFT


def split_part_id(stored_id: int) -> tuple[int, int]:
    """(chunk_id, part) of a stored id; part is -1 for a whole copy."""
    return stored_id & MAX_CHUNK_ID, (stored_id >> PART_SHIFT) - 1


def check_geometry(k: int, m: int) -> None:
    """ValueError naming the geometry unless 1 <= k, 1 <= m and k + m <= 32."""
    if type(k) is not int or type(m) is not int or k < 1 or m < 1 or k + m > MAX_PARTS:
        raise ValueError(f"invalid erasure code k={k}, m={m}: need k >= 1, m >= 1 and k + m <= {MAX_PARTS}")


@functools.lru_cache(maxsize=16)
def codec(k: int, m: int) -> Codec:
    """One shared Codec per geometry (it is thread-safe and caches its decode tables)."""
    check_geometry(k, m)
    return Codec(k, m)


def aligned_buffer(size: int) -> memoryview:
    """`size` zeroed bytes of their own pages, starting on one (so on a cache line): ISA-L encoded
    8+4 6-7 % faster in such buffers than in bytearrays (heap memory, 16 bytes past a cache line,
    so every 64-byte AVX-512 access straddles two lines); docs/DESIGN.md "Erasure coding". The
    pages appear as they are first touched."""
    return memoryview(mmap.mmap(-1, max(size, 1)))[:size]


# --- sizes --------------------------------------------------------------------------------------


def chunk_rows(length: int, k: int) -> int:
    """Rows (stripes of k blocks) a chunk of `length` bytes spans."""
    return -(-(-(-length // B)) // k)


def part_lengths(length: int, k: int, m: int) -> list[int]:
    """The bytes each of the k+m parts of a chunk of `length` bytes stores (written whole)."""
    check_geometry(k, m)
    if not 0 <= length <= CHUNK_SIZE:
        raise ValueError(f"chunk length {length} is outside 0..{CHUNK_SIZE}")
    last = -(-length // B) - 1  # the last chunk block holding data (-1: none)
    lengths = []
    for i in range(k):
        b = last - (last - i) % k if last >= i else -1  # the last block of part i
        lengths.append(0 if b < 0 else (b // k) * B + min(B, length - b * B))
    return lengths + [lengths[0]] * m


def chunk_end(part: int, stored: int, k: int) -> int:
    """The chunk offset just past the data that data part `part` holds when it stores `stored` bytes."""
    if stored <= 0:
        return 0
    row = (stored - 1) // B
    return (row * k + part) * B + stored - row * B


def row_range(offset: int, length: int, k: int) -> tuple[int, int]:
    """[first, end) of the rows holding chunk bytes [offset, offset+length) (empty for length 0)."""
    if length <= 0:
        return 0, 0
    return offset // B // k, (offset + length - 1) // B // k + 1


def read_plan(offset: int, length: int, k: int) -> list[tuple[int, int, int]]:
    """(data part, start, end) in part-file bytes for each data part holding bytes of chunk range
    [offset, offset+length): contiguous in each part, exact at the range's first and last block."""
    if length <= 0:
        return []
    end = offset + length
    first, last = offset // B, (end - 1) // B
    spans: dict[int, list[int]] = {}
    for b in range(first, min(last, first + k - 1) + 1):  # the first block of each part
        start = (b // k) * B + (offset - b * B if b == first else 0)
        spans[b % k] = [start, 0]
    for b in range(max(first, last - k + 1), last + 1):  # the last block of each part
        spans[b % k][1] = (b // k) * B + (end - b * B if b == last else B)
    return [(part, start, stop) for part, (start, stop) in sorted(spans.items())]


def gather(parts: dict[int, tuple[int, ReadableBuffer]], offset: int, length: int, k: int) -> list[memoryview]:
    """Chunk bytes [offset, offset+length) as views of data part buffers, in order.

    parts: data part -> (part-file offset the buffer starts at, buffer); a buffer shorter than the
    range asked of it reads as zeros past its end.
    """
    out = []
    pos, end = offset, offset + length
    views = {p: (start, memoryview(buf).cast("B")) for p, (start, buf) in parts.items()}
    while pos < end:
        b = pos // B
        stop = min(end, (b + 1) * B)
        start, view = views[b % k]
        at = (b // k) * B + pos - b * B - start
        piece = view[at:at + stop - pos]
        out.append(piece)
        if len(piece) < stop - pos:
            out.append(_ZERO_BLOCK[:stop - pos - len(piece)])
        pos = stop
    return out


# --- coding -------------------------------------------------------------------------------------


def encode_rows(codec: Codec, stripe: ReadableBuffer, parity: Sequence[WriteableBuffer]) -> list[list[memoryview]]:
    """Encode the rows of `stripe` (chunk bytes from a row's start; a short last row is zero-padded)
    into `parity` (m caller-owned buffers of at least rows * B bytes, reused between calls).

    Returns, for each of the k+m parts, its blocks of these rows, one per row: views of `stripe`
    and of `parity`, no copies (the last row's padding is the only one).
    """
    k, m = codec.k, codec.m
    view = memoryview(stripe).cast("B")
    rows = -(-len(view) // (k * B))
    outs = [memoryview(p).cast("B") for p in parity]
    if len(outs) != m or any(len(o) < rows * B for o in outs):
        raise ValueError(f"encode_rows of {rows} rows needs {m} parity buffers of at least {rows * B} bytes")
    blocks: list[list[memoryview]] = [[] for _ in range(k + m)]
    for r in range(rows):
        row = view[r * k * B:(r + 1) * k * B]
        if len(row) < k * B:
            padded = bytearray(k * B)
            padded[:len(row)] = row
            row = memoryview(padded)
        data = [row[i * B:(i + 1) * B] for i in range(k)]
        out = [o[r * B:(r + 1) * B] for o in outs]
        codec.encode(data, out)
        for i, block in enumerate(data + out):
            blocks[i].append(block)
    return blocks


def decode_rows(codec: Codec, parts: Sequence[ReadableBuffer | None], rows: int, want: Sequence[int],
                out: Sequence[WriteableBuffer] | None = None) -> list[memoryview]:
    """Rebuild the parts numbered in `want` over `rows` rows from k of `parts` (k+m entries, None
    for a lost or unused part), each covering the same rows from the same row; a supplied part may
    be shorter than rows * B (zeros past its end: a copy pads it), never longer.

    Results go into `out` (rows * B bytes each) or new buffers; returned as views.
    """
    k, m = codec.k, codec.m
    if len(parts) != k + m:
        raise ValueError(f"decode_rows needs {k + m} parts (None for a lost one), got {len(parts)}")
    size = rows * B
    inputs = [None if p is None else _padded(_checked(p, i, size), size) for i, p in enumerate(parts)]
    outs = [memoryview(bytearray(size)) for _ in want] if out is None else [memoryview(o).cast("B")[:size] for o in out]
    codec.decode(inputs, want, outs)
    return outs


def encode_chunk(codec: Codec, data: ReadableBuffer) -> list[bytearray]:
    """The k+m parts of a whole chunk, each at its stored length (part_lengths)."""
    k, m = codec.k, codec.m
    view = memoryview(data).cast("B")
    rows = chunk_rows(len(view), k)
    parity = [bytearray(rows * B) for _ in range(m)]
    blocks = encode_rows(codec, view, parity)
    lengths = part_lengths(len(view), k, m)
    parts = [bytearray(b"".join(blocks[i])[:lengths[i]]) for i in range(k)]
    return parts + [p[:lengths[k + j]] for j, p in enumerate(parity)]


def decode_chunk(codec: Codec, parts: Sequence[ReadableBuffer | None], length: int) -> bytearray:
    """The `length` bytes of a chunk from its parts as stored (None = lost)."""
    k = codec.k
    rows = chunk_rows(length, k)
    lost = [i for i in range(k) if parts[i] is None]
    data = {i: (0, parts[i]) for i in range(k) if parts[i] is not None}
    if lost:
        for i, buf in zip(lost, decode_rows(codec, parts, rows, lost)):
            data[i] = (0, buf)
    return bytearray(b"".join(gather(data, 0, length, k)))


def rebuild(codec: Codec, parts: Sequence[ReadableBuffer | None], want: Sequence[int],
            lengths: Sequence[int]) -> list[memoryview]:
    """Rebuild whole parts `want` (each None in `parts`) from k others at their stored lengths,
    cut to `lengths` (what each wanted part stores), e.g. to restore lost parts of a chunk."""
    size = max(len(memoryview(p)) for p in parts if p is not None)
    out = decode_rows(codec, parts, -(-size // B), want)
    return [o[:n] for o, n in zip(out, lengths)]


# --- checks ---------------------------------------------------------------------------------------


def check_sources(lengths: dict[int, int], k: int, m: int, length: int) -> tuple[int, dict[int, str]]:
    """(P, {part: why}) for the stored lengths of a chunk's parts as their servers report them.

    P is the length part 0 and every parity part store; a part storing more than a chunk of
    `length` bytes puts in it, a part 0 or parity part storing another length than the others
    agree on, or a data part with more rows than P, is bad: ignored and reported, never decoded.
    """
    nominal = part_lengths(min(length, CHUNK_SIZE), k, m)
    bad = {}
    for part, n in lengths.items():
        if not 0 <= part < k + m:
            bad[part] = f"part {part} is not one of the {k + m} parts of a {k}+{m} chunk"
        elif n > nominal[part]:
            bad[part] = f"part {part} stores {n} bytes, more than the {nominal[part]} of a {length}-byte chunk"
    full = Counter(n for p, n in lengths.items() if p not in bad and (p == 0 or p >= k))
    P = max(full.items(), key=lambda item: (item[1], item[0]))[0] if full else 0
    for part, n in lengths.items():
        if part in bad:
            continue
        if (part == 0 or part >= k) and n != P:
            bad[part] = f"part {part} stores {n} bytes, part 0 and parity store {P}"
        elif n > P:
            bad[part] = f"part {part} stores {n} bytes, more rows than part 0 and parity ({P} bytes)"
    if not full:
        P = max([n for p, n in lengths.items() if p not in bad], default=0)
        P = -(-P // B) * B if P else 0  # no part 0 nor parity: whole rows of the longest data part
    return P, bad


def _checked(buf: ReadableBuffer, index: int, size: int) -> memoryview:
    view = memoryview(buf).cast("B")
    if len(view) > size:
        raise ValueError(f"part {index} has {len(view)} bytes, more than the {size} of its rows")
    return view


def _padded(piece: memoryview, size: int) -> memoryview:
    """piece itself if it is whole, else a copy zero-padded to `size` bytes."""
    if len(piece) == size:
        return piece
    padded = bytearray(size)
    padded[:len(piece)] = piece
    return memoryview(padded)
