"""Building parts of erasure-coded chunks (chunkserver/builder.py) on real chunkserver processes:
parts written with the chunk protocol, some lost, built back through the `build` rpc and through
heartbeat orders, compared byte for byte; copies -> parts and parts -> copy; bad sources ignored."""

import os
import random

import pytest
from test_chunkserver import Chunkserver, Client, FakeMaster, masterless, status_of

from mooseng import ec, rpc
from mooseng.constants import BLOCK_SIZE as B

MiB = 1 << 20
CHUNK = 77


@pytest.fixture
def trio(tmp_path):
    with masterless(tmp_path, 3) as servers:
        yield servers
    for cs in servers:
        assert "Traceback" not in cs.log.read_text()


@pytest.fixture
def client():
    c = Client()
    yield c
    c.close()


def chunk_files(data_dir, tmp=False):
    suffix = ".mng.tmp" if tmp else ".mng"
    return [os.path.join(d, f) for d, _, files in os.walk(data_dir) for f in files if f.endswith(suffix)]


def put_parts(client, servers, k, m, data, version=1):
    """Part p of chunk CHUNK on servers[p % 3], one write session each; returns the parts."""
    parts = ec.encode_chunk(ec.codec(k, m), data)
    for p, part in enumerate(parts):
        client.write(servers[p % 3].addr, ec.part_id(CHUNK, p), version, 0, [], [(0, bytes(part))])
    return parts


def stored(client, addr, stored_id, version) -> bytes:
    length = client.call(addr, "crc_table", {"chunk_id": stored_id, "version": version})[0]["length"]
    return client.read(addr, stored_id, version, 0, length) if length else b""


def part_file(server, stored_id) -> str:
    [path] = [p for d in server.data_dirs for p in chunk_files(d) if p.endswith(f"chunk_{stored_id:016X}.mng")]
    return path


def lose(servers, stored_ids) -> None:
    """The parts' files vanish while their servers are down (lost disks, as far as they go)."""
    for cs in servers:
        cs.stop()
    for cs, stored_id in stored_ids:
        os.unlink(part_file(cs, stored_id))
    for cs in servers:
        cs.start()


def corrupt(server, stored_id) -> None:
    """Flip a byte of the part's first block: its server answers reads of it with DATA_LOSS."""
    with open(part_file(server, stored_id), "r+b") as f:
        f.seek(8192 + 100)
        byte = f.read(1)
        f.seek(8192 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))


def build(client, addr, k, m, part, sources, length, version=1) -> dict:
    return client.call(addr, "build", {"chunk_id": CHUNK, "version": version, "ec": [k, m], "part": part,
                                       "sources": sources, "length": length})[0]


def part_sources(servers, parts):
    return [{"part": p, "address": servers[p % 3].addr} for p in parts]


@pytest.mark.parametrize("k, m", [(8, 4), (4, 2)])
def test_lost_parts_are_built_back_byte_exact(trio, client, k, m):
    length = 2 * k * B + 3 * B + 1234  # a partial last stripe
    data = random.Random(k).randbytes(length)
    parts = put_parts(client, trio, k, m, data)
    lost = random.Random(m).sample(range(k + m), m)  # m parts, data and parity alike
    lose(trio, [(trio[p % 3], ec.part_id(CHUNK, p)) for p in lost])
    for p in lost:
        target = trio[(p + 1) % 3]
        # every part is offered as a source: the lost ones fail at their server and are ignored
        reply = build(client, target.addr, k, m, p, part_sources(trio, range(k + m)), length)
        assert reply["bytes"] == len(parts[p])
        assert any(f"part {q} at" in why for why in reply["ignored"] for q in lost if q != p) or m == 1
        assert stored(client, target.addr, ec.part_id(CHUNK, p), 1) == bytes(parts[p]), f"part {p}"
    # with every lost part back elsewhere, a full copy from parts only the rebuilt ones can complete
    survivors = [q for q in range(k + m) if q not in lost][:k - len([q for q in lost if q < k])]
    rebuilt = [{"part": p, "address": trio[(p + 1) % 3].addr} for p in lost]
    reply = build(client, trio[0].addr, k, m, -1, part_sources(trio, survivors) + rebuilt, length)
    assert reply["bytes"] == length
    assert stored(client, trio[0].addr, CHUNK, 1) == data


def test_copy_to_parts_and_parts_to_copy(trio, client):
    k, m = 4, 2
    length = 10 * MiB + 5 * B + 77  # several read steps of the builder
    data = random.Random(5).randbytes(length)
    client.write(trio[0].addr, CHUNK, 3, 0, [], [(0, data)])
    expected = ec.encode_chunk(ec.codec(k, m), data)
    for p in range(k + m):
        target = trio[1 + p % 2]
        reply = build(client, target.addr, k, m, p, [{"part": -1, "address": trio[0].addr}], length, version=3)
        assert reply == {"bytes": len(expected[p]), "ignored": []}
        assert stored(client, target.addr, ec.part_id(CHUNK, p), 3) == bytes(expected[p]), f"part {p}"
    # and back: a full copy from the parts, data parts 0 and 2 left out; sources on the building
    # server itself are read like any other
    sources = [{"part": p, "address": trio[1 + p % 2].addr} for p in (1, 3, 4, 5)]
    reply = build(client, trio[1].addr, k, m, -1, sources, length, version=3)
    assert reply["bytes"] == length
    assert stored(client, trio[1].addr, CHUNK, 3) == data


def test_sources_at_another_version_or_too_few_fail_clearly(trio, client):
    k, m = 4, 2
    length = 3 * k * B
    data = random.Random(6).randbytes(length)
    put_parts(client, trio, k, m, data, version=2)
    # part 1 comes back at an older version, part 4 with more rows than part 0: neither is decoded
    lose(trio, [(trio[1], ec.part_id(CHUNK, 1)), (trio[1], ec.part_id(CHUNK, 4)), (trio[0], ec.part_id(CHUNK, 0))])
    client.write(trio[1].addr, ec.part_id(CHUNK, 1), 1, 0, [], [(0, b"old" * 1000)])
    client.write(trio[1].addr, ec.part_id(CHUNK, 4), 2, 0, [], [(0, bytes(5 * B))])
    with pytest.raises(rpc.RpcError) as info:
        build(client, trio[1].addr, k, m, 0, part_sources(trio, range(1, 6)), length, version=2)
    message = info.value.message
    assert "3 usable part(s) of the 4 needed" in message
    assert "part 1 at" in message and "version 1" in message
    assert "part 4 at" in message and "more than the" in message
    assert not any(p.endswith(".tmp") for cs in trio for d in cs.data_dirs for p in chunk_files(d, tmp=True))
    # a malformed order is INVALID_ARGUMENT and the server carries on
    assert status_of(lambda: client.call(trio[0].addr, "build", {"chunk_id": CHUNK})) == rpc.INVALID_ARGUMENT
    assert status_of(lambda: build(client, trio[0].addr, 0, 2, 0, [], length)) == rpc.INVALID_ARGUMENT


def test_a_source_failing_its_crc_is_replaced_by_a_spare(trio, client):
    k, m = 4, 2
    length = 4 * k * B + 5
    data = random.Random(8).randbytes(length)
    parts = put_parts(client, trio, k, m, data)
    corrupt(trio[1], ec.part_id(CHUNK, 1))  # its length is right: only its read tells
    reply = build(client, trio[2].addr, k, m, 0, part_sources(trio, range(1, 6)), length)
    assert reply["bytes"] == len(parts[0])
    assert [why for why in reply["ignored"] if why.startswith("part 1 at") and "DATA_LOSS" in why]
    assert stored(client, trio[2].addr, ec.part_id(CHUNK, 0), 1) == bytes(parts[0])


class BuildingMaster(FakeMaster):
    """Hands out build orders in heartbeat replies; records the `built` reports."""

    def __init__(self):
        super().__init__()
        self.builds: list[dict] = []

    def heartbeat(self, params, data, peer):
        reply = super().heartbeat(params, data, peer)
        with self.lock:
            reply["build"], self.builds = self.builds, []
        return reply


def test_heartbeat_orders_run_and_are_reported(tmp_path, trio, client):
    k, m = 4, 2
    length = 5 * B + 3
    data = random.Random(7).randbytes(length)
    parts = put_parts(client, trio, k, m, data)
    master = BuildingMaster()
    cs = Chunkserver(tmp_path, 9, master.addr)
    try:
        cs.start()
        master.wait_for(lambda m_: m_.beats, "a heartbeat")
        order = {"chunk_id": CHUNK, "version": 1, "ec": [k, m], "part": 5,
                 "sources": part_sources(trio, range(5)), "length": length}
        bad = {**order, "part": 9}
        with master.lock:
            master.builds = [order, bad]
        master.wait_for(lambda m_: sum(len(b.get("built", [])) for b in m_.beats) >= 2, "built reports")
        built = [r for b in master.beats for r in b.get("built", [])]
        ok = next(r for r in built if r["part"] == 5)
        assert ok == {"chunk_id": CHUNK, "part": 5, "version": 1, "bytes": len(parts[5]), "error": ""}
        failed = next(r for r in built if r["part"] == 9)
        assert failed["bytes"] == 0 and "malformed build order" in failed["error"]
        master.wait_for(lambda m_: any(c["chunk_id"] == ec.part_id(CHUNK, 5) for b in m_.beats for c in b["added"]),
                        "the new part reported added")
        assert stored(client, cs.addr, ec.part_id(CHUNK, 5), 1) == bytes(parts[5])
        assert all("built" not in b or b["built"] for b in master.beats)  # only sent with something in it
    finally:
        assert cs.stop() == 0
        master.server.stop()


def test_client_writes_reads_and_cuts_parts_on_real_chunkservers(trio):
    """client/ecio.py over real chunkservers: a new chunk's parts, a read-modify-write, reads with
    a whole server stopped (its 4 parts decoded from the others), a truncation while it is down."""
    from mooseng.client import ecio
    from mooseng.client.chunkclient import ChunkClient

    k, m = 8, 4
    chunks = ChunkClient()
    try:
        servers = [trio[p % 3].addr for p in range(k + m)]
        data = bytearray(random.Random(12).randbytes(5 * MiB + 4321))
        stored = ecio.write(chunks, ecio.EcChunk.of(CHUNK, 1, [k, m], servers), 0, [(0, bytes(data))], 0)
        assert stored.parts == list(range(12))
        ref = ecio.EcChunk.of(CHUNK, 1, [k, m], servers)
        assert b"".join(ecio.read(chunks, ref, 0, len(data))) == data
        # a second session rewrites a few bytes in the middle of a stripe (the others are read first)
        ref2 = ecio.EcChunk.of(CHUNK, 2, [k, m], servers)
        for p in range(k + m):
            rpc.Client(servers[p]).call("set_version", {"chunk_id": ec.part_id(CHUNK, p), "expect_version": 1,
                                                        "version": 2})
        data[3 * MiB + 5:3 * MiB + 12] = b"patched"
        ecio.write(chunks, ref2, 2, [(3 * MiB + 5, b"patched")], len(data))
        assert b"".join(ecio.read(chunks, ref2, 0, len(data))) == data
        trio[1].stop()
        assert b"".join(ecio.read(chunks, ref2, 0, len(data))) == data
        assert b"".join(ecio.read(chunks, ref2, 3 * MiB, 100)) == data[3 * MiB:3 * MiB + 100]
        ref3 = ecio.EcChunk.of(CHUNK, 3, [k, m], servers)
        cut = ecio.truncate(chunks, ref3, 2, 2 * MiB + 77)
        assert cut.parts == [p for p in range(12) if p % 3 != 1]
        assert b"".join(ecio.read(chunks, ref3, 0, 3 * MiB)) == data[:2 * MiB + 77] + bytes(MiB - 77)
    finally:
        chunks.close()
        trio[1].start()
