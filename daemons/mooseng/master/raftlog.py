"""The master's durable Raft storage: an fsync'd log of entries and HardStates, and a snapshot.

Files in data_dir:
  raft.log       records [u32 length][u32 crc32][msgpack payload] (LE); a payload is
                 ["E", [[term, index, type, data], ...]]  entries; they replace every stored entry
                                                          from the first one's index on
                 ["H", term, vote, commit]                the HardState from here on
                 ["C", index, term]                       the log starts after entry index (of
                                                          that term): written first by compaction
  raft.snap      newest snapshot: header (magic, index, term, length, crc32) + msgpack
                 [voters, data] (data: the state machine's dump, see metastore.MetaState)
  raft.log.tmp, raft.snap.tmp   being written; removed at open
  cluster_id     the cluster this data belongs to; a node never joins another one with it
  .lock          flock held while open, so two masters never share one data dir

persist() appends one Ready's entries and HardState as records and makes them durable with one
fdatasync (the caller batches every proposal waiting at that moment into one Ready: group
commit). The file is kept PREALLOCATE bytes of written zeros ahead of its last record, so an
append overwrites blocks the file already has: fdatasync then only flushes the data, where an
append that grows the file also commits the file system's journal (on ext4 here: 111-123 against
173-174 us per small append + fdatasync, 44-47 against 68-73 us of CPU). A zero record header
(length 0; no record is empty) marks the end of the log. A snapshot is written to raft.snap.tmp, synced and renamed; the log is then rewritten
without the entries it covers (compaction), also through a synced tmp file and a rename.

Open reads the snapshot, then replays the log's records in order. Only a crash during an append
leaves a torn or corrupt record, always in the unsynced tail that Raft never counted on: the
first record whose length or checksum does not hold ends the log, and the file is cut there
(zeros after the last record are preallocated space, not damage).

A failed write or sync (disk full) is never retried: the file's contents are then unknown. The
storage raises LogWriteError and refuses every later write; the node stops taking part (it has
promised nothing it did not make durable) and the other masters go on.
"""

import contextlib
import errno
import fcntl
import logging
import os
import struct
import zlib

from mooseng import wire
from mooseng.raft import ConfState, Entry, EntryType, HardState, MemoryStorage, Snapshot

log = logging.getLogger(__name__)

LOG = "raft.log"
SNAP = "raft.snap"
CLUSTER = "cluster_id"
LOCKFILE = ".lock"

_SNAP_MAGIC = b"MNGRAFT1"
_SNAP_HEAD = struct.Struct("<8sQQQI")  # magic, index, term, payload length, crc32 of the rest
_REC_HEAD = struct.Struct("<II")  # payload length, crc32 of payload
PREALLOCATE = 4 << 20  # zeros written ahead of the log's end, so appends do not grow the file


class StorageError(Exception):
    """The data dir cannot be used as it is (in use, damaged snapshot, another cluster's data)."""


class LogWriteError(Exception):
    """A write or sync of the log or a snapshot failed; the storage refuses all later writes."""


def frame(payload: bytes) -> bytes:
    """One CRC-framed record."""
    return _REC_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def scan(data) -> tuple[list, int]:
    """(decoded payloads of the valid records, end offset of the last one); stops at the first
    torn or corrupt record."""
    view = memoryview(data)
    off, size, out = 0, len(data), []
    while off + _REC_HEAD.size <= size:
        length, crc = _REC_HEAD.unpack_from(data, off)
        if length == 0:
            break  # the preallocated zeros after the last record
        start = off + _REC_HEAD.size
        end = start + length
        if end > size or zlib.crc32(view[start:end]) != crc:
            break
        try:
            out.append(wire.unpack(view[start:end]))
        except ValueError:
            break
        off = end
    return out, off


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def fsync_dir(path: str) -> None:
    """Make renames and new names in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry_rec(e: Entry) -> list:
    return [e.term, e.index, int(e.type), e.data]


def _hard_rec(hs: HardState) -> bytes:
    return frame(wire.pack(["H", hs.term, hs.vote, hs.commit]))


class RaftStorage(MemoryStorage):
    """Raft's Storage (reads served from memory) made durable in data_dir."""

    def __init__(self, data_dir, cluster_id: str):
        self._dir = os.fspath(data_dir)
        self._cluster_id = cluster_id
        self._fd = -1
        self._end = 0  # offset after the log's last record: the next append goes here
        self._size = 0  # the log file's size (zeros from _end on)
        self._lock_fd = -1
        self._failure: BaseException | None = None
        self._hard_unwritten = False  # the HardState in memory has a newer commit index than the log
        self.syncs = 0  # fdatasyncs of the log; with the entry count it shows how well batching works
        self.snapshot_time: float | None = None  # wall clock of the newest durable snapshot
        super().__init__()

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    @property
    def log_entries(self) -> int:
        return self.last_index() - self.first_index() + 1

    # --- life cycle ---

    def open(self, bootstrap: Snapshot | None) -> bool:
        """Lock the data dir and load it. An empty data dir starts from `bootstrap` (a founding
        member) or from nothing (a node that waits to be sent a snapshot). Returns whether the
        data dir was empty."""
        os.makedirs(self._dir, exist_ok=True)
        self._lock_fd = os.open(self._path(LOCKFILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StorageError(f"{self._dir} is in use by another master") from None
        try:
            fresh = self._check_cluster()
            for name in (LOG + ".tmp", SNAP + ".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name))
            self._load()
            if fresh and bootstrap is not None:
                self.install_snapshot(bootstrap)
        except BaseException:
            self.close()
            raise
        return fresh

    def close(self) -> None:
        if self._hard_unwritten and self._fd >= 0 and self._failure is None:
            with contextlib.suppress(OSError):  # a lost commit index is only found again
                self._write(_hard_rec(self.initial_state()[0]), sync=False)
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1

    # --- writes (the Ready loop's thread only) ---

    def persist(self, hard_state: HardState | None, entries: list[Entry], sync: bool) -> None:
        """Append entries and the HardState; with sync, fdatasync before returning. A HardState
        alone without sync changes only the commit index, which Raft finds again if it is lost:
        it is kept in memory and written with the next record, saving the leader a write per
        batch (the Ready after the acks commit it)."""
        self._check()
        if hard_state is not None:
            self.set_hard_state(hard_state)
        if not entries and not sync:
            self._hard_unwritten = self._hard_unwritten or hard_state is not None
            return
        parts = []
        if entries:
            parts.append(frame(wire.pack(["E", [_entry_rec(e) for e in entries]])))
        if hard_state is not None or self._hard_unwritten:
            parts.append(_hard_rec(self.initial_state()[0]))
        if not parts:
            return
        try:
            self._write(b"".join(parts), sync)
        except OSError as exc:
            self._fail(f"cannot write {self._path(LOG)}", exc)
        self._hard_unwritten = False
        if entries:
            self.append(entries)

    def _write(self, data: bytes, sync: bool) -> None:
        end = self._end + len(data)
        if end > self._size:
            self._grow(end)
        pwrite_all(self._fd, data, self._end)
        self._end = end
        if sync:
            os.fdatasync(self._fd)
            self.syncs += 1

    def _grow(self, end: int) -> None:
        """Write zeros up to PREALLOCATE bytes past `end` (not fallocate: unwritten extents would
        need a journal commit at their first write again); the append's sync covers them. On a
        full disk, only what already fits: the append then grows the file itself, or fails."""
        grow = end - self._size + PREALLOCATE
        try:
            pwrite_all(self._fd, bytes(grow), self._size)
            self._size += grow
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self._size = os.fstat(self._fd).st_size

    def install_snapshot(self, snap: Snapshot) -> None:
        """A snapshot from the leader (or the bootstrap one): it replaces the whole log."""
        self._check()
        self._write_snapshot(snap)
        self.apply_snapshot(snap)
        self._rewrite_log()

    def take_snapshot(self, index: int, conf_state: ConfState, data: bytes, keep: int) -> Snapshot:
        """Our own snapshot of the state machine at applied `index`; then drop the log up to
        `keep` entries before it (so a follower slightly behind still gets entries)."""
        self._check()
        snap = Snapshot(index, self.term(index), conf_state, data)
        self._write_snapshot(snap)
        self.create_snapshot(index, conf_state, data)
        upto = index - keep
        if upto >= self.first_index():
            self.compact(upto)
            self._rewrite_log()
        return snap

    # --- internals ---

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def _check(self) -> None:
        if self._failure is not None:
            raise LogWriteError(f"raft storage failed earlier: {self._failure}")

    def _fail(self, what: str, exc: OSError):
        self._failure = exc
        log.critical("%s: %s; this master stops taking part (the others go on)", what, exc.strerror or exc)
        raise LogWriteError(f"{what}: {exc.strerror or exc}") from exc

    def _check_cluster(self) -> bool:
        """Record the cluster id in a new data dir, refuse one of another cluster. Returns
        whether the data dir was new."""
        path = self._path(CLUSTER)
        try:
            with open(path) as f:
                have = f.read().strip()
        except FileNotFoundError:
            if os.path.exists(self._path(SNAP)):
                raise StorageError(f"{self._dir}: metadata without a {CLUSTER} file; not starting") from None
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(self._cluster_id + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            fsync_dir(self._dir)
            return True
        if have != self._cluster_id:
            raise StorageError(
                f"{self._dir} belongs to cluster {have!r}, not {self._cluster_id!r}: refusing to join another cluster"
            )
        return not os.path.exists(self._path(SNAP))

    def _load(self) -> None:
        snap = self._read_snapshot()
        if snap is not None:
            self._snapshot = snap
            self._ents = [Entry(snap.term, snap.index)]
            self.set_hard_state(HardState(snap.term, 0, snap.index))
        path = self._path(LOG)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        records, end = scan(data)
        hard = self.initial_state()[0]
        for rec in records:
            if rec[0] == "H":
                hard = HardState(rec[1], rec[2], rec[3])
            elif rec[0] == "C":
                self._ents = [Entry(rec[2], rec[1])]
            else:
                ents = [Entry(t, i, EntryType(ty), bytes(d)) for t, i, ty, d in rec[1]]
                if ents and ents[0].index > self.last_index() + 1:
                    raise StorageError(f"{path}: entry {ents[0].index} follows {self.last_index()}; the log has a gap")
                self.append(ents)
        if snap is not None and not (self.first_index() - 1 <= snap.index <= self.last_index()
                                     and self.term(snap.index) == snap.term):
            # A crash between writing a received snapshot and rewriting the log: the snapshot wins.
            self._ents = [Entry(snap.term, snap.index)]
        # The commit index is written lazily; never past what the log holds.
        self.set_hard_state(HardState(hard.term, hard.vote, min(max(hard.commit, self.first_index() - 1), self.last_index())))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        damaged = len(data[end:].rstrip(b"\0"))
        if damaged:
            log.warning(
                "%s: cut %d bytes of torn or corrupt tail after entry %d (offset %d)",
                path, damaged, self.last_index(), end,
            )  # fmt: skip
            os.ftruncate(fd, end)
            os.fsync(fd)
        self._fd, self._end, self._size = fd, end, os.fstat(fd).st_size

    def _read_snapshot(self) -> Snapshot | None:
        path = self._path(SNAP)
        try:
            with open(path, "rb") as f:
                data = f.read()
            self.snapshot_time = os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        if len(data) < _SNAP_HEAD.size:
            raise StorageError(f"{path}: truncated ({len(data)} bytes)")
        magic, index, term, length, crc = _SNAP_HEAD.unpack_from(data)
        payload = memoryview(data)[_SNAP_HEAD.size :]
        if magic != _SNAP_MAGIC:
            raise StorageError(f"{path}: not a MooseNG Raft snapshot")
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(data[8:32])) != crc:
            raise StorageError(f"{path}: length or checksum mismatch; the snapshot is damaged")
        voters, state = wire.unpack(payload)
        return Snapshot(index, term, ConfState(tuple(voters)), bytes(state))

    def _write_snapshot(self, snap: Snapshot) -> None:
        payload = wire.pack([list(snap.conf_state.voters), snap.data])
        fixed = struct.pack("<QQQ", snap.index, snap.term, len(payload))
        header = _SNAP_MAGIC + fixed + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fixed)))
        self._replace(SNAP, header + payload)
        self.snapshot_time = os.stat(self._path(SNAP)).st_mtime

    def _rewrite_log(self) -> None:
        """The log file as the stored state now is: one HardState, the entries after the snapshot."""
        first, last = self.first_index(), self.last_index()
        body = frame(wire.pack(["C", first - 1, self.term(first - 1)])) + _hard_rec(self.initial_state()[0])
        if last >= first:
            ents = self.entries(first, last + 1, None)
            body += frame(wire.pack(["E", [_entry_rec(e) for e in ents]]))
        self._replace(LOG, body)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self._path(LOG), os.O_WRONLY)
        self._end = self._size = len(body)

    def _replace(self, name: str, data: bytes) -> None:
        """Write name.tmp, sync it, rename it over name, sync the directory."""
        tmp = self._path(name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self._path(name))
            fsync_dir(self._dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._fail(f"cannot write {self._path(name)}", exc)
