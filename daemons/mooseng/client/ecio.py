"""Reading, writing and truncating a chunk of an erasure-coded class (archive = 8+4) on its parts.

The master answers such a chunk with `"ec": [k, m]` and `servers` = k+m addresses, entry p the
server of part p ("" if none); the striped layout is in mooseng/ec.py and docs/DESIGN.md.

Read: the data part blocks of the range, one request per part for its contiguous span, all in
parallel. A part that fails (unreachable, DATA_LOSS, wrong version or size) is replaced by the
same rows of other parts (data first, then parity) and decoded, byte exact.

Write: the rows the extents touch are read first where the extents do not cover them and the
chunk had data there, overlaid, encoded, and each part's rows sent in its own write session at
the same version (ChunkClient.write_parts); it succeeds when at least k parts stored it, and
reports which (commit_write's `parts`). Truncate: every part cut to its new length; the cut row's
parity re-encoded and written.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Iterable, NamedTuple

from mooseng import ec, rpc
from mooseng.client.chunkclient import ChunkClient, StaleSession
from mooseng.constants import BLOCK_SIZE, CHUNK_SIZE
from mooseng.errors import FsError

log = logging.getLogger(__name__)

B = BLOCK_SIZE


class EcChunk(NamedTuple):
    chunk_id: int
    version: int
    k: int
    m: int
    servers: list[str]  # k+m entries: server of part p, "" if none

    @classmethod
    def of(cls, chunk_id: int, version: int, geometry, servers: list[str]) -> "EcChunk":
        k, m = geometry
        ec.check_geometry(k, m)
        servers = list(servers)
        if len(servers) != k + m:
            raise FsError(errno.EIO, f"chunk {chunk_id:016x}: the master named {len(servers)} servers "
                                     f"for the {k + m} parts of a {k}+{m} chunk")
        return cls(chunk_id, version, k, m, servers)

    def part(self, p: int) -> int:
        return ec.part_id(self.chunk_id, p)


class Stored(NamedTuple):
    """Which parts a write or truncation reached: ok[i] stored part parts[i]."""

    ok: list[str]
    parts: list[int]

    def servers(self, chunk: EcChunk) -> list[str]:
        """The chunk's server list with the parts that missed it blanked out."""
        done = set(self.parts)
        return [addr if p in done else "" for p, addr in enumerate(chunk.servers)]


# --- read ---------------------------------------------------------------------------------------


def read(chunks: ChunkClient, chunk: EcChunk, offset: int, length: int, version: int | None = None) -> list[memoryview]:
    """Chunk bytes [offset, offset+length) as a list of buffers (zeros past the stored data)."""
    k, m = chunk.k, chunk.m
    version = chunk.version if version is None else version
    plan = ec.read_plan(offset, length, k)
    got: dict[int, tuple[int, memoryview]] = {}
    failed: dict[int, str | Exception] = {}
    failed.update({p: "no server holds it" for p, _, _ in plan if not chunk.servers[p]})
    # A server that failed a read a moment ago (down, or hung until the call timed out) is not
    # waited for again while m others can stand in for its parts.
    suspect = [p for p, _, _ in plan if p not in failed and chunks.suspect(chunk.servers[p])]
    if len(failed) + len(suspect) <= m:
        failed.update({p: f"{chunk.servers[p]} failed a read a moment ago" for p in suspect})
    asked = [(p, start, stop) for p, start, stop in plan if p not in failed]
    results = chunks.read_many([(chunk.servers[p], chunk.part(p), version, start, stop - start)
                                for p, start, stop in asked])
    for (p, start, _), result in zip(asked, results):
        if isinstance(result, Exception):
            failed[p] = result
        else:
            got[p] = (start, result)
    if failed:
        lost = sorted(failed)
        spans = [(start, stop) for p, start, stop in plan if p in failed]
        first, end = min(s for s, _ in spans) // B, -(-max(e for _, e in spans) // B)
        for p, buf in zip(lost, _degraded(chunks, chunk, version, first, end, got, failed, lost)):
            got[p] = (first * B, buf)
    return ec.gather(got, offset, length, k)


def _degraded(chunks: ChunkClient, chunk: EcChunk, version: int, first: int, end: int,
              got: dict[int, tuple[int, memoryview]], failed: dict[int, str | Exception], lost: list[int]) -> list[memoryview]:
    """Rows [first, end) of the lost data parts, decoded from k others: EIO if there are not,
    StaleSession if every part is at another version (a newer write session moved them)."""
    k, m = chunk.k, chunk.m
    rows = end - first
    inputs: list[memoryview | None] = [None] * (k + m)
    for p, (start, buf) in got.items():  # data parts already read for the whole row span
        if start <= first * B and start + len(buf) >= end * B:
            inputs[p] = buf[first * B - start:end * B - start]
    candidates = [p for p in range(k + m) if p not in failed and inputs[p] is None and chunk.servers[p]]
    candidates.sort(key=lambda p: chunks.suspect(chunk.servers[p]))  # stable: data parts first
    while sum(i is not None for i in inputs) < k:
        need = k - sum(i is not None for i in inputs)
        batch, candidates = candidates[:need], candidates[need:]
        if not batch:
            why = "; ".join(_why(chunk, p, failed[p]) for p in sorted(failed))
            message = (f"chunk {chunk.chunk_id:016x} v{version}: {sum(i is not None for i in inputs)} of the {k} "
                       f"parts needed could be read: {why}")
            if all(isinstance(e, rpc.RpcError) and e.status == rpc.FAILED_PRECONDITION for e in failed.values()):
                raise StaleSession(message)
            raise FsError(errno.EIO, message)
        results = chunks.read_many([(chunk.servers[p], chunk.part(p), version, first * B, rows * B) for p in batch])
        for p, result in zip(batch, results):
            if isinstance(result, Exception):
                failed[p] = result
            else:
                inputs[p] = result
    log.warning("chunk %016x v%d: parts %s unreadable, rows %d..%d decoded from others (%s)", chunk.chunk_id,
                version, lost, first, end - 1, "; ".join(_why(chunk, p, failed[p]) for p in lost))
    return ec.decode_rows(ec.codec(k, m), inputs, rows, lost)


def _why(chunk: EcChunk, p: int, failure: str | Exception) -> str:
    return f"part {p}: {failure}" if isinstance(failure, str) else f"part {p}: {chunk.servers[p]}: {failure}"


# --- write --------------------------------------------------------------------------------------


def write(chunks: ChunkClient, chunk: EcChunk, expect_version: int, extents: Iterable[tuple[int, object]],
          old_length: int) -> Stored:
    """Store `extents` ((offset in chunk, data), sorted, disjoint) in a chunk that held
    `old_length` bytes before (0 for a new chunk); FsError(EIO) if fewer than k parts took it.

    Each run of touched rows is laid out straight into one buffer per part (a part's rows
    contiguous) and encoded by one C call (Codec.encode_striped), so every part goes out without
    another copy; the buffers are reused from one session to the next (see ARENAS).
    """
    k, m = chunk.k, chunk.m
    extents = [(offset, memoryview(data).cast("B")) for offset, data in extents]
    new_length = max([old_length] + [offset + len(data) for offset, data in extents])
    lengths = ec.part_lengths(new_length, k, m)
    runs = _row_runs(extents, k)
    arena = _Arena(sum(end - first for first, end in runs) * B * (k + m))
    try:
        per_part: list[list[tuple[int, memoryview]]] = [[] for _ in range(k + m)]
        pos = 0
        for first, end in runs:
            size = (end - first) * B
            parts = [arena.view[pos + p * size:pos + (p + 1) * size] for p in range(k + m)]
            pos += (k + m) * size
            pieces = _with_old_data(chunks, chunk, extents, first, end, old_length, new_length, expect_version)
            ec.codec(k, m).encode_striped(B, first * k * B, pieces, parts, new_length)
            for p in range(k + m):
                n = min(size, lengths[p] - first * B)
                if n > 0:
                    per_part[p].append((first * B, parts[p][:n]))
        return _send(chunks, chunk, expect_version, per_part)
    finally:
        arena.release()


# Session buffers are reused: fresh memory costs its page faults, several times the copy itself
# (a 64 MiB chunk of 8+4 writing into new buffers took 2.2 client CPU s/GiB against 1.0 for two
# copies; reused, 1.0 to 1.4). ARENAS buffers of up to ARENA_KEEP bytes (a whole 8+4 chunk) are
# kept for the process; a session finding none free allocates its own, page-aligned (see
# ec.aligned_buffer: ISA-L encodes aligned rows faster).
ARENAS = 2
ARENA_KEEP = CHUNK_SIZE * 3 // 2
_arenas: list[memoryview] = []
_arenas_lock = threading.Lock()


class _Arena:
    """A buffer of at least `size` bytes for one write, handed back to the pool by release()."""

    def __init__(self, size: int):
        with _arenas_lock:  # by index: memoryviews compare by content
            fits = [i for i, b in enumerate(_arenas) if len(b) >= size]
            self._buf = _arenas.pop(min(fits, key=lambda i: len(_arenas[i]))) if fits else None
        if self._buf is None:
            self._buf = ec.aligned_buffer(size)
        self.view = self._buf[:size]

    def release(self) -> None:
        """After the write: nothing holds a view of the buffer any more (the sessions are over)."""
        if len(self._buf) <= ARENA_KEEP:
            with _arenas_lock:
                _arenas.append(self._buf)
                if len(_arenas) > ARENAS:
                    _arenas.pop(min(range(len(_arenas)), key=lambda i: len(_arenas[i])))


def _with_old_data(chunks: ChunkClient, chunk: EcChunk, extents: list[tuple[int, memoryview]], first: int,
                   end: int, old_length: int, new_length: int, expect_version: int) -> list[tuple[int, memoryview]]:
    """The extents within rows [first, end), and the old data where they leave gaps (read from
    the parts at expect_version: where the master moved them first, that is the new version),
    as sorted, disjoint (chunk offset, bytes) pieces; encode_striped makes the rest zeros."""
    k = chunk.k
    base, stop = first * k * B, min(end * k * B, new_length)
    inside = [(offset, data) for offset, data in extents if offset < stop and offset + len(data) > base]
    gaps, pos = [], base
    for offset, data in inside:
        if offset > pos:
            gaps.append((pos, offset))
        pos = max(pos, offset + len(data))
    if pos < stop:
        gaps.append((pos, stop))
    gaps = [(a, min(b, old_length)) for a, b in gaps if a < old_length]
    if not gaps or not expect_version:
        return inside
    pieces = list(inside)
    a = gaps[0][0]
    gap = iter(gaps)
    ga, gb = next(gap)
    for piece in read(chunks, chunk, a, gaps[-1][1] - a, version=expect_version):
        view = memoryview(piece).cast("B")
        while ga is not None and ga < a + len(view):  # the gaps (or their parts) within this piece
            lo, hi = max(ga, a), min(gb, a + len(view))
            if lo < hi:
                pieces.append((lo, view[lo - a:hi - a]))
            if gb > a + len(view):
                break
            ga, gb = next(gap, (None, None))
        a += len(view)
    pieces.sort(key=lambda item: item[0])
    return pieces


def _row_runs(extents: list[tuple[int, memoryview]], k: int) -> list[tuple[int, int]]:
    """The runs [first, end) of consecutive rows the extents touch."""
    runs: list[list[int]] = []
    for offset, data in extents:
        first, end = ec.row_range(offset, len(data), k)
        if first == end:
            continue
        if runs and first <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([first, end])
    return [(first, end) for first, end in runs]


def _send(chunks: ChunkClient, chunk: EcChunk, expect_version: int,
          per_part: list[list[tuple[int, memoryview]]]) -> Stored:
    """One session per part; Stored, or EIO if fewer than k parts stored it."""
    k = chunk.k
    targets = [p for p in range(k + chunk.m) if chunk.servers[p]]
    errors = chunks.write_parts(chunk.version, expect_version,
                                [(chunk.part(p), chunk.servers[p], per_part[p]) for p in targets])
    done = [p for p, error in zip(targets, errors) if error is None]
    why = [f"part {p} at {chunk.servers[p]}: {error}" for p, error in zip(targets, errors) if error is not None]
    why += [f"part {p}: no server" for p in range(k + chunk.m) if not chunk.servers[p]]
    if why:
        log.warning("write of chunk %016x v%d: parts failed: %s", chunk.chunk_id, chunk.version, "; ".join(why))
    if len(done) < k:
        full = all(error is None or error.startswith("RESOURCE_EXHAUSTED") for error in errors)
        raise FsError(errno.ENOSPC if full and len(done) < len(targets) else errno.EIO,
                      f"chunk {chunk.chunk_id:016x} v{chunk.version}: {len(done)} parts stored the data, "
                      f"{k} needed: {'; '.join(why)}")
    return Stored([chunk.servers[p] for p in done], done)


# --- truncate -----------------------------------------------------------------------------------


def truncate(chunks: ChunkClient, chunk: EcChunk, expect_version: int, length: int) -> Stored:
    """Cut the chunk to `length` bytes at chunk.version: every part to its new length, then the
    parity of the cut row re-encoded (its data blocks changed) and written."""
    k, m = chunk.k, chunk.m
    if not 0 <= length <= CHUNK_SIZE:
        raise FsError(errno.EINVAL, f"chunk length {length} is outside 0..{CHUNK_SIZE}")
    lengths = ec.part_lengths(length, k, m)
    rows = ec.chunk_rows(length, k)
    cut = rows - 1 if length % (k * B) else None  # a row the cut leaves partly filled
    parity_rows = None
    if cut is not None:
        stripe = bytearray(b"".join(read(chunks, chunk, cut * k * B, length - cut * k * B, version=expect_version)))
        parity = [bytearray(B) for _ in range(m)]
        parity_rows = ec.encode_rows(ec.codec(k, m), stripe, parity)[k:]
    ok: list[int] = []
    why = []
    for p in range(k + m):
        if not chunk.servers[p]:
            why.append(f"part {p}: no server")
            continue
        try:
            chunks.truncate(chunk.part(p), chunk.version, expect_version, lengths[p], [chunk.servers[p]])
            ok.append(p)
        except FsError as exc:
            why.append(f"part {p}: {exc}")
    if parity_rows is not None:
        writes = [p for p in ok if p >= k]
        errors = chunks.write_parts(chunk.version, chunk.version, [
            (chunk.part(p), chunk.servers[p], [(cut * B, parity_rows[p - k][0][:lengths[p] - cut * B])])
            for p in writes])
        for p, error in zip(writes, errors):
            if error is not None:
                ok.remove(p)
                why.append(f"part {p}: parity of the cut row: {error}")
    if why:
        log.warning("truncate of chunk %016x v%d: parts failed: %s", chunk.chunk_id, chunk.version, "; ".join(why))
    if len(ok) < k:
        raise FsError(errno.EIO, f"chunk {chunk.chunk_id:016x} v{chunk.version}: {len(ok)} parts could be cut, "
                                 f"{k} needed: {'; '.join(why)}")
    return Stored([chunk.servers[p] for p in ok], ok)
