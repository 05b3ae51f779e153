"""Chunk files on several data dirs: header, CRC table, versioned read/write/truncate/delete.

A chunk lives in `<data_dir>/chunks/<id % 256 as 2 hex>/chunk_<id as 16 hex>.mng` (upper-case hex,
as MooseFS names its files): an 8 KiB header (magic, chunk id, version; at 4096 a table of 1024
little-endian CRC32, one per 64 KiB block over the whole block with zeros past the data), then the
data. The file size is always header + data length, so bytes past the data are a hole or absent
and read as zeros; every CRC table entry describes its block exactly, including blocks wholly past
the data (the CRC of 64 KiB of zeros). That invariant makes holes, growth and re-growth after a
shrink free of special cases.

A write session (open_write ... commit) writes data and CRCs as it goes and moves the header to
the new version only after an fdatasync of the data, so a copy that shows a version holds that
version's data; a copy cut off mid-session keeps its old version and the master treats it as stale.

Errors are FsError subclasses so the service can map them: ChunkNotFound, StaleChunk, CrcError,
and FsError(EINVAL / ENOSPC / EBUSY / EIO). An I/O error that means the disk is broken (EIO, a
vanished directory...) marks the disk damaged: its chunks leave the index (the master sees them
removed and re-replicates) and it takes no new chunks until the chunkserver restarts.

A copy whose block fails its CRC check in the scrubber's pass (chunkserver/scrubber.py) is marked damaged:
it stays where it is, is reported in the next heartbeat, and the master stops handing it out,
copies the chunk from a good copy and then deletes this one (if it was the last copy, it waits).
A copy pulled from another server (replication) is written to `<name>.tmp` and renamed into
place only once complete, checked against the source's CRCs and synced: a source failing
mid-copy leaves no file that a restart would take for a chunk (leftover .tmp files are removed).
"""

import errno
import logging
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mooseng import _chunkio as chunkio
from mooseng.constants import BLOCK_SIZE, BLOCKS_PER_CHUNK, CHUNK_SIZE
from mooseng.ec import MAX_PARTS, part_id, split_part_id
from mooseng.errors import FsError

log = logging.getLogger(__name__)

MAGIC = b"MNGCHK01"
HEADER_SIZE = 8192
TABLE_OFFSET = 4096
TABLE_SIZE = 4 * BLOCKS_PER_CHUNK
VERSION_OFFSET = 16
_IDENT = struct.Struct("<8sQQ")  # magic, chunk_id, version
_VERSION = struct.Struct("<Q")
_CRC = struct.Struct("<I")
EMPTY_TABLE = _CRC.pack(chunkio.ZERO_BLOCK_CRC) * BLOCKS_PER_CHUNK
EMPTY_HEADER = bytes(TABLE_OFFSET - _IDENT.size) + EMPTY_TABLE  # the header after magic/id/version

OK, DAMAGED = "ok", "damaged"
FD_CACHE_SIZE = 256
# Writes at least this big start their writeback at once, so the fdatasync of the commit has
# little left to do (measured: a 64 MiB chunk's commit went from ~80 ms to ~1 ms, streaming writes
# +50%). Smaller writes leave it to the commit: they may rewrite the same pages again.
WRITEBACK_MIN = 1 << 20
_NAME = re.compile(r"chunk_([0-9A-F]{16})\.mng")
TMP_SUFFIX = ".tmp"
_MAX_ID = (1 << 64) - 1
# OSError numbers that say the disk or its file system is broken, not the request.
_DISK_ERRNOS = frozenset(
    {errno.EIO, errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.ENXIO, errno.ENODEV, errno.EACCES,
     errno.EPERM, errno.EUCLEAN}
)
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class ChunkNotFound(FsError):
    """This server holds no (servable) copy of the chunk."""

    def __init__(self, chunk_id: int, detail: str = "no such chunk"):
        super().__init__(errno.ENOENT, f"chunk {chunk_id:016X}: {detail}")
        self.chunk_id = chunk_id


class StaleChunk(FsError):
    """The copy's version is not the one the request expects."""

    def __init__(self, chunk_id: int, have: int, want: str):
        super().__init__(errno.ESTALE, f"chunk {chunk_id:016X} is at version {have}, request wants {want}")
        self.chunk_id = chunk_id
        self.have = have


class CrcError(FsError):
    """A block's data does not match its CRC: this copy is damaged there."""

    def __init__(self, chunk_id: int, block: int):
        super().__init__(errno.EIO, f"chunk {chunk_id:016X}: CRC mismatch in block {block}")
        self.chunk_id = chunk_id
        self.block = block


@dataclass(frozen=True)
class ChunkInfo:
    """A stored copy, as the master's ChunkRef carries it."""

    chunk_id: int
    version: int
    disk: int
    length: int
    damaged: bool = False


@dataclass(frozen=True)
class DiskStat:
    """One data dir, as the master's DiskInfo carries it; free is what new chunks may use."""

    index: int
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    state: str
    chunks: int


def chunk_path(data_dir: str, chunk_id: int) -> str:
    return os.path.join(data_dir, "chunks", f"{chunk_id & 0xFF:02X}", f"chunk_{chunk_id:016X}.mng")


def _check_span(offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > CHUNK_SIZE:
        raise FsError(errno.EINVAL, f"range {offset}+{length} is outside a chunk of {CHUNK_SIZE} bytes")


def _check_ids(chunk_id: int, version: int, expect_version: int = 0) -> None:
    if not 0 < chunk_id <= _MAX_ID:
        raise FsError(errno.EINVAL, f"bad chunk id {chunk_id}")
    if not 0 < version <= _MAX_ID or not 0 <= expect_version <= _MAX_ID:
        raise FsError(errno.EINVAL, f"bad version {version} (expect {expect_version})")


class _Disk:
    __slots__ = ("index", "path", "chunks_dir", "state", "ident", "used", "count", "total")

    def __init__(self, index: int, path: str):
        self.index = index
        self.path = path
        self.chunks_dir = os.path.join(path, "chunks")
        self.state = OK
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino) of chunks_dir
        self.used = 0  # bytes of chunk files (header + data)
        self.count = 0
        self.total = 0


class _Chunk:
    """Index entry. `lock` serialises I/O on the chunk; `gone` is set once it leaves the index."""

    __slots__ = ("id", "disk", "version", "length", "lock", "writer", "gone", "damaged")

    def __init__(self, chunk_id: int, disk: _Disk, version: int, length: int):
        self.id = chunk_id
        self.disk = disk
        self.version = version
        self.length = length
        self.lock = threading.Lock()
        self.writer: int | None = None  # target version of the open write session
        self.gone = False
        self.damaged = False  # a block failed its CRC check

    def info(self) -> ChunkInfo:
        return ChunkInfo(self.id, self.version, self.disk.index, self.length, self.damaged)


class _Handle:
    __slots__ = ("fd", "table", "refs", "evicted")

    def __init__(self, fd: int, table: bytearray):
        self.fd = fd
        self.table = table  # the on-disk CRC table, kept in step with it by every write
        self.refs = 0
        self.evicted = False


class _HandleCache:
    """LRU of open chunk files with their CRC tables; a handle still in use closes on release."""

    def __init__(self, size: int):
        self._size = size
        self._lock = threading.Lock()
        self._lru: OrderedDict[int, _Handle] = OrderedDict()

    def get(self, chunk_id: int) -> _Handle | None:
        with self._lock:
            handle = self._lru.get(chunk_id)
            if handle is not None:
                self._lru.move_to_end(chunk_id)
                handle.refs += 1
            return handle

    def add(self, chunk_id: int, handle: _Handle) -> _Handle:
        with self._lock:
            handle.refs += 1
            old = self._lru.pop(chunk_id, None)
            if old is not None:
                self._evict(old)
            self._lru[chunk_id] = handle
            while len(self._lru) > self._size:
                self._evict(self._lru.popitem(last=False)[1])
        return handle

    def release(self, handle: _Handle) -> None:
        with self._lock:
            handle.refs -= 1
            if handle.evicted and handle.refs == 0:
                os.close(handle.fd)

    def drop(self, chunk_id: int) -> None:
        with self._lock:
            handle = self._lru.pop(chunk_id, None)
            if handle is not None:
                self._evict(handle)

    def clear(self) -> None:
        with self._lock:
            while self._lru:
                self._evict(self._lru.popitem()[1])

    @staticmethod
    def _evict(handle: _Handle) -> None:
        handle.evicted = True
        if handle.refs == 0:
            os.close(handle.fd)


class WriteSession:
    """One write stream into one chunk: write() any number of times, then commit() or abort().

    As a context manager it aborts unless committed. Aborting a session that created the chunk
    removes it: a chunk exists only once a version has been committed.
    """

    def __init__(self, store: "ChunkStore", chunk: _Chunk, version: int, created: bool):
        self._store = store
        self._chunk = chunk
        self.version = version
        self._created = created
        self._open = True

    def write(self, offset: int, data) -> None:
        self._store._write(self._chunk, offset, data)

    def commit(self) -> None:
        """Make the data durable, then move the header to the new version."""
        self._store._commit(self._chunk, self.version)
        self._open = False

    def abort(self) -> None:
        if self._open:
            self._open = False
            self._store._end_session(self._chunk, discard=self._created)

    def __enter__(self) -> "WriteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class ReplicaWriter:
    """A copy being pulled from another server: write() its data in order, then finish() with the
    source's CRC entries, or abort(). Until finish() it is a .tmp file outside the index."""

    def __init__(self, store: "ChunkStore", chunk_id: int, version: int, disk: _Disk, path: str, fd: int):
        self._store = store
        self.chunk_id = chunk_id
        self.version = version
        self.disk = disk
        self.path = path
        self._fd = fd
        self._table = bytearray(EMPTY_TABLE)
        self.length = 0

    def write(self, data) -> None:
        """Append data; every piece but the last is a whole number of blocks."""
        if self.length % BLOCK_SIZE or self.length + len(data) > CHUNK_SIZE:
            raise FsError(errno.EINVAL, f"replica of chunk {self.chunk_id:016X}: piece out of order")
        first = self.length // BLOCK_SIZE
        blocks = -(-len(data) // BLOCK_SIZE)
        chunkio.crc32_blocks(data, memoryview(self._table)[4 * first:4 * (first + blocks)])
        try:
            os.pwrite(self._fd, data, HEADER_SIZE + self.length)
        except OSError as exc:
            raise FsError(errno.EIO, f"writing {self.path}: {exc.strerror}") from None
        self.length += len(data)

    def finish(self, length: int, crcs: bytes | None) -> None:
        """Check length and CRCs against the source's, write the header, sync, move into place.
        `crcs` None: the content was made here (an erasure-coded part built from others), so
        the CRCs computed while writing it are the only ones there are."""
        if length != self.length:
            raise FsError(errno.EIO, f"replica of chunk {self.chunk_id:016X}: got {self.length} of {length} bytes")
        mine = bytes(self._table[: len(crcs or b"")])
        if crcs is not None and mine != crcs:
            block = next(i for i in range(0, len(crcs), 4) if mine[i:i + 4] != crcs[i:i + 4]) // 4
            raise FsError(errno.EIO, f"replica of chunk {self.chunk_id:016X}: CRC of block {block} differs from the source's")
        try:
            os.pwrite(self._fd, _IDENT.pack(MAGIC, self.chunk_id, self.version) + bytes(TABLE_OFFSET - _IDENT.size)
                      + self._table, 0)
            os.fdatasync(self._fd)
        except OSError as exc:
            raise FsError(errno.EIO, f"writing {self.path}: {exc.strerror}") from None
        os.close(self._fd)
        self._fd = -1
        try:
            self._store._adopt(self)
        except OSError as exc:
            raise FsError(errno.EIO, f"renaming {self.path}: {exc.strerror}") from None

    def abort(self) -> None:
        self._store._replica_gone(self.chunk_id)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc.strerror)


class ChunkStore:
    """Every chunk on this server's data dirs, indexed in memory (id -> disk, version, length)."""

    def __init__(self, data_dirs: list[str], leave_free_bytes: int = 0, fd_cache_size: int = FD_CACHE_SIZE):
        self.leave_free = leave_free_bytes
        self.bad_files: list[str] = []  # chunk files refused at start (bad header, duplicate...)
        self._disks = [_Disk(i, str(path)) for i, path in enumerate(data_dirs)]
        self._lock = threading.Lock()  # index, disk counters, change deltas
        # Choosing a new chunk's disk and making the chunk known is one step, so that parts of one
        # chunk created at once see each other (store placement: distinct disks).
        self._place_lock = threading.Lock()
        self._incoming: dict[int, _Disk] = {}  # replicas being received: their disk
        self._chunks: dict[int, _Chunk] = {}
        self._added: dict[int, ChunkInfo] = {}
        self._removed: dict[int, ChunkInfo] = {}
        self._damaged: dict[int, ChunkInfo] = {}  # found damaged since the last take_damaged()
        self._fds = _HandleCache(fd_cache_size)
        self._stats_lock = threading.Lock()
        self.bytes_read = 0
        self.bytes_written = 0
        self.crc_errors = 0
        for disk in self._disks:
            self._scan(disk)

    # --- start-up -----------------------------------------------------------------------------

    def _scan(self, disk: _Disk) -> None:
        """Index the disk's chunk files; refuse (and report) any whose header does not check out."""
        if not os.path.isdir(disk.path):
            self._mark_damaged(disk, "data dir is missing")
            return
        try:
            for sub in range(256):
                os.makedirs(os.path.join(disk.chunks_dir, f"{sub:02X}"), exist_ok=True)
            st = os.stat(disk.chunks_dir)
            disk.ident = (st.st_dev, st.st_ino)
            disk.total = self._statvfs(disk)[0]
            for sub in sorted(os.listdir(disk.chunks_dir)):
                subdir = os.path.join(disk.chunks_dir, sub)
                if not os.path.isdir(subdir):
                    self._refuse(subdir, "not a chunk directory")
                    continue
                for name in sorted(os.listdir(subdir)):
                    self._scan_file(disk, sub, name)
        except OSError as exc:
            self._mark_damaged(disk, f"scan failed: {exc}")
            return
        log.info("disk %s: %d chunks, %d bytes", disk.path, disk.count, disk.used)

    def _scan_file(self, disk: _Disk, sub: str, name: str) -> None:
        path = os.path.join(disk.chunks_dir, sub, name)
        if name.endswith(TMP_SUFFIX) and _NAME.fullmatch(name[: -len(TMP_SUFFIX)]):
            log.info("removing %s: a replication that never completed", path)
            os.unlink(path)
            return
        match = _NAME.fullmatch(name)
        if match is None:
            self._refuse(path, "not a chunk file name")
            return
        chunk_id = int(match.group(1), 16)
        if sub != f"{chunk_id & 0xFF:02X}":
            self._refuse(path, "chunk file in the wrong directory")
            return
        with open(path, "rb") as f:
            head = f.read(_IDENT.size)
            size = os.fstat(f.fileno()).st_size
        if len(head) < _IDENT.size or size < HEADER_SIZE or size > HEADER_SIZE + CHUNK_SIZE:
            self._refuse(path, f"bad size {size}")
            return
        magic, header_id, version = _IDENT.unpack(head)
        if magic != MAGIC or header_id != chunk_id:
            self._refuse(path, f"bad header (magic {magic!r}, chunk id {header_id:016X})")
            return
        if version == 0:
            log.info("removing %s: its creation never committed", path)
            os.unlink(path)
            return
        known = self._chunks.get(chunk_id)
        if known is not None:
            if known.version >= version:
                self._refuse(path, f"duplicate of the copy on {known.disk.path} (version {known.version})")
                return
            self._refuse(chunk_path(known.disk.path, chunk_id), f"duplicate of newer copy {path}")
            self._forget_locked(known, report=False)
        chunk = _Chunk(chunk_id, disk, version, size - HEADER_SIZE)
        self._chunks[chunk_id] = chunk
        disk.used += size
        disk.count += 1

    def _refuse(self, path: str, why: str) -> None:
        log.warning("ignoring %s: %s", path, why)
        self.bad_files.append(path)

    # --- reading ------------------------------------------------------------------------------

    def read(self, chunk_id: int, version: int, offset: int, length: int, out=None) -> memoryview:
        """Chunk bytes [offset, offset+length), zeros past the stored data; every block is checked.

        They go into `out` (a writable buffer of at least `length` bytes, so that a server can
        reuse one; a new one if None), and a view of them is returned. `version` must be the
        stored one, or the one an open write session is producing (a reader told the new version
        by the master may come while the writer is still at work).
        """
        _check_span(offset, length)
        view = memoryview(bytearray(length) if out is None else out)[:length]
        if len(view) < length:
            raise ValueError(f"buffer of {len(view)} bytes cannot hold {length}")
        chunk = self._find(chunk_id)
        with chunk.lock:
            self._check_alive(chunk)
            if version != chunk.version and version != chunk.writer:
                raise StaleChunk(chunk_id, chunk.version, f"version {version}")
            with self._io(chunk) as handle:
                chunkio.pread_verify(handle.fd, view, HEADER_SIZE, offset, chunk.length, handle.table)
        with self._stats_lock:
            self.bytes_read += length
        return view

    # --- writing ------------------------------------------------------------------------------

    def open_write(self, chunk_id: int, version: int, expect_version: int) -> WriteSession:
        """Start a write session producing `version`.

        The copy must be at `expect_version` (0: the chunk must not exist yet, it is created on
        the healthy disk with the most free space) or already at `version` (a later stream of the
        same session). Otherwise StaleChunk, or ChunkNotFound; FsError(EBUSY) while another
        session is open on the chunk.
        """
        _check_ids(chunk_id, version, expect_version)
        chunk, created = self._reserve(chunk_id, version, expect_version)
        return WriteSession(self, chunk, version, created)

    def write(self, chunk_id: int, version: int, expect_version: int, offset: int, data) -> None:
        """A whole write session with one piece of data."""
        with self.open_write(chunk_id, version, expect_version) as session:
            session.write(offset, data)
            session.commit()

    def _reserve(self, chunk_id: int, version: int, expect_version: int) -> tuple[_Chunk, bool]:
        """Find or create the chunk and mark it as being written for `version`."""
        with self._lock:
            chunk = self._chunks.get(chunk_id)
        if chunk is None:
            if expect_version != 0:
                raise ChunkNotFound(chunk_id, f"not here (write expects version {expect_version})")
            return self._create(chunk_id, version), True
        with chunk.lock:
            self._check_alive(chunk)
            self._check_movable(chunk, expect_version, version)
            chunk.writer = version
        return chunk, False

    def _create(self, chunk_id: int, version: int) -> _Chunk:
        with self._place_lock:
            disk = self._choose_disk(chunk_id)
            chunk = _Chunk(chunk_id, disk, 0, 0)
            chunk.writer = version
            with self._lock:
                if chunk_id in self._chunks:
                    raise FsError(errno.EBUSY, f"chunk {chunk_id:016X} is being created by another stream")
                self._chunks[chunk_id] = chunk
                disk.used += HEADER_SIZE
                disk.count += 1
        with chunk.lock:
            path = chunk_path(disk.path, chunk_id)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except OSError as exc:
                self._forget(chunk, report=False)
                raise self._io_failed(chunk, exc) from None
            try:
                os.pwrite(fd, _IDENT.pack(MAGIC, chunk_id, 0) + EMPTY_HEADER, 0)
            except OSError as exc:
                os.close(fd)
                self._discard(chunk)
                raise self._io_failed(chunk, exc) from None
            self._fds.release(self._fds.add(chunk_id, _Handle(fd, bytearray(EMPTY_TABLE))))
        return chunk

    def _choose_disk(self, chunk_id: int) -> _Disk:
        """The healthy disk with room for a full chunk and the most free space (in whole chunks);
        among equals the one holding fewest chunks, so that data directories sharing one file
        system (equal free space) fill in turn instead of the first taking everything.

        A part of an erasure-coded chunk goes to a disk holding no other part of the same chunk
        when one has room: losing a disk then loses one part of it, not several.
        """
        siblings = self._sibling_disks(chunk_id)
        best, best_key = None, None
        for disk in self._disks:
            if disk.state != OK:
                continue
            try:
                total, avail = self._statvfs(disk)
            except OSError as exc:
                self._mark_damaged(disk, f"statvfs failed: {exc}")
                continue
            free = avail - self.leave_free
            if free < HEADER_SIZE + CHUNK_SIZE:
                continue
            key = (disk.index not in siblings, free // CHUNK_SIZE, -disk.count)
            if best_key is None or key > best_key:
                best, best_key = disk, key
        if best is None:
            raise FsError(errno.ENOSPC, f"no healthy disk has room for a new chunk (leave_free {self.leave_free} bytes)")
        return best

    def _sibling_disks(self, stored_id: int) -> set[int]:
        """Indexes of the disks holding other parts of the chunk `stored_id` is a part of."""
        chunk_id, part = split_part_id(stored_id)
        if part < 0:
            return set()
        with self._lock:
            ids = [part_id(chunk_id, p) for p in range(MAX_PARTS) if p != part]
            disks = {c.disk.index for c in (self._chunks.get(i) for i in ids) if c is not None}
            return disks | {d.index for d in (self._incoming.get(i) for i in ids) if d is not None}

    def _write(self, chunk: _Chunk, offset: int, data) -> None:
        length = len(data)
        _check_span(offset, length)
        if not length:
            return
        first, last = offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE
        with chunk.lock:
            self._check_alive(chunk)
            with self._io(chunk) as handle:
                chunkio.pwrite_update(handle.fd, data, HEADER_SIZE, offset, chunk.length, handle.table)
                if length >= WRITEBACK_MIN:
                    chunkio.start_writeback(handle.fd, HEADER_SIZE + offset, length)
                table = memoryview(handle.table)[4 * first:4 * (last + 1)]
                os.pwrite(handle.fd, table, TABLE_OFFSET + 4 * first)
            end = offset + length
            if end > chunk.length:
                with self._lock:
                    chunk.disk.used += end - chunk.length
                chunk.length = end
        with self._stats_lock:
            self.bytes_written += length

    def _commit(self, chunk: _Chunk, version: int) -> None:
        with chunk.lock:
            self._check_alive(chunk)
            with self._io(chunk) as handle:
                self._set_version(handle.fd, version)
            chunk.version = version
            chunk.writer = None
            self._changed(chunk)

    @staticmethod
    def _set_version(fd: int, version: int) -> None:
        """Data first, then the version: a copy showing a version holds that version's data."""
        os.fdatasync(fd)
        os.pwrite(fd, _VERSION.pack(version), VERSION_OFFSET)
        os.fdatasync(fd)

    def _end_session(self, chunk: _Chunk, discard: bool) -> None:
        with chunk.lock:
            chunk.writer = None
            if discard and not chunk.gone:
                self._discard(chunk)

    def set_version(self, chunk_id: int, expect_version: int, version: int) -> None:
        """Move the copy from `expect_version` to `version` (durably), as the master does to every
        valid copy before a write session or a cut (MooseFS-style); already at `version`: done.

        ChunkNotFound, StaleChunk (at another version), FsError(EBUSY) while a session is open:
        its commit would take the header back to the session's older version.
        """
        _check_ids(chunk_id, version, expect_version)
        chunk = self._find(chunk_id)
        with chunk.lock:
            self._check_alive(chunk)
            self._check_movable(chunk, expect_version, version)
            if chunk.version != version:
                with self._io(chunk) as handle:
                    self._set_version(handle.fd, version)
                chunk.version = version
                self._changed(chunk)

    # --- replication and scrubbing ------------------------------------------------------------

    def crc_table(self, chunk_id: int, version: int) -> tuple[int, bytes]:
        """(data length, CRC entries of the blocks holding data) of the copy at `version`: what
        a server pulling this copy checks its own against."""
        chunk = self._find(chunk_id)
        with chunk.lock:
            self._check_alive(chunk)
            if version != chunk.version:
                raise StaleChunk(chunk_id, chunk.version, f"version {version}")
            with self._io(chunk) as handle:
                return chunk.length, bytes(handle.table[: 4 * -(-chunk.length // BLOCK_SIZE)])

    def open_replica(self, chunk_id: int, version: int) -> "ReplicaWriter":
        """Start receiving a copy pulled from another server (FsError(EEXIST) if one is here)."""
        _check_ids(chunk_id, version)
        with self._place_lock:
            with self._lock:
                if chunk_id in self._chunks or chunk_id in self._incoming:
                    raise FsError(errno.EEXIST, f"chunk {chunk_id:016X} is already here")
            disk = self._choose_disk(chunk_id)
            with self._lock:
                self._incoming[chunk_id] = disk
        path = chunk_path(disk.path, chunk_id) + TMP_SUFFIX
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            self._replica_gone(chunk_id)
            raise FsError(errno.EIO, f"cannot create {path}: {exc.strerror}") from None
        return ReplicaWriter(self, chunk_id, version, disk, path, fd)

    def _replica_gone(self, chunk_id: int) -> None:
        with self._lock:
            self._incoming.pop(chunk_id, None)

    def _adopt(self, replica: "ReplicaWriter") -> None:
        """Put a complete, synced replica into place and into the index (reported as added)."""
        final = chunk_path(replica.disk.path, replica.chunk_id)
        chunk = _Chunk(replica.chunk_id, replica.disk, replica.version, replica.length)
        with self._lock:
            self._incoming.pop(replica.chunk_id, None)
            if replica.chunk_id in self._chunks:
                raise FsError(errno.EEXIST, f"chunk {replica.chunk_id:016X} appeared meanwhile")
            if replica.disk.state != OK:
                raise FsError(errno.EIO, f"disk {replica.disk.path} was marked damaged")
            os.rename(replica.path, final)
            self._chunks[chunk.id] = chunk
            replica.disk.used += HEADER_SIZE + chunk.length
            replica.disk.count += 1
            self._added[chunk.id] = chunk.info()
            self._removed.pop(chunk.id, None)
        dir_fd = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def scrub(self, chunk_id: int, buffer: bytearray) -> int:
        """Check every block of the copy against its CRC; returns the bytes checked (0: no such
        copy any more, or already known damaged). A mismatch marks the copy damaged. The chunk
        is locked one buffer at a time, so writes and reads wait for one buffer at most."""
        with self._lock:
            chunk = self._chunks.get(chunk_id)
        if chunk is None or chunk.damaged:
            return 0
        checked = offset = 0
        while True:
            with chunk.lock:
                if chunk.gone or chunk.damaged or chunk.writer is not None or offset >= chunk.length:
                    return checked
                length = min(len(buffer), chunk.length - offset)
                try:
                    with self._io(chunk) as handle:
                        chunkio.pread_verify(handle.fd, memoryview(buffer)[:length], HEADER_SIZE, offset,
                                             chunk.length, handle.table)
                except CrcError:  # _io marked the copy damaged
                    return checked + length
                except FsError as exc:
                    log.warning("scrub of chunk %016X stopped: %s", chunk_id, exc)
                    return checked
            offset += length
            checked += length

    # --- truncate / delete --------------------------------------------------------------------

    def truncate(self, chunk_id: int, version: int, expect_version: int, length: int) -> None:
        """Set the data length and move to `version` (same version rules as open_write).

        Shrinking recomputes the CRC of the new last block (after checking its old content) and
        resets the CRCs past it; growing needs no CRC change, since blocks past the data already
        hold the CRC of zeros.
        """
        _check_ids(chunk_id, version, expect_version)
        _check_span(0, length)
        chunk, created = self._reserve(chunk_id, version, expect_version)
        with WriteSession(self, chunk, version, created) as session:
            with chunk.lock:
                self._check_alive(chunk)
                with self._io(chunk) as handle:
                    if length < chunk.length:
                        self._shrink(chunk, handle, length)
                    else:
                        os.ftruncate(handle.fd, HEADER_SIZE + length)
                with self._lock:
                    chunk.disk.used += length - chunk.length
                chunk.length = length
            session.commit()

    @staticmethod
    def _shrink(chunk: _Chunk, handle: _Handle, length: int) -> None:
        first = length // BLOCK_SIZE  # first block whose content changes
        end = -(-chunk.length // BLOCK_SIZE)
        if length % BLOCK_SIZE:
            block = bytearray(BLOCK_SIZE)
            chunkio.pread_verify(handle.fd, block, HEADER_SIZE, first * BLOCK_SIZE, chunk.length, handle.table)
            block[length % BLOCK_SIZE:] = bytes(BLOCK_SIZE - length % BLOCK_SIZE)
            handle.table[4 * first:4 * first + 4] = _CRC.pack(chunkio.crc32(block))
            handle.table[4 * (first + 1):4 * end] = EMPTY_TABLE[4 * (first + 1):4 * end]
        else:
            handle.table[4 * first:4 * end] = EMPTY_TABLE[4 * first:4 * end]
        os.ftruncate(handle.fd, HEADER_SIZE + length)
        os.pwrite(handle.fd, memoryview(handle.table)[4 * first:4 * end], TABLE_OFFSET + 4 * first)

    def delete(self, chunk_id: int, version: int = 0) -> bool:
        """Delete the copy if it is at `version` (0: whatever its version); False if nothing was done.

        A chunk with an open write session is left alone: the master asks again if it still wants
        it gone once the session has reported its new version.
        """
        with self._lock:
            chunk = self._chunks.get(chunk_id)
        if chunk is None:
            return False
        with chunk.lock:
            if chunk.gone or (version and chunk.version != version):
                return False
            if chunk.writer is not None:
                log.info("not deleting chunk %016X: a write session is open", chunk_id)
                return False
            self._discard(chunk)
        return True

    def _discard(self, chunk: _Chunk) -> None:
        """Remove the chunk file and forget the chunk (caller holds chunk.lock)."""
        try:
            os.unlink(chunk_path(chunk.disk.path, chunk.id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._io_failed(chunk, exc) from None
        finally:
            self._forget(chunk, report=chunk.version != 0)

    # --- reporting ----------------------------------------------------------------------------

    def get(self, chunk_id: int) -> ChunkInfo | None:
        with self._lock:
            chunk = self._chunks.get(chunk_id)
            return chunk.info() if chunk is not None and chunk.version else None

    def chunks(self) -> list[ChunkInfo]:
        """Every committed copy (a chunk still being created is not reported)."""
        with self._lock:
            return [c.info() for c in self._chunks.values() if c.version]

    def chunk_count(self) -> int:
        with self._lock:
            return len(self._chunks)

    def take_changes(self) -> tuple[list[ChunkInfo], list[ChunkInfo]]:
        """(added or changed, removed) copies since the last call, for the heartbeat."""
        with self._lock:
            added, self._added = list(self._added.values()), {}
            removed, self._removed = list(self._removed.values()), {}
        return added, removed

    def take_damaged(self) -> list[ChunkInfo]:
        """Copies found damaged since the last call, for the heartbeat."""
        with self._lock:
            damaged, self._damaged = list(self._damaged.values()), {}
        return damaged

    def check_disks(self) -> None:
        """Mark damaged any disk whose chunk directory vanished or was replaced."""
        for disk in self._disks:
            if disk.state != OK:
                continue
            try:
                st = os.stat(disk.chunks_dir)
            except OSError as exc:
                self._mark_damaged(disk, f"chunk directory unreachable: {exc.strerror}")
                continue
            if (st.st_dev, st.st_ino) != disk.ident:
                self._mark_damaged(disk, "chunk directory was replaced")

    def disk_stats(self) -> list[DiskStat]:
        """Checks the disks, then reports them (damaged ones with no free space)."""
        self.check_disks()
        stats = []
        for disk in self._disks:
            free = 0
            if disk.state == OK:
                try:
                    disk.total, avail = self._statvfs(disk)
                    free = max(0, avail - self.leave_free)
                except OSError as exc:
                    self._mark_damaged(disk, f"statvfs failed: {exc.strerror}")
            with self._lock:
                stats.append(DiskStat(disk.index, disk.path, disk.total, disk.used, free, disk.state, disk.count))
        return stats

    def close(self) -> None:
        self._fds.clear()

    # --- internals ----------------------------------------------------------------------------

    def _find(self, chunk_id: int) -> _Chunk:
        with self._lock:
            chunk = self._chunks.get(chunk_id)
        if chunk is None:
            raise ChunkNotFound(chunk_id)
        return chunk

    @staticmethod
    def _check_movable(chunk, expect_version: int, version: int) -> None:
        """A copy may go to `version` only from `expect_version` (or be there already), and not
        while a write session is open: its commit would take the header back to its version."""
        if chunk.writer is not None:
            raise FsError(errno.EBUSY, f"chunk {chunk.id:016X} is being written (version {chunk.writer})")
        if chunk.version not in (expect_version, version):
            raise StaleChunk(chunk.id, chunk.version, f"{expect_version} (to make {version})")

    @staticmethod
    def _check_alive(chunk: _Chunk) -> None:
        if chunk.gone:
            raise ChunkNotFound(chunk.id, "deleted")

    @staticmethod
    def _statvfs(disk: _Disk) -> tuple[int, int]:
        st = os.statvfs(disk.path)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    @contextmanager
    def _io(self, chunk: _Chunk) -> Iterator[_Handle]:
        """The chunk's open file (caller holds chunk.lock), with I/O and CRC errors made typed.

        A CRC mismatch, whoever met it (a client's read, a replication source, the scrubber),
        marks the copy damaged: the master hears of it in the next heartbeat and repairs it from
        a good copy, as MooseFS does, instead of waiting for the scrubber's next pass."""
        try:
            handle = self._fds.get(chunk.id)
            if handle is None:
                handle = self._fds.add(chunk.id, self._load(chunk))
            try:
                yield handle
            finally:
                self._fds.release(handle)
        except chunkio.CrcMismatch as exc:
            with self._stats_lock:
                self.crc_errors += 1
            log.warning("chunk %016X on %s: CRC mismatch in block %d", chunk.id, chunk.disk.path, exc.block)
            self._mark_chunk_damaged(chunk)
            raise CrcError(chunk.id, exc.block) from None
        except OSError as exc:
            raise self._io_failed(chunk, exc) from None

    def _load(self, chunk: _Chunk) -> _Handle:
        path = chunk_path(chunk.disk.path, chunk.id)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            header = os.pread(fd, HEADER_SIZE, 0)
        except OSError:
            os.close(fd)
            raise
        magic, header_id, _ = _IDENT.unpack_from(header) if len(header) == HEADER_SIZE else (b"", 0, 0)
        if magic != MAGIC or header_id != chunk.id:
            os.close(fd)
            self._refuse(path, "header changed while in service")
            self._forget(chunk, report=True)
            raise ChunkNotFound(chunk.id, "bad header")
        return _Handle(fd, bytearray(header[TABLE_OFFSET:]))

    def _io_failed(self, chunk: _Chunk, exc: OSError) -> FsError:
        """The error to raise for an OSError on the chunk's disk; a broken disk is marked damaged."""
        disk = chunk.disk
        if exc.errno in _FULL_ERRNOS:
            return FsError(errno.ENOSPC, f"disk {disk.path} is full")
        if exc.errno in _DISK_ERRNOS:
            self.check_disks()
            if disk.state == OK and exc.errno == errno.ENOENT:
                self._forget(chunk, report=True)
                return ChunkNotFound(chunk.id, "chunk file vanished")
            self._mark_damaged(disk, f"chunk {chunk.id:016X}: {exc.strerror}")
        return FsError(errno.EIO, f"chunk {chunk.id:016X} on {disk.path}: {exc.strerror}")

    def _mark_chunk_damaged(self, chunk: _Chunk) -> None:
        with self._lock:
            if chunk.damaged or chunk.gone:
                return
            chunk.damaged = True
            self._damaged[chunk.id] = chunk.info()
        log.error("chunk %016X version %d on %s is damaged: reported to the master", chunk.id, chunk.version,
                  chunk.disk.path)

    def _mark_damaged(self, disk: _Disk, reason: str) -> None:
        with self._lock:
            if disk.state == DAMAGED:
                return
            disk.state = DAMAGED
            lost = [c for c in self._chunks.values() if c.disk is disk]
            for chunk in lost:
                self._forget_locked(chunk, report=True)
        log.error("disk %s damaged (%s): its %d chunks are no longer served", disk.path, reason, len(lost))

    def _changed(self, chunk: _Chunk) -> None:
        with self._lock:
            self._added[chunk.id] = chunk.info()
            self._removed.pop(chunk.id, None)

    def _forget(self, chunk: _Chunk, report: bool) -> None:
        with self._lock:
            self._forget_locked(chunk, report)

    def _forget_locked(self, chunk: _Chunk, report: bool) -> None:
        if chunk.gone:
            return
        chunk.gone = True
        if self._chunks.get(chunk.id) is chunk:
            del self._chunks[chunk.id]
        chunk.disk.used -= HEADER_SIZE + chunk.length
        chunk.disk.count -= 1
        self._added.pop(chunk.id, None)
        if report:
            self._removed[chunk.id] = chunk.info()
        self._fds.drop(chunk.id)
