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
