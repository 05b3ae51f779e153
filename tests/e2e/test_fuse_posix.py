"""POSIX behaviour through real FUSE mounts of a real local cluster (master, 3 chunkservers, 3
clients on 127.0.0.1): errnos, links, attributes, truncation, xattrs, big and sparse files,
concurrent writers, and data written through one client read through another.

The session's `cluster` and per-test `workdir` (under client-1's mount) come from tests/conftest.py,
which stops every process and unmounts even when a test fails.
"""

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from mooseng.client.masterclient import MasterClient
from mooseng.errors import FsError
from support.polling import wait_for

pytestmark = pytest.mark.fuse

MiB = 1 << 20
NOBODY = 65534


def expect_errno(code: int, fn, *args, **kwargs):
    with pytest.raises(OSError) as exc:
        fn(*args, **kwargs)
    assert exc.value.errno == code, f"expected {errno.errorcode[code]}, got {exc.value!r}"


def as_user(cwd, uid: int, gid: int, fn) -> int:
    """Run fn() in a forked child that dropped root for uid/gid inside `cwd` (its ancestors may be
    closed to others); returns the errno fn raised, or 0."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 255
        try:
            os.close(read_end)
            os.chdir(cwd)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                fn()
                code = 0
            except OSError as exc:
                code = exc.errno
            os.write(write_end, str(code).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        result = f.read()
    os.waitpid(pid, 0)
    assert result, "the child died before reporting"
    return int(result)


def sha256_file(path, piece=4 * MiB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(piece):
            h.update(chunk)
    return h.hexdigest()


def drop_kernel_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def on_client(cluster, n, path):
    """The same file as seen through client n's mount."""
    return cluster.mountpoint(n) / path.relative_to(cluster.mountpoint(1))


# --- errnos -----------------------------------------------------------------------------------------


def test_errnos(workdir):
    (workdir / "file").write_bytes(b"x")
    (workdir / "dir").mkdir()
    (workdir / "dir" / "inner").write_bytes(b"y")
    expect_errno(errno.ENOENT, os.stat, workdir / "missing")
    expect_errno(errno.ENOENT, open, workdir / "missing")
    expect_errno(errno.ENOENT, os.unlink, workdir / "missing")
    expect_errno(errno.EEXIST, os.mkdir, workdir / "dir")
    expect_errno(errno.EEXIST, os.open, workdir / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    expect_errno(errno.EEXIST, os.symlink, "x", workdir / "file")
    expect_errno(errno.ENOTEMPTY, os.rmdir, workdir / "dir")
    expect_errno(errno.ENOTDIR, os.mkdir, workdir / "file" / "sub")
    expect_errno(errno.ENOTDIR, os.rmdir, workdir / "file")
    expect_errno(errno.ENOTDIR, os.listdir, workdir / "file")
    expect_errno(errno.EISDIR, open, workdir / "dir", "wb")
    expect_errno(errno.EISDIR, os.unlink, workdir / "dir")
    expect_errno(errno.EINVAL, os.rename, workdir / "dir", workdir / "dir" / "below")
    expect_errno(errno.ENAMETOOLONG, open, workdir / ("n" * 256), "wb")
    (workdir / ("n" * 255)).write_bytes(b"longest name")
    assert (workdir / ("n" * 255)).read_bytes() == b"longest name"


def test_permissions_as_another_user(workdir):
    secret = workdir / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    closed = workdir / "closed"
    closed.mkdir(mode=0o755)
    shared = workdir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert as_user(workdir, NOBODY, NOBODY, lambda: open("secret", "rb")) == errno.EACCES
    assert as_user(workdir, NOBODY, NOBODY, lambda: open("closed/new", "wb")) == errno.EACCES
    assert as_user(workdir, NOBODY, NOBODY, lambda: os.chmod("secret", 0o666)) == errno.EPERM
    assert as_user(workdir, NOBODY, NOBODY, lambda: os.chown("secret", NOBODY, NOBODY)) == errno.EPERM
    # Allowed: create in a world-writable directory; the file belongs to the creator.
    assert as_user(workdir, NOBODY, NOBODY, lambda: open("shared/mine", "wb").close()) == 0
    st = os.stat(shared / "mine")
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    # A file created read-only stays writable through the descriptor that created it.
    def create_readonly():
        fd = os.open("shared/ro", os.O_CREAT | os.O_WRONLY, 0o444)
        try:
            os.write(fd, b"written")
        finally:
            os.close(fd)
    assert as_user(workdir, NOBODY, NOBODY, create_readonly) == 0
    assert (shared / "ro").read_bytes() == b"written"


# --- names, links ------------------------------------------------------------------------------------


def test_rename_over_existing(workdir):
    (workdir / "a").write_bytes(b"new")
    (workdir / "b").write_bytes(b"old, longer contents")
    os.rename(workdir / "a", workdir / "b")
    assert not (workdir / "a").exists()
    assert (workdir / "b").read_bytes() == b"new"
    (workdir / "d1").mkdir()
    (workdir / "d1" / "f").write_bytes(b"in d1")
    (workdir / "d2").mkdir()
    os.rename(workdir / "d1", workdir / "d2")  # over an empty directory
    assert (workdir / "d2" / "f").read_bytes() == b"in d1"
    (workdir / "d3").mkdir()
    expect_errno(errno.ENOTEMPTY, os.rename, workdir / "d3", workdir / "d2")
    expect_errno(errno.EISDIR, os.rename, workdir / "b", workdir / "d2")
    expect_errno(errno.ENOTDIR, os.rename, workdir / "d3", workdir / "b")
    assert sorted(os.listdir(workdir)) == ["b", "d2", "d3"]


def test_hard_links(workdir):
    a, b = workdir / "a", workdir / "b"
    a.write_bytes(b"linked")
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    with open(b, "ab") as f:
        f.write(b" twice")
    assert a.read_bytes() == b"linked twice"
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and b.read_bytes() == b"linked twice"
    expect_errno(errno.EPERM, os.link, workdir, workdir / "dirlink")


def test_symlinks(workdir):
    (workdir / "target").write_bytes(b"through the link")
    os.symlink("target", workdir / "rel")
    os.symlink(str(workdir / "target"), workdir / "abs")
    os.symlink("nowhere", workdir / "dangling")
    assert os.readlink(workdir / "rel") == "target"
    assert stat.S_ISLNK(os.lstat(workdir / "rel").st_mode)
    assert (workdir / "rel").read_bytes() == (workdir / "abs").read_bytes() == b"through the link"
    expect_errno(errno.ENOENT, open, workdir / "dangling")
    expect_errno(errno.EINVAL, os.readlink, workdir / "target")
    os.symlink("loop2", workdir / "loop1")
    os.symlink("loop1", workdir / "loop2")
    expect_errno(errno.ELOOP, open, workdir / "loop1")


def test_many_entries_and_special_files(workdir):
    names = {f"entry-{i:04d}" for i in range(700)}  # several readdir pages
    for name in names:
        (workdir / name).touch()
    os.mkfifo(workdir / "fifo")
    assert stat.S_ISFIFO(os.stat(workdir / "fifo").st_mode)
    assert set(os.listdir(workdir)) == names | {"fifo"}
    out = subprocess.run(["ls", "-a", str(workdir)], capture_output=True, text=True, check=True).stdout.split()
    assert "." in out and ".." in out and len(out) == len(names) + 3


# --- attributes -------------------------------------------------------------------------------------


def test_chmod_chown_utimes_with_nanoseconds(workdir):
    f = workdir / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o640)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    atime, mtime = 1_600_000_000_123_456_789, 1_650_000_000_987_654_321
    os.utime(f, ns=(atime, mtime))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    before = time.time_ns()
    os.utime(f)
    assert os.stat(f).st_mtime_ns >= before - 1_000_000_000


def test_mtime_set_while_data_is_buffered_is_kept(workdir):
    """cp -p sets times on the open descriptor before close(): the data written first must not
    overwrite them later."""
    f = workdir / "f"
    with open(f, "wb") as out:
        out.write(os.urandom(3 * MiB))
        os.utime(out.fileno(), ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(f).st_mtime_ns == 2_000_000_000


def test_xattrs(workdir):
    f = workdir / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.color", b"blue")
    assert os.getxattr(f, "user.color") == b"blue"
    os.setxattr(f, "user.size", b"L")
    assert set(os.listxattr(f)) == {"user.color", "user.size"}
    expect_errno(errno.EEXIST, os.setxattr, f, "user.color", b"red", os.XATTR_CREATE)
    expect_errno(errno.ENODATA, os.setxattr, f, "user.none", b"x", os.XATTR_REPLACE)
    os.setxattr(f, "user.color", b"red", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.color") == b"red"
    os.removexattr(f, "user.color")
    expect_errno(errno.ENODATA, os.getxattr, f, "user.color")
    expect_errno(errno.ENODATA, os.removexattr, f, "user.color")
    assert os.listxattr(f) == ["user.size"]


def test_statfs(cluster, workdir):
    st = os.statvfs(workdir)
    assert st.f_blocks > 0 and 0 < st.f_bavail <= st.f_blocks and st.f_namemax == 255
    out = subprocess.run(["df", "-P", str(cluster.mountpoint(1))], capture_output=True, text=True, check=True).stdout
    assert "mooseng" in out


# --- data -------------------------------------------------------------------------------------------


def test_truncate_grow_and_shrink(workdir):
    f = workdir / "f"
    data = os.urandom(1000)
    f.write_bytes(data)
    os.truncate(f, 10)
    assert f.read_bytes() == data[:10]
    os.truncate(f, 5000)
    assert f.read_bytes() == data[:10] + bytes(4990)
    # Across chunks: shrink into the second chunk, then grow: the cut-off part reads as zeros.
    big = os.urandom(70 * MiB)
    f.write_bytes(big)
    os.truncate(f, 65 * MiB)
    os.truncate(f, 70 * MiB)
    drop_kernel_caches()
    back = f.read_bytes()
    assert back[:65 * MiB] == big[:65 * MiB] and back[65 * MiB:] == bytes(5 * MiB)
    os.truncate(f, 0)
    assert f.read_bytes() == b"" and os.stat(f).st_size == 0


def test_ftruncate_of_buffered_writes(workdir):
    f = workdir / "f"
    with open(f, "wb+") as out:
        out.write(b"a" * 100_000)
        out.flush()
        os.ftruncate(out.fileno(), 10)
        out.seek(20)
        out.write(b"b")
    assert f.read_bytes() == b"a" * 10 + bytes(10) + b"b"


def test_multi_chunk_file_through_two_clients(cluster, workdir):
    data = os.urandom(150 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    f = workdir / "big"
    with open(f, "wb") as out:
        for pos in range(0, len(data), MiB):
            out.write(data[pos:pos + MiB])
    assert os.stat(f).st_size == len(data)
    drop_kernel_caches()
    assert sha256_file(f) == digest
    assert sha256_file(on_client(cluster, 2, f)) == digest
    with open(on_client(cluster, 3, f), "rb") as g:  # random reads across chunk boundaries
        for pos in (0, 64 * MiB - 10, 128 * MiB + 12345, len(data) - 7):
            g.seek(pos)
            assert g.read(4096) == data[pos:pos + 4096]


def test_sparse_file(cluster, workdir):
    f = workdir / "sparse"
    far = 200 * MiB + 123
    with open(f, "wb") as out:
        out.write(b"head")
        out.seek(far)
        out.write(b"tail")
    assert os.stat(f).st_size == far + 4
    drop_kernel_caches()
    with open(on_client(cluster, 2, f), "rb") as g:
        assert g.read(4) == b"head"
        g.seek(100 * MiB)
        assert g.read(MiB) == bytes(MiB)
        g.seek(far - 2)
        assert g.read() == b"\0\0tail"


def test_concurrent_writers(workdir):
    payloads = {f"w{i}": os.urandom(48 * MiB + i) for i in range(3)}
    errors = []

    def writer(name):
        try:
            with open(workdir / name, "wb") as out:
                data = payloads[name]
                for pos in range(0, len(data), MiB):
                    out.write(data[pos:pos + MiB])
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(name,)) for name in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    drop_kernel_caches()
    for name, data in payloads.items():
        assert (workdir / name).read_bytes() == data


def test_fsync_makes_data_visible_to_another_client(cluster, workdir):
    f = workdir / "synced"
    with open(f, "wb") as out:
        out.write(b"durable " * 1000)
        out.flush()
        os.fsync(out.fileno())
        assert on_client(cluster, 2, f).read_bytes() == b"durable " * 1000  # before close


def test_overwrite_is_seen_by_another_client_on_reopen(cluster, workdir):
    f = workdir / "changing"
    f.write_bytes(b"version 1 " * 1000)
    other = on_client(cluster, 2, f)
    assert other.read_bytes() == b"version 1 " * 1000  # now in client-2's page cache
    f.write_bytes(b"VERSION 2 " * 1000)
    assert other.read_bytes() == b"VERSION 2 " * 1000


def test_append(workdir):
    f = workdir / "log"
    for i in range(5):
        with open(f, "ab") as out:
            out.write(f"line {i}\n".encode())
    assert f.read_bytes().decode().splitlines() == [f"line {i}" for i in range(5)]


def test_copy_tree_with_shutil(workdir):
    src = workdir / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(os.urandom(300_000))
    os.symlink("sub/f", src / "link")
    shutil.copytree(src, workdir / "dst", symlinks=True)
    assert (workdir / "dst" / "sub" / "f").read_bytes() == (src / "sub" / "f").read_bytes()
    assert os.readlink(workdir / "dst" / "link") == "sub/f"
    shutil.rmtree(workdir / "dst")
    assert not (workdir / "dst").exists()


def test_reads_and_writes_survive_a_dead_chunkserver(cluster_factory):
    """Every chunk has two copies: with one chunkserver killed, reads fail over to the other copy
    and new writes go to the copies that remain."""
    cluster = cluster_factory(clients=2)
    before = os.urandom(20 * MiB)
    (cluster.mountpoint(1) / "before").write_bytes(before)
    # Kill the server that readers try first.
    master = MasterClient(cluster.master_endpoints, timeout_s=10)
    try:
        ino = os.stat(cluster.mountpoint(1) / "before").st_ino
        first = master.call("chunks", {"ino": ino, "index": 0})[0]["servers"][0]
    finally:
        master.close()
    victim = next(n.name for n in cluster.nodes if n.kind == "chunkserver" and n.addr("api") == first)
    cluster.kill(victim)
    drop_kernel_caches()
    assert (cluster.mountpoint(2) / "before").read_bytes() == before
    after = os.urandom(20 * MiB)
    (cluster.mountpoint(1) / "after").write_bytes(after)
    drop_kernel_caches()
    assert (cluster.mountpoint(2) / "after").read_bytes() == after


def test_an_unlinked_file_stays_readable_and_writable_until_its_last_close(cluster, workdir):
    """Linux keeps a file whose last name goes while it is open until its last close; so does
    MooseNG for the client that removed the name (MooseFS's sustained files), by unlink or by a
    rename over it, and frees its chunks at that close."""
    master = MasterClient(cluster.master_endpoints, timeout_s=10)
    try:
        path = workdir / "scratch"
        data = os.urandom(3 * MiB + 5)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
            ino = os.fstat(fd).st_ino
            os.unlink(path)
            assert not path.exists() and os.fstat(fd).st_nlink == 0
            more = os.urandom(64 * MiB)  # into a second chunk, after the unlink
            os.pwrite(fd, more, len(data))
            os.fsync(fd)
            drop_kernel_caches()
            assert os.pread(fd, len(data), 0) == data
            assert os.pread(fd, len(more), len(data)) == more
            assert os.fstat(fd).st_size == len(data) + len(more)
            chunks = master.call("chunks", {"ino": ino, "index": 0, "count": 2})
            assert all(c["chunk_id"] for c in chunks)
        finally:
            os.close(fd)

        def freed():
            try:
                master.call("getattr", {"ino": ino})
            except FsError as exc:
                return exc.errno == errno.ENOENT
            return False

        wait_for("the file freed at its last close", freed, 10)

        target = workdir / "target"
        target.write_bytes(b"old contents")
        with open(target, "rb") as old:
            (workdir / "new").write_bytes(b"new")
            os.rename(workdir / "new", target)
            assert target.read_bytes() == b"new"
            drop_kernel_caches()
            assert old.read() == b"old contents", "the replaced file is still there for its reader"
        with tempfile.TemporaryFile(dir=workdir) as tmp:  # create + unlink: O_TMPFILE is not offered
            tmp.write(b"x" * 5 * MiB)
            tmp.flush()
            tmp.seek(0)
            assert tmp.read() == b"x" * 5 * MiB
        assert sorted(p.name for p in workdir.iterdir()) == ["target"]
    finally:
        master.close()
