"""How a chunk of an erasure-coded class (archive = 8+4) maps to the k+m fragments it is stored as.

Layout: the chunk's n bytes are cut into k contiguous data fragments of F bytes each (fragment i
holds bytes [i*F, (i+1)*F), zeros past n), followed by m parity fragments of F bytes from Codec.
F = ceil(n / k) rounded up to BLOCK_SIZE (64 KiB), not to a SIMD width, because each fragment is
stored as a chunk file with one CRC per 64 KiB block: with F a whole number of blocks, every
fragment block is exactly one block of the chunk, so a healthy read of a block reads and checks
one fragment block, and a degraded read rebuilds that block alone from the same block of k other
fragments.

The zero padding is never stored. A data fragment holds only its bytes below n; a parity fragment
is zero wherever every data fragment is (the code is linear), so it holds only as many bytes as
data fragment 0 (fragment_lengths). A chunk file reads as zeros past its data, which is exactly
the padding, and the functions here accept fragments at their stored lengths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mooseng._ec import Codec, NotEnoughFragments
from mooseng.constants import BLOCK_SIZE

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "Codec",
    "NotEnoughFragments",
    "decode_chunk",
    "encode_chunk",
    "fragment_lengths",
    "fragment_size",
    "part_id",
    "rebuild",
    "split",
    "split_part_id",
]

PART_SHIFT = 56
MAX_CHUNK_ID = (1 << PART_SHIFT) - 1


def part_id(chunk_id: int, part: int) -> int:
    """The id a chunkserver stores part `part` (0-based, < 32) of chunk `chunk_id` under."""
    if not 0 < chunk_id <= MAX_CHUNK_ID or not 0 <= part < 32:
        raise ValueError(f"part_id(chunk_id={chunk_id}, part={part}): chunk id must be 1..2^56-1, part 0..31")
    return chunk_id | (part + 1) << PART_SHIFT


def split_part_id(stored_id: int) -> tuple[int, int]:
    """(chunk_id, part) of a stored id; part is -1 for a whole copy."""
    return stored_id & MAX_CHUNK_ID, (stored_id >> PART_SHIFT) - 1


def fragment_size(length: int, k: int) -> int:
    """F, the coded size of each fragment of a chunk of `length` bytes: a whole number of CRC blocks."""
    if length < 0 or k < 1:
        raise ValueError(f"fragment_size(length={length}, k={k}): need length >= 0 and k >= 1")
    per_fragment = -(-length // k)
    return -(-per_fragment // BLOCK_SIZE) * BLOCK_SIZE


def fragment_lengths(length: int, k: int, m: int) -> list[int]:
    """The bytes each of the k+m fragments stores; the rest of its F bytes are zeros."""
    size = fragment_size(length, k)
    data = [min(max(length - i * size, 0), size) for i in range(k)]
    return data + [data[0]] * m


def split(data: ReadableBuffer, k: int) -> tuple[int, list[memoryview]]:
    """Cut data into k fragments of F bytes for Codec.encode, copying only the fragment that ends it.

    Fragments inside data are views of it; the one holding its end is a zero-padded copy; those
    past its end share one zero buffer (encode only reads them).
    """
    view = memoryview(data).cast("B")
    size = fragment_size(len(view), k)
    frags = []
    zeros = None
    for i in range(k):
        piece = view[i * size : (i + 1) * size]
        if len(piece) == size:
            frags.append(piece)
        elif len(piece):
            frags.append(_padded(piece, size))
        else:
            zeros = zeros or memoryview(bytes(size))
            frags.append(zeros)
    return size, frags


def encode_chunk(codec: Codec, data: ReadableBuffer) -> list[memoryview]:
    """The k+m fragments of a chunk, each at its stored length (fragment_lengths).

    Data fragments are views of `data` where possible; parity is freshly allocated. A hot path that
    reuses parity buffers calls split() and Codec.encode() itself.
    """
    size, frags = split(data, codec.k)
    parity = [memoryview(bytearray(size)) for _ in range(codec.m)]
    codec.encode(frags, parity)
    lengths = fragment_lengths(memoryview(data).nbytes, codec.k, codec.m)
    return [frag[:n] for frag, n in zip(frags + parity, lengths)]


def decode_chunk(codec: Codec, frags: Sequence[ReadableBuffer | None], length: int) -> memoryview:
    """The `length` bytes of a chunk from its fragments as stored (None = lost), in one new buffer.

    Lost data fragments are rebuilt straight into their place in the result, so a degraded read
    costs the decode plus one copy of each surviving data fragment.
    """
    k, m = codec.k, codec.m
    if len(frags) != k + m:
        raise ValueError(f"decode_chunk needs {k + m} fragments (None for a lost one), got {len(frags)}")
    size = fragment_size(length, k)
    result = memoryview(bytearray(k * size))
    places = [result[i * size : (i + 1) * size] for i in range(k)]
    inputs: list[ReadableBuffer | None] = [None] * (k + m)
    lost = []
    for i in range(k):
        if frags[i] is None:
            lost.append(i)
        else:
            piece = _checked(frags[i], i, size, length)
            places[i][: len(piece)] = piece
            inputs[i] = places[i]
    if lost:
        for j in range(k, k + m):
            if frags[j] is not None:
                inputs[j] = _padded(_checked(frags[j], j, size, length), size)
        codec.decode(inputs, lost, [places[i] for i in lost])
    return result[:length]


def rebuild(codec: Codec, frags: Sequence[ReadableBuffer | None], length: int, want: Sequence[int]) -> list[memoryview]:
    """Rebuild the fragments numbered in `want` (each None in frags) at their stored lengths,
    e.g. to restore a chunkserver's lost fragments from k others."""
    size = fragment_size(length, codec.k)
    inputs = [None if frag is None else _padded(_checked(frag, i, size, length), size) for i, frag in enumerate(frags)]
    outputs = [memoryview(bytearray(size)) for _ in want]
    codec.decode(inputs, want, outputs)
    lengths = fragment_lengths(length, codec.k, codec.m)
    return [out[: lengths[w]] for out, w in zip(outputs, want)]


def _checked(frag: ReadableBuffer, index: int, size: int, length: int) -> memoryview:
    view = memoryview(frag).cast("B")
    if len(view) > size:
        raise ValueError(f"fragment {index} has {len(view)} bytes, more than F={size} of a {length}-byte chunk")
    return view


def _padded(piece: memoryview, size: int) -> memoryview:
    """piece itself if it is a whole fragment, else a copy zero-padded to `size` bytes."""
    if len(piece) == size:
        return piece
    padded = bytearray(size)
    padded[: len(piece)] = piece
    return memoryview(padded)
