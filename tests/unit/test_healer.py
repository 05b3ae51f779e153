"""The healer (driver of the planner) on a real Registry with an injected clock: leader gating, the
start delay, orders handed out once, reports, timeouts, failed servers, over-goal deletions."""

import random
import threading

import pytest
from support.chunktable import TableNamespace, info

from mooseng.ec import part_id
from mooseng.master import healing
from mooseng.master.healer import WRITE_GRACE_S, Healer, Settings
from mooseng.master.healing import Limits
from mooseng.master.registry import ChunkRef, Disk, Registry

GiB = 1 << 30


def disks():
    return [Disk(0, "/d0", 100 * GiB, 10 * GiB, 90 * GiB, "ok", 0)]


class World:
    def __init__(self, leader=True, sweep_chunks=2000):
        self.now = 0.0
        self.leader = leader
        self.reg = Registry("mooseng", 10.0)
        self.table = []  # (chunk_id, version, goal)
        self.looked_at = []  # the chunk ids of each chunk_table() call
        self.healer = Healer(self.reg, threading.Lock(), self.settle, self.chunk_table, lambda: self.leader,
                             Settings(timeout_s=30.0, start_delay_s=5.0, sweep_chunks=sweep_chunks,
                                      limits=Limits(per_server=4)),
                             random.Random(1), clock=lambda: self.now)
        self.sessions = {}

    def settle(self):
        """What the service does: the registry follows a namespace holding `table` (goal g as class "g")."""
        self.reg.follow(TableNamespace([(c, v, str(goal), goal) for c, v, goal in self.table]))
        return max((c for c, _, _ in self.table), default=0) + 1

    def chunk_table(self, ids):
        ids = set(ids)
        self.looked_at.append(ids)
        return [(c, info(v, str(goal), goal)) for c, v, goal in self.table if c in ids]

    def register(self, sid, chunks=()):
        self.sessions[sid] = self.reg.register("mooseng", sid, f"127.0.0.1:{9400 + sid}", disks(),
                                               [ChunkRef(c, 1, 0, 1000) for c in chunks], self.now)

    def beat(self, sid, added=(), removed=()):
        assert self.reg.heartbeat(sid, self.sessions[sid], [], [ChunkRef(c, 1, 0, 1000) for c in added],
                                  [ChunkRef(c, 1, 0) for c in removed], 0, 0, self.now)


@pytest.fixture
def world():
    w = World()
    for sid in (1, 2, 3):
        w.register(sid, chunks=[1, 2] if sid == 1 else [2] if sid == 2 else [])
    w.table = [(1, 1, 2), (2, 1, 2)]
    w.healer.run_once()  # leader from time 0: plans from time 5 on
    return w


def test_a_follower_never_plans(world):
    world.leader = False
    world.now = 100.0
    assert world.healer.run_once() is None
    world.leader = True
    world.now = 102.0
    assert world.healer.run_once() is None, "a new leader waits for the start delay again"
    world.leader = False
    world.now = 110.0
    assert world.healer.run_once() is None
    assert world.healer.take(2) == [] and world.healer.take(3) == []


def test_planning_waits_for_the_start_delay_after_becoming_leader(world):
    assert world.healer.run_once() is None
    world.now = 4.9
    assert world.healer.run_once() is None
    world.now = 5.0
    plan = world.healer.run_once()
    assert [(r.chunk_id, r.source) for r in plan.replicate] == [(1, 1)]


def test_orders_go_out_once_and_a_report_completes_them(world):
    world.now = 5.0
    [order] = world.healer.run_once().replicate
    orders = world.healer.take(order.target)
    assert orders == [{"chunk_id": 1, "version": 1, "source": "127.0.0.1:9401"}]
    assert world.healer.take(order.target) == [], "handed out once"
    world.now = 6.0
    assert world.healer.run_once().replicate == [], "in flight: not planned again"
    world.beat(order.target, added=[1])
    world.healer.report(order.target, [{"chunk_id": 1, "version": 1, "bytes": 1000, "error": ""}])
    assert world.healer.snapshot() == {"chunks": 1, "bytes": 1000, "failures": 0, "in_progress": 0, "built": 0,
                                       "built_bytes": 0, "build_failures": 0, "builds_in_progress": 0,
                                       "conversions": 0}
    assert world.healer.run_once() == world.healer.run_once().__class__(), "at goal: nothing to do"


def test_failures_and_timeouts_count_and_the_chunk_is_planned_again(world):
    world.now = 5.0
    [order] = world.healer.run_once().replicate
    world.healer.report(order.target, [{"chunk_id": 1, "version": 1, "bytes": 0, "error": "NOT_FOUND: gone"}])
    assert world.healer.snapshot()["failures"] == 1
    [again] = world.healer.run_once().replicate
    world.now = 5.0 + 31
    world.beat(1), world.beat(2), world.beat(3)
    [third] = world.healer.run_once().replicate
    assert world.healer.snapshot()["failures"] == 2, "the second order timed out"
    assert (again.chunk_id, third.chunk_id) == (1, 1)


def test_a_target_going_down_fails_its_orders(world):
    world.now = 5.0
    [order] = world.healer.run_once().replicate
    world.now = 12.0
    for sid in (1, 2, 3):
        if sid != order.target:
            world.beat(sid)
    world.now = 16.0
    world.reg.expire(world.now)
    world.healer.run_once()
    assert world.healer.snapshot()["failures"] == 1


def test_over_goal_copies_leave_with_the_next_heartbeat_reply(world):
    world.beat(3, added=[2])  # chunk 2 now on 1, 2 and 3: one too many
    world.now = 5.0
    plan = world.healer.run_once()
    [delete] = plan.delete
    assert delete.chunk_id == 2
    versions = {1: 1, 2: 1}.get
    assert world.reg.deletions(delete.server, versions) == [ChunkRef(2, 1, 0)]
    assert len(world.reg.copies(2)) == 2


def test_a_chunk_being_written_is_left_alone_until_its_commit_or_the_grace(world):
    world.healer.note_write(1)
    world.now = 5.0
    assert world.healer.run_once().replicate == []
    world.healer.note_commit([1])
    assert [r.chunk_id for r in world.healer.run_once().replicate] == [1]


def test_an_uncommitted_write_blocks_replication_for_the_grace_only(world):
    world.healer.note_write(1)
    world.now = 5.0
    assert world.healer.run_once().replicate == []
    world.now = WRITE_GRACE_S + 0.1
    for sid in (1, 2, 3):
        world.beat(sid)
    assert [r.chunk_id for r in world.healer.run_once().replicate] == [1]


@pytest.fixture
def big():
    """200 chunks of goal 2 on servers 1 and 2 (chunk 1 only on 1), a third server empty, a sweep of 10."""
    w = World(sweep_chunks=10)
    w.register(1, chunks=range(1, 201))
    w.register(2, chunks=range(2, 201))
    w.register(3)
    w.table = [(c, 1, 2) for c in range(1, 201)]
    w.healer.run_once()
    w.now = 5.0
    return w


def test_a_pass_looks_at_the_chunks_with_work_and_a_sweep_slice_only(big):
    assert [r.chunk_id for r in big.healer.run_once().replicate] == [1]
    assert len(big.looked_at[-1]) <= 1 + 10
    big.beat(2, removed=[150])  # a copy lost far from where the sweep is
    assert [r.chunk_id for r in big.healer.run_once().replicate] == [150]
    assert len(big.looked_at[-1]) <= 2 + 10


def test_the_sweep_covers_every_chunk_and_catches_what_the_accounting_missed(big):
    big.reg.attention = lambda: set()  # as if the kept accounting had lost track of a chunk
    big.beat(2, removed=[150])
    planned, passes = [], 0
    while 150 not in planned:
        passes += 1
        assert passes <= 200 // 10 + 1, "the sweep did not reach chunk 150 in one round"
        planned += [r.chunk_id for r in big.healer.run_once().replicate]
    for _ in range(200 // 10):
        big.healer.run_once()
    assert set().union(*big.looked_at) >= set(range(1, 201))


def test_build_orders_go_out_once_built_reports_complete_them_and_switches_are_called():
    """A 4+2 chunk lost part 5: the build order goes out once in DESIGN.md's format, the `built`
    report counts; a chunk whose conversion is complete is handed to the switch callback."""
    now = [0.0]
    reg = Registry("mooseng", 10.0)
    four = [Disk(d, f"/d{d}", 100 * GiB, 10 * GiB, 90 * GiB, "ok", 0) for d in range(4)]
    sessions = {sid: reg.register("mooseng", sid, f"127.0.0.1:{9400 + sid}", four,
                                  [ChunkRef(part_id(1, p), 1, p // 3) for p in range(5) if p % 3 + 1 == sid]
                                  + [ChunkRef(part_id(2, p), 1, p // 3) for p in range(6) if p % 3 + 1 == sid]
                                  + ([ChunkRef(2, 1, 0)] if sid == 1 else []), 0.0)
                for sid in (1, 2, 3)}  # fmt: skip
    rows = {1: info(1, "ec42", 6, (4, 2), length=1000), 2: info(1, "ec42", 2, None, (4, 2), length=7)}
    switched = []
    healer = Healer(reg, threading.Lock(), lambda: reg.follow(TableNamespace(
                        [(c, 1, "ec42", i.goal, i.ec, i.target) for c, i in rows.items()])) or 3,
                    lambda ids: [(c, rows[c]) for c in ids if c in rows], lambda: True,
                    Settings(start_delay_s=0.0), random.Random(1), clock=lambda: now[0],
                    switch=lambda order: switched.append(order) or True)  # fmt: skip
    plan = healer.run_once()
    assert [(b.chunk_id, b.part) for b in plan.build] == [(1, 5)]
    assert switched == [healing.Switch(2, 1, (4, 2))] and healer.snapshot()["conversions"] == 1
    target = plan.build[0].target
    [order] = healer.take_builds(target)
    assert order == {"chunk_id": 1, "version": 1, "ec": [4, 2], "part": 5, "length": 1000,
                     "sources": [{"part": p, "address": f"127.0.0.1:{9400 + sid}"} for p, sid in plan.build[0].sources]}
    assert healer.take_builds(target) == [] and healer.take(target) == []
    assert healer.snapshot()["builds_in_progress"] == 1
    now[0] = 1.0
    assert healer.run_once().build == [], "under way: not planned again"
    reg.heartbeat(target, sessions[target], [], [ChunkRef(part_id(1, 5), 1, 3)], [], 0, 0, 1.0)
    healer.report_built(target, [{"chunk_id": 1, "part": 5, "version": 1, "bytes": 65536, "error": ""}])
    snap = healer.snapshot()
    assert (snap["built"], snap["built_bytes"], snap["builds_in_progress"]) == (1, 65536, 0)
    assert reg.classify(1, 1, 6, (4, 2)) == "stable"
