"""Deterministic randomized simulation of a Raft cluster, with the safety properties checked
after every step.

One seed fixes everything: cluster size, knobs, the schedule of messages, ticks, client
requests and faults. The network delays (in ticks), reorders, drops and duplicates messages and
can be partitioned. Nodes crash and restart: a crash loses the RawNode (unstable entries,
unsent messages, everything in memory); a power loss also loses writes that were not fsynced
(the simulator writes without fsync exactly when Ready.must_sync is False). Nodes also crash
half-way through a Ready (after persisting, or after sending). Storage is a MemoryStorage the
simulator writes only as a Ready tells it to.

Checked after every step (Raft paper, Figure 3):
- election safety: at most one leader per term;
- log matching: an (index, term) pair names one entry, always preceded by the same term, so two
  logs agreeing on an entry agree on everything before it;
- leader completeness: a new leader holds every entry known committed, and current leaders
  hold every newly committed entry of an earlier term;
- state machine safety: every node applies the same entry at each index (checked through a
  running hash of the applied entries, which snapshots carry);
- and: a node never votes twice in one term, even across restarts; Ready.must_sync is set
  whenever term, vote, entries or a snapshot change; a ReadIndex answer is at least the highest
  commit index known anywhere when the read was requested (linearizability).
At the end the network heals and every node restarts; within a bounded number of ticks a leader
must exist and commit one more proposal (liveness).
"""

import heapq
import random
import zlib
from collections import Counter, deque

from mooseng.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    EntryType,
    MemoryStorage,
    MessageType,
    ProposalDropped,
    RawNode,
    Role,
    bootstrap_snapshot,
)


class Violation(AssertionError):
    pass


def _sm_data(applied_hash: int) -> bytes:
    return str(applied_hash).encode()


def _sm_hash(data: bytes) -> int:
    return int(data) if data else 0


class SimNode:
    """A node's disk (storage, and which hard state is durable) and, while up, its RawNode."""

    def __init__(self, node_id: int, storage: MemoryStorage):
        self.id = node_id
        self.storage = storage
        self.synced_hs = storage.initial_state()[0]  # what survives a power loss
        self.raw: RawNode | None = None
        self.incarnation = 0
        # State machine: index of the last applied entry, running CRC of all applied entries.
        self.sm_index = 0
        self.sm_hash = 0
        self.conf_state = None
        self.seen_commit = 0  # checker: commit index already recorded
        self.leader_term = 0  # checker: term in which completeness was checked as leader


class Simulation:
    def __init__(self, seed: int, steps: int | None = None):
        self.seed = seed
        rng = self.rng = random.Random(seed)
        self.size = 3 if seed % 2 == 0 else 5
        self.steps = steps if steps is not None else (500 if self.size == 3 else 700)
        # Knobs, drawn once per seed.
        self.pre_vote = seed % 8 != 5
        self.check_quorum = seed % 8 != 3
        self.broadcast_commit = seed // 8 % 2 == 0
        self.election_tick = rng.choice((5, 8, 10))
        self.heartbeat_tick = rng.choice((1, 2))
        self.node_config = dict(
            election_tick=self.election_tick,
            heartbeat_tick=self.heartbeat_tick,
            max_entries_per_msg=rng.choice((1, 3, 64)),
            max_bytes_per_msg=rng.choice((None, 8, 1024)),
            max_inflight_msgs=rng.choice((1, 4, 64)),
            max_committed_bytes_per_ready=rng.choice((None, 16)),
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            broadcast_commit=self.broadcast_commit,
        )
        self.p_drop = rng.choice((0.0, 0.02, 0.1))
        self.p_dup = rng.choice((0.0, 0.02, 0.05))
        self.max_delay = rng.choice((0, 1, 2))
        self.p_reorder = rng.choice((0.05, 0.2, 0.5))
        self.p_tick = rng.choice((0.05, 0.1, 0.2))
        self.p_fault = rng.choice((0.05, 0.1))
        self.conf_changes = rng.random() < 0.5
        # Node size+1 starts outside the cluster, to be added by a conf change.
        self.universe = list(range(1, self.size + 2 if self.conf_changes else self.size + 1))

        self.now = 0
        # Messages as (msg, sender id, sender incarnation): deliverable now (oldest first, or any
        # with probability p_reorder), or waiting in a heap of (deliver_at, seq, envelope).
        self.due: list[tuple] = []
        self.later: list[tuple] = []
        self.seq = 0
        self.dirty: set[int] = set()  # nodes that may have a Ready
        self.group: dict[int, int] = {}  # partition group per node; absent = 0
        self.next_value = 0
        self.trace: deque = deque(maxlen=60)
        self.stats: Counter = Counter()  # what this seed exercised (see test_sim_exercises_every_feature)
        # Checker state.
        self.step_no = 0
        self.leader_of_term: dict[int, int] = {}
        self.entry_ids: dict[tuple[int, int], tuple] = {}  # (index, term) -> (type, data, prev term)
        self.committed_terms: dict[int, int] = {}  # index -> term of the entry committed there
        self.max_commit = 0
        self.applied_hash: dict[int, int] = {1: 0}  # index -> state machine hash after it
        self.votes: dict[tuple[int, int], int] = {}  # (node, term) -> persisted vote
        self.read_floor: dict[bytes, int] = {}  # ReadIndex context -> commit known at request

        founders = list(range(1, self.size + 1))
        self.nodes: dict[int, SimNode] = {}
        for i in self.universe:
            storage = MemoryStorage(bootstrap_snapshot(founders) if i in founders else None)
            self.nodes[i] = SimNode(i, storage)
            self._start(self.nodes[i])

    # Faults and lifecycle.

    def _start(self, node: SimNode) -> None:
        node.incarnation += 1
        snap = node.storage.snapshot()  # the state machine restarts from it
        node.raw = RawNode(
            Config(
                node.id,
                node.storage,
                random.Random(self.rng.getrandbits(32)),
                applied=snap.index,
                **self.node_config,
            )
        )
        node.sm_index = snap.index
        node.sm_hash = _sm_hash(snap.data)
        node.conf_state = node.storage.initial_state()[1]
        node.seen_commit = 0
        node.leader_term = 0

    def _crash(self, node: SimNode, power_loss: bool) -> None:
        self.trace.append((self.step_no, "crash", node.id, power_loss))
        self.stats["power loss" if power_loss else "crash"] += 1
        node.raw = None
        self.dirty.discard(node.id)
        if power_loss:
            node.storage.set_hard_state(node.synced_hs)

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    # Ready handling: the caller's duties, in order, with optional crash points.

    def _handle_ready(self, node: SimNode, crash_after: str | None = None) -> None:
        raw = node.raw
        rd = raw.ready()
        storage = node.storage
        prev_hs = storage.initial_state()[0]
        hs = rd.hard_state
        needs_sync = bool(rd.entries) or rd.snapshot is not None or (
            hs is not None and (hs.term != prev_hs.term or hs.vote != prev_hs.vote)
        )
        if needs_sync and not rd.must_sync:
            self._fail(f"node {node.id}: Ready changes term/vote/entries/snapshot but must_sync is False")
        if hs is not None and hs.vote != NONE:
            v = self.votes.setdefault((node.id, hs.term), hs.vote)
            if v != hs.vote:
                self._fail(f"node {node.id} voted for {v} and {hs.vote} in term {hs.term}")
        # a+b. Persist.
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if hs is not None:
            storage.set_hard_state(hs)
        if rd.must_sync:
            node.synced_hs = storage.initial_state()[0]
        if crash_after == "persist":
            self._crash(node, power_loss=self.rng.random() < 0.5)
            return
        # c. Send.
        for m in rd.messages:
            delay = self.rng.randint(0, self.max_delay)
            if self.rng.random() < 0.01:
                delay += 3 * self.election_tick  # a very late message
            self._send((m, node.id, node.incarnation), delay)
        if crash_after == "send":
            self._crash(node, power_loss=self.rng.random() < 0.5)
            return
        # d. Apply.
        if rd.snapshot is not None:
            self._install(node, rd.snapshot.index, _sm_hash(rd.snapshot.data))
            node.conf_state = rd.snapshot.conf_state
            self.stats["snapshot installed"] += 1
        for e in rd.committed_entries:
            if e.index != node.sm_index + 1:
                self._fail(f"node {node.id} applies {e.index} after {node.sm_index}")
            h = zlib.crc32(e.data, zlib.crc32(b"%d %d %d" % (node.sm_hash, e.term, e.type)))
            self._install(node, e.index, h)
            if e.type == EntryType.CONF_CHANGE:
                node.conf_state = raw.apply_conf_change(ConfChange.decode(e.data))
                self.stats["conf change applied"] += 1
        # e. Reads.
        for rs in rd.read_states:
            floor = self.read_floor.get(rs.context)
            if floor is not None and rs.index < floor:
                self._fail(f"node {node.id}: read {rs.context!r} at {rs.index}, but {floor} committed before")
            self.stats["read served"] += 1
        # f.
        raw.advance(rd)

    def _install(self, node: SimNode, index: int, sm_hash: int) -> None:
        expected = self.applied_hash.setdefault(index, sm_hash)
        if expected != sm_hash:
            self._fail(f"node {node.id}: state machine at index {index} differs from another node's")
        node.sm_index = index
        node.sm_hash = sm_hash

    # Network.

    def _send(self, envelope: tuple, delay: int) -> None:
        if delay == 0:
            self.due.append(envelope)
        else:
            self.seq += 1
            heapq.heappush(self.later, (self.now + delay, self.seq, envelope))

    def _deliver_next(self) -> SimNode | None:
        """Deliver the oldest due message, or with probability p_reorder any due message."""
        due = self.due
        k = self.rng.randrange(len(due)) if self.rng.random() < self.p_reorder else 0
        return self._deliver(due.pop(k))

    def _deliver(self, envelope: tuple) -> SimNode | None:
        m, src, inc = envelope
        dst = self.nodes[m.to]
        lost = (
            dst.raw is None
            or self.group.get(src, 0) != self.group.get(m.to, 0)
            or self.rng.random() < self.p_drop
        )
        if not lost and self.rng.random() < self.p_dup:
            self._send(envelope, self.rng.randint(0, self.max_delay + 2))
        sender = self.nodes[src]
        if m.type == MessageType.SNAP and sender.raw is not None and sender.incarnation == inc:
            sender.raw.report_snapshot(m.to, not lost)
            self._check(sender)
        if lost:
            self.stats["message lost"] += 1
            return None
        self.stats[m.type.name] += 1
        self.trace.append((self.step_no, "deliver", m))
        dst.raw.step(m)
        return dst

    # The schedule.

    def run(self) -> None:
        try:
            for self.step_no in range(self.steps):
                self._chaos_step()
            self._heal_and_check_liveness()
        except Violation:
            raise
        except Exception as e:  # a crash inside Raft is a failure of this seed too
            raise Violation(self._report(f"{type(e).__name__}: {e}")) from e

    def _chaos_step(self) -> None:
        rng = self.rng
        if rng.random() < self.p_fault:
            self._fault_or_request()
            return
        if rng.random() < self.p_tick:
            self._tick_all()
            return
        if self.dirty and (not self.due or rng.random() < 0.5):
            node = self.nodes[rng.choice(sorted(self.dirty))]
            r = rng.random()
            crash_after = "persist" if r < 0.003 else "send" if r < 0.006 else None
            self._handle_ready(node, crash_after)
            self._check(node)
        elif self.due:
            node = self._deliver_next()
            if node is not None:
                self._check(node)
        else:
            self._tick_all()

    def _tick_all(self) -> None:
        self.now += 1
        later = self.later
        while later and later[0][0] <= self.now:
            self.due.append(heapq.heappop(later)[2])
        for node in self.up_nodes():
            if self.rng.random() < 0.95:  # clocks drift: sometimes a tick is missed
                node.raw.tick()
                self._check(node)

    def _fault_or_request(self) -> None:
        rng = self.rng
        up = self.up_nodes()
        down = [n for n in self.nodes.values() if n.raw is None]
        r = rng.random()
        if r < 0.45:
            if up:
                # Clients mostly find the leader (they follow redirects), sometimes not.
                leaders = [n for n in up if n.raw.raft.role is Role.LEADER]
                node = rng.choice(leaders if leaders and rng.random() < 0.8 else up)
                for _ in range(rng.choice((1, 1, 3, 8))):
                    self._propose(node)
        elif r < 0.55:
            if up:
                self._read(rng.choice(up))
        elif r < 0.65:
            if up:
                self._snapshot(rng.choice(up))
        elif r < 0.70:
            if up:
                self._crash(rng.choice(up), power_loss=rng.random() < 0.5)
        elif r < 0.80:
            if down:
                node = rng.choice(down)
                self.trace.append((self.step_no, "restart", node.id))
                self.stats["restart"] += 1
                self._start(node)
                self._check(node)
        elif r < 0.84:
            self.group = {n: rng.randrange(2) for n in self.nodes}
            self.trace.append((self.step_no, "partition", dict(self.group)))
            self.stats["partition"] += 1
        elif r < 0.89:
            self.group = {}
            self.trace.append((self.step_no, "heal"))
        elif r < 0.93:
            if up:
                leaders = [n for n in up if n.raw.raft.role is Role.LEADER]
                node = rng.choice(leaders if leaders and rng.random() < 0.8 else up)
                target = rng.choice(self.universe)
                self.trace.append((self.step_no, "transfer", node.id, target))
                try:
                    node.raw.transfer_leader(target)
                except ProposalDropped:
                    pass
                self._check(node)
        elif self.conf_changes:
            leaders = [n for n in up if n.raw.raft.role is Role.LEADER]
            if leaders:
                self._conf_change(rng.choice(leaders))

    def _propose(self, node: SimNode) -> None:
        self.next_value += 1
        try:
            node.raw.propose(b"v%d" % self.next_value)
        except ProposalDropped:
            return
        self.trace.append((self.step_no, "propose", node.id, self.next_value))
        self.stats["proposal accepted"] += 1
        self._check(node)

    def _read(self, node: SimNode) -> None:
        self.next_value += 1
        ctx = b"r%d" % self.next_value
        try:
            node.raw.read_index(ctx)
        except ProposalDropped:
            return
        self.read_floor[ctx] = self.max_commit
        self.trace.append((self.step_no, "read", node.id, ctx, self.max_commit))
        self._check(node)

    def _snapshot(self, node: SimNode) -> None:
        storage = node.storage
        if node.sm_index <= storage.snapshot().index:
            return
        storage.create_snapshot(node.sm_index, node.conf_state, _sm_data(node.sm_hash))
        # Keep a few entries sometimes, so that both appends and snapshots catch followers up.
        keep = self.rng.choice((0, 0, 2, 5))
        if node.sm_index - keep >= storage.first_index():
            storage.compact(node.sm_index - keep)
        self.trace.append((self.step_no, "snapshot", node.id, node.sm_index))

    def _conf_change(self, leader: SimNode) -> None:
        voters = set(leader.raw.status().conf_state.voters)
        outside = [n for n in self.universe if n not in voters]
        if outside and (len(voters) <= self.size - 1 or self.rng.random() < 0.5):
            cc = ConfChange(ConfChangeType.ADD_VOTER, self.rng.choice(outside))
        elif len(voters) > 2:
            cc = ConfChange(ConfChangeType.REMOVE_VOTER, self.rng.choice(sorted(voters)))
        else:
            return
        try:
            leader.raw.propose_conf_change(cc)
        except ProposalDropped:
            return
        self.trace.append((self.step_no, "conf change", leader.id, cc))
        self._check(leader)

    def _heal_and_check_liveness(self) -> None:
        self.step_no = self.steps
        self.group = {}
        self.p_drop = self.p_dup = 0.0
        for node in self.nodes.values():
            if node.raw is None:
                self._start(node)
        final = None  # (leader, term, index) of the final proposal
        for _ in range(40 * self.election_tick):
            self.step_no += 1
            self._settle()
            leader = self._newest_leader()
            if leader is not None:
                raft = leader.raw.raft
                if final is None or final[:2] != (leader, raft.term):
                    final = None
                    try:
                        leader.raw.propose(b"final")
                        final = (leader, raft.term, raft.raft_log.last_index())
                    except ProposalDropped:
                        pass
                elif raft.raft_log.committed >= final[2]:
                    if raft.raft_log.term(final[2]) != raft.term:
                        self._fail("a leader lost its own entry")
                    return
            self._tick_all()
        self._fail("liveness: no leader committed a proposal after the network healed")

    def _settle(self) -> None:
        """Persist and deliver in the order sent until quiet (a healed network: round trips
        are much shorter than a tick). Bounded, in case something keeps talking."""
        for _ in range(100):
            if not self.dirty and not self.due:
                return
            for node_id in sorted(self.dirty):
                node = self.nodes[node_id]
                self._handle_ready(node)
                self._check(node)
            batch, self.due = self.due, []
            for envelope in batch:
                node = self._deliver(envelope)
                if node is not None:
                    self._check(node)

    def _newest_leader(self) -> SimNode | None:
        """The leader of the highest term (removed nodes may sit in higher terms, leaderless)."""
        leaders = [n for n in self.up_nodes() if n.raw.raft.role is Role.LEADER]
        return max(leaders, key=lambda n: n.raw.raft.term, default=None)

    # Invariants.

    def _check(self, node: SimNode) -> None:
        if node.raw is None:
            self.dirty.discard(node.id)
            return
        if node.raw.has_ready():
            self.dirty.add(node.id)
        else:
            self.dirty.discard(node.id)
        raft = node.raw.raft
        log = raft.raft_log
        # Election safety.
        if raft.role is Role.LEADER:
            first = self.leader_of_term.setdefault(raft.term, node.id)
            if first != node.id:
                self._fail(f"two leaders in term {raft.term}: {first} and {node.id}")
            if node.leader_term != raft.term:
                node.leader_term = raft.term
                self.stats["leader elected"] += 1
                self._check_completeness(node, range(log.first_index(), self.max_commit + 1))
        # Log matching, for every entry as it enters a log (all do, through the unstable part).
        unstable = log.unstable
        if unstable.entries:
            prev_term = log.term(unstable.offset - 1)
            for e in unstable.entries:
                ident = (e.type, e.data, prev_term)
                if self.entry_ids.setdefault((e.index, e.term), ident) != ident:
                    self._fail(f"node {node.id}: two different entries at index {e.index} term {e.term}")
                prev_term = e.term
        # Commit: one entry per index, and leaders of later terms hold it.
        committed = log.committed
        if committed > node.seen_commit:
            lo = max(node.seen_commit + 1, log.first_index())
            node.seen_commit = committed
            fresh = []
            for i in range(lo, committed + 1):
                t = log.term(i)
                if self.committed_terms.setdefault(i, t) != t:
                    first = self.committed_terms[i]
                    self._fail(f"node {node.id}: committed term {t} at {i}, another node term {first}")
                fresh.append(i)
            if committed > self.max_commit:
                self.max_commit = committed
            for other in self.up_nodes():
                r = other.raw.raft
                if r.role is Role.LEADER and other.leader_term == r.term:
                    self._check_completeness(other, fresh)

    def _check_completeness(self, leader: SimNode, indexes) -> None:
        raft = leader.raw.raft
        log = raft.raft_log
        first = log.first_index()
        for i in indexes:
            t = self.committed_terms.get(i)
            if t is None or t > raft.term or i < first:
                continue  # unknown, newer than this leader, or inside its snapshot
            if i > log.last_index() or log.term(i) != t:
                self._fail(f"leader {leader.id} of term {raft.term} lacks committed entry {i} (term {t})")

    def _fail(self, what: str) -> None:
        raise Violation(self._report(what))

    def _report(self, what: str) -> str:
        lines = [f"seed {self.seed} step {self.step_no}: {what}", "last events:"]
        lines += [f"  {ev}" for ev in self.trace]
        lines.append(f"reproduce with RAFT_SIM_SEED={self.seed}")
        return "\n".join(lines)


def run_seed(seed: int, steps: int | None = None) -> None:
    Simulation(seed, steps).run()
