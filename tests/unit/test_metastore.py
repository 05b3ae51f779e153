"""MetaState (the replicated state machine: dedupe, dump/restore) and MetaStore over a one-node
Raft group in process: durability, recovery after a crash, snapshots, group commit, failures.

A crash is simulated by copying the data dir while the node still runs: the copy holds exactly
what had reached the file system, and the original's flock does not apply to it.
"""

import errno
import os
import shutil
import struct
import threading
import time
from stat import S_IFREG

import pytest

from mooseng import wire
from mooseng.errors import FsError
from mooseng.master import raftlog
from mooseng.master.metastore import SEQ_WINDOW, MetaState, MetaStore
from mooseng.master.raftnode import RaftNode, RaftTransport, _unpack_entry, _Waiter

ROOT = {"uid": 0, "gid": 0, "gids": []}


def entry(op, ts=1, client=0, seq=0, **args):
    e = {"op": op, "args": args, "ctx": ROOT, "ts": ts}
    if client:
        e["client_id"], e["seq"] = client, seq
    return e


def create(name: bytes, client=0, seq=0) -> dict:
    return entry("mknod", client=client, seq=seq, parent=1, name=name, mode=S_IFREG | 0o644)


class Single:
    """One master's Raft node and store, started in this process."""

    def __init__(self, path, snapshot_every=0):
        self.node = RaftNode("m1", "test", {"m1": "127.0.0.1:1"}, "127.0.0.1:2", path, snapshot_every)
        self.transport = RaftTransport(self.node, "127.0.0.1:0")
        self.node.open()
        self.transport.start()
        self.node.start(self.transport)
        self.store = MetaStore(self.node)
        deadline = time.monotonic() + 10
        while not self.store.is_leader():
            assert time.monotonic() < deadline, "a one-node group did not elect itself"
            time.sleep(0.01)

    def close(self):
        self.transport.stop()
        self.node.stop()

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.close()


def last_entries_record_end(raw: bytes) -> int:
    """End offset of the last record carrying entries (HardState records may follow it)."""
    off, end = 0, 0
    while off < len(raw):
        length, _ = struct.unpack_from("<II", raw, off)
        if length == 0:
            break  # preallocated zeros after the last record
        if wire.unpack(raw[off + 8 : off + 8 + length])[0] == "E":
            end = off + 8 + length
        off += 8 + length
    return end


def names(store: MetaStore) -> list[bytes]:
    return [e[0] for e in store.query("readdir", {"ino": 1, "offset": 0, "limit": 100_000}, ROOT)]


def dump(store: MetaStore) -> bytes:
    with store.view() as ns:
        return ns.dump()


@pytest.fixture
def data(tmp_path):
    return tmp_path / "meta"


# --- the state machine ------------------------------------------------------------------------------


def test_a_retried_mutation_returns_the_first_result_and_runs_once():
    sm = MetaState()
    first = sm.apply(create(b"a", client=7, seq=1))
    assert sm.apply(create(b"a", client=7, seq=1)) == first  # the retry: same answer, no EEXIST
    with pytest.raises(FsError) as exc:
        sm.apply(create(b"a", client=7, seq=2))  # a new op of the same client does run
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(FsError) as again:
        sm.apply(create(b"a", client=7, seq=2))  # and its failure is what a retry gets
    assert again.value.errno == errno.EEXIST
    with pytest.raises(FsError):
        sm.apply(create(b"a", client=8, seq=1))  # another client's seq 1 is its own op, not a retry


def test_out_of_order_seqs_of_one_client_are_all_applied():
    sm = MetaState()
    sm.apply(create(b"b", client=7, seq=2))
    sm.apply(create(b"a", client=7, seq=1))  # two threads of one client: seq 1 lands second
    assert {e[0] for e in sm.ns.query("readdir", {"ino": 1}, ROOT)} >= {b"a", b"b"}


def test_the_session_table_is_bounded_and_refuses_a_retry_older_than_it():
    sm = MetaState()
    for seq in range(1, SEQ_WINDOW + 3):
        sm.apply(create(b"f%d" % seq, client=7, seq=seq))
    assert len(sm.sessions[7]) == SEQ_WINDOW
    with pytest.raises(FsError, match="older than the dedupe window"):
        sm.apply(create(b"f1", client=7, seq=1))


def test_the_session_table_forgets_the_lowest_seq_whatever_the_arrival_order():
    """Seqs of many threads arrive out of order: the window keeps the highest seqs seen (each
    arrival over the window drops the lowest), also after a snapshot round trip."""
    import random

    rng = random.Random(3)
    seqs = list(range(1, 3 * SEQ_WINDOW))
    for i in range(0, len(seqs) - 8, 8):  # shuffled within small groups, as concurrent calls are
        group = seqs[i:i + 8]
        rng.shuffle(group)
        seqs[i:i + 8] = group
    sm, expect = MetaState(), set()
    for n, seq in enumerate(seqs):
        if n == len(seqs) // 2:
            copy = MetaState()
            copy.restore(sm.dump())
            sm = copy
        sm.apply(create(b"f%d" % seq, client=7, seq=seq))
        expect.add(seq)
        if len(expect) > SEQ_WINDOW:
            expect.remove(min(expect))
        assert set(sm.sessions[7]) == expect
    with pytest.raises(FsError, match="older than the dedupe window"):
        sm.apply(create(b"x", client=7, seq=min(expect) - 1))


def test_dump_and_restore_keep_sessions_and_members():
    sm = MetaState({5: ["m5", "127.0.0.1:5"]})
    first = sm.apply(create(b"a", client=7, seq=1))
    copy = MetaState()
    copy.restore(sm.dump())
    assert copy.dump() == sm.dump() and copy.members == {5: ["m5", "127.0.0.1:5"]}
    assert copy.apply(create(b"a", client=7, seq=1)) == first


# --- the store over one Raft node -------------------------------------------------------------------


def test_state_survives_close_and_reopen(data):
    with Single(data) as store:
        for i in range(20):
            store.submit(create(b"f%d" % i))
        store.submit(entry("write_chunk", ino=2, index=0))
        before = dump(store)
        applied = store.last_index
    with Single(data) as store:
        assert dump(store) == before
        assert store.last_index >= applied  # the new term's no-op entry comes on top
        assert store.submit(create(b"next"))["ino"] == 22


def test_recovery_after_crash(data, tmp_path):
    single = Single(data)
    for i in range(50):
        single.store.submit(create(b"f%d" % i))
    before = dump(single.store)
    shutil.copytree(data, tmp_path / "crashed")
    single.close()
    with Single(tmp_path / "crashed") as recovered:
        assert dump(recovered) == before
        recovered.submit(create(b"after"))
    with Single(tmp_path / "crashed") as again:
        assert b"after" in names(again)


def test_torn_tail_is_cut_and_the_rest_recovered(data, caplog):
    with Single(data) as store:
        for i in range(10):
            store.submit(create(b"f%d" % i))
    log_path = data / raftlog.LOG
    os.truncate(log_path, last_entries_record_end(log_path.read_bytes()) - 3)  # the last entry is torn
    with Single(data) as store:
        assert names(store) == [b"f%d" % i for i in range(9)]
        store.submit(create(b"replacement"))
    assert "torn or corrupt tail" in caplog.text
    with Single(data) as store:
        assert names(store)[-1] == b"replacement"


def test_automatic_snapshots_and_recovery_from_them(data):
    with Single(data, snapshot_every=25) as store:
        # The loop thread takes a snapshot after the turn that made one due, which may come some
        # entries later when submitting threads keep taking the turns: submit until one at 50 or past.
        deadline, i, taken = time.monotonic() + 10, 0, set()
        while store.snapshot_index < 50:
            assert time.monotonic() < deadline, f"snapshots at {sorted(taken)} after {i} entries"
            store.submit(create(b"f%d" % i))
            i += 1
            taken.add(store.snapshot_index)
        assert len(taken - {0}) >= 2, f"one snapshot only: {sorted(taken)}"
        for j in range(5):  # and a log tail past the last one
            store.submit(create(b"g%d" % j))
        assert store.snapshot_index >= 50 and store.last_snapshot_time is not None
        before = dump(store)
    with Single(data) as store:
        assert dump(store) == before


def test_failed_ops_are_replicated_and_fail_the_same_way(data):
    with Single(data) as store:
        store.submit(create(b"x"))
        with pytest.raises(FsError) as exc:
            store.submit(create(b"x"))
        assert exc.value.errno == errno.EEXIST
        assert names(store) == [b"x"]


def test_entries_that_cannot_be_logged_are_refused(data):
    with Single(data) as store:
        with pytest.raises(FsError) as exc:
            store.submit({"op": "mknod", "args": {"parent": 1, "name": object()}, "ctx": ROOT, "ts": 1})
        assert exc.value.errno == errno.EINVAL


def test_concurrent_submits_share_fsyncs(data):
    with Single(data) as store:
        syncs = store.log_syncs
        threads = [
            threading.Thread(target=lambda n=n: [store.submit(create(b"t%d-%d" % (n, i))) for i in range(25)])
            for n in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(names(store)) == 200
        assert store.log_syncs - syncs < 200  # group commit: one fdatasync covers several entries


def test_proposals_waiting_together_are_proposed_in_one_step(data, monkeypatch):
    """One step per loop turn: the followers get the turn's entries in one append each."""
    with Single(data) as store:
        raw = store._node.node
        assert raw.raft.broadcast_commit is False  # followers learn commits from later messages
        steps = []
        propose = raw.propose
        monkeypatch.setattr(raw, "propose", lambda *d: (steps.append(len(d)), propose(*d)))
        threads = [
            threading.Thread(target=lambda n=n: [store.submit(create(b"b%d-%d" % (n, i))) for i in range(25)])
            for n in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(steps) == 200 and len(names(store)) == 200
        assert len(steps) < 200


def test_a_failed_log_write_stops_the_node_and_refuses_ops(data, monkeypatch):
    single = Single(data)
    single.store.submit(create(b"ok"))

    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(raftlog.os, "fdatasync", enospc)
    with pytest.raises(FsError) as exc:
        single.store.submit(create(b"lost"))
    assert exc.value.errno == errno.EIO and "No space left on device" in exc.value.message
    assert isinstance(single.store.failure, raftlog.LogWriteError) and not single.store.is_leader()
    monkeypatch.undo()
    single.close()
    with Single(data) as store:  # what was durable is there; the rest never was acknowledged
        assert b"ok" in names(store)


def test_a_waiter_keeps_its_first_outcome_and_times_out_without_one():
    waiter = _Waiter()
    assert not waiter.finished and waiter.wait(0.01) is False
    waiter.done(True, "first")
    waiter.done(False, FsError(errno.EIO, "a later sweep"))
    assert waiter.finished and waiter.wait(1.0) is True
    assert (waiter.ok, waiter.value) == (True, "first")


def test_a_logged_entry_is_read_back_with_its_origin_and_proposal():
    entry = create(b"x")
    assert _unpack_entry(wire.pack([7, 123456789]) + wire.pack(entry)) == (7, 123456789, entry)
