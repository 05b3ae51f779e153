"""The master's metadata as a pure, deterministic state machine.

Everything the master must not forget lives here: inodes, directory entries, the chunk table (with
each chunk's layout: copies or erasure-coded parts), the storage classes operators defined and
their assignments. `apply(entry)` runs one logged mutation and either changes the state
completely or raises FsError having changed nothing (every op checks first, then mutates), so
replicas that apply the same entries in the same order reach byte-identical `dump()`s. There is
no I/O, no clock (time comes in the entry's "ts") and no randomness; ids come from counters.

Optional args and their defaults: mknod `rdev`=0, rename/setxattr `flags`=0,
setclass `recursive`=False, readdir `offset`=0 and `limit`=READDIR_MAX, chunks `count`=1,
class_create `tier`="standard" (and exactly one of `copies`, `ec`), set_layout `ec`=None (copies).
Everything else listed in docs/DESIGN.md is required; a missing or mistyped arg is EINVAL.

Deliberate limits of this model:
- Reads are queries, not log entries, so atime changes only through setattr (noatime).
- write_chunk and commit_write do not check permissions: the client checked them at open, and a
  file created read-only must stay writable through the descriptor that created it.
- An inode and its chunks are freed when the last link goes, unless the client removing that
  link has it open (its `open` arg): then it is sustained (MooseFS's term) for that client, with
  no name, until the client's `release` or `expire_sessions` for it. A file another client has
  open is freed all the same: the master does not track every client's open files.
"""

import errno
from bisect import bisect_left, bisect_right
from stat import (
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFREG,
    S_IFSOCK,
    S_ISGID,
    S_ISUID,
    S_ISVTX,
    S_IXGRP,
)
from typing import NamedTuple

import msgpack

from mooseng.constants import CHUNK_SIZE, NAME_MAX, ROOT_INODE
from mooseng.ec import split_part_id
from mooseng.errors import FsError
from mooseng.master import classes
from mooseng.master.classes import BUILTIN_CLASSES, DEFAULT, StorageClass

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2

SYMLINK_MAX = 4095  # PATH_MAX less the terminating NUL, as Linux
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536  # all names of one inode, NUL-terminated, as listxattr returns them
MAX_FILE_SIZE = 1 << 57  # 128 PiB, as MooseFS
READDIR_MAX = 4096  # entries per readdir answer; the client pages on with next_offset
CHUNKS_MAX = 4096  # chunk refs per chunks answer
FIRST_COOKIE = 3  # readdir offsets 1 and 2 stay free for the "." and ".." a FUSE layer adds
DUMP_FORMAT = 1

R_OK, W_OK, X_OK = 4, 2, 1
S_IFMT = 0o170000  # stat.S_IFMT is a function
_U32 = 1 << 32
_U64 = 1 << 64
_DOTS = (b".", b"..")
_NODE_KINDS = (S_IFREG, S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK)


class ChunkInfo(NamedTuple):
    """A live chunk as the registry and the replication manager need it."""

    version: int
    sclass: str
    ec: tuple[int, int] | None  # its layout now (None: full copies)
    target: tuple[int, int] | None  # the layout its class converts it to (== ec: none to do)
    goal: int  # pieces a healthy chunk of layout `ec` has (classes.goal)
    copies: int  # full copies it keeps while (or once) it is in copies
    length: int  # its data bytes as the file's size says
    ino: int


# ChunkInfo(...) runs a Python-level __new__; the tuple's own saves a quarter of registry.follow()'s
# added cost per chunk (callgrind), and the fields are in order anyway.
_make_info = tuple.__new__


def _show(name: bytes) -> str:
    return name.decode("utf-8", "replace")


class _Dir:
    """The entries of one directory, with readdir cookies that stay valid across removals.

    Each entry gets the next value of a per-directory counter as its cookie. `cookies` and `names`
    are parallel lists in cookie order with None where an entry was removed, so resuming a readdir
    at any cookie is one bisect even if that entry is gone. The lists are compacted once more than
    half of them are holes, which keeps removal amortised O(1).
    """

    __slots__ = ("parent", "entries", "cookie_of", "cookies", "names", "holes", "next_cookie")

    def __init__(self, parent: int):
        self.parent = parent
        self.entries: dict[bytes, int] = {}  # name -> ino, in cookie order
        self.cookie_of: dict[bytes, int] = {}  # name -> cookie, in cookie order
        self.cookies: list[int] = []
        self.names: list[bytes | None] = []
        self.holes = 0
        self.next_cookie = FIRST_COOKIE

    def add(self, name: bytes, ino: int) -> None:
        cookie = self.next_cookie
        self.next_cookie = cookie + 1
        self.entries[name] = ino
        self.cookie_of[name] = cookie
        self.cookies.append(cookie)
        self.names.append(name)

    def remove(self, name: bytes) -> None:
        del self.entries[name]
        cookie = self.cookie_of.pop(name)
        self.names[bisect_left(self.cookies, cookie)] = None
        self.holes += 1
        if self.holes * 2 > len(self.names):
            self.names = list(self.cookie_of)
            self.cookies = list(self.cookie_of.values())
            self.holes = 0

    def page(self, offset: int, limit: int) -> list[tuple[bytes, int]]:
        """Up to `limit` (name, cookie) pairs with cookie > offset."""
        names, cookies = self.names, self.cookies
        out = []
        i, end = bisect_right(cookies, offset), len(names)
        while i < end and len(out) < limit:
            name = names[i]
            if name is not None:
                out.append((name, cookies[i]))
            i += 1
        return out


class _Inode:
    """One inode. Exactly one of dir (directories), chunks (regular files: chunk index ->
    chunk id) and target (symlinks) is set; devices, FIFOs and sockets have none."""

    __slots__ = (
        "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "atime", "mtime", "ctime", "sclass",
        "xattrs", "dir", "chunks", "target",
    )  # fmt: skip

    def __init__(self, ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, sclass):
        self.ino = ino
        self.mode = mode
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.size = size
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
        self.sclass = sclass
        self.xattrs: dict[bytes, bytes] | None = None
        self.dir: _Dir | None = None
        self.chunks: dict[int, int] | None = None
        self.target: bytes | None = None


def _attr(n: _Inode) -> dict:
    """The attr of an inode; a directory's also has `next_cookie`, which grows by one with every
    name added to it (and only then): a client that knows every name of a directory at one value
    knows that it still does while it sees that value."""
    attr = {
        "ino": n.ino, "mode": n.mode, "nlink": n.nlink, "uid": n.uid, "gid": n.gid, "rdev": n.rdev,
        "size": n.size, "atime": n.atime, "mtime": n.mtime, "ctime": n.ctime, "sclass": n.sclass,
    }  # fmt: skip
    if n.dir is not None:
        attr["next_cookie"] = n.dir.next_cookie
    return attr


def _made(n: _Inode, p: _Inode) -> dict:
    """mknod/mkdir/symlink/link: the inode's attr, with its parent's under "parent" (so that a
    client need not ask for the directory the kernel invalidates after every entry change)."""
    attr = _attr(n)
    attr["parent"] = _attr(p)
    return attr


# --- argument validation: the service validates too, but a bad entry must never corrupt state ---


def _ctx(ctx) -> tuple[int, int, list]:
    if type(ctx) is not dict:
        raise FsError(errno.EINVAL, "ctx: expected a map")
    uid, gid, gids = ctx.get("uid"), ctx.get("gid"), ctx.get("gids")
    if type(uid) is not int or type(gid) is not int or not (0 <= uid < _U32 and 0 <= gid < _U32):
        raise FsError(errno.EINVAL, "ctx: uid and gid must be 32-bit unsigned integers")
    if gids is None:
        gids = []
    elif type(gids) is not list or not all(type(g) is int for g in gids):
        raise FsError(errno.EINVAL, "ctx: gids must be a list of integers")
    return uid, gid, gids


def _uint(args: dict, key: str, limit: int = _U64, default=None) -> int:
    """A required unsigned integer arg, or an optional one if `default` is given (nil = absent)."""
    v = args.get(key)
    if v is None:
        v = default
    if type(v) is not int or not 0 <= v < limit:
        raise FsError(errno.EINVAL, f"{key}: expected an integer in [0, 2**{limit.bit_length() - 1}), got {v!r:.40}")
    return v


def _opt_uint(args: dict, key: str, limit: int = _U64) -> int | None:
    return None if args.get(key) is None else _uint(args, key, limit)


def _time(args: dict, key: str) -> int | str | None:
    v = args.get(key)
    if v is None or v == "now" or (type(v) is int and -(1 << 63) <= v < (1 << 63)):
        return v
    raise FsError(errno.EINVAL, f"{key}: expected nanoseconds or 'now'")


def _bytes(args: dict, key: str) -> bytes:
    v = args.get(key)
    if type(v) is not bytes:
        raise FsError(errno.EINVAL, f"{key}: expected bytes, got {type(v).__name__}")
    return v


def _name(args: dict, key: str = "name") -> bytes:
    name = _bytes(args, key)
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
    if not name:
        raise FsError(errno.ENOENT, "empty name")
    if b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"name {_show(name)!r} contains '/' or NUL")
    return name


def _flag(args: dict, key: str) -> bool:
    v = args.get(key)
    if v is None:
        return False
    if type(v) is not bool:
        raise FsError(errno.EINVAL, f"{key}: expected a boolean")
    return v


# --- permission rules, as a local Linux file system applies them ---


def _in_group(ctx, gid: int) -> bool:
    return ctx[1] == gid or gid in ctx[2]


def _allowed(n: _Inode, ctx, mask: int) -> bool:
    uid = ctx[0]
    if uid == 0:
        # root may do anything except execute a file that nobody may execute
        return not mask & X_OK or n.dir is not None or n.mode & 0o111 != 0
    if uid == n.uid:
        bits = n.mode >> 6
    elif _in_group(ctx, n.gid):
        bits = n.mode >> 3
    else:
        bits = n.mode
    return bits & mask == mask


def _need(n: _Inode, ctx, mask: int) -> None:
    if not _allowed(n, ctx, mask):
        raise FsError(errno.EACCES, f"permission denied on inode {n.ino}")


def _check_sticky(p: _Inode, n: _Inode, ctx) -> None:
    """In a sticky directory only root and the owners of the entry or directory may remove it."""
    uid = ctx[0]
    if p.mode & S_ISVTX and uid != 0 and uid != n.uid and uid != p.uid:
        raise FsError(errno.EPERM, f"sticky directory {p.ino}: not the owner of inode {n.ino}")


def _not_a_file(n: _Inode) -> FsError:
    return FsError(errno.EISDIR if n.dir is not None else errno.EINVAL, f"inode {n.ino} is not a regular file")


def _kill_suid(mode: int) -> int:
    """Drop set-user-ID, and set-group-ID when it means "set group" (group-exec set), as Linux
    does when a file is written, truncated or given away."""
    mode &= ~S_ISUID
    if mode & S_IXGRP:
        mode &= ~S_ISGID
    return mode


class Namespace:
    """Inodes, directories, chunks and classes. Feed it log entries in order with apply()."""

    def __init__(self):
        root = _Inode(ROOT_INODE, S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, DEFAULT)
        root.dir = _Dir(ROOT_INODE)
        self._inodes: dict[int, _Inode] = {ROOT_INODE: root}
        # chunk id -> [version, ino, index, layout]; every chunk belongs to exactly one regular file
        # (at `index`); layout None is full copies, (k, m) erasure-coded parts (see classes.py)
        self._chunks: dict[int, list] = {}
        self._classes: dict[str, StorageClass] = dict(BUILTIN_CLASSES)
        self._next_ino = ROOT_INODE + 1
        self._next_chunk = 1
        self._sustained: dict[int, int] = {}  # ino -> client id: unlinked while that client had it open
        self._origin = 0  # client id of the entry being applied (0: none)
        self._chunk_changes: set[int] | None = None  # see take_chunk_changes()

    # --- entry points ---

    def apply(self, entry: dict):
        """Run one mutation; raise FsError (state untouched) if it is malformed or not allowed."""
        if type(entry) is not dict:
            raise FsError(errno.EINVAL, "entry: expected a map")
        op = entry.get("op")
        fn = _MUTATIONS.get(op) if type(op) is str else None
        if fn is None:
            raise FsError(errno.EINVAL, f"unknown mutation {op!r}")
        args, ts = entry.get("args"), entry.get("ts")
        if type(args) is not dict:
            raise FsError(errno.EINVAL, "args: expected a map")
        if type(ts) is not int or not 0 <= ts < (1 << 63):
            raise FsError(errno.EINVAL, "ts: expected nanoseconds since the epoch")
        origin = entry.get("client_id")
        self._origin = origin if type(origin) is int else 0
        return fn(self, args, _ctx(entry.get("ctx")), ts)

    def query(self, op: str, args: dict, ctx: dict):
        """Answer a read-only op; never changes state."""
        fn = _QUERIES.get(op) if type(op) is str else None
        if fn is None:
            raise FsError(errno.EINVAL, f"unknown query {op!r}")
        if type(args) is not dict:
            raise FsError(errno.EINVAL, "args: expected a map")
        return fn(self, args, _ctx(ctx))

    # --- for the service: chunk accounting against what chunkservers report ---

    def chunk_version(self, chunk_id: int) -> int | None:
        """Current version of a live chunk, None if the chunk is unknown (a copy to delete)."""
        rec = self._chunks.get(chunk_id)
        return None if rec is None else rec[0]

    def iter_chunks(self):
        """Yield (chunk_id, ChunkInfo) for every live chunk. The caller holds the store lock
        while iterating."""
        for chunk_id, rec in self._chunks.items():
            yield chunk_id, self._info(rec)

    def chunk_info(self, chunk_id: int) -> ChunkInfo | None:
        """A live chunk's version, class, layout and goal; None if the chunk is unknown."""
        rec = self._chunks.get(chunk_id)
        return None if rec is None else self._info(rec)

    def _info(self, rec: list) -> ChunkInfo:
        version, ino, index, layout = rec
        n = self._inodes[ino]
        sclass = self._classes[n.sclass]
        length = n.size - index * CHUNK_SIZE
        length = CHUNK_SIZE if length > CHUNK_SIZE else 0 if length < 0 else length
        if layout == sclass.ec:  # the usual case, nothing to convert: spare the calls (registry.follow's cost)
            return _make_info(ChunkInfo, (version, n.sclass, layout, layout, sclass.goal, sclass.keeps, length, ino))
        return _make_info(ChunkInfo, (version, n.sclass, layout, classes.target(layout, sclass),
                                      classes.goal(layout, sclass), sclass.keeps, length, ino))

    def piece_version(self, stored_id: int) -> int | None:
        """The version a stored piece (a full copy, or a part: ec.part_id) must have, or None if
        no live chunk wants it (its chunk is gone, or the piece is not of the chunk's layout nor
        of the one it converts to): the registry deletes such pieces."""
        chunk_id, part = split_part_id(stored_id)
        rec = self._chunks.get(chunk_id)
        if rec is None:
            return None
        return rec[0] if classes.wanted(part, rec[3], self._classes[self._inodes[rec[1]].sclass]) else None

    def storage_class(self, name: str) -> StorageClass | None:
        return self._classes.get(name)

    @property
    def classes(self) -> list[StorageClass]:
        """Every storage class, built-in ones first, then by name."""
        return sorted(self._classes.values(), key=lambda c: (not c.builtin, c.name if not c.builtin else ""))

    def take_chunk_changes(self) -> set[int] | None:
        """Ids of the chunks created, freed, given a new version or a new class since the last
        call; None on the first call (nothing was recorded yet: the caller looks at every chunk).

        For the leader's chunk-state counts, so they follow the namespace without a pass over the
        whole chunk table. Only observes: the namespace's state and results do not depend on it,
        and it is not part of dump(), so a loaded namespace starts again from None.
        """
        changes, self._chunk_changes = self._chunk_changes, set()
        return changes

    @property
    def chunk_count(self) -> int:
        return len(self._chunks)

    @property
    def next_chunk_id(self) -> int:
        """Every chunk id ever given out is below this one."""
        return self._next_chunk

    @property
    def inode_count(self) -> int:
        return len(self._inodes)

    # --- lookup helpers: they check, never mutate ---

    def _get(self, args: dict, key: str = "ino") -> _Inode:
        ino = args.get(key)
        if type(ino) is not int:
            raise FsError(errno.EINVAL, f"{key}: expected an inode number")
        n = self._inodes.get(ino)
        if n is None:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return n

    def _getdir(self, args: dict, key: str) -> _Inode:
        n = self._get(args, key)
        if n.dir is None:
            raise FsError(errno.ENOTDIR, f"inode {n.ino} is not a directory")
        return n

    def _getfile(self, args: dict) -> _Inode:
        n = self._get(args)
        if n.chunks is None:
            raise _not_a_file(n)
        return n

    def _child(self, p: _Inode, name: bytes) -> _Inode:
        ino = p.dir.entries.get(name)
        if ino is None:
            raise FsError(errno.ENOENT, f"no entry {_show(name)!r} in directory {p.ino}")
        return self._inodes[ino]

    def _check_create(self, p: _Inode, name: bytes, ctx) -> None:
        _need(p, ctx, X_OK)
        if name in p.dir.entries or name in _DOTS:
            raise FsError(errno.EEXIST, f"{_show(name)!r} exists in directory {p.ino}")
        _need(p, ctx, W_OK)

    def _inside(self, d: _Inode, top: int) -> bool:
        """Whether directory d is `top` or lies below it."""
        ino = d.ino
        while ino != top:
            if ino == ROOT_INODE:
                return False
            ino = self._inodes[ino].dir.parent
        return True

    # --- mutation helpers: called only after every check passed ---

    def _create(self, p: _Inode, name: bytes, mode: int, ctx, ts: int) -> _Inode:
        uid, gid, _ = ctx
        if p.mode & S_ISGID:
            gid = p.gid
            if mode & S_IFMT == S_IFDIR:
                mode |= S_ISGID
            elif mode & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP and uid != 0 and not _in_group(ctx, gid):
                mode &= ~S_ISGID
        ino = self._next_ino
        self._next_ino = ino + 1
        n = _Inode(ino, mode, 1, uid, gid, 0, 0, ts, ts, ts, p.sclass)
        self._inodes[ino] = n
        p.dir.add(name, ino)
        p.mtime = p.ctime = ts
        return n

    def _last_link_gone(self, n: _Inode, opened: list) -> list[int]:
        """Drop an inode whose last link went, or sustain it if the client that removed the link
        says it has the inode open (and has an id to release it by); the chunks it freed."""
        if self._origin and n.ino in opened:
            self._sustained[n.ino] = self._origin
            return []
        return self._drop(n)

    def _release(self, args, ctx, ts):
        """release{ino} -> {freed}: the client that sustained the inode closed it for the last
        time. Not sustained (never, or already released or expired): nothing to do."""
        ino = _uint(args, "ino")
        if self._sustained.pop(ino, None) is None:
            return {"freed": []}
        return {"freed": self._drop(self._inodes[ino])}

    def _expire_sessions(self, args, ctx, ts):
        """expire_sessions{clients} -> {freed, inodes}: these clients are gone (the leader has
        not heard from them for the session timeout): drop what they sustained."""
        clients = args.get("clients")
        if type(clients) is not list:
            raise FsError(errno.EINVAL, "clients: expected a list of client ids")
        gone = set(clients)
        inos = sorted(ino for ino, owner in self._sustained.items() if owner in gone)
        freed = []
        for ino in inos:
            del self._sustained[ino]
            freed += self._drop(self._inodes[ino])
        return {"freed": freed, "inodes": inos}

    def sustained_owners(self) -> set[int]:
        """The clients holding sustained inodes (for the service's session expiry)."""
        return set(self._sustained.values())

    def _drop(self, n: _Inode) -> list[int]:
        """Forget an inode that has no links left; return the chunk ids it freed."""
        del self._inodes[n.ino]
        if not n.chunks:
            return []
        freed = list(n.chunks.values())
        chunks = self._chunks
        for chunk_id in freed:
            del chunks[chunk_id]
        self._changed(freed)
        return freed

    def _changed(self, chunk_ids) -> None:
        if self._chunk_changes is not None:
            self._chunk_changes.update(chunk_ids)

    # --- mutations ---

    def _mknod(self, args, ctx, ts):
        p = self._getdir(args, "parent")
        name = _name(args)
        mode = _uint(args, "mode", 1 << 16)
        rdev = _uint(args, "rdev", default=0)
        kind = mode & S_IFMT or S_IFREG
        if kind == S_IFDIR:
            raise FsError(errno.EPERM, "mknod cannot make a directory; use mkdir")
        if kind not in _NODE_KINDS:
            raise FsError(errno.EINVAL, f"mknod: unsupported file type {kind:o}")
        self._check_create(p, name, ctx)
        if kind in (S_IFCHR, S_IFBLK):
            if ctx[0] != 0:
                raise FsError(errno.EPERM, "only root may make device nodes")
        else:
            rdev = 0
        n = self._create(p, name, kind | mode & 0o7777, ctx, ts)
        n.rdev = rdev
        if kind == S_IFREG:
            n.chunks = {}
        return _made(n, p)

    def _mkdir(self, args, ctx, ts):
        p = self._getdir(args, "parent")
        name = _name(args)
        mode = _uint(args, "mode", 1 << 16)
        self._check_create(p, name, ctx)
        n = self._create(p, name, S_IFDIR | mode & 0o1777, ctx, ts)
        n.nlink = 2
        n.dir = _Dir(p.ino)
        p.nlink += 1
        return _made(n, p)

    def _symlink(self, args, ctx, ts):
        p = self._getdir(args, "parent")
        name = _name(args)
        target = _bytes(args, "target")
        if not target:
            raise FsError(errno.ENOENT, "empty symlink target")
        if len(target) > SYMLINK_MAX:
            raise FsError(errno.ENAMETOOLONG, f"symlink target longer than {SYMLINK_MAX} bytes")
        if b"\0" in target:
            raise FsError(errno.EINVAL, "symlink target contains NUL")
        self._check_create(p, name, ctx)
        n = self._create(p, name, S_IFLNK | 0o777, ctx, ts)
        n.target = target
        n.size = len(target)
        return _made(n, p)

    def _link(self, args, ctx, ts):
        n = self._get(args)
        p = self._getdir(args, "parent")
        name = _name(args)
        self._check_create(p, name, ctx)
        if n.dir is not None:
            raise FsError(errno.EPERM, "hard links to directories are not allowed")
        if n.nlink == 0:
            raise FsError(errno.ENOENT, f"inode {n.ino} was unlinked")
        n.nlink += 1
        n.ctime = ts
        p.dir.add(name, n.ino)
        p.mtime = p.ctime = ts
        return _made(n, p)

    def _unlink(self, args, ctx, ts):
        p = self._getdir(args, "parent")
        name = _name(args)
        opened = _open_inos(args)
        if name in _DOTS:
            raise FsError(errno.EISDIR, f"cannot unlink {_show(name)!r}")
        _need(p, ctx, X_OK)
        n = self._child(p, name)
        _need(p, ctx, W_OK)
        _check_sticky(p, n, ctx)
        if n.dir is not None:
            raise FsError(errno.EISDIR, f"{_show(name)!r} is a directory")
        p.dir.remove(name)
        p.mtime = p.ctime = ts
        n.nlink -= 1
        n.ctime = ts
        result = {"freed": self._last_link_gone(n, opened) if n.nlink == 0 else [], "attr": _attr(n),
                  "parent": _attr(p)}
        if n.ino in self._sustained:
            result["sustained"] = True
        return result

    def _rmdir(self, args, ctx, ts):
        p = self._getdir(args, "parent")
        name = _name(args)
        if name == b".":
            raise FsError(errno.EINVAL, "cannot remove '.'")
        if name == b"..":
            raise FsError(errno.ENOTEMPTY, "cannot remove '..'")
        _need(p, ctx, X_OK)
        n = self._child(p, name)
        _need(p, ctx, W_OK)
        _check_sticky(p, n, ctx)
        if n.dir is None:
            raise FsError(errno.ENOTDIR, f"{_show(name)!r} is not a directory")
        if n.dir.entries:
            raise FsError(errno.ENOTEMPTY, f"directory {_show(name)!r} is not empty")
        p.dir.remove(name)
        p.nlink -= 1
        p.mtime = p.ctime = ts
        del self._inodes[n.ino]
        gone = _attr(n)
        gone["nlink"] = 0
        return {"attr": gone, "parent": _attr(p)}

    def _rename(self, args, ctx, ts):
        sp = self._getdir(args, "parent")
        name = _name(args)
        opened = _open_inos(args)
        dp = self._getdir(args, "newparent")
        newname = _name(args, "newname")
        flags = _uint(args, "flags", default=0)
        if flags not in (0, RENAME_NOREPLACE, RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, f"rename: bad flags {flags}")
        if name in _DOTS:
            raise FsError(errno.EBUSY, f"cannot rename {_show(name)!r}")
        if newname in _DOTS:
            code = errno.EEXIST if flags == RENAME_NOREPLACE else errno.EBUSY
            raise FsError(code, f"cannot replace {_show(newname)!r}")
        _need(sp, ctx, X_OK)
        _need(dp, ctx, X_OK)
        src = self._child(sp, name)
        dino = dp.dir.entries.get(newname)
        dst = None if dino is None else self._inodes[dino]
        if flags == RENAME_EXCHANGE and dst is None:
            raise FsError(errno.ENOENT, f"no entry {_show(newname)!r} to exchange with")
        if flags == RENAME_NOREPLACE and dst is not None:
            raise FsError(errno.EEXIST, f"{_show(newname)!r} exists")
        _need(sp, ctx, W_OK)
        _need(dp, ctx, W_OK)
        _check_sticky(sp, src, ctx)
        if dst is not None:
            _check_sticky(dp, dst, ctx)
        if dst is src:  # two names of one inode: POSIX says do nothing
            return {"freed": [], "attr": _attr(src), "replaced": _attr(src), "parent": _attr(sp),
                    "newparent": _attr(dp)}
        moving = sp is not dp
        if flags == RENAME_EXCHANGE:
            return self._exchange(sp, name, src, dp, newname, dst, ctx, ts)
        if src.dir is not None:
            if moving and self._inside(dp, src.ino):
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if dst is not None and dst.dir is None:
                raise FsError(errno.ENOTDIR, f"{_show(newname)!r} is not a directory")
        elif dst is not None and dst.dir is not None:
            raise FsError(errno.EISDIR, f"{_show(newname)!r} is a directory")
        if dst is not None and dst.dir is not None and dst.dir.entries:
            raise FsError(errno.ENOTEMPTY, f"directory {_show(newname)!r} is not empty")
        if moving and src.dir is not None:
            _need(src, ctx, W_OK)  # its ".." changes
        freed = []
        if dst is not None:
            dp.dir.remove(newname)
            if dst.dir is not None:
                dp.nlink -= 1
                del self._inodes[dst.ino]
            else:
                dst.nlink -= 1
                dst.ctime = ts
                if dst.nlink == 0:
                    freed = self._last_link_gone(dst, opened)
        sp.dir.remove(name)
        dp.dir.add(newname, src.ino)
        if moving and src.dir is not None:
            sp.nlink -= 1
            dp.nlink += 1
            src.dir.parent = dp.ino
        sp.mtime = sp.ctime = dp.mtime = dp.ctime = src.ctime = ts
        replaced = None if dst is None else _attr(dst)
        if replaced is not None and dst.dir is not None:
            replaced["nlink"] = 0  # a replaced directory is gone whatever its count was
        result = {"freed": freed, "attr": _attr(src), "replaced": replaced, "parent": _attr(sp),
                  "newparent": _attr(dp)}
        if dst is not None and dst.ino in self._sustained:
            result["sustained"] = True
        return result

    def _exchange(self, sp, name, src, dp, newname, dst, ctx, ts):
        moving = sp is not dp
        if moving:
            if src.dir is not None and self._inside(dp, src.ino):
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if dst.dir is not None and self._inside(sp, dst.ino):
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            if src.dir is not None:
                _need(src, ctx, W_OK)
            if dst.dir is not None:
                _need(dst, ctx, W_OK)
        sp.dir.entries[name] = dst.ino  # both names keep their readdir cookies
        dp.dir.entries[newname] = src.ino
        if moving:
            delta = (src.dir is not None) - (dst.dir is not None)
            sp.nlink -= delta
            dp.nlink += delta
            if src.dir is not None:
                src.dir.parent = dp.ino
            if dst.dir is not None:
                dst.dir.parent = sp.ino
        sp.mtime = sp.ctime = dp.mtime = dp.ctime = src.ctime = dst.ctime = ts
        return {"freed": [], "attr": _attr(src), "replaced": _attr(dst), "parent": _attr(sp),
                "newparent": _attr(dp)}

    def _setattr(self, args, ctx, ts):
        n = self._get(args)
        mode = _opt_uint(args, "mode", 1 << 16)
        uid = _opt_uint(args, "uid", _U32)
        gid = _opt_uint(args, "gid", _U32)
        size = _opt_uint(args, "size")
        atime, mtime = _time(args, "atime"), _time(args, "mtime")
        caller = ctx[0]
        owner = caller == 0 or caller == n.uid
        if uid is not None and caller != 0 and (caller != n.uid or uid != n.uid):
            raise FsError(errno.EPERM, "only root may change the owner")
        if gid is not None and caller != 0 and (caller != n.uid or (gid != n.gid and not _in_group(ctx, gid))):
            raise FsError(errno.EPERM, f"may not change the group to {gid}")
        if mode is not None and not owner:
            raise FsError(errno.EPERM, "only the owner may change the mode")
        if size is not None:
            if n.chunks is None:
                raise _not_a_file(n)
            if size > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG, f"size above {MAX_FILE_SIZE}")
            _need(n, ctx, W_OK)
        if type(atime) is int or type(mtime) is int:
            if not owner:
                raise FsError(errno.EPERM, "only the owner may set explicit times")
        elif (atime is not None or mtime is not None) and not owner:
            _need(n, ctx, W_OK)

        if uid is not None:
            n.uid = uid
        if gid is not None:
            n.gid = gid
        if mode is not None:
            mode &= 0o7777
            if caller != 0 and not _in_group(ctx, n.gid):
                mode &= ~S_ISGID
            n.mode = n.mode & S_IFMT | mode
        elif (uid is not None or gid is not None) and n.dir is None:
            n.mode = _kill_suid(n.mode)
        freed, tail = [], None
        if size is not None and size != n.size:
            if size < n.size:
                freed, tail = self._shrink(n, size)
            n.size = size
            n.mtime = ts
            if caller != 0 and mode is None:
                n.mode = _kill_suid(n.mode)
        if atime is not None:
            n.atime = ts if atime == "now" else atime
        if mtime is not None:
            n.mtime = ts if mtime == "now" else mtime
        if any(v is not None for v in (uid, gid, mode, size, atime, mtime)):
            n.ctime = ts
        return {"attr": _attr(n), "freed": freed, "tail": tail}

    def _shrink(self, n: _Inode, size: int):
        """Free the chunks wholly past `size`; bump the version of the chunk that `size` cuts."""
        keep = -(-size // CHUNK_SIZE)
        chunks = self._chunks
        freed = [n.chunks.pop(i) for i in [i for i in n.chunks if i >= keep]]
        for chunk_id in freed:
            del chunks[chunk_id]
        self._changed(freed)
        tail = None
        length = size % CHUNK_SIZE
        chunk_id = n.chunks.get(size // CHUNK_SIZE) if length else None
        if chunk_id is not None:
            rec = chunks[chunk_id]
            rec[0] += 1
            self._changed((chunk_id,))
            tail = {"chunk_id": chunk_id, "version": rec[0], "expect_version": rec[0] - 1, "length": length}
            if rec[3] is not None:
                tail["ec"] = list(rec[3])
        return freed, tail

    def _xattr_check(self, n: _Inode, name: bytes, ctx, write: bool) -> None:
        """Namespace rules of Linux xattr_permission(); system.* (ACLs) is not supported."""
        if name.startswith(b"user."):
            if n.dir is None and n.chunks is None:
                raise FsError(errno.EPERM if write else errno.ENODATA, "user xattrs only on files and directories")
            if write and n.dir is not None and n.mode & S_ISVTX and ctx[0] not in (0, n.uid):
                raise FsError(errno.EPERM, "user xattrs of a sticky directory belong to its owner")
            _need(n, ctx, W_OK if write else R_OK)
        elif name.startswith(b"trusted."):
            if ctx[0] != 0:
                raise FsError(errno.EPERM if write else errno.ENODATA, "trusted xattrs are for root")
        elif name.startswith(b"security."):
            if write and ctx[0] not in (0, n.uid):
                raise FsError(errno.EPERM, "security xattrs belong to the owner")
        else:
            raise FsError(errno.ENOTSUP, f"xattr namespace of {_show(name)!r} is not supported")

    def _setxattr(self, args, ctx, ts):
        n = self._get(args)
        name = _xattr_name(args)
        value = _bytes(args, "value")
        flags = _uint(args, "flags", default=0)
        if flags not in (0, XATTR_CREATE, XATTR_REPLACE):
            raise FsError(errno.EINVAL, f"setxattr: bad flags {flags}")
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(errno.E2BIG, f"xattr value longer than {XATTR_SIZE_MAX} bytes")
        self._xattr_check(n, name, ctx, True)
        xattrs = n.xattrs or {}
        exists = name in xattrs
        if flags == XATTR_CREATE and exists:
            raise FsError(errno.EEXIST, f"xattr {_show(name)!r} exists")
        if flags == XATTR_REPLACE and not exists:
            raise FsError(errno.ENODATA, f"no xattr {_show(name)!r}")
        if not exists and sum(len(k) + 1 for k in xattrs) + len(name) + 1 > XATTR_LIST_MAX:
            raise FsError(errno.ENOSPC, "too many xattr names on this inode")
        xattrs[name] = value
        n.xattrs = xattrs
        n.ctime = ts
        return None

    def _removexattr(self, args, ctx, ts):
        n = self._get(args)
        name = _xattr_name(args)
        self._xattr_check(n, name, ctx, True)
        if not n.xattrs or name not in n.xattrs:
            raise FsError(errno.ENODATA, f"no xattr {_show(name)!r}")
        del n.xattrs[name]
        if not n.xattrs:
            n.xattrs = None
        n.ctime = ts
        return None

    def _setclass(self, args, ctx, ts):
        n = self._get(args)
        name = args.get("sclass")
        if type(name) is not str or name not in self._classes:
            raise FsError(errno.EINVAL, f"unknown storage class {name!r:.60}")
        recursive = _flag(args, "recursive")
        caller = ctx[0]
        if caller != 0 and caller != n.uid:
            raise FsError(errno.EPERM, f"only the owner may change the class of inode {n.ino}")
        inodes = self._inodes
        changed = skipped = 0
        seen = set()  # hard-linked files can be met more than once
        stack = [n]
        while stack:
            m = stack.pop()
            if m.nlink > 1 and m.dir is None:
                if m.ino in seen:
                    continue
                seen.add(m.ino)
            if caller != 0 and caller != m.uid:
                skipped += 1
            elif m.sclass != name:
                m.sclass = name
                m.ctime = ts
                if m.chunks:
                    self._changed(m.chunks.values())
                changed += 1
            if recursive and m.dir is not None:
                stack.extend(inodes[i] for i in m.dir.entries.values())
        return {"changed": changed, "skipped": skipped}

    def _class_create(self, args, ctx, ts):
        """class_create{name, copies? | ec?: [k, m], tier?} -> the class (as `classes` lists it)."""
        if ctx[0] != 0:
            raise FsError(errno.EPERM, "only root may create storage classes")
        name, copies, ec, tier = args.get("name"), args.get("copies"), args.get("ec"), args.get("tier")
        if tier is None:
            tier = "standard"
        if type(tier) is not str or not classes.NAME_RE.fullmatch(tier):
            raise FsError(errno.EINVAL, f"bad tier {tier!r:.40}")
        try:
            sclass = StorageClass(name, copies=copies, ec=tuple(ec) if type(ec) is list else ec, tier=tier)
        except ValueError as exc:
            raise FsError(errno.EINVAL, str(exc)) from None
        if name in self._classes:
            raise FsError(errno.EEXIST, f"storage class {name!r} exists")
        self._classes[name] = sclass
        return sclass.to_dict()

    def _class_delete(self, args, ctx, ts):
        """class_delete{name} -> None; refused for built-in classes and while an inode has it.

        Looks at every inode: deleting a class is rare, and a use count kept through every
        create, unlink and setclass would cost more than it saves.
        """
        if ctx[0] != 0:
            raise FsError(errno.EPERM, "only root may delete storage classes")
        name = args.get("name")
        sclass = self._classes.get(name) if type(name) is str else None
        if sclass is None:
            raise FsError(errno.ENOENT, f"no storage class {name!r:.60}")
        if sclass.builtin:
            raise FsError(errno.EPERM, f"storage class {name!r} is built in")
        users = sum(1 for n in self._inodes.values() if n.sclass == name)
        if users:
            raise FsError(errno.EBUSY, f"storage class {name!r} is used by {users} inode{'s' if users > 1 else ''}")
        del self._classes[name]
        return None

    def _set_layout(self, args, ctx, ts):
        """set_layout{chunk_id, version, ec: [k, m] | None} -> {chunk_id, version, ec}: a conversion
        is complete (the pieces of the new layout exist at `version + 1`, see the service). The
        chunk must still be at `version` and `ec` must be the layout its class converts it to;
        the version goes up by one, so that pieces of the old layout are stale from now on (a part
        id does not say its geometry: old parts must never pass for new ones)."""
        chunk_id = _uint(args, "chunk_id")
        version = _uint(args, "version")
        ec = args.get("ec")
        rec = self._chunks.get(chunk_id)
        if rec is None:
            raise FsError(errno.ENOENT, f"no chunk {chunk_id}")
        if rec[0] != version:
            raise FsError(errno.ESTALE, f"chunk {chunk_id} is at version {rec[0]}, not {version}")
        want = classes.target(rec[3], self._classes[self._inodes[rec[1]].sclass])
        if (None if ec is None else ec if type(ec) is not list else tuple(ec)) != want or want == rec[3]:
            raise FsError(errno.EINVAL, f"chunk {chunk_id}: layout {ec!r:.40} is not the one its class converts it to")
        rec[0] += 1
        rec[3] = want
        self._changed((chunk_id,))
        return _with_layout({"chunk_id": chunk_id, "version": rec[0]}, want)

    def _bump_version(self, args, ctx, ts):
        """bump_version{chunk_id, version} -> {chunk_id, version}: a write session missed some
        pieces, and the ones that stored it have taken `version + 1` (see the service): logging
        that version makes the pieces that missed the write stale for every master from now on,
        not only fenced in the leader's memory. The chunk must still be at `version`."""
        chunk_id = _uint(args, "chunk_id")
        version = _uint(args, "version")
        rec = self._chunks.get(chunk_id)
        if rec is None:
            raise FsError(errno.ENOENT, f"no chunk {chunk_id}")
        if rec[0] != version:
            raise FsError(errno.ESTALE, f"chunk {chunk_id} is at version {rec[0]}, not {version}")
        rec[0] += 1
        self._changed((chunk_id,))
        return _with_layout({"chunk_id": chunk_id, "version": rec[0]}, rec[3])

    def _write_chunk(self, args, ctx, ts):
        index = _uint(args, "index")
        n = self._getfile(args)
        if index * CHUNK_SIZE >= MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, f"chunk index {index} is past the maximum file size")
        chunk_id = n.chunks.get(index)
        if chunk_id is not None:
            rec = self._chunks[chunk_id]
            rec[0] += 1
            self._changed((chunk_id,))
            return _with_layout({"chunk_id": chunk_id, "version": rec[0], "expect_version": rec[0] - 1, "new": False},
                                rec[3])
        chunk_id = self._next_chunk
        self._next_chunk = chunk_id + 1
        layout = self._classes[n.sclass].ec
        self._chunks[chunk_id] = [1, n.ino, index, layout]
        n.chunks[index] = chunk_id
        self._changed((chunk_id,))
        return _with_layout({"chunk_id": chunk_id, "version": 1, "expect_version": 0, "new": True}, layout)

    def _commit_write(self, args, ctx, ts):
        size = _uint(args, "size")
        n = self._getfile(args)
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, f"size above {MAX_FILE_SIZE}")
        if size > n.size:
            n.size = size
        n.mtime = n.ctime = ts
        if ctx[0] != 0:
            n.mode = _kill_suid(n.mode)
        return _attr(n)

    # --- queries ---

    def _lookup(self, args, ctx):
        p = self._getdir(args, "parent")
        name = _name(args)
        _need(p, ctx, X_OK)
        if name == b".":
            return _attr(p)
        if name == b"..":
            return _attr(self._inodes[p.dir.parent])
        return _attr(self._child(p, name))

    def _getattr(self, args, ctx):
        return _attr(self._get(args))

    def _readdir(self, args, ctx):
        n = self._getdir(args, "ino")
        offset = _uint(args, "offset", default=0)
        limit = _uint(args, "limit", default=READDIR_MAX)
        if limit == 0:
            raise FsError(errno.EINVAL, "limit: must be positive")
        _need(n, ctx, R_OK)
        entries, inodes = n.dir.entries, self._inodes
        page = n.dir.page(offset, min(limit, READDIR_MAX))
        return [[name, _attr(inodes[entries[name]]), cookie] for name, cookie in page]

    def _readlink(self, args, ctx):
        n = self._get(args)
        if n.target is None:
            raise FsError(errno.EINVAL, f"inode {n.ino} is not a symlink")
        return n.target

    def _getxattr(self, args, ctx):
        n = self._get(args)
        name = _xattr_name(args)
        self._xattr_check(n, name, ctx, False)
        value = n.xattrs.get(name) if n.xattrs else None
        if value is None:
            raise FsError(errno.ENODATA, f"no xattr {_show(name)!r}")
        return value

    def _listxattr(self, args, ctx):
        n = self._get(args)
        if not n.xattrs:
            return []
        if ctx[0] == 0:
            return list(n.xattrs)
        return [k for k in n.xattrs if not k.startswith(b"trusted.")]

    def _statfs(self, args, ctx):
        """Inode and chunk counts only: byte totals come from the chunkservers, which the
        service knows and merges in."""
        return {"inodes": len(self._inodes), "chunks": len(self._chunks), "name_max": NAME_MAX}

    def _chunks_query(self, args, ctx):
        n = self._getfile(args)
        index = _uint(args, "index")
        count = _uint(args, "count", default=1)
        if count == 0:
            raise FsError(errno.EINVAL, "count: must be positive")
        chunks, table = n.chunks, self._chunks
        out = []
        for i in range(index, index + min(count, CHUNKS_MAX)):
            chunk_id = chunks.get(i)
            if chunk_id is None:
                out.append({"index": i, "chunk_id": 0, "version": 0})
            else:
                rec = table[chunk_id]
                out.append(_with_layout({"index": i, "chunk_id": chunk_id, "version": rec[0]}, rec[3]))
        return out

    def _getclass(self, args, ctx):
        return self._get(args).sclass

    def _classes_query(self, args, ctx):
        return [c.to_dict() for c in self.classes]

    # --- snapshots ---

    def dump(self) -> bytes:
        """Serialise the whole state canonically: equal states give equal bytes.

        Streams through one Packer instead of building the state as lists first: a namespace of
        millions of inodes would otherwise exist twice and keep the garbage collector busy while
        the store lock is held.
        """
        packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        pack, array = packer.pack, packer.pack_array_header
        packer.pack_map_header(6)
        custom = [[c.name, c.copies, c.ec, c.tier] for c in self.classes if not c.builtin]
        sustained = sorted(self._sustained.items())
        for key, value in (("format", DUMP_FORMAT), ("next_ino", self._next_ino), ("next_chunk", self._next_chunk),
                           ("classes", custom), ("sustained", sustained)):
            pack(key)
            pack(value)
        pack("inodes")
        array(len(self._inodes))
        table = self._chunks
        for n in self._inodes.values():
            head = [n.ino, n.mode, n.nlink, n.uid, n.gid, n.rdev, n.size, n.atime, n.mtime, n.ctime, n.sclass]
            xattrs = list(n.xattrs.items()) if n.xattrs else None
            d = n.dir
            if d is None:
                body = n.target if n.chunks is None else [
                    (i, c, table[c][0]) if table[c][3] is None else (i, c, table[c][0], table[c][3])
                    for i, c in n.chunks.items()
                ]
                pack([*head, xattrs, body])
                continue
            array(len(head) + 2)
            for value in head:
                pack(value)
            pack(xattrs)
            array(3)
            pack(d.parent)
            pack(d.next_cookie)
            array(len(d.entries))
            entries = d.entries
            for name, cookie in d.cookie_of.items():
                pack((name, entries[name], cookie))
        return packer.bytes()

    @classmethod
    def load(cls, data: bytes) -> "Namespace":
        """Rebuild a namespace from dump(); ValueError if the bytes are not one."""
        ns = cls.__new__(cls)
        ns._chunk_changes = None
        ns._inodes = inodes = {}
        ns._chunks = table = {}
        header = {}
        try:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1 << 20))
            unpacker.feed(data)
            for _ in range(unpacker.read_map_header()):
                key = unpacker.unpack()
                if key != "inodes":
                    header[key] = unpacker.unpack()
                    continue
                if header.get("format") != DUMP_FORMAT:
                    raise ValueError(f"unknown dump format {header.get('format')!r}")
                for _ in range(unpacker.read_array_header()):
                    *head, xattrs, body = unpacker.unpack()
                    n = _Inode(*head)
                    ino, mode = n.ino, n.mode
                    if xattrs:
                        n.xattrs = {k: v for k, v in xattrs}
                    kind = mode & S_IFMT
                    if kind == S_IFDIR:
                        parent, next_cookie, entries = body
                        d = n.dir = _Dir(parent)
                        for name, child, cookie in entries:
                            d.entries[name] = child
                            d.cookie_of[name] = cookie
                            d.cookies.append(cookie)
                            d.names.append(name)
                        d.next_cookie = next_cookie
                    elif kind == S_IFREG:
                        n.chunks = {}
                        for index, chunk_id, version, *layout in body:
                            n.chunks[index] = chunk_id
                            table[chunk_id] = [version, ino, index, tuple(layout[0]) if layout else None]
                    elif kind == S_IFLNK:
                        n.target = body
                    inodes[ino] = n
            if unpacker.tell() != len(data):
                raise ValueError("trailing bytes")
            ns._next_ino = header["next_ino"]
            ns._next_chunk = header["next_chunk"]
            ns._classes = dict(BUILTIN_CLASSES)  # a dump from before operator classes has none
            for name, copies, ec, tier in header.get("classes", ()):
                ns._classes[name] = StorageClass(name, copies=copies, ec=ec and tuple(ec), tier=tier)
            ns._sustained = {ino: owner for ino, owner in header.get("sustained", ())}  # older dumps: none
            ns._origin = 0
        except (KeyError, TypeError, ValueError, msgpack.UnpackException, msgpack.OutOfData) as exc:
            raise ValueError(f"not a namespace dump: {exc!r}") from exc
        if ROOT_INODE not in inodes or inodes[ROOT_INODE].dir is None:
            raise ValueError("not a namespace dump: no root directory")
        return ns


def _open_inos(args: dict) -> list:
    """The optional `open` arg of unlink and rename: inodes the calling client has open."""
    opened = args.get("open", [])
    if type(opened) is not list:
        raise FsError(errno.EINVAL, "open: expected a list of inode numbers")
    return opened


def _with_layout(ref: dict, layout: tuple[int, int] | None) -> dict:
    """A chunk ref with "ec": [k, m] for an erasure-coded chunk (copies: no key, as before)."""
    if layout is not None:
        ref["ec"] = list(layout)
    return ref


def _xattr_name(args: dict) -> bytes:
    name = _bytes(args, "name")
    if not name or len(name) > XATTR_NAME_MAX:
        raise FsError(errno.ERANGE, f"xattr name must be 1 to {XATTR_NAME_MAX} bytes")
    return name


_MUTATIONS = {
    "mknod": Namespace._mknod,
    "mkdir": Namespace._mkdir,
    "symlink": Namespace._symlink,
    "link": Namespace._link,
    "unlink": Namespace._unlink,
    "rmdir": Namespace._rmdir,
    "rename": Namespace._rename,
    "setattr": Namespace._setattr,
    "setxattr": Namespace._setxattr,
    "removexattr": Namespace._removexattr,
    "setclass": Namespace._setclass,
    "write_chunk": Namespace._write_chunk,
    "class_create": Namespace._class_create,
    "class_delete": Namespace._class_delete,
    "set_layout": Namespace._set_layout,
    "bump_version": Namespace._bump_version,
    "release": Namespace._release,
    "expire_sessions": Namespace._expire_sessions,
    "commit_write": Namespace._commit_write,
}

_QUERIES = {
    "lookup": Namespace._lookup,
    "getattr": Namespace._getattr,
    "readdir": Namespace._readdir,
    "readlink": Namespace._readlink,
    "getxattr": Namespace._getxattr,
    "listxattr": Namespace._listxattr,
    "statfs": Namespace._statfs,
    "chunks": Namespace._chunks_query,
    "getclass": Namespace._getclass,
    "classes": Namespace._classes_query,
}

MUTATIONS = frozenset(_MUTATIONS)
QUERIES = frozenset(_QUERIES)
