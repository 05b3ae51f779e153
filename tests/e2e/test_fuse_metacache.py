"""What the FUSE client answers from its caches (client/metacache.py), through real mounts.

- A create, mkdir, unlink or rename is one master call: the kernel's lookup of the new name and
  its getattr of the parent are answered from what the master sent with earlier changes.
- The caches are bounded by the timeouts: another client's changes (new names, new directory
  attrs) are seen once the timeouts have passed, and this client's own changes at once.
- A cold small-file read is two master calls (lookup, open with the chunk locations).
"""

import errno
import os
import re
import time
import urllib.request

import pytest

pytestmark = pytest.mark.fuse

TIMEOUT_S = 1.0  # the session cluster's attr, entry and negative timeouts (the defaults)


def master_ops(cluster) -> dict[str, float]:
    port = cluster.node("master-1").ports["metrics"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r'^mooseng_client_operations_total\{op="(\w+)"\} (\S+)$', text, re.M)}


def calls(cluster, fn) -> dict[str, int]:
    """The master ops fn() caused (nothing else talks to this cluster's master meanwhile)."""
    before = master_ops(cluster)
    fn()
    after = master_ops(cluster)
    return {op: int(n - before.get(op, 0)) for op, n in after.items() if n != before.get(op, 0)}


# One client with 30 s timeouts, so that nothing expires while a test counts master calls.
SLOW = {f"MOOSENG_{k}_TIMEOUT_S": "30" for k in ("ATTR", "ENTRY", "NEGATIVE")}


def test_namespace_changes_are_one_master_call_each(cluster_factory):
    slow_cluster = cluster_factory(chunkservers=2, clients=1, env_extra=SLOW)
    d = slow_cluster.mountpoint(1) / "t"
    d.mkdir()
    (d / "warm").touch()

    def create():
        os.close(os.open(d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    assert calls(slow_cluster, create) == {"mknod": 1}
    assert calls(slow_cluster, lambda: (d / "sub").mkdir()) == {"mkdir": 1}
    assert calls(slow_cluster, lambda: os.rename(d / "f", d / "g")) == {"rename": 1}
    assert calls(slow_cluster, lambda: os.unlink(d / "g")) == {"unlink": 1}
    assert calls(slow_cluster, lambda: os.stat(d)) == {}  # the parent's attr came with the unlink
    assert sorted(os.listdir(d)) == ["sub", "warm"]


def test_a_small_file_is_read_cold_with_two_master_calls(cluster, workdir):
    (workdir / "small").write_bytes(b"x" * 4096)
    cluster.restart("client-1")  # a fresh client: nothing cached
    os.sync()
    open("/proc/sys/vm/drop_caches", "w").write("3\n")
    path = workdir / "small"
    os.stat(workdir)  # the path down to the file's directory

    def read():
        with open(path, "rb") as f:
            assert f.read() == b"x" * 4096

    assert calls(cluster, read) == {"lookup": 1, "open": 1}


def test_own_changes_show_at_once_and_other_clients_changes_within_the_timeouts(cluster, workdir):
    mine = workdir / "d"
    theirs = cluster.mountpoint(2) / workdir.name / "d"
    mine.mkdir()
    (mine / "a").write_bytes(b"1")
    before = os.stat(mine)
    (mine / "sub").mkdir()  # our own change: the new nlink and mtime at once, from the cache
    now = os.stat(mine)
    assert now.st_nlink == before.st_nlink + 1 and now.st_mtime_ns > before.st_mtime_ns
    assert not os.path.exists(mine / "b")  # answered from our listing: no such name
    (theirs / "b").write_bytes(b"from client 2")
    (theirs / "sub2").mkdir()
    changed = os.stat(theirs)
    time.sleep(TIMEOUT_S + 0.2)  # every answer we could have kept has expired by now
    assert os.stat(mine).st_nlink == changed.st_nlink
    assert os.stat(mine).st_mtime_ns == changed.st_mtime_ns
    assert (mine / "b").read_bytes() == b"from client 2"
    assert sorted(os.listdir(mine)) == ["a", "b", "sub", "sub2"]
    with pytest.raises(FileExistsError):  # a name created elsewhere is never created twice
        os.open(mine / "b", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_a_name_another_client_creates_is_refused_to_an_exclusive_create_at_once(cluster, workdir):
    """Our listing may not know the name yet (the lookup says it is missing), but the master does."""
    mine = workdir / "d"
    mine.mkdir()
    assert not os.path.exists(mine / "x")
    (cluster.mountpoint(3) / workdir.name / "d" / "x").write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        os.open(mine / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with open(mine / "x", "rb") as f:  # and the name is known here now
        assert f.read() == b"theirs"


def test_the_client_counts_failed_operations_by_errno(cluster, workdir):
    """An rmdir of a non-empty directory fails with ENOTEMPTY (the kernel asks the client, the
    client the master); the mount's metrics count it by op and errno."""
    port = cluster.node("client-1").ports["metrics"]
    series = 'mooseng_operation_errors_total{error="ENOTEMPTY",op="rmdir"} '

    def failed_rmdirs() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return next((float(line[len(series):]) for line in text.splitlines() if line.startswith(series)), 0.0)

    (workdir / "full").mkdir()
    (workdir / "full" / "f").touch()
    before = failed_rmdirs()
    for _ in range(3):
        with pytest.raises(OSError) as info:
            os.rmdir(workdir / "full")
        assert info.value.errno == errno.ENOTEMPTY
    assert failed_rmdirs() == before + 3
