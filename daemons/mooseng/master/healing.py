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

Erasure-coded chunks and conversions (PieceView; docs/DESIGN.md "Erasure coding"). A lost,
damaged or stale part is rebuilt by a `Build` order: the target chunkserver reads k valid parts
and decodes the missing one. Rebuilds share the repair queue with copies, in one priority order:
endangered first (one copy, or exactly k parts left), then by the share of the goal left. Targets
follow the rule for new parts (placement.part_target: a disk to spare, at most m parts of the chunk
per server where possible). A chunk whose class asks for another layout is converted: builds of
the target layout's pieces (parts encoded from a copy, or copies decoded from k parts), and once
they all exist at the chunk's version a `Switch` (the service moves them to a new version and logs
set_layout; the old pieces are then stale and deleted). Conversions come after repairs; surplus
copies of a part, damaged parts while more than k parts are valid without them, and pieces no layout of the
chunk wants are deleted. A build counts against the rate limit of its target and of each server
it reads from.
"""

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mooseng.ec import part_id
from mooseng.errors import FsError
from mooseng.master import classes, placement
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
class PieceView:
    """A chunk stored in parts, or one to convert to another layout, as the registry sees it."""

    chunk_id: int
    version: int
    ec: tuple[int, int] | None  # its layout now (None: copies)
    target: tuple[int, int] | None  # the layout to convert to (== ec: none)
    copies: int  # full copies wanted when the target is copies
    valid: Mapping[int, tuple[int, ...]]  # part (-1: full copy) -> ids of servers with a valid copy of it
    holders: Mapping[int, tuple[int, ...]]  # part -> ids of servers with any copy of it
    length: int = 0  # the chunk's data bytes
    damaged: tuple[tuple[int, int], ...] = ()  # (part, server) of copies failing a CRC check
    returned: tuple[tuple[int, int], ...] = ()  # (part, server) of copies that came with a registration

    def have(self, layout: tuple[int, int] | None) -> list[int]:
        """The parts of `layout` with a valid copy."""
        return [p for p in classes.pieces(layout) if self.valid.get(p)]


@dataclass(frozen=True)
class Build:
    """`target` makes `part` (-1: a full copy) of the chunk at `version` from `sources`
    ((part, server) pairs; part -1 is a full copy); `ec` is the geometry of the parts involved."""

    chunk_id: int
    version: int
    ec: tuple[int, int]
    part: int
    sources: tuple[tuple[int, int], ...]
    target: int
    length: int
    conversion: bool = False

    @property
    def stored_id(self) -> int:
        return self.chunk_id if self.part < 0 else part_id(self.chunk_id, self.part)


@dataclass(frozen=True)
class Switch:
    """Every piece of layout `ec` exists at `version`: the chunk may take that layout."""

    chunk_id: int
    version: int
    ec: tuple[int, int] | None


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
    chunk_id: int  # the stored id: a part's for a part
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
    build: list[Build] = field(default_factory=list)
    switch: list[Switch] = field(default_factory=list)


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
    pieces: Iterable[PieceView] = (),
) -> Plan:
    """The actions to take now.

    `inflight`: stored id -> replications or builds of it under way (each counts as a copy to
    come); `busy`: server id -> those it takes part in; `rebalancing`: server id -> rebalancing
    moves among those. `pieces`: the chunks in parts or to convert (the others are `chunks`).
    """
    alive = {s.server_id: s for s in servers if s.alive}
    busy = {sid: busy.get(sid, 0) for sid in alive}
    rebalancing = {sid: rebalancing.get(sid, 0) for sid in alive}
    out = Plan()
    repairs, extra, stable = [], [], []
    rebuilds, converting = [], []
    for view in pieces:
        _ec_deletions(view, inflight, out)
        if view.ec != view.target:
            converting.append(view)
        elif view.ec is not None and len(have := view.have(view.ec)) >= view.ec[0]:
            if len(have) < sum(view.ec) and not all(
                    view.valid.get(p) or inflight.get(part_id(view.chunk_id, p)) for p in classes.pieces(view.ec)):
                rebuilds.append(view)
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
    queue = [((len(c.valid) > 1, len(c.valid) / c.goal, c.chunk_id), c) for c in repairs]
    queue += [((len(v.have(v.ec)) > v.ec[0], len(v.have(v.ec)) / sum(v.ec), v.chunk_id), v) for v in rebuilds]
    queue.sort(key=lambda q: q[0])
    for _, chunk in queue:
        if isinstance(chunk, PieceView):
            _rebuild(chunk, inflight, alive, busy, limits, rng, out)
        else:
            _repair(chunk, inflight.get(chunk.chunk_id, 0), alive, busy, limits, rng, out)
    for view in sorted(converting, key=lambda v: v.chunk_id):
        _convert(view, inflight, alive, busy, limits, rng, out)
    for chunk in sorted(extra, key=lambda c: c.chunk_id):
        ranked = sorted(chunk.valid, key=lambda sid: (sid in chunk.returned, _ratio(alive[sid]), sid), reverse=True)
        out.delete += [Delete(chunk.chunk_id, sid) for sid in ranked[: len(chunk.valid) - chunk.goal]]
    if not repairs and not extra and not rebuilds and not converting:  # usage is about to change: measure again
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


def _ec_deletions(view: PieceView, inflight: Mapping[int, int], out: Plan) -> None:
    """Pieces of the chunk no layout of it wants; once nothing is being built for it, surplus
    copies of a part (those that came back with a registration first, then the highest server
    ids) and, while more than k parts are valid without them, damaged ones: then no decode
    needs a damaged part's good blocks, and the damaged copy holds the disk and the per-server
    slot its own rebuild may need (3 servers x 4 disks for 8+4: every server is full, and the
    rebuild can only go where the damaged part is). At k valid parts or fewer they are kept."""
    wanted = set(classes.pieces(view.ec)) | set(classes.pieces(view.target))
    for part, sids in sorted(view.holders.items()):
        if part not in wanted:
            out.delete += [Delete(_stored(view.chunk_id, part), sid) for sid in sids]
    if view.ec is None or any(inflight.get(_stored(view.chunk_id, p)) for p in wanted):
        return
    for part in classes.pieces(view.ec):
        valid = view.valid.get(part, ())
        keep = sorted(valid, key=lambda sid: ((part, sid) in view.returned, sid))[:1]
        out.delete += [Delete(_stored(view.chunk_id, part), sid) for sid in valid if sid not in keep]
    if len(view.have(view.ec)) > view.ec[0]:
        out.delete += [Delete(_stored(view.chunk_id, part), sid) for part, sid in view.damaged]


def _stored(chunk_id: int, part: int) -> int:
    return chunk_id if part < 0 else part_id(chunk_id, part)


def _part_sources(view: PieceView, busy: dict[int, int], limits: Limits) -> tuple[tuple[int, int], ...] | None:
    """k valid parts of the chunk to decode from, each from its least busy holder, on servers
    below the rate limit (data parts first: cheapest to decode); None if there are not k."""
    k = view.ec[0]
    sources = []
    for part in view.have(view.ec):
        free = [sid for sid in view.valid[part] if busy[sid] < limits.per_server]
        if free:
            sources.append((part, min(free, key=lambda sid: (busy[sid], sid))))
        if len(sources) == k:
            return tuple(sources)
    return None


def _order(build: Build, busy: dict[int, int], out: Plan) -> None:
    for sid in {build.target, *(sid for _, sid in build.sources)}:
        busy[sid] += 1
    out.build.append(build)


def _parts_on(view: PieceView, layout: tuple[int, int]) -> dict[int, int]:
    """Server id -> parts of `layout` it holds (any copy) for this chunk."""
    held: dict[int, int] = {}
    for part in classes.pieces(layout):
        for sid in view.holders.get(part, ()):
            held[sid] = held.get(sid, 0) + 1
    return held


def _build_parts(view: PieceView, layout: tuple[int, int], sources_of, conversion: bool,
                 inflight: Mapping[int, int], alive: dict[int, Server], busy: dict[int, int], limits: Limits,
                 rng: random.Random, out: Plan) -> None:
    """Order the parts of `layout` that have no valid copy and none under way."""
    k, m = layout
    held = _parts_on(view, layout)
    for part in classes.pieces(layout):
        if view.valid.get(part) or inflight.get(part_id(view.chunk_id, part)):
            continue
        sources = sources_of()
        if sources is None:
            return
        full = {sid for sid, n in busy.items() if n >= limits.per_server}
        target = placement.part_target(alive.values(), held, k, m, rng,
                                       exclude=full | set(view.holders.get(part, ())))
        if target is None:
            return
        held[target.server_id] = held.get(target.server_id, 0) + 1
        _order(Build(view.chunk_id, view.version, layout, part, sources, target.server_id, view.length, conversion),
               busy, out)


def _rebuild(view: PieceView, inflight: Mapping[int, int], alive: dict[int, Server], busy: dict[int, int],
             limits: Limits, rng: random.Random, out: Plan) -> None:
    _build_parts(view, view.ec, lambda: _part_sources(view, busy, limits), False, inflight, alive, busy, limits,
                 rng, out)


def _convert(view: PieceView, inflight: Mapping[int, int], alive: dict[int, Server], busy: dict[int, int],
             limits: Limits, rng: random.Random, out: Plan) -> None:
    """Build the target layout's pieces; once they all exist (and nothing is under way), switch."""
    chunk_id = view.chunk_id
    under_way = any(inflight.get(_stored(chunk_id, p)) for p in classes.pieces(view.target))
    if view.target is None:  # parts -> copies
        copies = view.valid.get(-1, ())
        if len(copies) >= view.copies and not under_way:
            out.switch.append(Switch(chunk_id, view.version, None))
            return
        if len(view.have(view.ec)) < view.ec[0]:
            return
        taken = set(view.holders.get(-1, ()))
        for _ in range(view.copies - len(copies) - inflight.get(chunk_id, 0)):
            sources = _part_sources(view, busy, limits)
            full = {sid for sid, n in busy.items() if n >= limits.per_server}
            try:
                [target] = placement.choose(alive.values(), 1, rng, exclude=taken | full)
            except (FsError, ValueError):
                return
            if sources is None:
                return
            taken.add(target.server_id)
            _order(Build(chunk_id, view.version, view.ec, -1, sources, target.server_id, view.length, True),
                   busy, out)
        return
    if len(view.have(view.target)) == sum(view.target) and not under_way:  # copies -> parts
        out.switch.append(Switch(chunk_id, view.version, view.target))
        return

    def from_copy():
        free = [sid for sid in view.valid.get(-1, ()) if busy[sid] < limits.per_server]
        return ((-1, min(free, key=lambda sid: (busy[sid], sid))),) if free else None

    _build_parts(view, view.target, from_copy, True, inflight, alive, busy, limits, rng, out)


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
