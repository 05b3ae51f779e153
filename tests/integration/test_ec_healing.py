"""Erasure-coded chunks heal on real daemons (master, 4 chunkservers x 4 disks, the client library;
no FUSE): a lost chunkserver's parts are rebuilt on the others, its parts deleted when it comes
back, and a class change converts the file to copies and back, the old pieces deleted each time.

The master's side (placement, states, build orders, switches) meets the chunkserver's builder and
the client's EC reads and writes here; tests/e2e/test_erasure_coding.py does the same through FUSE.
"""

from __future__ import annotations

import random

import pytest
from test_self_healing import ENV  # short timeouts: a lost server is noticed and repaired in seconds

from mooseng.client.fs import Client
from mooseng.client.masterclient import MasterClient
from mooseng.constants import CHUNK_SIZE
from support.polling import wait_for

MiB = 1 << 20


@pytest.fixture
def ec(cluster_factory):
    cluster = cluster_factory(chunkservers=4, clients=0, env_extra=ENV)
    client = Client(cluster.master_endpoints, timeout_s=20)
    master = MasterClient(cluster.master_endpoints, timeout_s=10)
    try:
        yield cluster, client, master
    finally:
        client.close()
        master.close()


def chunks(master, client, path):
    return master.call("fileinfo", {"ino": client.resolve(path).ino})["chunks"]


def by_class(master, sclass):
    return master.call("status")["chunks"]["by_class"].get(sclass, {})


def whole(chunk, layout):
    """Every piece of `layout` valid once, nothing else stored."""
    pieces = [-1] * 2 if layout is None else list(range(sum(layout)))
    return (chunk["ec"] == chunk["target"] == layout and chunk["state"] == "stable"
            and sorted(c["part"] for c in chunk["copies"] if c["valid"]) == sorted(pieces)
            and len(chunk["copies"]) == len(pieces))


def test_lost_parts_are_rebuilt_and_a_returning_server_loses_its_extra_parts(ec):
    cluster, client, master = ec
    cold = master.call("mkdir", {"parent": 1, "name": b"cold", "mode": 0o755})["ino"]
    master.call("setclass", {"ino": cold, "sclass": "archive"})
    data = random.Random(1).randbytes(CHUNK_SIZE + 3 * MiB + 7)
    client.write_file("/cold/f", data)
    [first, second] = chunks(master, client, "/cold/f")
    assert whole(first, [8, 4]) and whole(second, [8, 4])
    per_server = {}
    for c in first["copies"]:
        per_server[c["address"]] = per_server.get(c["address"], 0) + 1
    assert sorted(per_server.values()) == [3, 3, 3, 3]

    victim = cluster.node("chunkserver-2")
    lost = sum(1 for ch in (first, second) for c in ch["copies"] if c["address"] == victim.addr("api"))
    cluster.kill(victim.name)
    wait_for(f"{victim.name} down", lambda: by_class(master, "archive").get("undergoal") == 2, 10)
    wait_for("the lost parts rebuilt on the other three", lambda: all(
        whole(ch, [8, 4]) and victim.addr("api") not in [c["address"] for c in ch["copies"]]
        for ch in chunks(master, client, "/cold/f")), 60)
    assert client.read_file("/cold/f") == data
    status = master.call("status")["chunks"]
    assert status["by_class"]["archive"]["stable"] == 2 and status["replication"]["built"] >= lost

    cluster.restart(victim.name)  # back with its old parts: every one is extra now
    wait_for("its extra parts deleted", lambda: all(whole(ch, [8, 4]) for ch in chunks(master, client, "/cold/f"))
             and not list(victim.dir.glob("disk*/chunks/*/chunk_*.mng")), 60)
    assert by_class(master, "archive")["stable"] == 2
    assert client.read_file("/cold/f") == data


def test_a_class_change_converts_parts_to_copies_and_back(ec):
    cluster, client, master = ec
    data = random.Random(2).randbytes(CHUNK_SIZE + 5 * MiB + 3)
    client.write_file("/g", data)  # default: 2 copies
    ino = client.resolve("/g").ino
    master.call("setclass", {"ino": ino, "sclass": "archive"})
    wait_for("conversion to 8+4 parts, the copies deleted",
             lambda: all(whole(ch, [8, 4]) for ch in chunks(master, client, "/g")), 60)
    info = master.call("fileinfo", {"ino": ino})
    assert info["progress"] == {"converted": 2, "total": 2}
    assert client.read_file("/g") == data
    assert by_class(master, "archive")["stable"] == 2

    master.call("setclass", {"ino": ino, "sclass": "default"})
    wait_for("conversion back to 2 copies, the parts deleted",
             lambda: all(whole(ch, None) for ch in chunks(master, client, "/g")), 60)
    assert client.read_file("/g") == data
    assert by_class(master, "default")["stable"] == 2
    assert master.call("status")["chunks"]["replication"]["conversions"] == 4
