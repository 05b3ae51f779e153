"""The chunkserver's rpc.py methods: read, pipelined chained write with commit, truncate, set_version.

    read{chunk_id, version, offset, length} -> {length} + the bytes (zeros past the stored data)
    write{chunk_id, version, expect_version, offset, chain} + bytes -> {ok, failed}
    commit{chunk_id, version, chain} -> {ok, failed}
    truncate{chunk_id, version, expect_version, length} -> {}
    set_version{chunk_id, expect_version, version} -> {}
    crc_table{chunk_id, version} -> {length, crcs} (the CRC entries of the blocks holding data)
    replicate{chunk_id, version, source} -> {bytes}: pull the copy from `source` (replicator.py)
    build{chunk_id, version, ec, part, sources, length} -> {bytes, ignored}: build a part of an
        erasure-coded chunk (or a full copy from its parts) now (builder.py)

A write session is (chunk_id, version): the master hands out a new version for every session, so
the pieces of one can arrive on several connections at once (a client keeps several in flight)
and are matched by that key alone. The first piece opens the store's WriteSession (the version
rules are checked there: at expect_version, 0 creating the chunk, or already at version); every
piece is written here while it is forwarded to chain[0] with chain[1:]; `commit` makes the copy
durable here and down the chain. A downstream that fails a piece gets nothing more of the
session, so it never commits it, and is reported in `failed` with the chain behind it.

A session that fails here, is left idle for SESSION_TIMEOUT_S or is superseded by a newer version
from the master is aborted (a chunk it was creating is removed; it was never reported to the
master), and its key is refused for a while after, so that late pieces of it cannot open a new,
incomplete session.

Errors: CRC mismatch DATA_LOSS, no such chunk NOT_FOUND, wrong version or no such session
FAILED_PRECONDITION, malformed request INVALID_ARGUMENT, chunk busy (a write session is open)
ABORTED, disk full RESOURCE_EXHAUSTED, I/O error INTERNAL. To a client each one means "try another
copy"; when every copy of a write says RESOURCE_EXHAUSTED the application gets ENOSPC.
"""

import errno
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mooseng import rpc
from mooseng.chunkserver.builder import Builder, parse_order
from mooseng.chunkserver.metrics import ChunkserverMetrics
from mooseng.chunkserver.replicator import Replicator
from mooseng.chunkserver.store import ChunkStore, CrcError, StaleChunk, WriteSession
from mooseng.constants import CHUNK_SIZE
from mooseng.errors import FsError
from mooseng.wire import parse_addr

log = logging.getLogger(__name__)

MAX_CHAIN = 16
# A server forwarding to a chain of n waits up to n times this for the reply, so a stuck server
# is reported by the one before it before that one's own caller gives up (clients: 30 s).
FORWARD_TIMEOUT_S = 10.0
# An uncommitted session idle this long is aborted. Longer than a client's call timeout: a sender
# only pauses between pieces while a call is outstanding, and gives a server up when it times out.
SESSION_TIMEOUT_S = 60.0
REFUSE_S = SESSION_TIMEOUT_S  # how long an aborted session's key is refused (late pieces)
# set_version aborts an older session idle this long: its writer died, or it will lose the race
# anyway, and waiting for the timeout would keep the chunk from every new write meanwhile.
SUPERSEDE_IDLE_S = 2.0
REAP_INTERVAL_S = 1.0
# Reads up to this size are served from a buffer kept per connection (clients read at most 4 MiB
# at a time), which saves the page faults of a fresh one; larger ones get their own.
READ_BUFFER = 4 << 20
DISK_WORKERS = 16  # local writes and commits that run beside a forward to the next server
_U64 = (1 << 64) - 1

_ERRNO_STATUS = {
    errno.ENOENT: rpc.NOT_FOUND,
    errno.EINVAL: rpc.INVALID_ARGUMENT,
    errno.EBUSY: rpc.ABORTED,
    errno.ENOSPC: rpc.RESOURCE_EXHAUSTED,
    errno.EDQUOT: rpc.RESOURCE_EXHAUSTED,
    errno.EEXIST: rpc.ALREADY_EXISTS,
}


def _status(exc: FsError) -> rpc.RpcError:
    if isinstance(exc, CrcError):
        status = rpc.DATA_LOSS
    elif isinstance(exc, StaleChunk):
        status = rpc.FAILED_PRECONDITION
    else:
        status = _ERRNO_STATUS.get(exc.errno, rpc.INTERNAL)
    return rpc.RpcError(status, str(exc))


def _bad(message: str) -> rpc.RpcError:
    return rpc.RpcError(rpc.INVALID_ARGUMENT, message)


def _is_addr(value) -> bool:
    try:
        parse_addr(value)
    except (TypeError, ValueError):
        return False
    return True


def _chain(value) -> bool:
    return (type(value) is list and len(value) <= MAX_CHAIN and all(type(a) is str and _is_addr(a) for a in value)
            and len(set(value)) == len(value))  # fmt: skip


_FIELDS = {
    "chunk_id": (lambda v: type(v) is int and 0 < v <= _U64, "a chunk id (u64 > 0)"),
    "version": (lambda v: type(v) is int and 0 < v <= _U64, "a version (u64 > 0)"),
    "expect_version": (lambda v: type(v) is int and 0 <= v <= _U64, "a version (u64, 0: create)"),
    "offset": (lambda v: type(v) is int and 0 <= v <= CHUNK_SIZE, f"an offset in a chunk (0..{CHUNK_SIZE})"),
    "length": (lambda v: type(v) is int and 0 <= v <= CHUNK_SIZE, f"a length (0..{CHUNK_SIZE})"),
    "chain": (_chain, f"a list of at most {MAX_CHAIN} distinct host:port"),
    "source": (_is_addr, "host:port"),
}


def _params(method: str, params: dict, data, names: tuple[str, ...], takes_data: bool = False) -> list:
    """The values of `names` in order; INVALID_ARGUMENT for a missing, unknown or mistyped one."""
    if params.keys() != set(names):
        missing, unknown = set(names) - params.keys(), params.keys() - set(names)
        raise _bad(f"{method}: missing {sorted(missing)}, unknown {sorted(map(str, unknown))}; takes {list(names)}")
    for name in names:
        check, what = _FIELDS[name]
        if not check(params[name]):
            raise _bad(f"{method}: {name} = {params[name]!r} is not {what}")
    if data and not takes_data:
        raise _bad(f"{method} carries no data")
    return [params[name] for name in names]


class _Session:
    """An open write session on this server. Its counters and flags are guarded by the service's
    lock; `opening` serialises the store's open_write among the first pieces to arrive."""

    __slots__ = ("key", "opening", "writer", "error", "active", "touched", "failed", "committing", "ended")

    def __init__(self, key: tuple[int, int]):
        self.key = key
        self.opening = threading.Lock()
        self.writer: WriteSession | None = None
        self.error: rpc.RpcError | None = None  # the session failed here: why
        self.active = 0  # requests working on it
        self.touched = time.monotonic()
        self.failed: set[str] = set()  # downstream servers left out of it
        self.committing = False
        self.ended = False


class ChunkServerService:
    """The handlers for rpc.Server (handlers()); close() after the server has stopped."""

    def __init__(self, store: ChunkStore, advertise: str, metrics: ChunkserverMetrics,
                 session_timeout_s: float = SESSION_TIMEOUT_S, replicator: Replicator | None = None,
                 builder: Builder | None = None):
        self._store = store
        self._replicator = replicator
        self._builder = builder
        self._advertise = advertise
        self._metrics = metrics
        self._session_timeout = session_timeout_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a session's requests ended
        self._sessions: dict[tuple[int, int], _Session] = {}
        self._refused: dict[tuple[int, int], tuple[rpc.RpcError, float]] = {}  # aborted: error, when
        self._downstream: dict[str, rpc.Client] = {}
        self._disk = ThreadPoolExecutor(DISK_WORKERS, thread_name_prefix="disk")
        self._local = threading.local()  # per connection thread: the read buffer
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._reaper.start()

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "read": self._handler("read", self._read),
            "write": self._handler("write", self._write),
            "commit": self._handler("commit", self._commit),
            "write_commit": self._handler("write_commit", self._write_commit),
            "truncate": self._handler("truncate", self._truncate),
            "set_version": self._handler("set_version", self._set_version),
            "crc_table": self._handler("crc_table", self._crc_table),
            "replicate": self._handler("replicate", self._replicate),
            "build": self._handler("build", self._build),
        }

    def _handler(self, op: str, method):
        """Time the call and map store errors to statuses."""

        def handle(params: dict, data: bytearray, peer: str):
            started = time.perf_counter()
            error = "INTERNAL"
            try:
                reply = method(params, data)
                error = ""
                return reply
            except FsError as exc:
                status = _status(exc)
                error = rpc.STATUS_NAMES[status.status]
                raise status from None
            except rpc.RpcError as exc:
                error = rpc.STATUS_NAMES.get(exc.status, str(exc.status))
                raise
            finally:
                self._metrics.observe(op, time.perf_counter() - started, error)

        return handle

    # --- read, truncate, set_version --------------------------------------------------------------

    def _read(self, params: dict, data) -> rpc.Reply:
        chunk_id, version, offset, length = _params("read", params, data, ("chunk_id", "version", "offset", "length"))
        if offset + length > CHUNK_SIZE:
            raise _bad(f"read: range {offset}+{length} is beyond the chunk")
        out = None
        if length <= READ_BUFFER:
            # Safe to reuse: rpc.Server sends the reply before it reads the connection's next request.
            out = getattr(self._local, "buffer", None)
            if out is None:
                out = self._local.buffer = bytearray(READ_BUFFER)
        view = self._store.read(chunk_id, version, offset, length, out)
        return rpc.Reply({"length": length}, view)

    def _truncate(self, params: dict, data) -> dict:
        chunk_id, version, expect, length = _params(
            "truncate", params, data, ("chunk_id", "version", "expect_version", "length"))
        self._store.truncate(chunk_id, version, expect, length)
        return {}

    def _set_version(self, params: dict, data) -> dict:
        chunk_id, expect, version = _params("set_version", params, data, ("chunk_id", "expect_version", "version"))
        now = time.monotonic()
        with self._lock:
            idle = [s for s in self._sessions.values()
                    if s.key[0] == chunk_id and s.key[1] < version and not s.active
                    and now - s.touched >= SUPERSEDE_IDLE_S]  # fmt: skip
        for session in idle:
            log.info("chunk %016X: aborting the idle write session of version %d for version %d",
                     chunk_id, session.key[1], version)
            self._end(session, rpc.RpcError(rpc.FAILED_PRECONDITION, f"superseded by version {version}"))
        self._store.set_version(chunk_id, expect, version)
        return {}

    # --- replication ------------------------------------------------------------------------------

    def _crc_table(self, params: dict, data) -> dict:
        chunk_id, version = _params("crc_table", params, data, ("chunk_id", "version"))
        length, crcs = self._store.crc_table(chunk_id, version)
        return {"length": length, "crcs": crcs}

    def _replicate(self, params: dict, data) -> dict:
        chunk_id, version, source = _params("replicate", params, data, ("chunk_id", "version", "source"))
        if source == self._advertise:
            raise _bad(f"replicate: source {source} is this server")
        if self._replicator is None:
            raise rpc.RpcError(rpc.UNAVAILABLE, "replicate: this server runs no replicator")
        return {"bytes": self._replicator.replicate(chunk_id, version, source)}

    def _build(self, params: dict, data) -> dict:
        if data:
            raise _bad("build carries no data")
        try:
            order = parse_order(params)
        except ValueError as exc:
            raise _bad(f"build: {exc}") from None
        if self._builder is None:
            raise rpc.RpcError(rpc.UNAVAILABLE, "build: this server runs no builder")
        return self._builder.build(order)

    # --- write sessions ---------------------------------------------------------------------------

    def _write(self, params: dict, data: bytearray) -> dict:
        return self._write_piece("write", params, data, commit=False)

    def _write_commit(self, params: dict, data: bytearray) -> dict:
        """A whole session in one request (a small file's one piece): write, then commit, saving
        the client a round trip to every copy; forwarded down the chain as one request too."""
        return self._write_piece("write_commit", params, data, commit=True)

    def _write_piece(self, method: str, params: dict, data: bytearray, commit: bool) -> dict:
        chunk_id, version, expect, offset, chain = _params(
            method, params, data, ("chunk_id", "version", "expect_version", "offset", "chain"), takes_data=True)
        if offset + len(data) > CHUNK_SIZE:
            raise _bad(f"{method}: range {offset}+{len(data)} is beyond the chunk")
        if self._advertise in chain:
            raise _bad(f"{method}: chain {chain} contains this server")
        session = self._enter((chunk_id, version), expect)
        try:
            with self._lock:
                if commit:
                    if session.active > 1:
                        raise rpc.RpcError(rpc.FAILED_PRECONDITION,
                                           f"{method}: other pieces of the session are being written")
                    session.committing = True
                forward = bool(chain) and chain[0] not in session.failed
            writer = session.writer

            def local() -> None:
                writer.write(offset, data)
                if commit:
                    writer.commit()

            try:
                if forward:
                    done = self._disk.submit(local)
                    self._forward(session, method, {**params, "chain": chain[1:]}, data, chain)
                    done.result()
                else:
                    local()
            except FsError as exc:
                raise self._fail(session, _status(exc)) from None
            if commit:
                self._ended(session)
            return self._outcome(session, chain)
        finally:
            self._leave(session)

    def _commit(self, params: dict, data) -> dict:
        chunk_id, version, chain = _params("commit", params, data, ("chunk_id", "version", "chain"))
        if self._advertise in chain:
            raise _bad(f"commit: chain {chain} contains this server")
        session = self._enter((chunk_id, version), None)
        try:
            with self._lock:
                # Pieces still running here were sent before a reply the client had to wait for:
                # a well-behaved client has none. Wait for them rather than commit under them.
                deadline = time.monotonic() + FORWARD_TIMEOUT_S * (len(chain) + 1)
                while session.active > 1 and session.error is None:
                    if not self._changed.wait(deadline - time.monotonic()):
                        raise rpc.RpcError(rpc.UNAVAILABLE, "commit: pieces of the session are still being written")
                if session.error is not None:
                    raise session.error
                session.committing = True
                forward = bool(chain) and chain[0] not in session.failed
            try:
                if forward:
                    local = self._disk.submit(session.writer.commit)
                    self._forward(session, "commit", {**params, "chain": chain[1:]}, b"", chain)
                    local.result()
                else:
                    session.writer.commit()
            except FsError as exc:
                raise self._fail(session, _status(exc)) from None
            self._ended(session)
            return self._outcome(session, chain)
        finally:
            self._leave(session)

    def _ended(self, session: _Session) -> None:
        """The session committed here: forget it."""
        with self._lock:
            session.ended = True
            if self._sessions.get(session.key) is session:
                del self._sessions[session.key]

    def _enter(self, key: tuple[int, int], expect_version: int | None) -> _Session:
        """The open session `key` (opened by this call if expect_version is not None), with one
        more request working on it; every _enter is paired with a _leave."""
        with self._lock:
            refused = self._refused.get(key)
            if refused is not None:
                raise refused[0]
            session = self._sessions.get(key)
            if session is None:
                if expect_version is None:
                    raise rpc.RpcError(rpc.FAILED_PRECONDITION,
                                       f"no open write session for chunk {key[0]:016X} version {key[1]}")
                session = self._sessions[key] = _Session(key)
            elif session.committing:
                raise rpc.RpcError(rpc.FAILED_PRECONDITION,
                                   f"write session of chunk {key[0]:016X} version {key[1]} is being committed")
            session.active += 1
            session.touched = time.monotonic()
        try:
            with session.opening:
                if session.writer is None and session.error is None:
                    if expect_version is None:
                        raise rpc.RpcError(rpc.FAILED_PRECONDITION, "commit before any piece was written")
                    try:
                        session.writer = self._store.open_write(key[0], key[1], expect_version)
                    except FsError as exc:
                        raise self._fail(session, _status(exc)) from None
            with self._lock:
                if session.error is not None:
                    raise session.error
        except rpc.RpcError:
            self._leave(session)
            raise
        return session

    def _leave(self, session: _Session) -> None:
        with self._lock:
            session.active -= 1
            session.touched = time.monotonic()
            self._changed.notify_all()
            over = not session.active and session.error is not None
        if over:
            self._end(session)

    def _fail(self, session: _Session, error: rpc.RpcError) -> rpc.RpcError:
        """Mark the session failed (the first error stays); it is aborted when its last request leaves."""
        with self._lock:
            if session.error is None:
                session.error = error
            return session.error

    def _end(self, session: _Session, error: rpc.RpcError | None = None, force: bool = False) -> None:
        """Abort the session unless a request is still working on it (or `force`), and refuse its key."""
        with self._lock:
            if session.ended or (session.active and not force):
                return
            session.ended = True
            if session.error is None:
                session.error = error
            if self._sessions.get(session.key) is session:
                del self._sessions[session.key]
            self._refused[session.key] = (session.error, time.monotonic())
            writer, session.writer = session.writer, None
        log.info("chunk %016X version %d: write session aborted: %s", *session.key, session.error.message)
        if writer is not None:
            try:
                writer.abort()
            except FsError as exc:
                log.warning("chunk %016X: could not abort its write session: %s", session.key[0], exc)

    def _forward(self, session: _Session, method: str, params: dict, data, chain: list[str]) -> None:
        """Send the request on to chain[0]; whatever fails there joins session.failed."""
        try:
            reply, _ = self._client(chain[0]).call(method, params, data, timeout_s=FORWARD_TIMEOUT_S * len(chain))
            failed = [addr for addr in chain[1:] if addr in reply["failed"]]
            why = "failed downstream"
        except rpc.RpcError as exc:
            failed, why = chain, str(exc)
        except (KeyError, TypeError):
            failed, why = chain, f"malformed reply from {chain[0]}"
        with self._lock:
            new = [addr for addr in failed if addr not in session.failed]
            session.failed.update(failed)
        if new:
            log.warning("chunk %016X version %d: %s left out of the write (%s)", *session.key, ", ".join(new), why)

    def _outcome(self, session: _Session, chain: list[str]) -> dict:
        with self._lock:
            failed = [addr for addr in chain if addr in session.failed]
        return {"ok": [self._advertise] + [addr for addr in chain if addr not in failed], "failed": failed}

    def _client(self, addr: str) -> rpc.Client:
        with self._lock:
            client = self._downstream.get(addr)
            if client is None:
                client = self._downstream[addr] = rpc.Client(addr, timeout_s=FORWARD_TIMEOUT_S)
            return client

    # --- lifecycle --------------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                idle = [s for s in self._sessions.values()
                        if not s.active and now - s.touched > self._session_timeout]  # fmt: skip
                for key in [k for k, (_, when) in self._refused.items() if now - when > REFUSE_S]:
                    del self._refused[key]
            for session in idle:
                self._end(session, rpc.RpcError(
                    rpc.FAILED_PRECONDITION, f"write session idle for more than {self._session_timeout:g} s"))

    def close(self) -> None:
        """After the rpc server stopped (and let its running requests finish): abort the open
        sessions (their commit can no longer come) and close the downstream connections."""
        with self._lock:
            sessions = list(self._sessions.values())
            clients, self._downstream = list(self._downstream.values()), {}
        self._stop.set()
        self._reaper.join()
        for session in sessions:
            self._end(session, rpc.RpcError(rpc.UNAVAILABLE, "the chunkserver is stopping"), force=True)
        self._disk.shutdown(wait=True)
        for client in clients:
            client.close()
