"""What a client may answer without asking the master: recent attrs, and names known to be absent.

Both caches are pure (the clock is passed in) and bounded in time, the way the kernel's own
attr and entry caches are: nothing is served longer than its timeout after the master said it.

AttrCache keeps the attrs the master sent with every answer, including the attrs of directories
that an entry change touched. The kernel invalidates a directory's attrs after every create,
unlink or rename in it and, with default_permissions, asks for them again before the next one;
answering that from here saves one master round trip per operation.

Listings keeps the complete set of names of directories this client made itself, for negative
lookups: the kernel looks a name up before it creates it, and a name that is not in a complete
listing does not exist. A listing stays complete while every name added to its directory comes
from this client: every directory attr the master sends carries the directory's `next_cookie`,
which grows by one with every name added, so a name added by anyone else shows as a jump and the
listing is dropped. Names removed by others need no check: a listing that still holds them only
sends their lookups to the master. A listing answers for `ttl` after the master last confirmed
its `next_cookie` (any answer with the directory's attr does), so another client's new name may
stay invisible here that long, as with a negative dentry in the kernel; after that it is kept,
unused, until the next confirmation.

Both are thread-safe: FUSE handlers call them from many threads.
"""

import threading

from mooseng.client.masterclient import Attr

ATTRS_MAX = 100_000
LISTINGS_MAX = 1024
LISTING_NAMES_MAX = 100_000  # a bigger directory is not worth keeping in memory
_DOTS = (b".", b"..")  # in every directory, in no listing


class AttrCache:
    """ino -> (attr, when it stops being fresh)."""

    def __init__(self, ttl: float, max_entries: int = ATTRS_MAX):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[int, tuple[Attr, float]] = {}
        self._lock = threading.Lock()

    def put(self, attr: Attr, now: float) -> None:
        """Remember an attr the master just sent. An answer that left the master before a change
        we already know of (an older ctime) does not replace it."""
        if self.ttl <= 0:
            return
        with self._lock:
            if attr.nlink == 0:
                self._entries.pop(attr.ino, None)
                return
            old = self._entries.get(attr.ino)
            if old is not None and old[0].ctime > attr.ctime:
                return
            if old is None and len(self._entries) >= self.max_entries:
                self._entries = {ino: e for ino, e in self._entries.items() if e[1] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[attr.ino] = (attr, now + self.ttl)

    def get(self, ino: int, now: float) -> tuple[Attr, float] | None:
        """(attr, seconds it stays fresh) or None."""
        hit = self._entries.get(ino)
        if hit is None:
            return None
        left = hit[1] - now
        if left <= 0:
            with self._lock:
                if self._entries.get(ino) is hit:
                    del self._entries[ino]
            return None
        return hit[0], left

    def drop(self, ino: int) -> None:
        """Forget an inode whose attrs changed in a way no answer told us."""
        with self._lock:
            self._entries.pop(ino, None)


class _Listing:
    __slots__ = ("names", "next_cookie", "expires")

    def __init__(self, next_cookie: int, expires: float):
        self.names: set[bytes] = set()
        self.next_cookie = next_cookie
        self.expires = expires


class Listings:
    """Complete name sets of directories this client created, for negative lookups."""

    def __init__(self, ttl: float, max_dirs: int = LISTINGS_MAX):
        self.ttl = ttl
        self.max_dirs = max_dirs
        self._dirs: dict[int, _Listing] = {}
        self._lock = threading.Lock()

    def made_dir(self, ino: int, next_cookie: int, now: float) -> None:
        """This client just made directory `ino`: it is empty."""
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._dirs) >= self.max_dirs:
                self._dirs = {i: d for i, d in self._dirs.items() if d.expires > now}
                if len(self._dirs) >= self.max_dirs:
                    self._dirs.clear()
            self._dirs[ino] = _Listing(next_cookie, now + self.ttl)

    def absent(self, parent: int, name: bytes, now: float) -> float:
        """For how many more seconds `name` is known not to exist in directory `parent` (0: not
        known)."""
        with self._lock:
            listing = self._dirs.get(parent)
            if listing is None or listing.expires <= now or name in listing.names or name in _DOTS:
                return 0.0
            return listing.expires - now

    def confirm(self, ino: int, next_cookie: int, now: float) -> None:
        """The master says directory `ino` has `next_cookie` now."""
        with self._lock:
            listing = self._dirs.get(ino)
            if listing is None:
                return
            if next_cookie != listing.next_cookie:
                del self._dirs[ino]  # someone else added a name
                return
            listing.expires = now + self.ttl

    def added(self, parent: int, name: bytes, next_cookie: int, now: float) -> None:
        """This client added `name` to `parent`, which now has `next_cookie`."""
        with self._lock:
            listing = self._dirs.get(parent)
            if listing is None:
                return
            if next_cookie != listing.next_cookie + 1 or len(listing.names) >= LISTING_NAMES_MAX:
                del self._dirs[parent]  # someone else added a name meanwhile (or too many names)
                return
            listing.names.add(name)
            listing.next_cookie = next_cookie
            listing.expires = now + self.ttl

    def removed(self, parent: int, name: bytes, next_cookie: int, now: float) -> None:
        """This client removed `name` from `parent` (no name was added by it)."""
        with self._lock:
            listing = self._dirs.get(parent)
            if listing is None:
                return
            listing.names.discard(name)
            if next_cookie != listing.next_cookie:
                del self._dirs[parent]
                return
            listing.expires = now + self.ttl

    def moved(self, parent: int, name: bytes, parent_cookie: int, newparent: int, newname: bytes,
              newparent_cookie: int, now: float) -> None:
        """This client renamed parent/name to newparent/newname (replacing whatever was there)."""
        if parent != newparent:
            self.removed(parent, name, parent_cookie, now)
            self.added(newparent, newname, newparent_cookie, now)
            return
        with self._lock:
            listing = self._dirs.get(parent)
            if listing is not None:
                listing.names.discard(name)
        self.added(parent, newname, newparent_cookie, now)

    def unsure(self, parent: int) -> None:
        """Something happened to `parent` that we cannot account for (a failed create: EEXIST)."""
        with self._lock:
            self._dirs.pop(parent, None)

    def forget(self, ino: int) -> None:
        """`ino` was removed: it is no directory of ours any more."""
        with self._lock:
            self._dirs.pop(ino, None)
