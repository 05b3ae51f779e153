"""The build planner of chunkserver/builder.py: order parsing and which sources a build uses."""

import pytest

from mooseng import ec
from mooseng.chunkserver.builder import BuildError, Source, parse_order, plan
from mooseng.constants import BLOCK_SIZE as B
from mooseng.constants import CHUNK_SIZE


def order(part=3, sources=None, length=5 * B + 10, geometry=(4, 2), version=7):
    sources = sources if sources is not None else [{"part": p, "address": f"127.0.0.1:{9000 + p}"}
                                                   for p in range(6) if p != part]
    return {"chunk_id": 42, "version": version, "ec": list(geometry), "part": part, "sources": sources,
            "length": length}


def lengths_of(o, length, **override):
    n = ec.part_lengths(length, o.k, o.m)
    return {s: override.get(f"p{s.part}", n[s.part] if s.part >= 0 else length) for s in o.sources}


def test_parse_order():
    o = parse_order(order())
    assert (o.chunk_id, o.version, o.k, o.m, o.part, o.length) == (42, 7, 4, 2, 3, 5 * B + 10)
    assert o.target == ec.part_id(42, 3) and o.stored_id(Source(-1, "a:1")) == 42
    assert parse_order(order(part=-1)).target == 42


@pytest.mark.parametrize("change, message", [
    ({"ec": [0, 2]}, "invalid erasure code k=0, m=2"),
    ({"ec": [30, 3]}, "k \\+ m <= 32"),
    ({"ec": None}, "needs the chunk's geometry"),
    ({"part": 6}, "part = 6 is not -1"),
    ({"part": -2}, "part = -2"),
    ({"chunk_id": 1 << 56}, "chunk_id"),
    ({"version": 0}, "version = 0"),
    ({"length": CHUNK_SIZE + 1}, "length"),
    ({"sources": []}, "non-empty list"),
    ({"sources": [{"part": 9, "address": "127.0.0.1:1"}]}, "source part 9"),
    ({"sources": [{"part": 1, "address": "nowhere"}]}, "not host:port"),
    ({"sources": [{"part": 1, "address": "127.0.0.1:1"}] * 2}, "listed twice"),
    ({"extra": 1}, "unknown \\['extra'\\]"),
])
def test_malformed_orders_are_refused_with_the_reason(change, message):
    with pytest.raises(ValueError, match=message):
        parse_order({**order(), **change})
    with pytest.raises(ValueError, match="must be a map"):
        parse_order([1])


def test_rebuild_of_a_part_from_the_data_parts_first():
    o = parse_order(order(part=1))
    p = plan(o, lengths_of(o, o.length))
    assert [s.part for s in p.parts] == [0, 2, 3, 4, 5] and p.ignored == []
    assert (p.length, p.rows) == (ec.part_lengths(o.length, 4, 2)[1], 2)


def test_parity_and_part_0_store_as_much_as_the_others():
    o = parse_order(order(part=5))
    p = plan(o, lengths_of(o, o.length))
    assert p.length == ec.part_lengths(o.length, 4, 2)[0] == 2 * B  # blocks 0 and 4


def test_sources_of_a_wrong_length_or_version_are_ignored_and_reported():
    o = parse_order(order(part=0))
    stored = lengths_of(o, o.length, p4=B, p2=3 * B)
    stored[Source(1, "127.0.0.1:9001")] = "FAILED_PRECONDITION: chunk is at version 6, request wants version 7"
    with pytest.raises(BuildError) as info:
        plan(o, stored)
    message = str(info.value)
    assert "2 usable part(s) of the 4 needed" in message
    assert "part 4 at 127.0.0.1:9004: part 4 stores 65536 bytes, part 0 and parity store 131072" in message
    assert "part 2 at 127.0.0.1:9002: part 2 stores 196608 bytes, more than the 65536" in message
    assert "version 6" in message


def test_one_bad_source_leaves_enough_for_the_build():
    o = parse_order(order(part=0, length=CHUNK_SIZE))
    stored = lengths_of(o, 9 * B)
    stored[Source(5, "127.0.0.1:9005")] = 2 * B  # parity disagrees with part 0 and the other parity
    p = plan(o, stored)
    assert [s.part for s in p.parts] == [1, 2, 3, 4] and len(p.ignored) == 1 and "part 5" in p.ignored[0]
    assert p.length == 3 * B  # part 0 of a 9-block chunk (its rows: blocks 0, 4, 8)


def test_the_piece_being_built_is_not_a_source():
    o = parse_order(order(part=2, sources=[{"part": p, "address": f"127.0.0.1:{9000 + p}"} for p in range(6)]))
    p = plan(o, lengths_of(o, o.length))
    assert 2 not in [s.part for s in p.parts] and "being built" in p.ignored[0]


def test_copy_to_part_encodes_from_the_copy():
    o = parse_order(order(part=4, sources=[{"part": -1, "address": "127.0.0.1:9100"}]))
    p = plan(o, {o.sources[0]: 9 * B + 1})
    assert p.copy == (o.sources[0], 9 * B + 1) and (p.length, p.rows) == (3 * B, 3)
    o = parse_order(order(part=3, sources=[{"part": -1, "address": "127.0.0.1:9100"}]))
    assert plan(o, {o.sources[0]: 9 * B + 1}).length == 2 * B


def test_parts_to_copy_takes_the_chunk_length():
    o = parse_order(order(part=-1, length=5 * B + 10))
    p = plan(o, lengths_of(o, 5 * B + 10))
    assert (p.length, p.rows, [s.part for s in p.parts]) == (5 * B + 10, 2, [0, 1, 2, 3, 4, 5])
    o = parse_order(order(part=-1, length=2 * B))
    with pytest.raises(BuildError, match="part 0 stores 131072 bytes, more than the 65536 of a 131072-byte chunk"):
        plan(o, lengths_of(o, 5 * B + 10))
    o = parse_order(order(part=-1, sources=[{"part": -1, "address": "127.0.0.1:9100"}]))
    with pytest.raises(BuildError, match="is a replication"):
        plan(o, {o.sources[0]: 100})
