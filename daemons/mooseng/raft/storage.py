"""The stable storage Raft reads from, and an in-memory implementation for tests.

Raft only reads Storage; the caller writes to it while handling a Ready (see the package
docstring). Entry indexes start at 1; the log holds entries first_index()..last_index(), and the
entry just before first_index() is known only by its term (it is the last entry of the snapshot).
"""

from typing import Protocol, Sequence

from .messages import ConfState, Entry, HardState, Snapshot


class StorageError(Exception):
    """Base of the errors Storage methods may raise; Raft handles each one."""


class CompactedError(StorageError):
    """The requested index is older than the snapshot: its entry was compacted away."""


class UnavailableError(StorageError):
    """The requested index is newer than the last stored entry."""


class SnapshotOutOfDateError(StorageError):
    """The snapshot is not newer than the one already stored."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """No snapshot can be produced right now (e.g. one is being written); Raft retries later."""


class Storage(Protocol):
    """Read-only view of the persisted log, as Raft needs it."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted HardState, and the membership as of Config.applied: Raft re-delivers
        the committed entries after that index, conf changes included. (An application that
        restarts from its latest snapshot passes that snapshot's index and ConfState.)"""

    def entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries [lo, hi); at least one if lo < hi, then as many as fit in max_bytes of data.
        Raises CompactedError if lo <= the snapshot index, UnavailableError if hi-1 is not
        stored yet."""

    def term(self, index: int) -> int:
        """Term of entry index, which may be the snapshot index itself. Raises CompactedError
        below that, UnavailableError past the last entry."""

    def first_index(self) -> int:
        """Index of the first entry still stored (snapshot index + 1)."""

    def last_index(self) -> int:
        """Index of the last stored entry (the snapshot index if there is none after it)."""

    def snapshot(self) -> Snapshot:
        """The latest snapshot. May raise SnapshotTemporarilyUnavailableError."""


def bootstrap_snapshot(voters: Sequence[int], data: bytes = b"") -> Snapshot:
    """The snapshot every founding member of a new cluster starts from.

    It sits at index 1 so that a node added later, which starts from an empty log, cannot be
    sent entries from index 1 (they would lack the founding membership): it gets this snapshot,
    or a newer one, first. data is the application's empty state.
    """
    return Snapshot(index=1, term=1, conf_state=ConfState(tuple(sorted(set(voters)))), data=data)


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix whose data fits in max_bytes, but never fewer than one entry."""
    if max_bytes is None or len(entries) <= 1:
        return entries
    total = len(entries[0].data)
    for n in range(1, len(entries)):
        total += len(entries[n].data)
        if total > max_bytes:
            return entries[:n]
    return entries


class MemoryStorage:
    """Storage kept in memory, with the write methods a caller needs. Used by tests.

    _ents[0] is a dummy entry holding the snapshot's index and term, so index arithmetic needs no
    special case: entry i lives at _ents[i - _ents[0].index].
    """

    def __init__(self, snapshot: Snapshot | None = None):
        self._hard_state = HardState()
        self._snapshot = snapshot or Snapshot()
        self._ents = [Entry(term=self._snapshot.term, index=self._snapshot.index)]
        if snapshot is not None:
            self._hard_state = HardState(term=snapshot.term, commit=snapshot.index)

    # Storage.

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > offset + len(self._ents):
            raise UnavailableError(hi - 1)
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self._ents):
            raise UnavailableError(index)
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # Writes, done by the caller while handling a Ready or taking a snapshot.

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries, first dropping any stored entries at or after entries[0].index."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        at = entries[0].index - self._ents[0].index
        if at > len(self._ents):
            raise ValueError(f"missing log entries before {entries[0].index}")
        del self._ents[at:]
        self._ents.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        if snapshot.index <= self._snapshot.index:
            raise SnapshotOutOfDateError(snapshot.index)
        self._snapshot = snapshot
        self._ents = [Entry(term=snapshot.term, index=snapshot.index)]
        if self._hard_state.commit < snapshot.index:
            self._hard_state = HardState(self._hard_state.term, self._hard_state.vote, snapshot.index)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the application's state as of applied index `index` (entries stay until
        compact())."""
        if index <= self._snapshot.index:
            raise SnapshotOutOfDateError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        self._snapshot = Snapshot(index, self.term(index), conf_state, data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to index, which must be covered by the snapshot: a follower that
        needs them must be sent the snapshot instead."""
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(index)
        if index > self._snapshot.index:
            raise ValueError(f"compact({index}) past the snapshot at {self._snapshot.index}")
        self._ents = [Entry(term=self.term(index), index=index)] + self._ents[index - offset + 1 :]
