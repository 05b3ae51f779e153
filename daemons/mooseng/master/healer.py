"""The replication manager's thread on the master: runs healing.plan, tracks what is under way.

Every `interval_s` on the leader, and as soon as a replication ends (is_leader(): a follower neither plans nor sends), it builds the
chunk view from the namespace and the registry, plans, takes over-goal copies out of the registry
(they go out as heartbeat `delete`s) and queues replications for their target chunkservers,
which get them in their next heartbeat reply as `replicate: [{chunk_id, version, source}]`. The
target reports each one in a later heartbeat (`replicated: [{chunk_id, version, bytes, error}]`,
the new copy itself in `added`). A replication not reported within `timeout_s`, or whose source
or target went down, counts as failed and the chunk is planned again.

A chunk being written is left alone (note_write() when the master hands out a write session or a
cut, note_commit() when the client reports it, or WRITE_GRACE_S later): a copy pulled while a
client still writes at the same version would lack the end of that write and could be reported
after the client's commit, too late to be fenced.

A pass does not look at every chunk: it takes the chunks the registry's incremental accounting
says have work (Registry.attention(): under goal with a valid copy, over goal, damaged copies),
plus a slice of `sweep_chunks` chunk ids that moves on every pass and wraps around: a safety net
for a chunk the accounting missed, and the candidates for rebalancing (only chunks at goal move,
so a slice is enough to keep a few moves under way). A pass thus costs per chunk needing work,
and the sweep a bounded amount per second whatever the size of the namespace.

Planning starts `start_delay_s` after this master became the leader, so that chunkservers have
re-registered (otherwise a restarted master would see every chunk under goal and copy it again).

Erasure-coded chunks and conversions go the same way: `build` orders ({chunk_id, version, ec,
part, sources: [{part, address}], length}) in the target's heartbeat reply, reported back as
`built: [{chunk_id, part, version, bytes, error}]`; a plan's `Switch`es go to the `switch`
callback (the service: new version on the new pieces, then set_layout through Raft), outside the
registry lock.
"""

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mooseng.ec import part_id, split_part_id
from mooseng.master import healing
from mooseng.master.registry import Registry

log = logging.getLogger(__name__)

# A write session's chunkservers give up on it after 60 s idle (chunkserver/service.py): after that
# no more data can land at its version, committed or not.
WRITE_GRACE_S = 60.0


@dataclass(frozen=True)
class Settings:
    interval_s: float = 1.0
    timeout_s: float = 300.0
    start_delay_s: float = 10.0
    sweep_chunks: int = 2000  # chunk ids the safety-net sweep looks at per pass
    limits: healing.Limits = healing.Limits()


@dataclass
class _Job:
    order: healing.Replicate | healing.Build
    started: float
    sent: bool = False

    @property
    def servers(self) -> set[int]:
        """Every server the job reads from or writes to."""
        o = self.order
        if isinstance(o, healing.Build):
            return {o.target, *(sid for _, sid in o.sources)}
        return {o.source, o.target}


@dataclass
class Counters:
    chunks: int = 0
    bytes: int = 0
    failures: int = 0
    built: int = 0  # parts or copies made by build orders (rebuilds and conversions)
    built_bytes: int = 0
    build_failures: int = 0
    conversions: int = 0  # chunks that took a new layout


class Healer:
    def __init__(self, registry: Registry, lock: threading.Lock, settle: Callable[[], int],
                 chunk_table: Callable[[Iterable[int]], Iterable[tuple[int, int, int]]],
                 is_leader: Callable[[], bool], settings: Settings, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 switch: Callable[[healing.Switch], bool] | None = None):
        """`settle()` brings the registry's chunk states up to date with the namespace and returns
        the namespace's next chunk id; `chunk_table(ids)` -> (chunk_id, namespace.ChunkInfo) of
        those of the chunks that the namespace has; `lock` guards the registry (and this object's
        state); `switch(order)` gives a converted chunk its new layout (True when it did)."""
        self._switch = switch
        self._registry = registry
        self._lock = lock
        self._settle = settle
        self._chunk_table = chunk_table
        self._cursor = 1  # where the next sweep slice starts
        self._is_leader = is_leader
        self.settings = settings
        self._rng = rng or random.Random()
        self._clock = clock
        self._jobs: dict[tuple[int, int], _Job] = {}  # (chunk_id, target server id) -> job
        self._leader_since: float | None = None
        self._writing: dict[int, float] = {}  # chunk_id -> when its write session is over at the latest
        self.counters = Counters()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a replication ended: plan the next ones now
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="healer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # a bug here must not end healing for good
                log.exception("replication planning failed")

    # --- one round ---

    def run_once(self) -> healing.Plan | None:
        """Plan and queue one round; None when this master does not plan (follower, start delay)."""
        now = self._clock()
        limit = self._settle()  # on every master: keeps the counts' backlog of changes short
        if not self._is_leader():
            with self._lock:
                self._leader_since = None
                self._jobs.clear()
            return None
        if self._leader_since is None:
            self._leader_since = now
        if now - self._leader_since < self.settings.start_delay_s:
            return None
        with self._lock:
            wanted = self._registry.attention()
        wanted.update(self._sweep(limit))
        table = list(self._chunk_table(wanted))
        with self._lock:
            self._expire_jobs(now)
            for chunk_id, until in list(self._writing.items()):
                if until <= now:
                    del self._writing[chunk_id]
            table = [t for t in table if t[0] not in self._writing]
            servers = self._registry.servers()
            # A missing chunk (no valid copy) gives the planner nothing to copy or delete, and in
            # the usual state (nothing to rebalance) a chunk at goal with no damaged copy needs
            # nothing: leave them out.
            everything = healing.needs_rebalance(servers, self.settings.limits)
            pieces = [self._piece_view(chunk_id, info) for chunk_id, info in table
                      if info.ec is not None or info.target is not None]
            table = [(chunk_id, info.version, info.goal) for chunk_id, info in table
                     if info.ec is None and info.target is None]
            views = []
            surveyed = self._registry.survey((chunk_id, version) for chunk_id, version, _ in table)
            for (chunk_id, version, goal), (valid, held) in zip(table, surveyed):
                if not valid:
                    continue
                damaged = tuple(sorted(sid for sid, c in held.items() if c.damaged))
                if len(valid) == goal and not damaged and not everything:
                    continue
                views.append(healing.ChunkView(
                    chunk_id, version, goal, tuple(valid), tuple(sorted(held)),
                    max((c.length for c in held.values()), default=0),
                    tuple(sorted(sid for sid, c in held.items() if c.returned)), damaged))
            inflight: dict[int, int] = {}
            busy: dict[int, int] = {}
            rebalancing: dict[int, int] = {}
            for (stored, _), job in self._jobs.items():
                inflight[stored] = inflight.get(stored, 0) + 1
                for sid in job.servers:
                    busy[sid] = busy.get(sid, 0) + 1
                    if isinstance(job.order, healing.Replicate) and job.order.rebalance:
                        rebalancing[sid] = rebalancing.get(sid, 0) + 1
            plan = healing.plan(views, servers, inflight=inflight, busy=busy, rebalancing=rebalancing,
                                limits=self.settings.limits, rng=self._rng, pieces=pieces)
            for order in plan.replicate:
                self._jobs[(order.chunk_id, order.target)] = _Job(order, now)
            for order in plan.build:
                self._jobs[(order.stored_id, order.target)] = _Job(order, now)
            for delete in plan.delete:
                self._registry.order_delete(delete.server, delete.chunk_id)
        if plan.replicate or plan.delete or plan.build:
            repairs = sum(1 for r in plan.replicate if not r.rebalance)
            rebuilds = sum(1 for b in plan.build if not b.conversion)
            log.info("replication: %d repairs, %d rebalancing moves, %d rebuilds, %d conversion builds, "
                     "%d pieces to delete", repairs, len(plan.replicate) - repairs, rebuilds,
                     len(plan.build) - rebuilds, len(plan.delete))
        for order in plan.switch:
            if self._switch is not None and self._switch(order):
                with self._lock:
                    self.counters.conversions += 1
        return plan

    def _piece_view(self, chunk_id: int, info) -> healing.PieceView:
        """The registry's view of a chunk in parts or converting (caller holds the lock)."""
        valid, holders, damaged, returned = {}, {}, [], []
        stored_ids = self._registry.pieces(chunk_id)
        for stored, (sids, held) in zip(stored_ids, self._registry.survey((s, info.version) for s in stored_ids)):
            part = split_part_id(stored)[1]
            if sids:
                valid[part] = tuple(sids)
            holders[part] = tuple(sorted(held))
            damaged += [(part, sid) for sid, c in held.items() if c.damaged]
            returned += [(part, sid) for sid, c in held.items() if c.returned]
        return healing.PieceView(chunk_id, info.version, info.ec, info.target, info.copies, valid, holders,
                                 info.length, tuple(sorted(damaged)), tuple(sorted(returned)))

    def _sweep(self, limit: int) -> range:
        """The next slice of chunk ids below `limit` for the safety-net sweep."""
        if self._cursor >= limit:
            self._cursor = 1
        ids = range(self._cursor, min(self._cursor + self.settings.sweep_chunks, limit))
        self._cursor = ids.stop
        return ids

    def _expire_jobs(self, now: float) -> None:
        alive = {s.server_id for s in self._registry.servers() if s.alive}
        for key, job in list(self._jobs.items()):
            order = job.order
            if not job.servers <= alive:
                why = "its source or target went down"
            elif now - job.started > self.settings.timeout_s:
                why = f"no report within {self.settings.timeout_s:g} s"
            else:
                continue
            del self._jobs[key]
            if isinstance(order, healing.Build):
                self.counters.build_failures += 1
                log.warning("build of part %d of chunk %d on %d failed: %s", order.part, order.chunk_id,
                            order.target, why)
                continue
            self.counters.failures += 1
            log.warning("replication of chunk %d from %d to %d failed: %s", order.chunk_id, order.source,
                        order.target, why)

    def note_write(self, chunk_id: int) -> None:
        """A write session (or a cut) of the chunk starts: leave it alone until note_commit()."""
        with self._lock:
            self._writing[chunk_id] = self._clock() + WRITE_GRACE_S

    def note_commit(self, chunk_ids: Iterable[int]) -> None:
        """The client reported these chunks' write sessions over."""
        with self._lock:
            for chunk_id in chunk_ids:
                self._writing.pop(chunk_id, None)

    def snapshot(self) -> dict:
        """Counters since this master started, and the replications under way now."""
        with self._lock:
            c = self.counters
            builds = sum(1 for j in self._jobs.values() if isinstance(j.order, healing.Build))
            return {"chunks": c.chunks, "bytes": c.bytes, "failures": c.failures,
                    "in_progress": len(self._jobs) - builds, "built": c.built, "built_bytes": c.built_bytes,
                    "build_failures": c.build_failures, "builds_in_progress": builds,
                    "conversions": c.conversions}

    # --- the heartbeat's side ---

    def take(self, server_id: int) -> list[dict]:
        """The replications this server is to run, each handed out once: [{chunk_id, version, source}]."""
        with self._lock:
            out = []
            servers = {s.server_id: s for s in self._registry.servers()}
            for (_, target), job in self._jobs.items():
                if target != server_id or job.sent or not isinstance(job.order, healing.Replicate):
                    continue
                source = servers.get(job.order.source)
                if source is None:
                    continue
                job.sent = True
                out.append({"chunk_id": job.order.chunk_id, "version": job.order.version, "source": source.address})
            return out

    def take_builds(self, server_id: int) -> list[dict]:
        """The build orders this server is to run, each handed out once (DESIGN.md's format)."""
        with self._lock:
            out = []
            address = {s.server_id: s.address for s in self._registry.servers()}
            for (_, target), job in self._jobs.items():
                o = job.order
                if target != server_id or job.sent or not isinstance(o, healing.Build):
                    continue
                if any(sid not in address for _, sid in o.sources):
                    continue
                job.sent = True
                out.append({"chunk_id": o.chunk_id, "version": o.version, "ec": list(o.ec), "part": o.part,
                            "sources": [{"part": p, "address": address[sid]} for p, sid in o.sources],
                            "length": o.length})
            return out

    def report_built(self, server_id: int, results: Iterable[dict]) -> None:
        """Builds the server finished: {chunk_id, part, version, bytes, error ('' when it worked)}."""
        with self._lock:
            for r in results:
                stored = r["chunk_id"] if r["part"] < 0 else part_id(r["chunk_id"], r["part"])
                job = self._jobs.pop((stored, server_id), None)
                if r["error"]:
                    self.counters.build_failures += 1
                    log.warning("build of part %d of chunk %d on chunkserver %d failed: %s", r["part"],
                                r["chunk_id"], server_id, r["error"])
                elif job is not None:
                    self.counters.built += 1
                    self.counters.built_bytes += r["bytes"]
                self._wake.set()

    def report(self, server_id: int, results: Iterable[dict]) -> None:
        """Replications the server finished: {chunk_id, version, bytes, error ('' when it worked)}."""
        with self._lock:
            for r in results:
                job = self._jobs.pop((r["chunk_id"], server_id), None)
                if r["error"]:
                    self.counters.failures += 1
                    log.warning("replication of chunk %d to chunkserver %d failed: %s", r["chunk_id"], server_id,
                                r["error"])
                elif job is not None:
                    self.counters.chunks += 1
                    self.counters.bytes += r["bytes"]
                self._wake.set()
