"""Durable metadata: the namespace, the changelog of entries applied to it, and snapshots.

Files in data_dir:
  metadata.mng       newest durable snapshot: header (magic, index, length, CRC32) + Namespace.dump()
  changelog.mng      the live log: records [u32 length][u32 crc32][msgpack {"index", "entry"}] (LE)
  changelog.mng.old  the log from before the newest snapshot began; deleted once that snapshot is durable
  metadata.mng.tmp   a snapshot being written; removed at open
  .lock              flock held while open, so two masters never share one data dir

submit() applies an entry under the lock (log order is apply order), logs it only if it succeeded,
and replies once an fdatasync covers its record. Concurrent submitters share that fdatasync (group
commit): the first waiter that finds no flush running writes every pending record and syncs once
for all of them, while the others wait for it.

Recovery loads the snapshot and applies the logged entries with higher indexes, in order;
indexes must be consecutive. Only a crash during an append leaves a torn or corrupt record, always
in the live log's unsynced tail, which no caller was told had succeeded: it is cut off.

The (index, entry) records are the unit a Raft log will carry later; the Namespace only ever sees
entries, in index order.
"""

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib

from mooseng import wire
from mooseng.errors import FsError
from mooseng.master.namespace import Namespace

log = logging.getLogger(__name__)

SNAPSHOT = "metadata.mng"
SNAPSHOT_TMP = SNAPSHOT + ".tmp"
CHANGELOG = "changelog.mng"
OLD_CHANGELOG = CHANGELOG + ".old"
LOCKFILE = ".lock"

_SNAP_MAGIC = b"MNGMETA1"
_SNAP_HEAD = struct.Struct("<8sQQI")  # magic, index, payload length, crc32 over index, length, payload
_REC_HEAD = struct.Struct("<II")  # payload length, crc32 of payload

_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"


class MetaStoreError(Exception):
    """The data dir cannot be used as it is: in use, corrupt snapshot, entries missing from the log."""


def _record(index: int, packed_entry: bytes) -> bytes:
    """One framed log record; the msgpack map is assembled around the already packed entry."""
    payload = b"\x82\xa5index" + wire.pack(index) + b"\xa5entry" + packed_entry
    return _REC_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _scan(data: bytes):
    """Yield (end offset, index, entry) per valid record; stop at the first torn or corrupt one."""
    view = memoryview(data)
    off, size = 0, len(data)
    while off + _REC_HEAD.size <= size:
        length, crc = _REC_HEAD.unpack_from(data, off)
        start = off + _REC_HEAD.size
        end = start + length
        if end > size or zlib.crc32(view[start:end]) != crc:
            return
        try:
            rec = wire.unpack(view[start:end])
        except ValueError:
            return
        if type(rec) is not dict or type(rec.get("index")) is not int or type(rec.get("entry")) is not dict:
            return
        off = end
        yield end, rec["index"], rec["entry"]


def _snap_crc(index: int, length: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QQ", index, length)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    """Make renames and new names in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MetaStore:
    """A Namespace made durable in data_dir. open() it, submit() mutations, query() reads."""

    def __init__(self, data_dir, snapshot_every: int = 100_000):
        """snapshot_every: entries between automatic snapshots (0: only explicit snapshot())."""
        self._dir = os.fspath(data_dir)
        self._snapshot_every = snapshot_every
        self._lock = threading.Lock()  # guards everything below; held while applying, not while syncing
        self._cv = threading.Condition(self._lock)  # a flush finished
        self._snap_mutex = threading.Lock()  # one snapshot at a time
        self._state = _NEW
        self._ns: Namespace | None = None
        self._index = 0  # last applied (and logged) entry
        self._synced = 0  # last entry known durable; _synced <= _index
        self._pending: list[bytes] = []  # framed records _synced+1 .. _index, not yet written
        self._flushing = False  # a leader is writing + syncing with the lock released
        self._barrier = 0  # threads in _sync_locked waiting for the running flush to end
        self._failure: BaseException | None = None  # set once; the store then refuses all ops
        self._fd = -1
        self._lock_fd = -1
        self._snap_index = 0
        self._snap_time: float | None = None
        self._snap_thread: threading.Thread | None = None
        self._next_auto = 0  # after a failed automatic snapshot, do not retry before this index
        self._syncs = 0

    def __enter__(self) -> "MetaStore":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- counters for metrics ---

    @property
    def last_index(self) -> int:
        return self._index

    @property
    def synced_index(self) -> int:
        return self._synced

    @property
    def snapshot_index(self) -> int:
        return self._snap_index

    @property
    def entries_since_snapshot(self) -> int:
        return self._index - self._snap_index

    @property
    def last_snapshot_time(self) -> float | None:
        """Wall-clock time of the newest durable snapshot, None if there is none."""
        return self._snap_time

    @property
    def log_syncs(self) -> int:
        """fdatasyncs of the changelog; with last_index it shows how well group commit batches."""
        return self._syncs

    @property
    def failure(self) -> BaseException | None:
        """Why the store stopped accepting ops (a log write failed); the master should exit."""
        return self._failure

    # --- life cycle ---

    def open(self) -> None:
        """Lock the data dir and recover the namespace from the snapshot and changelog."""
        if self._state != _NEW:
            raise MetaStoreError("a MetaStore is opened once")
        os.makedirs(self._dir, exist_ok=True)
        self._lock_fd = os.open(self._path(LOCKFILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise MetaStoreError(f"{self._dir} is in use by another master") from None
        try:
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._state = _OPEN

    def close(self) -> None:
        """Wait for a running snapshot, make every applied entry durable, release the data dir."""
        with self._lock:
            if self._state != _OPEN:
                return
            self._state = _CLOSING
            thread = self._snap_thread
        if thread is not None:
            thread.join()
        with self._snap_mutex, self._lock:
            try:
                if self._failure is None:
                    self._sync_locked()
            finally:
                self._state = _CLOSED
                self._cv.notify_all()
                os.close(self._fd)
                os.close(self._lock_fd)
                self._fd = self._lock_fd = -1

    # --- operations ---

    def submit(self, entry: dict):
        """Apply a mutation; return its result once its log record is durable.

        A failing op raises FsError, changes nothing and is not logged. The entry is packed first
        and the unpacked copy is applied, so this master applies exactly what a restart replays.
        """
        try:
            packed = wire.pack(entry)
            entry = wire.unpack(packed)
        except (TypeError, ValueError, OverflowError) as exc:
            raise FsError(errno.EINVAL, f"entry cannot be logged: {exc}") from None
        with self._lock:
            self._check_usable()
            try:
                result = self._ns.apply(entry)
            except FsError:
                raise
            except BaseException as exc:
                # apply is all-or-nothing only for the failures it expects; state may now differ
                # from what a replay of the log gives, so stop rather than serve it.
                self._fail(exc)
                raise
            self._index += 1
            index = self._index
            self._pending.append(_record(index, packed))
            self._maybe_start_snapshot()
        self._wait_durable(index)
        return result

    def query(self, op: str, args: dict, ctx: dict):
        with self._lock:
            self._check_usable()
            return self._ns.query(op, args, ctx)

    @contextlib.contextmanager
    def view(self):
        """Hold the lock and yield the Namespace for reads queries do not cover (chunk accounting:
        chunk_version, iter_chunks). Never mutate it; keep the block short."""
        with self._lock:
            self._check_usable()
            yield self._ns

    def snapshot(self) -> int:
        """Write a snapshot of the current state, start a fresh changelog, return the index.

        Under the lock only the in-memory dump, a sync of the pending records and the log rotation
        happen; the file is written with the lock released, so submits go on meanwhile.
        """
        with self._snap_mutex:
            with self._lock:
                if self._state not in (_OPEN, _CLOSING):
                    raise FsError(errno.EIO, "metadata store is not open")
                self._sync_locked()
                index = self._index
                started = time.monotonic()
                data = self._ns.dump()
                dumped = time.monotonic()
                if not os.path.exists(self._path(OLD_CHANGELOG)):
                    self._rotate_locked()
                # else: the last snapshot failed after rotating; the live log still holds everything
                # after the old one, and both go once this snapshot is durable.
            self._write_snapshot(index, data)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(OLD_CHANGELOG))
            with self._lock:
                self._snap_index = index
                self._snap_time = time.time()
            log.info(
                "snapshot at index %d: %d bytes, dump %.3fs (lock held), write %.3fs",
                index, len(data), dumped - started, time.monotonic() - dumped,
            )  # fmt: skip
            return index

    # --- internals ---

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise FsError(errno.EIO, f"metadata store failed: {self._failure}")
        if self._state != _OPEN:
            raise FsError(errno.EIO, "metadata store is not open")

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            log.critical("metadata store stopped, refusing all operations: %r", exc)
        self._cv.notify_all()

    def _wait_durable(self, index: int) -> None:
        with self._lock:
            while self._synced < index:
                if self._failure is not None:
                    raise FsError(errno.EIO, f"metadata store failed: {self._failure}")
                if self._flushing or self._barrier:
                    self._cv.wait()
                else:
                    self._flush_batch()

    def _flush_batch(self) -> None:
        """As group-commit leader, write and sync every pending record with the lock released.
        Called, and returns, with the lock held."""
        data = b"".join(self._pending)
        self._pending = []
        upto, fd = self._index, self._fd
        self._flushing = True
        self._lock.release()
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
        except BaseException as exc:
            self._lock.acquire()
            self._flushing = False
            self._fail(exc)  # never retry: after a failed fsync the file's contents are unknown
            if not isinstance(exc, OSError):
                raise
            return
        self._lock.acquire()
        self._flushing = False
        self._synced = upto
        self._syncs += 1
        self._cv.notify_all()

    def _sync_locked(self) -> None:
        """Make every applied entry durable and return with the lock held (snapshot, close).
        Group-commit leaders hold off while this waits, so a busy log cannot starve it."""
        self._barrier += 1
        try:
            while self._flushing:
                self._cv.wait()
        finally:
            self._barrier -= 1
        try:
            if self._failure is not None:
                raise FsError(errno.EIO, f"metadata store failed: {self._failure}")
            if self._synced < self._index:
                try:
                    _write_all(self._fd, b"".join(self._pending))
                    os.fdatasync(self._fd)
                except OSError as exc:
                    self._fail(exc)
                    raise FsError(errno.EIO, f"metadata store failed: {exc}") from exc
                self._pending = []
                self._synced = self._index
                self._syncs += 1
        finally:
            self._cv.notify_all()

    def _rotate_locked(self) -> None:
        """Move the (synced) live log aside and start an empty one."""
        live = self._path(CHANGELOG)
        try:
            os.rename(live, self._path(OLD_CHANGELOG))
            fd = os.open(live, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            _fsync_dir(self._dir)
        except OSError as exc:
            self._fail(exc)
            raise FsError(errno.EIO, f"changelog rotation failed: {exc}") from exc
        os.close(self._fd)
        self._fd = fd

    def _write_snapshot(self, index: int, data: bytes) -> None:
        tmp = self._path(SNAPSHOT_TMP)
        header = _SNAP_HEAD.pack(_SNAP_MAGIC, index, len(data), _snap_crc(index, len(data), data))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, header)
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self._path(SNAPSHOT))
            _fsync_dir(self._dir)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _maybe_start_snapshot(self) -> None:
        every = self._snapshot_every
        if (
            every
            and self._snap_thread is None
            and self._index - self._snap_index >= every
            and self._index >= self._next_auto
        ):
            self._snap_thread = threading.Thread(target=self._auto_snapshot, name="metastore-snapshot", daemon=True)
            self._snap_thread.start()

    def _auto_snapshot(self) -> None:
        try:
            self.snapshot()
        except Exception as exc:  # the master keeps serving from the log; retry after more entries
            log.error("automatic snapshot failed, retrying in %d entries: %s", self._snapshot_every, exc)
            with self._lock:
                self._next_auto = self._index + self._snapshot_every
        finally:
            with self._lock:
                self._snap_thread = None

    def _recover(self) -> None:
        started = time.monotonic()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(SNAPSHOT_TMP))
        ns, snap_index = self._read_snapshot()
        index, replayed, prev = snap_index, 0, None
        old_last, old_clean = None, True
        live_end = 0
        for name in (OLD_CHANGELOG, CHANGELOG):
            try:
                with open(self._path(name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            end = 0
            for end, idx, entry in _scan(data):
                if prev is not None and idx != prev + 1:
                    raise MetaStoreError(f"{name}: entry {idx} follows entry {prev}; the log has a gap")
                prev = idx
                if idx <= index:
                    continue  # already in the snapshot
                if idx != index + 1:
                    raise MetaStoreError(f"{name}: first entry {idx} but the snapshot ends at {index}; entries missing")
                try:
                    ns.apply(entry)
                except FsError as exc:
                    raise MetaStoreError(f"{name}: entry {idx} ({entry.get('op')!r}) fails on replay: {exc}") from exc
                index = idx
                replayed += 1
            if name == OLD_CHANGELOG:
                old_last, old_clean = prev, end == len(data)
                if not old_clean:
                    # it was synced before it was moved aside: this is damage, not a crash artefact
                    log.error("%s: %d bytes from offset %d are corrupt, not replayed", name, len(data) - end, end)
            else:
                live_end = end
                if end < len(data):
                    log.warning(
                        "%s: cut %d bytes of torn or corrupt tail after entry %s (offset %d)",
                        name, len(data) - end, prev, end,
                    )  # fmt: skip
        if old_clean and (old_last is None or old_last <= snap_index):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(OLD_CHANGELOG))  # left over from a snapshot that completed

        live = self._path(CHANGELOG)
        created = not os.path.exists(live)
        fd = os.open(live, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != live_end:
                os.ftruncate(fd, live_end)
                os.fsync(fd)
            if created:
                _fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._ns = ns
        self._index = self._synced = index
        self._snap_index = snap_index
        log.info(
            "metadata recovered to index %d (snapshot %d + %d log entries) in %.2fs",
            index, snap_index, replayed, time.monotonic() - started,
        )  # fmt: skip

    def _read_snapshot(self) -> tuple[Namespace, int]:
        path = self._path(SNAPSHOT)
        try:
            with open(path, "rb") as f:
                data = f.read()
            self._snap_time = os.stat(path).st_mtime
        except FileNotFoundError:
            return Namespace(), 0
        if len(data) < _SNAP_HEAD.size:
            raise MetaStoreError(f"{path}: truncated ({len(data)} bytes)")
        magic, index, length, crc = _SNAP_HEAD.unpack_from(data)
        if magic != _SNAP_MAGIC:
            raise MetaStoreError(f"{path}: not a MooseNG metadata snapshot")
        payload = memoryview(data)[_SNAP_HEAD.size :]
        if len(payload) != length or _snap_crc(index, length, payload) != crc:
            raise MetaStoreError(f"{path}: length or checksum mismatch; the snapshot is damaged")
        try:
            return Namespace.load(payload), index
        except ValueError as exc:
            raise MetaStoreError(f"{path}: {exc}") from exc
