"""The log (stable + unstable parts), MemoryStorage and per-follower progress."""

import pytest

from mooseng.raft import (
    CompactedError,
    ConfState,
    Entry,
    MemoryStorage,
    Snapshot,
    SnapshotOutOfDateError,
    UnavailableError,
)
from mooseng.raft.log import RaftLog
from mooseng.raft.progress import Progress, ProgressState


def ents(*spec):
    """Entries from (index, term) pairs, with 10 bytes of data each."""
    return [Entry(term=t, index=i, data=b"x" * 10) for i, t in spec]


def storage_with(first, last, term=1):
    """Storage holding entries first..last, compacted before first."""
    s = MemoryStorage(Snapshot(index=first - 1, term=term, conf_state=ConfState((1,))))
    s.append(ents(*[(i, term) for i in range(first, last + 1)]))
    return s


class TestMemoryStorage:
    def test_errors(self):
        s = storage_with(5, 9)
        assert (s.first_index(), s.last_index(), s.term(4), s.term(9)) == (5, 9, 1, 1)
        with pytest.raises(CompactedError):
            s.term(3)
        with pytest.raises(UnavailableError):
            s.term(10)
        with pytest.raises(CompactedError):
            s.entries(4, 6, None)
        with pytest.raises(UnavailableError):
            s.entries(8, 11, None)

    def test_entries_respect_max_bytes_but_return_one(self):
        s = storage_with(5, 9)
        assert [e.index for e in s.entries(5, 10, 25)] == [5, 6]
        assert [e.index for e in s.entries(5, 10, 1)] == [5]
        assert [e.index for e in s.entries(5, 10, None)] == [5, 6, 7, 8, 9]

    def test_append_truncates_conflicting_suffix(self):
        s = storage_with(2, 6)
        s.append(ents((4, 2), (5, 2)))
        assert [s.term(i) for i in range(2, 6)] == [1, 1, 2, 2]
        assert s.last_index() == 5
        s.append(ents((1, 1), (2, 1)))  # compacted part is ignored
        assert s.last_index() == 2
        with pytest.raises(ValueError):
            s.append(ents((9, 2)))

    def test_snapshot_and_compaction(self):
        s = storage_with(2, 9)
        with pytest.raises(ValueError):
            s.compact(5)  # not covered by a snapshot yet
        s.create_snapshot(6, ConfState((1, 2)), b"state")
        s.compact(4)
        assert (s.first_index(), s.snapshot().index, s.snapshot().term) == (5, 6, 1)
        with pytest.raises(CompactedError):
            s.compact(3)
        with pytest.raises(SnapshotOutOfDateError):
            s.create_snapshot(6, ConfState((1, 2)), b"")
        s.apply_snapshot(Snapshot(index=20, term=3, conf_state=ConfState((1,))))
        assert (s.first_index(), s.last_index(), s.initial_state()[0].commit) == (21, 20, 20)


class TestRaftLog:
    def test_reads_span_stable_and_unstable(self):
        log = RaftLog(storage_with(2, 5), None)
        log.append(ents((6, 2), (7, 2)))
        assert (log.first_index(), log.last_index(), log.term(1), log.term(7), log.term(8)) == (2, 7, 1, 2, 0)
        assert [e.index for e in log.slice(4, 8, None)] == [4, 5, 6, 7]
        assert [e.index for e in log.slice(4, 8, 35)] == [4, 5, 6]
        assert [e.index for e in log.entries(3, max_entries=2, max_bytes=None)] == [3, 4]
        with pytest.raises(CompactedError):
            log.slice(1, 3, None)
        with pytest.raises(CompactedError):
            log.term(0)

    def test_unstable_suffix_replaces_stable_entries(self):
        log = RaftLog(storage_with(2, 5), None)
        log.append(ents((4, 3)))
        assert (log.last_index(), log.term(4), log.term(3)) == (4, 3, 1)
        assert [e.term for e in log.slice(2, 5, None)] == [1, 1, 3]

    def test_maybe_append(self):
        log = RaftLog(storage_with(2, 4), None)
        log.committed = 2
        assert log.maybe_append(4, 2, 10, ents((5, 2))) is None  # previous term mismatch
        assert log.maybe_append(4, 1, 10, ents((5, 2), (6, 2))) == 6
        assert log.committed == 6  # min(leader commit, last new entry)
        with pytest.raises(RuntimeError):
            log.maybe_append(1, 1, 0, ents((2, 5)))  # would rewrite a committed entry

    def test_find_conflict_by_term(self):
        log = RaftLog(storage_with(2, 3), None)
        log.append(ents((4, 2), (5, 2), (6, 4), (7, 4)))
        assert log.find_conflict_by_term(7, 4) == (7, 4)
        assert log.find_conflict_by_term(7, 3) == (5, 2)
        assert log.find_conflict_by_term(7, 1) == (3, 1)
        assert log.find_conflict_by_term(7, 0) == (0, 0)  # below the snapshot: term unknown

    def test_stable_to_ignores_replaced_entries(self):
        log = RaftLog(storage_with(2, 3), None)
        log.append(ents((4, 2), (5, 2)))
        log.append(ents((5, 3)))
        log.stable_to(5, 2)  # the Ready that carried (5, 2) is outdated
        assert log.unstable.offset == 4
        log.stable_to(5, 3)
        assert (log.unstable.offset, log.unstable.entries) == (6, [])


class TestProgress:
    def test_probe_sends_one_at_a_time(self):
        pr = Progress(next_index=10, max_inflight=4)
        assert not pr.is_paused()
        pr.sent_entries(12)
        assert pr.is_paused() and pr.next == 10
        assert pr.maybe_decr_to(rejected=9, match_hint=4)
        assert (pr.next, pr.is_paused()) == (5, False)
        assert not pr.maybe_decr_to(rejected=9, match_hint=2)  # stale: we probe 4 now

    def test_replicate_window(self):
        pr = Progress(next_index=5, max_inflight=2, match=4)
        pr.become_replicate()
        pr.sent_entries(6)
        pr.sent_entries(8)
        assert (pr.next, pr.is_paused()) == (9, True)
        assert pr.maybe_update(6)
        pr.inflights.free_le(6)
        assert not pr.is_paused()
        assert not pr.maybe_update(5)  # old news
        assert not pr.maybe_decr_to(rejected=5, match_hint=0)  # rejection of an acked append
        assert pr.maybe_decr_to(rejected=8, match_hint=0)
        assert pr.next == 7  # back to the known match

    def test_snapshot_then_probe_past_it(self):
        pr = Progress(next_index=3, max_inflight=2, match=2)
        pr.become_snapshot(50)
        assert pr.is_paused()
        pr.become_probe()
        assert (pr.state, pr.next) == (ProgressState.PROBE, 51)
