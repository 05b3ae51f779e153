"""llfuse Operations for MooseNG: thin handlers over fs.Client, as in s3ql.

Each handler converts arguments, runs the synchronous fs.Client call and converts the answer; the
only error it raises is FUSEError(errno). llfuse runs every handler under one global lock, so the
calls run with that lock released: otherwise extra FUSE workers would only queue behind it.
Permissions are checked by the kernel (default_permissions) and, for namespace ops, again by the
master with the caller's uid, gid and supplementary groups.

The kernel keeps attrs and entries for the timeouts given here, and asks again after every change
it makes itself: getattr is answered from the client's AttrCache (attrs the master sent with
the change) and a lookup of a name known to be missing with a negative entry, each for what is
left of its own timeout, so that nothing is reused longer than the configured timeouts.
"""

import errno
import functools
import itertools
import logging
import os
import threading
import time

import llfuse

from mooseng.client.fs import Client, allowed
from mooseng.client.masterclient import ROOT, Attr, Cred
from mooseng.errors import FsError

log = logging.getLogger(__name__)

BLKSIZE = 128 * 1024  # st_blksize: tools like cp then issue whole FUSE-sized writes
GROUPS_TTL_S = 1.0  # how long a process's supplementary groups are reused
GROUPS_CACHE_MAX = 4096
DIR_PAGE = 256  # entries fetched per readdir call; the kernel takes about 4 KiB worth
SEEN_MAX = 100_000  # files whose last-seen version is remembered for cache revalidation
DOT_COOKIES = (1, 2)  # readdir offsets after "." and ".."; the master's own cookies start at 3


def _handler(fn):
    """Run without llfuse's global lock; FsError -> FUSEError; anything else is a bug: log, EIO."""

    @functools.wraps(fn)
    def handle(self, *args):
        try:
            with llfuse.lock_released:
                return fn(self, *args)
        except FsError as exc:
            if exc.errno == errno.EIO:
                log.warning("%s: %s", fn.__name__, exc)
            raise llfuse.FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise llfuse.FUSEError(errno.EIO) from None

    return handle


def _supplementary_groups(pid: int) -> tuple[int, ...]:
    """The "Groups:" line of /proc/<pid>/status (empty if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return ()


class Operations(llfuse.Operations):
    """The FUSE request handlers of one mount; fs.Client does the work."""

    def __init__(self, client: Client, attr_timeout: float, entry_timeout: float):
        super().__init__()
        self.client = client
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self._groups: dict[int, tuple[float, tuple[int, ...]]] = {}
        self._groups_lock = threading.Lock()
        self._seen: dict[int, tuple[int, int]] = {}  # ino -> (mtime, size) when last opened here
        self._opened: dict[int, tuple[int, tuple[int, int]]] = {}  # file handle -> (ino, _seen as it left it)
        self._seen_lock = threading.Lock()
        self._dirs: dict[int, tuple[int, Cred]] = {}  # open directories: handle -> (ino, opener)
        self._dir_handles = itertools.count(1)

    # --- helpers ---

    def _cred(self, ctx) -> Cred:
        if ctx.uid == 0:
            return Cred(0, ctx.gid)  # root passes every check: no need to read its groups
        now = time.monotonic()
        hit = self._groups.get(ctx.pid)
        if hit is None or hit[0] < now:
            hit = (now + GROUPS_TTL_S, _supplementary_groups(ctx.pid))
            with self._groups_lock:
                if len(self._groups) >= GROUPS_CACHE_MAX:
                    self._groups.clear()
                self._groups[ctx.pid] = hit
        return Cred(ctx.uid, ctx.gid, hit[1])

    def _entry(self, attr: Attr, attr_timeout: float | None = None) -> llfuse.EntryAttributes:
        e = llfuse.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout if attr_timeout is None else min(attr_timeout, self.attr_timeout)
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = BLKSIZE
        e.st_blocks = -(-attr.size // 512)
        e.st_atime_ns = attr.atime
        e.st_mtime_ns = attr.mtime
        e.st_ctime_ns = attr.ctime
        return e

    # --- attributes ---

    @_handler
    def lookup(self, parent_inode, name, ctx):
        attr, negative_s = self.client.find(parent_inode, name, self._cred(ctx))
        if attr is not None:
            return self._entry(attr)
        if not negative_s:
            raise FsError(errno.ENOENT, "no such entry")
        missing = llfuse.EntryAttributes()  # inode 0: the kernel keeps a negative entry
        missing.st_ino = 0
        missing.entry_timeout = negative_s
        return missing

    def forget(self, inode_list):
        """Nothing to do: the master keeps no lookup counts."""

    @_handler
    def getattr(self, inode, ctx):
        return self._entry(*self.client.cached_getattr(inode, self._cred(ctx)))

    @_handler
    def setattr(self, inode, attr, fields, fh, ctx):
        changes = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_size:
            changes["size"] = attr.st_size
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        return self._entry(self.client.setattr(inode, cred=self._cred(ctx), **changes))

    @_handler
    def access(self, inode, mode, ctx):
        cred = self._cred(ctx)
        return allowed(self.client.cached_getattr(inode, cred)[0], cred, mode)

    @_handler
    def statfs(self, ctx):
        st = self.client.statfs(self._cred(ctx))
        out = llfuse.StatvfsData()
        out.f_bsize = out.f_frsize = st.block_size
        out.f_blocks = st.blocks
        out.f_bfree = out.f_bavail = st.blocks_free
        out.f_files = st.files + st.files_free
        out.f_ffree = out.f_favail = st.files_free
        out.f_namemax = st.name_max
        return out

    # --- namespace ---

    @_handler
    def readlink(self, inode, ctx):
        return self.client.readlink(inode, self._cred(ctx))

    @_handler
    def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(self.client.mknod(parent_inode, name, mode, rdev, self._cred(ctx)))

    @_handler
    def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(self.client.mkdir(parent_inode, name, mode, self._cred(ctx)))

    @_handler
    def unlink(self, parent_inode, name, ctx):
        self.client.unlink(parent_inode, name, self._cred(ctx))

    @_handler
    def rmdir(self, parent_inode, name, ctx):
        self.client.rmdir(parent_inode, name, self._cred(ctx))

    @_handler
    def symlink(self, parent_inode, name, target, ctx):
        return self._entry(self.client.symlink(parent_inode, name, target, self._cred(ctx)))

    @_handler
    def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, ctx):
        # libfuse 2.9 has no rename2: the kernel refuses renameat2 flags before they get here.
        self.client.rename(parent_inode_old, name_old, parent_inode_new, name_new, 0, self._cred(ctx))

    @_handler
    def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(self.client.link(inode, new_parent_inode, new_name, self._cred(ctx)))

    # --- files ---
    # O_APPEND is dropped: the kernel already places each append at its idea of the end of file
    # (the size we report, buffered writes included) and advances the file position from there.

    @_handler
    def open(self, inode, flags, ctx):
        fh = self.client.open(inode, flags & ~os.O_APPEND, self._cred(ctx))
        self._revalidate(fh, self.client.attr_of(fh))
        return fh

    @_handler
    def create(self, parent_inode, name, mode, flags, ctx):
        fh, attr = self.client.create(parent_inode, name, mode, flags & ~os.O_APPEND, self._cred(ctx))
        self._revalidate(fh, attr)
        return fh, self._entry(attr)

    def _revalidate(self, fh: int, attr: Attr) -> None:
        """Close-to-open consistency: llfuse keeps the kernel's page cache across opens, so drop it
        when the file changed (size or mtime) since this mount last had it open."""
        seen = (attr.mtime, attr.size)
        with self._seen_lock:
            before = self._seen.get(attr.ino)
            if len(self._seen) >= SEEN_MAX:
                self._seen.clear()
            self._seen[attr.ino] = seen
            self._opened[fh] = (attr.ino, seen)
        if before is not None and before != seen:
            llfuse.invalidate_inode(attr.ino)

    @_handler
    def read(self, fh, off, size):
        return self.client.read(fh, off, size)

    @_handler
    def write(self, fh, off, buf):
        return self.client.write(fh, off, buf)

    @_handler
    def flush(self, fh):
        self.client.flush(fh)

    @_handler
    def fsync(self, fh, datasync):
        self.client.fsync(fh, datasync)

    @_handler
    def release(self, fh):
        """This client's own writes changed the file through this mount's page cache: that is no
        reason for the next open here to drop it, so the (mtime, size) of its own latest change
        become the seen ones, unless an open since this handle's saw yet another version.
        Never the inode's current attr: RELEASE comes asynchronously, and that may already be
        another client's change that a concurrent open learned and must still act on."""
        own = self.client.release(fh)
        with self._seen_lock:
            ino, seen = self._opened.pop(fh, (None, None))
            if own is not None and ino is not None and self._seen.get(ino) == seen:
                self._seen[ino] = (own.mtime, own.size)

    # --- directories ---

    @_handler
    def opendir(self, inode, ctx):
        dh = next(self._dir_handles)
        self._dirs[dh] = (inode, self._cred(ctx))
        return dh

    @_handler
    def readdir(self, fh, off):
        # One page, fetched here (not lazily in a generator, which llfuse would drain with its
        # lock held): llfuse stops when the kernel's buffer is full and asks again from there.
        ino, cred = self._dirs[fh]
        entries = []
        if off < DOT_COOKIES[0]:
            entries.append((b".", self._entry(*self.client.cached_getattr(ino, cred)), DOT_COOKIES[0]))
        if off < DOT_COOKIES[1]:
            entries.append((b"..", self._entry(self.client.lookup(ino, b"..", cred)), DOT_COOKIES[1]))
        entries += [(name, self._entry(attr), cookie) for name, attr, cookie in self.client.readdir(ino, off, DIR_PAGE, cred)]
        return entries

    @_handler
    def releasedir(self, fh):
        self._dirs.pop(fh, None)

    def fsyncdir(self, fh, datasync):
        """Nothing to do: a namespace change is durable once the master has answered it."""

    # --- extended attributes ---

    @_handler
    def getxattr(self, inode, name, ctx=None):
        # llfuse itself calls getxattr(inode, name) to check XATTR_CREATE/REPLACE on setxattr.
        return self.client.getxattr(inode, name, self._cred(ctx) if ctx is not None else ROOT)

    @_handler
    def setxattr(self, inode, name, value, ctx):
        self.client.setxattr(inode, name, value, 0, self._cred(ctx))

    @_handler
    def listxattr(self, inode, ctx):
        return self.client.listxattr(inode, self._cred(ctx))

    @_handler
    def removexattr(self, inode, name, ctx):
        self.client.removexattr(inode, name, self._cred(ctx))
