"""Open files: a write-back buffer and read-ahead per inode, shared by all of its handles here.

Writes are kept (not copied) as per-chunk dirty extents and return at once. A chunk's buffer is
written in the background (write_chunk -> chunkservers -> commit_write) once it holds
`flush_bytes` (a whole chunk in a file with erasure-coded chunks) or the writer moves on to the
next chunk, and everything is written on flush/fsync/release or when the client's memory budget
runs out.
Reads overlay the buffered data on what the chunkservers return, so a handle sees its own (and
its neighbours') unflushed writes, and getattr sizes include them. A failed background write is
remembered per inode and raised by the next write/flush/fsync/release of every handle that was
open when it happened (Linux's errseq rule), so data is never dropped silently. As in Linux's
writeback, a full file system stays ENOSPC (or EDQUOT); every other failure is EIO.

Reads go through a read cache of block-aligned entries. A handle that reads sequentially
prefetches the next `readahead_bytes` in RA_UNIT pieces on a thread pool; a random read fetches
only the 64 KiB blocks it touches.

Locking: an inode's lock guards its buffers; BufferCache has its own lock. Take an inode's lock
before the cache's, never the reverse, and never wait for cache room holding an inode's lock.
"""

import errno
import itertools
import logging
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from stat import S_ISDIR, S_ISLNK, S_ISREG

from mooseng.client import ecio
from mooseng.client.chunkclient import StaleSession, zeros
from mooseng.client.masterclient import ROOT, Attr, Cred
from mooseng.constants import BLOCK_SIZE, CHUNK_SIZE
from mooseng.errors import FsError

log = logging.getLogger(__name__)

FLUSH_BYTES = 16 << 20  # a chunk's dirty bytes that start its background write
# The same for a file whose chunks are erasure-coded: a whole chunk. A session of such a chunk
# costs a version bump and a commit on each of its k+m parts, so fewer, larger sessions
# (see docs/DESIGN.md "Erasure coding", client details).
EC_FLUSH_BYTES = CHUNK_SIZE
RA_UNIT = 4 << 20  # bytes per prefetch request; divides CHUNK_SIZE, so one never spans chunks
SEQ_SLACK = 1 << 20  # a read this close to the previous one's end counts as sequential
# Sequential reads in a row before read-ahead starts: with one, a random reader whose next read
# happens to land near its last (one in 500 on a 1 GiB file) would fetch a whole window.
SEQ_STREAK = 2
LOCATIONS_AHEAD = 16  # chunk refs per `chunks` query: a sequential reader asks once per GiB
# Waits before re-reading with fresh chunk locations: another writer may have bumped the version
# at the master before its copies have it.
READ_RETRY_DELAYS = (0.0, 0.05, 0.2, 0.5, 1.0)
SESSION_ATTEMPTS = 3  # write sessions of one chunk's buffer that every copy refused as outdated
_ACCMODE = 3  # os.O_ACCMODE
_O_WRONLY, _O_RDWR, _O_APPEND = 1, 2, 0o2000
_UNIT_BLOCKS = RA_UNIT // BLOCK_SIZE


def _ceil_block(n: int) -> int:
    return -(-n // BLOCK_SIZE) * BLOCK_SIZE


class Extents:
    """Dirty data of one chunk as sorted, disjoint pieces (offset, immutable buffer).

    A write keeps the caller's bytes as they are: no copy on the write path, and the pieces of a
    sequential writer go out as they came (the chunk client joins them into messages). Data that
    a later write overlaps is cut away with zero-copy views.
    """

    __slots__ = ("starts", "pieces", "nbytes", "first_seq", "sealed")

    def __init__(self, first_seq: int = 0):
        self.starts: list[int] = []
        self.pieces: list = []  # bytes, or memoryviews of bytes
        self.nbytes = 0
        self.first_seq = first_seq  # the oldest write in here, for flush's "everything so far"
        self.sealed = False  # the writer moved on to the next chunk: write this one out now

    def add(self, start: int, data) -> int:
        """Overlay `data` (bytes, or a view of bytes) at `start`; return how many bytes the
        buffer grew by."""
        end = start + len(data)
        starts, pieces = self.starts, self.pieces
        lo = bisect_right(starts, start) - 1
        if lo < 0 or starts[lo] + len(pieces[lo]) <= start:
            lo += 1  # the first piece that overlaps [start, end)
        hi = bisect_left(starts, end)  # pieces lo .. hi-1 overlap it
        new_starts, new_pieces = [start], [data]
        overlap = 0
        if lo < hi:
            first_start, first = starts[lo], pieces[lo]
            if first_start < start:
                new_starts.insert(0, first_start)
                new_pieces.insert(0, memoryview(first)[:start - first_start])
            last_start, last = starts[hi - 1], pieces[hi - 1]
            if last_start + len(last) > end:
                new_starts.append(end)
                new_pieces.append(memoryview(last)[end - last_start:])
            overlap = sum(min(s + len(p), end) - max(s, start) for s, p in zip(starts[lo:hi], pieces[lo:hi]))
        starts[lo:hi] = new_starts
        pieces[lo:hi] = new_pieces
        grown = len(data) - overlap
        self.nbytes += grown
        return grown

    def end(self) -> int:
        return self.starts[-1] + len(self.pieces[-1]) if self.starts else 0

    def items(self) -> list[tuple[int, object]]:
        return list(zip(self.starts, self.pieces))

    def slices(self, start: int, end: int) -> list[tuple[int, memoryview]]:
        """The buffered bytes within [start, end), as (offset, view)."""
        starts, pieces = self.starts, self.pieces
        out = []
        for j in range(max(bisect_right(starts, start) - 1, 0), len(starts)):
            s = starts[j]
            if s >= end:
                break
            a, b = max(s, start), min(s + len(pieces[j]), end)
            if a < b:
                out.append((a, memoryview(pieces[j])[a - s:b - s]))
        return out


class _Entry:
    """A read cache entry: [start, end) of a file, pending until its fetch fills it with the
    pieces the chunkserver sent."""

    __slots__ = ("ino", "start", "end", "pieces", "offsets", "error", "_ready")

    def __init__(self, ino: int, start: int, end: int):
        self.ino, self.start, self.end = ino, start, end
        self.pieces: list[memoryview] = []
        self.offsets: list[int] = []  # file offset of each piece
        self.error: FsError | None = None
        self._ready = threading.Event()

    def fill(self, pieces: list[memoryview]) -> None:
        pos = self.start
        for piece in pieces:
            self.offsets.append(pos)
            pos += len(piece)
        self.pieces = pieces
        self._ready.set()

    def fail(self, error: FsError) -> None:
        self.error = error
        self._ready.set()

    def get(self, start: int, end: int):
        """Bytes [start, end) (file offsets within the entry); no copy unless pieces are joined."""
        if not self._ready.is_set():
            self._ready.wait()
        if self.error is not None:
            raise self.error
        i = bisect_right(self.offsets, start) - 1
        piece, base = self.pieces[i], self.offsets[i]
        if end - base <= len(piece):
            return piece[start - base:end - base]
        parts = []
        while start < end:
            piece, base = self.pieces[i], self.offsets[i]
            stop = min(end, base + len(piece))
            parts.append(piece[start - base:stop - base])
            start = stop
            i += 1
        return b"".join(parts)


class BufferCache:
    """The client's memory budget (cache_size_mb): dirty data until the chunkservers have it, and
    read cache entries. A writer waits for room (having the dirty buffers flushed); read entries
    are evicted, least recently used first, to keep the total within the limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.dirty = 0
        self.cached = 0
        self._cond = threading.Condition()
        self._lru: OrderedDict[_Entry, None] = OrderedDict()
        self._blocks: dict[int, dict[int, _Entry]] = {}  # ino -> block number -> entry
        self._writers: dict[int, "InodeData"] = {}  # inodes with dirty data no flush has taken yet

    # --- write-back budget ---

    def reserve(self, n: int) -> None:
        """Wait until `n` more dirty bytes fit (one oversized write passes when nothing is dirty)."""
        with self._cond:
            while self.dirty and self.dirty + n > self.limit:
                writers = list(self._writers.values())
                if writers:
                    self._cond.release()
                    try:
                        for inode in writers:
                            inode.flush_async()
                    finally:
                        self._cond.acquire()
                if self.dirty and self.dirty + n > self.limit:
                    self._cond.wait(0.5)
            self.dirty += n
            self._evict()

    def release(self, n: int) -> None:
        with self._cond:
            self.dirty -= n
            self._cond.notify_all()

    def track(self, inode: "InodeData") -> None:
        with self._cond:
            self._writers[inode.ino] = inode

    def untrack(self, inode: "InodeData") -> None:
        with self._cond:
            self._writers.pop(inode.ino, None)

    # --- read cache ---

    def lookup(self, ino: int, pos: int) -> _Entry | None:
        with self._cond:
            blocks = self._blocks.get(ino)
            entry = blocks.get(pos // BLOCK_SIZE) if blocks else None
            if entry is None:
                return None
            if not entry.start <= pos < entry.end:  # ended at an old end of file
                self._drop(entry)
                return None
            self._lru.move_to_end(entry)
            return entry

    def claim(self, ino: int, start: int, end: int) -> list[_Entry]:
        """New pending entries for the runs of blocks in [start, end) that no entry covers, cut
        at RA_UNIT boundaries; `start` is block-aligned. The caller must fill or fail each one."""
        with self._cond:
            blocks = self._blocks.setdefault(ino, {})
            out = []
            first = last = start // BLOCK_SIZE
            stop = -(-end // BLOCK_SIZE)
            while first < stop:
                while first < stop and first in blocks:
                    first += 1
                last = first
                unit_end = min(stop, (first // _UNIT_BLOCKS + 1) * _UNIT_BLOCKS)
                while last < unit_end and last not in blocks:
                    last += 1
                if first < last:
                    entry = _Entry(ino, first * BLOCK_SIZE, min(last * BLOCK_SIZE, end))
                    for k in range(first, last):
                        blocks[k] = entry
                    self._lru[entry] = None
                    self.cached += entry.end - entry.start
                    out.append(entry)
                first = last
            self._evict()
            return out

    def discard(self, entry: _Entry) -> None:
        with self._cond:
            self._drop(entry)

    def invalidate(self, ino: int, start: int = 0, end: int | None = None) -> None:
        """Forget cached data of `ino` in [start, end) (all of it if end is None)."""
        with self._cond:
            blocks = self._blocks.get(ino)
            if not blocks:
                return
            if end is None:
                entries = set(blocks.values())
            else:
                entries = {blocks[k] for k in range(start // BLOCK_SIZE, -(-end // BLOCK_SIZE)) if k in blocks}
            for entry in entries:
                self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        if self._lru.pop(entry, False) is False:
            return  # already dropped
        self.cached -= entry.end - entry.start
        blocks = self._blocks.get(entry.ino)
        if blocks is not None:
            for k in range(entry.start // BLOCK_SIZE, -(-entry.end // BLOCK_SIZE)):
                if blocks.get(k) is entry:
                    del blocks[k]
            if not blocks:
                del self._blocks[entry.ino]

    def _evict(self) -> None:
        while self._lru and self.dirty + self.cached > self.limit:
            self._drop(next(iter(self._lru)))


class InodeData:
    """What this client holds for one open inode: its buffers, chunk locations and last attr."""

    def __init__(self, files: "Files", attr: Attr):
        self.files = files
        self.ino = attr.ino
        self.attr = attr  # the newest the master told us (commit_write, getattr, setattr)
        self.handles = 0  # guarded by Files._lock
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self.append_lock = threading.Lock()  # O_APPEND writes: size and write as one step
        self._dirty: dict[int, Extents] = {}  # chunk index -> data no flush has taken yet
        self._inflight: dict[int, Extents] = {}  # chunk index -> data being written now
        self._jobs: set[int] = set()  # chunks with a running flush job (at most one each)
        self.dirty_bytes = 0  # in _dirty
        self._seq = 0  # numbers writes, so that flush waits for exactly what came before it
        self._force_seq = 0  # buffers holding writes up to this one are written regardless of size
        self._end = 0  # end of the furthest buffered write: the file size while it is unflushed
        self._mtime = 0  # time of the latest buffered write
        self._writer = ROOT  # credentials of the latest writer; its flush runs with them
        self.errors = 0  # failed background writes so far; handles compare with what they saw
        self.errors_logged = 0  # of those, how many flush_all has reported
        self.last_error: FsError | None = None
        self.own: Attr | None = None  # the attr after this client's own latest commit or cut
        self.sustained = False  # unlinked while open here: the master keeps it until our last close
        # index -> (chunk_id, version, servers, ec): ec is None for copies, else [k, m] and
        # servers has k+m entries, the server of each part ("" for none)
        self._locations: dict[int, tuple[int, int, list[str], list[int] | None]] = {}
        self._locations_gen = 0  # bumped by our own commits: older `chunks` answers are stale
        self._flush_bytes = files.flush_bytes  # EC_FLUSH_BYTES once a chunk of the file is erasure-coded

    # --- attributes ---

    def size(self) -> int:
        return max(self.attr.size, self._end)

    def current_attr(self) -> Attr:
        """The attr including buffered writes (their size and time)."""
        with self.lock:
            attr = self.attr
            if self._end > attr.size or self._mtime > attr.mtime:
                attr = attr._replace(size=max(attr.size, self._end), mtime=max(attr.mtime, self._mtime))
            return attr

    def update_attr(self, attr: Attr) -> None:
        """Take a fresher attr from the master; a size or mtime we did not cause means another
        client changed the file, so cached data and chunk locations are dropped."""
        with self.lock:
            old = self.attr
            if attr.ctime < old.ctime:
                return  # an answer overtaken by our own commit
            if attr.size != old.size or attr.mtime != old.mtime:
                self._locations.clear()
                self.files.cache.invalidate(self.ino)
            self.attr = attr

    def truncated(self, attr: Attr) -> None:
        """After setattr(size) (buffers were flushed first): everything cached may be wrong."""
        with self.lock:
            self.attr = self.own = attr
            self._end = 0
            self._locations.clear()
            self.files.cache.invalidate(self.ino)

    # --- writing ---

    def check_error(self, handle: "FileHandle", fsync: bool = False) -> None:
        """Raise a write-back failure this handle has not been told of. fsync keeps its own cursor,
        as Linux's errseq does: a close() that reported the error (perhaps in a forked child
        sharing the open file) must not make a later fsync() on the same file claim success."""
        seen = "fsync_errors_seen" if fsync else "errors_seen"
        if getattr(handle, seen) != self.errors:
            setattr(handle, seen, self.errors)
            code = self.last_error.errno if self.last_error.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
            raise FsError(code, f"writing inode {self.ino} failed: {self.last_error.message}")

    def write(self, handle: "FileHandle", offset: int, data) -> None:
        """Buffer `data`, which is kept as it is: bytes, or a read-only view of bytes."""
        self.check_error(handle)
        cache, flush_bytes = self.files.cache, self._flush_bytes
        pos, n = 0, len(data)
        while pos < n:
            at = offset + pos
            index, in_chunk = divmod(at, CHUNK_SIZE)
            take = min(n - pos, CHUNK_SIZE - in_chunk)
            piece = data if take == n else memoryview(data)[pos:pos + take]
            cache.reserve(take)
            with self.lock:
                self._seq += 1
                ext = self._dirty.get(index)
                if ext is None:
                    ext = self._dirty[index] = Extents(self._seq)
                    before = self._dirty.get(index - 1)
                    if before is not None:  # a sequential writer crossed into this chunk
                        before.sealed = True
                        self._start_job(index - 1)
                grown = ext.add(in_chunk, piece)
                if grown and not self.dirty_bytes:
                    cache.track(self)
                self.dirty_bytes += grown
                self._end = max(self._end, at + take)
                self._mtime = time.time_ns()
                self._writer = handle.cred
                if ext.nbytes >= flush_bytes:
                    self._start_job(index)
            if grown < take:
                cache.release(take - grown)
            pos += take

    def flush(self, handle: "FileHandle | None" = None, fsync: bool = False) -> None:
        """Write everything buffered so far and wait for it; then raise what `handle` has not seen."""
        with self.lock:
            target = self._force_seq = self._seq
            for index in self._dirty:
                self._start_job(index)
            while any(e.first_seq <= target for e in (*self._dirty.values(), *self._inflight.values())):
                self._changed.wait()
        if handle is not None:
            self.check_error(handle, fsync)

    def flush_async(self) -> None:
        """Start writing everything buffered (the budget is exhausted); do not wait."""
        with self.lock:
            self._force_seq = self._seq
            for index in self._dirty:
                self._start_job(index)

    def clean(self) -> bool:
        with self.lock:
            return not self._dirty and not self._inflight

    def _start_job(self, index: int) -> None:
        """With the lock held: make sure a flush job runs for this chunk (one at a time, since
        every write session bumps the chunk's version)."""
        if index not in self._jobs:
            self._jobs.add(index)
            self.files.flush_pool.submit(self._flush_job, index)

    def _flush_job(self, index: int) -> None:
        cache = self.files.cache
        while True:
            with self.lock:
                ext = self._dirty.get(index)
                if ext is None or not (ext.sealed or ext.nbytes >= self._flush_bytes or ext.first_seq <= self._force_seq):
                    self._jobs.discard(index)
                    self._changed.notify_all()
                    return
                del self._dirty[index]
                self._inflight[index] = ext
                self.dirty_bytes -= ext.nbytes
                if not self.dirty_bytes:
                    cache.untrack(self)
                cred = self._writer
            try:
                attr, error = self._store(index, ext, cred), None
            except FsError as exc:
                attr, error = None, exc
                if exc.errno == errno.ENOENT:
                    # Unlinked by another client meanwhile: as on Linux, the write succeeds and
                    # its data goes with the file (the master removed the inode and its chunks).
                    log.info("write-back of inode %d chunk %d: the file is gone (%s)", self.ino, index, exc)
                    error = None
            except Exception as exc:  # a bug must not wedge every later flush of this inode
                log.exception("flush of inode %d chunk %d", self.ino, index)
                attr, error = None, FsError(errno.EIO, f"internal error: {exc!r}")
            with self.lock:
                if error is None:
                    if attr is not None:
                        self.own = attr
                    if attr is not None and attr.ctime >= self.attr.ctime:
                        self.attr = attr
                else:
                    log.error("write-back of inode %d chunk %d (%d bytes) failed: %s", self.ino, index, ext.nbytes, error)
                    self.errors += 1
                    self.last_error = error
                    self._locations.pop(index, None)
                # Drop cached reads first, then the overlay: a reader that misses the overlay
                # then cannot find pre-write data in the cache either.
                base = index * CHUNK_SIZE
                cache.invalidate(self.ino, base + ext.starts[0], base + ext.end())
                del self._inflight[index]
                if not self._dirty and not self._inflight:
                    self._end = self._mtime = 0
                self._changed.notify_all()
            cache.release(ext.nbytes)

    def _store(self, index: int, ext: Extents, cred: Cred) -> Attr:
        """One write session: new chunk version, data to every copy, commit with the new size.

        write_chunk waits while another client writes the chunk (the master's write lease, see
        masterclient); commit_write gives the lease back, release_write when the session failed.
        A session every copy refused for its version (a newer one overtook it: the lease died
        with a leader) stored nothing and is started again, up to SESSION_ATTEMPTS times.
        ENOENT: the inode is gone.
        """
        master = self.files.master
        for attempt in range(1, SESSION_ATTEMPTS + 1):
            chunk = master.call("write_chunk", {"ino": self.ino, "index": index}, cred)
            chunk_id, version, geometry = chunk["chunk_id"], chunk["version"], chunk.get("ec")
            try:
                if geometry:
                    ref = ecio.EcChunk.of(chunk_id, version, geometry, chunk.get("servers", []))
                    old_length = 0 if chunk.get("new") else min(CHUNK_SIZE, max(0, self.attr.size - index * CHUNK_SIZE))
                    stored = ecio.write(self.files.chunks, ref, chunk["expect_version"], ext.items(), old_length)
                    report = {"chunk_id": chunk_id, "version": version, "ok": stored.ok, "parts": stored.parts}
                    servers = stored.servers(ref)
                else:
                    result = self.files.chunks.write(chunk_id, version, chunk["expect_version"],
                                                     chunk.get("servers", []), ext.items())
                    report = {"chunk_id": chunk_id, "version": version, "ok": result.ok}
                    servers = result.ok
                break
            except FsError as exc:
                try:
                    master.call("release_write", {"ino": self.ino, "chunk_id": chunk_id, "version": version}, cred)
                except FsError as why:  # it expires on its own
                    log.warning("could not release the write lease of chunk %016x: %s", chunk_id, why)
                if not isinstance(exc, StaleSession) or attempt == SESSION_ATTEMPTS:
                    raise
                log.warning("write of inode %d chunk %d overtaken, starting it again: %s", self.ino, index, exc)
        attr = master.call("commit_write", {
            "ino": self.ino,
            "size": index * CHUNK_SIZE + ext.end(),
            "chunks": [report],
        }, cred)
        with self.lock:
            self._locations[index] = (chunk_id, version, servers, geometry)
            self._locations_gen += 1
            if geometry:
                self._flush_bytes = max(self.files.flush_bytes, EC_FLUSH_BYTES)
        return self.files.on_attr(Attr.from_dict(attr))

    # --- reading ---

    def read(self, offset: int, size: int):
        """Up to `size` bytes at `offset` (short at end of file); a buffer, not always bytes."""
        with self.lock:
            end = min(offset + size, self.size())
            if end <= offset:
                return b""
            stored_end = min(end, self.attr.size)  # past it, only buffered data or zeros
            overlays = []
            for index in range(offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1):
                base = index * CHUNK_SIZE
                a, b = max(offset, base) - base, min(end, base + CHUNK_SIZE) - base
                for layer in (self._inflight, self._dirty):  # older first: newer data wins
                    ext = layer.get(index)
                    if ext is not None:
                        overlays += [(base + s, d) for s, d in ext.slices(a, b)]
        need_stored = stored_end > offset and not _covers(overlays, offset, stored_end)
        stored = self._read_stored(offset, stored_end) if need_stored else None
        if not overlays and stored_end == end:
            return stored
        out = bytearray(end - offset)
        if stored is not None:
            out[:stored_end - offset] = stored
        for s, d in overlays:
            out[s - offset:s - offset + len(d)] = d
        return out

    def _read_stored(self, start: int, end: int):
        """[start, end) as the chunkservers have it, through the read cache."""
        cache = self.files.cache
        parts = []
        pos = start
        failed_at = -1
        while pos < end:
            entry = cache.lookup(self.ino, pos)
            if entry is None:
                limit = min(_ceil_block(end), (pos // CHUNK_SIZE + 1) * CHUNK_SIZE, self.attr.size)
                if limit <= pos:  # truncated meanwhile
                    parts += zeros(end - pos)
                    break
                claimed = cache.claim(self.ino, pos - pos % BLOCK_SIZE, limit)
                # Use what we fetch even if the budget already evicted it again.
                entry = next((e for e in claimed if e.start <= pos < e.end), None)
                for other in claimed:  # the rest of a large read in parallel
                    if other is not entry:
                        self.files.read_pool.submit(self.fetch, other)
                if entry is None:
                    continue  # another reader claimed this block first
                self.fetch(entry)
            stop = min(end, entry.end)
            try:
                parts.append(entry.get(pos, stop))
            except FsError:
                cache.discard(entry)
                if failed_at == pos:
                    raise
                failed_at = pos  # a failed prefetch: fetch once more before giving up
                continue
            pos = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prefetch(self, start: int, end: int) -> None:
        """Queue reads of [start, end) (up to the stored size) that the cache lacks."""
        pool = self.files.read_pool
        for entry in self.files.cache.claim(self.ino, start - start % BLOCK_SIZE, min(end, self.attr.size)):
            pool.submit(self.fetch, entry)

    def fetch(self, entry: _Entry) -> None:
        """Fill a claimed entry from a chunkserver (it lies within one chunk)."""
        try:
            entry.fill(self._read_chunk(entry.start, entry.end - entry.start))
        except Exception as exc:
            if not isinstance(exc, FsError):
                log.exception("read of inode %d at %d", self.ino, entry.start)
                exc = FsError(errno.EIO, f"internal error: {exc!r}")
            self.files.cache.discard(entry)
            entry.fail(exc)

    def _read_chunk(self, start: int, length: int) -> list[memoryview]:
        index, in_chunk = divmod(start, CHUNK_SIZE)
        error = None
        for attempt, delay in enumerate(READ_RETRY_DELAYS):
            if delay:
                time.sleep(delay)
            chunk_id, version, servers, geometry = self._location(index, refresh=attempt > 0)
            if chunk_id == 0:  # a hole
                return zeros(length)
            try:
                if geometry:
                    ref = ecio.EcChunk.of(chunk_id, version, geometry, servers)
                    return ecio.read(self.files.chunks, ref, in_chunk, length)
                return self.files.chunks.read(chunk_id, version, in_chunk, length, servers)
            except FsError as exc:
                error = exc
        raise error

    def _location(self, index: int, refresh: bool) -> tuple[int, int, list[str], list[int] | None]:
        master = self.files.master
        while True:
            with self.lock:
                if refresh:
                    self._locations.pop(index, None)
                    refresh = False
                loc = self._locations.get(index)
                gen = self._locations_gen
            if loc is not None:
                return loc
            refs = master.call("chunks", {"ino": self.ino, "index": index, "count": LOCATIONS_AHEAD})
            with self.lock:
                if self._locations_gen == gen:  # else our own commit overtook it: ask again
                    self._learn_locations(refs)
                    return self._locations.get(index, (0, 0, [], None))

    def learn_locations(self, refs: list[dict]) -> None:
        """Chunk refs the master sent (with their servers)."""
        with self.lock:
            self._learn_locations(refs)

    def _learn_locations(self, refs: list[dict]) -> None:
        for ref in refs:
            self._locations[ref["index"]] = (ref["chunk_id"], ref["version"], ref.get("servers", []), ref.get("ec"))
            if ref.get("ec"):
                self._flush_bytes = max(self.files.flush_bytes, EC_FLUSH_BYTES)


def _immutable(data) -> bool:
    return type(data) is bytes or (type(data) is memoryview and data.readonly and type(data.obj) is bytes)


def _covers(overlays: list[tuple[int, bytearray]], start: int, end: int) -> bool:
    """Whether the overlays together cover all of [start, end)."""
    pos = start
    for s, d in sorted(overlays, key=lambda o: o[0]):
        if s > pos:
            return False
        pos = max(pos, s + len(d))
        if pos >= end:
            return True
    return pos >= end


class FileHandle:
    """One open(): access mode, credentials, the errors it has seen and its read pattern."""

    def __init__(self, fh: int, inode: InodeData, flags: int, cred: Cred):
        self.fh = fh
        self.inode = inode
        self.flags = flags
        self.cred = cred
        self.errors_seen = self.fsync_errors_seen = inode.errors
        self._lock = threading.Lock()
        self._last_end = -1  # end of the previous read
        self._streak = 0  # consecutive sequential reads
        self._ra_next = 0  # prefetched up to here

    @property
    def writable(self) -> bool:
        return self.flags & _ACCMODE in (_O_WRONLY, _O_RDWR)

    @property
    def readable(self) -> bool:
        return self.flags & _ACCMODE != _O_WRONLY

    def write(self, offset: int, data) -> int:
        if not self.writable:
            raise FsError(errno.EBADF, "file not open for writing")
        if not _immutable(data):  # the buffer keeps it until written: the caller must not change it
            data = bytes(data)
        if self.flags & _O_APPEND:
            with self.inode.append_lock:
                self.inode.write(self, self.inode.size(), data)
        else:
            self.inode.write(self, offset, data)
        return len(data)

    def read(self, offset: int, size: int):
        if not self.readable:
            raise FsError(errno.EBADF, "file not open for reading")
        data = self.inode.read(offset, size)
        window = self.inode.files.readahead_bytes
        if window:
            self._readahead(offset, offset + size, window)
        return data

    def _readahead(self, start: int, end: int, window: int) -> None:
        """Sequential reads (tolerating the reordering of concurrent kernel requests) keep
        `window` bytes ahead of the reader in flight or cached."""
        with self._lock:
            if self._last_end >= 0 and abs(start - self._last_end) <= SEQ_SLACK:
                self._streak += 1
                self._last_end = max(self._last_end, end)
            else:
                self._streak = 0
                self._last_end = end
                self._ra_next = 0
            if self._streak < SEQ_STREAK:
                return
            # Advance in whole units so that each prefetch request is one aligned RA_UNIT.
            unit = min(RA_UNIT, window)
            limit = (self._last_end + window) // unit * unit
            ahead = max(self._ra_next, self._last_end)
            if limit <= ahead:
                return
            self._ra_next = limit
        self.inode.prefetch(ahead, limit)


class Files:
    """Open files of one client: handles, per-inode data, the memory budget and worker pools."""

    def __init__(self, master, chunks, cache_bytes: int, readahead_bytes: int,
                 flush_bytes: int = FLUSH_BYTES, flush_workers: int = 4, read_workers: int = 8,
                 on_attr=lambda attr: attr):
        self.master = master
        self.on_attr = on_attr  # told every attr a commit returns
        self.chunks = chunks
        self.cache = BufferCache(cache_bytes)
        self.readahead_bytes = readahead_bytes
        self.flush_bytes = flush_bytes
        self.flush_pool = ThreadPoolExecutor(flush_workers, thread_name_prefix="mooseng-flush")
        self.read_pool = ThreadPoolExecutor(read_workers, thread_name_prefix="mooseng-readahead")
        self._lock = threading.Lock()
        self._inodes: dict[int, InodeData] = {}
        self._handles: dict[int, FileHandle] = {}
        self._fh = itertools.count(1)

    def open(self, attr: Attr, flags: int, cred: Cred, chunks: list[dict] = ()) -> FileHandle:
        """A handle on a regular file whose current attr (and `chunks` refs, as the master's
        `chunks` query gives them) the caller just got from the master."""
        if S_ISDIR(attr.mode):
            raise FsError(errno.EISDIR, f"inode {attr.ino} is a directory")
        if S_ISLNK(attr.mode):
            raise FsError(errno.ELOOP, f"inode {attr.ino} is a symlink")
        if not S_ISREG(attr.mode):
            raise FsError(errno.ENXIO, f"inode {attr.ino} is not a regular file")
        with self._lock:
            inode = self._inodes.get(attr.ino)
            if inode is None:
                inode = self._inodes[attr.ino] = InodeData(self, attr)
                inode.learn_locations(chunks)
            inode.handles += 1
            handle = FileHandle(next(self._fh), inode, flags, cred)
            self._handles[handle.fh] = handle
        inode.update_attr(attr)
        return handle

    def handle(self, fh: int) -> FileHandle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF, f"no open file {fh}") from None

    def inode(self, ino: int) -> InodeData | None:
        return self._inodes.get(ino)

    def open_inos(self) -> list[int]:
        """The inodes this client has open (unlink and rename send them to the master)."""
        with self._lock:
            return [ino for ino, inode in self._inodes.items() if inode.handles]

    def sustained(self, ino: int) -> None:
        """The master kept `ino` after its last link went, because we had it open: release it
        at the last close, or now if that close came while the unlink was on its way."""
        with self._lock:
            inode = self._inodes.get(ino)
            if inode is not None and inode.handles:
                inode.sustained = True
                return
        self._release_sustained(ino)

    def _release_sustained(self, ino: int) -> None:
        try:
            self.master.call("release", {"ino": ino})
        except (FsError, OSError) as exc:  # the master drops it when our session expires
            log.warning("inode %d: release of the unlinked file failed: %s", ino, exc)

    def release(self, fh: int) -> Attr | None:
        """Close a handle: if it could write, write its inode's buffers (raising what the handle
        has not seen); return the attr after this client's own latest change of the file (None:
        it made none). The last handle's close drops the inode's cache."""
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            raise FsError(errno.EBADF, f"no open file {fh}")
        inode = handle.inode
        last = False
        try:
            if handle.writable:
                inode.flush(handle)
        finally:
            with self._lock:
                inode.handles -= 1
                last = not inode.handles and inode.sustained
                if last:
                    inode.sustained = False
                if not inode.handles and inode.clean():
                    del self._inodes[inode.ino]
                    self.cache.invalidate(inode.ino)
            if last:
                self._release_sustained(inode.ino)
        return inode.own

    def flush_all(self) -> int:
        """Write every buffer of every open file (unmount, shutdown); return how many files lost
        writes since the last call (each is logged: no handle may be left to report it)."""
        failed = 0
        for inode in list(self._inodes.values()):
            inode.flush()
            if inode.errors > inode.errors_logged:
                failed += 1
                log.error("inode %d: %d background write(s) failed, last: %s",
                          inode.ino, inode.errors - inode.errors_logged, inode.last_error)
                inode.errors_logged = inode.errors
        return failed

    def close(self) -> None:
        self.flush_all()
        self.flush_pool.shutdown(wait=True)
        self.read_pool.shutdown(wait=True)
