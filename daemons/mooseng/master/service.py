"""The master's rpc handlers: `meta` (namespace ops), `register` and `heartbeat` (chunkservers).

Every request is checked against a schema before anything runs, so a malformed one (unknown op,
missing, unknown or mistyped field) gets INVALID_ARGUMENT and never reaches the Raft log.
Only the Raft leader serves them (followers redirect, see DESIGN.md). Mutations become entries
{"op", "args", "ctx", "ts", "client_id", "seq"} that the metastore replicates through Raft and
applies once committed (a retried (client_id, seq) gets its first result); queries read the
namespace under the state lock once the read is known linearizable. A few ops also need the
chunkserver registry (soft state): they are composed here from namespace results and registry
lookups.

Chunk versions move the MooseFS way: before the namespace logs a new version of an existing chunk
(write_chunk, or setattr cutting a chunk), the master asks every valid copy to take that version
(`set_version` on the chunkserver), and only the copies that confirm are written. So whatever
happens to the write afterwards, the namespace version always has copies; a copy that then fails
the write is fenced when the client commits (see Registry.fence), and the copies that stored it
move on to the next version (bump_version), so it stays stale after a leader change.

One writer at a time per chunk: write_chunk (and a shrink that cuts or frees chunks) first needs
the chunk's write lease (writelease.py), so a second writer gets EAGAIN ("locked") and retries
instead of moving the version under the first one. A copy that refuses a new version because a
write session is open on it (EBUSY: a session from before a leader change) makes the bump roll
back and answer EAGAIN too, so no writer's copies are fenced by another writer.

Erasure-coded chunks (docs/DESIGN.md "Erasure coding"): their replies carry "ec": [k, m] and
"servers" with one entry per part; versions move on every valid part (by part id); a commit
reports the parts each server stored. A conversion the healer finds complete is switched here
(switch_layout): under the inode lock, the new pieces take version + 1 and set_layout is logged,
which leaves the old pieces stale.

Lock order: an inode lock, then the metastore's lock, then the registry lock; never the other way
round. Only an inode lock is ever held across a call to a chunkserver.
"""

import errno
import logging
import random
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field

from mooseng import rpc, wire
from mooseng.constants import CHUNK_SIZE
from mooseng.ec import part_id, split_part_id
from mooseng.errors import FsError
from mooseng.master import classes, healer, healing, placement
from mooseng.master.classes import StorageClass
from mooseng.master.metastore import NotLeader
from mooseng.master.metrics import Gauges, MasterMetrics
from mooseng.master.namespace import CHUNKS_MAX
from mooseng.master.registry import STATES, ChunkRef, Disk, DuplicateServer, ForeignCluster, Registry, Server
from mooseng.master.writelease import LEASE_S, WriteLeases

log = logging.getLogger(__name__)

ROOT_CTX = {"uid": 0, "gid": 0, "gids": []}
# A client silent this long is gone: the files it kept open after unlinking them are dropped
# (MooseFS keeps such sessions for a day, too).
SESSION_TIMEOUT_S = 86400.0
# A holder that has not confirmed a new version by then is left out of the write (and fenced).
SET_VERSION_TIMEOUT_S = 2.0
SET_VERSION_WORKERS = 32


# --- request schemas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    what: str  # how the expected type reads in an error message
    check: Callable[[object], bool]


def _uint(v) -> bool:
    return type(v) is int and 0 <= v < 1 << 64


def _u32(v) -> bool:
    return type(v) is int and 0 <= v < 1 << 32


def _time(v) -> bool:
    return v == "now" or (type(v) is int and -(1 << 63) <= v < 1 << 63)


def _records(required: dict[str, Kind], optional: dict[str, Kind] | None = None) -> Callable[[object], bool]:
    """A check for a list of maps with these fields (as registration and commit reports carry)."""
    optional = optional or {}
    allowed = required.keys() | optional.keys()

    def check(v) -> bool:
        return type(v) is list and all(
            type(r) is dict
            and required.keys() <= r.keys() <= allowed
            and all((required.get(k) or optional[k]).check(x) for k, x in r.items())
            for r in v
        )

    return check


UINT = Kind("an unsigned integer", _uint)
U32 = Kind("an unsigned 32-bit integer", _u32)
BYTES = Kind("bytes", lambda v: type(v) is bytes)
STR = Kind("a string", lambda v: type(v) is str)
BOOL = Kind("a boolean", lambda v: type(v) is bool)
TIME = Kind("nanoseconds or 'now'", _time)
ANY = Kind("anything", lambda v: True)
U32_LIST = Kind("a list of unsigned 32-bit integers", lambda v: type(v) is list and (not v or all(_u32(x) for x in v)))
STR_LIST = Kind("a list of strings", lambda v: type(v) is list and all(type(x) is str for x in v))
UINT_LIST = Kind("a list of unsigned integers", lambda v: type(v) is list and all(_uint(x) for x in v))
_COPY_RECORDS = _records({"chunk_id": UINT, "version": UINT, "ok": STR_LIST}, {"parts": U32_LIST})
COPIES = Kind(
    "a list of {chunk_id, version, ok: [address...], parts?: [part...] as long as ok}",
    lambda v: _COPY_RECORDS(v) and all(r.get("parts") is None or len(r["parts"]) == len(r["ok"]) for r in v),
)
DISKS = Kind(
    "a list of {index, path, total_bytes, used_bytes, free_bytes, state, chunks}",
    _records({"index": U32, "path": STR, "total_bytes": UINT, "used_bytes": UINT, "free_bytes": UINT,
              "state": STR, "chunks": UINT}),
)  # fmt: skip
CHUNK_REFS = Kind(
    "a list of {chunk_id, version, disk, length?, damaged?}",
    _records({"chunk_id": UINT, "version": UINT, "disk": U32}, {"length": UINT, "damaged": BOOL}),
)
REPLICATED = Kind(
    "a list of {chunk_id, version, bytes, error}",
    _records({"chunk_id": UINT, "version": UINT, "bytes": UINT, "error": STR}),
)
BUILT = Kind(
    "a list of {chunk_id, part, version, bytes, error}",
    _records({"chunk_id": UINT, "part": Kind("a part number", lambda v: type(v) is int and -1 <= v < 32),
              "version": UINT, "bytes": UINT, "error": STR}),
)
EC = Kind("[k, m]", lambda v: type(v) is list and len(v) == 2 and all(_u32(x) for x in v))

QUERY, MUTATION = "query", "mutation"
_VERSION_OPS = ("write_chunk", "setattr")  # ops that may ask chunkservers to take a new version


@dataclass(frozen=True)
class Op:
    kind: str
    required: dict = field(default_factory=dict)
    optional: dict = field(default_factory=dict)  # absent or nil: the default
    # Derived once: every request is checked against its op's and the envelope's schema.
    allowed: frozenset = field(init=False, repr=False, compare=False)
    required_items: tuple = field(init=False, repr=False, compare=False)
    optional_items: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "allowed", frozenset(self.required) | frozenset(self.optional))
        object.__setattr__(self, "required_items", tuple(self.required.items()))
        object.__setattr__(self, "optional_items", tuple(self.optional.items()))


OPS = {
    "lookup": Op(QUERY, {"parent": UINT, "name": BYTES}),
    "getattr": Op(QUERY, {"ino": UINT}),
    "readdir": Op(QUERY, {"ino": UINT}, {"offset": UINT, "limit": UINT}),
    "readlink": Op(QUERY, {"ino": UINT}),
    "getxattr": Op(QUERY, {"ino": UINT, "name": BYTES}),
    "listxattr": Op(QUERY, {"ino": UINT}),
    "statfs": Op(QUERY),
    "chunks": Op(QUERY, {"ino": UINT, "index": UINT}, {"count": UINT}),
    "open": Op(QUERY, {"ino": UINT}, {"count": UINT}),
    "getclass": Op(QUERY, {"ino": UINT}),
    "classes": Op(QUERY),
    "fileinfo": Op(QUERY, {"ino": UINT}),
    "status": Op(QUERY),
    "mknod": Op(MUTATION, {"parent": UINT, "name": BYTES, "mode": UINT}, {"rdev": UINT}),
    "mkdir": Op(MUTATION, {"parent": UINT, "name": BYTES, "mode": UINT}),
    "symlink": Op(MUTATION, {"parent": UINT, "name": BYTES, "target": BYTES}),
    "link": Op(MUTATION, {"ino": UINT, "parent": UINT, "name": BYTES}),
    # `open`: the inodes the caller has open; one of them losing its last link is sustained.
    "unlink": Op(MUTATION, {"parent": UINT, "name": BYTES}, {"open": UINT_LIST}),
    "rmdir": Op(MUTATION, {"parent": UINT, "name": BYTES}),
    "rename": Op(MUTATION, {"parent": UINT, "name": BYTES, "newparent": UINT, "newname": BYTES},
                 {"flags": UINT, "open": UINT_LIST}),
    # The caller closed a file it sustained (unlinked while open) for the last time.
    "release": Op(MUTATION, {"ino": UINT}),
    "setattr": Op(
        MUTATION,
        {"ino": UINT},
        {"mode": UINT, "uid": UINT, "gid": UINT, "size": UINT, "atime": TIME, "mtime": TIME},
    ),
    "setxattr": Op(MUTATION, {"ino": UINT, "name": BYTES, "value": BYTES}, {"flags": UINT}),
    "removexattr": Op(MUTATION, {"ino": UINT, "name": BYTES}),
    "setclass": Op(MUTATION, {"ino": UINT, "sclass": STR}, {"recursive": BOOL}),
    "class_create": Op(MUTATION, {"name": STR}, {"copies": UINT, "ec": EC, "tier": STR}),
    "class_delete": Op(MUTATION, {"name": STR}),
    "write_chunk": Op(MUTATION, {"ino": UINT, "index": UINT}),
    # `chunks` (copies the client stored) goes to the registry; the namespace gets {ino, size}.
    "commit_write": Op(MUTATION, {"ino": UINT, "size": UINT}, {"chunks": COPIES}),
    # A write session that failed gives its chunk's lease back (soft state: not logged).
    "release_write": Op(QUERY, {"ino": UINT, "chunk_id": UINT, "version": UINT}),
}

# The envelope of a `meta` call; `args` is checked against the op's own schema.
META = Op(QUERY, {"op": STR, "args": ANY}, {"client_id": UINT, "seq": UINT, "uid": U32, "gid": U32, "gids": U32_LIST})
REGISTER = Op(
    QUERY, {"cluster_id": STR, "server_id": U32, "address": STR, "disks": DISKS, "chunks": CHUNK_REFS}
)
RAFT_ADMIN = Op(QUERY, {"action": STR, "node_id": STR}, {"address": STR})
HEARTBEAT = Op(
    QUERY,
    {"server_id": U32, "session": UINT, "disks": DISKS, "added": CHUNK_REFS, "removed": CHUNK_REFS,
     "bytes_read": UINT, "bytes_written": UINT},
    {"damaged": CHUNK_REFS, "replicated": REPLICATED, "built": BUILT},
)  # fmt: skip


_MISSING = object()


def _check(what: str, spec: Op, args) -> None:
    """Raise ValueError naming the problem if `args` does not fit `spec`."""
    if type(args) is not dict:
        raise ValueError(f"{what}: args must be a map, got {type(args).__name__}")
    if not spec.allowed.issuperset(args):
        key = next(k for k in args if k not in spec.allowed)
        raise ValueError(f"{what}: unknown arg {key!r:.60}")
    for key, kind in spec.required_items:
        value = args.get(key, _MISSING)
        if value is _MISSING:
            raise ValueError(f"{what}: missing arg {key!r}")
        if not kind.check(value):
            raise ValueError(f"{what}: arg {key!r} must be {kind.what}, got {type(value).__name__}")
    for key, kind in spec.optional_items:
        value = args.get(key)
        if value is not None and not kind.check(value):
            raise ValueError(f"{what}: arg {key!r} must be {kind.what}, got {type(value).__name__}")


def check_args(op: str, args) -> None:
    """Raise ValueError naming the problem if `args` does not fit the schema of `op`."""
    spec = OPS.get(op)
    if spec is None:
        raise ValueError(f"unknown op {op!r:.60}")
    _check(op, spec, args)


def _invalid(exc: ValueError) -> rpc.RpcError:
    return rpc.RpcError(rpc.INVALID_ARGUMENT, str(exc))


class _InodeLocks:
    """One lock per inode in use. Held from reading a chunk's version through set_version on its
    copies to logging the bump, so that two bumps cannot interleave; and by every op that changes
    a file's size, so that the chunk a truncation cuts is the one the namespace then cuts."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._locks: dict[int, list] = {}  # ino -> [lock, holders and waiters]

    @contextmanager
    def hold(self, ino: int):
        with self._mutex:
            entry = self._locks.get(ino)
            if entry is None:
                entry = self._locks[ino] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._mutex:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[ino]


# --- the service ----------------------------------------------------------------------------------


class MasterService:
    def __init__(
        self,
        store,
        registry: Registry,
        metrics: MasterMetrics,
        node_id: str,
        rng: random.Random | None = None,
        raft_status: Callable[[], dict] | None = None,
        raft_admin: Callable[[str, str, str], None] | None = None,
        healing: healer.Settings | None = None,
        session_timeout_s: float = SESSION_TIMEOUT_S,
        lease_s: float = LEASE_S,
    ):
        self._store = store
        self._raft_status = raft_status
        self._raft_admin = raft_admin
        self._registry = registry
        self._metrics = metrics
        self._node_id = node_id
        self._rng = rng or random.Random()  # placement tie-breaks; guarded by _lock
        self._lock = threading.Lock()  # the registry and _rng
        self._inodes = _InodeLocks()
        self._leases = WriteLeases(lease_s)  # guarded by _lock
        # Client id -> when this leader last heard from it (soft state); clients not heard from
        # for session_timeout_s lose the files they sustained (expire_sessions).
        self._client_seen: dict[int, float] = {}
        self.session_timeout_s = session_timeout_s
        self._request = threading.local()  # client_id, seq of the meta call this thread serves
        self._chunkservers: dict[str, rpc.Client] = {}  # by address; guarded by _lock
        self._pool = ThreadPoolExecutor(SET_VERSION_WORKERS, thread_name_prefix="set-version")
        self._stop = threading.Event()
        self._expiry: threading.Thread | None = None
        self.healer = healer.Healer(
            registry, self._lock, self._settle_for_healer, self._chunk_table, self.is_leader,
            healing or healer.Settings(start_delay_s=registry.timeout_s), switch=self.switch_layout,
        )  # fmt: skip
        self._ops = {
            "write_chunk": self._write_chunk,
            "commit_write": self._commit_write,
            "release_write": self._release_write,
            "setattr": self._setattr,
            "chunks": self._chunks,
            "open": self._open,
            "fileinfo": self._fileinfo,
            "status": self._status,
            "statfs": self._statfs,
        }

    def handlers(self) -> dict[str, rpc.Handler]:
        """The rpc methods served on the master's `listen` address."""
        return {
            "meta": self._meta,
            "register": self._register,
            "heartbeat": self._heartbeat,
            "raft_status": self._raft_status_rpc,
            "raft_admin": self._raft_admin_rpc,
        }

    def is_leader(self) -> bool:
        """Whether this master leads now; only the leader serves clients and chunkservers, and
        components that act on the cluster (replication) gate on this."""
        return self._store.is_leader()

    def _not_leader(self, what: str, leader: str) -> rpc.RpcError:
        where = f"; the leader is {leader}" if leader else "; no leader is known yet"
        return rpc.RpcError(rpc.UNAVAILABLE, f"{what}: master {self._node_id} is not the leader{where}")

    def _raft_admin_rpc(self, params: dict, data, peer: str) -> dict:
        """raft_admin{action: add|remove|transfer, node_id, address?} on the leader -> {}."""
        try:
            _check("raft_admin", RAFT_ADMIN, params)
            if params["action"] not in ("add", "remove", "transfer"):
                raise ValueError(f"raft_admin: unknown action {params['action']!r:.40}")
        except ValueError as exc:
            raise _invalid(exc) from None
        if self._raft_admin is None:
            raise rpc.RpcError(rpc.FAILED_PRECONDITION, "this master runs without raft")
        try:
            self._raft_admin(params["action"], params["node_id"], params.get("address") or "")
        except NotLeader as exc:
            raise self._not_leader(f"raft_admin: {exc}", exc.leader) from None
        except ValueError as exc:
            raise rpc.RpcError(rpc.FAILED_PRECONDITION, f"raft_admin: {exc}") from None
        log.info("raft_admin %s %s %s from %s: done", params["action"], params["node_id"], params.get("address") or "", peer)
        return {}

    def _raft_status_rpc(self, params: dict, data, peer: str) -> dict:
        """raft_status{} -> node id, role, term, commit, applied, leader, peers (match on the leader)."""
        if self._raft_status is None:
            raise rpc.RpcError(rpc.FAILED_PRECONDITION, "this master runs without raft")
        return self._raft_status()

    # --- lifecycle ---

    def start(self) -> None:
        """Start the threads that mark silent chunkservers down and keep chunks at their goal."""
        self._expiry = threading.Thread(target=self._expire_loop, name="cs-expiry", daemon=True)
        self._expiry.start()
        self.healer.start()

    def stop(self) -> None:
        """After the rpc server stopped (and let its running calls finish)."""
        self._stop.set()
        if self._expiry is not None:
            self._expiry.join()
        self.healer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            clients, self._chunkservers = list(self._chunkservers.values()), {}
        for client in clients:
            client.close()

    def _expire_loop(self) -> None:
        tick = min(1.0, self._registry.timeout_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                down = [(s, now - s.last_seen) for s in self._registry.expire(now)]
                self._leases.expire(now)
            for server, silent in down:  # an error: its copies no longer count, chunks go under goal
                log.error(
                    "chunkserver %d at %s is down: no heartbeat for %.1f s (timeout %g s)",
                    server.server_id, server.address, silent, self._registry.timeout_s,
                )  # fmt: skip
            self._expire_sessions(now)

    def _expire_sessions(self, now: float) -> None:
        """Drop the files sustained by clients this leader has not heard from for the session
        timeout. A client first seen holding some (this master just became the leader) gets
        the whole timeout from now."""
        if not self._store.is_leader():
            self._client_seen.clear()
            return
        with self._store.view() as ns:
            owners = ns.sustained_owners()
        for client in [c for c, t in self._client_seen.items() if now - t > self.session_timeout_s and c not in owners]:
            del self._client_seen[client]  # every client id ever seen would stay otherwise
        gone = [c for c in sorted(owners) if now - self._client_seen.setdefault(c, now) > self.session_timeout_s]
        if not gone:
            return
        try:
            result = self._submit("expire_sessions", {"clients": gone}, ROOT_CTX, dedup=False)
        except (FsError, NotLeader) as exc:
            log.warning("expiring client sessions %s: %s", gone, exc)
            return
        for client in gone:
            self._client_seen.pop(client, None)
        log.warning("clients %s silent for over %g s: dropped %d unlinked file(s) they still had open: inodes %s",
                    gone, self.session_timeout_s, len(result["inodes"]), result["inodes"])

    # --- meta ---

    def _meta(self, params: dict, data, peer: str) -> dict:
        """meta{op, args, client_id?, seq?, uid?, gid?, gids?} -> {errno, message, result, leader}."""
        start = time.perf_counter()
        op = params.get("op")
        error = "INTERNAL"
        try:
            reply = self._run(params)
            error = errno.errorcode.get(reply["errno"], str(reply["errno"])) if reply["errno"] else ""
            return reply
        except rpc.RpcError as exc:
            error = rpc.STATUS_NAMES.get(exc.status, str(exc.status))
            raise
        finally:
            self._metrics.observe(op if type(op) is str and op in OPS else "invalid", time.perf_counter() - start, error)

    def _run(self, params: dict) -> dict:
        try:
            _check("meta", META, params)
            check_args(params["op"], params["args"])
        except ValueError as exc:
            raise _invalid(exc) from None
        op = params["op"]
        args = {k: v for k, v in params["args"].items() if v is not None}  # nil optional args: the default
        ctx = {"uid": params.get("uid") or 0, "gid": params.get("gid") or 0, "gids": params.get("gids") or []}
        if not self._store.is_leader():
            return self._redirect(self._store.leader_address())
        self._request.client_id, self._request.seq = params.get("client_id") or 0, params.get("seq") or 0
        if self._request.client_id:
            self._client_seen[self._request.client_id] = time.monotonic()
        try:
            if op in _VERSION_OPS and self._request.client_id:
                # A retry of an op that moves chunk versions must not move them again.
                done = self._store.recorded(self._request.client_id, self._request.seq)
                if done is not None:
                    if done[0]:
                        return {"errno": done[0], "message": done[1], "result": None, "leader": ""}
                    return {"errno": 0, "message": "", "result": self._replayed(args, done[1]), "leader": ""}
            handler = self._ops.get(op)
            if handler is not None:
                result = handler(args, ctx)
            elif OPS[op].kind == MUTATION:
                result = self._submit(op, args, ctx)
            else:
                result = self._store.query(op, args, ctx)
        except NotLeader as exc:
            return self._redirect(exc.leader)
        except FsError as exc:
            return {"errno": exc.errno, "message": exc.message, "result": None, "leader": ""}
        except Exception:
            log.exception("op %s failed unexpectedly", op)
            raise rpc.RpcError(rpc.INTERNAL, f"{op}: internal error in the master (see its log)") from None
        return {"errno": 0, "message": "", "result": result, "leader": ""}

    def _replayed(self, args: dict, result: dict) -> dict:
        """The first result of a retried write_chunk/setattr, with the copies to write to now
        (those holding the version it made; for a new chunk, a fresh placement)."""
        result = dict(result)
        if "chunk_id" in result:
            ref = result
        elif result.get("tail"):
            ref = result["tail"] = dict(result["tail"])
        else:
            return result
        if ref.get("new"):
            with self._store.view() as ns:
                sclass = ns.storage_class(ns.query("getattr", {"ino": args["ino"]}, ROOT_CTX)["sclass"])
            ref["servers"] = self._place(sclass, ref.get("ec"))
        else:
            ref["expect_version"] = ref["version"]
            ref["servers"] = self._servers_of(ref)
        return result

    def _redirect(self, leader: str) -> dict:
        """Send the client to the leader; with none known, UNAVAILABLE makes it try the others."""
        if leader:
            return {"errno": 0, "message": "", "result": None, "leader": leader}
        raise self._not_leader("meta", "")

    def _submit(self, op: str, args: dict, ctx: dict, dedup: bool = True):
        """Replicate and apply one mutation; chunks it frees are deleted at their holders' next heartbeat.

        The entry carries the request's (client_id, seq) so that a retry gets its first result;
        `dedup=False` for an entry the master adds on its own while serving a request, which
        must not take the request's place in the session table."""
        entry = {"op": op, "args": args, "ctx": ctx, "ts": time.time_ns()}
        if dedup and getattr(self._request, "client_id", 0):
            entry["client_id"], entry["seq"] = self._request.client_id, self._request.seq
        result = self._store.submit(entry)
        if type(result) is dict and result.get("freed"):
            with self._lock:
                self._registry.recheck(result["freed"])
        return result

    # --- service-level ops ---

    def _write_chunk(self, args: dict, ctx: dict) -> dict:
        """write_chunk{ino,index} -> namespace result + "servers" to write to, chain order.

        A new chunk goes to servers placement chooses (ENOSPC before logging if there are none).
        An existing chunk's valid copies first take the new version; the write goes to those that
        did, with expect_version == version (EIO, nothing logged, if none did).
        """
        ino, index = args["ino"], args["index"]
        with self._inodes.hold(ino):
            with self._store.view() as ns:
                sclass = ns.storage_class(ns.query("getattr", {"ino": ino}, ROOT_CTX)["sclass"])
                [current] = ns.query("chunks", {"ino": ino, "index": index}, ROOT_CTX)
            chunk_id = current["chunk_id"]
            self._check_leases(ino, [chunk_id] if chunk_id else [])
            if chunk_id == 0:
                self._place(sclass, sclass.ec)  # ENOSPC before anything is logged
                result = self._submit("write_chunk", args, ctx)
                _expect(result, "write_chunk", result["new"])
                servers = self._place(sclass, result.get("ec"))
            else:
                version = current["version"]
                result, servers = self._bump(chunk_id, version, current.get("ec"), "write_chunk", args, ctx)
                _expect(result, "write_chunk", (result["chunk_id"], result["version"]) == (chunk_id, version + 1))
                result["expect_version"] = result["version"]
            self._lease(result["chunk_id"], ino, index, result["version"], servers)
        result["servers"] = servers
        return result

    def _place(self, sclass: StorageClass, ec: list | tuple | None) -> list[str]:
        """Addresses for a new chunk of layout `ec` (class `sclass`): chain order for copies,
        one per part for parts. ENOSPC (naming the class) if the cluster cannot take it."""
        with self._lock:
            servers = self._registry.servers()
            if ec is None:
                return [s.address for s in placement.choose(servers, classes.goal(None, sclass), self._rng)]
            return [s.address for s in placement.choose_parts(servers, sclass.name, ec[0], ec[1], self._rng)]

    def _servers_of(self, ref: dict) -> list[str]:
        """The valid holders of a chunk ref at its version: best first for copies; for parts
        entry p is part p's holder, "" for none."""
        with self._lock:
            if ref.get("ec") is None:
                return [s.address for s in self._registry.holders(ref["chunk_id"], ref["version"])]
            holders = self._registry.part_holders(ref["chunk_id"], ref["version"], sum(ref["ec"]))
            return [s.address if s is not None else "" for s in holders]

    def _check_leases(self, ino: int, chunk_ids: list[int]) -> None:
        """EAGAIN if another client holds the write lease of one of the chunks (it retries)."""
        now = time.monotonic()
        with self._lock:
            for chunk_id in chunk_ids:
                lease = self._leases.blocker(chunk_id, self._request.client_id, now)
                if lease is not None:
                    raise FsError(errno.EAGAIN, f"chunk {chunk_id} of inode {ino} is locked: another client "
                                                f"writes its version {lease.version}")

    def _lease(self, chunk_id: int, ino: int, index: int, version: int, servers: list[str]) -> None:
        """Grant the caller the chunk's lease for a session writing to `servers`; a caller without
        a client_id cannot be told apart from others, so it takes none (clients always have one;
        raw tools may not)."""
        if not self._request.client_id:
            return
        with self._lock:
            self._leases.grant(chunk_id, ino, index, self._request.client_id, version, time.monotonic(),
                               tuple(servers))

    def _release_write(self, args: dict, ctx: dict) -> dict:
        """release_write{ino, chunk_id, version} -> {}: a failed write session gives its lease back."""
        with self._lock:
            self._leases.release(args["chunk_id"], args["version"])
        return {}

    def _commit_write(self, args: dict, ctx: dict):
        """commit_write{ino,size,chunks?} -> attr; takes the client's report of stored copies first.

        A report names the copies that stored a write session's data (or a truncation); for a
        chunk in parts, `parts` says which part each stored. Every other copy (of that part) at
        that version or later missed it: it is fenced (never valid again until it is gone). An
        empty `ok`, or fewer than k parts, fences nothing: the client got EIO, the data of the
        failed range is undefined on every copy alike. Only a report of the current version
        records copies.

        A piece missed the write if the registry has it at that version, or the session's lease
        sent the client to it (its server may have gone down since, taking its copy out of the
        registry until it returns). Then the pieces that stored the write take version + 1 and
        bump_version is logged: the missed ones are stale from then on, whichever master leads
        (a fence lives in one leader's memory). If that fails, the fence is all there is.
        """
        with self._inodes.hold(args["ino"]):
            reports = [r for r in args.get("chunks") or [] if r["ok"]]
            bumps = []
            if reports:
                with self._store.view() as ns:
                    current = {r["chunk_id"]: ns.chunk_info(r["chunk_id"]) for r in reports}
                with self._lock:
                    for r in reports:
                        info = current[r["chunk_id"]]
                        if info is None or r["version"] > info.version:
                            continue
                        if (info.ec is None) != (r.get("parts") is None):
                            log.warning("commit of chunk %d ignored: it reports %s, the chunk is in %s", r["chunk_id"],
                                        "copies" if r.get("parts") is None else "parts",
                                        "copies" if info.ec is None else "parts")
                            continue
                        told = self._leases.servers(r["chunk_id"], r["version"])
                        if info.ec is None:
                            missed = self._record(r["chunk_id"], r["version"], info.version, r["ok"])
                            missed |= not set(told) <= set(r["ok"])
                        else:
                            if len(set(r["parts"])) < info.ec[0]:
                                continue  # a failed session (EIO), as an empty `ok` for copies: fence nothing
                            missed = False
                            for p in classes.pieces(info.ec):
                                stored = [a for a, q in zip(r["ok"], r["parts"]) if q == p]
                                missed |= self._record(part_id(r["chunk_id"], p), r["version"], info.version, stored)
                                missed |= p < len(told) and told[p] != "" and told[p] not in stored
                        if missed and r["version"] == info.version:
                            bumps.append((r["chunk_id"], info.version, info.ec))
            for chunk_id, version, ec in bumps:
                try:
                    self._bump(chunk_id, version, None if ec is None else list(ec), "bump_version",
                               {"chunk_id": chunk_id, "version": version}, ROOT_CTX, dedup=False)
                except FsError as exc:
                    log.warning("chunk %d: the pieces that missed version %d are only fenced: %s", chunk_id,
                                version, exc)
            self.healer.note_commit(r["chunk_id"] for r in args.get("chunks") or [])
            try:
                return self._submit("commit_write", {"ino": args["ino"], "size": args["size"]}, ctx)
            finally:
                with self._lock:
                    for r in args.get("chunks") or []:
                        self._leases.release(r["chunk_id"], r["version"])

    def _record(self, stored_id: int, written: int, now: int, addresses: list[str]) -> bool:
        """A client stored version `written` of a piece on `addresses`: record them if that is
        the current version, and fence the piece's other copies that missed it (registry lock
        held). True if a copy of the piece is fenced at the current version: this one's, or the
        version's own (a copy whose set_version went unanswered, see _bump)."""
        if written == now and addresses:
            unknown = self._registry.record_copies(stored_id, now, addresses)
            if unknown:
                log.warning("commit of piece %d names unknown chunkservers %s", stored_id, unknown)
        self._registry.fence_missing(stored_id, written, now, addresses)
        return self._registry.has_fence(stored_id, now)

    def _setattr(self, args: dict, ctx: dict) -> dict:
        """setattr -> namespace result; a shrink inside a chunk adds the "servers" holding the tail.

        The copies of the cut chunk take the new version before the namespace logs it (EIO if
        none can). The client then truncates them to tail.length at that version and reports the
        ones that did via commit_write{ino, size: 0, chunks} (size 0 leaves the size alone).
        """
        size = args.get("size")
        if size is None:
            return self._submit("setattr", args, ctx)
        with self._inodes.hold(args["ino"]):
            # Another client's write of a chunk this size change may cut or free goes first.
            with self._lock:
                leased = self._leases.blockers_from(args["ino"], size // CHUNK_SIZE, self._request.client_id,
                                                    time.monotonic())
            self._check_leases(args["ino"], leased)
            cut = self._cut_chunk(args["ino"], size)
            if cut is None:
                result = self._submit("setattr", args, ctx)
                _expect(result, "setattr", result["tail"] is None)
                return result
            result, servers = self._bump(*cut, "setattr", args, ctx)
            tail = result["tail"]
            _expect(result, "setattr", tail is not None and (tail["chunk_id"], tail["version"]) == (cut[0], cut[1] + 1))
            tail["expect_version"] = tail["version"]
            tail["servers"] = servers
            self._lease(cut[0], args["ino"], size // CHUNK_SIZE, tail["version"], servers)
        return result

    def _cut_chunk(self, ino: int, size: int) -> tuple[int, int, list | None] | None:
        """(chunk_id, version, layout) of the chunk a shrink of `ino` to `size` cuts, or None."""
        if size % CHUNK_SIZE == 0:
            return None
        with self._store.view() as ns:
            try:
                if ns.query("getattr", {"ino": ino}, ROOT_CTX)["size"] <= size:
                    return None
                [ref] = ns.query("chunks", {"ino": ino, "index": size // CHUNK_SIZE}, ROOT_CTX)
            except FsError:
                return None  # not a regular file, or gone: the setattr itself reports it
        return (ref["chunk_id"], ref["version"], ref.get("ec")) if ref["chunk_id"] else None

    def _bump(self, chunk_id: int, version: int, ec: list | None, op: str, args: dict,
              ctx: dict, dedup: bool = True) -> tuple[dict, list[str]]:
        """Move the chunk's valid pieces (copies, or parts of layout `ec`) to version + 1, then
        log `op` (which makes that version).

        Returns the op's result and the addresses to write to: the copies at the new version, or
        for parts entry p the server of part p ("" if it has none at the new version). A chunk
        in parts needs k of them to move, or the write could leave it unreadable.
        """
        self.healer.note_write(chunk_id)
        with self._lock:
            if ec is None:
                pieces = [(s, chunk_id) for s in self._registry.holders(chunk_id, version)]
            else:
                pieces = [(s, part_id(chunk_id, p))
                          for p, s in enumerate(self._registry.part_holders(chunk_id, version, sum(ec))) if s]
        need = 1 if ec is None else ec[0]
        if len(pieces) < need:
            raise FsError(errno.EIO, f"no valid copy of chunk {chunk_id}" if ec is None else
                          f"chunk {chunk_id} has {len(pieces)} valid parts, needs {need}")
        moved, failures, busy = self._set_version(pieces, version, version + 1)
        if busy or len(moved) < need:
            # busy: a write session is open on a piece (one from before this master led: it holds
            # no lease for it); moving the others would fence that writer's pieces. Too few moved:
            # the chunk would be unreadable at the new version. Either way, move them back.
            _, stuck, _ = self._set_version(moved, version + 1, version)
            if stuck:
                log.warning("chunk %d: pieces left at version %d: %s", chunk_id, version + 1, "; ".join(stuck))
            if busy:
                raise FsError(errno.EAGAIN, f"chunk {chunk_id} is locked: a copy is being written "
                                            f"({'; '.join(failures)})")
            what = f"no valid copy of chunk {chunk_id}" if ec is None else \
                f"chunk {chunk_id}: {len(moved)} parts took the new version, needs {need}"
            raise FsError(errno.EIO, f"{what}: {'; '.join(failures)}")
        if failures:
            log.warning("chunk %d: pieces left out of version %d: %s", chunk_id, version + 1, "; ".join(failures))
        try:
            result = self._submit(op, args, ctx, dedup)
        except FsError:
            # Refused by the namespace: move the pieces back. Not after a store failure, when the
            # entry may be durable after all: pieces ahead of the namespace are valid, behind not.
            if self._store.failure is None:
                _, failures, _ = self._set_version(moved, version + 1, version)
                if failures:
                    log.warning("chunk %d: pieces left at version %d: %s", chunk_id, version + 1, "; ".join(failures))
            raise
        with self._lock:
            confirmed = {(server.server_id, stored) for server, stored in moved}
            for server, stored in pieces:
                if (server.server_id, stored) in confirmed:
                    self._registry.record_copies(stored, version + 1, [server.address])
                else:  # it may still take the version late, without the data
                    self._registry.fence(stored, version + 1, [server.server_id])
        if ec is None:
            return result, [s.address for s, _ in moved]
        servers = [""] * sum(ec)
        for server, stored in moved:
            servers[split_part_id(stored)[1]] = server.address
        return result, servers

    def _set_version(self, pieces: list[tuple[Server, int]], expect: int, version: int):
        """Ask the servers in parallel to move their piece (server, stored id) from `expect` to
        `version`.

        Returns (the pieces that confirmed, in the given order; "address: why" for the others;
        whether one refused because a write session is open on it).
        """
        calls = [
            (piece, self._pool.submit(self._chunkserver(piece[0].address).call, "set_version",
                                      {"chunk_id": piece[1], "expect_version": expect, "version": version}))
            for piece in pieces
        ]
        wait([f for _, f in calls], timeout=SET_VERSION_TIMEOUT_S)
        done, failures, busy = [], [], False
        for piece, future in calls:
            server = piece[0]
            if not future.done():
                failures.append(f"{server.address}: no answer within {SET_VERSION_TIMEOUT_S:g} s")
                continue
            try:
                future.result()
            except rpc.RpcError as exc:
                failures.append(f"{server.address}: {exc}")
                busy = busy or exc.status == rpc.ABORTED
            else:
                done.append(piece)
        return done, failures, busy

    def switch_layout(self, order: healing.Switch) -> bool:
        """Give a converted chunk its new layout: the pieces of that layout (complete at
        order.version, as the healer found) take version + 1, then set_layout is logged, which
        makes the same version in the namespace; the old pieces are then stale and deleted.
        False (nothing changed) if the chunk moved on meanwhile, is being written, or a piece
        did not take the version. Runs on the healer's thread."""
        chunk_id, version = order.chunk_id, order.version
        with self._store.view() as ns:
            info = ns.chunk_info(chunk_id)
        if info is None:
            return False
        with self._inodes.hold(info.ino):
            with self._store.view() as ns:
                info = ns.chunk_info(chunk_id)
            if info is None or info.version != version or info.target != order.ec or info.ec == info.target:
                return False
            with self._lock:
                if self._leases.blocker(chunk_id, 0, time.monotonic()) is not None:
                    return False
                pieces = [(s, stored) for stored in
                          ([chunk_id] if order.ec is None else [part_id(chunk_id, p) for p in classes.pieces(order.ec)])
                          for s in self._registry.holders(stored, version)]
            moved, failures, _ = self._set_version(pieces, version, version + 1)
            if failures:
                _, stuck, _ = self._set_version(moved, version + 1, version)
                left = f" (left at version {version + 1}: {'; '.join(stuck)})" if stuck else ""
                log.warning("chunk %d: conversion to %s waits: %s%s", chunk_id, _layout_name(order.ec),
                            "; ".join(failures), left)
                return False
            try:
                self._submit("set_layout", {"chunk_id": chunk_id, "version": version,
                                            "ec": None if order.ec is None else list(order.ec)}, ROOT_CTX)
            except (FsError, NotLeader) as exc:
                if self._store.failure is None:
                    self._set_version(moved, version + 1, version)
                log.warning("chunk %d: conversion to %s not logged: %s", chunk_id, _layout_name(order.ec), exc)
                return False
            with self._lock:
                for server, stored in moved:
                    self._registry.record_copies(stored, version + 1, [server.address])
                self._registry.recheck([chunk_id])
        log.info("chunk %d is now in %s (version %d)", chunk_id, _layout_name(order.ec), version + 1)
        return True

    def _chunkserver(self, address: str) -> rpc.Client:
        with self._lock:
            client = self._chunkservers.get(address)
            if client is None:
                client = self._chunkservers[address] = rpc.Client(
                    address, timeout_s=SET_VERSION_TIMEOUT_S, connect_timeout_s=SET_VERSION_TIMEOUT_S
                )
        return client

    def _chunks(self, args: dict, ctx: dict) -> list:
        """chunks{ino,index,count?} -> [{index, chunk_id, version, ec?, servers}] (valid copies, best
        first; for a chunk in parts, entry p is part p's server or "")."""
        refs = self._store.query("chunks", args, ctx)
        for ref in refs:
            ref["servers"] = self._servers_of(ref) if ref["chunk_id"] else []
        return refs

    def _open(self, args: dict, ctx: dict) -> dict:
        """open{ino, count?} -> {attr, chunks}: getattr and, for a regular file, `chunks` of its
        first `count` chunks (default 0) within its size: a client opening a file to read it
        needs both, so one round trip instead of two."""
        attr = self._store.query("getattr", {"ino": args["ino"]}, ctx)
        count = min(args.get("count", 0), -(-attr["size"] // CHUNK_SIZE), CHUNKS_MAX)
        refs = []
        if count and stat.S_ISREG(attr["mode"]):
            refs = self._chunks({"ino": args["ino"], "index": 0, "count": count}, ctx)
        return {"attr": attr, "chunks": refs}

    def _fileinfo(self, args: dict, ctx: dict) -> dict:
        """fileinfo{ino} -> {attr, class, progress, chunks: [{index, chunk_id, version, ec, target,
        state, copies: [...]}]}: every piece of each chunk (a full copy is part -1), whether it is
        valid and its state (see _copy_state); `target` is the layout the chunk converts to
        (== ec: none), `progress` how many chunks are in the layout their class asks for."""
        with self._store.view() as ns:
            attr = ns.query("getattr", args, ctx)
            sclass = ns.storage_class(attr["sclass"])
            refs = []
            if stat.S_ISREG(attr["mode"]):
                for index in range(0, -(-attr["size"] // CHUNK_SIZE), CHUNKS_MAX):
                    refs += ns.query("chunks", {"ino": args["ino"], "index": index, "count": CHUNKS_MAX}, ctx)
            refs = [r for r in refs if r["chunk_id"]]
            infos = [ns.chunk_info(r["chunk_id"]) for r in refs]
            wanted = {stored: ns.piece_version(stored) for r in refs
                      for stored in self._registry_pieces(r["chunk_id"])}
        chunks = []
        with self._lock:
            for ref, info in zip(refs, infos):
                copies = []
                for stored in self._registry.pieces(ref["chunk_id"]):
                    for server, copy in self._registry.copies(stored):
                        valid = wanted.get(stored) is not None and self._registry.is_valid(
                            stored, server, copy, ref["version"])
                        copies.append({
                            "part": split_part_id(stored)[1],
                            "server_id": server.server_id,
                            "address": server.address,
                            "disk": copy.disk,
                            "version": copy.version,
                            "valid": valid,
                            "state": _copy_state(valid, server, copy, ref["version"], wanted.get(stored) is None),
                        })  # fmt: skip
                target = None if info.target is None else list(info.target)
                state = self._registry.classify(ref["chunk_id"], info.version, info.goal, info.ec)
                chunks.append({**ref, "ec": ref.get("ec"), "target": target, "state": state, "copies": copies})
        done = sum(1 for info in infos if info.ec == info.target)
        return {"attr": attr, "class": sclass.to_dict(), "chunks": chunks,
                "progress": {"converted": done, "total": len(infos)}}

    def _registry_pieces(self, chunk_id: int) -> list[int]:
        with self._lock:
            return self._registry.pieces(chunk_id)

    def _statfs(self, args: dict, ctx: dict) -> dict:
        """statfs{} -> namespace counts + byte totals over the live chunkservers' healthy disks."""
        result = self._store.query("statfs", args, ctx)
        with self._lock:
            cap = self._registry.capacity()
        result.update(total_bytes=cap.total, used_bytes=cap.used, free_bytes=cap.free)
        return result

    def _status(self, args: dict, ctx: dict) -> dict:
        """status{} -> this master, every chunkserver, chunk states per class."""
        with self._store.view() as ns:
            inodes = ns.inode_count
        total, by_class = self.chunk_states()
        with self._store.view() as ns:
            for sclass in ns.classes:  # every class has its row, also before it has chunks
                by_class.setdefault(sclass.name, dict.fromkeys(STATES, 0))
        metadata = self._metadata_counters()
        now = time.monotonic()
        with self._lock:
            servers = [_server_status(s, now) for s in self._registry.servers()]
            cap = self._registry.capacity()
        return {
            "master": {"node_id": self._node_id, "role": "leader", "metadata": metadata,
                       "raft": self._raft_status() if self._raft_status is not None else None},
            "chunkservers": servers,
            "chunks": {"total": total, "by_class": by_class, "replication": self.healer.snapshot()},
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

    def chunk_states(self) -> tuple[int, dict[str, dict[str, int]]]:
        """(chunks in the namespace, chunks per class and state): costs a little per chunk changed
        since the last call, nothing per chunk (see registry.py)."""
        with self._store.view() as ns, self._lock:
            self._registry.follow(ns)
            return ns.chunk_count, self._registry.chunk_states()

    def _settle_for_healer(self) -> int:
        """Settle the chunk states; return the namespace's next chunk id (the sweep's bound)."""
        with self._store.view() as ns, self._lock:
            self._registry.follow(ns)
            return ns.next_chunk_id

    def gauges(self) -> Gauges:
        """What Prometheus scrapes: the counts kept up to date, and the registry's servers now.

        Chunk states are the leader's: a follower's registry is empty (chunkservers register
        with the leader only), so it would count every chunk missing. It exports none.
        """
        total, by_class = self.chunk_states()
        if self._store.is_leader():
            with self._store.view() as ns:
                for sclass in ns.classes:  # every class has its series, also before it has chunks
                    by_class.setdefault(sclass.name, dict.fromkeys(STATES, 0))
        else:
            by_class = {}
        index = self._store.last_index
        with self._lock:
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
            disks = [d for s in servers if s.alive for d in s.disks]
            damaged = sum(1 for d in disks if not d.healthy)
        replication = self.healer.snapshot()
        raft = self._raft_status() if self._raft_status is not None else {}
        return Gauges(
            leader=self._store.is_leader(),
            log_index=index,
            raft=raft,
            chunks_total=total,
            chunk_states=by_class,
            chunkservers={"up": alive, "down": len(servers) - alive},
            bytes_read=bytes_read,
            bytes_written=bytes_written,
            disk_bytes=disk_bytes,
            disks={"ok": len(disks) - damaged, "damaged": damaged},
            replication=replication,
        )

    # --- chunkserver protocol ---

    def _register(self, params: dict, data, peer: str) -> dict:
        """register{cluster_id, server_id, address, disks, chunks} -> {session}."""
        if not self._store.is_leader():
            raise self._not_leader("register", self._store.leader_address())
        try:
            _check("register", REGISTER, params)
            if params["server_id"] == 0:
                raise ValueError("register: server_id must be 1 or more")
            try:
                wire.parse_addr(params["address"])
            except ValueError as exc:
                raise ValueError(f"register: address: {exc}") from None
        except ValueError as exc:
            raise _invalid(exc) from None
        server_id, address = params["server_id"], params["address"]
        disks = [_disk(d) for d in params["disks"]]
        chunks = [_ref(c) for c in params["chunks"]]
        try:
            with self._lock:
                session = self._registry.register(
                    params["cluster_id"], server_id, address, disks, chunks, time.monotonic()
                )
        except ForeignCluster as exc:
            log.error("refused registration: %s", exc)
            raise rpc.RpcError(rpc.FAILED_PRECONDITION, str(exc)) from None
        except DuplicateServer as exc:
            log.error("refused registration: %s", exc)
            raise rpc.RpcError(rpc.ALREADY_EXISTS, str(exc)) from None
        log.info(
            "chunkserver %d registered from %s: %d disks, %d chunks, session %d",
            server_id, address, len(disks), len(chunks), session,
        )  # fmt: skip
        return {"session": session}

    def _heartbeat(self, params: dict, data, peer: str) -> dict:
        """heartbeat{server_id, session, disks, added, removed, bytes_read, bytes_written, damaged?,
        replicated?, built?} -> {reregister, delete: [{chunk_id, version, disk (None: not known)}],
        replicate: [{chunk_id, version, source}], build: [...]} (the healer's orders for this
        server; chunk ids here are stored ids, a part's for a part)."""
        if not self._store.is_leader():
            raise self._not_leader("heartbeat", self._store.leader_address())
        try:
            _check("heartbeat", HEARTBEAT, params)
        except ValueError as exc:
            raise _invalid(exc) from None
        server_id = params["server_id"]
        now = time.monotonic()
        damaged = [_ref(c) for c in params.get("damaged") or []]
        with self._lock:
            ok = self._registry.heartbeat(
                server_id,
                params["session"],
                [_disk(d) for d in params["disks"]],
                [_ref(c) for c in params["added"]],
                [_ref(c) for c in params["removed"]],
                params["bytes_read"],
                params["bytes_written"],
                now,
                damaged,
            )
        if not ok:
            log.info("chunkserver %d has no valid session: asking it to register again", server_id)
            return {"reregister": True, "delete": [], "replicate": [], "build": []}
        for ref in damaged:
            log.warning("chunkserver %d reports its copy of chunk %d (version %d) damaged", server_id,
                        ref.chunk_id, ref.version)
        self.healer.report(server_id, params.get("replicated") or [])
        self.healer.report_built(server_id, params.get("built") or [])
        with self._store.view() as ns, self._lock:
            deletes = self._registry.deletions(server_id, ns.piece_version)
        if deletes:
            log.info("chunkserver %d: %d pieces to delete (unknown, stale, not of the layout, damaged or over goal)",
                     server_id, len(deletes))
        return {
            "reregister": False,
            "delete": [{"chunk_id": c.chunk_id, "version": c.version, "disk": c.disk} for c in deletes],
            "replicate": self.healer.take(server_id),
            "build": self.healer.take_builds(server_id),
        }

    def _chunk_table(self, chunk_ids: Iterable[int]) -> list[tuple[int, object]]:
        """(chunk_id, namespace.ChunkInfo) of those of the chunks the namespace has, for the healer."""
        out = []
        with self._store.view() as ns:
            for chunk_id in chunk_ids:
                info = ns.chunk_info(chunk_id)
                if info is not None:
                    out.append((chunk_id, info))
        return out


def _expect(result, op: str, holds: bool) -> None:
    """The inode lock makes a logged op do what was prepared for it; anything else is a bug."""
    if not holds:
        raise RuntimeError(f"{op} did not do what was prepared for it: {result!r:.300}")


def _layout_name(ec) -> str:
    return "copies" if ec is None else f"{ec[0]}+{ec[1]} parts"


def _disk(d: dict) -> Disk:
    return Disk(d["index"], d["path"], d["total_bytes"], d["used_bytes"], d["free_bytes"], d["state"], d["chunks"])


def _ref(c: dict) -> ChunkRef:
    return ChunkRef(c["chunk_id"], c["version"], c["disk"], c.get("length") or 0, bool(c.get("damaged")))


def _copy_state(valid: bool, server, copy, version: int, unwanted: bool = False) -> str:
    """How fileinfo marks a copy (or part): valid, or why not."""
    if valid:
        return "valid"
    if unwanted:
        return "unwanted"
    if copy.damaged:
        return "damaged"
    if not server.alive:
        return "server down"
    if copy.version < version:
        return "stale"
    disk = server.disk(copy.disk)
    return "disk damaged" if disk is not None and not disk.healthy else "fenced"


def _server_status(s, now: float) -> dict:
    healthy = [d for d in s.disks if d.healthy]
    return {
        "server_id": s.server_id,
        "address": s.address,
        "state": "alive" if s.alive else "down",
        "last_heartbeat_s": round(now - s.last_seen, 3),
        "chunks": len(s.chunks),
        "total_bytes": sum(d.total for d in healthy),
        "used_bytes": sum(d.used for d in healthy),
        "free_bytes": sum(d.free for d in healthy),
        "disks": [
            {"index": d.index, "path": d.path, "state": d.state, "chunks": d.chunks,
             "total_bytes": d.total, "used_bytes": d.used, "free_bytes": d.free}
            for d in s.disks
        ],
    }  # fmt: skip
