"""The healer (driver of the planner) on a real Registry with an injected clock: leader gating, the
start delay, orders handed out once, reports, timeouts, failed servers, over-goal deletions."""

import random
import threading

import pytest

from mooseng.master.healer import WRITE_GRACE_S, Healer, Settings
from mooseng.master.healing import Limits
from mooseng.master.registry import ChunkRef, Disk, Registry

GiB = 1 << 30


def disks():
    return [Disk(0, "/d0", 100 * GiB, 10 * GiB, 90 * GiB, "ok", 0)]


class World:
    def __init__(self, leader=True):
        self.now = 0.0
        self.leader = leader
        self.reg = Registry("mooseng", 10.0)
        self.table = []  # (chunk_id, version, goal)
        self.healer = Healer(self.reg, threading.Lock(), lambda: self.table, lambda: self.leader,
                             Settings(timeout_s=30.0, start_delay_s=5.0, limits=Limits(per_server=4)),
                             random.Random(1), clock=lambda: self.now)
        self.sessions = {}

    def register(self, sid, chunks=()):
        self.sessions[sid] = self.reg.register("mooseng", sid, f"127.0.0.1:{9400 + sid}", disks(),
                                               [ChunkRef(c, 1, 0, 1000) for c in chunks], self.now)

    def beat(self, sid, added=()):
        assert self.reg.heartbeat(sid, self.sessions[sid], [], [ChunkRef(c, 1, 0, 1000) for c in added], [],
                                  0, 0, self.now)


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
    assert world.healer.snapshot() == {"chunks": 1, "bytes": 1000, "failures": 0, "in_progress": 0}
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
