"""The replicated metadata: the state machine Raft applies, and the store the master service uses.

MetaState is deterministic: every master applies the same committed entries in the same order
and ends in the same state. Besides the Namespace it holds
  - the session table: per client_id, the results of its last mutations by seq, so that a
    retried mutation (its reply was lost, or the leader changed) gets the first result instead of
    running twice. It is part of snapshots, so the answer survives restarts and failovers.
  - the members: Raft node id -> (name, raft address), changed only by committed conf changes.

MetaStore is what the service calls: submit() proposes a mutation and waits until it is applied;
query() first makes sure the read is linearizable (a ReadIndex round), then reads; view() gives
the namespace under the state lock for the service's chunk accounting.
"""

import contextlib
import errno
import heapq
import threading
from collections import OrderedDict

from mooseng import wire
from mooseng.errors import FsError
from mooseng.master.namespace import Namespace

# Per client, results are kept for this many of its newest seqs: a client has far fewer calls in
# flight at once (one per thread), so a retry always finds its first result.
SEQ_WINDOW = 1024
# Clients remembered; the least recently active one is forgotten first.
MAX_CLIENTS = 10_000


class NotLeader(Exception):
    """This master cannot take the request now; `leader` is the api address to ask ("" unknown)."""

    def __init__(self, message: str, leader: str = ""):
        super().__init__(message)
        self.leader = leader


class _Seen(dict):
    """seq -> outcome of one client's newest mutations, and a heap of those seqs: the oldest is
    found and dropped in O(log n), where min() over the window cost ~20 us twice per mutation."""

    __slots__ = ("heap",)

    def __init__(self, items=()):
        super().__init__(items)
        self.heap = list(self)
        heapq.heapify(self.heap)

    def add(self, seq: int, done: list) -> None:
        """Record a seq not recorded yet; keep the newest SEQ_WINDOW."""
        self[seq] = done
        heapq.heappush(self.heap, seq)
        if len(self) > SEQ_WINDOW:
            del self[heapq.heappop(self.heap)]


class MetaState:
    """Namespace + session table + members, applied from committed entries only."""

    def __init__(self, members: dict[int, list] | None = None):
        self.ns = Namespace()
        self.sessions: OrderedDict[int, _Seen] = OrderedDict()  # client_id -> {seq: outcome}
        self.members: dict[int, list] = dict(members or {})  # raft id -> [name, raft address]
        self.lock = threading.Lock()  # held while applying and while reading

    def apply(self, entry: dict):
        """Apply one mutation entry; returns the result or raises FsError (state unchanged).

        An entry with (client_id, seq) seen before returns the stored outcome of the first one.
        """
        client_id, seq = entry.get("client_id") or 0, entry.get("seq") or 0
        if client_id:
            seen = self.sessions.get(client_id)
            if seen is not None:
                self.sessions.move_to_end(client_id)
                done = seen.get(seq)
                if done is not None:
                    return _outcome(done)
                if len(seen) >= SEQ_WINDOW and seq <= seen.heap[0]:
                    raise FsError(errno.EIO, f"retry of seq {seq} is older than the dedupe window")
        try:
            result = self.ns.apply(entry)
            done = [0, result]
        except FsError as exc:
            done = [exc.errno, exc.message]
        if client_id:
            seen = self.sessions.get(client_id)
            if seen is None:
                seen = self.sessions[client_id] = _Seen()
            else:
                self.sessions.move_to_end(client_id)
            seen.add(seq, done)
            if len(self.sessions) > MAX_CLIENTS:
                self.sessions.popitem(last=False)
        return _outcome(done)

    def dump(self) -> bytes:
        sessions = [[cid, [[s, d] for s, d in seen.items()]] for cid, seen in self.sessions.items()]
        members = [[rid, name, addr] for rid, (name, addr) in self.members.items()]
        return wire.pack([self.ns.dump(), sessions, members])

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a dump (a snapshot); the caller holds the lock."""
        ns, sessions, members = wire.unpack(data)
        self.ns = Namespace.load(ns)
        self.sessions = OrderedDict((cid, _Seen((s, d) for s, d in seen)) for cid, seen in sessions)
        self.members = {rid: [name, addr] for rid, name, addr in members}


def _outcome(done: list):
    if done[0]:
        raise FsError(done[0], done[1])
    return done[1]


class MetaStore:
    """The service's handle on the replicated metadata (see the module docstring)."""

    def __init__(self, node):
        self._node = node  # raftnode.RaftNode

    def is_leader(self) -> bool:
        return self._node.is_leader()

    def leader_address(self) -> str:
        """The leader's client api address, "" if unknown."""
        return self._node.leader_api()

    @property
    def failure(self) -> BaseException | None:
        return self._node.failure

    def submit(self, entry: dict):
        """Replicate and apply a mutation; its result (or FsError) once it is applied here.
        Raises NotLeader when this master cannot commit it now."""
        try:
            packed = wire.pack(entry)
        except (TypeError, ValueError, OverflowError) as exc:
            raise FsError(errno.EINVAL, f"entry cannot be logged: {exc}") from None
        return self._node.propose(packed)

    def query(self, op: str, args: dict, ctx: dict):
        self._node.read_barrier()
        with self.view() as ns:
            return ns.query(op, args, ctx)

    def recorded(self, client_id: int, seq: int) -> list | None:
        """[errno, message or result] of the mutation (client_id, seq) if it was applied."""
        self._node.read_barrier()
        state = self._node.state
        with state.lock:
            return state.sessions.get(client_id, {}).get(seq)

    @contextlib.contextmanager
    def view(self):
        """Hold the state lock and yield the Namespace; never mutate it, keep the block short."""
        state = self._node.state
        with state.lock:
            yield state.ns

    # --- counters for status and metrics ---

    @property
    def last_index(self) -> int:
        return self._node.applied

    @property
    def synced_index(self) -> int:
        return self._node.storage.last_index()

    @property
    def snapshot_index(self) -> int:
        return self._node.storage.snapshot().index

    @property
    def entries_since_snapshot(self) -> int:
        return self._node.applied - self.snapshot_index

    @property
    def last_snapshot_time(self) -> float | None:
        return self._node.storage.snapshot_time

    @property
    def log_syncs(self) -> int:
        return self._node.storage.syncs
