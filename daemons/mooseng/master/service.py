"""The Master gRPC servicer: validates Meta requests, logs mutations, answers queries.

Every Meta op is checked against OPS before anything runs, so a malformed request (unknown op,
undecodable msgpack, missing, unknown or mistyped arg) gets INVALID_ARGUMENT and never reaches the
changelog. Mutations become log entries {"op", "args", "ctx", "ts"} that the metastore applies and
makes durable; queries read the namespace under the metastore's lock. A few ops also need the
chunkserver registry (soft state): they are composed here from namespace results and registry
lookups.

Lock order: the metastore's lock first, then the registry lock; never the other way round.
"""

import errno
import logging
import random
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from mooseng import wire
from mooseng.constants import CHUNK_SIZE
from mooseng.errors import FsError
from mooseng.master import placement
from mooseng.master.classes import CLASSES
from mooseng.master.metrics import Gauges, MasterMetrics
from mooseng.master.namespace import CHUNKS_MAX
from mooseng.master.registry import ChunkRef, Disk, DuplicateServer, ForeignCluster, Registry, STATES
from mooseng.proto import mooseng_pb2 as pb
from mooseng.proto import mooseng_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# How long copies at the old version are kept while a client writes or truncates a chunk; a
# session that takes longer (client died) loses them to deletion once it is over.
WRITE_SESSION_S = 120.0
ROOT_CTX = {"uid": 0, "gid": 0, "gids": []}
GOALS = {name: c.goal for name, c in CLASSES.items()}


# --- argument schema ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    what: str  # how the expected type reads in an error message
    check: Callable[[object], bool]


def _uint(v) -> bool:
    return type(v) is int and 0 <= v < 1 << 64


def _time(v) -> bool:
    return v == "now" or (type(v) is int and -(1 << 63) <= v < 1 << 63)


def _copy_reports(v) -> bool:
    return type(v) is list and all(
        type(c) is dict
        and c.keys() == {"chunk_id", "version", "ok"}
        and _uint(c["chunk_id"])
        and _uint(c["version"])
        and type(c["ok"]) is list
        and all(type(a) is str for a in c["ok"])
        for c in v
    )


UINT = Kind("an unsigned integer", _uint)
BYTES = Kind("bytes", lambda v: type(v) is bytes)
STR = Kind("a string", lambda v: type(v) is str)
BOOL = Kind("a boolean", lambda v: type(v) is bool)
TIME = Kind("nanoseconds or 'now'", _time)
COPIES = Kind("a list of {chunk_id, version, ok: [address...]}", _copy_reports)

QUERY, MUTATION = "query", "mutation"


@dataclass(frozen=True)
class Op:
    kind: str
    required: dict = field(default_factory=dict)
    optional: dict = field(default_factory=dict)  # absent or nil: the namespace default


OPS = {
    "lookup": Op(QUERY, {"parent": UINT, "name": BYTES}),
    "getattr": Op(QUERY, {"ino": UINT}),
    "readdir": Op(QUERY, {"ino": UINT}, {"offset": UINT, "limit": UINT}),
    "readlink": Op(QUERY, {"ino": UINT}),
    "getxattr": Op(QUERY, {"ino": UINT, "name": BYTES}),
    "listxattr": Op(QUERY, {"ino": UINT}),
    "statfs": Op(QUERY),
    "chunks": Op(QUERY, {"ino": UINT, "index": UINT}, {"count": UINT}),
    "getclass": Op(QUERY, {"ino": UINT}),
    "classes": Op(QUERY),
    "fileinfo": Op(QUERY, {"ino": UINT}),
    "status": Op(QUERY),
    "mknod": Op(MUTATION, {"parent": UINT, "name": BYTES, "mode": UINT}, {"rdev": UINT}),
    "mkdir": Op(MUTATION, {"parent": UINT, "name": BYTES, "mode": UINT}),
    "symlink": Op(MUTATION, {"parent": UINT, "name": BYTES, "target": BYTES}),
    "link": Op(MUTATION, {"ino": UINT, "parent": UINT, "name": BYTES}),
    "unlink": Op(MUTATION, {"parent": UINT, "name": BYTES}),
    "rmdir": Op(MUTATION, {"parent": UINT, "name": BYTES}),
    "rename": Op(MUTATION, {"parent": UINT, "name": BYTES, "newparent": UINT, "newname": BYTES}, {"flags": UINT}),
    "setattr": Op(
        MUTATION,
        {"ino": UINT},
        {"mode": UINT, "uid": UINT, "gid": UINT, "size": UINT, "atime": TIME, "mtime": TIME},
    ),
    "setxattr": Op(MUTATION, {"ino": UINT, "name": BYTES, "value": BYTES}, {"flags": UINT}),
    "removexattr": Op(MUTATION, {"ino": UINT, "name": BYTES}),
    "setclass": Op(MUTATION, {"ino": UINT, "sclass": STR}, {"recursive": BOOL}),
    "write_chunk": Op(MUTATION, {"ino": UINT, "index": UINT}),
    # `chunks` (copies the client stored) goes to the registry; the namespace gets {ino, size}.
    "commit_write": Op(MUTATION, {"ino": UINT, "size": UINT}, {"chunks": COPIES}),
}


def check_args(op: str, args) -> None:
    """Raise ValueError naming the problem if `args` does not fit the schema of `op`."""
    spec = OPS.get(op)
    if spec is None:
        raise ValueError(f"unknown op {op!r:.60}")
    if type(args) is not dict:
        raise ValueError(f"{op}: args must be a map, got {type(args).__name__}")
    for key in args:
        if key not in spec.required and key not in spec.optional:
            raise ValueError(f"{op}: unknown arg {key!r:.60}")
    for key, kind in spec.required.items():
        if key not in args:
            raise ValueError(f"{op}: missing arg {key!r}")
        if not kind.check(args[key]):
            raise ValueError(f"{op}: arg {key!r} must be {kind.what}, got {type(args[key]).__name__}")
    for key, kind in spec.optional.items():
        if args.get(key) is not None and not kind.check(args[key]):
            raise ValueError(f"{op}: arg {key!r} must be {kind.what}, got {type(args[key]).__name__}")


# --- the servicer ---------------------------------------------------------------------------------


class MasterService(pb_grpc.MasterServicer):
    def __init__(
        self,
        store,
        registry: Registry,
        metrics: MasterMetrics,
        node_id: str,
        rng: random.Random | None = None,
    ):
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._node_id = node_id
        self._rng = rng or random.Random()  # placement tie-breaks; guarded by _lock
        self._lock = threading.Lock()  # the registry and _rng
        self._stop = threading.Event()
        self._expiry: threading.Thread | None = None
        self._handlers = {
            "write_chunk": self._write_chunk,
            "commit_write": self._commit_write,
            "setattr": self._setattr,
            "chunks": self._chunks,
            "fileinfo": self._fileinfo,
            "status": self._status,
            "statfs": self._statfs,
        }

    # --- lifecycle ---

    def start(self) -> None:
        """Start the thread that marks silent chunkservers down."""
        self._expiry = threading.Thread(target=self._expire_loop, name="cs-expiry", daemon=True)
        self._expiry.start()

    def stop(self) -> None:
        self._stop.set()
        if self._expiry is not None:
            self._expiry.join()

    def _expire_loop(self) -> None:
        tick = min(1.0, self._registry.timeout_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                down = [(s, now - s.last_seen) for s in self._registry.expire(now)]
            for server, silent in down:
                log.warning(
                    "chunkserver %d at %s is down: no heartbeat for %.1f s (timeout %g s)",
                    server.server_id, server.address, silent, self._registry.timeout_s,
                )  # fmt: skip

    # --- Meta ---

    def Meta(self, request, context):
        start = time.perf_counter()
        try:
            return self._meta(request, context)
        finally:
            self._metrics.observe(request.op if request.op in OPS else "invalid", time.perf_counter() - start)

    def _meta(self, request, context):
        try:
            args = wire.unpack(request.args) if request.args else {}
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.op:.60}: args: {exc}")
        try:
            check_args(request.op, args)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ctx = {"uid": request.uid, "gid": request.gid, "gids": list(request.gids)}
        try:
            handler = self._handlers.get(request.op)
            if handler is not None:
                result = handler(args, ctx)
            elif OPS[request.op].kind == MUTATION:
                result = self._submit(request.op, args, ctx)
            else:
                result = self._query(request.op, args, ctx)
            return pb.MetaReply(result=wire.pack(result))
        except FsError as exc:
            return pb.MetaReply(errno=exc.errno, message=exc.message)
        except Exception:
            log.exception("op %s failed unexpectedly", request.op)
            context.abort(grpc.StatusCode.INTERNAL, f"{request.op}: internal error in the master (see its log)")

    def _submit(self, op: str, args: dict, ctx: dict):
        """Log and apply one mutation; chunks it frees are deleted at their holders' next heartbeat."""
        result = self._store.submit({"op": op, "args": args, "ctx": ctx, "ts": time.time_ns()})
        if type(result) is dict and result.get("freed"):
            with self._lock:
                self._registry.recheck(result["freed"])
        return result

    def _query(self, op: str, args: dict, ctx: dict):
        return self._store.query(op, args, ctx)

    # --- service-level ops ---

    def _write_chunk(self, args: dict, ctx: dict) -> dict:
        """write_chunk{ino,index} -> namespace result + "servers" to write to, chain order.

        Refuses before logging anything when the write could not succeed (no chunkserver with
        room for a new chunk: ENOSPC; no valid copy of an existing one: EIO), so that a failed
        write leaves neither an empty chunk nor a needlessly bumped version behind.
        """
        with self._store.view() as ns:
            goal = GOALS[ns.query("getattr", {"ino": args["ino"]}, ROOT_CTX)["sclass"]]
            [current] = ns.query("chunks", {"ino": args["ino"], "index": args["index"]}, ROOT_CTX)
        with self._lock:
            if current["chunk_id"] == 0:
                placement.choose(self._registry.servers(), goal, self._rng)
            elif not self._registry.holders(current["chunk_id"], current["version"]):
                raise FsError(errno.EIO, f"no valid copy of chunk {current['chunk_id']}")
        result = self._submit("write_chunk", args, ctx)
        chunk_id = result["chunk_id"]
        with self._lock:
            if result["new"]:
                targets = placement.choose(self._registry.servers(), goal, self._rng)
            else:
                targets = self._registry.holders(chunk_id, result["expect_version"])
                if not targets:
                    raise FsError(errno.EIO, f"no valid copy of chunk {chunk_id}")
                self._registry.begin_write(chunk_id, result["expect_version"], time.monotonic() + WRITE_SESSION_S)
        result["servers"] = [s.address for s in targets]
        return result

    def _commit_write(self, args: dict, ctx: dict):
        """commit_write{ino,size,chunks?} -> attr; records the copies the client reports first.

        A report counts only for the chunk's current version (an older one was overtaken by
        another write); it ends the write session, so copies that missed it are deleted.
        """
        reports = args.get("chunks") or []
        if reports:
            with self._store.view() as ns:
                current = {r["chunk_id"]: ns.chunk_version(r["chunk_id"]) for r in reports}
            with self._lock:
                for r in reports:
                    if current[r["chunk_id"]] == r["version"]:
                        unknown = self._registry.record_copies(r["chunk_id"], r["version"], r["ok"])
                        if unknown:
                            log.warning("commit of chunk %d names unknown chunkservers %s", r["chunk_id"], unknown)
                    self._registry.end_write(r["chunk_id"], r["version"])
        return self._submit("commit_write", {"ino": args["ino"], "size": args["size"]}, ctx)

    def _setattr(self, args: dict, ctx: dict) -> dict:
        """setattr -> namespace result; a shrink inside a chunk adds the "servers" holding the tail.

        The client truncates those copies to tail.length at tail.version, then reports the ones
        that did via commit_write{ino, size: 0, chunks} (size 0 leaves the size alone).
        """
        result = self._submit("setattr", args, ctx)
        tail = result.get("tail")
        if tail:
            with self._lock:
                holders = self._registry.holders(tail["chunk_id"], tail["expect_version"])
                if holders:
                    self._registry.begin_write(tail["chunk_id"], tail["expect_version"], time.monotonic() + WRITE_SESSION_S)
            tail["servers"] = [s.address for s in holders]
        return result

    def _chunks(self, args: dict, ctx: dict) -> list:
        """chunks{ino,index,count?} -> [{index, chunk_id, version, servers}] (valid copies, best first)."""
        refs = self._query("chunks", args, ctx)
        with self._lock:
            for ref in refs:
                holders = self._registry.holders(ref["chunk_id"], ref["version"]) if ref["chunk_id"] else []
                ref["servers"] = [s.address for s in holders]
        return refs

    def _fileinfo(self, args: dict, ctx: dict) -> dict:
        """fileinfo{ino} -> {attr, class, chunks: [{index, chunk_id, version, copies: [...]}]}."""
        with self._store.view() as ns:
            attr = ns.query("getattr", args, ctx)
            refs = []
            if stat.S_ISREG(attr["mode"]):
                for index in range(0, -(-attr["size"] // CHUNK_SIZE), CHUNKS_MAX):
                    refs += ns.query("chunks", {"ino": args["ino"], "index": index, "count": CHUNKS_MAX}, ctx)
        chunks = []
        with self._lock:
            for ref in refs:
                if not ref["chunk_id"]:
                    continue
                copies = [
                    {
                        "server_id": server.server_id,
                        "address": server.address,
                        "disk": copy.disk,
                        "version": copy.version,
                        "valid": self._registry.is_valid(server, copy, ref["version"]),
                    }
                    for server, copy in self._registry.copies(ref["chunk_id"])
                ]
                chunks.append({**ref, "copies": copies})
        return {"attr": attr, "class": CLASSES[attr["sclass"]].to_dict(), "chunks": chunks}

    def _statfs(self, args: dict, ctx: dict) -> dict:
        """statfs{} -> namespace counts + byte totals over the live chunkservers' healthy disks."""
        result = self._query("statfs", args, ctx)
        with self._lock:
            cap = self._registry.capacity()
        result.update(total_bytes=cap.total, used_bytes=cap.used, free_bytes=cap.free)
        return result

    def _status(self, args: dict, ctx: dict) -> dict:
        """status{} -> this master, every chunkserver, chunk states per class."""
        with self._store.view() as ns:
            table = list(ns.iter_chunks())
            inodes = ns.inode_count
        metadata = self._metadata_counters()
        now = time.monotonic()
        with self._lock:
            by_class = self._registry.count_states(table, GOALS)
            servers = [_server_status(s, now) for s in self._registry.servers()]
            cap = self._registry.capacity()
        return {
            "master": {"node_id": self._node_id, "role": "leader", "metadata": metadata},
            "chunkservers": servers,
            "chunks": {"total": len(table), "by_class": by_class},
            "inodes": inodes,
            "space": {"total_bytes": cap.total, "used_bytes": cap.used, "free_bytes": cap.free},
        }

    def _metadata_counters(self) -> dict:
        st = self._store
        return {
            "last_index": st.last_index,
            "synced_index": st.synced_index,
            "snapshot_index": st.snapshot_index,
            "entries_since_snapshot": st.entries_since_snapshot,
            "last_snapshot_time": st.last_snapshot_time,
            "log_syncs": st.log_syncs,
        }

    # --- metrics ---

    def gauges(self) -> Gauges:
        """What Prometheus scrapes: computed now, from the namespace and the registry."""
        with self._store.view() as ns:
            table = list(ns.iter_chunks())
        index = self._store.last_index
        with self._lock:
            by_class = self._registry.count_states(table, GOALS)
            servers = self._registry.servers()
            disk_bytes = [
                (str(s.server_id), d.path, kind, value)
                for s in servers
                if s.alive
                for d in s.disks
                for kind, value in (("total", d.total), ("used", d.used), ("free", d.free))
            ]
            bytes_read, bytes_written = self._registry.bytes_read, self._registry.bytes_written
        alive = sum(1 for s in servers if s.alive)
        return Gauges(
            leader=True,
            log_index=index,
            chunks_total=len(table),
            chunk_states={state: sum(c[state] for c in by_class.values()) for state in STATES},
            chunkservers={"alive": alive, "down": len(servers) - alive},
            bytes_read=bytes_read,
            bytes_written=bytes_written,
            disk_bytes=disk_bytes,
        )

    # --- chunkserver protocol ---

    def Register(self, request, context):
        disks = [_disk(d) for d in request.disks]
        chunks = [ChunkRef(c.chunk_id, c.version, c.disk) for c in request.chunks]
        try:
            wire.parse_addr(request.address)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"register: address: {exc}")
        try:
            with self._lock:
                session = self._registry.register(
                    request.cluster_id, request.server_id, request.address, disks, chunks, time.monotonic()
                )
        except ForeignCluster as exc:
            log.error("refused registration: %s", exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except DuplicateServer as exc:
            log.error("refused registration: %s", exc)
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        log.info(
            "chunkserver %d registered from %s: %d disks, %d chunks, session %d",
            request.server_id, request.address, len(disks), len(chunks), session,
        )  # fmt: skip
        return pb.RegisterReply(session=session)

    def Heartbeat(self, request, context):
        now = time.monotonic()
        with self._lock:
            ok = self._registry.heartbeat(
                request.server_id,
                request.session,
                [_disk(d) for d in request.disks],
                [ChunkRef(c.chunk_id, c.version, c.disk) for c in request.added],
                [ChunkRef(c.chunk_id, c.version, c.disk) for c in request.removed],
                request.bytes_read,
                request.bytes_written,
                now,
            )
        if not ok:
            log.info("chunkserver %d has no valid session: asking it to register again", request.server_id)
            return pb.HeartbeatReply(reregister=True)
        with self._store.view() as ns, self._lock:
            deletes = self._registry.deletions(request.server_id, ns.chunk_version, now)
        if deletes:
            log.info("chunkserver %d: %d copies to delete (unknown or stale)", request.server_id, len(deletes))
        return pb.HeartbeatReply(
            delete=[pb.ChunkRef(chunk_id=c.chunk_id, version=c.version, disk=c.disk or 0) for c in deletes]
        )


def _disk(d) -> Disk:
    return Disk(d.index, d.path, d.total_bytes, d.used_bytes, d.free_bytes, d.state, d.chunks)


def _server_status(s, now: float) -> dict:
    return {
        "server_id": s.server_id,
        "address": s.address,
        "state": "alive" if s.alive else "down",
        "last_heartbeat_s": round(now - s.last_seen, 3),
        "chunks": len(s.chunks),
        "disks": [
            {"index": d.index, "path": d.path, "state": d.state, "chunks": d.chunks,
             "total_bytes": d.total, "used_bytes": d.used, "free_bytes": d.free}
            for d in s.disks
        ],
    }  # fmt: skip
