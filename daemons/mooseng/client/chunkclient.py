"""Chunk data to and from chunkservers over rpc.py: read from one copy, write to all, truncate.

The methods are the chunkserver's (chunkserver/service.py). A read is one `read` call; a copy that
fails, DATA_LOSS (a CRC mismatch) included, is tried last for SUSPECT_S while the next one is read.

A write is a session: its data goes out in pieces of up to PIECE bytes with WINDOW of them in
flight to each target (each on its own connection of the rpc.Client pool), then `commit`. In chain
mode (MooseFS-style) the only target is the first copy, which forwards every piece and the commit
to the others; in fan-out mode every copy is a target. Fan-out is the default: it measured as fast
or faster here (docs/DESIGN.md "Write path"), though it sends every byte once per copy from the
client, so where the client's network is the limit chain is the better choice.
"""

import errno
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator, NamedTuple

from mooseng import rpc
from mooseng.errors import FsError

log = logging.getLogger(__name__)

PIECE = 2 << 20  # bytes per write request (1-4 MiB measured alike on disk, 2-4 MiB best on tmpfs)
READ_PIECE = 4 << 20  # bytes per read request; a larger read is split, its pieces read in parallel
WINDOW = 4  # write requests in flight per target
WORKERS = 32  # threads that carry the requests of concurrent sessions
SUSPECT_S = 10.0  # a copy that failed a read is tried last for this long
CONNECT_TIMEOUT_S = 2.0
_ZEROS = memoryview(bytes(1 << 20))


def zeros(n: int) -> list[memoryview]:
    """`n` zero bytes as views of one shared buffer (fresh zeroed memory is slow to touch)."""
    return [_ZEROS[:min(len(_ZEROS), n - pos)] for pos in range(0, n, len(_ZEROS))]


class StaleSession(FsError):
    """No copy took the write session because every one is at another version than it expects
    (FAILED_PRECONDITION): a newer session moved them first, so nothing of this one was stored and
    the caller may start it again with a new write_chunk. On one master the write lease prevents
    this; it happens when the writer's lease died with the leader that granted it."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class WriteResult(NamedTuple):
    ok: list[str]  # addresses that stored the data
    failed: list[str]


def _pieces(extents: Iterable[tuple[int, object]]) -> Iterator[tuple[int, list[memoryview]]]:
    """(offset, parts): contiguous extents cut and joined into runs of up to PIECE bytes."""
    run: list[memoryview] = []
    run_start = run_len = 0
    for offset, data in extents:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if run and (run_start + run_len != offset + pos or run_len == PIECE):
                yield run_start, run
                run = []
            if not run:
                run_start, run_len = offset + pos, 0
            take = min(PIECE - run_len, len(view) - pos)
            run.append(view[pos:pos + take])
            run_len += take
            pos += take
    if run:
        yield run_start, run


def _done(fn, *args) -> Future:
    """Run fn here and now, as a finished Future (a single request needs no thread hop)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:
        future.set_exception(exc)
    return future


class _Target:
    """A server a write session is sent to, with the chain it forwards to, its request params
    (chunk id, versions) and pieces, and how it went. Targets of one session share params and
    pieces, except the parts of an erasure-coded chunk: each its own id and data."""

    __slots__ = ("addr", "chain", "params", "pieces", "inflight", "error", "stale", "full", "failed", "ok")

    def __init__(self, addr: str, chain: list[str], params: dict, pieces: list[tuple[int, list[memoryview]]]):
        self.addr = addr
        self.chain = chain
        self.params = params
        self.pieces = pieces
        self.inflight: list[Future] = []
        self.error: str | None = None  # the target itself failed: why
        self.stale = False  # its first failure was FAILED_PRECONDITION (a version mismatch)
        self.full = False  # its first failure was RESOURCE_EXHAUSTED (its disks are full)
        self.failed: set[str] = set()  # servers of its chain that failed
        self.ok: list[str] = []  # after commit: the servers that stored the session

    def settle(self, future: Future) -> None:
        try:
            reply, _ = future.result()
        except rpc.RpcError as exc:
            self.fail(exc)
            return
        self.failed.update(reply["failed"])

    def fail(self, exc: rpc.RpcError) -> None:
        if self.error is None:
            self.error, self.stale = str(exc), exc.status == rpc.FAILED_PRECONDITION
            self.full = exc.status == rpc.RESOURCE_EXHAUSTED

    def commit_result(self, reply: dict) -> None:
        self.failed.update(reply["failed"])
        self.ok = [addr for addr in reply["ok"] if addr not in self.failed]

    def failed_in_order(self) -> list[str]:
        return [addr for addr in self.chain if addr in self.failed]


class ChunkClient:
    """Thread-safe; one per client process. `write_mode` is "fanout" (every copy a target) or
    "chain" (one target, which passes the data on)."""

    def __init__(self, write_mode: str = "fanout", timeout_s: float = 30.0):
        if write_mode not in ("chain", "fanout"):
            raise ValueError(f"write_mode must be chain or fanout, not {write_mode!r}")
        self.write_mode = write_mode
        self.timeout_s = timeout_s
        self._clients = rpc.Clients(timeout_s, CONNECT_TIMEOUT_S)
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="mooseng-chunkio")
        self._suspect: dict[str, float] = {}  # address -> until when it is tried last

    def read(self, chunk_id: int, version: int, offset: int, length: int, servers: list[str]) -> list[memoryview]:
        """`length` bytes at `offset` of the chunk from the first copy that delivers them (a list
        of buffers, as the file handle's cache keeps them).

        Any failure of a copy, including DATA_LOSS (a CRC mismatch), moves on to the next copy;
        bytes past what a copy stores read as zeros. EIO names every copy that failed and why.
        """
        spans = [(pos, min(READ_PIECE, offset + length - pos)) for pos in range(offset, offset + length, READ_PIECE)]
        failures = []
        now = time.monotonic()
        for addr in sorted(servers, key=lambda a: self._suspect.get(a, 0) > now):  # stable: keeps the order
            try:
                if len(spans) <= 1:
                    return [self._read_piece(addr, chunk_id, version, offset, length)]
                futures = [self._pool.submit(self._read_piece, addr, chunk_id, version, *span) for span in spans]
                return [future.result() for future in futures]
            except (rpc.RpcError, FsError) as exc:
                self._suspect[addr] = time.monotonic() + SUSPECT_S
                failures.append(f"{addr}: {exc}")
                log.warning("read of chunk %016x v%d from %s failed: %s", chunk_id, version, addr, exc)
        detail = "; ".join(failures) or "no copy is available"
        raise FsError(errno.EIO, f"chunk {chunk_id:016x} v{version}: no copy could be read: {detail}")

    def read_many(self, requests: list[tuple[str, int, int, int, int]]) -> list[memoryview | Exception]:
        """Each (server, chunk id, version, offset, length) read in parallel, from that server
        only: its bytes, or the FsError / rpc.RpcError it failed with (the parts of an
        erasure-coded chunk, where the caller decides what replaces a failed one). A server that
        is unreachable or times out is suspect for SUSPECT_S (suspect())."""
        spans = []  # (request index, offset, length)
        for i, (_, _, _, offset, length) in enumerate(requests):
            spans += [(i, pos, min(READ_PIECE, offset + length - pos)) for pos in range(offset, offset + length, READ_PIECE)]
        futures = [(i, (_done if n == len(spans) - 1 else self._pool.submit)(
            self._read_piece, requests[i][0], requests[i][1], requests[i][2], pos, length))
            for n, (i, pos, length) in enumerate(spans)]
        pieces: list[list] = [[] for _ in requests]
        errors: list[Exception | None] = [None] * len(requests)
        for i, future in futures:
            try:
                pieces[i].append(future.result())
            except (rpc.RpcError, FsError) as exc:
                errors[i] = errors[i] or exc
                if isinstance(exc, rpc.RpcError) and exc.status == rpc.UNAVAILABLE:  # the server, not the part
                    self._suspect[requests[i][0]] = time.monotonic() + SUSPECT_S
        out: list[memoryview | Exception] = []
        for error, got in zip(errors, pieces):
            out.append(error if error is not None else got[0] if len(got) == 1 else memoryview(b"".join(got)))
        return out

    def suspect(self, addr: str) -> bool:
        """Whether a read from `addr` failed in the last SUSPECT_S (a caller with a choice avoids it)."""
        return self._suspect.get(addr, 0) > time.monotonic()

    def _read_piece(self, addr: str, chunk_id: int, version: int, offset: int, length: int) -> memoryview:
        params = {"chunk_id": chunk_id, "version": version, "offset": offset, "length": length}
        result, data = self._clients.get(addr).call("read", params)
        if result["length"] != length or len(data) != length:
            raise FsError(errno.EIO, f"sent {len(data)} bytes, asked for {length}")
        return memoryview(data)

    def write(self, chunk_id: int, version: int, expect_version: int, servers: list[str],
              extents: Iterable[tuple[int, memoryview]]) -> WriteResult:
        """Store `extents` ((offset in chunk, data) pairs) on every copy in `servers`.

        Copies that fail are reported and left out (the chunk is then under goal); EIO only if no
        copy stored the data (StaleSession if every copy refused it for its version, ENOSPC if
        every copy's server was full).
        `extents` must stay unchanged until this returns.
        """
        pieces = list(_pieces(extents)) or [(0, [])]  # no data: the session still opens the copies
        params = {"chunk_id": chunk_id, "version": version, "expect_version": expect_version}
        servers = list(servers)
        ok, failed, why, stale, full = [], [], [], True, True
        if self.write_mode == "chain":
            # If the head fails, the copies behind it never got the whole session: start again
            # with the next one as head (a copy that has the session already joins it again).
            while servers and not ok:
                head = _Target(servers[0], servers[1:], params, pieces)
                self._session([head])
                if head.error is not None:
                    failed.append(head.addr)
                    why.append(f"{head.addr}: {head.error}")
                    stale = stale and head.stale
                    full = full and head.full
                    servers = servers[1:]
                    continue
                ok, failed = head.ok, failed + head.failed_in_order()
                why += [f"{addr}: failed in the chain" for addr in head.failed_in_order()]
        else:
            targets = [_Target(addr, [], params, pieces) for addr in servers]
            self._session(targets)
            for target in targets:
                if target.error is None:
                    ok.append(target.addr)
                else:
                    failed.append(target.addr)
                    why.append(f"{target.addr}: {target.error}")
                    stale = stale and target.stale
                    full = full and target.full
        if failed:
            log.warning("write of chunk %016x v%d: copies failed: %s", chunk_id, version, "; ".join(why))
        if not ok:
            detail = "; ".join(why) or "no copy is available"
            message = f"chunk {chunk_id:016x} v{version}: no copy stored the data: {detail}"
            if why and stale:
                raise StaleSession(message)
            raise FsError(errno.ENOSPC if why and full else errno.EIO, message)
        return WriteResult(ok, failed)

    def write_parts(self, version: int, expect_version: int,
                    parts: list[tuple[int, str, Iterable[tuple[int, memoryview]]]]) -> list[str | None]:
        """One write session per (stored id, server, extents), all at once (the parts of an
        erasure-coded chunk): for each, None if it stored its extents, else why not. Raises
        StaleSession if every one refused the session for its version (nothing was stored)."""
        targets = []
        for stored_id, addr, extents in parts:
            params = {"chunk_id": stored_id, "version": version, "expect_version": expect_version}
            targets.append(_Target(addr, [], params, list(_pieces(extents)) or [(0, [])]))
        self._session(targets)
        if targets and all(t.error is not None and t.stale for t in targets):
            raise StaleSession(f"write of version {version}: every part refused it: "
                               + "; ".join(f"{t.addr}: {t.error}" for t in targets))
        return [t.error for t in targets]

    def _session(self, targets: list[_Target]) -> None:
        """Every piece to its target, up to WINDOW in flight each, then commit on the targets
        that took them all. A target that fails gets nothing more (so its copy never commits).

        A session of one piece per target (a small file) is one `write_commit` request to each,
        not a write and a commit: one round trip instead of two. It goes to the last target from
        this thread while the pool sends to the others, and so does every commit: a thread
        hand-off costs about as much as the call itself."""
        if max(len(t.pieces) for t in targets) == 1:
            older = self._write_commit(targets)
            if not older:
                return
            targets = older
        pool = self._pool.submit
        for r in range(max(len(t.pieces) for t in targets)):
            joined: dict[int, object] = {}  # one copy of the piece, shared by the targets sending it
            for target in targets:
                if target.error is not None or r >= len(target.pieces):
                    continue
                offset, parts = target.pieces[r]
                data = joined.get(id(target.pieces))
                if data is None:
                    data = joined[id(target.pieces)] = parts[0] if len(parts) == 1 else b"".join(parts)
                while len(target.inflight) >= WINDOW:
                    target.settle(target.inflight.pop(0))
                request = {**target.params, "offset": offset, "chain": target.chain}
                target.inflight.append(pool(self._call, target.addr, "write", request, data))
        for target in targets:
            for future in target.inflight:
                target.settle(future)
            target.inflight = []
        live = [t for t in targets if t.error is None]
        self._settle_commits([(t, (_done if i == len(live) - 1 else pool)(self._call, t.addr, "commit", {
            "chunk_id": t.params["chunk_id"], "version": t.params["version"], "chain": t.chain}))
            for i, t in enumerate(live)])

    def _write_commit(self, targets: list[_Target]) -> list[_Target]:
        """Each target's only piece and its commit in one request. Returns the targets whose
        server does not know write_commit (older than this client): they need a write and a commit."""
        pool = self._pool.submit
        requests = []
        for i, target in enumerate(targets):
            offset, parts = target.pieces[0]
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            request = {**target.params, "offset": offset, "chain": target.chain}
            submit = _done if i == len(targets) - 1 else pool
            requests.append((target, submit(self._call, target.addr, "write_commit", request, data)))
        older = []
        for target, future in requests:
            try:
                future.result()
            except rpc.RpcError as exc:
                if exc.status == rpc.INVALID_ARGUMENT and "unknown method" in exc.message:
                    older.append(target)
        self._settle_commits([r for r in requests if r[0] not in older])
        return older

    @staticmethod
    def _settle_commits(commits: list[tuple[_Target, Future]]) -> None:
        for target, future in commits:
            try:
                reply, _ = future.result()
            except rpc.RpcError as exc:
                target.fail(exc)
                continue
            target.commit_result(reply)

    def truncate(self, chunk_id: int, version: int, expect_version: int, length: int,
                 servers: list[str]) -> WriteResult:
        """Cut every copy to `length` bytes at the new version; EIO if no copy could be cut."""
        params = {"chunk_id": chunk_id, "version": version, "expect_version": expect_version, "length": length}
        ok, failed, why = [], [], []
        for addr in servers:
            try:
                self._call(addr, "truncate", params)
                ok.append(addr)
            except rpc.RpcError as exc:
                failed.append(addr)
                why.append(f"{addr}: {exc}")
        if failed:
            log.warning("truncate of chunk %016x v%d: copies failed: %s", chunk_id, version, "; ".join(why))
        if not ok:
            detail = "; ".join(why) or "no copy is available"
            raise FsError(errno.EIO, f"chunk {chunk_id:016x} v{version}: no copy could be truncated: {detail}")
        return WriteResult(ok, failed)

    def _call(self, addr: str, method: str, params: dict, data=b""):
        return self._clients.get(addr).call(method, params, data)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._clients.close()
