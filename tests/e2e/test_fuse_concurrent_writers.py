"""Two FUSE mounts (two client processes) of one cluster writing the same files at once: no
write or close fails, and what is left is one writer's data per write (both writers' data for
disjoint ranges). The contents are read back through a fresh client library instance, which
has no cache of either mount's.

The session's `cluster` and per-test `workdir` (under client-1's mount) come from tests/conftest.py.
"""

import os

import pytest

from mooseng.client.fs import Client
from support.polling import run_together, wait_for

pytestmark = pytest.mark.fuse

KiB = 1 << 10
ROUNDS = 8


@pytest.fixture
def mounts(cluster, workdir):
    """workdir as seen through client-1's and client-2's mounts."""
    return [cluster.mountpoint(n) / workdir.relative_to(cluster.mountpoint(1)) for n in (1, 2)]


@pytest.fixture
def reader(cluster):
    fs = Client(cluster.master_endpoints, timeout_s=20)
    try:
        yield fs
    finally:
        fs.close()


def stored(fs: Client, cluster, path) -> bytes:
    return fs.read_file(str(path.relative_to(cluster.mountpoint(1))))


def pwrite(path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def pattern(writer: int, round_: int, size: int) -> bytes:
    return f"m{writer}r{round_}.".encode().ljust(16, b".") * (size // 16)


def test_overlapping_and_disjoint_writes_of_one_chunk(cluster, workdir, mounts, reader):
    size = 128 * KiB
    (workdir / "shared").write_bytes(bytes(2 * size))
    for r in range(ROUNDS):
        datas = [pattern(i, r, size) for i in range(2)]
        errors = run_together([lambda m=m, d=d: pwrite(m / "shared", 0, d) for m, d in zip(mounts, datas)],
                              catch=OSError)
        assert not errors, errors
        head = stored(reader, cluster, workdir / "shared")[:size]
        assert head in datas, f"round {r}: the overlapping range is no writer's data"
        errors = run_together([lambda i=i, m=m, d=d: pwrite(m / "shared", i * size, d)
                               for i, (m, d) in enumerate(zip(mounts, datas))], catch=OSError)
        assert not errors, errors
        assert stored(reader, cluster, workdir / "shared") == b"".join(datas), f"round {r}: a range was lost"


def test_whole_small_files(cluster, workdir, mounts, reader):
    names = ["s0", "s1", "s2"]
    for r in range(ROUNDS):
        datas = [pattern(i, r, 64) for i in range(2)]

        def writer(m, d):
            for name in names:
                with open(m / name, "wb") as f:  # O_TRUNC, then the write: both race the other mount
                    f.write(d)
        errors = run_together([lambda m=m, d=d: writer(m, d) for m, d in zip(mounts, datas)], catch=OSError)
        assert not errors, errors
        for name in names:
            assert stored(reader, cluster, workdir / name) in datas, f"round {r} {name}"


def test_close_of_a_file_the_other_mount_unlinked(cluster, workdir, mounts, reader):
    """Linux lets a writer finish a file another process unlinked meanwhile; so does MooseNG."""
    for r in range(ROUNDS):
        path = mounts[0] / f"doomed{r}"
        path.write_bytes(b"")
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, b"x" * (64 * KiB))
        errors = run_together([lambda: os.close(fd), lambda r=r: os.unlink(mounts[1] / f"doomed{r}")],
                              catch=OSError)
        assert not errors, errors
        # This mount may answer from its entry cache until the timeout (1 s by default) runs out.
        wait_for("the unlink to show through the writer's mount", lambda: not path.exists(), 5)
