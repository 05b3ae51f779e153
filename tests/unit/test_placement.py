"""Placement of new chunk copies: distinct live servers with room, emptier first, reproducible."""

import errno
import random

import pytest

from mooseng.constants import CHUNK_SIZE
from mooseng.errors import FsError
from mooseng.master import placement
from mooseng.master.registry import Disk, Server

GiB = 1 << 30


def server(sid, free_gib=50, total_gib=100, alive=True, disk_state="ok"):
    disk = Disk(0, "/d0", total_gib * GiB, (total_gib - free_gib) * GiB, free_gib * GiB, disk_state)
    return Server(sid, f"127.0.0.1:{9400 + sid}", session=sid, last_seen=0.0, disks=[disk], alive=alive)


def ids(servers):
    return [s.server_id for s in servers]


def test_distinct_servers_up_to_count():
    servers = [server(i) for i in range(1, 6)]
    chosen = placement.choose(servers, 3, random.Random(1))
    assert len(chosen) == 3
    assert len(set(ids(chosen))) == 3


def test_prefers_emptier_servers():
    servers = [server(1, free_gib=10), server(2, free_gib=90), server(3, free_gib=50), server(4, free_gib=80)]
    for seed in range(20):
        assert ids(placement.choose(servers, 2, random.Random(seed))) == [2, 4]


def test_similar_free_ratios_are_spread_by_the_rng():
    servers = [server(i, free_gib=50) for i in range(1, 5)]
    firsts = {ids(placement.choose(servers, 1, random.Random(seed)))[0] for seed in range(50)}
    assert firsts == {1, 2, 3, 4}


def test_fewer_servers_than_goal_gives_fewer_copies():
    servers = [server(1), server(2, alive=False), server(3)]
    assert sorted(ids(placement.choose(servers, 3, random.Random(0)))) == [1, 3]


def test_skips_full_damaged_and_excluded_servers():
    servers = [
        server(1, free_gib=0),
        server(2, disk_state="damaged"),
        server(3),
        server(4),
    ]
    assert ids(placement.choose(servers, 3, random.Random(0), exclude=[4])) == [3]


def test_a_server_qualifies_when_one_disk_has_room():
    roomy = Server(7, "h:7", 1, 0.0, [Disk(0, "/a", 100 * GiB, 100 * GiB, 0, "ok"), Disk(1, "/b", GiB, 0, GiB, "ok")])
    tight = Server(8, "h:8", 1, 0.0, [Disk(0, "/a", GiB, GiB - CHUNK_SIZE + 1, CHUNK_SIZE - 1, "ok")])
    assert ids(placement.choose([roomy, tight], 2, random.Random(0))) == [7]


@pytest.mark.parametrize(
    "servers",
    [[], [server(1, alive=False)], [server(1, free_gib=0), server(2, disk_state="damaged")]],
    ids=["none", "all-down", "all-full-or-damaged"],
)
def test_no_eligible_server_is_enospc(servers):
    with pytest.raises(FsError) as exc:
        placement.choose(servers, 2, random.Random(0))
    assert exc.value.errno == errno.ENOSPC
    assert "no chunkserver with free space" in exc.value.message


def test_deterministic_for_the_same_seed_whatever_the_input_order():
    servers = [server(i, free_gib=40 + i) for i in range(1, 9)]
    first = ids(placement.choose(servers, 3, random.Random(42)))
    again = ids(placement.choose(list(reversed(servers)), 3, random.Random(42)))
    assert first == again


# --- erasure-coded parts ----------------------------------------------------------------------


def ec_server(sid, disks=4, free_gib=50, alive=True, damaged=()):
    return Server(sid, f"127.0.0.1:{9400 + sid}", session=sid, last_seen=0.0, alive=alive, disks=[
        Disk(i, f"/d{i}", 100 * GiB, (100 - free_gib) * GiB, free_gib * GiB, "damaged" if i in damaged else "ok")
        for i in range(disks)])  # fmt: skip


def per_server(chosen):
    counts = {}
    for s in chosen:
        counts[s.server_id] = counts.get(s.server_id, 0) + 1
    return counts


def test_twelve_parts_on_three_servers_of_four_disks_are_four_each():
    servers = [ec_server(i) for i in (1, 2, 3)]
    for seed in range(20):
        chosen = placement.choose_parts(servers, "archive", 8, 4, random.Random(seed))
        assert len(chosen) == 12 and per_server(chosen) == {1: 4, 2: 4, 3: 4}
        # the data parts take the servers in turn: a read of a stripe hits all three
        assert len(set(ids(chosen[:3]))) == 3


def test_more_servers_spread_thinner_and_never_above_m():
    servers = [ec_server(i, disks=2) for i in range(1, 9)]
    chosen = placement.choose_parts(servers, "archive", 8, 4, random.Random(3))
    assert sorted(per_server(chosen).values()) == [1, 1, 1, 1, 2, 2, 2, 2]


def test_two_servers_of_six_disks_are_spread_evenly():
    servers = [ec_server(1, disks=6), ec_server(2, disks=6)]
    assert per_server(placement.choose_parts(servers, "archive", 8, 4, random.Random(0))) == {1: 6, 2: 6}


def test_uneven_disks_fill_the_bigger_server_only_past_the_even_share():
    servers = [ec_server(1, disks=2), ec_server(2, disks=8), ec_server(3, disks=8)]
    assert per_server(placement.choose_parts(servers, "archive", 8, 4, random.Random(0))) == {1: 2, 2: 5, 3: 5}


def test_too_few_disks_is_enospc_naming_the_class():
    servers = [ec_server(1), ec_server(2), ec_server(3, damaged=(0, 1)), ec_server(4, alive=False)]
    with pytest.raises(FsError) as info:
        placement.choose_parts(servers, "archive", 8, 4, random.Random(0))
    assert info.value.errno == errno.ENOSPC
    assert info.value.message == ("storage class 'archive' (erasure coding 8+4) needs 12 disks with 8 MiB free "
                                  "on live chunkservers; the cluster has 10")
    full = [ec_server(i, free_gib=0) for i in (1, 2, 3)]
    with pytest.raises(FsError):
        placement.choose_parts(full, "archive", 8, 4, random.Random(0))


def test_a_rebuilt_part_goes_where_the_chunk_has_fewest_parts():
    servers = [ec_server(1), ec_server(2), ec_server(3), ec_server(4, disks=1)]
    rng = random.Random(0)
    # server 3 lost a part: 4, 4, 3 (server 4 has none yet, but one disk)
    assert placement.part_target(servers, {1: 4, 2: 4, 3: 3}, 8, 4, rng).server_id == 4
    assert placement.part_target(servers, {1: 4, 2: 4, 3: 3, 4: 1}, 8, 4, rng).server_id == 3
    assert placement.part_target(servers, {1: 4, 2: 4, 3: 3}, 8, 4, rng, exclude=[3, 4]) is None
    # above m only where nothing else is left
    two = [ec_server(1, disks=6), ec_server(2, disks=6)]
    assert placement.part_target(two, {1: 6, 2: 5}, 8, 4, rng).server_id == 2
    assert placement.part_target(two, {1: 6, 2: 6}, 8, 4, rng) is None
