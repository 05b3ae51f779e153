"""MetaStore: durability, recovery after crashes and torn logs, snapshots, group commit.

A crash is simulated by copying the data dir while the store is still open: the copy holds
exactly what had reached the file system, and the original's flock does not apply to it.
"""

import errno
import logging
import os
import shutil
import threading
import time
from stat import S_IFREG

import pytest

from mooseng.errors import FsError
from mooseng.master import metastore
from mooseng.master.metastore import CHANGELOG, OLD_CHANGELOG, SNAPSHOT, MetaStore, MetaStoreError

ROOT = {"uid": 0, "gid": 0, "gids": []}


def entry(op, ts=1, **args):
    return {"op": op, "args": args, "ctx": ROOT, "ts": ts}


def create(name: bytes, ts: int = 1) -> dict:
    return entry("mknod", ts, parent=1, name=name, mode=S_IFREG | 0o644)


def names(store: MetaStore) -> list[bytes]:
    return [e[0] for e in store.query("readdir", {"ino": 1, "offset": 0, "limit": 100_000}, ROOT)]


def dump(store: MetaStore) -> bytes:
    with store.view() as ns:
        return ns.dump()


def crash_copy(store_dir, dest):
    shutil.copytree(store_dir, dest)
    return dest


@pytest.fixture
def data(tmp_path):
    return tmp_path / "meta"


def test_state_survives_close_and_reopen(data):
    with MetaStore(data) as store:
        for i in range(20):
            store.submit(create(b"f%d" % i, ts=i + 1))
        store.submit(entry("write_chunk", ino=2, index=0))
        before = dump(store)
        assert store.last_index == store.synced_index == 21
    with MetaStore(data) as store:
        assert dump(store) == before
        assert store.last_index == 21 and store.snapshot_index == 0 and store.entries_since_snapshot == 21
        assert store.last_snapshot_time is None
        assert store.submit(create(b"next"))["ino"] == 22


def test_recovery_after_crash(data, tmp_path):
    store = MetaStore(data)
    store.open()
    for i in range(50):
        store.submit(create(b"f%d" % i))
    before = dump(store)
    copy = crash_copy(data, tmp_path / "crashed")
    with MetaStore(copy) as recovered:
        assert dump(recovered) == before and recovered.last_index == 50
        recovered.submit(create(b"after"))
    with MetaStore(copy) as again:
        assert b"after" in names(again) and again.last_index == 51
    store.close()


def test_torn_tail_is_cut_and_the_rest_recovered(data, caplog):
    with MetaStore(data) as store:
        for i in range(10):
            store.submit(create(b"f%d" % i))
    log_path = data / CHANGELOG
    size = log_path.stat().st_size
    os.truncate(log_path, size - 3)  # the last record lost its final bytes
    with caplog.at_level(logging.WARNING, logger="mooseng.master.metastore"):
        with MetaStore(data) as store:
            assert store.last_index == 9
            assert names(store) == [b"f%d" % i for i in range(9)]
            good = log_path.stat().st_size
            assert good < size - 3
            store.submit(create(b"replacement"))  # takes index 10 again
    assert "torn or corrupt tail" in caplog.text
    with open(log_path, "ab") as f:
        f.write(b"\x07" * 13)  # garbage after the last record
    with MetaStore(data) as store:
        assert store.last_index == 10 and names(store)[-1] == b"replacement"
    with MetaStore(data) as store:  # the garbage was cut off on the previous open
        assert store.last_index == 10


@pytest.mark.parametrize("damage", ["flip", "huge_length", "short_header"])
def test_corrupt_last_record_is_never_applied(data, damage):
    with MetaStore(data) as store:
        for i in range(5):
            store.submit(create(b"f%d" % i))
    log_path = data / CHANGELOG
    raw = bytearray(log_path.read_bytes())
    if damage == "flip":
        raw[-2] ^= 0x40
    elif damage == "huge_length":
        raw += (10**9).to_bytes(4, "little") + b"\0\0\0\0" + b"x" * 20
    else:
        raw += b"\x01\x02\x03"
    log_path.write_bytes(bytes(raw))
    with MetaStore(data) as store:
        assert store.last_index == (4 if damage == "flip" else 5)
        assert len(names(store)) == store.last_index


def test_snapshot_then_replay(data):
    with MetaStore(data, snapshot_every=0) as store:
        for i in range(10):
            store.submit(create(b"f%d" % i))
        assert store.snapshot() == 10
        assert (data / SNAPSHOT).exists() and not (data / OLD_CHANGELOG).exists()
        assert (data / CHANGELOG).stat().st_size == 0
        assert store.snapshot_index == 10 and store.entries_since_snapshot == 0
        assert store.last_snapshot_time is not None
        for i in range(5):
            store.submit(create(b"g%d" % i))
        before = dump(store)
    with MetaStore(data) as store:
        assert dump(store) == before
        assert (store.last_index, store.snapshot_index, store.entries_since_snapshot) == (15, 10, 5)
        assert store.last_snapshot_time is not None


def test_crash_before_the_snapshot_is_durable(data, tmp_path, monkeypatch):
    store = MetaStore(data, snapshot_every=0)
    store.open()
    for i in range(10):
        store.submit(create(b"f%d" % i))

    def disk_full(index, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(store, "_write_snapshot", disk_full)
        with pytest.raises(OSError):
            store.snapshot()
    assert (data / OLD_CHANGELOG).exists() and not (data / SNAPSHOT).exists()
    for i in range(5):
        store.submit(create(b"g%d" % i))
    before = dump(store)
    with MetaStore(crash_copy(data, tmp_path / "crashed")) as recovered:
        assert dump(recovered) == before and recovered.last_index == 15
    # the next snapshot succeeds without rotating again and removes the old log
    assert store.snapshot() == 15
    assert not (data / OLD_CHANGELOG).exists()
    store.submit(create(b"h"))
    before = dump(store)
    store.close()
    with MetaStore(data) as store:
        assert dump(store) == before and store.last_index == 16


def test_old_changelog_covered_by_the_snapshot_is_removed(data, tmp_path):
    with MetaStore(data) as store:
        for i in range(10):
            store.submit(create(b"f%d" % i))
        shutil.copy(data / CHANGELOG, tmp_path / "saved")
        store.snapshot()
        store.submit(create(b"g"))
    # as if the master died between making the snapshot durable and deleting the old log
    shutil.copy(tmp_path / "saved", data / OLD_CHANGELOG)
    with MetaStore(data) as store:
        assert store.last_index == 11 and len(names(store)) == 11
    assert not (data / OLD_CHANGELOG).exists()


def test_automatic_snapshots(data):
    with MetaStore(data, snapshot_every=25) as store:
        for i in range(60):
            store.submit(create(b"f%d" % i))
        before = dump(store)
    assert store.snapshot_index >= 25
    with MetaStore(data, snapshot_every=25) as store:
        assert dump(store) == before and store.last_index == 60
        assert store.snapshot_index >= 25


def test_group_commit_shares_fsyncs(data, monkeypatch):
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd):
        time.sleep(0.005)  # a disk with a visible sync latency, so that submitters pile up
        real_fdatasync(fd)

    monkeypatch.setattr(metastore.os, "fdatasync", slow_fdatasync)
    threads, per_thread = 16, 25
    acked: dict[bytes, int] = {}
    errors = []

    def worker(t):
        try:
            for i in range(per_thread):
                name = b"t%d-%d" % (t, i)
                acked[name] = store.submit(create(name))["ino"]
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    store = MetaStore(data, snapshot_every=0)
    store.open()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors
    total = threads * per_thread
    assert store.last_index == total == len(acked)
    assert store.log_syncs < total / 3, f"{store.log_syncs} syncs for {total} entries: no batching"
    crashed = crash_copy(data, data.parent / "crashed")  # every acknowledged entry is on disk
    store.close()
    monkeypatch.undo()
    with MetaStore(crashed) as recovered:
        for name, ino in acked.items():
            assert recovered.query("lookup", {"parent": 1, "name": name}, ROOT)["ino"] == ino


def test_failed_ops_are_not_logged(data):
    with MetaStore(data) as store:
        store.submit(create(b"f"))
        size = (data / CHANGELOG).stat().st_size
        with pytest.raises(FsError) as info:
            store.submit(entry("rmdir", parent=1, name=b"missing"))
        assert info.value.errno == errno.ENOENT
        with pytest.raises(FsError) as info:
            store.submit(create(b"f"))
        assert info.value.errno == errno.EEXIST
        assert store.last_index == 1 and (data / CHANGELOG).stat().st_size == size
    with MetaStore(data) as store:
        assert store.last_index == 1


def test_entries_that_cannot_be_logged_are_refused(data):
    with MetaStore(data) as store:
        for bad in [create({b"x"}), {"op": "mkdir", "args": {"parent": 1, "name": b"d", "mode": object()}}]:
            with pytest.raises(FsError) as info:
                store.submit(bad)
            assert info.value.errno == errno.EINVAL
        assert store.last_index == 0 and names(store) == []


def test_a_failed_sync_stops_the_store(data, monkeypatch):
    store = MetaStore(data)
    store.open()
    store.submit(create(b"ok"))

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(metastore.os, "fdatasync", broken)
    for op in (create(b"lost"), create(b"refused")):
        with pytest.raises(FsError) as info:
            store.submit(op)
        assert info.value.errno == errno.EIO
    assert isinstance(store.failure, OSError)
    with pytest.raises(FsError):
        store.query("getattr", {"ino": 1}, ROOT)
    store.close()
    monkeypatch.undo()
    with MetaStore(data) as store:
        assert b"ok" in names(store) and b"refused" not in names(store)


def test_data_dir_is_locked(data):
    with MetaStore(data):
        with pytest.raises(MetaStoreError, match="in use"):
            MetaStore(data).open()


def test_closed_store_refuses_ops(data):
    store = MetaStore(data)
    store.open()
    store.close()
    store.close()  # idempotent
    with pytest.raises(FsError) as info:
        store.submit(create(b"x"))
    assert info.value.errno == errno.EIO


def test_damaged_snapshot_refuses_to_start(data):
    with MetaStore(data) as store:
        store.submit(create(b"f"))
        store.snapshot()
    raw = bytearray((data / SNAPSHOT).read_bytes())
    raw[-1] ^= 1
    (data / SNAPSHOT).write_bytes(bytes(raw))
    with pytest.raises(MetaStoreError, match="checksum"):
        MetaStore(data).open()
    (data / SNAPSHOT).write_bytes(b"NOTMOOSE" + bytes(raw[8:]))
    with pytest.raises(MetaStoreError, match="not a MooseNG"):  # also: the failed open unlocked
        MetaStore(data).open()


def test_missing_snapshot_with_later_log_refuses_to_start(data):
    with MetaStore(data) as store:
        store.submit(create(b"f"))
        store.snapshot()
        store.submit(create(b"g"))
    os.unlink(data / SNAPSHOT)
    with pytest.raises(MetaStoreError, match="missing"):
        MetaStore(data).open()


def test_gap_in_the_log_refuses_to_start(data):
    data.mkdir()
    packed = [metastore.wire.pack(create(b"f%d" % i)) for i in range(4)]
    records = [metastore._record(i, p) for i, p in zip([1, 2, 4], packed)]
    (data / CHANGELOG).write_bytes(b"".join(records))
    with pytest.raises(MetaStoreError, match="gap"):
        MetaStore(data).open()


def test_entry_that_fails_on_replay_refuses_to_start(data):
    data.mkdir()
    (data / CHANGELOG).write_bytes(metastore._record(1, metastore.wire.pack(entry("rmdir", parent=1, name=b"x"))))
    with pytest.raises(MetaStoreError, match="fails on replay"):
        MetaStore(data).open()


def test_snapshots_while_submitting(data, caplog, monkeypatch):
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd):
        time.sleep(0.002)  # keeps the writers busy long enough for several snapshots
        real_fdatasync(fd)

    monkeypatch.setattr(metastore.os, "fdatasync", slow_fdatasync)
    acked: dict[bytes, int] = {}

    def worker(t):
        for i in range(60):
            name = b"t%d-%d" % (t, i)
            acked[name] = store.submit(create(name))["ino"]

    store = MetaStore(data, snapshot_every=0)  # snapshots come from this thread, so none outlives the join
    store.open()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in pool:
        th.start()
    snapshots = set()
    while any(th.is_alive() for th in pool):
        snapshots.add(store.snapshot())
    for th in pool:
        th.join()
    assert len(snapshots) > 1
    before = dump(store)
    crashed = crash_copy(data, data.parent / "crashed")
    store.close()
    monkeypatch.undo()
    assert "snapshot failed" not in caplog.text
    for path in (data, crashed):
        with MetaStore(path) as recovered:
            assert dump(recovered) == before and recovered.last_index == 480
            assert recovered.snapshot_index > 0
            for name, ino in acked.items():
                assert recovered.query("lookup", {"parent": 1, "name": name}, ROOT)["ino"] == ino


def test_half_written_snapshot_is_ignored(data):
    with MetaStore(data) as store:
        store.submit(create(b"f"))
    (data / metastore.SNAPSHOT_TMP).write_bytes(b"MNGMETA1 and then the power went out")
    with MetaStore(data) as store:
        assert names(store) == [b"f"]
    assert not (data / metastore.SNAPSHOT_TMP).exists()
