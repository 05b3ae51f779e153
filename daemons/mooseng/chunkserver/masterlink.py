"""Register with the master, then heartbeat: disks, chunk deltas, byte counters; run its orders.

The master speaks rpc.py (docs/DESIGN.md "Transport"): `register{cluster_id, server_id, address,
disks, chunks} -> {session}` and `heartbeat{server_id, session, disks, added, removed, damaged,
replicated, built, bytes_read, bytes_written} -> {reregister, delete, replicate, build}`. Deletes
run at once; replications go to the Replicator and builds of erasure-coded parts to the Builder,
whose outcomes ride on a later heartbeat (`built` only when there is one); a finished one sends
that heartbeat at once (wake()) rather than at the next interval.

Any failure (master down, not the leader, refused, lost session) drops the session, and the next
contact is a full register, with every chunk held, to the next address in master_addrs. So change
deltas taken for a heartbeat that failed need no replay: the registration carries the whole state.
Failures are logged once per change of state, not once per beat.
"""

import logging
import threading
import time

from mooseng import rpc
from mooseng.chunkserver.builder import Builder
from mooseng.chunkserver.replicator import Replicator
from mooseng.chunkserver.store import ChunkInfo, ChunkStore, DiskStat
from mooseng.errors import FsError

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 30.0  # the request carries every chunk held
CONNECT_TIMEOUT_S = 2.0


def _ref(chunk: ChunkInfo) -> dict:
    ref = {"chunk_id": chunk.chunk_id, "version": chunk.version, "disk": chunk.disk, "length": chunk.length}
    if chunk.damaged:
        ref["damaged"] = True
    return ref


def _disk(disk: DiskStat) -> dict:
    return {
        "index": disk.index, "path": disk.path, "total_bytes": disk.total_bytes, "used_bytes": disk.used_bytes,
        "free_bytes": disk.free_bytes, "state": disk.state, "chunks": disk.chunks,
    }  # fmt: skip


class MasterLink:
    """The chunkserver's side of register/heartbeat, in its own thread (start/stop)."""

    def __init__(self, store: ChunkStore, *, cluster_id: str, server_id: int, address: str,
                 master_addrs: list[str], interval_s: float, replicator: Replicator | None = None,
                 builder: Builder | None = None):
        self._store = store
        self._replicator = replicator
        self._builder = builder
        self._cluster_id = cluster_id
        self._server_id = server_id
        self._address = address
        self._masters = [
            rpc.Client(addr, timeout_s=max(2.0, 3 * interval_s), connect_timeout_s=CONNECT_TIMEOUT_S)
            for addr in master_addrs
        ]
        self._interval = interval_s
        self._current = 0  # index in _masters of the master we talk to
        self._session: int | None = None
        self._state = ""  # the state last logged, e.g. "registered 127.0.0.1:9421" or "down"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="masterlink", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Send the next heartbeat now."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for master in self._masters:
            master.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._beat()
            except Exception:  # a bug here must not end the reporting for good
                log.exception("heartbeat failed unexpectedly")
                self._session = None
            self._wake.wait(max(0.0, self._interval - (time.monotonic() - started)))
            self._wake.clear()

    def _beat(self) -> None:
        """One round: a heartbeat if registered (then run the master's deletes), else register."""
        if self._session is not None and not self._heartbeat():
            self._session = None
        if self._session is None:
            self._register()

    def _heartbeat(self) -> bool:
        master = self._masters[self._current]
        # Outcomes before changes: a replication reported done must have its new copy in `added`.
        replicated = self._replicator.take_results() if self._replicator else []
        built = self._builder.take_results() if self._builder else []
        added, removed = self._store.take_changes()
        params = {
            "server_id": self._server_id, "session": self._session,
            "disks": [_disk(d) for d in self._store.disk_stats()],
            "added": [_ref(c) for c in added], "removed": [_ref(c) for c in removed],
            "damaged": [_ref(c) for c in self._store.take_damaged()],
            "replicated": replicated,
            "bytes_read": self._store.bytes_read, "bytes_written": self._store.bytes_written,
        }  # fmt: skip
        if built:
            params["built"] = built
        try:
            reply, _ = master.call("heartbeat", params)
        except rpc.RpcError as exc:
            self._log_state(f"lost {master.addr}", logging.WARNING, f"lost master {master.addr} ({exc}): registering again")
            self._current = (self._current + 1) % len(self._masters)
            return False
        if reply["reregister"]:
            self._log_state(f"reregister {master.addr}", logging.INFO, f"master {master.addr} asked for a new registration")
            return False
        for ref in reply["delete"]:
            try:
                if self._store.delete(ref["chunk_id"], ref["version"]):
                    log.info("deleted chunk %016X version %d as the master asked", ref["chunk_id"], ref["version"])
            except FsError as exc:
                log.warning("could not delete chunk %016X: %s", ref["chunk_id"], exc)
        orders = reply.get("replicate") or []
        if orders and self._replicator is not None:
            self._replicator.submit(orders)
        builds = reply.get("build") or []
        if builds and self._builder is not None:
            self._builder.submit(builds)
        return True

    def _register(self) -> None:
        """Try every master once, starting with the current one."""
        self._store.take_changes()  # the full list below supersedes them
        chunks = [_ref(c) for c in self._store.chunks()]
        params = {
            "cluster_id": self._cluster_id, "server_id": self._server_id, "address": self._address,
            "disks": [_disk(d) for d in self._store.disk_stats()], "chunks": chunks,
        }  # fmt: skip
        failures = []
        for _ in range(len(self._masters)):
            if self._stop.is_set():
                return
            master = self._masters[self._current]
            try:
                reply, _ = master.call("register", params, timeout_s=REGISTER_TIMEOUT_S)
            except rpc.RpcError as exc:
                failures.append(f"{master.addr}: {exc}")
                self._current = (self._current + 1) % len(self._masters)
                continue
            self._session = reply["session"]
            self._log_state(
                f"registered {master.addr}", logging.INFO,
                f"registered with master {master.addr} (session {self._session}, {len(chunks)} chunks)",
            )  # fmt: skip
            return
        self._log_state("down", logging.ERROR, f"no master accepts this chunkserver, retrying: {'; '.join(failures)}")

    def _log_state(self, state: str, level: int, message: str) -> None:
        if state != self._state and not self._stop.is_set():
            self._state = state
            log.log(level, "%s", message)
