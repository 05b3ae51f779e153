"""RaftNode, the master's Raft driver, on one node in this process fed a leader's messages by hand."""

import time
from stat import S_IFREG

import pytest

from mooseng import rpc, wire
from mooseng.master.raftnode import RaftNode, RaftTransport, encode_msg, raft_id
from mooseng.raft import Entry, EntryType, Message, MessageType

PEERS = {"m1": "127.0.0.1:1", "m2": "127.0.0.1:2", "m3": "127.0.0.1:3"}  # nobody listens: sends fail
LEADER = raft_id("m1")


def mknod(index: int, name: bytes) -> Entry:
    entry = {"op": "mknod", "args": {"parent": 1, "name": name, "mode": S_IFREG | 0o644},
             "ctx": {"uid": 0, "gid": 0, "gids": []}, "ts": 1}  # fmt: skip
    return Entry(2, index, EntryType.NORMAL, wire.pack([LEADER, index]) + wire.pack(entry))


@pytest.fixture
def follower(tmp_path):
    """m2, as a follower of m1 in term 2; ticks 100 s apart, so no turn runs but those fed to it."""
    node = RaftNode("m2", "test", PEERS, "127.0.0.1:4", tmp_path / "m2", 0, tick_s=100)
    transport = RaftTransport(node, "127.0.0.1:0")
    node.open()
    transport.start()
    node.start(transport)
    yield node, transport
    transport.stop()
    node.stop()


def append(transport: RaftTransport, node: RaftNode, prev: int, entries: list[Entry], commit: int):
    """The leader's raft call with one append, as the transport receives it: (reply, its after())."""
    m = Message(MessageType.APP, node.id, LEADER, 2, 1 if prev == 1 else 2, prev, entries, commit)
    params = {"cluster_id": "test", "from": LEADER, "from_name": "m1", "api": "", "msgs": [encode_msg(m)]}
    reply = transport._receive(params, b"", "127.0.0.1:9")
    if isinstance(reply, rpc.Reply):
        return reply.result, reply.after
    return reply, None


def acked(reply: dict) -> int:
    (m,) = reply["msgs"]
    assert m[0] == MessageType.APP_RESP and not m[8]
    return m[5]


def test_a_follower_acks_an_append_before_it_applies_what_the_append_committed(follower):
    """The leader's next append need not wait for this node's state machine: entries the append
    commits are applied after the reply is sent (rpc.Reply.after); the ack needs only the sync."""
    node, transport = follower
    reply, after = append(transport, node, 1, [mknod(2, b"a")], commit=1)
    assert acked(reply) == 2 and after is None  # nothing committed yet
    reply, after = append(transport, node, 2, [mknod(3, b"b")], commit=2)
    assert acked(reply) == 3 and node.storage.last_index() == 3
    assert node.applied == 1 and node.has_unapplied()  # entry 2 is committed, not yet applied
    after()
    assert node.applied == 2 and not node.has_unapplied()
    with node.state.lock:
        assert node.state.ns.query("lookup", {"parent": 1, "name": b"a"}, {"uid": 0, "gid": 0, "gids": []})


def test_unapplied_entries_are_applied_first_in_the_next_turn(follower):
    """If the reply's after() does not get the turn (another thread runs one), the next turn
    applies them before it steps anything."""
    node, transport = follower
    append(transport, node, 1, [mknod(2, b"a")], commit=1)
    reply, _ = append(transport, node, 2, [mknod(3, b"b")], commit=2)  # after() not run
    assert node.applied == 1
    reply, after = append(transport, node, 3, [], commit=3)
    assert acked(reply) == 3 and node.applied >= 2  # 2 applied before this turn's step
    after()
    assert node.applied == 3
