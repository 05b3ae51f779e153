"""A deterministic, lossless cluster for scenario tests (etcd's `network` + `stabilize`).

Nodes persist every Ready at once; messages wait in one FIFO queue until deliver() or
stabilize(). Links can be cut per direction; a message on a cut link is dropped when delivered.
"""

import random

from mooseng.raft import (
    ConfChange,
    Config,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Role,
    bootstrap_snapshot,
)


class Node:
    def __init__(self, node_id: int, storage: MemoryStorage, **config):
        self.id = node_id
        self.storage = storage
        self.config = config
        self.applied: list[bytes] = []  # data of applied non-empty NORMAL entries
        self.read_states = []
        self.conf_state = storage.initial_state()[1]
        self.up = True
        self.raw = self._new_rawnode()

    def _new_rawnode(self, applied: int = 0) -> RawNode:
        return RawNode(Config(self.id, self.storage, random.Random(self.id), applied=applied, **self.config))

    @property
    def raft(self):
        return self.raw.raft

    @property
    def role(self) -> Role:
        return self.raw.raft.role

    @property
    def term(self) -> int:
        return self.raw.raft.term

    def restart(self) -> None:
        """Crash and come back from storage (everything persisted survives, nothing else)."""
        snapshot = self.storage.snapshot()
        self.applied = snapshot.data.split(b"\n") if snapshot.data else []
        self.read_states = []
        self.conf_state = self.storage.initial_state()[1]
        self.raw = self._new_rawnode(applied=snapshot.index)

    def snapshot(self, keep: int = 0) -> None:
        """Snapshot the state machine (the applied data) and compact all but `keep` entries."""
        index = self.raw.raft.raft_log.applied
        self.storage.create_snapshot(index, self.conf_state, b"\n".join(self.applied))
        self.storage.compact(index - keep)

    def handle_ready(self, outbox: list) -> None:
        rd = self.raw.ready()
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        outbox.extend(rd.messages)
        if rd.snapshot is not None:
            self.conf_state = rd.snapshot.conf_state
            self.applied = rd.snapshot.data.split(b"\n") if rd.snapshot.data else []
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self.conf_state = self.raw.apply_conf_change(ConfChange.decode(e.data))
            elif e.data:
                self.applied.append(e.data)
        self.read_states.extend(rd.read_states)
        self.raw.advance(rd)


class Cluster:
    def __init__(self, size: int = 3, ids=None, **config):
        self.voters = list(ids or range(1, size + 1))
        self.config = config
        self.nodes: dict[int, Node] = {}
        for i in self.voters:
            self.nodes[i] = Node(i, MemoryStorage(bootstrap_snapshot(self.voters)), **config)
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.delivered: list[Message] = []  # every message delivered, for assertions

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def add_node(self, node_id: int) -> Node:
        """A new, empty node (not yet a voter: propose its ADD_VOTER separately)."""
        node = Node(node_id, MemoryStorage(), **self.config)
        self.nodes[node_id] = node
        return node

    # Network.

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()

    def process_ready(self) -> bool:
        any_ready = False
        for node in self.nodes.values():
            if node.up and node.raw.has_ready():
                node.handle_ready(self.queue)
                any_ready = True
        return any_ready

    def deliver(self, types=None) -> int:
        """Deliver the queued messages (only those of `types` if given); return how many."""
        batch = [m for m in self.queue if types is None or m.type in types]
        self.queue = [m for m in self.queue if not (types is None or m.type in types)]
        for m in batch:
            sender = self.nodes.get(m.frm)
            ok = (m.frm, m.to) not in self.cut and m.to in self.nodes and self.nodes[m.to].up
            if m.type == MessageType.SNAP and sender is not None and sender.up:
                sender.raw.report_snapshot(m.to, ok)
            if ok:
                self.delivered.append(m)
                self.nodes[m.to].raw.step(m)
        return len(batch)

    def stabilize(self, max_rounds: int = 1000) -> None:
        """Persist, send and deliver until nothing moves."""
        for _ in range(max_rounds):
            moved = self.process_ready()
            if not self.queue and not moved:
                return
            self.deliver()
        raise AssertionError("cluster did not stabilize")

    # Time and roles.

    def tick(self, node_id: int | None = None, n: int = 1) -> None:
        for _ in range(n):
            for i, node in self.nodes.items():
                if node.up and (node_id is None or i == node_id):
                    node.raw.tick()

    def run(self, ticks: int) -> None:
        """Let time pass: each tick, every node ticks and the cluster stabilizes."""
        for _ in range(ticks):
            self.tick()
            self.stabilize()

    def elect(self, node_id: int) -> None:
        self.nodes[node_id].raw.campaign()
        self.stabilize()
        assert self.nodes[node_id].role is Role.LEADER

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.up and n.role is Role.LEADER]

    def propose(self, node_id: int, data: bytes) -> None:
        self.nodes[node_id].raw.propose(data)
        self.stabilize()


def new_node(node_id: int = 1, voters=(1, 2, 3), log_terms=(), term: int = 0, **config) -> Node:
    """A node of a cluster of `voters` whose log holds, after the bootstrap snapshot at index 1,
    one entry per element of log_terms (with that term), and whose current term is `term`."""
    storage = MemoryStorage(bootstrap_snapshot(voters))
    storage.append([Entry(term=t, index=i + 2, data=b"e%d" % (i + 2)) for i, t in enumerate(log_terms)])
    storage.set_hard_state(HardState(term=max(term, 1, *log_terms), commit=1))
    config.setdefault("pre_vote", False)
    config.setdefault("check_quorum", False)
    return Node(node_id, storage, **config)


def drain(node: Node) -> list[Message]:
    """Handle the node's Ready (persisting it) and return the messages it would send."""
    out: list[Message] = []
    while node.raw.has_ready():
        node.handle_ready(out)
    return out
