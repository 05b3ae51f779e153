"""Soft state rebuilt from chunkserver Register/Heartbeat: servers, their disks, and chunk copies.

Nothing here is logged or replicated: after a master restart every chunkserver registers again
with its full chunk list. Pure logic: the caller passes the time (monotonic seconds) and the
namespace's view of chunk versions, and serializes calls (one lock around the registry).

A copy is *valid* when its server is alive, its disk is healthy (or not yet known), its version is
at least the namespace's current version of the chunk, it is not fenced and its chunkserver has not
reported it damaged (a block failed its CRC check). A copy is ahead of
the namespace only if the master stopped between asking the copies to take a new version and
logging it: nothing was written at that version, so its data is the same. A fenced copy has the
current version but lacks data written at it (see fence()). Copies the namespace no longer wants
(unknown chunk, older version, fenced, damaged) go back to their server as delete commands in heartbeat
replies; to keep that cheap, only chunks marked dirty (reported, written, freed) are checked, not
the whole list. The replication manager (master/healing.py) adds its own deletions of
over-goal copies through order_delete().

Chunk states (per class, as mfscli's matrix): stable (valid copies == goal), overgoal (more),
undergoal (fewer, at least 2), endangered (exactly 1 of a goal above 1), missing (none), and
deleting: chunks no file refers to any more whose copies are still on chunkservers.

Erasure-coded chunks: a part is stored, reported and deleted as a chunk of its own id
(ec.part_id), so copies, fences and deletions here are per *stored id*; only the states, the
touched set and attention are per chunk (`_pieces` maps a chunk to its stored ids). A chunk of
layout (k, m) is stable with its k+m parts valid, undergoal with fewer, endangered with exactly
k (one more loss and it is unreadable), missing below k, overgoal with a part valid twice.

The counts per class and state are kept up to date as things change, so reading them costs
nothing per chunk: every change of a chunk's copies, fence or disk health here marks the chunk
touched; follow() adds the chunks the namespace reports changed and reclassifies only those. It
counts the whole chunk table only the first time and when a snapshot replaced the namespace. The
same bookkeeping keeps the set of chunks the replication manager has work for (attention()), so
that it need not scan every chunk.
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from mooseng.ec import part_id, split_part_id

log = logging.getLogger(__name__)

STABLE, UNDERGOAL, ENDANGERED, MISSING = "stable", "undergoal", "endangered", "missing"
OVERGOAL, DELETING = "overgoal", "deleting"
STATES = (STABLE, UNDERGOAL, ENDANGERED, MISSING, OVERGOAL, DELETING)
NO_CLASS = "-"  # the class column of chunks being deleted: no file, so no class any more


class RegistryError(Exception):
    """A registration the master refuses; the subclass says why (the service maps it to a status)."""


class ForeignCluster(RegistryError):
    """The chunkserver belongs to another cluster (its cluster_id differs)."""


class DuplicateServer(RegistryError):
    """Another live chunkserver already uses this server_id."""


@dataclass(frozen=True)
class Disk:
    index: int
    path: str
    total: int
    used: int
    free: int
    state: str  # "ok" | "damaged"
    chunks: int = 0

    @property
    def healthy(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True)
class ChunkRef:
    """A copy as a chunkserver reports it (or is told to delete it)."""

    chunk_id: int
    version: int
    disk: int | None = None
    length: int = 0  # data bytes, where known (heartbeats report it; deletions do not need it)
    damaged: bool = False  # its chunkserver found a block failing its CRC check


@dataclass(frozen=True)
class Copy:
    version: int
    disk: int | None  # None: recorded from a client's commit, disk known at the next heartbeat
    length: int = 0
    damaged: bool = False
    returned: bool = False  # came with its server's registration, not from a write or replication


@dataclass
class Server:
    server_id: int
    address: str
    session: int
    last_seen: float
    disks: list[Disk] = field(default_factory=list)
    alive: bool = True
    # Invariant: chunk_id in chunks <=> server_id in Registry._copies[chunk_id].
    chunks: set[int] = field(default_factory=set)
    # Subset of chunks to check against the namespace at the next heartbeat (see deletions()).
    dirty: set[int] = field(default_factory=set)
    # Last byte counters the server reported (counted since it started); None until a heartbeat.
    counters: tuple[int, int] | None = None
    # Copies the replication manager ordered deleted (already out of the registry); sent with
    # the next heartbeat reply by deletions().
    ordered: list[ChunkRef] = field(default_factory=list)

    def disk(self, index: int | None) -> Disk | None:
        return next((d for d in self.disks if d.index == index), None)


@dataclass(frozen=True)
class Capacity:
    total: int
    used: int
    free: int


class Registry:
    def __init__(self, cluster_id: str, timeout_s: float, first_session: int = 1):
        """`first_session` should differ between master runs so that stale sessions re-register."""
        self.cluster_id = cluster_id
        self.timeout_s = timeout_s
        self._next_session = first_session
        self._servers: dict[int, Server] = {}
        self._copies: dict[int, dict[int, Copy]] = {}  # stored id -> server id -> copy
        self._pieces: dict[int, set[int]] = {}  # chunk id -> its stored ids in _copies
        # chunk_id -> (version, server ids): those servers' copies up to that version lack its data.
        self._fences: dict[int, tuple[int, set[int]]] = {}
        self.bytes_read = 0
        self.bytes_written = 0
        # Chunk-state accounting (see the module docstring): chunk_id -> (class, state) as counted.
        self._states: dict[int, tuple[str, str]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._touched: set[int] = set()
        self._attention: set[int] = set()  # under goal with a valid copy, over goal, damaged, converting

    # --- chunkserver protocol -----------------------------------------------------------------

    def register(
        self,
        cluster_id: str,
        server_id: int,
        address: str,
        disks: list[Disk],
        chunks: Iterable[ChunkRef],
        now: float,
    ) -> int:
        """Accept a chunkserver and its full chunk list; return its new session.

        Raises ForeignCluster or DuplicateServer. A known server_id re-registering (restart, lost
        session) replaces its previous copies; its byte counters carry on.
        """
        if cluster_id != self.cluster_id:
            raise ForeignCluster(
                f"chunkserver {server_id} at {address} belongs to cluster {cluster_id!r}, "
                f"this master to {self.cluster_id!r}"
            )
        old = self._servers.get(server_id)
        if old is not None and old.alive and old.address != address:
            raise DuplicateServer(
                f"chunkserver id {server_id} is already in use by {old.address} (alive); "
                f"refusing {address}: give every chunkserver its own server_id"
            )
        for other in list(self._servers.values()):
            if other.address == address and other.server_id != server_id:
                log.warning("chunkserver %s replaces %s at %s", server_id, other.server_id, address)
                self._forget_server(other)
        if old is not None:
            self._drop_copies(old)
        server = Server(server_id, address, self._next_session, now, list(disks))
        if old is not None:
            server.counters = old.counters
        self._next_session += 1
        self._servers[server_id] = server
        for ref in chunks:
            self._add_copy(server, ref.chunk_id, Copy(ref.version, ref.disk, ref.length, ref.damaged, returned=True))
        self.recheck(server.chunks)  # its copies may make others' stale copies deletable, and be stale
        return server.session

    def heartbeat(
        self,
        server_id: int,
        session: int,
        disks: list[Disk],
        added: Iterable[ChunkRef],
        removed: Iterable[ChunkRef],
        bytes_read: int,
        bytes_written: int,
        now: float,
        damaged: Iterable[ChunkRef] = (),
    ) -> bool:
        """Apply a heartbeat; False means the session is unknown and the server must re-register.

        `disks` replaces the disk list (an empty list leaves it as it was). A reported version
        older than the one recorded is ignored: it can only be a heartbeat overtaken by a client's
        commit report of a newer write. `damaged` copies failed a CRC check there: they stop being
        valid, and the replication manager deletes them once the chunk is at its goal without them
        (until then their good blocks are better than nothing).
        """
        server = self._servers.get(server_id)
        if server is None or not server.alive or server.session != session:
            return False
        server.last_seen = now
        if disks:
            if _bad_disks(server.disks) != _bad_disks(disks):
                self._touched.update(_chunk(c) for c in server.chunks)  # its copies on those disks change validity
            server.disks = list(disks)
        for ref in removed:
            copy = self._copies.get(ref.chunk_id, {}).get(server_id)
            if copy is not None and copy.version <= ref.version:
                self._remove_copy(server, ref.chunk_id)
                copy = None
            fence = self._fences.get(ref.chunk_id)
            if copy is None and fence is not None and server_id in fence[1]:
                # That copy is gone: whatever the server stores under this id later is made
                # afresh (a rebuilt part can land where a fenced one was deleted).
                fence[1].discard(server_id)
                if not fence[1]:
                    del self._fences[ref.chunk_id]
                self._touched.add(_chunk(ref.chunk_id))
        for ref in added:
            copy = self._copies.get(ref.chunk_id, {}).get(server_id)
            if copy is None or copy.version <= ref.version:
                self._add_copy(server, ref.chunk_id, Copy(ref.version, ref.disk, ref.length))
                self.recheck([ref.chunk_id])  # a new version may make the other copies stale
        for ref in damaged:
            copy = self._copies.get(ref.chunk_id, {}).get(server_id)
            if copy is not None and copy.version == ref.version:
                self._add_copy(server, ref.chunk_id, Copy(copy.version, copy.disk, copy.length, True, copy.returned))
        self._count_bytes(server, bytes_read, bytes_written)
        return True

    def expire(self, now: float) -> list[Server]:
        """Mark servers silent for longer than the timeout down; return those that just went down.

        A down server loses its session and its copies: when it comes back it re-registers with
        its full chunk list, so nothing it did meanwhile can be missed. Its fences stay.
        """
        down = []
        for server in self._servers.values():
            if server.alive and now - server.last_seen > self.timeout_s:
                server.alive = False
                server.session = 0
                self._drop_copies(server)
                down.append(server)
        return down

    def deletions(self, server_id: int, version_of: Callable[[int], int | None]) -> list[ChunkRef]:
        """Copies the server must delete among its dirty chunks, and those order_delete() chose;
        they leave the registry at once.

        `version_of(stored_id)` is the version the namespace wants of that piece, None for a
        piece no live chunk wants (unknown chunk, or not of its layout: always deleted). A copy
        older than that, or fenced, is stale, but is kept while the chunk has no valid piece at
        all: then the stale ones are all the data left, so they wait for a valid piece to
        appear, which marks the chunk dirty again.
        """
        server = self._servers.get(server_id)
        if server is None:
            return []
        dirty, server.dirty = server.dirty, set()
        out, server.ordered = server.ordered, []
        for chunk_id in dirty:
            copy = self._copies.get(chunk_id, {}).get(server_id)
            if copy is None:
                continue
            current = version_of(chunk_id)
            fence = self._fences.get(chunk_id)
            if fence is not None and (current is None or fence[0] < current):
                del self._fences[chunk_id]  # superseded: copies up to its version are stale anyway
                self._touched.add(_chunk(chunk_id))
            if current is not None:
                if copy.version >= current and (copy.damaged or not self._fenced(chunk_id, server_id, copy.version)):
                    continue  # current, or damaged: the replication manager deletes it once at goal
                if not any(self.is_valid(stored, s, c, current) for stored in self._pieces.get(_chunk(chunk_id), ())
                           for s, c in self.copies(stored)):
                    continue
            out.append(ChunkRef(chunk_id, copy.version, copy.disk))
            self._remove_copy(server, chunk_id)
        return out

    # --- writes -------------------------------------------------------------------------------

    def record_copies(self, chunk_id: int, version: int, addresses: Iterable[str]) -> list[str]:
        """Record copies that took `version` (so reads see them before the next heartbeat).

        Returns the addresses that name no live chunkserver (they are ignored).
        """
        by_address = {s.address: s for s in self._servers.values() if s.alive}
        unknown = []
        for address in addresses:
            server = by_address.get(address)
            if server is None:
                unknown.append(address)
                continue
            copy = self._copies.get(chunk_id, {}).get(server.server_id)
            if copy is None or copy.version <= version:
                self._add_copy(server, chunk_id, Copy(version, copy.disk if copy else None, copy.length if copy else 0))
        self.recheck([chunk_id])
        return unknown

    def order_delete(self, server_id: int, chunk_id: int) -> bool:
        """Take the server's copy out of the registry now and have it deleted at its next
        heartbeat (an over-goal copy the replication manager chose). False if there is none."""
        server = self._servers.get(server_id)
        copy = self._copies.get(chunk_id, {}).get(server_id)
        if server is None or copy is None:
            return False
        server.ordered.append(ChunkRef(chunk_id, copy.version, copy.disk))
        self._remove_copy(server, chunk_id)
        return True

    def fence(self, chunk_id: int, version: int, server_ids: Iterable[int]) -> None:
        """Never trust these servers' copies of the chunk up to `version`, the current one.

        For copies that lack data written at that version: a write (or truncation) that failed
        there after the copy took the version, or a set_version whose outcome is unknown (it may
        land later, without the data). Fenced copies are deleted once a valid copy exists. A
        fence for a newer version replaces the chunk's older one, which the namespace's version
        has made moot. Fences are soft state: a leader change forgets them, so a commit that
        fenced copies also moves the chunk on to a version only the copies with the data take
        (the service's bump_version), after which the missed copies are stale everywhere.
        """
        fenced = set(server_ids)
        old = self._fences.get(chunk_id)
        if old is not None and old[0] == version:
            fenced |= old[1]
        if fenced:
            self._fences[chunk_id] = (version, fenced)
        elif old is not None and old[0] < version:
            del self._fences[chunk_id]
        self._touched.add(_chunk(chunk_id))
        self.recheck([chunk_id])

    def fence_missing(self, chunk_id: int, written: int, current: int, addresses: Iterable[str]) -> None:
        """A client stored version `written` of the chunk on `addresses` only: fence every other
        copy that had taken `written` (or a later version, which it kept without that data)."""
        stored = set(addresses)
        missed = [s.server_id for s, c in self.copies(chunk_id) if c.version >= written and s.address not in stored]
        if missed:
            self.fence(chunk_id, current, missed)

    def has_fence(self, chunk_id: int, version: int) -> bool:
        """Whether some copy of the chunk is fenced at `version` (or later)."""
        fence = self._fences.get(chunk_id)
        return fence is not None and fence[0] >= version

    def recheck(self, ids: Iterable[int]) -> None:
        """Check every piece of these chunks (ids: chunk or stored ids) against the namespace at
        each holder's next heartbeat."""
        for chunk_id in {_chunk(i) for i in ids}:
            for stored in self._pieces.get(chunk_id, ()):
                for server_id in self._copies[stored]:
                    self._servers[server_id].dirty.add(stored)

    # --- queries ------------------------------------------------------------------------------

    def servers(self) -> list[Server]:
        return sorted(self._servers.values(), key=lambda s: s.server_id)

    def copies(self, chunk_id: int) -> list[tuple[Server, Copy]]:
        """Every recorded copy of the chunk, valid or not, by server id."""
        held = self._copies.get(chunk_id, {})
        return [(self._servers[sid], held[sid]) for sid in sorted(held)]

    def is_valid(self, chunk_id: int, server: Server, copy: Copy, version: int) -> bool:
        if (not server.alive or copy.version < version or copy.damaged
                or self._fenced(chunk_id, server.server_id, copy.version)):
            return False
        disk = server.disk(copy.disk)
        return disk is None or disk.healthy

    def survey(self, chunks: Iterable[tuple[int, int]]) -> Iterator[tuple[list[int], dict[int, Copy]]]:
        """For each (chunk_id, version): (ids of the servers with a valid copy, every copy by
        server id). What is_valid() says copy by copy, with the per-server part worked out once,
        for the replication manager's pass over every chunk."""
        usable = {s.server_id: {d.index for d in s.disks if not d.healthy} for s in self._servers.values() if s.alive}
        for chunk_id, version in chunks:
            held = self._copies.get(chunk_id, {})
            fence = self._fences.get(chunk_id)
            valid = []
            for sid, copy in held.items():
                bad = usable.get(sid)
                if (bad is None or copy.version < version or copy.damaged or copy.disk in bad
                        or (fence is not None and copy.version <= fence[0] and sid in fence[1])):
                    continue
                valid.append(sid)
            yield sorted(valid), held

    def holders(self, chunk_id: int, version: int) -> list[Server]:
        """Servers with a valid copy for namespace version `version`, best first.

        The order rotates with the chunk id so that reads of different chunks (and the heads of
        write chains) spread over the servers instead of all hitting the lowest id.
        """
        valid = [s for s, c in self.copies(chunk_id) if self.is_valid(chunk_id, s, c, version)]
        if not valid:
            return []
        shift = chunk_id % len(valid)
        return valid[shift:] + valid[:shift]

    def valid_servers(self, chunk_id: int, version: int) -> list[int]:
        """Ids of the servers holding a valid copy, ascending."""
        return [s.server_id for s, c in self.copies(chunk_id) if self.is_valid(chunk_id, s, c, version)]

    def part_holders(self, chunk_id: int, version: int, parts: int) -> list[Server | None]:
        """Entry p: a server with a valid copy of part p of the chunk (the first by id), or None."""
        out = []
        for p in range(parts):
            stored = part_id(chunk_id, p)
            out.append(next((s for s, c in self.copies(stored) if self.is_valid(stored, s, c, version)), None))
        return out

    def valid_parts(self, chunk_id: int, version: int, parts: int) -> list[list[int]]:
        """Entry p: the ids of the servers with a valid copy of part p, ascending."""
        return [self.valid_servers(part_id(chunk_id, p), version) for p in range(parts)]

    def pieces(self, chunk_id: int) -> list[int]:
        """The stored ids of the chunk that some server holds, ascending (copy id first)."""
        return sorted(self._pieces.get(chunk_id, ()))

    def classify(self, chunk_id: int, version: int, goal: int, ec: tuple[int, int] | None = None) -> str:
        """The state of a chunk of layout `ec` (None: copies, with this goal)."""
        if ec is None:
            return state_of(len(self.valid_servers(chunk_id, version)), goal)
        parts = self.valid_parts(chunk_id, version, ec[0] + ec[1])
        return ec_state_of(sum(1 for p in parts if p), sum(len(p) - 1 for p in parts if p), *ec)

    # --- chunk-state counts, kept up to date ---------------------------------------------------

    def follow(self, namespace) -> None:
        """Bring the chunk states up to date with `namespace` (a master.namespace.Namespace, whose
        lock the caller holds): reclassify the chunks touched here or changed there since the last
        call, or every chunk the first time and after a snapshot replaced the namespace."""
        changed = namespace.take_chunk_changes()
        if changed is None:
            self._recount(namespace.iter_chunks())
            return
        touched, self._touched = self._touched | changed, set()
        for chunk_id in touched:
            info = namespace.chunk_info(chunk_id)
            if info is not None:
                version, sclass, ec, target, goal, _, _, _ = info
                self._set_state(chunk_id, sclass, self.classify(chunk_id, version, goal, ec), ec != target)
            elif chunk_id in self._pieces:
                self._set_state(chunk_id, NO_CLASS, DELETING)
            else:
                self._set_state(chunk_id, None, None)

    def chunk_states(self) -> dict[str, dict[str, int]]:
        """Chunks per class and state as of the last follow(): what a count over the whole
        namespace says (a class with no chunks left is left out, NO_CLASS holds the deleting)."""
        return {sclass: dict(counts) for sclass, counts in self._counts.items() if any(counts.values())}

    def attention(self) -> set[int]:
        """Chunks (as of the last follow()) the replication manager may have work for: below
        their goal with a valid copy left, above it, at it with a damaged copy besides, or to
        convert to another layout (and not missing)."""
        return set(self._attention)

    def capacity(self) -> Capacity:
        """Byte totals over the healthy disks of alive servers (what statfs reports)."""
        disks = [d for s in self._servers.values() if s.alive for d in s.disks if d.healthy]
        return Capacity(sum(d.total for d in disks), sum(d.used for d in disks), sum(d.free for d in disks))

    # --- internals ----------------------------------------------------------------------------

    def _fenced(self, chunk_id: int, server_id: int, version: int) -> bool:
        fence = self._fences.get(chunk_id)
        return fence is not None and version <= fence[0] and server_id in fence[1]

    def _count_bytes(self, server: Server, bytes_read: int, bytes_written: int) -> None:
        """Add the growth since the last beat; a counter that went down means the server restarted."""
        if server.counters is not None:
            last_read, last_written = server.counters
            self.bytes_read += bytes_read - last_read if bytes_read >= last_read else bytes_read
            self.bytes_written += bytes_written - last_written if bytes_written >= last_written else bytes_written
        server.counters = (bytes_read, bytes_written)

    def _recount(self, chunks) -> None:
        """Classify every chunk afresh from (chunk_id, ChunkInfo) of the whole namespace."""
        self._states, self._counts, self._attention, self._touched = {}, {}, set(), set()
        for chunk_id, (version, sclass, ec, target, goal, _, _, _) in chunks:
            self._set_state(chunk_id, sclass, self.classify(chunk_id, version, goal, ec), ec != target)
        for chunk_id in self._pieces.keys() - self._states.keys():
            self._set_state(chunk_id, NO_CLASS, DELETING)

    def _set_state(self, chunk_id: int, sclass: str | None, state: str | None, converting: bool = False) -> None:
        """Record the chunk's class and state (None: forget the chunk) and move it between counts."""
        old = self._states.get(chunk_id)
        if old is not None:
            self._counts[old[0]][old[1]] -= 1
        if sclass is None:
            self._states.pop(chunk_id, None)
            self._attention.discard(chunk_id)
            return
        self._states[chunk_id] = (sclass, state)
        self._counts.setdefault(sclass, dict.fromkeys(STATES, 0))[state] += 1
        if state in (UNDERGOAL, ENDANGERED, OVERGOAL) or (converting and state != MISSING) or (
                state == STABLE and self._damaged(chunk_id)):
            self._attention.add(chunk_id)
        else:
            self._attention.discard(chunk_id)

    def _damaged(self, chunk_id: int) -> bool:
        """Whether a copy of any piece of the chunk failed a CRC check (plain loops: follow()'s cost)."""
        for stored in self._pieces.get(chunk_id, ()):
            for copy in self._copies[stored].values():
                if copy.damaged:
                    return True
        return False

    def _add_copy(self, server: Server, chunk_id: int, copy: Copy) -> None:
        held = self._copies.get(chunk_id)
        if held is None:
            held = self._copies[chunk_id] = {}
            self._pieces.setdefault(_chunk(chunk_id), set()).add(chunk_id)
        held[server.server_id] = copy
        server.chunks.add(chunk_id)
        self._touched.add(_chunk(chunk_id))

    def _remove_copy(self, server: Server, chunk_id: int) -> None:
        held = self._copies.get(chunk_id)
        if held is not None:
            held.pop(server.server_id, None)
            if not held:
                del self._copies[chunk_id]
                pieces = self._pieces[_chunk(chunk_id)]
                pieces.discard(chunk_id)
                if not pieces:
                    del self._pieces[_chunk(chunk_id)]
        server.chunks.discard(chunk_id)
        server.dirty.discard(chunk_id)
        self._touched.add(_chunk(chunk_id))

    def _drop_copies(self, server: Server) -> None:
        for chunk_id in list(server.chunks):
            self._remove_copy(server, chunk_id)

    def _forget_server(self, server: Server) -> None:
        self._drop_copies(server)
        del self._servers[server.server_id]


def _chunk(stored_id: int) -> int:
    """The chunk a stored id (a full copy's, or a part's) belongs to."""
    return split_part_id(stored_id)[0]


def _bad_disks(disks: Iterable[Disk]) -> set[int]:
    return {d.index for d in disks if not d.healthy}


def state_of(valid: int, goal: int) -> str:
    """The state of a chunk with `valid` valid copies and this goal (not DELETING)."""
    if valid == 0:
        return MISSING
    if valid > goal:
        return OVERGOAL
    if valid == goal:
        return STABLE
    return ENDANGERED if valid == 1 else UNDERGOAL


def ec_state_of(parts: int, extra: int, k: int, m: int) -> str:
    """The state of a k+m chunk with `parts` distinct valid parts and `extra` surplus copies of them."""
    if parts < k:
        return MISSING
    if parts < k + m:
        return ENDANGERED if parts == k else UNDERGOAL
    return OVERGOAL if extra else STABLE
