"""The replication manager's decisions: which chunks to copy where, and which copies to delete.

Pure: plan() takes the registry's view (the servers; per chunk its goal, valid copies and every
holder) and what is already under way, and returns ordered actions. master/healer.py runs it on
the leader every second and hands the actions to the chunkservers in heartbeat replies; the
target chunkserver pulls the chunk from the source (chunkserver to chunkserver, never through the
master). tests/unit/test_healing.py drives it through simulated failures.

The order, as MooseFS does it:
1. Repairs. Chunks below their goal with at least one valid copy, the most endangered first
   (one copy left, then the lowest share of the goal). A missing chunk (no valid copy) cannot be
   repaired from anywhere and is only counted.
2. Deletions. A damaged copy goes once its chunk is at goal without it. A chunk with more valid
   copies than its goal and no replication under way loses its extra copies: first those that
   came back with a server's registration (a server that was down while the chunk was repaired
   elsewhere: its copies are the extra ones, and are deleted rather than read), then those on
   the fullest servers.
3. Rebalancing, only while no chunk is under or over its goal: a chunk moves from the fullest
   server to the emptiest while their usage (used / total over healthy disks) differs by more than the
   threshold; a move is a replication, and the extra copy it makes is then deleted by rule 2 from
   the fullest holder. A move is made only if it narrows the gap, so usage never oscillates.

Rate: a server takes part in at most `per_server` replications ordered and not yet done (as source
or target), of which at most `rebalance_per_server` are rebalancing moves; the chunkserver runs a
few of its orders at once and bounds the bytes per second they pull (replicator.py), so orders
queue there rather than wait for a heartbeat round trip each. Placement is the rule for new chunks (placement.choose: distinct live
servers with room, emptiest first), excluding every server that holds any copy of the chunk, even
a stale one waiting for its deletion; the target chunkserver picks the disk as for a new chunk.
Erasure-coded chunks (fragments, priority at exactly k left) join when the EC data path lands.
"""

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mooseng.errors import FsError
from mooseng.master import placement
from mooseng.master.registry import Server


@dataclass(frozen=True)
class ChunkView:
    """One chunk as the registry sees it."""

    chunk_id: int
    version: int
    goal: int
    valid: tuple[int, ...]  # ids of the servers with a valid copy
    holders: tuple[int, ...]  # ids of the servers with any copy (valid, stale, damaged)
    length: int = 0  # data bytes, as far as known
    returned: tuple[int, ...] = ()  # servers whose copy came back with their registration
    damaged: tuple[int, ...] = ()  # servers whose copy failed a CRC check there


@dataclass(frozen=True)
class Replicate:
    """`target` pulls `chunk_id` at `version` from `source`."""

    chunk_id: int
    version: int
    source: int
    target: int
    length: int
    rebalance: bool = False


@dataclass(frozen=True)
class Delete:
    chunk_id: int
    server: int


@dataclass(frozen=True)
class Limits:
    per_server: int = 32
    rebalance_per_server: int = 1
    rebalance_threshold: float = 0.01  # allowed usage spread between servers, as a fraction


@dataclass
class Plan:
    replicate: list[Replicate] = field(default_factory=list)
    delete: list[Delete] = field(default_factory=list)


def usage(server: Server) -> tuple[int, int] | None:
    """(used, total) bytes over the server's healthy disks; None without a healthy disk."""
    healthy = [d for d in server.disks if d.healthy]
    total = sum(d.total for d in healthy)
    return (sum(d.used for d in healthy), total) if total else None


def needs_rebalance(servers: Sequence[Server], limits: Limits) -> bool:
    """Whether the usage of the live servers is spread wider than the threshold allows."""
    ratios = [u[0] / u[1] for s in servers if s.alive and (u := usage(s)) is not None]
    return (limits.rebalance_per_server > 0 and len(ratios) > 1
            and max(ratios) - min(ratios) > limits.rebalance_threshold)


def plan(
    chunks: Iterable[ChunkView],
    servers: Sequence[Server],
    *,
    inflight: Mapping[int, int],
    busy: Mapping[int, int],
    rebalancing: Mapping[int, int],
    limits: Limits,
    rng: random.Random,
) -> Plan:
    """The actions to take now.

    `inflight`: chunk id -> replications of it under way (each counts as a copy to come);
    `busy`: server id -> replications under way it takes part in; `rebalancing`: server id ->
    rebalancing moves among those.
    """
    alive = {s.server_id: s for s in servers if s.alive}
    busy = {sid: busy.get(sid, 0) for sid in alive}
    rebalancing = {sid: rebalancing.get(sid, 0) for sid in alive}
    out = Plan()
    repairs, extra, stable = [], [], []
    for chunk in chunks:
        coming = inflight.get(chunk.chunk_id, 0)
        have = len(chunk.valid)
        if 0 < have and have + coming < chunk.goal:
            repairs.append(chunk)
        elif have > chunk.goal and not coming:
            extra.append(chunk)
        elif have == chunk.goal and not coming:
            stable.append(chunk)
        if have >= chunk.goal:
            out.delete += [Delete(chunk.chunk_id, sid) for sid in chunk.damaged]
    repairs.sort(key=lambda c: (len(c.valid) > 1, len(c.valid) / c.goal, c.chunk_id))
    for chunk in repairs:
        _repair(chunk, inflight.get(chunk.chunk_id, 0), alive, busy, limits, rng, out)
    for chunk in sorted(extra, key=lambda c: c.chunk_id):
        ranked = sorted(chunk.valid, key=lambda sid: (sid in chunk.returned, _ratio(alive[sid]), sid), reverse=True)
        out.delete += [Delete(chunk.chunk_id, sid) for sid in ranked[: len(chunk.valid) - chunk.goal]]
    if not repairs and not extra:  # usage is about to change: measure it again first
        _rebalance(stable, alive, busy, rebalancing, limits, out)
    return out


def _repair(chunk: ChunkView, coming: int, alive: dict[int, Server], busy: dict[int, int], limits: Limits,
            rng: random.Random, out: Plan) -> None:
    taken = set(chunk.holders)
    for _ in range(chunk.goal - len(chunk.valid) - coming):
        sources = [sid for sid in chunk.valid if busy[sid] < limits.per_server]
        if not sources:
            return
        source = min(sources, key=lambda sid: (busy[sid], sid))
        full = {sid for sid, n in busy.items() if n >= limits.per_server}
        try:
            [target] = placement.choose(alive.values(), 1, rng, exclude=taken | full)
        except (FsError, ValueError):  # no server with room (ENOSPC), or none left to choose
            return
        taken.add(target.server_id)
        busy[source] += 1
        busy[target.server_id] += 1
        out.replicate.append(Replicate(chunk.chunk_id, chunk.version, source, target.server_id, chunk.length))


def _ratio(server: Server) -> float:
    u = usage(server)
    return u[0] / u[1] if u else 0.0


def _rebalance(stable: list[ChunkView], alive: dict[int, Server], busy: dict[int, int],
               rebalancing: dict[int, int], limits: Limits, out: Plan) -> None:
    """Move chunks from the fullest servers to the emptiest, narrowing the gap every time."""
    space = {sid: u for sid, s in alive.items() if (u := usage(s)) is not None}
    used = {sid: float(u[0]) for sid, u in space.items()}
    total = {sid: u[1] for sid, u in space.items()}
    room = {sid for sid in space if placement.free_ratio(alive[sid]) is not None}
    on: dict[int, list[ChunkView]] = {}
    for chunk in stable:
        for sid in chunk.valid:
            on.setdefault(sid, []).append(chunk)
    for chunks in on.values():
        chunks.sort(key=lambda c: (-c.length, c.chunk_id))
    moved: set[int] = set()

    def free(sid: int) -> bool:
        return busy[sid] < limits.per_server and rebalancing[sid] < limits.rebalance_per_server

    while True:
        ratio = {sid: used[sid] / total[sid] for sid in space}
        sources = sorted((sid for sid in space if free(sid)), key=lambda sid: (-ratio[sid], sid))
        targets = sorted((sid for sid in room if free(sid)), key=lambda sid: (ratio[sid], sid))
        move = None
        for src in sources:
            for dst in targets:
                gap = ratio[src] - ratio[dst]
                if gap <= limits.rebalance_threshold:
                    break
                move = _pick(on.get(src, ()), src, dst, gap, total, moved)
                if move is not None:
                    break
            if move is not None:
                break
        if move is None:
            return
        chunk, src, dst = move
        moved.add(chunk.chunk_id)
        for sid in (src, dst):
            busy[sid] += 1
            rebalancing[sid] += 1
        used[src] -= chunk.length
        used[dst] += chunk.length
        out.replicate.append(Replicate(chunk.chunk_id, chunk.version, src, dst, chunk.length, rebalance=True))


def _pick(chunks: Iterable[ChunkView], src: int, dst: int, gap: float, total: Mapping[int, int],
          moved: set[int]) -> tuple[ChunkView, int, int] | None:
    """The biggest chunk on src that dst lacks and whose move leaves a smaller gap than `gap`."""
    for chunk in chunks:
        if chunk.chunk_id in moved or dst in chunk.holders:
            continue
        shift = chunk.length / total[src] + chunk.length / total[dst]
        if 0 < shift < 2 * gap:
            return chunk, src, dst
    return None
