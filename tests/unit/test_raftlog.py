"""RaftStorage: durability, torn and corrupt tails, snapshots and compaction, cluster identity,
a full disk.

A crash is simulated by copying the data dir while the storage is still open: the copy holds
exactly what had reached the file system, and the original's flock does not apply to it.
"""

import logging
import os
import shutil
import subprocess

import pytest

from mooseng.master.raftlog import CLUSTER, LOG, PREALLOCATE, SNAP, LogWriteError, RaftStorage, StorageError, scan
from mooseng.raft import ConfState, Entry, HardState, bootstrap_snapshot

VOTERS = (1, 2, 3)


def boot():
    return bootstrap_snapshot(VOTERS, b"empty")


def ents(first: int, last: int, term: int = 2) -> list[Entry]:
    return [Entry(term, i, data=b"e%d" % i) for i in range(first, last + 1)]


def opened(path, cluster="c1", bootstrap=True) -> RaftStorage:
    st = RaftStorage(path, cluster)
    st.open(boot() if bootstrap else None)
    return st


def reopen(path, cluster="c1") -> RaftStorage:
    return opened(path, cluster)


def log_end(path) -> int:
    """Offset after the log's last valid record (the file goes on with preallocated zeros)."""
    with open(path, "rb") as f:
        return scan(f.read())[1]


@pytest.fixture
def data(tmp_path):
    return tmp_path / "meta"


def test_entries_and_hard_state_survive_a_restart(data):
    st = opened(data)
    st.persist(HardState(2, 1, 0), ents(2, 10), sync=True)
    st.persist(HardState(2, 1, 7), [], sync=False)
    st.close()
    st = reopen(data)
    assert (st.first_index(), st.last_index()) == (2, 10)
    assert st.entries(2, 11, None) == ents(2, 10)
    assert st.initial_state() == (HardState(2, 1, 7), ConfState(VOTERS))
    st.close()


def test_a_commit_index_alone_waits_for_the_next_record(data, tmp_path):
    """Raft finds a lost commit index again: a HardState that only moves it costs no write of
    its own; it goes out with the next append (or at close)."""
    st = opened(data)
    st.persist(HardState(2, 1, 1), ents(2, 5), sync=True)
    end = log_end(data / LOG)
    st.persist(HardState(2, 1, 4), [], sync=False)
    assert log_end(data / LOG) == end and st.initial_state()[0] == HardState(2, 1, 4)
    shutil.copytree(data, tmp_path / "crashed")  # a crash now: the commit index is older, nothing else
    st.persist(None, ents(6, 6), sync=True)
    st.close()
    crashed = reopen(tmp_path / "crashed")
    assert crashed.initial_state()[0] == HardState(2, 1, 1) and crashed.last_index() == 5
    crashed.close()
    st = reopen(data)
    assert st.initial_state()[0] == HardState(2, 1, 4) and st.last_index() == 6
    st.close()


def test_appends_overwrite_preallocated_zeros_and_reopen_finds_the_end(data, caplog):
    """The file is grown by written zeros ahead of the records (so an append's fdatasync needs
    no journal commit); the zeros are neither entries nor damage."""
    st = opened(data)
    st.persist(HardState(2, 1, 1), ents(2, 5), sync=True)
    size = os.path.getsize(data / LOG)
    end = log_end(data / LOG)
    assert size >= end + PREALLOCATE // 2
    with open(data / LOG, "rb") as f:
        assert f.read()[end:] == bytes(size - end)
    st.persist(None, ents(6, 9), sync=True)
    assert os.path.getsize(data / LOG) == size  # written into the zeros, the file did not grow
    st.close()
    with caplog.at_level(logging.WARNING):
        st = reopen(data)
    assert st.last_index() == 9 and "torn" not in caplog.text
    st.persist(None, [Entry(2, 10, data=bytes(PREALLOCATE))], sync=True)  # past the zeros: grows
    st.close()
    st = reopen(data)
    assert st.last_index() == 10 and st.entries(10, 11, None)[0].data == bytes(PREALLOCATE)
    st.close()


def test_a_later_append_replaces_the_conflicting_suffix(data):
    st = opened(data)
    st.persist(HardState(2, 1, 0), ents(2, 10, term=2), sync=True)
    st.persist(HardState(3, 2, 0), ents(6, 7, term=3), sync=True)
    st.close()
    st = reopen(data)
    assert st.last_index() == 7 and st.term(5) == 2 and st.term(6) == 3
    st.close()


@pytest.mark.parametrize("damage", ["torn", "flipped"])
def test_a_damaged_tail_is_cut_never_applied(data, tmp_path, caplog, damage):
    st = opened(data)
    st.persist(HardState(2, 1, 1), ents(2, 5), sync=True)
    size = log_end(data / LOG)
    st.persist(None, ents(6, 8), sync=True)
    crash = tmp_path / "crash"
    shutil.copytree(data, crash)
    st.close()
    with open(crash / LOG, "r+b") as f:
        if damage == "torn":
            f.truncate(log_end(crash / LOG) - 3)
        else:
            f.seek(size + 12)
            byte = f.read(1)
            f.seek(size + 12)
            f.write(bytes([byte[0] ^ 0x40]))
    with caplog.at_level(logging.WARNING):
        st = opened(crash)
    assert st.last_index() == 5
    assert "torn or corrupt tail after entry 5" in caplog.text
    assert os.path.getsize(crash / LOG) == size  # cut on disk too, so new entries follow entry 5
    st.persist(None, ents(6, 6, term=3), sync=True)
    st.close()
    st = opened(crash)
    assert st.last_index() == 6 and st.term(6) == 3
    st.close()


def test_snapshot_compacts_the_log_and_survives_a_restart(data):
    st = opened(data)
    st.persist(HardState(2, 1, 40), ents(2, 50), sync=True)
    st.take_snapshot(40, ConfState(VOTERS), b"state@40", keep=10)
    assert st.first_index() == 31 and st.snapshot().index == 40
    st.close()
    st = reopen(data)
    assert st.snapshot().index == 40 and st.snapshot().data == b"state@40"
    assert (st.first_index(), st.last_index()) == (31, 50)
    assert st.initial_state()[0] == HardState(2, 1, 40)
    assert st.snapshot_time is not None
    st.close()


def test_installed_snapshot_replaces_the_whole_log(data):
    st = opened(data)
    st.persist(HardState(2, 1, 5), ents(2, 9), sync=True)
    snap = bootstrap_snapshot(VOTERS, b"leader state")
    snap = type(snap)(100, 4, ConfState(VOTERS), b"leader state")
    st.install_snapshot(snap)
    st.close()
    st = reopen(data)
    assert st.snapshot().index == 100 and st.last_index() == 100 and st.first_index() == 101
    assert st.initial_state()[0].commit == 100
    st.close()


def test_a_damaged_snapshot_refuses_to_start(data):
    st = opened(data)
    st.close()
    with open(data / SNAP, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"X")
    with pytest.raises(StorageError, match="checksum mismatch"):
        opened(data)


def test_another_clusters_data_is_refused(data):
    opened(data, "c1").close()
    with pytest.raises(StorageError, match="belongs to cluster 'c1', not 'c2'"):
        opened(data, "c2")
    assert (data / CLUSTER).read_text() == "c1\n"


def test_the_data_dir_is_locked(data):
    st = opened(data)
    with pytest.raises(StorageError, match="in use by another master"):
        opened(data)
    st.close()


def test_a_joining_node_starts_empty(data):
    st = opened(data, bootstrap=False)
    assert st.last_index() == 0 and st.snapshot().index == 0
    st.close()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs: a real ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_refuses_writes_and_keeps_what_was_durable(tiny_fs, caplog):
    st = opened(tiny_fs / "meta")
    st.persist(HardState(2, 1, 1), ents(2, 5), sync=True)
    big = [Entry(2, i, data=os.urandom(64 * 1024)) for i in range(6, 40)]
    with caplog.at_level(logging.CRITICAL), pytest.raises(LogWriteError, match="No space left on device"):
        for e in big:
            st.persist(None, [e], sync=True)
    assert "this master stops taking part" in caplog.text
    durable = st.last_index()
    with pytest.raises(LogWriteError, match="failed earlier"):
        st.persist(None, ents(durable + 1, durable + 1), sync=True)
    st.close()
    # Restarted (on the still full disk): the log ends at its last whole entry.
    st = opened(tiny_fs / "meta")
    assert 5 <= st.last_index() <= durable
    assert st.entries(2, 6, None) == ents(2, 5)
    st.close()
