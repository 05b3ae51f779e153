"""The master's Raft driver: clock, disk and network around the pure mooseng.raft core.

Whoever holds the turn lock owns the RawNode. Work comes through a queue: proposals, read
requests, messages from peers, admin requests. Each turn steps every queued item, ticks when a
tick is due, then handles the Ready as the raft package docstring says: persist (one fdatasync
for all entries of the turn: group commit), send, apply, advance. Proposals waiting in the queue
while the disk syncs become one batch of the next turn.
The thread that queues work runs the turn itself when no other thread runs one (an rpc thread
with a proposal, a sender with acks, the raft server with a peer's appends), and the loop thread
takes what is left once that thread has its answer, and ticks. Handing every item to one loop
thread and back cost two thread switches per mutation (on a lone master ~15% of its CPU per
create); see DESIGN.md "Raft". A follower's turn that answers the leader's call leaves the
entries that call committed to be applied after the reply is sent (exchange, apply_unapplied):
the ack waits for the sync, not for the state machine.

Proposals carry a proposal id (this node's raft id, a counter); when an entry with one of ours
is applied, its waiter gets the result. If this node stops leading, its waiters get NotLeader:
their entries may still commit, which is why clients retry with the same (client_id, seq) and the
state machine deduplicates.

Reads (Raft thesis §6.4): the leader keeps a lease. Every ReadIndex round it runs (one per tick,
and one for each turn's waiting reads while it has no lease) proves that a quorum still followed
it when the round started; no other leader can then be elected for (election_tick - 1) ticks,
since followers ignore vote requests that long after hearing from their leader (check-quorum
stickiness). While that time, cut by LEASE_MARGIN for clock rate differences, has not passed,
the leader reads its own state at once: it applied every entry it acknowledged, and everything
committed before its term. Without a lease, reads wait for a ReadIndex round and the applied
index. Leadership transfer and membership changes (both can elect without stickiness) suspend
the lease for two election timeouts. DESIGN.md has the measurements behind this choice.

Transport (RaftTransport): one rpc.Server on raft_listen with the method `raft`, and one sender
thread per peer that sends every message queued for that peer in one call:
  raft{cluster_id, from, from_name, api, msgs: [[type, to, frm, term, log_term, index,
       [[term, index, type, data]...], commit, reject, reject_hint, snap, context]...]}
  where snap is [index, term, voters] and its data travels in the rpc data section.
A call whose cluster_id is not ours, or whose sender is not a member, is refused with
FAILED_PRECONDITION and logged once per sender.
"""

import hashlib
import itertools
import logging
import queue
import random
import threading
import time
from collections import deque

import msgpack

from mooseng import rpc, wire
from mooseng.errors import FsError
from mooseng.master.metastore import MetaState, NotLeader
from mooseng.master.raftlog import LogWriteError, RaftStorage
from mooseng.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Config,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Role,
    Snapshot,
    bootstrap_snapshot,
)

log = logging.getLogger(__name__)

# Followers campaign 0.8 to 1.6 s after the leader's last heartbeat, drawn in 16 steps of 50 ms.
# With 10 steps of 100 ms (1 to 2 s) two followers drew the same step often enough to split the
# vote (in about 1 failover of 25 in CI), and a split costs a second timeout: 3.4 s once, against
# the 3 s a failover may take. Smaller steps make a split rarer, the lower range makes one cheaper.
TICK_S = 0.05
ELECTION_TICK = 16
HEARTBEAT_TICK = 2
PROPOSAL_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 1.0  # a peer that does not take a batch in this time is reported unreachable
LEASE_MARGIN = 0.9  # fraction of the stickiness time a lease lasts
SNAPSHOT_KEEP = 1000
MAX_QUEUED = 10_000  # messages waiting for one peer
REPLY_WAIT_S = 0.5  # a raft call waits this long for the answers its messages produce  # entries kept behind a snapshot, for followers slightly behind


def raft_id(name: str) -> int:
    """The Raft id of a node name: stable, positive, the same on every master."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=7).digest(), "big") or 1


def parse_peers(spec: str) -> dict[str, str]:
    """'name=host:port,...' -> {name: address}; ValueError naming the bad part."""
    peers = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, addr = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected name=host:port, got {part!r}")
        wire.parse_addr(addr.strip())
        if name.strip() in peers:
            raise ValueError(f"{name.strip()!r} is listed twice")
        peers[name.strip()] = addr.strip()
    return peers


def encode_msg(m: Message) -> list:
    snap = None
    if m.snapshot is not None:
        snap = [m.snapshot.index, m.snapshot.term, list(m.snapshot.conf_state.voters)]
    ents = [[e.term, e.index, int(e.type), e.data] for e in m.entries]
    return [int(m.type), m.to, m.frm, m.term, m.log_term, m.index, ents, m.commit, m.reject, m.reject_hint, snap, m.context]


_MESSAGE_TYPES = {int(t): t for t in MessageType}  # a dict lookup: a fifth of an IntEnum call
_ENTRY_TYPES = {int(t): t for t in EntryType}


def decode_msg(v: list, snap_data: bytes) -> Message:
    """KeyError, TypeError or ValueError if v is malformed."""
    t, to, frm, term, log_term, index, ents, commit, reject, hint, snap, ctx = v
    snapshot = None
    if snap is not None:
        snapshot = Snapshot(snap[0], snap[1], ConfState(tuple(snap[2])), bytes(snap_data))
    types = _ENTRY_TYPES
    return Message(
        _MESSAGE_TYPES[t], to, frm, term, log_term, index,
        [Entry(a, b, types[c], d if type(d) is bytes else bytes(d)) for a, b, c, d in ents],
        commit, reject, hint, snapshot, ctx if type(ctx) is bytes else bytes(ctx),
    )  # fmt: skip


def _unpack_entry(data: bytes):
    """(origin raft id, proposal id, entry) of a NORMAL entry's data: [origin, pid] + entry.

    One unpackb of the two as a 2-array (the byte 0x92 in front): a msgpack.Unpacker zeroes its
    ~40 KB parse stack when made, which cost ~65,000 instructions per applied entry."""
    (origin, pid), entry = msgpack.unpackb(b"\x92" + data, raw=False, strict_map_key=False)
    return origin, pid, entry


def _answers(reply, peer: int, me: int) -> list[Message]:
    """The messages a peer sent back on the reply of a raft call (malformed ones dropped)."""
    try:
        msgs = [decode_msg(v, b"") for v in reply.get("msgs", ())]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("raft: malformed reply messages from raft id %d: %s", peer, exc)
        return []
    return [m for m in msgs if m.frm == peer and m.to == me]


class _Waiter:
    """A caller waiting for a turn's answer. A bare lock, held until done(): half the cost of an
    Event (no Condition, no lock allocated per wait), paid for every proposal and raft call."""

    __slots__ = ("_lock", "finished", "ok", "value", "index")

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self.finished = False
        self.ok = False
        self.value = None
        self.index = 0

    def done(self, ok: bool, value) -> None:
        if not self.finished:
            self.ok, self.value, self.finished = ok, value, True
            self._lock.release()

    def wait(self, timeout_s: float) -> bool:
        if self.finished:
            return True
        if self._lock.acquire(timeout=timeout_s):
            self._lock.release()
            return True
        return False


class RaftNode:
    """One master's Raft member: storage, state machine, Ready loop, transport."""

    def __init__(
        self,
        name: str,
        cluster_id: str,
        peers: dict[str, str],
        api_addr: str,
        data_dir,
        snapshot_every: int,
        join: bool = False,
        tick_s: float = TICK_S,
        election_tick: int = ELECTION_TICK,
    ):
        if name not in peers:
            raise ValueError(f"node {name!r} is not in raft_peers ({', '.join(peers)})")
        self.name = name
        self.id = raft_id(name)
        self.cluster_id = cluster_id
        self.api_addr = api_addr
        self.tick_s = tick_s
        self.election_tick = election_tick
        self.snapshot_every = snapshot_every
        self._join = join
        self.storage = RaftStorage(data_dir, cluster_id)
        self.state = MetaState({raft_id(n): [n, a] for n, a in peers.items()})
        self._initial_members = dict(self.state.members)
        self.applied = 0
        self.conf_state = ConfState()
        self.node: RawNode | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._proposals: dict[int, _Waiter] = {}  # proposal counter -> waiter; in turns only
        self._pids = itertools.count(1)
        self._reads: dict[bytes, list[_Waiter]] = {}  # ReadIndex context -> waiters
        self._read_ready: list[_Waiter] = []  # read index known, waiting for apply
        self._read_ctx = itertools.count(1)
        self._replies: dict[int, list[_Waiter]] = {}  # peer -> exchange() calls stepped this turn
        self._reply_msgs: dict[int, list[Message]] = {}  # peer -> messages for those replies
        self._unapplied: list[Entry] = []  # follower: committed, applied after the reply that acks them
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._turn_lock = threading.Lock()  # held by whichever thread runs a turn (owns the RawNode)
        self._kick = threading.Event()  # wakes the loop thread: work left for it
        self._next_tick = 0.0
        self._started = False
        self.failure: BaseException | None = None
        self.transport: RaftTransport | None = None
        # For status and metrics (written in turns, read anywhere).
        self.role = Role.FOLLOWER
        self.lead = NONE
        self.term = 0
        self._vote = NONE
        self.commit = 0
        self.elections = 0
        self.leader_changes = 0
        self.api_addrs: dict[int, str] = {self.id: api_addr}  # learnt from peers' messages
        self.progress: dict[int, int] = {}  # leader: match index per member, as of status()
        self._serving_from = 0  # leader: applied index from which it may serve
        self._lease_s = (election_tick - 1) * tick_s * LEASE_MARGIN
        self._lease_until = 0.0  # monotonic; reads are served locally before it
        self._no_lease_until = 0.0  # no lease before this (after a transfer or conf change)
        self._read_issued: dict[bytes, float] = {}  # ReadIndex context -> when it was requested
        self.lease_reads = self.index_reads = 0  # reads served each way, for the benchmark

    # --- life cycle ---

    def open(self) -> None:
        """Load storage and the state machine (may take a while for a big namespace)."""
        boot = None
        if not self._join:
            boot = bootstrap_snapshot(list(self.state.members), self.state.dump())
        self.storage.open(boot)
        snap = self.storage.snapshot()
        if snap.index:
            self.state.restore(snap.data)
        self.applied = snap.index
        self.conf_state = snap.conf_state
        self.node = RawNode(
            Config(
                self.id, self.storage, random.Random(), election_tick=self.election_tick,
                heartbeat_tick=HEARTBEAT_TICK, applied=snap.index, broadcast_commit=False,
            )
        )  # fmt: skip
        hs = self.storage.initial_state()[0]
        self.term, self._vote, self.commit = hs.term, hs.vote, hs.commit

    def start(self, transport: "RaftTransport") -> None:
        self.transport = transport
        if self.conf_state.voters == (self.id,):
            self.node.campaign()  # alone: no reason to wait an election timeout
        self._next_tick = time.monotonic() + self.tick_s
        self._started = True
        self._thread = threading.Thread(target=self._loop, name="raft-loop", daemon=True)
        self._thread.start()
        self._kick.set()  # raft calls that came before the start

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._turn_lock.acquire(timeout=10):  # a turn another thread runs ends first
            self._turn_lock.release()
        self.storage.close()

    # --- what the service and the transport call (any thread) ---

    def is_leader(self) -> bool:
        """Leader, and its state holds everything committed before its term (it has applied its
        own first entry): only then may the service read its state and decide on it."""
        return self.role is Role.LEADER and self.applied >= self._serving_from and self.failure is None

    def leader_api(self) -> str:
        """The client api address of another master that leads; "" if none is known (or this
        one leads but cannot serve yet: the caller should retry)."""
        if self.lead == NONE or self.lead == self.id:
            return ""
        return self.api_addrs.get(self.lead, "")

    def propose(self, data: bytes):
        waiter = _Waiter()
        self._submit(("prop", data, waiter), waiter)
        return self._wait(waiter, PROPOSAL_TIMEOUT_S, "the mutation was not committed in time")

    def read_barrier(self) -> None:
        """Return once this node's state holds every write acknowledged before the call."""
        if self.is_leader() and self._no_lease_until < time.monotonic() < self._lease_until:
            self.lease_reads += 1
            return
        self.index_reads += 1
        waiter = _Waiter()
        self._submit(("read", waiter), waiter)
        self._wait(waiter, READ_TIMEOUT_S, "no read index in time")

    def call(self, fn, timeout_s: float = 5.0):
        """Run fn(rawnode) in a turn (admin requests); its result or exception."""
        waiter = _Waiter()
        self._submit(("call", fn, waiter), waiter)
        return self._wait(waiter, timeout_s, "the raft loop did not answer in time")

    def receive(self, msgs: list[Message]) -> None:
        self._submit(("msgs", msgs, None))

    def exchange(self, msgs: list[Message], peer: int) -> list[Message]:
        """Step msgs from peer; return the messages to peer that the loop turn handling them
        produced (persisted first, as any message): they ride back on the reply of the call
        that brought msgs, saving a thread hand-off and a send on each side. A follower's turn
        leaves the entries it learnt were committed for apply_unapplied(), once the reply is
        sent: the leader's next append does not wait for this node's state machine."""
        waiter = _Waiter()
        self._submit(("msgs", msgs, waiter), waiter)
        if waiter.wait(REPLY_WAIT_S) and waiter.ok:
            return waiter.value
        return []

    def has_unapplied(self) -> bool:
        return bool(self._unapplied)

    def apply_unapplied(self) -> None:
        """Apply what a follower's turn left unapplied (any thread; after exchange()'s reply is
        sent). If another thread runs a turn, that turn applies them first thing."""
        if not self._turn_lock.acquire(blocking=False):
            self._kick.set()  # the holder may be past its turn's start: the loop thread's turn
            return
        try:
            if not self._stop.is_set():
                self._turn()
        finally:
            self._turn_lock.release()
        self._drive()

    def report(self, kind: str, node: int, ok: bool = True) -> None:
        self._submit((kind, node, ok))

    def _wait(self, waiter: _Waiter, timeout_s: float, what: str):
        if not waiter.wait(timeout_s):
            raise NotLeader(f"{what} ({timeout_s:g} s)", self.leader_api() if not self.is_leader() else "")
        if waiter.ok:
            return waiter.value
        raise waiter.value

    # --- the Ready loop ---

    def _loop(self) -> None:
        """The clock, and the turns nobody else runs: work queued while a turn ran, once its
        runner had what it came for (a kick), and every tick."""
        while not self._stop.is_set():
            self._kick.wait(max(0.0, self._next_tick - time.monotonic()))
            self._kick.clear()
            with self._turn_lock:
                if self._stop.is_set():
                    return
                self._turn(snapshot=True)
            self._drive()

    def _submit(self, item, waiter: "_Waiter | None" = None) -> None:
        """Queue work for the Ready loop and run the turn in this thread if no other thread runs
        one: an uncontended proposal, ack or raft call then costs no thread hand-off."""
        self._inbox.put(item)
        self._drive(waiter)

    def _drive(self, waiter: "_Waiter | None" = None) -> None:
        """Run turns while work is queued and the turn lock is free. Once `waiter` is done (or
        after one turn without one) what is left goes to the loop thread. No work is lost: a
        thread that queued work and found the lock taken relies on its holder, who looks at the
        queue again after releasing the lock."""
        while self._started and not self._inbox.empty():
            if not self._turn_lock.acquire(blocking=False):
                return
            try:
                if self._stop.is_set():
                    return
                self._turn()
            finally:
                self._turn_lock.release()
            if waiter is None or waiter.finished:
                if not self._inbox.empty():
                    self._kick.set()
                return

    def _turn(self, snapshot: bool = False) -> None:
        """One turn of the Ready loop (the caller holds the turn lock): step everything queued,
        tick when a tick is due, then persist, send, apply and advance every Ready; with
        `snapshot` (the loop thread), take a snapshot when one is due."""
        node = self.node
        if self.failure is not None:
            self._drop_queued()
            return
        try:
            if self._unapplied:
                self._apply_unapplied()
            reads: list[_Waiter] = []
            props: list = []  # (data, waiter)
            while True:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                self._handle(item, reads, props)
            if props:
                self._propose(props)
            if reads:
                self._request_read(reads)
            now = time.monotonic()
            if now >= self._next_tick:
                node.tick()
                self._next_tick = now + self.tick_s
                if self.role is Role.LEADER:
                    self._request_read([])  # renew the lease
            while node.has_ready():
                self._handle_ready(node.ready())
            self._answer_exchanges()
            if snapshot and self._snapshot_due():
                self.take_snapshot()
        except LogWriteError as exc:
            self.failure = exc
        except BaseException as exc:
            log.critical("raft loop failed: %r", exc, exc_info=True)
            self.failure = exc
        if self.failure is not None:
            self._fail_waiters(FsError(5, f"metadata log failed: {self.failure}"))
            self._drop_queued()

    def _snapshot_due(self) -> bool:
        return bool(self.snapshot_every) and self.applied - self.storage.snapshot().index >= self.snapshot_every

    def _drop_queued(self) -> None:
        """After a failure: whatever waits in the queue gets the error (raft calls: no answer)."""
        err = FsError(5, f"metadata log failed: {self.failure}")
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            waiter = item[-1]
            if isinstance(waiter, _Waiter):
                waiter.done(False, err)
        for waiters in self._replies.values():
            for w in waiters:
                w.done(False, err)
        self._replies, self._reply_msgs = {}, {}

    def _handle(self, item, reads: list, props: list) -> None:
        node = self.node
        kind = item[0]
        if kind == "msgs":
            for m in item[1]:
                node.step(m)
            if item[2] is not None:
                self._replies.setdefault(item[1][0].frm, []).append(item[2])
        elif kind == "prop":
            props.append(item[1:])
        elif kind == "read":
            reads.append(item[1])
        elif kind == "call":
            _, fn, waiter = item
            try:
                waiter.done(True, fn(node))
            except Exception as exc:
                waiter.done(False, exc)
        elif kind == "unreachable":
            node.report_unreachable(item[1])
        elif kind == "snap":
            node.report_snapshot(item[1], item[2])

    def _propose(self, props: list) -> None:
        """Propose every mutation of the turn in one step: each follower gets them in one append."""
        pids = [next(self._pids) for _ in props]
        try:
            self.node.propose(*(wire.pack([self.id, pid]) + data for pid, (data, _) in zip(pids, props)))
        except ProposalDropped as exc:
            err = NotLeader(f"not the leader: {exc}", self._api_of(exc.lead))
            for _, waiter in props:
                waiter.done(False, err)
            return
        for pid, (_, waiter) in zip(pids, props):
            self._proposals[pid] = waiter

    def _answer_exchanges(self) -> None:
        """Give each waiting exchange() the messages for its peer from this turn."""
        for peer, waiters in self._replies.items():
            waiters[0].done(True, self._reply_msgs.pop(peer, []))
            for w in waiters[1:]:
                w.done(True, [])
        self._replies = {}
        self._reply_msgs = {}

    def _request_read(self, waiters: list[_Waiter]) -> None:
        ctx = next(self._read_ctx).to_bytes(8, "big")
        try:
            self.node.read_index(ctx)
        except ProposalDropped as exc:
            err = NotLeader(f"not the leader: {exc}", self._api_of(exc.lead))
            for w in waiters:
                w.done(False, err)
            return
        self._reads[ctx] = waiters
        self._read_issued[ctx] = time.monotonic()

    def _api_of(self, node: int) -> str:
        return self.api_addrs.get(node, "") if node != NONE else ""

    def _handle_ready(self, rd) -> None:
        node = self.node
        if self._unapplied:
            self._apply_unapplied()
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        hs = rd.hard_state
        # A leader may send its appends while it writes them itself (thesis §10.2.1): it counts
        # its own copy when appending, but a quorum needs a follower's ack, which this loop
        # handles only in a later turn, after this write is durable. Term and vote are promises
        # and go to disk first.
        early = self.role is Role.LEADER and rd.snapshot is None and (hs is None or (hs.term, hs.vote) == (self.term, self._vote))
        if early:
            self._send(rd.messages)
        if rd.snapshot is not None:
            self.storage.install_snapshot(rd.snapshot)
        self.storage.persist(hs, rd.entries, rd.must_sync)
        if hs is not None:
            self.term, self._vote, self.commit = hs.term, hs.vote, hs.commit
        if not early:
            self._send(rd.messages)
        if rd.snapshot is not None:
            with self.state.lock:
                self.state.restore(rd.snapshot.data)
            self.applied = rd.snapshot.index
            self.conf_state = rd.snapshot.conf_state
            self._fail_proposals()
        committed = rd.committed_entries
        deferrable = self._replies and self.role is Role.FOLLOWER
        if committed and deferrable and all(e.type is EntryType.NORMAL for e in committed):
            # A follower's acks (and this turn's other answers) need its log synced, not its
            # state: these wait until after the reply (exchange()), or until the next turn.
            # Raft has them as applied from advance() on; only conf changes must reach it first.
            self._unapplied = committed
        else:
            for entry in committed:
                self._apply(entry)
        for rs in rd.read_states:
            issued = self._read_issued.pop(rs.context, None)
            if issued is not None and self.role is Role.LEADER:
                self._lease_until = max(self._lease_until, issued + self._lease_s)
            for w in self._reads.pop(rs.context, ()):
                w.index = rs.index
                self._read_ready.append(w)
        if self._read_ready:
            self._release_reads()
        node.advance(rd)
        if self._snapshot_due():
            self._kick.set()  # the loop thread takes it: no peer's call or client's op waits in it

    def _send(self, msgs: list[Message]) -> None:
        """To the peers' senders, or onto the reply of a peer's call this turn answers."""
        out = []
        for m in msgs:
            if m.to in self._replies and m.type is not MessageType.SNAP:
                self._reply_msgs.setdefault(m.to, []).append(m)
            else:
                out.append(m)
        if out:
            self.transport.send(out)

    def _apply(self, entry: Entry) -> None:
        if entry.type is EntryType.CONF_CHANGE:
            cc = ConfChange.decode(entry.data)
            self.conf_state = self.node.apply_conf_change(cc)
            with self.state.lock:
                if cc.type is ConfChangeType.ADD_VOTER:
                    name, _, addr = cc.context.decode().partition("=")
                    self.state.members[cc.node_id] = [name, addr]
                else:
                    self.state.members.pop(cc.node_id, None)
            self.transport.update_members(self.state.members)
            self.suspend_lease()
            log.info("membership changed at index %d: %s %s", entry.index, cc.type.name, cc.context.decode() or cc.node_id)
            if cc.type is ConfChangeType.REMOVE_VOTER and cc.node_id == self.id:
                log.warning("this master was removed from the cluster; it no longer takes part")
        elif entry.data:
            origin, pid, payload = _unpack_entry(entry.data)
            try:
                with self.state.lock:
                    ok, value = True, self.state.apply(payload)
            except FsError as exc:
                ok, value = False, exc
            if origin == self.id:
                waiter = self._proposals.pop(pid, None)
                if waiter is not None:
                    waiter.done(ok, value)
        self.applied = entry.index

    def _apply_unapplied(self) -> None:
        entries, self._unapplied = self._unapplied, []
        for entry in entries:
            self._apply(entry)
        if self._read_ready:
            self._release_reads()

    def _release_reads(self) -> None:
        keep = []
        for w in self._read_ready:
            if w.index <= self.applied:
                w.done(True, None)
            else:
                keep.append(w)
        self._read_ready = keep

    def _on_soft_state(self, ss) -> None:
        if ss.role is not Role.FOLLOWER and self.role in (Role.FOLLOWER, Role.LEADER) and ss.role is not self.role:
            self.elections += 1  # a campaign started (a lone node may be leader by the next Ready)
        if ss.lead != self.lead and ss.lead != NONE:
            self.leader_changes += 1
            log.info("leader is now %s (term %d)", self._name_of(ss.lead), self.node.raft.term)
        was_leader = self.role is Role.LEADER
        self._lease_until = 0.0
        if ss.role is Role.LEADER and not was_leader:
            self._serving_from = self.node.raft.raft_log.last_index()  # this term's no-op entry
        self.role, self.lead = ss.role, ss.lead
        if was_leader and ss.role is not Role.LEADER:
            self._fail_proposals()

    def _name_of(self, node: int) -> str:
        member = self.state.members.get(node)
        return member[0] if member else str(node)

    def _fail_proposals(self) -> None:
        err = NotLeader("leadership changed; retry", self.leader_api())
        self._fail_waiters(err)

    def _fail_waiters(self, err: Exception) -> None:
        waiters = list(self._proposals.values()) + self._read_ready
        for ws in self._reads.values():
            waiters += ws
        self._proposals, self._reads, self._read_ready, self._read_issued = {}, {}, [], {}
        for w in waiters:
            w.done(False, err)

    # --- membership and leadership (admin requests, any thread) ---

    def add_member(self, name: str, addr: str, timeout_s: float = 10.0) -> None:
        """Add a voter (one change at a time); returns once the change is applied here."""
        wire.parse_addr(addr)
        rid = raft_id(name)
        if rid in self.state.members:
            raise ValueError(f"{name!r} is already a member")
        self._change(ConfChange(ConfChangeType.ADD_VOTER, rid, f"{name}={addr}".encode()), lambda: rid in self.conf_state.voters, timeout_s)

    def remove_member(self, name: str, timeout_s: float = 10.0) -> None:
        rid = raft_id(name)
        if rid not in self.state.members:
            raise ValueError(f"{name!r} is not a member")
        if len(self.conf_state.voters) <= 1:
            raise ValueError("cannot remove the last member")
        self._change(ConfChange(ConfChangeType.REMOVE_VOTER, rid), lambda: rid not in self.conf_state.voters, timeout_s)

    def transfer_leadership(self, name: str, timeout_s: float = 10.0) -> None:
        """Hand leadership to member `name`; returns once it leads (as this node sees it)."""
        rid = raft_id(name)
        if rid not in self.conf_state.voters:
            raise ValueError(f"{name!r} is not a member")

        def start(node):
            self.suspend_lease()
            node.transfer_leader(rid)

        self._admin(start)
        self._await(lambda: self.lead == rid, timeout_s, f"{name} did not take over")

    def _change(self, cc: ConfChange, done, timeout_s: float) -> None:
        self._admin(lambda node: node.propose_conf_change(cc))
        self._await(done, timeout_s, "the membership change was not applied")

    def _admin(self, fn) -> None:
        if not self.is_leader():
            raise NotLeader("membership and leadership changes go to the leader", self.leader_api())
        try:
            self.call(fn)
        except ProposalDropped as exc:
            raise NotLeader(f"refused: {exc} (one change at a time)", self._api_of(exc.lead)) from None

    def _await(self, cond, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                raise NotLeader(f"{what} within {timeout_s:g} s", self.leader_api())
            time.sleep(0.02)

    def suspend_lease(self) -> None:
        """A new voter, or a transferee, may win an election without waiting out stickiness:
        no lease reads until that is over (in a turn)."""
        self._lease_until = 0.0
        self._no_lease_until = time.monotonic() + 2 * self.election_tick * self.tick_s

    def take_snapshot(self) -> Snapshot:
        """Snapshot the state machine at the applied index and compact the log (the loop thread, or
        before start)."""
        with self.state.lock:
            data = self.state.dump()
        started = time.monotonic()
        snap = self.storage.take_snapshot(self.applied, self.conf_state, data, SNAPSHOT_KEEP)
        log.info("snapshot at index %d: %d bytes in %.3fs", snap.index, len(data), time.monotonic() - started)
        return snap

    # --- status ---

    def status(self) -> dict:
        members = self.state.members
        try:
            self.progress = self.call(lambda node: {n: p.match for n, p in node.status().progress.items()}, 1.0)
        except NotLeader:
            pass  # the loop is busy or gone: the last known figures
        return {
            "node_id": self.name,
            "raft_id": self.id,
            "cluster_id": self.cluster_id,
            "role": self.role.name.lower(),
            "term": self.term,
            "commit": self.commit,
            "applied": self.applied,
            "leader_id": self._name_of(self.lead) if self.lead != NONE else "",
            "leader_api": self.leader_api(),
            "log_entries": self.storage.log_entries,
            "snapshot_index": self.storage.snapshot().index,
            "snapshot_time": self.storage.snapshot_time or 0.0,
            "elections": self.elections,
            "leader_changes": self.leader_changes,
            "api": self.api_addr,
            "peers": [
                {"node_id": name, "raft_id": rid, "address": addr, "match": self.progress.get(rid)}
                for rid, (name, addr) in sorted(members.items(), key=lambda kv: kv[1][0])
            ],
        }


class RaftTransport:
    """Raft messages between masters over mooseng.rpc (see the module docstring)."""

    def __init__(self, node: RaftNode, listen: str):
        self._node = node
        self._lock = threading.Lock()
        self._members: dict[int, list] = {}
        self._senders: dict[int, _Sender] = {}
        self._refused: set = set()  # (sender, reason) already logged
        self.server = rpc.Server(listen, {"raft": self._receive}, name="raft")
        self.update_members(node.state.members)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(1.0)
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for s in senders:
            s.stop()

    def update_members(self, members: dict[int, list]) -> None:
        with self._lock:
            self._members = {rid: list(v) for rid, v in members.items()}
            for rid, (name, addr) in self._members.items():
                if rid == self._node.id:
                    continue
                sender = self._senders.get(rid)
                if sender is not None and sender.addr != addr:
                    sender.stop()
                    sender = None
                if sender is None:
                    self._senders[rid] = _Sender(self, rid, name, addr)
            for rid in [r for r in self._senders if r not in self._members]:
                self._senders.pop(rid).stop()

    def send(self, msgs: list[Message]) -> None:
        with self._lock:
            for m in msgs:
                sender = self._senders.get(m.to)
                if sender is not None:
                    sender.put(m)
                elif m.type is MessageType.SNAP:
                    self._node.report("snap", m.to, False)

    def _refuse(self, key, message: str):
        if key not in self._refused:
            self._refused.add(key)
            log.error("refused raft messages: %s", message)
        raise rpc.RpcError(rpc.FAILED_PRECONDITION, message)

    def _receive(self, params: dict, data, peer: str):
        node = self._node
        cluster, frm, name = params.get("cluster_id"), params.get("from"), params.get("from_name")
        if cluster != node.cluster_id:
            self._refuse(
                (peer.rpartition(":")[0], "cluster", cluster),
                f"{name!r} at {peer} belongs to cluster {cluster!r}, this is {node.cluster_id!r}",
            )
        with self._lock:
            known = frm in self._members
        if not known:
            self._refuse((frm, "unknown"), f"{name!r} (raft id {frm}) at {peer} is not a member of cluster {cluster!r}")
        try:
            msgs = [decode_msg(v, data) for v in params["msgs"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise rpc.RpcError(rpc.INVALID_ARGUMENT, f"malformed raft messages: {exc}") from None
        if any(m.frm != frm or m.to != node.id for m in msgs):
            raise rpc.RpcError(rpc.INVALID_ARGUMENT, "raft message with a from/to that does not match the call")
        node.api_addrs[frm] = params.get("api", "")
        if not msgs:
            return {"msgs": []}
        reply = {"msgs": [encode_msg(m) for m in node.exchange(msgs, frm)]}
        if node.has_unapplied():
            return rpc.Reply(reply, b"", node.apply_unapplied)
        return reply


class _Sender:
    """Sends every message queued for one peer, in batches, one call in flight."""

    def __init__(self, transport: RaftTransport, rid: int, name: str, addr: str):
        self._transport = transport
        self._node = transport._node
        self.rid, self.name, self.addr = rid, name, addr
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self._stopped = False
        self._client = rpc.Client(addr, timeout_s=SEND_TIMEOUT_S, connect_timeout_s=SEND_TIMEOUT_S)
        self._down = False
        self._thread = threading.Thread(target=self._run, name=f"raft-send-{name}", daemon=True)
        self._thread.start()

    def put(self, m: Message) -> None:
        with self._cv:
            if len(self._queue) >= MAX_QUEUED:
                dropped = self._queue.popleft()  # a peer this far behind is probed again by Raft anyway
                if dropped.type is MessageType.SNAP:
                    self._node.report("snap", self.rid, False)
            self._queue.append(m)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._client.close()

    def _run(self) -> None:
        node = self._node
        base = {"cluster_id": node.cluster_id, "from": node.id, "from_name": node.name, "api": node.api_addr}
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                batch, snap = [], None
                while self._queue:
                    m = self._queue[0]
                    if m.type is MessageType.SNAP:
                        if batch:
                            break
                        snap = self._queue.popleft()
                        batch.append(snap)
                        break
                    batch.append(self._queue.popleft())
            data = snap.snapshot.data if snap is not None else b""
            try:
                reply, _ = self._client.call("raft", {**base, "msgs": [encode_msg(m) for m in batch]}, data)
                answers = _answers(reply, self.rid, node.id)
            except rpc.RpcError as exc:
                if not self._down:
                    if exc.status == rpc.FAILED_PRECONDITION:
                        log.error("raft: %s at %s refused our messages: %s", self.name, self.addr, exc)
                    else:
                        log.warning("raft: cannot reach %s at %s: %s", self.name, self.addr, exc.message)
                    self._down = True
                node.report("unreachable", self.rid)
                if snap is not None:
                    node.report("snap", self.rid, False)
                if exc.status != rpc.UNAVAILABLE:
                    time.sleep(0.5)  # refused (another cluster): do not spin
                continue
            if self._down:
                log.info("raft: %s at %s is reachable again", self.name, self.addr)
                self._down = False
            if snap is not None:
                node.report("snap", self.rid, True)
            if answers:
                node.receive(answers)
