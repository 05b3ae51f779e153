"""Chunkserver registry: registration rules, timeouts on an injected clock, delete lists, chunk
states, and the kept counts against a full count in a seeded simulation."""

import random

import pytest
from support.chunktable import TableNamespace

from mooseng.constants import CHUNK_SIZE
from mooseng.ec import part_id, split_part_id
from mooseng.master.namespace import Namespace
from mooseng.master.registry import (
    DELETING,
    ENDANGERED,
    MISSING,
    NO_CLASS,
    OVERGOAL,
    STABLE,
    STATES,
    UNDERGOAL,
    ChunkRef,
    Disk,
    DuplicateServer,
    ForeignCluster,
    Registry,
    ec_state_of,
    state_of,
)

GiB = 1 << 30
TIMEOUT = 10.0


def disks(free_gib=50, state="ok"):
    return [Disk(0, "/d0", 100 * GiB, (100 - free_gib) * GiB, free_gib * GiB, state, 0)]


def addr(sid):
    return f"127.0.0.1:{9400 + sid}"


@pytest.fixture
def reg():
    return Registry("mooseng", TIMEOUT, first_session=100)


def server(reg, sid):
    return next(s for s in reg.servers() if s.server_id == sid)


def register(reg, sid, chunks=(), now=0.0, address=None, state="ok"):
    return reg.register("mooseng", sid, address or addr(sid), disks(state=state), list(chunks), now)


def beat(reg, sid, session, now, added=(), removed=(), read=0, written=0):
    return reg.heartbeat(sid, session, [], list(added), list(removed), read, written, now)


def test_foreign_cluster_is_refused(reg):
    with pytest.raises(ForeignCluster, match="cluster 'other'.*'mooseng'"):
        reg.register("other", 1, addr(1), disks(), [], 0.0)
    assert reg.servers() == []


def test_duplicate_live_server_id_is_refused(reg):
    register(reg, 1)
    with pytest.raises(DuplicateServer, match=f"id 1 is already in use by {addr(1)}"):
        register(reg, 1, address="127.0.0.1:9999")
    assert server(reg, 1).address == addr(1)


def test_same_server_re_registering_gets_a_new_session_and_replaces_its_copies(reg):
    s1 = register(reg, 1, chunks=[ChunkRef(5, 1, 0), ChunkRef(6, 1, 0)])
    s2 = register(reg, 1, chunks=[ChunkRef(6, 1, 0)], now=1.0)
    assert s2 != s1
    assert not beat(reg, 1, s1, 2.0), "the old session must be told to re-register"
    assert reg.copies(5) == []
    assert [s.server_id for s, _ in reg.copies(6)] == [1]


def test_down_server_id_may_come_back_from_another_address(reg):
    register(reg, 1)
    reg.expire(TIMEOUT + 1)
    register(reg, 1, address="127.0.0.1:9999", now=TIMEOUT + 2)
    assert server(reg, 1).address == "127.0.0.1:9999"
    assert server(reg, 1).alive


def test_timeout_marks_down_with_injected_clock(reg):
    s1 = register(reg, 1, chunks=[ChunkRef(5, 1, 0)])
    s2 = register(reg, 2)
    assert beat(reg, 2, s2, 6.0)
    assert reg.expire(TIMEOUT) == [], "exactly the timeout is not yet down"
    assert [s.server_id for s in reg.expire(TIMEOUT + 0.1)] == [1]
    assert not server(reg, 1).alive and server(reg, 2).alive
    assert reg.expire(TIMEOUT + 0.2) == [], "going down is reported once"
    assert reg.copies(5) == [], "a down server's copies no longer count"
    assert not beat(reg, 1, s1, TIMEOUT + 1), "a late heartbeat must re-register"
    assert [s.server_id for s in reg.expire(6.0 + TIMEOUT + 0.1)] == [2]
    assert reg.capacity().total == 0


def test_heartbeat_from_unknown_server_asks_to_register(reg):
    assert not beat(reg, 9, 1, 0.0)


def test_stale_version_copies_are_listed_for_deletion(reg):
    session = register(reg, 1, chunks=[ChunkRef(5, 3, 0), ChunkRef(6, 2, 0), ChunkRef(7, 4, 0)])
    register(reg, 2, chunks=[ChunkRef(6, 3, 0)])
    versions = {5: 3, 6: 3, 7: 3}  # 6 is stale on 1; 7 is ahead (set_version, then a master crash)
    assert reg.deletions(1, versions.get) == [ChunkRef(6, 2, 0)]
    assert [s.server_id for s, _ in reg.copies(6)] == [2], "a copy told to delete leaves the registry at once"
    assert reg.holders(5, 3) == [server(reg, 1)]
    assert reg.holders(7, 3) == [server(reg, 1)], "a copy ahead of the namespace has the same data: valid"
    assert reg.deletions(1, versions.get) == [], "checked copies are not listed again"
    assert beat(reg, 1, session, 3.0, added=[ChunkRef(8, 1, 0)])
    assert reg.deletions(1, versions.get) == [ChunkRef(8, 1, 0)], "newly reported unknown chunk"


def test_unknown_chunks_are_listed_for_deletion(reg):
    register(reg, 1, chunks=[ChunkRef(5, 1, 0), ChunkRef(6, 1, 0)])
    assert reg.deletions(1, {5: 1}.get) == [ChunkRef(6, 1, 0)]


def test_freed_chunks_are_deleted_after_recheck(reg):
    register(reg, 1, chunks=[ChunkRef(5, 1, 0)])
    register(reg, 2, chunks=[ChunkRef(5, 1, 0)])
    versions = {5: 1}
    assert reg.deletions(1, versions.get) == [] and reg.deletions(2, versions.get) == []
    del versions[5]  # unlinked
    reg.recheck([5])
    assert reg.deletions(1, versions.get) == [ChunkRef(5, 1, 0)]
    assert reg.deletions(2, versions.get) == [ChunkRef(5, 1, 0)]


def test_fenced_copies_are_invalid_and_deleted_once_a_valid_copy_exists(reg):
    register(reg, 1, chunks=[ChunkRef(5, 2, 0)])
    s2 = register(reg, 2, chunks=[ChunkRef(5, 2, 0)])
    register(reg, 3, chunks=[ChunkRef(5, 1, 0)])
    versions = {5: 2}
    reg.fence_missing(5, 2, 2, [addr(1)])  # the client stored version 2 on server 1 only
    assert reg.holders(5, 2) == [server(reg, 1)]
    assert reg.classify(5, 2, 2) == ENDANGERED
    assert reg.deletions(2, versions.get) == [ChunkRef(5, 2, 0)]
    assert reg.deletions(3, versions.get) == [ChunkRef(5, 1, 0)], "and the stale copy goes as usual"
    assert beat(reg, 2, s2, 1.0, added=[ChunkRef(5, 2, 0)])  # reported again (say it re-registered)
    assert reg.holders(5, 2) == [server(reg, 1)], "the fence outlives the copy's record"
    assert reg.deletions(2, versions.get) == [ChunkRef(5, 2, 0)]


def test_fenced_copies_are_kept_while_no_valid_copy_exists(reg):
    register(reg, 1, chunks=[ChunkRef(5, 2, 0)])
    reg.fence(5, 2, [1])
    assert reg.deletions(1, {5: 2}.get) == []
    assert reg.classify(5, 2, 2) == MISSING


def test_a_newer_fence_replaces_an_older_one(reg):
    register(reg, 1, chunks=[ChunkRef(5, 2, 0)])
    register(reg, 2, chunks=[ChunkRef(5, 2, 0)])
    reg.fence(5, 2, [2])
    reg.fence(5, 2, [])  # same version: merged
    assert reg.holders(5, 2) == [server(reg, 1)]
    reg.record_copies(5, 3, [addr(1), addr(2)])  # both took version 3 and stored its data
    reg.fence(5, 3, [])
    assert sorted(s.server_id for s in reg.holders(5, 3)) == [1, 2]
    assert not reg._fences


def test_fence_missing_covers_later_versions(reg):
    register(reg, 1, chunks=[ChunkRef(5, 3, 0)])
    register(reg, 2, chunks=[ChunkRef(5, 3, 0)])
    register(reg, 3, chunks=[ChunkRef(5, 1, 0)])
    # A session at version 2 reports after a later one (version 3) moved both copies on:
    # server 2 missed the version-2 data, so its version-3 copy lacks it too.
    assert not reg.has_fence(5, 3)
    reg.fence_missing(5, 2, 3, [addr(1)])
    assert reg.holders(5, 3) == [server(reg, 1)]
    assert reg.has_fence(5, 3) and reg.has_fence(5, 2) and not reg.has_fence(5, 4) and not reg.has_fence(6, 1)
    assert reg.is_valid(5, server(reg, 3), reg.copies(5)[2][1], 1), "a copy below the written version is not fenced"


def test_superseded_fences_are_dropped(reg):
    register(reg, 1, chunks=[ChunkRef(5, 2, 0)])
    reg.fence(5, 2, [1])
    reg.deletions(1, {5: 3}.get)
    assert not reg._fences


def test_stale_copies_are_kept_while_no_valid_copy_exists(reg):
    s1 = register(reg, 1, chunks=[ChunkRef(5, 1, 0)])
    register(reg, 2, chunks=[ChunkRef(5, 1, 0)])
    versions = {5: 2}  # write_chunk bumped the version, then the client died before writing
    assert reg.deletions(1, versions.get) == [] and reg.deletions(2, versions.get) == []
    assert reg.classify(5, 2, 2) == MISSING
    assert beat(reg, 1, s1, 2.0, added=[ChunkRef(5, 2, 0)])  # a valid copy shows up after all
    assert reg.deletions(1, versions.get) == []
    assert reg.deletions(2, versions.get) == [ChunkRef(5, 1, 0)]


def test_a_returning_valid_copy_lets_kept_stale_copies_go(reg):
    register(reg, 1, chunks=[ChunkRef(5, 1, 0)])
    versions = {5: 2}
    assert reg.deletions(1, versions.get) == [], "all that is left"
    register(reg, 2, chunks=[ChunkRef(5, 2, 0)], now=1.0)
    assert reg.deletions(1, versions.get) == [ChunkRef(5, 1, 0)]


def test_commit_report_is_not_undone_by_an_older_heartbeat(reg):
    session = register(reg, 1, chunks=[ChunkRef(5, 1, 0)])
    reg.record_copies(5, 2, [addr(1)])
    assert beat(reg, 1, session, 1.0, added=[ChunkRef(5, 1, 0)])
    assert reg.holders(5, 2) == [server(reg, 1)]
    assert beat(reg, 1, session, 2.0, removed=[ChunkRef(5, 1, 0)])
    assert reg.holders(5, 2) == [server(reg, 1)], "removing an older version keeps the newer copy"
    assert beat(reg, 1, session, 3.0, added=[ChunkRef(5, 2, 0)])
    assert reg.copies(5)[0][1].disk == 0, "the heartbeat fills in the disk"


def test_record_copies_ignores_unknown_addresses(reg):
    register(reg, 1)
    assert reg.record_copies(5, 1, [addr(1), "10.9.9.9:1"]) == ["10.9.9.9:1"]
    assert reg.holders(5, 1) == [server(reg, 1)]


def test_holders_exclude_damaged_disks_and_rotate(reg):
    for sid in (1, 2, 3):
        register(reg, sid, chunks=[ChunkRef(10, 1, 0), ChunkRef(11, 1, 0)], state="damaged" if sid == 3 else "ok")
    assert [s.server_id for s in reg.holders(10, 1)] == [1, 2]
    assert [s.server_id for s in reg.holders(11, 1)] == [2, 1]


def test_state_counts_per_class(reg):
    register(reg, 1, chunks=[ChunkRef(c, 1, 0) for c in (1, 2, 3, 4, 6, 7, 8)])
    register(reg, 2, chunks=[ChunkRef(c, 1, 0) for c in (1, 3, 4, 6, 7)])
    register(reg, 3, chunks=[ChunkRef(c, 1, 0) for c in (4, 6)])
    table = [
        (1, 1, "default", 2),  # 2 copies, goal 2
        (2, 1, "default", 2),  # 1 copy of 2: endangered
        (3, 2, "default", 2),  # copies are version 1: stale
        (4, 1, "fast", 3),  # 3 copies, goal 3
        (5, 1, "fast", 3),  # no copy at all
        (6, 1, "default", 2),  # 3 copies, goal 2
        (7, 1, "fast", 3),  # 2 copies of 3
    ]  # chunk 8: copies but in no file any more
    reg.follow(TableNamespace(table))
    counts = reg.chunk_states()
    zero = dict.fromkeys(STATES, 0)
    assert counts == {
        "default": zero | {STABLE: 1, ENDANGERED: 1, MISSING: 1, OVERGOAL: 1},
        "fast": zero | {STABLE: 1, UNDERGOAL: 1, MISSING: 1},
        NO_CLASS: zero | {DELETING: 1},
    }
    reg.expire(TIMEOUT + 1)
    assert reg.classify(1, 1, 2) == MISSING


def test_damaged_copies_are_invalid_and_left_to_the_replication_manager(reg):
    s1 = register(reg, 1, chunks=[ChunkRef(5, 1, 0)])
    register(reg, 2, chunks=[ChunkRef(5, 1, 0)])
    versions = {5: 1}
    reg.deletions(1, versions.get)
    assert reg.heartbeat(1, s1, [], [], [], 0, 0, 1.0, damaged=[ChunkRef(5, 1, 0)])
    assert [s.server_id for s in reg.holders(5, 1)] == [2]
    assert reg.classify(5, 1, 2) == ENDANGERED
    assert reg.deletions(1, versions.get) == [], "kept until the chunk is at goal without it"
    assert reg.copies(5)[0][1].damaged
    del versions[5]
    reg.recheck([5])
    assert reg.deletions(1, versions.get) == [ChunkRef(5, 1, 0)], "a chunk in no file goes anyway"


def test_a_damaged_only_copy_is_kept(reg):
    s1 = register(reg, 1, chunks=[ChunkRef(5, 1, 0, damaged=True)])
    assert reg.classify(5, 1, 1) == MISSING
    assert reg.deletions(1, {5: 1}.get) == []
    assert beat(reg, 1, s1, 1.0)


def test_ordered_deletions_leave_at_once_and_go_out_with_the_next_reply(reg):
    register(reg, 1, chunks=[ChunkRef(5, 1, 2)])
    register(reg, 2, chunks=[ChunkRef(5, 1, 0)])
    reg.deletions(1, {5: 1}.get)
    assert reg.order_delete(1, 5)
    assert not reg.order_delete(1, 5), "nothing left to delete"
    assert [s.server_id for s in reg.holders(5, 1)] == [2]
    assert reg.deletions(1, {5: 1}.get) == [ChunkRef(5, 1, 2)]
    assert reg.deletions(1, {5: 1}.get) == []


def test_capacity_counts_alive_servers_and_healthy_disks(reg):
    register(reg, 1)
    register(reg, 2, state="damaged")
    cap = reg.capacity()
    assert (cap.total, cap.used, cap.free) == (100 * GiB, 50 * GiB, 50 * GiB)


def test_byte_counters_add_growth_and_survive_a_chunkserver_restart(reg):
    session = register(reg, 1)
    assert beat(reg, 1, session, 1.0, read=100, written=1000)  # baseline: counted before this master
    assert beat(reg, 1, session, 2.0, read=150, written=1600)
    assert (reg.bytes_read, reg.bytes_written) == (50, 600)
    session = register(reg, 1, now=3.0)  # the process restarted: counters start again from zero
    assert beat(reg, 1, session, 4.0, read=10, written=20)
    assert (reg.bytes_read, reg.bytes_written) == (60, 620)


def test_survey_agrees_with_is_valid(reg):
    s1 = register(reg, 1, chunks=[ChunkRef(c, 2, 0) for c in (1, 2, 3, 4)])
    register(reg, 2, chunks=[ChunkRef(1, 2, 0), ChunkRef(2, 1, 0), ChunkRef(3, 2, 0)], state="damaged")
    register(reg, 3, chunks=[ChunkRef(1, 2, 0), ChunkRef(4, 2, 0)])
    reg.fence(4, 2, [3])
    assert reg.heartbeat(1, s1, [], [], [], 0, 0, 1.0, damaged=[ChunkRef(3, 2, 0)])
    table = [(1, 2), (2, 2), (3, 2), (4, 2), (5, 1)]
    surveyed = list(reg.survey(table))
    assert [valid for valid, _ in surveyed] == [reg.valid_servers(c, v) for c, v in table]
    assert [valid for valid, _ in surveyed] == [[1, 3], [1], [], [1], []]
    assert sorted(surveyed[0][1]) == [1, 2, 3]
    reg.expire(TIMEOUT + 2)
    assert [valid for valid, _ in reg.survey(table)] == [[]] * 5


# --- the chunk-state counts, kept up to date, against a full count ----------------------------

def full_count(reg, ns):
    """(counts, attention) worked out from scratch over the whole namespace, through survey()."""
    stored = set().union(*(s.chunks for s in reg.servers()))
    counts, attention = {}, set()
    for chunk_id, info in ns.iter_chunks():
        if info.ec is None:
            [(valid, _)] = reg.survey([(chunk_id, info.version)])
            state = state_of(len(valid), info.goal)
        else:
            parts = [valid for valid, _ in reg.survey((part_id(chunk_id, p), info.version) for p in range(sum(info.ec)))]
            state = ec_state_of(sum(1 for v in parts if v), sum(len(v) - 1 for v in parts if v), *info.ec)
        counts.setdefault(info.sclass, dict.fromkeys(STATES, 0))[state] += 1
        damaged = any(c.damaged for _, held in reg.survey((i, 0) for i in stored if split_part_id(i)[0] == chunk_id)
                      for c in held.values())
        if (state in (UNDERGOAL, ENDANGERED, OVERGOAL) or (state == STABLE and damaged)
                or (info.ec != info.target and state != MISSING)):
            attention.add(chunk_id)
    gone = {split_part_id(i)[0] for i in stored} - {c for c, _ in ns.iter_chunks()}
    if gone:
        counts[NO_CLASS] = dict.fromkeys(STATES, 0) | {DELETING: len(gone)}
    return counts, attention


class Simulation:
    """Random namespace and chunkserver events on a real Namespace and Registry, as the service
    drives them (same calls, same order), with the counts checked after every step."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.ns = Namespace()
        self.reg = Registry("mooseng", TIMEOUT)
        self.now = 0.0
        self.ts = 1000
        self.sessions = {}
        self.files = []  # (ino, name)
        self.do("class_create", name="ec21", ec=[2, 1])

    def do(self, op, **args):
        self.ts += 1
        return self.ns.apply({"op": op, "args": args, "ctx": {"uid": 0, "gid": 0, "gids": []}, "ts": self.ts})

    def chunks(self):
        return [c for c, _ in self.ns.iter_chunks()]

    def stored(self):
        """The stored ids of every chunk's pieces: a full copy and parts 0..3 (part 3 is of no
        2+1 layout: a piece to delete)."""
        return [i for c in self.chunks() for i in (c, *(part_id(c, p) for p in range(4)))]

    def version(self, stored_id):
        return self.ns.chunk_version(split_part_id(stored_id)[0])

    def ref(self, stored_id):
        """A piece at its chunk's version, an older one, or one of a chunk no file has."""
        version = self.version(stored_id) or 1
        return ChunkRef(stored_id, max(1, version - self.rng.choice((0, 0, 0, 1))), self.rng.choice((0, 1)),
                        damaged=self.rng.random() < 0.05)

    def some(self, k):
        ids = self.stored() + [self.ns.next_chunk_id + 5]
        return self.rng.sample(ids, min(k, len(ids)))

    def disks(self):
        return [Disk(i, f"/d{i}", 100 * GiB, 0, 100 * GiB, "damaged" if self.rng.random() < 0.15 else "ok", 0)
                for i in (0, 1)]

    def step(self):
        rng, reg = self.rng, self.reg
        alive = [s.server_id for s in reg.servers() if s.alive]
        event = rng.randrange(15)
        if event == 0 or not self.files:
            name = f"f{self.ts}".encode()
            self.files.append((self.do("mknod", parent=1, name=name, mode=0o100644, rdev=0)["ino"], name))
        elif event == 1:
            ino, index = rng.choice(self.files)[0], rng.randrange(4)
            self.do("write_chunk", ino=ino, index=index)
            self.do("commit_write", ino=ino, size=(index + 1) * CHUNK_SIZE)
        elif event == 2:
            self.do("setclass", ino=rng.choice(self.files)[0], sclass=rng.choice(["default", "fast", "ec21"]))
        elif event == 3:
            _, name = self.files.pop(rng.randrange(len(self.files)))
            reg.recheck(self.do("unlink", parent=1, name=name)["freed"])
        elif event == 4:
            r = self.do("setattr", ino=rng.choice(self.files)[0], size=rng.randrange(3 * CHUNK_SIZE))
            reg.recheck(r["freed"])
        elif event == 5:
            sid = rng.randrange(1, 6)
            self.sessions[sid] = reg.register("mooseng", sid, addr(sid), self.disks(),
                                              [self.ref(c) for c in self.some(rng.randrange(8))], self.now)
        elif event == 6 and alive:
            sid = rng.choice(alive)
            reg.heartbeat(sid, self.sessions[sid], self.disks() if rng.random() < 0.3 else [],
                          [self.ref(c) for c in self.some(rng.randrange(3))],
                          [self.ref(c) for c in self.some(rng.randrange(3))], 0, 0, self.now,
                          [ChunkRef(c, v) for c in self.some(2) for v in (self.version(c) or 1,)])
        elif event == 7:
            self.now += TIMEOUT / 2
            for sid in alive:
                if rng.random() < 0.7:
                    reg.heartbeat(sid, self.sessions[sid], [], [], [], 0, 0, self.now)
            reg.expire(self.now)
        elif event == 8 and alive:
            reg.deletions(rng.choice(alive), self.ns.piece_version)
        elif event == 9 and alive:
            reg.order_delete(rng.choice(alive), rng.choice(self.some(1)))
        elif event == 10 and self.chunks():
            c = rng.choice(self.stored())
            reg.record_copies(c, self.version(c), [addr(s) for s in rng.sample(alive, len(alive) // 2)])
        elif event == 11 and self.chunks() and alive:
            c = rng.choice(self.stored())
            reg.fence(c, self.version(c), rng.sample(alive, 1))
        elif event == 12 and self.chunks():
            c = rng.choice(self.stored())
            v = self.version(c)
            reg.fence_missing(c, max(1, v - 1), v, [addr(s) for s in alive[:1]])
        elif event == 14 and self.chunks():
            c, info = rng.choice(list(self.ns.iter_chunks()))
            if info.ec != info.target:  # a conversion completes; the service rechecks the old pieces
                self.do("set_layout", chunk_id=c, version=info.version, ec=info.target and list(info.target))
                reg.recheck([c])
        elif event == 13 and rng.random() < 0.1:
            self.ns = Namespace.load(self.ns.dump())  # a snapshot replaced it: counted afresh


@pytest.mark.parametrize("seed", range(20))
def test_kept_counts_equal_a_full_count_after_random_events(seed):
    sim = Simulation(seed)
    for _ in range(400):
        sim.step()
        if sim.rng.random() < 0.5:  # let changes pile up between reads, as between scrapes
            continue
        sim.reg.follow(sim.ns)
        counts, attention = full_count(sim.reg, sim.ns)
        assert sim.reg.chunk_states() == counts
        assert sim.reg.attention() == attention


def test_a_fenced_copy_once_removed_lets_a_new_one_there_count(reg):
    s1 = register(reg, 1, chunks=[ChunkRef(5, 2, 0)])
    register(reg, 2, chunks=[ChunkRef(5, 2, 0)])
    reg.fence(5, 2, [1])
    assert reg.valid_servers(5, 2) == [2]
    beat(reg, 1, s1, 1.0, added=[ChunkRef(5, 2, 0)])  # the same copy again (a header change): still fenced
    assert reg.valid_servers(5, 2) == [2]
    beat(reg, 1, s1, 2.0, removed=[ChunkRef(5, 2, 0)])
    beat(reg, 1, s1, 3.0, added=[ChunkRef(5, 2, 1)])  # made afresh (a rebuilt part, a replication)
    assert reg.valid_servers(5, 2) == [1, 2]


def test_erasure_coded_states_count_distinct_valid_parts(reg):
    k, m, c = 4, 2, 7
    register(reg, 1, chunks=[ChunkRef(part_id(c, p), 1, p) for p in (0, 1, 2)])
    s2 = register(reg, 2, chunks=[ChunkRef(part_id(c, p), 1, p) for p in (3, 4)])
    assert reg.classify(c, 1, 6, (k, m)) == UNDERGOAL
    beat(reg, 2, s2, 1.0, added=[ChunkRef(part_id(c, 5), 1, 2)])
    assert reg.classify(c, 1, 6, (k, m)) == STABLE
    register(reg, 3, chunks=[ChunkRef(part_id(c, 0), 1, 0)])
    assert reg.classify(c, 1, 6, (k, m)) == OVERGOAL
    reg.expire(TIMEOUT + 0.5)  # servers 1 and 3 were silent: parts 3, 4, 5 are left
    assert reg.classify(c, 1, 6, (k, m)) == MISSING
    assert [None if s is None else s.server_id for s in reg.part_holders(c, 1, 6)] == [None, None, None, 2, 2, 2]
    reg2 = Registry("mooseng", TIMEOUT)
    register(reg2, 1, chunks=[ChunkRef(part_id(c, p), 1, p) for p in range(4)] + [ChunkRef(c, 1, 0)])
    assert reg2.classify(c, 1, 6, (k, m)) == ENDANGERED
    assert reg2.pieces(c) == [c] + [part_id(c, p) for p in range(4)]
    table = [(c, 1, "ec42", 6, (k, m)), (8, 1, "default", 2)]
    reg2.follow(TableNamespace(table))
    assert reg2.chunk_states()["ec42"][ENDANGERED] == 1 and reg2.attention() == {c}
    # the copy is not of the layout: deleted at the next heartbeat; a stale part too once parts are valid
    assert reg2.deletions(1, {part_id(c, p): 1 for p in range(4)}.get) == [ChunkRef(c, 1, 0)]
