"""Namespace: POSIX semantics and errnos, chunks, classes, readdir cookies, determinism, dumps.

Every expected failure is also checked to leave the state byte-identical (apply is atomic), and
`check()` verifies the structural invariants (link counts, parent pointers, chunk table) that a
long random run must preserve.
"""

import errno
import random
from stat import S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK, S_ISGID, S_ISUID, S_ISVTX

import pytest

from mooseng.constants import CHUNK_SIZE, ROOT_INODE
from mooseng.errors import FsError
from mooseng.master import namespace as nsmod
from mooseng.ec import part_id
from mooseng.master.classes import BUILTIN_CLASSES as CLASSES
from mooseng.master.classes import StorageClass
from mooseng.master.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE, Namespace

ROOT = {"uid": 0, "gid": 0, "gids": []}
ALICE = {"uid": 1000, "gid": 1000, "gids": [1000, 50]}
BOB = {"uid": 1001, "gid": 1001, "gids": [1001]}
S_IFMT = 0o170000


class FS:
    """Drives a Namespace as the service does: one entry per call, with an increasing ts."""

    def __init__(self, ns=None):
        self.ns = ns or Namespace()
        self.ts = 1_000

    def do(self, op, ctx=ROOT, **args):
        self.ts += 1
        return self.ns.apply({"op": op, "args": args, "ctx": ctx, "ts": self.ts})

    def q(self, op, ctx=ROOT, **args):
        return self.ns.query(op, args, ctx)

    def fails(self, code, op, ctx=ROOT, **args):
        """Assert the mutation (or query) fails with `code` and changes nothing."""
        before = self.ns.dump()
        with pytest.raises(FsError) as info:
            if op in nsmod.QUERIES:
                self.q(op, ctx, **args)
            else:
                self.do(op, ctx, **args)
        assert info.value.errno == code, f"{op}: {info.value} (wanted {errno.errorcode[code]})"
        assert self.ns.dump() == before, f"{op} failed but changed the state"
        return info.value

    def mkdir(self, parent, name, mode=0o755, ctx=ROOT):
        return self.do("mkdir", ctx, parent=parent, name=name, mode=mode)["ino"]

    def create(self, parent, name, mode=0o644, ctx=ROOT):
        return self.do("mknod", ctx, parent=parent, name=name, mode=S_IFREG | mode, rdev=0)["ino"]

    def attr(self, ino):
        return self.q("getattr", ino=ino)

    def lookup(self, parent, name, ctx=ROOT):
        return self.q("lookup", ctx, parent=parent, name=name)["ino"]

    def names(self, ino, ctx=ROOT):
        return [e[0] for e in self.q("readdir", ctx, ino=ino, offset=0, limit=100_000)]

    def write(self, ino, index, size=None):
        r = self.do("write_chunk", ino=ino, index=index)
        self.do("commit_write", ino=ino, size=size if size is not None else (index + 1) * CHUNK_SIZE)
        return r["chunk_id"]


@pytest.fixture
def fs():
    return FS()


def check(ns: Namespace) -> None:
    """Structural invariants: every inode reachable, link counts, '..' pointers, chunk table."""
    inodes = ns._inodes
    links = {ino: 0 for ino in inodes}
    subdirs = {ino: 0 for ino in inodes}
    chunk_owner = {}
    for ino, n in inodes.items():
        if n.dir is not None:
            assert n.mode & S_IFMT == S_IFDIR
            d = n.dir
            assert list(d.entries) == list(d.cookie_of)
            assert d.cookies == sorted(d.cookies) and len(d.cookies) == len(d.names)
            assert [x for x in d.names if x is not None] == list(d.entries)
            for name, child in d.entries.items():
                links[child] += 1
                if inodes[child].dir is not None:
                    subdirs[ino] += 1
                    assert inodes[child].dir.parent == ino
        if n.chunks is not None:
            for chunk_id in n.chunks.values():
                assert chunk_id not in chunk_owner
                chunk_owner[chunk_id] = ino
    for ino, n in inodes.items():
        if n.dir is not None:
            assert n.nlink == 2 + subdirs[ino], f"dir {ino}: nlink {n.nlink}, subdirs {subdirs[ino]}"
            assert links[ino] == (0 if ino == ROOT_INODE else 1)
        else:
            sustained = ino in ns._sustained
            assert n.nlink == links[ino] >= (0 if sustained else 1), f"inode {ino}: nlink {n.nlink}, links {links[ino]}"
            assert not sustained or n.nlink == 0, f"inode {ino} is sustained with {n.nlink} links"
    assert chunk_owner == {c: rec[1] for c, rec in ns._chunks.items()}
    assert all(c < ns._next_chunk for c in ns._chunks) and all(i < ns._next_ino for i in inodes)


# --- creation ---------------------------------------------------------------------------------


def test_root_is_an_empty_directory(fs):
    a = fs.attr(ROOT_INODE)
    assert a["mode"] == S_IFDIR | 0o755 and a["nlink"] == 2 and a["sclass"] == "default"
    assert fs.names(ROOT_INODE) == []
    assert fs.q("lookup", parent=ROOT_INODE, name=b"..")["ino"] == ROOT_INODE


def test_mknod_all_kinds(fs):
    kinds = {b"reg": S_IFREG, b"fifo": S_IFIFO, b"sock": S_IFSOCK, b"chr": S_IFCHR, b"blk": S_IFBLK}
    for name, kind in kinds.items():
        a = fs.do("mknod", parent=ROOT_INODE, name=name, mode=kind | 0o640, rdev=0x0801)
        assert a["mode"] == kind | 0o640 and a["nlink"] == 1 and a["size"] == 0
        assert a["rdev"] == (0x0801 if kind in (S_IFCHR, S_IFBLK) else 0)
    plain = fs.do("mknod", parent=ROOT_INODE, name=b"typeless", mode=0o600)
    assert plain["mode"] == S_IFREG | 0o600
    assert fs.attr(ROOT_INODE)["nlink"] == 2
    fs.fails(errno.EPERM, "mknod", parent=ROOT_INODE, name=b"d", mode=S_IFDIR | 0o755)
    fs.fails(errno.EINVAL, "mknod", parent=ROOT_INODE, name=b"l", mode=S_IFLNK | 0o777)
    check(fs.ns)


def test_device_nodes_need_root(fs):
    d = fs.mkdir(ROOT_INODE, b"home", 0o777)
    fs.fails(errno.EPERM, "mknod", ALICE, parent=d, name=b"c", mode=S_IFCHR | 0o600, rdev=1)
    fs.do("mknod", ALICE, parent=d, name=b"f", mode=S_IFIFO | 0o600)


def test_new_inode_owner_times_and_parent_times(fs):
    d = fs.mkdir(ROOT_INODE, b"d", 0o777)
    a = fs.do("mknod", ALICE, parent=d, name=b"f", mode=S_IFREG | 0o644)
    assert (a["uid"], a["gid"]) == (1000, 1000)
    assert a["atime"] == a["mtime"] == a["ctime"] == fs.ts
    p = fs.attr(d)
    assert p["mtime"] == p["ctime"] == fs.ts


def test_mkdir_counts_links_and_sets_dotdot(fs):
    a = fs.mkdir(ROOT_INODE, b"a")
    b = fs.mkdir(a, b"b")
    assert fs.attr(ROOT_INODE)["nlink"] == 3
    assert fs.attr(a)["nlink"] == 3 and fs.attr(b)["nlink"] == 2
    assert fs.q("lookup", parent=b, name=b"..")["ino"] == a
    assert fs.q("lookup", parent=b, name=b".")["ino"] == b
    # mkdir keeps only permission and sticky bits
    c = fs.do("mkdir", parent=ROOT_INODE, name=b"c", mode=S_ISUID | S_ISVTX | 0o777)
    assert c["mode"] == S_IFDIR | S_ISVTX | 0o777


@pytest.mark.parametrize("op", ["mknod", "mkdir", "symlink"])
def test_create_errors(fs, op):
    f = fs.create(ROOT_INODE, b"file")
    extra = {"mknod": {"mode": S_IFREG | 0o644}, "mkdir": {"mode": 0o755}, "symlink": {"target": b"x"}}[op]
    fs.fails(errno.EEXIST, op, parent=ROOT_INODE, name=b"file", **extra)
    fs.fails(errno.EEXIST, op, parent=ROOT_INODE, name=b".", **extra)
    fs.fails(errno.EEXIST, op, parent=ROOT_INODE, name=b"..", **extra)
    fs.fails(errno.ENOENT, op, parent=999, name=b"x", **extra)
    fs.fails(errno.ENOTDIR, op, parent=f, name=b"x", **extra)
    fs.fails(errno.ENAMETOOLONG, op, parent=ROOT_INODE, name=b"n" * 256, **extra)
    fs.fails(errno.ENOENT, op, parent=ROOT_INODE, name=b"", **extra)
    fs.fails(errno.EINVAL, op, parent=ROOT_INODE, name=b"a/b", **extra)
    fs.fails(errno.EINVAL, op, parent=ROOT_INODE, name=b"a\0b", **extra)
    fs.fails(errno.EACCES, op, ALICE, parent=ROOT_INODE, name=b"x", **extra)
    fs.do(op, parent=ROOT_INODE, name=b"n" * 255, **extra)


def test_symlink_and_readlink(fs):
    a = fs.do("symlink", parent=ROOT_INODE, name=b"l", target=b"../some/where")
    assert a["mode"] == S_IFLNK | 0o777 and a["size"] == len(b"../some/where")
    assert fs.q("readlink", ino=a["ino"]) == b"../some/where"
    f = fs.create(ROOT_INODE, b"f")
    fs.fails(errno.EINVAL, "readlink", ino=f)
    fs.fails(errno.ENOENT, "symlink", parent=ROOT_INODE, name=b"e", target=b"")
    fs.fails(errno.ENAMETOOLONG, "symlink", parent=ROOT_INODE, name=b"e", target=b"x" * 4096)
    fs.do("symlink", parent=ROOT_INODE, name=b"max", target=b"x" * 4095)


# --- lookup and permissions -------------------------------------------------------------------


def test_lookup_errors(fs):
    f = fs.create(ROOT_INODE, b"f")
    fs.fails(errno.ENOENT, "lookup", parent=ROOT_INODE, name=b"missing")
    fs.fails(errno.ENOTDIR, "lookup", parent=f, name=b"x")
    fs.fails(errno.ENAMETOOLONG, "lookup", parent=ROOT_INODE, name=b"x" * 256)
    fs.fails(errno.ENOENT, "getattr", ino=12345)


def test_search_and_read_permission(fs):
    d = fs.mkdir(ROOT_INODE, b"private", 0o700)
    fs.create(d, b"secret")
    fs.fails(errno.EACCES, "lookup", ALICE, parent=d, name=b"secret")
    fs.fails(errno.EACCES, "readdir", ALICE, ino=d)
    assert fs.lookup(d, b"secret")  # root bypasses
    fs.do("setattr", ino=d, mode=0o711)
    assert fs.lookup(d, b"secret", ALICE)
    fs.fails(errno.EACCES, "readdir", ALICE, ino=d)
    fs.do("setattr", ino=d, mode=0o744)
    fs.fails(errno.EACCES, "lookup", ALICE, parent=d, name=b"secret")
    assert fs.names(d, ALICE) == [b"secret"]


def test_group_and_other_bits(fs):
    d = fs.mkdir(ROOT_INODE, b"shared", 0o770)
    fs.do("setattr", ino=d, gid=50)
    fs.create(d, b"x", ctx=ALICE)  # 50 is a supplementary group of alice
    fs.fails(errno.EACCES, "mknod", BOB, parent=d, name=b"y", mode=S_IFREG | 0o644)
    fs.do("setattr", ino=d, mode=0o773)
    fs.create(d, b"y", ctx=BOB)


def test_write_permission_needed_to_remove(fs):
    d = fs.mkdir(ROOT_INODE, b"d", 0o755)
    fs.do("setattr", ino=d, uid=1000, gid=1000)
    fs.create(d, b"f", ctx=ALICE)
    fs.fails(errno.EACCES, "unlink", BOB, parent=d, name=b"f")
    fs.fails(errno.EACCES, "rename", BOB, parent=d, name=b"f", newparent=d, newname=b"g")
    fs.do("unlink", ALICE, parent=d, name=b"f")


def test_sticky_directory(fs):
    tmp = fs.mkdir(ROOT_INODE, b"tmp", 0o1777)
    fs.create(tmp, b"alice", ctx=ALICE)
    fs.create(tmp, b"alice2", ctx=ALICE)
    fs.create(tmp, b"bob", ctx=BOB)
    fs.fails(errno.EPERM, "unlink", BOB, parent=tmp, name=b"alice")
    fs.fails(errno.EPERM, "rename", BOB, parent=tmp, name=b"alice", newparent=tmp, newname=b"mine")
    fs.fails(errno.EPERM, "rename", ALICE, parent=tmp, name=b"alice", newparent=tmp, newname=b"bob")
    fs.do("unlink", ALICE, parent=tmp, name=b"alice")
    fs.do("unlink", ROOT, parent=tmp, name=b"bob")  # root
    sub = fs.mkdir(ROOT_INODE, b"owned", 0o1777)
    fs.do("setattr", ino=sub, uid=1001)
    fs.create(sub, b"a", ctx=ALICE)
    fs.do("unlink", BOB, parent=sub, name=b"a")  # the directory's owner
    fs.mkdir(tmp, b"adir", ctx=ALICE)
    fs.fails(errno.EPERM, "rmdir", BOB, parent=tmp, name=b"adir")


def test_setgid_directory_inheritance(fs):
    d = fs.mkdir(ROOT_INODE, b"proj", 0o2777)
    fs.do("setattr", ino=d, gid=50, mode=S_ISGID | 0o777)
    f = fs.do("mknod", BOB, parent=d, name=b"f", mode=S_IFREG | 0o644)
    assert f["gid"] == 50 and not f["mode"] & S_ISGID
    sub = fs.do("mkdir", BOB, parent=d, name=b"sub", mode=0o755)
    assert sub["gid"] == 50 and sub["mode"] & S_ISGID
    g = fs.do("mknod", BOB, parent=sub["ino"], name=b"g", mode=S_IFREG | S_ISGID | 0o750)
    assert g["gid"] == 50 and not g["mode"] & S_ISGID  # bob is not in group 50
    h = fs.do("mknod", ALICE, parent=d, name=b"h", mode=S_IFREG | S_ISGID | 0o750)
    assert h["mode"] & S_ISGID  # alice is
    plain = fs.mkdir(ROOT_INODE, b"plain", 0o777)
    assert fs.do("mknod", BOB, parent=plain, name=b"f", mode=S_IFREG | 0o644)["gid"] == 1001


# --- setattr: mode, owner, times ---------------------------------------------------------------


def test_chmod_rules(fs):
    home = fs.mkdir(ROOT_INODE, b"home", 0o777)
    f = fs.create(home, b"f", ctx=ALICE)
    fs.fails(errno.EPERM, "setattr", BOB, ino=f, mode=0o777)
    before = fs.attr(f)["ctime"]
    a = fs.do("setattr", ALICE, ino=f, mode=0o4755)["attr"]
    assert a["mode"] == S_IFREG | 0o4755 and a["ctime"] > before
    fs.do("setattr", ino=f, gid=7)
    a = fs.do("setattr", ALICE, ino=f, mode=0o2755)["attr"]
    assert a["mode"] == S_IFREG | 0o755  # not in group 7: setgid dropped
    a = fs.do("setattr", ROOT, ino=f, mode=0o2755)["attr"]
    assert a["mode"] == S_IFREG | 0o2755


def test_chown_rules(fs):
    home = fs.mkdir(ROOT_INODE, b"home", 0o777)
    f = fs.create(home, b"f", mode=0o6755, ctx=ALICE)
    assert fs.attr(f)["mode"] & 0o7777 == 0o6755
    fs.fails(errno.EPERM, "setattr", ALICE, ino=f, uid=1001)
    fs.fails(errno.EPERM, "setattr", BOB, ino=f, uid=1001)
    fs.fails(errno.EPERM, "setattr", ALICE, ino=f, gid=7)
    fs.fails(errno.EPERM, "setattr", BOB, ino=f, gid=1001)
    a = fs.do("setattr", ALICE, ino=f, uid=1000, gid=50)["attr"]  # own uid, own group: allowed
    assert (a["uid"], a["gid"]) == (1000, 50)
    assert a["mode"] & 0o7777 == 0o755  # set-id bits dropped on chown
    a = fs.do("setattr", ROOT, ino=f, uid=1001, gid=7)["attr"]
    assert (a["uid"], a["gid"]) == (1001, 7)
    d = fs.mkdir(home, b"sgid")
    fs.do("setattr", ino=d, mode=0o2775)
    assert fs.do("setattr", ROOT, ino=d, gid=50)["attr"]["mode"] & S_ISGID  # kept on directories


def test_times(fs):
    home = fs.mkdir(ROOT_INODE, b"home", 0o777)
    f = fs.create(home, b"f", mode=0o666, ctx=ALICE)
    a = fs.do("setattr", ALICE, ino=f, atime=5, mtime=7)["attr"]
    assert (a["atime"], a["mtime"], a["ctime"]) == (5, 7, fs.ts)
    fs.fails(errno.EPERM, "setattr", BOB, ino=f, mtime=1)
    a = fs.do("setattr", BOB, ino=f, atime="now", mtime="now")["attr"]  # bob may write: touch is fine
    assert a["atime"] == a["mtime"] == fs.ts
    fs.do("setattr", ALICE, ino=f, mode=0o644)
    fs.fails(errno.EACCES, "setattr", BOB, ino=f, mtime="now")
    fs.fails(errno.EINVAL, "setattr", ino=f, mtime="yesterday")
    a = fs.do("setattr", ino=f, atime=0)["attr"]
    assert a["atime"] == 0 and a["ctime"] == fs.ts


# --- chunks, writes, truncate ------------------------------------------------------------------


def test_write_chunk_and_commit(fs):
    f = fs.create(ROOT_INODE, b"f")
    r = fs.do("write_chunk", ino=f, index=0)
    assert r == {"chunk_id": r["chunk_id"], "version": 1, "expect_version": 0, "new": True}
    r2 = fs.do("write_chunk", ino=f, index=0)
    assert r2 == {"chunk_id": r["chunk_id"], "version": 2, "expect_version": 1, "new": False}
    assert fs.ns.chunk_version(r["chunk_id"]) == 2
    a = fs.do("commit_write", ino=f, size=1000)
    assert a["size"] == 1000 and a["mtime"] == a["ctime"] == fs.ts
    assert fs.do("commit_write", ino=f, size=10)["size"] == 1000  # never shrinks
    c2 = fs.do("write_chunk", ino=f, index=2)["chunk_id"]
    refs = fs.q("chunks", ino=f, index=0, count=4)
    assert refs == [
        {"index": 0, "chunk_id": r["chunk_id"], "version": 2},
        {"index": 1, "chunk_id": 0, "version": 0},
        {"index": 2, "chunk_id": c2, "version": 1},
        {"index": 3, "chunk_id": 0, "version": 0},
    ]
    assert [(c, i.version, i.sclass) for c, i in sorted(fs.ns.iter_chunks())] == [
        (r["chunk_id"], 2, "default"), (c2, 1, "default")]
    assert fs.ns.chunk_count == 2
    d = fs.mkdir(ROOT_INODE, b"d")
    s = fs.do("symlink", parent=ROOT_INODE, name=b"s", target=b"f")["ino"]
    fs.fails(errno.EISDIR, "write_chunk", ino=d, index=0)
    fs.fails(errno.EINVAL, "write_chunk", ino=s, index=0)
    fs.fails(errno.EISDIR, "commit_write", ino=d, size=1)
    fs.fails(errno.EFBIG, "write_chunk", ino=f, index=nsmod.MAX_FILE_SIZE // CHUNK_SIZE)
    fs.fails(errno.EFBIG, "commit_write", ino=f, size=nsmod.MAX_FILE_SIZE + 1)
    fs.fails(errno.EISDIR, "chunks", ino=d, index=0)


def test_write_drops_setuid_for_non_root(fs):
    home = fs.mkdir(ROOT_INODE, b"home", 0o777)
    f = fs.create(home, b"f", mode=0o6775, ctx=ALICE)
    assert fs.do("commit_write", ROOT, ino=f, size=1)["mode"] & 0o7777 == 0o6775
    assert fs.do("commit_write", ALICE, ino=f, size=1)["mode"] & 0o7777 == 0o775
    g = fs.create(home, b"g", mode=0o2664, ctx=ALICE)  # setgid without group-exec: mandatory locking
    assert fs.do("commit_write", ALICE, ino=g, size=1)["mode"] & 0o7777 == 0o2664


def test_truncate_grow_is_sparse(fs):
    f = fs.create(ROOT_INODE, b"f")
    c0 = fs.write(f, 0, 100)
    r = fs.do("setattr", ino=f, size=3 * CHUNK_SIZE + 5)
    assert r["freed"] == [] and r["tail"] is None and r["attr"]["size"] == 3 * CHUNK_SIZE + 5
    assert [x["chunk_id"] for x in fs.q("chunks", ino=f, index=0, count=4)] == [c0, 0, 0, 0]
    assert r["attr"]["mtime"] == r["attr"]["ctime"] == fs.ts


def test_truncate_shrink_frees_chunks_and_bumps_tail(fs):
    f = fs.create(ROOT_INODE, b"f")
    chunks = [fs.write(f, i) for i in range(4)]
    r = fs.do("setattr", ino=f, size=CHUNK_SIZE + 10)
    assert sorted(r["freed"]) == chunks[2:]
    assert r["tail"] == {"chunk_id": chunks[1], "version": 2, "expect_version": 1, "length": 10}
    assert r["attr"]["size"] == CHUNK_SIZE + 10
    assert fs.ns.chunk_version(chunks[2]) is None and fs.ns.chunk_version(chunks[1]) == 2
    r = fs.do("setattr", ino=f, size=CHUNK_SIZE)  # on a boundary: no partial chunk
    assert r["freed"] == [chunks[1]] and r["tail"] is None
    r = fs.do("setattr", ino=f, size=CHUNK_SIZE)  # same size: nothing to do
    assert r["freed"] == [] and r["tail"] is None
    r = fs.do("setattr", ino=f, size=0)
    assert r["freed"] == [chunks[0]] and r["tail"] is None
    assert fs.ns.chunk_count == 0
    check(fs.ns)


def test_truncate_into_a_hole_has_no_tail(fs):
    f = fs.create(ROOT_INODE, b"f")
    c2 = fs.write(f, 2)
    r = fs.do("setattr", ino=f, size=CHUNK_SIZE + 1)
    assert r["freed"] == [c2] and r["tail"] is None


def test_truncate_errors_and_privileges(fs):
    d = fs.mkdir(ROOT_INODE, b"d", 0o777)
    f = fs.create(d, b"f", mode=0o4644, ctx=ALICE)
    fs.write(f, 0, 10)
    fs.fails(errno.EISDIR, "setattr", ino=d, size=0)
    fs.fails(errno.EINVAL, "setattr", ino=fs.do("mknod", parent=d, name=b"p", mode=S_IFIFO | 0o644)["ino"], size=0)
    fs.fails(errno.EACCES, "setattr", BOB, ino=f, size=0)
    fs.fails(errno.EFBIG, "setattr", ino=f, size=nsmod.MAX_FILE_SIZE + 1)
    assert fs.do("setattr", ALICE, ino=f, size=5)["attr"]["mode"] & 0o7777 == 0o644


def test_chunk_query_bounds(fs):
    f = fs.create(ROOT_INODE, b"f")
    assert len(fs.q("chunks", ino=f, index=0, count=10**9)) == nsmod.CHUNKS_MAX
    assert fs.q("chunks", ino=f, index=7) == [{"index": 7, "chunk_id": 0, "version": 0}]
    fs.fails(errno.EINVAL, "chunks", ino=f, index=0, count=0)


# --- links and removal -----------------------------------------------------------------------


def test_hard_links(fs):
    a = fs.mkdir(ROOT_INODE, b"a")
    b = fs.mkdir(ROOT_INODE, b"b")
    f = fs.create(a, b"f")
    c = fs.write(f, 0)
    r = fs.do("link", ino=f, parent=b, name=b"g")
    assert r["ino"] == f and r["nlink"] == 2 and r["ctime"] == fs.ts
    assert fs.lookup(b, b"g") == f
    fs.fails(errno.EPERM, "link", ino=a, parent=b, name=b"dirlink")
    fs.fails(errno.EEXIST, "link", ino=f, parent=a, name=b"f")
    fs.fails(errno.ENOENT, "link", ino=999, parent=a, name=b"x")
    r = fs.do("unlink", parent=a, name=b"f")
    assert r["freed"] == [] and r["attr"] == fs.attr(f) and r["attr"]["nlink"] == 1
    assert r["parent"] == {**fs.attr(a), "next_cookie": r["parent"]["next_cookie"]}
    assert fs.attr(f)["nlink"] == 1 and fs.ns.chunk_version(c) == 1
    r = fs.do("unlink", parent=b, name=b"g")
    assert r["freed"] == [c] and r["attr"]["ino"] == f and r["attr"]["nlink"] == 0
    fs.fails(errno.ENOENT, "getattr", ino=f)
    assert fs.ns.chunk_version(c) is None
    check(fs.ns)


def test_unlink_errors(fs):
    d = fs.mkdir(ROOT_INODE, b"d")
    f = fs.create(ROOT_INODE, b"f")
    fs.fails(errno.ENOENT, "unlink", parent=ROOT_INODE, name=b"nope")
    fs.fails(errno.EISDIR, "unlink", parent=ROOT_INODE, name=b"d")
    fs.fails(errno.EISDIR, "unlink", parent=d, name=b".")
    fs.fails(errno.ENOTDIR, "unlink", parent=f, name=b"x")
    p = fs.attr(ROOT_INODE)
    fs.do("unlink", parent=ROOT_INODE, name=b"f")
    assert fs.attr(ROOT_INODE)["mtime"] > p["mtime"]


def test_rmdir(fs):
    d = fs.mkdir(ROOT_INODE, b"d")
    fs.create(d, b"f")
    fs.create(ROOT_INODE, b"file")
    fs.fails(errno.ENOTEMPTY, "rmdir", parent=ROOT_INODE, name=b"d")
    fs.fails(errno.ENOTDIR, "rmdir", parent=ROOT_INODE, name=b"file")
    fs.fails(errno.ENOENT, "rmdir", parent=ROOT_INODE, name=b"nope")
    fs.fails(errno.EINVAL, "rmdir", parent=ROOT_INODE, name=b".")
    fs.fails(errno.ENOTEMPTY, "rmdir", parent=d, name=b"..")
    fs.do("unlink", parent=d, name=b"f")
    assert fs.attr(ROOT_INODE)["nlink"] == 3
    r = fs.do("rmdir", parent=ROOT_INODE, name=b"d")
    assert r["attr"]["ino"] == d and r["attr"]["nlink"] == 0
    assert r["parent"]["ino"] == ROOT_INODE and r["parent"]["nlink"] == 2 and r["parent"]["ctime"] == fs.ts
    assert fs.attr(ROOT_INODE)["nlink"] == 2
    fs.fails(errno.ENOENT, "getattr", ino=d)
    check(fs.ns)


# --- rename ----------------------------------------------------------------------------------


def test_rename_within_and_across_directories(fs):
    a = fs.mkdir(ROOT_INODE, b"a")
    b = fs.mkdir(ROOT_INODE, b"b")
    f = fs.create(a, b"f")
    fs.do("rename", parent=a, name=b"f", newparent=a, newname=b"g", flags=0)
    assert fs.names(a) == [b"g"]
    fs.do("rename", parent=a, name=b"g", newparent=b, newname=b"h")
    assert fs.names(a) == [] and fs.lookup(b, b"h") == f
    assert fs.attr(f)["ctime"] == fs.ts and fs.attr(a)["mtime"] == fs.attr(b)["mtime"] == fs.ts
    sub = fs.mkdir(a, b"sub")
    assert fs.attr(a)["nlink"] == 3
    fs.do("rename", parent=a, name=b"sub", newparent=b, newname=b"sub")
    assert fs.attr(a)["nlink"] == 2 and fs.attr(b)["nlink"] == 3
    assert fs.q("lookup", parent=sub, name=b"..")["ino"] == b
    check(fs.ns)


def test_rename_over_existing_file_frees_it(fs):
    f = fs.create(ROOT_INODE, b"f")
    g = fs.create(ROOT_INODE, b"g")
    cg = fs.write(g, 0)
    r = fs.do("rename", parent=ROOT_INODE, name=b"f", newparent=ROOT_INODE, newname=b"g")
    assert r["freed"] == [cg] and r["attr"] == fs.attr(f) and r["attr"]["ctime"] == fs.ts
    assert r["replaced"]["ino"] == g and r["replaced"]["nlink"] == 0
    assert r["parent"] == r["newparent"] and r["parent"]["mtime"] == fs.ts
    assert fs.names(ROOT_INODE) == [b"g"] and fs.lookup(ROOT_INODE, b"g") == f
    fs.fails(errno.ENOENT, "getattr", ino=g)
    h = fs.create(ROOT_INODE, b"h")
    fs.do("link", ino=h, parent=ROOT_INODE, name=b"h2")
    fs.do("rename", parent=ROOT_INODE, name=b"g", newparent=ROOT_INODE, newname=b"h")
    assert fs.attr(h)["nlink"] == 1
    check(fs.ns)


def test_rename_directories_over_directories(fs):
    a = fs.mkdir(ROOT_INODE, b"a")
    fs.mkdir(ROOT_INODE, b"empty")
    full = fs.mkdir(ROOT_INODE, b"full")
    fs.create(full, b"x")
    f = fs.create(ROOT_INODE, b"file")
    fs.fails(errno.ENOTEMPTY, "rename", parent=ROOT_INODE, name=b"a", newparent=ROOT_INODE, newname=b"full")
    fs.fails(errno.ENOTDIR, "rename", parent=ROOT_INODE, name=b"a", newparent=ROOT_INODE, newname=b"file")
    fs.fails(errno.EISDIR, "rename", parent=ROOT_INODE, name=b"file", newparent=ROOT_INODE, newname=b"a")
    assert fs.attr(ROOT_INODE)["nlink"] == 5
    fs.do("rename", parent=ROOT_INODE, name=b"a", newparent=ROOT_INODE, newname=b"empty")
    assert fs.attr(ROOT_INODE)["nlink"] == 4 and fs.lookup(ROOT_INODE, b"empty") == a
    # across directories, replacing an empty directory there
    sub = fs.mkdir(full, b"sub")
    fs.do("rename", parent=ROOT_INODE, name=b"empty", newparent=full, newname=b"sub")
    assert fs.attr(ROOT_INODE)["nlink"] == 3 and fs.attr(full)["nlink"] == 3
    fs.fails(errno.ENOENT, "getattr", ino=sub)
    assert fs.lookup(ROOT_INODE, b"file") == f
    check(fs.ns)


def test_rename_loops_are_refused(fs):
    a = fs.mkdir(ROOT_INODE, b"a")
    b = fs.mkdir(a, b"b")
    c = fs.mkdir(b, b"c")
    fs.fails(errno.EINVAL, "rename", parent=ROOT_INODE, name=b"a", newparent=c, newname=b"a")
    fs.fails(errno.EINVAL, "rename", parent=ROOT_INODE, name=b"a", newparent=a, newname=b"x")
    fs.fails(errno.ENOTEMPTY, "rename", parent=b, name=b"c", newparent=ROOT_INODE, newname=b"a")
    fs.fails(errno.EINVAL, "rename", flags=RENAME_EXCHANGE, parent=ROOT_INODE, name=b"a", newparent=b, newname=b"c")
    fs.fails(errno.EINVAL, "rename", flags=RENAME_EXCHANGE, parent=b, name=b"c", newparent=ROOT_INODE, newname=b"a")


def test_rename_special_names_and_flags(fs):
    fs.create(ROOT_INODE, b"f")
    fs.create(ROOT_INODE, b"g")
    d = fs.mkdir(ROOT_INODE, b"d")
    g = fs.lookup(ROOT_INODE, b"g")

    def rename(code, name, newparent, newname, flags=0, parent=ROOT_INODE):
        fs.fails(code, "rename", parent=parent, name=name, newparent=newparent, newname=newname, flags=flags)

    rename(errno.EBUSY, b".", ROOT_INODE, b"x", parent=d)
    rename(errno.EBUSY, b"..", ROOT_INODE, b"x", parent=d)
    rename(errno.EBUSY, b"f", d, b"..")
    rename(errno.EEXIST, b"f", d, b".", flags=RENAME_NOREPLACE)
    rename(errno.ENOENT, b"nope", ROOT_INODE, b"x")
    rename(errno.EEXIST, b"f", ROOT_INODE, b"g", flags=RENAME_NOREPLACE)
    rename(errno.ENOENT, b"f", ROOT_INODE, b"x", flags=RENAME_EXCHANGE)
    rename(errno.EINVAL, b"f", ROOT_INODE, b"x", flags=RENAME_NOREPLACE | RENAME_EXCHANGE)
    rename(errno.ENOTDIR, b"f", g, b"x")
    fs.do("rename", flags=RENAME_NOREPLACE, parent=ROOT_INODE, name=b"f", newparent=ROOT_INODE, newname=b"h")
    assert fs.names(ROOT_INODE) == [b"g", b"d", b"h"]


def test_rename_between_links_of_one_inode_does_nothing(fs):
    f = fs.create(ROOT_INODE, b"f")
    fs.do("link", ino=f, parent=ROOT_INODE, name=b"g")
    before = fs.ns.dump()
    r = fs.do("rename", parent=ROOT_INODE, name=b"f", newparent=ROOT_INODE, newname=b"g")
    assert r["freed"] == [] and r["attr"]["ino"] == r["replaced"]["ino"] == f
    assert fs.ns.dump() == before


def test_rename_exchange(fs):
    a = fs.mkdir(ROOT_INODE, b"a")
    b = fs.mkdir(ROOT_INODE, b"b")
    f = fs.create(a, b"f")
    d = fs.mkdir(b, b"d")
    fs.create(d, b"inside")  # exchange does not care about emptiness
    cookies = {e[0]: e[2] for e in fs.q("readdir", ino=a)}
    fs.do("rename", flags=RENAME_EXCHANGE, parent=a, name=b"f", newparent=b, newname=b"d")
    assert fs.lookup(a, b"f") == d and fs.lookup(b, b"d") == f
    assert {e[0]: e[2] for e in fs.q("readdir", ino=a)} == cookies
    assert fs.attr(a)["nlink"] == 3 and fs.attr(b)["nlink"] == 2
    assert fs.q("lookup", parent=d, name=b"..")["ino"] == a
    check(fs.ns)


def test_moving_a_directory_needs_write_on_it(fs):
    top = fs.mkdir(ROOT_INODE, b"top", 0o777)
    other = fs.mkdir(ROOT_INODE, b"other", 0o777)
    fs.mkdir(top, b"rootdir", 0o755)
    fs.fails(errno.EACCES, "rename", ALICE, parent=top, name=b"rootdir", newparent=other, newname=b"x")
    fs.do("rename", ALICE, parent=top, name=b"rootdir", newparent=top, newname=b"renamed")


# --- xattrs ----------------------------------------------------------------------------------


def test_xattrs(fs):
    f = fs.create(ROOT_INODE, b"f", mode=0o666)
    fs.do("setxattr", ino=f, name=b"user.a", value=b"1", flags=0)
    fs.do("setxattr", ino=f, name=b"user.b", value=b"", flags=XATTR_CREATE)
    assert fs.q("getxattr", ino=f, name=b"user.a") == b"1"
    assert fs.q("getxattr", ino=f, name=b"user.b") == b""
    assert fs.q("listxattr", ino=f) == [b"user.a", b"user.b"]
    fs.fails(errno.EEXIST, "setxattr", ino=f, name=b"user.a", value=b"2", flags=XATTR_CREATE)
    fs.fails(errno.ENODATA, "setxattr", ino=f, name=b"user.c", value=b"2", flags=XATTR_REPLACE)
    fs.do("setxattr", ino=f, name=b"user.a", value=b"2", flags=XATTR_REPLACE)
    assert fs.q("getxattr", ino=f, name=b"user.a") == b"2"
    assert fs.attr(f)["ctime"] == fs.ts
    fs.fails(errno.ENODATA, "getxattr", ino=f, name=b"user.nope")
    fs.fails(errno.ENODATA, "removexattr", ino=f, name=b"user.nope")
    fs.fails(errno.ERANGE, "setxattr", ino=f, name=b"user." + b"x" * 251, value=b"")
    fs.fails(errno.ERANGE, "setxattr", ino=f, name=b"", value=b"")
    fs.fails(errno.E2BIG, "setxattr", ino=f, name=b"user.big", value=b"x" * 65537)
    fs.do("setxattr", ino=f, name=b"user.max", value=b"x" * 65536)
    fs.fails(errno.ENOTSUP, "setxattr", ino=f, name=b"weird.x", value=b"")
    fs.fails(errno.ENOTSUP, "setxattr", ino=f, name=b"system.posix_acl_access", value=b"")
    fs.fails(errno.EINVAL, "setxattr", ino=f, name=b"user.a", value=b"", flags=3)
    fs.do("removexattr", ino=f, name=b"user.a")
    assert fs.q("listxattr", ino=f) == [b"user.b", b"user.max"]


def test_xattr_namespaces_and_permissions(fs):
    home = fs.mkdir(ROOT_INODE, b"home", 0o777)
    f = fs.create(home, b"f", mode=0o644, ctx=ALICE)
    fs.do("setxattr", ALICE, ino=f, name=b"user.a", value=b"1")
    fs.fails(errno.EACCES, "setxattr", BOB, ino=f, name=b"user.a", value=b"2")
    fs.fails(errno.EACCES, "removexattr", BOB, ino=f, name=b"user.a")
    assert fs.q("getxattr", BOB, ino=f, name=b"user.a") == b"1"
    fs.do("setattr", ALICE, ino=f, mode=0o600)
    fs.fails(errno.EACCES, "getxattr", BOB, ino=f, name=b"user.a")
    fs.fails(errno.EPERM, "setxattr", ALICE, ino=f, name=b"trusted.t", value=b"")
    fs.do("setxattr", ROOT, ino=f, name=b"trusted.t", value=b"t")
    fs.fails(errno.ENODATA, "getxattr", ALICE, ino=f, name=b"trusted.t")
    assert fs.q("listxattr", ALICE, ino=f) == [b"user.a"]
    assert fs.q("listxattr", ROOT, ino=f) == [b"user.a", b"trusted.t"]
    fs.do("setxattr", ALICE, ino=f, name=b"security.s", value=b"s")
    fs.fails(errno.EPERM, "setxattr", BOB, ino=f, name=b"security.s", value=b"x")
    link = fs.do("symlink", parent=home, name=b"l", target=b"f")["ino"]
    fs.fails(errno.EPERM, "setxattr", ino=link, name=b"user.a", value=b"")
    fs.fails(errno.ENODATA, "getxattr", ino=link, name=b"user.a")


def test_xattr_name_space_is_bounded(fs):
    f = fs.create(ROOT_INODE, b"f")
    for i in range(256):  # 256 names of 255 bytes + NUL fill the 64 KiB listxattr buffer exactly
        fs.do("setxattr", ino=f, name=b"user.%0250d" % i, value=b"")
    fs.fails(errno.ENOSPC, "setxattr", ino=f, name=b"user.z", value=b"")
    fs.do("setxattr", ino=f, name=b"user.%0250d" % 3, value=b"replacing is fine")


# --- readdir ---------------------------------------------------------------------------------


def test_readdir_returns_attrs_and_skips_dots(fs):
    d = fs.mkdir(ROOT_INODE, b"d")
    f = fs.create(d, b"f")
    [[name, attr, cookie]] = fs.q("readdir", ino=d, offset=0, limit=10)
    assert (name, attr, cookie >= 3) == (b"f", fs.attr(f), True)
    for offset in (0, 1, 2):
        assert len(fs.q("readdir", ino=d, offset=offset, limit=10)) == 1
    assert fs.q("readdir", ino=d, offset=cookie, limit=10) == []
    fs.fails(errno.ENOTDIR, "readdir", ino=f)
    fs.fails(errno.EINVAL, "readdir", ino=d, offset=0, limit=0)


def test_readdir_pagination_survives_removals(fs):
    d = fs.mkdir(ROOT_INODE, b"big")
    names = [b"f%05d" % i for i in range(5000)]
    for name in names:
        fs.create(d, name)
    rng = random.Random(7)
    removed, removed_unseen, seen, offset = set(), set(), [], 0
    while True:
        page = fs.q("readdir", ino=d, offset=offset, limit=97)
        if not page:
            break
        seen.extend(e[0] for e in page)
        offset = page[-1][2]
        # remove some entries already returned and some not yet returned, the last one included
        for victim in rng.sample(names, 40) + [page[-1][0]]:
            if victim not in removed:
                fs.do("unlink", parent=d, name=victim)
                removed.add(victim)
                if victim not in seen:
                    removed_unseen.add(victim)
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert set(seen) >= set(names) - removed, "an entry present throughout was skipped"
    assert not removed_unseen & set(seen), "an entry was returned after its removal"
    assert sorted(fs.names(d)) == sorted(set(names) - removed)
    check(fs.ns)


def test_readdir_cookie_still_valid_after_compaction(fs):
    d = fs.mkdir(ROOT_INODE, b"d")
    for i in range(1000):
        fs.create(d, b"%04d" % i)
    page = fs.q("readdir", ino=d, offset=0, limit=500)
    cookie = page[-1][2]
    for i in [*range(0, 1000, 2), 1, 3]:  # more than half: the cookie lists get compacted
        fs.do("unlink", parent=d, name=b"%04d" % i)
    assert len(fs.ns._inodes[d].dir.names) < 510, "removed entries should have been compacted away"
    rest = [e[0] for e in fs.q("readdir", ino=d, offset=cookie, limit=1000)]
    assert rest == [b"%04d" % i for i in range(501, 1000, 2)]


def test_readdir_limit_is_capped(fs):
    d = fs.mkdir(ROOT_INODE, b"d")
    for i in range(nsmod.READDIR_MAX + 10):
        fs.create(d, b"%d" % i)
    assert len(fs.q("readdir", ino=d, offset=0, limit=10**9)) == nsmod.READDIR_MAX


# --- storage classes -------------------------------------------------------------------------


def test_classes_are_inherited_and_set_recursively(fs):
    assert [c["name"] for c in fs.q("classes")] == ["default", "fast", "archive"]
    a = fs.mkdir(ROOT_INODE, b"a")
    assert fs.do("setclass", ino=a, sclass="fast", recursive=False) == {"changed": 1, "skipped": 0}
    f = fs.create(a, b"f")
    sub = fs.mkdir(a, b"sub")
    g = fs.create(sub, b"g")
    assert fs.q("getclass", ino=f) == "fast" and fs.q("getclass", ino=g) == "fast"
    c = fs.write(g, 0)
    assert [(i, info.version, info.sclass, info.ec, info.goal) for i, info in fs.ns.iter_chunks()] == [
        (c, 1, "fast", None, 3)]
    assert fs.do("setclass", ino=a, sclass="default", recursive=True) == {"changed": 4, "skipped": 0}
    assert fs.q("getclass", ino=g) == "default"
    assert fs.do("setclass", ino=a, sclass="default", recursive=True)["changed"] == 0
    assert fs.attr(g)["sclass"] == "default"


def test_setclass_refusals(fs):
    home = fs.mkdir(ROOT_INODE, b"home", 0o777)
    f = fs.create(home, b"f", ctx=ALICE)
    e = fs.fails(errno.EINVAL, "setclass", ino=f, sclass="gold")
    assert "gold" in e.message
    assert fs.do("setclass", ino=f, sclass="archive") == {"changed": 1, "skipped": 0}
    fs.fails(errno.EPERM, "setclass", BOB, ino=f, sclass="fast")
    fs.fails(errno.EINVAL, "setclass", ino=f, sclass="fast", recursive="yes")
    fs.create(home, b"g", ctx=BOB)
    fs.do("setattr", ino=home, uid=1000)
    assert fs.do("setclass", ALICE, ino=home, sclass="fast", recursive=True) == {"changed": 2, "skipped": 1}


def test_setclass_counts_hard_linked_files_once(fs):
    d = fs.mkdir(ROOT_INODE, b"d")
    f = fs.create(d, b"f")
    fs.do("link", ino=f, parent=d, name=b"g")
    assert fs.do("setclass", ino=d, sclass="fast", recursive=True) == {"changed": 2, "skipped": 0}


def test_storage_class_model():
    fast, archive = CLASSES["fast"], CLASSES["archive"]
    assert (fast.goal, fast.describe()) == (3, "3 copies")
    assert (archive.goal, archive.ec, archive.describe()) == (12, (8, 4), "erasure coding 8+4")
    assert CLASSES["default"].to_dict() == {
        "name": "default", "copies": 2, "ec": None, "goal": 2, "tier": "standard", "builtin": True,
        "description": "2 copies",
    }  # fmt: skip
    assert StorageClass("x", ec=[4, 2]).ec == (4, 2)
    assert StorageClass("x", ec=(30, 2)).goal == 32
    for bad in [{}, {"copies": 2, "ec": (1, 1)}, {"copies": 0}, {"copies": 10}, {"ec": (8,)}, {"ec": (0, 2)},
                {"ec": (2, 0)}, {"ec": (30, 3)}, {"ec": 3}]:
        with pytest.raises(ValueError):
            StorageClass("bad", **bad)


def test_operator_classes_are_created_listed_and_deleted(fs):
    assert fs.do("class_create", name="cold6", ec=[4, 2], tier="cold") == {
        "name": "cold6", "copies": None, "ec": [4, 2], "goal": 6, "tier": "cold", "builtin": False,
        "description": "erasure coding 4+2"}  # fmt: skip
    fs.do("class_create", name="one", copies=1)
    assert [c["name"] for c in fs.q("classes")] == ["default", "fast", "archive", "cold6", "one"]
    f = fs.create(ROOT_INODE, b"f")
    assert fs.do("setclass", ino=f, sclass="cold6")["changed"] == 1
    e = fs.fails(errno.EBUSY, "class_delete", name="cold6")
    assert e.message == "storage class 'cold6' is used by 1 inode"
    fs.do("setclass", ino=f, sclass="default")
    assert fs.do("class_delete", name="cold6") is None
    assert [c["name"] for c in fs.q("classes")] == ["default", "fast", "archive", "one"]
    fs.fails(errno.EINVAL, "setclass", ino=f, sclass="cold6")


@pytest.mark.parametrize(
    "args, code, message",
    [
        ({"name": "z", "ec": [0, 4]}, errno.EINVAL, "ec must be K+M with K, M >= 1"),
        ({"name": "z", "ec": [8, 0]}, errno.EINVAL, "ec must be K+M with K, M >= 1"),
        ({"name": "z", "ec": [30, 3]}, errno.EINVAL, "ec 30+3 has more than 32 parts"),
        ({"name": "z", "ec": [8]}, errno.EINVAL, "ec must be K+M"),
        ({"name": "z", "copies": 0}, errno.EINVAL, "copies must be 1 to 9"),
        ({"name": "z"}, errno.EINVAL, "give exactly one of copies or ec"),
        ({"name": "z", "copies": 2, "ec": [2, 1]}, errno.EINVAL, "give exactly one of copies or ec"),
        ({"name": "bad name", "copies": 2}, errno.EINVAL, "bad storage class name"),
        ({"name": "", "copies": 2}, errno.EINVAL, "bad storage class name"),
        ({"name": "-", "copies": 2}, errno.EINVAL, "bad storage class name"),
        ({"name": 7, "copies": 2}, errno.EINVAL, "bad storage class name"),
        ({"name": "z", "copies": 2, "tier": "a b"}, errno.EINVAL, "bad tier"),
        ({"name": "archive", "copies": 2}, errno.EEXIST, "storage class 'archive' exists"),
    ],
)
def test_class_create_refusals(fs, args, code, message):
    assert message in fs.fails(code, "class_create", **args).message


def test_class_delete_refusals(fs):
    fs.do("class_create", name="mine", copies=1)
    assert fs.fails(errno.EPERM, "class_create", ALICE, name="x", copies=1).message == \
        "only root may create storage classes"
    fs.fails(errno.EPERM, "class_delete", ALICE, name="mine")
    assert fs.fails(errno.EPERM, "class_delete", name="archive").message == "storage class 'archive' is built in"
    fs.fails(errno.ENOENT, "class_delete", name="gold")


def test_a_chunk_takes_its_layout_from_the_class_and_keeps_it_until_converted(fs):
    f = fs.create(ROOT_INODE, b"f")
    fs.do("setclass", ino=f, sclass="archive")
    w = fs.do("write_chunk", ino=f, index=0)
    assert w == {"chunk_id": 1, "version": 1, "expect_version": 0, "new": True, "ec": [8, 4]}
    fs.do("commit_write", ino=f, size=CHUNK_SIZE + 5)
    copy = fs.write(f, 1, CHUNK_SIZE + 5)
    assert fs.q("chunks", ino=f, index=0, count=2) == [
        {"index": 0, "chunk_id": 1, "version": 1, "ec": [8, 4]}, {"index": 1, "chunk_id": copy, "version": 1, "ec": [8, 4]}]
    assert fs.ns.chunk_info(copy).length == 5
    # a new class applies to new chunks; the existing ones keep their layout until converted
    fs.do("setclass", ino=f, sclass="default")
    info = fs.ns.chunk_info(1)
    assert (info.ec, info.target, info.goal, info.length) == ((8, 4), None, 12, CHUNK_SIZE)
    assert fs.do("write_chunk", ino=f, index=0)["ec"] == [8, 4]
    assert fs.q("chunks", ino=f, index=2) == [{"index": 2, "chunk_id": 0, "version": 0}]
    fs.fails(errno.ESTALE, "set_layout", chunk_id=1, version=1, ec=None)
    fs.fails(errno.EINVAL, "set_layout", chunk_id=1, version=2, ec=[4, 2])
    fs.fails(errno.ENOENT, "set_layout", chunk_id=99, version=1, ec=None)
    assert fs.do("set_layout", chunk_id=1, version=2, ec=None) == {"chunk_id": 1, "version": 3}
    info = fs.ns.chunk_info(1)
    assert (info.version, info.ec, info.target, info.goal) == (3, None, None, 2)
    fs.fails(errno.EINVAL, "set_layout", chunk_id=1, version=3, ec=None)  # nothing to convert
    # shrinking into an erasure-coded chunk: the tail says so
    fs.do("setclass", ino=f, sclass="archive")
    fs.do("set_layout", chunk_id=1, version=3, ec=[8, 4])
    assert fs.do("setattr", ino=f, size=100)["tail"] == {"chunk_id": 1, "version": 5, "expect_version": 4,
                                                         "length": 100, "ec": [8, 4]}


def test_parts_of_another_geometry_become_copies_first(fs):
    fs.do("class_create", name="ec42", ec=[4, 2])
    f = fs.create(ROOT_INODE, b"f")
    fs.do("setclass", ino=f, sclass="archive")
    c = fs.write(f, 0)
    fs.do("setclass", ino=f, sclass="ec42")
    info = fs.ns.chunk_info(c)
    assert (info.ec, info.target) == ((8, 4), None)
    fs.fails(errno.EINVAL, "set_layout", chunk_id=c, version=1, ec=[4, 2])
    fs.do("set_layout", chunk_id=c, version=1, ec=None)
    info = fs.ns.chunk_info(c)
    assert (info.ec, info.target, info.goal) == (None, (4, 2), 2)
    fs.do("set_layout", chunk_id=c, version=2, ec=[4, 2])
    assert fs.ns.chunk_info(c)[:4] == (3, "ec42", (4, 2), (4, 2))


def test_a_file_its_client_has_open_is_sustained_after_its_last_link_goes(fs):
    def by(client, op, **args):
        fs.ts += 1
        return fs.ns.apply({"op": op, "args": args, "ctx": ROOT, "ts": fs.ts, "client_id": client})

    f = fs.create(ROOT_INODE, b"f")
    c = fs.write(f, 0, size=100)
    other = fs.create(ROOT_INODE, b"other")
    fs.fails(errno.EINVAL, "unlink", parent=ROOT_INODE, name=b"f", open=f)
    # Another client's open file, or a caller without an id: freed as before.
    r = by(7, "unlink", parent=ROOT_INODE, name=b"other", open=[f])
    assert r["freed"] == [] and "sustained" not in r and other not in fs.ns._inodes
    r = by(7, "unlink", parent=ROOT_INODE, name=b"f", open=[other, f])
    assert r["sustained"] and r["freed"] == [] and r["attr"]["nlink"] == 0
    assert fs.names(ROOT_INODE) == [] and fs.attr(f)["size"] == 100 and fs.ns.chunk_version(c) == 1
    fs.fails(errno.ENOENT, "link", ino=f, parent=ROOT_INODE, name=b"back")
    assert fs.do("write_chunk", ino=f, index=1)["chunk_id"]  # its client still writes it
    check(fs.ns)
    assert Namespace.load(fs.ns.dump()).dump() == fs.ns.dump(), "snapshots keep it"
    assert fs.ns.sustained_owners() == {7}
    assert by(8, "release", ino=other) == {"freed": []}
    assert sorted(by(7, "release", ino=f)["freed"]) == [c, c + 1]
    assert f not in fs.ns._inodes and fs.ns.chunk_count == 0 and fs.ns.sustained_owners() == set()
    assert by(7, "release", ino=f) == {"freed": []}, "a second release is a no-op"
    # Replaced by a rename while open; then the client is gone and its session expires.
    a, b = fs.create(ROOT_INODE, b"a"), fs.create(ROOT_INODE, b"b")
    cb = fs.write(b, 0)
    r = by(9, "rename", parent=ROOT_INODE, name=b"a", newparent=ROOT_INODE, newname=b"b", open=[b])
    assert r["sustained"] and r["replaced"]["ino"] == b and r["freed"] == []
    check(fs.ns)
    assert fs.do("expire_sessions", clients=[5]) == {"freed": [], "inodes": []}
    assert fs.do("expire_sessions", clients=[5, 9]) == {"freed": [cb], "inodes": [b]}
    assert b not in fs.ns._inodes and fs.names(ROOT_INODE) == [b"b"] and fs.lookup(ROOT_INODE, b"b") == a
    fs.fails(errno.EINVAL, "expire_sessions", clients=9)


def test_bump_version_moves_a_chunk_on_from_the_version_a_write_missed_pieces_at(fs):
    f = fs.create(ROOT_INODE, b"f")
    c = fs.do("write_chunk", ino=f, index=0)["chunk_id"]
    fs.do("write_chunk", ino=f, index=0)
    fs.fails(errno.ESTALE, "bump_version", chunk_id=c, version=1)
    fs.fails(errno.ENOENT, "bump_version", chunk_id=99, version=2)
    assert fs.do("bump_version", chunk_id=c, version=2) == {"chunk_id": c, "version": 3}
    assert fs.ns.chunk_version(c) == 3
    assert fs.q("chunks", ino=f, index=0) == [{"index": 0, "chunk_id": c, "version": 3}]
    fs.do("setclass", ino=f, sclass="archive")
    e = fs.do("write_chunk", ino=f, index=1)["chunk_id"]
    assert fs.do("bump_version", chunk_id=e, version=1) == {"chunk_id": e, "version": 2, "ec": [8, 4]}


def test_piece_version_says_which_pieces_a_chunk_wants(fs):
    f = fs.create(ROOT_INODE, b"f")
    c = fs.write(f, 0)  # default: copies
    assert fs.ns.piece_version(c) == 1
    assert fs.ns.piece_version(part_id(c, 0)) is None
    fs.do("setclass", ino=f, sclass="archive")  # converting: copies and the new parts
    assert [fs.ns.piece_version(part_id(c, p)) for p in (0, 11)] == [1, 1]
    assert fs.ns.piece_version(part_id(c, 12)) is None
    assert fs.ns.piece_version(c) == 1
    fs.do("set_layout", chunk_id=c, version=1, ec=[8, 4])
    assert fs.ns.piece_version(c) is None and fs.ns.piece_version(part_id(c, 11)) == 2
    assert fs.ns.piece_version(c + 1) is None and fs.ns.piece_version(part_id(c + 1, 0)) is None


def test_classes_and_layouts_survive_a_snapshot(fs):
    fs.do("class_create", name="zeta", copies=4, tier="hot")
    fs.do("class_create", name="alpha", ec=[2, 1])
    f = fs.create(ROOT_INODE, b"f")
    fs.do("setclass", ino=f, sclass="alpha")
    fs.write(f, 0)
    fs.write(f, 1)
    g = fs.create(ROOT_INODE, b"g")
    fs.do("setclass", ino=g, sclass="zeta")
    fs.write(g, 0)
    data = fs.ns.dump()
    other = Namespace.load(data)
    assert other.dump() == data
    assert [c.to_dict() for c in other.classes] == fs.q("classes")
    assert list(other.iter_chunks()) == list(fs.ns.iter_chunks())
    assert [info.ec for _, info in other.iter_chunks()] == [(2, 1), (2, 1), None]
    check(other)


def test_a_snapshot_from_before_operator_classes_loads():
    import msgpack

    old = msgpack.packb({"format": 1, "next_ino": 3, "next_chunk": 2, "inodes": [
        [1, S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, "default", None, [1, 4, [[b"f", 2, 3]]]],
        [2, S_IFREG | 0o644, 1, 0, 0, 0, 10, 0, 0, 0, "fast", None, [[0, 1, 7]]],
    ]}, use_bin_type=True)  # fmt: skip
    ns = Namespace.load(old)
    assert [c.name for c in ns.classes] == ["default", "fast", "archive"]
    assert ns.chunk_info(1) == (7, "fast", None, None, 3, 3, 10, 2)
    check(ns)


def test_statfs(fs):
    fs.write(fs.create(ROOT_INODE, b"f"), 0)
    fs.mkdir(ROOT_INODE, b"d")
    assert fs.q("statfs") == {"inodes": 3, "chunks": 1, "name_max": 255}
    assert fs.ns.inode_count == 3


# --- malformed entries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        None,
        {"op": "explode", "args": {}, "ctx": ROOT, "ts": 1},
        {"op": ["mkdir"], "args": {}, "ctx": ROOT, "ts": 1},
        {"op": "mkdir", "args": [], "ctx": ROOT, "ts": 1},
        {"op": "mkdir", "args": {"parent": 1, "name": b"x", "mode": 0o755}, "ctx": ROOT, "ts": 1.5},
        {"op": "mkdir", "args": {"parent": 1, "name": b"x", "mode": 0o755}, "ctx": ROOT},
        {"op": "mkdir", "args": {"parent": 1, "name": b"x", "mode": 0o755}, "ctx": {"uid": 0}, "ts": 1},
        {"op": "mkdir", "args": {"parent": 1, "name": b"x", "mode": 0o755}, "ctx": {**ROOT, "gids": "0"}, "ts": 1},
        {"op": "mkdir", "args": {"parent": 1, "name": b"x", "mode": 0o755}, "ctx": {**ROOT, "uid": -1}, "ts": 1},
        {"op": "mkdir", "args": {"parent": 1, "name": "x", "mode": 0o755}, "ctx": ROOT, "ts": 1},
        {"op": "mkdir", "args": {"parent": True, "name": b"x", "mode": 0o755}, "ctx": ROOT, "ts": 1},
        {"op": "mkdir", "args": {"parent": [1], "name": b"x", "mode": 0o755}, "ctx": ROOT, "ts": 1},
        {"op": "mkdir", "args": {"parent": 1, "name": b"x"}, "ctx": ROOT, "ts": 1},
        {"op": "mkdir", "args": {"parent": 1, "name": b"x", "mode": 1 << 20}, "ctx": ROOT, "ts": 1},
        {"op": "mknod", "args": {"parent": 1, "name": b"x", "mode": 0o644, "rdev": -1}, "ctx": ROOT, "ts": 1},
        {"op": "setattr", "args": {"ino": 1, "uid": 1 << 32}, "ctx": ROOT, "ts": 1},
        {"op": "setattr", "args": {"ino": 1, "size": "big"}, "ctx": ROOT, "ts": 1},
        {"op": "write_chunk", "args": {"ino": 1, "index": -1}, "ctx": ROOT, "ts": 1},
        {"op": "setxattr", "args": {"ino": 1, "name": b"user.x", "value": "str"}, "ctx": ROOT, "ts": 1},
        {"op": "rename", "args": {"parent": 1, "name": b"a", "newparent": 1}, "ctx": ROOT, "ts": 1},
        {"op": "setclass", "args": {"ino": 1, "sclass": ["fast"]}, "ctx": ROOT, "ts": 1},
    ],
)
def test_malformed_entries_are_einval_and_change_nothing(fs, entry):
    fs.mkdir(ROOT_INODE, b"a")
    before = fs.ns.dump()
    with pytest.raises(FsError) as info:
        fs.ns.apply(entry)
    assert info.value.errno == errno.EINVAL, info.value
    assert fs.ns.dump() == before


def test_malformed_queries(fs):
    for op, args, ctx in [("nope", {}, ROOT), ("getattr", {"ino": "1"}, ROOT), ("getattr", [], ROOT),
                          ("getattr", {"ino": 1}, None), ("readdir", {"ino": 1, "offset": -1}, ROOT)]:  # fmt: skip
        with pytest.raises(FsError) as info:
            fs.ns.query(op, args, ctx)
        assert info.value.errno == errno.EINVAL


def test_garbage_args_never_crash_or_half_apply():
    ns, _, _ = random_run(5, 400)
    rng = random.Random(1)
    keys = ["ino", "parent", "name", "mode", "rdev", "target", "newparent", "newname", "flags", "uid", "gid",
            "size", "atime", "mtime", "value", "sclass", "recursive", "index", "offset", "limit", "count"]  # fmt: skip
    values = [None, True, -1, 0, 1, 2, 3, 2**64 - 1, 1.5, "now", "fast", b"", b"a", b"user.a", b"..", b"a/b",
              b"x" * 300, [], [1], {}, S_IFREG | 0o644, S_IFDIR | 0o755]  # fmt: skip
    ops = sorted(nsmod.MUTATIONS | nsmod.QUERIES)
    for i in range(3000):
        args = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 8))}
        for k in ("ino", "parent", "newparent"):
            if rng.random() < 0.5:
                args[k] = rng.choice(list(ns._inodes))
        op, ctx = rng.choice(ops), rng.choice([ROOT, ALICE, {"uid": 0, "gid": 0}])
        before = ns.dump()
        try:
            if op in nsmod.MUTATIONS:
                ns.apply({"op": op, "args": args, "ctx": ctx, "ts": i})
            else:
                ns.query(op, args, ctx)
        except FsError:
            assert ns.dump() == before, f"{op} {args} failed but changed the state"
        else:
            assert op in nsmod.MUTATIONS or ns.dump() == before, f"query {op} changed the state"
    check(ns)


def test_queries_cannot_be_applied(fs):
    with pytest.raises(FsError) as info:
        fs.ns.apply({"op": "getattr", "args": {"ino": 1}, "ctx": ROOT, "ts": 1})
    assert info.value.errno == errno.EINVAL


# --- determinism and snapshots ---------------------------------------------------------------

USERS = [ROOT, ROOT, ALICE, BOB]


def random_entry(rng: random.Random, ns: Namespace, ts: int) -> dict:
    """A random entry over the inodes that exist now: mostly valid, often failing on purpose."""
    live = list(ns._inodes)
    dirs = [i for i in live if ns._inodes[i].dir is not None]
    ino, other = rng.choice(live), rng.choice(dirs if rng.random() < 0.8 else live)
    name, other_name = rng.choice(NAMES), rng.choice(NAMES)
    parent = rng.choice(dirs if rng.random() < 0.8 else live)
    entries = ns._inodes[parent].dir.entries if ns._inodes[parent].dir is not None else {}
    old = rng.choice(list(entries)) if entries and rng.random() < 0.8 else name
    op, args = rng.choice(
        [
            ("mknod", {"parent": parent, "name": name, "mode": S_IFREG | rng.choice([0o644, 0o666, 0o4755])}),
            ("mknod", {"parent": parent, "name": name, "mode": S_IFREG | 0o666}),
            ("mkdir", {"parent": parent, "name": name, "mode": rng.choice([0o755, 0o777, 0o1777])}),
            ("mkdir", {"parent": parent, "name": name, "mode": 0o777}),
            ("symlink", {"parent": parent, "name": name, "target": b"t" * rng.randint(0, 3)}),
            ("link", {"ino": ino, "parent": other, "name": name}),
            ("unlink", {"parent": parent, "name": old}),
            ("rmdir", {"parent": parent, "name": old}),
            ("rename", {"parent": parent, "name": old, "newparent": other, "newname": other_name,
                        "flags": rng.choice([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])}),
            ("setattr", {"ino": ino, "mode": rng.choice([0o600, 0o777, 0o2775]),
                         "size": rng.choice([None, 0, 5, CHUNK_SIZE + 3])}),
            ("setattr", {"ino": ino, "uid": rng.choice([0, 1000, 1001]), "gid": rng.choice([0, 50, 1001]),
                         "mtime": "now"}),
            ("setxattr", {"ino": ino, "name": b"user." + name, "value": name * 3, "flags": rng.randint(0, 2)}),
            ("removexattr", {"ino": ino, "name": b"user." + name}),
            ("setclass", {"ino": ino, "sclass": rng.choice(["default", "fast", "archive", "c1"]),
                          "recursive": rng.random() < 0.5}),
            ("class_create", {"name": rng.choice(["c1", "c2"]), "ec": rng.choice([[2, 1], [0, 1]])}),
            ("class_delete", {"name": rng.choice(["c1", "c2", "fast"])}),
            ("set_layout", {"chunk_id": rng.randint(1, 30), "version": rng.randint(1, 3),
                            "ec": rng.choice([None, [8, 4], [2, 1]])}),
            ("write_chunk", {"ino": ino, "index": rng.randint(0, 3)}),
            ("write_chunk", {"ino": ino, "index": rng.randint(0, 3)}),
            ("commit_write", {"ino": ino, "size": rng.randint(0, 4 * CHUNK_SIZE)}),
        ]
    )  # fmt: skip
    return {"op": op, "args": args, "ctx": rng.choice(USERS), "ts": ts}


NAMES = [b"a", b"b", b"c", b"d", b"e", b"f"]


def apply_all(ns: Namespace, entries) -> list:
    """Results, or the errno of each failure, so two runs can be compared."""
    out = []
    for entry in entries:
        try:
            out.append(ns.apply(entry))
        except FsError as exc:
            out.append(exc.errno)
    return out


def random_run(seed: int, count: int):
    """Drive a namespace with `count` random entries; return it, the entries and the results."""
    rng, ns, entries, results = random.Random(seed), Namespace(), [], []
    for i in range(count):
        entries.append(random_entry(rng, ns, 10_000 + i))
        results += apply_all(ns, entries[-1:])
        if i % 500 == 0:
            check(ns)
    return ns, entries, results


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_entries_same_state(seed):
    a, entries, results_a = random_run(seed, 3000)
    check(a)
    successes = sum(1 for r in results_a if type(r) is not int)
    assert successes > 900, f"only {successes} entries succeeded: the stream tests too little"
    b = Namespace()
    assert apply_all(b, entries) == results_a
    assert a.dump() == b.dump()
    # a replica restarted from a snapshot taken halfway reaches the same state
    c = Namespace()
    apply_all(c, entries[:1500])
    c = Namespace.load(c.dump())
    assert apply_all(c, entries[1500:]) == results_a[1500:]
    assert c.dump() == a.dump()
    check(c)


def test_dump_load_round_trip(fs):
    d = fs.mkdir(ROOT_INODE, b"d", 0o2775)
    f = fs.create(d, b"f")
    fs.write(f, 1, CHUNK_SIZE + 7)
    fs.do("setxattr", ino=f, name=b"user.k", value=b"v")
    fs.do("symlink", parent=d, name=b"s", target=b"f")
    fs.do("mknod", parent=d, name=b"dev", mode=S_IFCHR | 0o600, rdev=42)
    for i in range(30):
        fs.create(d, b"%d" % i)
    for i in range(0, 30, 3):
        fs.do("unlink", parent=d, name=b"%d" % i)
    fs.do("setclass", ino=d, sclass="fast", recursive=True)
    data = fs.ns.dump()
    other = FS(Namespace.load(data))
    other.ts = fs.ts
    assert other.ns.dump() == data
    assert other.q("readdir", ino=d, offset=0, limit=100) == fs.q("readdir", ino=d, offset=0, limit=100)
    assert other.q("chunks", ino=f, index=0, count=3) == fs.q("chunks", ino=f, index=0, count=3)
    assert other.q("getxattr", ino=f, name=b"user.k") == b"v"
    assert other.q("readlink", ino=other.lookup(d, b"s")) == b"f"
    assert list(other.ns.iter_chunks()) == list(fs.ns.iter_chunks())
    # counters survive: the next ids are the same on both
    assert other.create(d, b"new") == fs.create(d, b"new")
    assert other.ns.dump() == fs.ns.dump()
    check(other.ns)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x80", Namespace().dump()[:-3], Namespace().dump() + b"\x00"])
def test_load_rejects_bad_dumps(data):
    with pytest.raises(ValueError):
        Namespace.load(data)


def test_entry_changes_return_the_parent_attr_and_next_cookie_counts_added_names(fs):
    d = fs.mkdir(ROOT_INODE, b"d")
    cookie = fs.attr(d)["next_cookie"]
    r = fs.do("mknod", parent=d, name=b"f", mode=S_IFREG | 0o644)
    assert r["parent"] == fs.attr(d) and r["parent"]["mtime"] == fs.ts
    assert r["parent"]["next_cookie"] == cookie + 1
    r = fs.do("mkdir", parent=d, name=b"sub", mode=0o755)
    assert r["next_cookie"] == nsmod.FIRST_COOKIE and r["parent"]["nlink"] == 3
    assert fs.do("symlink", parent=d, name=b"l", target=b"f")["parent"]["next_cookie"] == cookie + 3
    r = fs.do("unlink", parent=d, name=b"l")  # a removal: the count stays
    assert r["parent"]["next_cookie"] == cookie + 3 and r["parent"] == fs.attr(d)
    r = fs.do("rename", parent=d, name=b"f", newparent=d, newname=b"g")
    assert r["parent"]["next_cookie"] == r["newparent"]["next_cookie"] == cookie + 4
    assert r["attr"] == fs.attr(fs.lookup(d, b"g")) and r["replaced"] is None
    assert fs.q("lookup", parent=ROOT_INODE, name=b"d")["next_cookie"] == cookie + 4
    assert "next_cookie" not in fs.attr(fs.lookup(d, b"g"))  # only directories have one
    r = fs.do("rmdir", parent=d, name=b"sub")
    assert r["parent"]["nlink"] == 2 and r["attr"]["nlink"] == 0
