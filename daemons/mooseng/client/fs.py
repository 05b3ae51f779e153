"""The MooseNG client library: namespace operations and file I/O by inode, and path helpers.

This is what the FUSE layer calls, and what tests, the CLI and benchmarks use without a mount.
Methods take an optional `cred` (the caller's uid/gid/groups; the client's default otherwise) and
raise FsError. Names are bytes (str is encoded as the kernel would pass it). Attributes come back
as `Attr`, with sizes and mtimes that include this client's buffered writes.
"""

import errno
import functools
import os
import time
from stat import S_IFREG, S_ISDIR, S_ISLNK

from mooseng.client import ecio, metrics
from mooseng.client.chunkclient import ChunkClient
from mooseng.client.filehandle import LOCATIONS_AHEAD, Files
from mooseng.client.masterclient import ROOT, Attr, Cred, MasterClient
from mooseng.client.metacache import AttrCache, Listings
from mooseng.constants import NAME_MAX, ROOT_INODE
from mooseng.errors import FsError

R_OK, W_OK, X_OK = os.R_OK, os.W_OK, os.X_OK
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
XATTR_CREATE, XATTR_REPLACE = 1, 2
SYMLOOP_MAX = 40  # as Linux
READ_PIECE = 16 << 20  # read_file reads this much per call
# xattr namespaces whose answers do not depend on the caller (the master checks no permission
# to read them), so one cached answer serves everyone.
_CACHED_XATTRS = (b"security.", b"system.")
XATTR_CACHE_MAX = 10000


def _op(name: str):
    """Count and time one client operation."""

    def wrap(fn):
        observe = metrics.OPERATIONS.observe

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            error = "INTERNAL"
            try:
                result = fn(*args, **kwargs)
                error = ""
                return result
            except FsError as exc:
                error = errno.errorcode.get(exc.errno, str(exc.errno))
                raise
            finally:
                observe(name, time.perf_counter() - start, error)

        return timed

    return wrap


def _name(name: bytes | str) -> bytes:
    if isinstance(name, str):
        name = os.fsencode(name)
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
    return name


def allowed(attr: Attr, cred: Cred, mask: int) -> bool:
    """The kernel's mode-bit check (generic_permission without ACLs)."""
    if cred.uid == 0:
        # root may do anything, except execute a file that has no x bit at all
        return not mask & X_OK or S_ISDIR(attr.mode) or bool(attr.mode & 0o111)
    if cred.uid == attr.uid:
        bits = attr.mode >> 6
    elif cred.gid == attr.gid or attr.gid in cred.gids:
        bits = attr.mode >> 3
    else:
        bits = attr.mode
    return bits & mask == mask


def _open_mask(flags: int) -> int:
    mask = {os.O_RDONLY: R_OK, os.O_WRONLY: W_OK, os.O_RDWR: R_OK | W_OK}.get(flags & os.O_ACCMODE, R_OK | W_OK)
    return mask | W_OK if flags & os.O_TRUNC else mask


class StatFs:
    """statvfs numbers from the master's statfs (space over the live chunkservers' disks);
    sizes in blocks of `block_size` bytes. Every free block is available to every user."""

    __slots__ = ("block_size", "blocks", "blocks_free", "files", "files_free", "name_max")

    def __init__(self, result: dict, block_size: int = 65536):
        self.block_size = block_size
        self.blocks = result.get("total_bytes", 0) // block_size
        self.blocks_free = result.get("free_bytes", 0) // block_size
        self.files = result.get("inodes", 0)
        # No inode limit: report as many free as the 32-bit statfs fields hold comfortably.
        self.files_free = max(0, (1 << 31) - self.files)
        self.name_max = result.get("name_max", NAME_MAX)


class Client:
    """A MooseNG client: thread-safe, one per process is the normal case (`close()` when done).

    `check_access`: check mode bits at open like the kernel does; the FUSE mount turns it off
    because the kernel already checks (default_permissions).
    `attr_cache_s`: how long `cached_getattr` may answer from attrs the master sent
    (client/metacache.py); `negative_cache_s`: how long `find` may answer "no such name" for
    directories this client made. Both 0 (off) by default, so that library users see every
    change at once; the FUSE mount sets them to its kernel timeouts.
    """

    def __init__(self, endpoints: list[str], *, timeout_s: float = 30.0, cache_size_mb: int = 256,
                 readahead_mb: int = 16, write_mode: str = "fanout", cred: Cred = ROOT,
                 check_access: bool = True, xattr_cache_s: float = 1.0, attr_cache_s: float = 0.0,
                 negative_cache_s: float = 0.0, client_id: int | None = None):
        self.cred = cred
        self.check_access = check_access
        self.xattr_cache_s = xattr_cache_s
        self._xattrs: dict[tuple[int, bytes], tuple[float, bytes | FsError]] = {}
        self._bare: dict[int, float] = {}  # inodes made here, known to have no xattrs until then
        self.attrs = AttrCache(attr_cache_s)
        self.listings = Listings(negative_cache_s)
        self.master = MasterClient(endpoints, timeout_s, client_id)
        self.chunks = ChunkClient(write_mode)
        self.files = Files(self.master, self.chunks, cache_size_mb << 20, readahead_mb << 20, on_attr=self._learn_attr)

    @classmethod
    def from_config(cls, cfg, **kwargs) -> "Client":
        """From the [client] section that config.load("client") returns."""
        return cls(cfg.master_endpoints, timeout_s=cfg.master_timeout_s, cache_size_mb=cfg.cache_size_mb,
                   readahead_mb=cfg.readahead_mb, write_mode=cfg.write_mode, xattr_cache_s=cfg.attr_timeout_s,
                   attr_cache_s=cfg.attr_timeout_s, negative_cache_s=cfg.negative_timeout_s, **kwargs)

    def close(self) -> None:
        """Write every buffer, then close the pools and channels."""
        try:
            self.files.close()
        finally:
            self.chunks.close()
            self.master.close()

    def _call(self, op: str, args: dict, cred: Cred | None):
        return self.master.call(op, args, cred or self.cred)

    def _local(self, attr: Attr) -> Attr:
        """An attr as this client sees it: with its own buffered writes."""
        inode = self.files.inode(attr.ino)
        if inode is None:
            return attr
        inode.update_attr(attr)
        return inode.current_attr()

    def _attr(self, op: str, args: dict, cred: Cred | None) -> Attr:
        return self._local(self._learn(self._call(op, args, cred), time.monotonic()))

    def _learn(self, d: dict, now: float) -> Attr:
        """An attr the master just sent, remembered (AttrCache); a directory's `next_cookie`
        confirms or refutes our listing of it (Listings)."""
        attr = Attr.from_dict(d)
        self.attrs.put(attr, now)
        next_cookie = d.get("next_cookie")
        if next_cookie is not None:
            self.listings.confirm(attr.ino, next_cookie, now)
        return attr

    def _learn_attr(self, attr: Attr) -> Attr:
        """An attr a commit of ours returned."""
        self.attrs.put(attr, time.monotonic())
        return attr

    def _entry_made(self, op: str, args: dict, cred: Cred | None) -> Attr:
        """mknod/mkdir/symlink/link: the new entry's attr; the parent's new attr and listing are
        kept up to date from the answer."""
        parent, name = args["parent"], args["name"]
        try:
            result = self._call(op, args, cred)
        except FsError as exc:
            if exc.errno == errno.EEXIST:
                self.listings.unsure(parent)  # a name we did not know of
            raise
        now = time.monotonic()
        pattr = result["parent"]
        self.attrs.put(Attr.from_dict(pattr), now)
        self.listings.added(parent, name, pattr["next_cookie"], now)
        attr = self._learn(result, now)
        if op == "mkdir":
            self.listings.made_dir(attr.ino, result["next_cookie"], now)
        if op != "link":
            if len(self._bare) >= XATTR_CACHE_MAX:
                self._bare.clear()
            self._bare[attr.ino] = now + self.xattr_cache_s
        return self._local(attr)

    def _entry_removed(self, parent: int, name: bytes, result: dict) -> None:
        """unlink/rmdir: the removed inode's and the parent's new attrs, and the listing."""
        now = time.monotonic()
        self._learn(result["attr"], now)
        pattr = result["parent"]
        self.attrs.put(Attr.from_dict(pattr), now)
        self.listings.removed(parent, name, pattr["next_cookie"], now)

    # --- attributes ---

    def lookup(self, parent: int, name: bytes | str, cred: Cred | None = None) -> Attr:
        attr, _ = self.find(parent, name, cred)
        if attr is None:
            raise FsError(errno.ENOENT, f"no entry {os.fsdecode(name)!r} in directory {parent}")
        return attr

    @_op("lookup")
    def find(self, parent: int, name: bytes | str, cred: Cred | None = None) -> tuple[Attr | None, float]:
        """lookup, as (attr, 0) or, if there is no such entry, (None, seconds that answer may be
        reused: up to `negative_cache_s`)."""
        name = _name(name)
        now = time.monotonic()
        left = self.listings.absent(parent, name, now)
        if left:
            return None, left
        try:
            return self._attr("lookup", {"parent": parent, "name": name}, cred), 0.0
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        return None, self.listings.ttl

    @_op("getattr")
    def getattr(self, ino: int, cred: Cred | None = None) -> Attr:
        """The master's current attr (with this client's buffered writes)."""
        return self._attr("getattr", {"ino": ino}, cred)

    def cached_getattr(self, ino: int, cred: Cred | None = None) -> tuple[Attr, float]:
        """(attr, seconds it stays fresh): from the AttrCache, or else from the master."""
        hit = self.attrs.get(ino, time.monotonic())
        if hit is not None:
            return self._local(hit[0]), hit[1]
        return self.getattr(ino, cred), self.attrs.ttl

    @_op("setattr")
    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                size: int | None = None, atime: int | str | None = None, mtime: int | str | None = None,
                cred: Cred | None = None) -> Attr:
        """Change attributes; times are ns or "now". Buffered writes go first, so that a
        truncation or an explicit mtime is not undone by them."""
        inode = self.files.inode(ino)
        if inode is not None:
            inode.flush()
        args = {"ino": ino}
        for key, value in (("mode", mode), ("uid", uid), ("gid", gid), ("size", size), ("atime", atime), ("mtime", mtime)):
            if value is not None:
                args[key] = value
        result = self._call("setattr", args, cred)
        attr = self._learn(result["attr"], time.monotonic())
        tail = result.get("tail")
        if tail:
            # A shrink cut a chunk: cut its copies at the new version, then tell the master
            # which ones have it (size 0 leaves the size alone).
            chunk_id, version = tail["chunk_id"], tail["version"]
            if tail.get("ec"):
                ref = ecio.EcChunk.of(chunk_id, version, tail["ec"], tail.get("servers", []))
                cut = ecio.truncate(self.chunks, ref, tail["expect_version"], tail["length"])
                report = {"chunk_id": chunk_id, "version": version, "ok": cut.ok, "parts": cut.parts}
            else:
                done = self.chunks.truncate(chunk_id, version, tail["expect_version"], tail["length"],
                                            tail.get("servers", []))
                report = {"chunk_id": chunk_id, "version": version, "ok": done.ok}
            attr = self._learn(self._call("commit_write", {"ino": ino, "size": 0, "chunks": [report]}, cred),
                               time.monotonic())
        if inode is None:
            return attr
        if size is not None:
            inode.truncated(attr)
        else:
            inode.update_attr(attr)
        return inode.current_attr()

    def truncate(self, ino: int, size: int, cred: Cred | None = None) -> Attr:
        return self.setattr(ino, size=size, cred=cred)

    @_op("access")
    def access(self, ino: int, mask: int, cred: Cred | None = None) -> None:
        """EACCES unless `cred` may do `mask` (R_OK | W_OK | X_OK) to the inode."""
        if not allowed(self.getattr(ino, cred), cred or self.cred, mask):
            raise FsError(errno.EACCES, f"access {mask:o} to inode {ino} denied")

    @_op("statfs")
    def statfs(self, cred: Cred | None = None) -> StatFs:
        return StatFs(self._call("statfs", {}, cred))

    # --- namespace ---

    @_op("mknod")
    def mknod(self, parent: int, name: bytes | str, mode: int, rdev: int = 0, cred: Cred | None = None) -> Attr:
        """Any non-directory inode; `mode` includes the S_IF type bits."""
        return self._entry_made("mknod", {"parent": parent, "name": _name(name), "mode": mode, "rdev": rdev}, cred)

    @_op("mkdir")
    def mkdir(self, parent: int, name: bytes | str, mode: int = 0o755, cred: Cred | None = None) -> Attr:
        return self._entry_made("mkdir", {"parent": parent, "name": _name(name), "mode": mode & 0o7777}, cred)

    @_op("symlink")
    def symlink(self, parent: int, name: bytes | str, target: bytes | str, cred: Cred | None = None) -> Attr:
        return self._entry_made("symlink", {"parent": parent, "name": _name(name), "target": os.fsencode(target)}, cred)

    @_op("readlink")
    def readlink(self, ino: int, cred: Cred | None = None) -> bytes:
        return self._call("readlink", {"ino": ino}, cred)

    @_op("link")
    def link(self, ino: int, parent: int, name: bytes | str, cred: Cred | None = None) -> Attr:
        return self._entry_made("link", {"ino": ino, "parent": parent, "name": _name(name)}, cred)

    @_op("unlink")
    def unlink(self, parent: int, name: bytes | str, cred: Cred | None = None) -> None:
        """Remove a name. If it was the last link of a file this client has open, the master
        keeps the file (sustained) until this client's last close of it, as Linux does."""
        name = _name(name)
        args = {"parent": parent, "name": name}
        opened = self.files.open_inos()
        if opened:
            args["open"] = opened
        result = self._call("unlink", args, cred)
        self._entry_removed(parent, name, result)
        if result.get("sustained"):
            self.files.sustained(result["attr"]["ino"])

    @_op("rmdir")
    def rmdir(self, parent: int, name: bytes | str, cred: Cred | None = None) -> None:
        name = _name(name)
        result = self._call("rmdir", {"parent": parent, "name": name}, cred)
        self._entry_removed(parent, name, result)
        self.listings.forget(result["attr"]["ino"])

    @_op("rename")
    def rename(self, parent: int, name: bytes | str, newparent: int, newname: bytes | str, flags: int = 0,
               cred: Cred | None = None) -> None:
        """flags: RENAME_NOREPLACE or RENAME_EXCHANGE, as renameat2."""
        name, newname = _name(name), _name(newname)
        args = {"parent": parent, "name": name, "newparent": newparent, "newname": newname, "flags": flags}
        opened = self.files.open_inos()
        if opened:
            args["open"] = opened  # a replaced file this client has open is sustained, as by unlink
        result = self._call("rename", args, cred)
        now = time.monotonic()
        attr, replaced = result["attr"], result["replaced"]
        if result.get("sustained"):
            self.files.sustained(replaced["ino"])
        self._learn(attr, now)
        if replaced is not None:
            self._learn(replaced, now)
        self.attrs.put(Attr.from_dict(result["parent"]), now)
        self.attrs.put(Attr.from_dict(result["newparent"]), now)
        if replaced is not None and replaced["ino"] == attr["ino"]:
            return  # two names of one inode: nothing changed
        if replaced is not None and S_ISDIR(replaced["mode"]):
            self.listings.forget(replaced["ino"])
        if flags & RENAME_EXCHANGE:
            self.listings.unsure(parent)
            self.listings.unsure(newparent)
            return
        self.listings.moved(parent, name, result["parent"]["next_cookie"],
                            newparent, newname, result["newparent"]["next_cookie"], now)

    @_op("readdir")
    def readdir(self, ino: int, offset: int = 0, limit: int = 1024,
                cred: Cred | None = None) -> list[tuple[bytes, Attr, int]]:
        """One page of entries after `offset` as (name, attr, next offset); empty at the end."""
        page = self._call("readdir", {"ino": ino, "offset": offset, "limit": limit}, cred)
        now = time.monotonic()
        return [(name, self._learn(attr, now), cookie) for name, attr, cookie in page]

    # --- extended attributes ---

    @_op("getxattr")
    def getxattr(self, ino: int, name: bytes | str, cred: Cred | None = None) -> bytes:
        """The value; ENODATA if unset. security.* and system.* answers are cached for
        `xattr_cache_s`: the kernel asks for security.capability before every write. An inode
        this client made has none for as long."""
        name = os.fsencode(name)
        if not name.startswith(_CACHED_XATTRS):
            return self._call("getxattr", {"ino": ino, "name": name}, cred)
        key, now = (ino, name), time.monotonic()
        if self._bare.get(ino, 0) > now:
            raise FsError(errno.ENODATA, f"no xattr {os.fsdecode(name)!r}")
        hit = self._xattrs.get(key)
        if hit is None or hit[0] < now:
            try:
                answer = self._call("getxattr", {"ino": ino, "name": name}, cred)
            except FsError as exc:
                answer = exc
            if len(self._xattrs) >= XATTR_CACHE_MAX:
                self._xattrs.clear()
            hit = self._xattrs[key] = (now + self.xattr_cache_s, answer)
        if isinstance(hit[1], FsError):
            raise FsError(hit[1].errno, hit[1].message)
        return hit[1]

    @_op("setxattr")
    def setxattr(self, ino: int, name: bytes | str, value: bytes, flags: int = 0, cred: Cred | None = None) -> None:
        """flags: XATTR_CREATE or XATTR_REPLACE."""
        name = os.fsencode(name)
        self._xattrs.pop((ino, name), None)
        self._bare.pop(ino, None)
        try:
            self._call("setxattr", {"ino": ino, "name": name, "value": bytes(value), "flags": flags}, cred)
        finally:
            self.attrs.drop(ino)  # its ctime changed

    @_op("listxattr")
    def listxattr(self, ino: int, cred: Cred | None = None) -> list[bytes]:
        return self._call("listxattr", {"ino": ino}, cred)

    @_op("removexattr")
    def removexattr(self, ino: int, name: bytes | str, cred: Cred | None = None) -> None:
        name = os.fsencode(name)
        self._xattrs.pop((ino, name), None)
        try:
            self._call("removexattr", {"ino": ino, "name": name}, cred)
        finally:
            self.attrs.drop(ino)  # its ctime changed

    # --- files ---

    @_op("create")
    def create(self, parent: int, name: bytes | str, mode: int, flags: int = os.O_RDWR,
               cred: Cred | None = None) -> tuple[int, Attr]:
        """Create a regular file and open it (fh, attr); an existing one is opened unless O_EXCL.
        The new file is writable through this handle whatever its mode, as POSIX says."""
        cred = cred or self.cred
        try:
            attr = self.mknod(parent, name, S_IFREG | mode & 0o7777, cred=cred)
        except FsError as exc:
            if exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            attr = self.lookup(parent, name, cred)
            return self.open(attr.ino, flags, cred), self._local(attr)
        handle = self.files.open(attr, flags & ~os.O_TRUNC, cred)
        return handle.fh, attr

    @_op("open")
    def open(self, ino: int, flags: int, cred: Cred | None = None) -> int:
        """Open a regular file; returns a file handle number. O_TRUNC truncates."""
        cred = cred or self.cred
        # The current attr (close-to-open: another client may have changed the file) and where
        # its first chunks are, in one call.
        opened = self._call("open", {"ino": ino, "count": LOCATIONS_AHEAD}, cred)
        attr, chunks = self._learn(opened["attr"], time.monotonic()), opened["chunks"]
        if self.check_access and not allowed(attr, cred, _open_mask(flags)):
            raise FsError(errno.EACCES, f"open of inode {ino} denied")
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY and attr.size:
            attr, chunks = self.setattr(ino, size=0, cred=cred), ()
        return self.files.open(attr, flags, cred, chunks).fh

    @_op("read")
    def read(self, fh: int, offset: int, size: int):
        """Up to `size` bytes (fewer only at end of file), as a bytes-like object."""
        data = self.files.handle(fh).read(offset, size)
        metrics.BYTES_READ.inc(len(data))
        return data

    @_op("write")
    def write(self, fh: int, offset: int, data) -> int:
        """Buffer `data` at `offset` (at the end with O_APPEND); errors of earlier background
        writes of this file surface here as EIO."""
        n = self.files.handle(fh).write(offset, data)
        metrics.BYTES_WRITTEN.inc(n)
        return n

    @_op("flush")
    def flush(self, fh: int) -> None:
        """Write this file's buffers and wait (close() of a writable descriptor does this)."""
        handle = self.files.handle(fh)
        if handle.writable:
            handle.inode.flush(handle)

    @_op("fsync")
    def fsync(self, fh: int, datasync: bool = False) -> None:
        """Like flush: a commit returns once the chunkservers have synced the data."""
        handle = self.files.handle(fh)
        handle.inode.flush(handle, fsync=True)

    @_op("release")
    def release(self, fh: int) -> Attr | None:
        """Close a handle (writing its inode's buffers); returns the attr after this client's own
        latest change of the file (a write's commit or a cut), None if it made none."""
        return self.files.release(fh)

    def attr_of(self, fh: int) -> Attr:
        """The attr of an open file as this client knows it (no master call)."""
        return self.files.handle(fh).inode.current_attr()

    # --- paths ---

    def resolve(self, path: str | bytes, cred: Cred | None = None, follow: bool = True) -> Attr:
        """The inode at `path` (relative paths start at the root), following symlinks on the way
        and, if `follow`, at the end."""
        attr = self.getattr(ROOT_INODE, cred)
        parts = os.fsencode(path).split(b"/")
        links = 0
        while parts:
            name = parts.pop(0)
            if name in (b"", b"."):
                continue
            if not S_ISDIR(attr.mode):
                raise FsError(errno.ENOTDIR, f"{os.fsdecode(path)}: not a directory on the way")
            child = self.lookup(attr.ino, name, cred)
            if S_ISLNK(child.mode) and (follow or any(p not in (b"", b".") for p in parts)):
                links += 1
                if links > SYMLOOP_MAX:
                    raise FsError(errno.ELOOP, f"{os.fsdecode(path)}: too many symlinks")
                target = self.readlink(child.ino, cred)
                if target.startswith(b"/"):
                    attr = self.getattr(ROOT_INODE, cred)
                parts = target.split(b"/") + parts
                continue
            attr = child
        return attr

    def _parent(self, path: str | bytes, cred: Cred | None) -> tuple[Attr, bytes]:
        head, _, name = os.fsencode(path).rstrip(b"/").rpartition(b"/")
        return self.resolve(head, cred), _name(name)

    def write_file(self, path: str | bytes, data, mode: int = 0o644, cred: Cred | None = None) -> Attr:
        """Create or replace the contents of a file, and close it (so the data is stored)."""
        parent, name = self._parent(path, cred)
        fh, attr = self.create(parent.ino, name, mode, os.O_WRONLY | os.O_TRUNC, cred)
        try:
            self.write(fh, 0, data)
        finally:
            self.release(fh)
        return self.getattr(attr.ino, cred)

    def read_file(self, path: str | bytes, cred: Cred | None = None) -> bytes:
        attr = self.resolve(path, cred)
        fh = self.open(attr.ino, os.O_RDONLY, cred)
        try:
            pieces, offset = [], 0
            while True:
                piece = self.read(fh, offset, READ_PIECE)
                if not piece:
                    return b"".join(pieces)
                pieces.append(piece)
                offset += len(piece)
        finally:
            self.release(fh)

