"""The replication planner, driven through simulated failures: a lost server, priorities, rate
limits, over-goal copies, stale holders, full servers, and rebalancing onto a new server; for
erasure-coded chunks rebuilds (endangered first), conversions between layouts, and deletions of
pieces no layout wants."""

import random

from mooseng.ec import part_id
from mooseng.master import healing
from mooseng.master.healing import ChunkView, Delete, Limits, PieceView, Switch
from mooseng.master.registry import Disk, Server

MiB = 1 << 20


class Sim:
    """Servers (one disk each) and chunk copies; plans are applied as if every copy finished."""

    def __init__(self, servers: int, total: int = 1000 * MiB):
        self.total = total
        self.alive = {sid: True for sid in range(1, servers + 1)}
        self.copies: dict[int, set[int]] = {}  # chunk -> servers with a valid copy
        self.stale: dict[int, set[int]] = {}  # chunk -> servers with a stale copy
        self.returned: set[int] = set()  # servers whose copies came back with a registration
        self.goal: dict[int, int] = {}
        self.length: dict[int, int] = {}

    def add_chunk(self, chunk_id: int, holders, goal: int = 2, length: int = 4 * MiB) -> None:
        self.copies[chunk_id] = set(holders)
        self.goal[chunk_id] = goal
        self.length[chunk_id] = length

    def servers(self) -> list[Server]:
        out = []
        for sid, alive in self.alive.items():
            used = sum(self.length[c] for c, held in self.copies.items() if sid in held)
            disk = Disk(0, "/d", self.total, used, self.total - used, "ok")
            out.append(Server(sid, f"127.0.0.1:{9400 + sid}", sid, 0.0, [disk], alive))
        return out

    def views(self) -> list[ChunkView]:
        out = []
        for chunk_id, held in sorted(self.copies.items()):
            valid = tuple(sorted(s for s in held if self.alive[s]))
            holders = tuple(sorted(valid + tuple(self.stale.get(chunk_id, ()))))
            returned = tuple(s for s in valid if s in self.returned)
            out.append(ChunkView(chunk_id, 1, self.goal[chunk_id], valid, holders, self.length[chunk_id], returned))
        return out

    def plan(self, limits=Limits(), inflight=None, busy=None, rebalancing=None, seed=1) -> healing.Plan:
        return healing.plan(self.views(), self.servers(), inflight=inflight or {}, busy=busy or {},
                            rebalancing=rebalancing or {}, limits=limits, rng=random.Random(seed))

    def apply(self, plan: healing.Plan) -> None:
        for r in plan.replicate:
            assert r.source in self.copies[r.chunk_id], "the source holds a valid copy"
            self.copies[r.chunk_id].add(r.target)
        for d in plan.delete:
            self.copies[d.chunk_id].discard(d.server)

    def kill(self, sid: int) -> None:
        """The registry drops a down server's copies."""
        self.alive[sid] = False
        for held in self.copies.values():
            held.discard(sid)

    def counts(self) -> dict[int, int]:
        return {chunk_id: len(held) for chunk_id, held in self.copies.items()}

    def usage(self) -> dict[int, float]:
        return {s.server_id: s.disks[0].used / s.total_bytes for s in self.servers() if s.alive}


Server.total_bytes = property(lambda s: s.disks[0].total)


def test_a_lost_server_is_repaired_to_goal_on_distinct_servers():
    sim = Sim(3)
    for c in range(1, 61):
        sim.add_chunk(c, [1 + c % 3, 1 + (c + 1) % 3])
    sim.kill(2)
    lost = [c for c, n in sim.counts().items() if n < 2]
    assert len(lost) == 40
    plan = sim.plan(Limits(per_server=100))
    assert sorted(r.chunk_id for r in plan.replicate) == sorted(lost)
    for r in plan.replicate:
        assert r.target != 2 and r.target not in sim.copies[r.chunk_id]
    sim.apply(plan)
    assert set(sim.counts().values()) == {2}
    assert sim.plan() == healing.Plan(), "nothing left to do"


def test_per_server_limit_bounds_each_round_and_repair_still_completes():
    sim = Sim(4)
    for c in range(1, 41):
        sim.add_chunk(c, [1, 2])
    sim.kill(1)
    rounds = 0
    while any(n < 2 for n in sim.counts().values()):
        plan = sim.plan(Limits(per_server=3), seed=rounds)
        taking_part: dict[int, int] = {}
        for r in plan.replicate:
            for sid in (r.source, r.target):
                taking_part[sid] = taking_part.get(sid, 0) + 1
        assert max(taking_part.values()) <= 3
        sim.apply(plan)
        rounds += 1
        assert rounds < 50
    assert rounds >= 40 // 3, "server 2 is the only source: 3 copies per round"


def test_chunks_with_one_copy_left_go_first():
    sim = Sim(5)
    sim.add_chunk(1, [1, 2], goal=3)  # under goal, 2 copies
    sim.add_chunk(2, [3], goal=3)  # endangered: one copy left
    sim.add_chunk(3, [4, 5], goal=3)
    plan = sim.plan(Limits(per_server=1))
    assert plan.replicate[0].chunk_id == 2
    assert plan.replicate[0].source == 3


def test_in_flight_replications_count_as_coming_copies():
    sim = Sim(3)
    sim.add_chunk(1, [1])
    assert sim.plan(inflight={1: 1}, busy={1: 1, 2: 1}).replicate == []


def test_a_damaged_copy_is_deleted_only_once_the_chunk_is_at_goal_without_it():
    sim = Sim(3)
    sim.add_chunk(1, [1])
    sim.stale[1] = {2}  # holder 2's copy is damaged: a holder, not valid
    views = [v.__class__(**{**v.__dict__, "damaged": (2,)}) for v in sim.views()]
    plan = healing.plan(views, sim.servers(), inflight={}, busy={}, rebalancing={}, limits=Limits(),
                        rng=random.Random(1))
    assert [(r.chunk_id, r.target) for r in plan.replicate] == [(1, 3)] and plan.delete == []
    sim.apply(plan)
    views = [v.__class__(**{**v.__dict__, "damaged": (2,)}) for v in sim.views()]
    plan = healing.plan(views, sim.servers(), inflight={}, busy={}, rebalancing={}, limits=Limits(),
                        rng=random.Random(1))
    assert plan.delete == [healing.Delete(1, 2)]


def test_missing_chunks_are_not_planned_and_stale_holders_are_not_targets():
    sim = Sim(3)
    sim.add_chunk(1, [])  # missing: nothing to copy from
    sim.add_chunk(2, [1])
    sim.stale[2] = {2}  # server 2 has an old version waiting for deletion
    plan = sim.plan()
    assert [(r.chunk_id, r.source, r.target) for r in plan.replicate] == [(2, 1, 3)]


def test_no_server_with_room_means_no_replication():
    sim = Sim(3, total=10 * MiB)
    sim.add_chunk(1, [1], length=4 * MiB)
    assert sim.plan().replicate == [], "no server has room for a whole chunk"


def test_over_goal_copies_are_deleted_from_the_fullest_server_once_nothing_is_in_flight():
    sim = Sim(3)
    sim.add_chunk(1, [1, 2, 3])
    sim.add_chunk(2, [3], length=100 * MiB)  # makes server 3 the fullest
    sim.add_chunk(2 + 1, [1, 2, 3], goal=3)
    assert sim.plan(inflight={1: 1}).delete == []
    plan = sim.plan(inflight={2: 1})
    assert [(d.chunk_id, d.server) for d in plan.delete] == [(1, 3)]


def test_a_returning_server_with_extra_copies_loses_them():
    sim = Sim(3)
    for c in range(1, 31):
        sim.add_chunk(c, [1 + c % 3, 1 + (c + 1) % 3])
    sim.kill(3)
    sim.apply(sim.plan(Limits(per_server=100)))
    sim.alive[3] = True  # it comes back with its old copies, still valid (no write meanwhile)
    sim.returned.add(3)
    for c in range(1, 31):
        if 3 in (1 + c % 3, 1 + (c + 1) % 3):
            sim.copies[c].add(3)
    plan = sim.plan()
    assert plan.replicate == []
    assert len(plan.delete) == 20 and {d.server for d in plan.delete} == {3}, "its copies are the extra ones"
    sim.apply(plan)
    assert set(sim.counts().values()) == {2}


def test_rebalancing_fills_a_new_server_until_within_the_threshold_without_oscillating():
    sim = Sim(3, total=1000 * MiB)
    for c in range(1, 91):  # 90 chunks x 2 copies x 4 MiB on 3 servers: 240 MiB each, 24 %
        sim.add_chunk(c, [1 + c % 3, 1 + (c + 1) % 3])
    sim.alive[4] = True
    limits = Limits(per_server=8, rebalance_per_server=2, rebalance_threshold=0.02)
    moves = 0
    for rounds in range(200):
        plan = sim.plan(limits, seed=rounds)
        if not plan.replicate and not plan.delete:
            break
        for r in plan.replicate:
            assert r.rebalance
        per_server: dict[int, int] = {}
        for r in plan.replicate:
            per_server[r.source] = per_server.get(r.source, 0) + 1
            per_server[r.target] = per_server.get(r.target, 0) + 1
        assert max(per_server.values(), default=0) <= 2
        moves += len(plan.replicate)
        sim.apply(plan)
    else:
        raise AssertionError("rebalancing did not settle")
    usage = sim.usage()
    assert max(usage.values()) - min(usage.values()) <= 0.02
    assert set(sim.counts().values()) == {2}, "every move ended with the chunk back at its goal"
    assert moves < 60, f"{moves} moves for 45 chunks' worth of imbalance: oscillating"


def test_no_rebalancing_while_chunks_are_under_goal():
    sim = Sim(4)
    for c in range(1, 21):
        sim.add_chunk(c, [1, 2])
    sim.add_chunk(99, [3])
    plan = sim.plan(Limits(rebalance_threshold=0.001))
    assert [r.chunk_id for r in plan.replicate] == [99]


def test_rebalancing_off_with_a_zero_limit():
    sim = Sim(2)
    for c in range(1, 21):
        sim.add_chunk(c, [1], goal=1)
    assert sim.plan(Limits(rebalance_per_server=0, rebalance_threshold=0.001)).replicate == []


# --- erasure-coded chunks and conversions -------------------------------------------------------


def ec_servers(n=3, disks=4):
    return [Server(sid, f"127.0.0.1:{9400 + sid}", sid, 0.0,
                   [Disk(d, f"/d{d}", 1000 * MiB, 100 * MiB, 900 * MiB, "ok") for d in range(disks)], True)
            for sid in range(1, n + 1)]  # fmt: skip


def spread(parts, servers=3):
    """part -> (server,): part p on server 1 + p % servers."""
    return {p: (1 + p % servers,) for p in parts}


def piece_view(chunk_id, valid, ec=(8, 4), target="same", copies=2, holders=None, **kw):
    target = ec if target == "same" else target
    return PieceView(chunk_id, 1, ec, target, copies, valid, holders if holders is not None else valid,
                     4 * MiB, **kw)


def ec_plan(pieces, chunks=(), servers=None, limits=Limits(), inflight=None, busy=None):
    return healing.plan(chunks, servers or ec_servers(), inflight=inflight or {}, busy=busy or {}, rebalancing={},
                        limits=limits, rng=random.Random(1), pieces=pieces)


def per_server_after(view, builds):
    held = {}
    for sids in view.holders.values():
        for sid in sids:
            held[sid] = held.get(sid, 0) + 1
    for b in builds:
        held[b.target] = held.get(b.target, 0) + 1
    return held


def test_lost_parts_are_rebuilt_from_k_others_up_to_m_per_server():
    view = piece_view(2, spread(range(8)))  # exactly k = 8 left: endangered
    plan = ec_plan([view])
    assert sorted(b.part for b in plan.build) == [8, 9, 10, 11]
    for b in plan.build:
        assert (b.chunk_id, b.version, b.ec, b.length, b.conversion) == (2, 1, (8, 4), 4 * MiB, False)
        assert sorted(p for p, _ in b.sources) == list(range(8))
        assert all(view.valid[p] == (sid,) for p, sid in b.sources)
    assert per_server_after(view, plan.build) == {1: 4, 2: 4, 3: 4}
    assert plan.switch == [] and plan.delete == []
    # under way: not ordered twice
    inflight = {part_id(2, b.part): 1 for b in plan.build}
    assert ec_plan([view], inflight=inflight).build == []


def test_exactly_k_parts_or_one_copy_come_first():
    undergoal = piece_view(1, spread(range(10)))  # 10 of 12
    endangered = piece_view(5, spread(range(8)))  # 8 of 12
    one_copy = ChunkView(3, 1, 2, (1,), (1,), 4 * MiB)
    two_of_three = ChunkView(4, 1, 3, (1, 2), (1, 2), 4 * MiB)
    # one replication or build at a time per server: a build keeps all three busy
    plan = ec_plan([undergoal, endangered], [one_copy, two_of_three], limits=Limits(per_server=1))
    assert [(r.chunk_id) for r in plan.replicate] == [3] and plan.build == []
    plan = ec_plan([undergoal, endangered], [two_of_three], limits=Limits(per_server=1))
    assert [b.chunk_id for b in plan.build] == [5] and plan.replicate == []
    plan = ec_plan([undergoal, endangered])
    assert [b.chunk_id for b in plan.build] == [5] * 4 + [1] * 2


def test_an_unreadable_chunk_gets_no_orders():
    assert ec_plan([piece_view(1, spread(range(7)))]).build == []


def test_copies_are_encoded_into_parts_then_switched():
    copies = {-1: (1, 2)}
    view = piece_view(3, copies, ec=None, target=(8, 4))
    plan = ec_plan([view])
    assert sorted(b.part for b in plan.build) == list(range(12))
    assert all(b.conversion and b.ec == (8, 4) and len(b.sources) == 1 and b.sources[0][0] == -1 for b in plan.build)
    assert per_server_after(piece_view(3, {}, ec=None, target=(8, 4)), plan.build) == {1: 4, 2: 4, 3: 4}
    assert plan.switch == [] and plan.delete == []
    done = piece_view(3, {**copies, **spread(range(12))}, ec=None, target=(8, 4))
    assert ec_plan([done]).switch == [Switch(3, 1, (8, 4))]
    assert ec_plan([done], inflight={part_id(3, 0): 1}).switch == [], "a build under way: not yet"


def test_parts_are_decoded_into_copies_then_switched():
    view = piece_view(4, spread(range(12)), target=None, copies=2)
    plan = ec_plan([view])
    assert [b.part for b in plan.build] == [-1, -1]
    assert len({b.target for b in plan.build}) == 2
    assert all(b.conversion and b.ec == (8, 4) and len(b.sources) == 8 for b in plan.build)
    assert ec_plan([view], inflight={4: 2}).build == []
    done = piece_view(4, {**spread(range(12)), -1: (1, 3)}, target=None, copies=2)
    assert ec_plan([done]).switch == [Switch(4, 1, None)]


def test_repairs_go_before_conversions():
    rebuild = piece_view(9, spread(range(11)))
    convert = piece_view(2, {-1: (1, 2)}, ec=None, target=(8, 4))
    plan = ec_plan([convert, rebuild], limits=Limits(per_server=1))
    assert [(b.chunk_id, b.part) for b in plan.build] == [(9, 11)]


def test_pieces_no_layout_wants_surplus_and_damaged_parts_are_deleted():
    valid = spread(range(12))
    holders = {**valid, -1: (2,), 12: (3,), 0: (1, 2)}
    valid = {**valid, 0: (1, 2)}
    view = piece_view(6, valid, holders=holders, returned=((0, 1),))
    plan = ec_plan([view])
    assert sorted(plan.delete, key=lambda d: (d.chunk_id, d.server)) == [
        Delete(6, 2), Delete(part_id(6, 0), 1), Delete(part_id(6, 12), 3)]
    # a damaged part goes once the chunk is whole without it (it was rebuilt elsewhere)
    holders = {**spread(range(12)), 4: (2, 3)}
    whole = piece_view(6, spread(range(12)), holders=holders, damaged=((4, 3),))
    assert ec_plan([whole]).delete == [Delete(part_id(6, 4), 3)]
    broken = piece_view(6, {p: s for p, s in spread(range(12)).items() if p != 4}, holders={4: (3,)},
                        damaged=((4, 3),))
    plan = ec_plan([broken])
    assert plan.delete == [Delete(part_id(6, 4), 3)] and [b.part for b in plan.build] == [4]
    assert plan.build[0].target != 3


def test_a_damaged_part_on_a_full_cluster_is_deleted_so_that_its_rebuild_can_go_there():
    """3 servers x 4 disks hold 4 parts each: the only place for part 4's rebuild is the server
    holding its damaged copy. With more than k parts valid the damaged one goes first, then the
    rebuild lands there; at k valid parts it is kept (its good blocks may be needed)."""
    valid = {p: s for p, s in spread(range(12)).items() if p != 4}
    stuck = piece_view(6, valid, holders=spread(range(12)), damaged=((4, 2),))
    plan = ec_plan([stuck])
    assert plan.build == [] and plan.delete == [Delete(part_id(6, 4), 2)]
    gone = piece_view(6, valid, holders={p: s for p, s in spread(range(12)).items() if p != 4})
    plan = ec_plan([gone])
    assert [(b.part, b.target) for b in plan.build] == [(4, 2)] and plan.delete == []
    endangered = {p: s for p, s in valid.items() if p not in (5, 6, 7)}
    assert len(endangered) == 8
    plan = ec_plan([piece_view(6, endangered, holders=spread(range(12)), damaged=((4, 2),))])
    assert plan.delete == []
