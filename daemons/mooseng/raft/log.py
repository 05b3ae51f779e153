"""The Raft log: the stable part (Storage) followed by the unstable part (not yet persisted).

Index arithmetic replaces searching everywhere: entry i of the unstable part is
entries[i - offset], of MemoryStorage _ents[i - first + 1]. Only slices of the size of a
message or a Ready are ever copied.
"""

from typing import Sequence

from .messages import Entry, Snapshot
from .storage import CompactedError, Storage, StorageError, limit_size


class Unstable:
    """Entries (and possibly a snapshot) that the caller has been handed in a Ready but has not
    yet reported persisted through advance()."""

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int):
        self.snapshot: Snapshot | None = None  # if set: offset == snapshot.index + 1
        self.entries: list[Entry] = []  # entries[i].index == offset + i
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        return self.snapshot.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def maybe_term(self, index: int) -> int | None:
        offset = self.offset
        if index < offset:
            snap = self.snapshot
            return snap.term if snap is not None and snap.index == index else None
        if index - offset < len(self.entries):
            return self.entries[index - offset].term
        return None

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to index were persisted; unless they were replaced meanwhile, drop them."""
        if index >= self.offset and self.maybe_term(index) == term:
            del self.entries[: index + 1 - self.offset]
            self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        after = entries[0].index
        offset = self.offset
        if after == offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= offset:
            # Replaces everything unstable; the stable part past `after` is overwritten by the
            # caller's append (MemoryStorage.append truncates).
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - offset :]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """Storage + Unstable, with the commit and apply cursors.

    Invariant: first_index() - 1 <= applied <= committed <= last_index().
    """

    __slots__ = ("storage", "unstable", "committed", "applied", "max_applying_bytes")

    def __init__(self, storage: Storage, max_applying_bytes: int | None):
        self.storage = storage
        self.unstable = Unstable(storage.last_index() + 1)
        # The snapshot is committed and applied by definition.
        self.committed = self.applied = storage.first_index() - 1
        self.max_applying_bytes = max_applying_bytes  # cap on committed entries per Ready

    # Indexes and terms.

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term of entry index; 0 past the last entry. Raises CompactedError below the snapshot."""
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        if index < self.first_index() - 1:
            raise CompactedError(index)
        if index > self.last_index():
            return 0
        return self.storage.term(index)

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except CompactedError:
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (last_index, term) is at least as up to date as ours (§5.4.1)."""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # Appending.

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower side of AppendEntries: None if our log lacks (index, log_term), else append
        what is new and return the index of the last entry the leader sent."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RuntimeError(f"entry {conflict} conflicts with committed {self.committed}")
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, entries: Sequence[Entry]) -> int:
        if entries:
            if entries[0].index - 1 < self.committed:
                raise RuntimeError(f"append at {entries[0].index} would overwrite commit {self.committed}")
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or differs from ours, 0 if we have them all.

        Usually the first entry is already past our last index, so this costs one lookup.
        """
        last = self.last_index()
        for e in entries:
            if e.index > last or not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last entry at or before index whose term is <= term, as (index, term).

        Used for fast backtracking: every entry after it that has a larger term cannot match a
        log whose entry at index has `term`, so a whole term is skipped per round trip. The walk
        only crosses entries of a diverged suffix. Term 0 means unknown (compacted).
        """
        while index > 0:
            try:
                t = self.term(index)
            except StorageError:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    # Reading.

    def entries(self, lo: int, max_entries: int, max_bytes: int | None) -> list[Entry]:
        """Up to max_entries entries from lo (at least one if any exist), within max_bytes."""
        hi = min(self.last_index() + 1, lo + max_entries)
        return self.slice(lo, hi, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries [lo, hi), the stable part from storage. Raises CompactedError if lo is gone."""
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise ValueError(f"slice [{lo}, {hi}) past last index {self.last_index()}")
        if lo >= hi:
            return []
        offset = self.unstable.offset
        if lo < offset:
            stable_hi = min(hi, offset)
            ents = self.storage.entries(lo, stable_hi, max_bytes)
            if len(ents) < stable_hi - lo or hi <= offset:
                return ents  # cut by max_bytes, or nothing unstable wanted
            ents = ents + self.unstable.slice(offset, hi)
        else:
            ents = self.unstable.slice(lo, hi)
        return limit_size(ents, max_bytes)

    def snapshot(self) -> Snapshot:
        snap = self.unstable.snapshot
        return snap if snap is not None else self.storage.snapshot()

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_next_committed_entries(self) -> bool:
        committed = self.committed
        return committed > self.applied and committed >= self.first_index()

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet handed out for applying, at most max_applying_bytes."""
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1, self.max_applying_bytes)

    # Cursors.

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RuntimeError(f"commit {index} is past the last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to index if its entry is from term: a leader only counts replicas of
        entries of its own term (§5.4.2); earlier entries commit with them."""
        if index > self.committed and self.match_term(index, term):
            self.committed = index
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index < self.applied or index > self.committed:
            raise RuntimeError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log with a snapshot (the caller persists it from the Ready)."""
        self.committed = snapshot.index
        self.unstable.restore(snapshot)
