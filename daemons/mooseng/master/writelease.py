"""Per-chunk write leases: one writer at a time per chunk (MooseFS's chunk lock).

A write session is write_chunk (the master bumps the chunk's version and its copies take it),
pieces to the copies, commit_write. A second writer's bump in between would move the copies
under the first one, which then fails on every copy (stale version, or EBUSY for the bump while
its session is open). So write_chunk (and a truncation that cuts the chunk) takes the chunk's
lease, commit_write or release_write gives it back, and a writer that finds another client's
lease gets "locked" (EAGAIN) and retries. A lease its holder never gives back (the client died)
expires after LEASE_S.

Leases are the leader's soft state, never logged: a new leader starts with none, and the
chunkservers' own refusal to move a copy that has a write session open (EBUSY) covers the
writes that were in flight at the change. Pure logic: the caller passes the clock.
"""

from typing import NamedTuple

# Longer than a healthy write session of one chunk (64 MiB), shorter than a waiting client's
# retry bound (its master timeout, 30 s by default), so a dead writer delays the next one only.
LEASE_S = 20.0


class Lease(NamedTuple):
    ino: int
    index: int
    client_id: int
    version: int  # the version its session makes
    expires: float
    servers: tuple[str, ...] = ()  # where the session was told to write (parts: entry p, "" for none)


class WriteLeases:
    """chunk_id -> Lease. Not thread-safe: the master calls it under an inode lock and its own."""

    def __init__(self, lease_s: float = LEASE_S):
        self.lease_s = lease_s
        self._held: dict[int, Lease] = {}

    def blocker(self, chunk_id: int, client_id: int, now: float) -> Lease | None:
        """The live lease of another client on the chunk, or None (free, expired or our own:
        a client runs one session per chunk at a time, so its old one is over). A caller
        without an id (0) is not the holder of any lease."""
        lease = self._held.get(chunk_id)
        if lease is None or lease.expires <= now:
            return None
        if client_id and lease.client_id == client_id:
            return None
        return lease

    def blockers_from(self, ino: int, index: int, client_id: int, now: float) -> list[int]:
        """Chunks of `ino` at `index` or later leased by another client (what a shrink to inside
        chunk `index` would cut or free)."""
        return [chunk_id for chunk_id, lease in self._held.items()
                if lease.ino == ino and lease.index >= index
                and self.blocker(chunk_id, client_id, now) is not None]  # fmt: skip

    def grant(self, chunk_id: int, ino: int, index: int, client_id: int, version: int, now: float,
              servers: tuple[str, ...] = ()) -> None:
        self._held[chunk_id] = Lease(ino, index, client_id, version, now + self.lease_s, servers)

    def servers(self, chunk_id: int, version: int) -> tuple[str, ...]:
        """Where the session making `version` was told to write; () if no lease says (expired,
        given back, or granted by another leader)."""
        lease = self._held.get(chunk_id)
        return lease.servers if lease is not None and lease.version == version else ()

    def release(self, chunk_id: int, version: int) -> bool:
        """Give the lease of the session making `version` back; a later session's stays."""
        lease = self._held.get(chunk_id)
        if lease is None or lease.version != version:
            return False
        del self._held[chunk_id]
        return True

    def expire(self, now: float) -> int:
        """Forget expired leases; how many there were."""
        gone = [chunk_id for chunk_id, lease in self._held.items() if lease.expires <= now]
        for chunk_id in gone:
            del self._held[chunk_id]
        return len(gone)

    def __len__(self) -> int:
        return len(self._held)
