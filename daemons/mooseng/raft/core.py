"""The Raft algorithm as a pure state machine (after etcd-io/raft's raft.go).

step(message) and tick() are the only inputs. Outputs accumulate in `msgs`, `read_states` and
the log's unstable part, which RawNode hands to the caller as a Ready. Each role has one step
function and one tick function; the role (and with it those functions, the term and the
leader's bookkeeping) changes only in become_follower/pre_candidate/candidate/leader.

Section numbers refer to the Raft paper (Ongaro & Ousterhout 2014) and, where marked, to
Ongaro's thesis (2014).
"""

import random
from dataclasses import dataclass
from typing import Sequence

from . import quorum
from .log import RaftLog
from .messages import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)
from .progress import Progress, ProgressState, ProgressTracker
from .readonly import ReadOnly
from .storage import CompactedError, SnapshotTemporarilyUnavailableError, Storage

MT = MessageType
_VOTE_RESPONSE = {MT.VOTE: MT.VOTE_RESP, MT.PRE_VOTE: MT.PRE_VOTE_RESP}


class ProposalDropped(Exception):
    """A proposal (or read/transfer request) was not accepted here; nothing was appended.

    `lead` is the leader to redirect to, NONE if it is unknown or the request should simply be
    retried later (a leadership transfer or a conf change is in progress).
    """

    def __init__(self, reason: str, lead: int = NONE):
        super().__init__(reason)
        self.lead = lead


@dataclass
class Config:
    """Parameters of one Raft node. Times are in ticks; the caller decides how long a tick is."""

    id: int
    storage: Storage
    rng: random.Random  # the only source of randomness: election timeouts
    election_tick: int = 10  # followers campaign after [election_tick, 2*election_tick) silent ticks
    heartbeat_tick: int = 1  # a leader heartbeats every heartbeat_tick ticks
    applied: int = 0  # index the application's state reflects at start (0: the log's start)
    max_entries_per_msg: int = 256
    max_bytes_per_msg: int | None = 1 << 20  # entry data per append (at least one entry is sent)
    max_inflight_msgs: int = 256  # appends in flight per follower while replicating
    max_committed_bytes_per_ready: int | None = 16 << 20  # entry data to apply per Ready
    check_quorum: bool = True  # leaders step down without a quorum (thesis §6.2); followers are sticky
    pre_vote: bool = True  # candidates first ask whether they could win (thesis §9.6)
    # A leader whose commit index advances sends every follower an append at once, empty if it
    # has no new entries (etcd's behaviour: followers apply promptly). False: followers learn it
    # from the next append or heartbeat, which saves each follower a message, a Ready and an
    # answer per batch of entries under a steady stream of proposals.
    broadcast_commit: bool = True

    def validate(self) -> None:
        if self.id <= NONE:
            raise ValueError(f"raft: id must be positive, got {self.id}")
        if self.heartbeat_tick <= 0:
            raise ValueError("raft: heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("raft: election_tick must be greater than heartbeat_tick")
        if self.max_entries_per_msg <= 0 or self.max_inflight_msgs <= 0:
            raise ValueError("raft: max_entries_per_msg and max_inflight_msgs must be positive")


class Raft:
    """One node's Raft state. Use it through RawNode."""

    def __init__(self, config: Config):
        config.validate()
        self.id = config.id
        self.rng = config.rng
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.broadcast_commit = config.broadcast_commit
        self.max_entries_per_msg = config.max_entries_per_msg
        self.max_bytes_per_msg = config.max_bytes_per_msg

        self.raft_log = RaftLog(config.storage, config.max_committed_bytes_per_ready)
        hard_state, conf_state = config.storage.initial_state()
        self.tracker = ProgressTracker(config.max_inflight_msgs)
        self.tracker.reset(conf_state.voters, self.raft_log.last_index(), self.id)

        # Persistent (HardState): term only grows; vote is for `term`.
        self.term = 0
        self.vote = NONE
        # Volatile.
        self.role = Role.FOLLOWER
        self.lead = NONE  # the leader of `term` as far as we know
        self.msgs: list[Message] = []  # outbox, handed out by RawNode.ready()
        self.read_states: list[ReadState] = []  # answered ReadIndex requests, likewise
        self.election_elapsed = 0  # leader: ticks since the last check-quorum; else since last heard
        self.heartbeat_elapsed = 0  # leader only
        self.randomized_election_timeout = 0  # in [election_timeout, 2 * election_timeout)
        # Leader only: no conf change may be proposed while applied < pending_conf_index.
        self.pending_conf_index = 0
        self.lead_transferee = NONE  # leader only: transfer in progress; proposals are refused
        self.read_only = ReadOnly()  # leader only
        # Leader only: ReadIndex requests that wait for the first commit of this term.
        self.pending_read_index_messages: list[Message] = []

        if hard_state != HardState():
            self._load_state(hard_state)
        if config.applied:
            # Applied means committed, even if the commit index on disk is older (it is
            # written lazily, see Ready.must_sync).
            self.raft_log.commit_to(config.applied)
            self.raft_log.applied_to(config.applied)
        self.become_follower(self.term, NONE)

    def _load_state(self, hs: HardState) -> None:
        log = self.raft_log
        # Everything before the first stored entry is committed, whatever the (lazily written)
        # commit index on disk says.
        commit = max(hs.commit, log.committed)
        if commit > log.last_index():
            raise RuntimeError(f"hard state commit {hs.commit} is past the last index {log.last_index()}")
        log.committed = commit
        self.term = hs.term
        self.vote = hs.vote

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.raft_log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    # Role changes: the only places that assign self.role, self._step and self._tick.

    def become_follower(self, term: int, lead: int) -> None:
        self._step = self._step_follower
        self._tick = self._tick_election
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        """Ask for votes without raising the term: a node that cannot win (partitioned, or with a
        stale log) then never forces the cluster into a new term (thesis §9.6)."""
        if self.role is Role.LEADER:
            raise RuntimeError("raft: invalid transition leader -> pre-candidate")
        self._step = self._step_candidate
        self._tick = self._tick_election
        self.tracker.reset_votes()
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise RuntimeError("raft: invalid transition leader -> candidate")
        self._step = self._step_candidate
        self._tick = self._tick_election
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        if self.role is Role.FOLLOWER:
            raise RuntimeError("raft: invalid transition follower -> leader")
        self._step = self._step_leader
        self._tick = self._tick_heartbeat
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        me = self.tracker.progress[self.id]
        me.become_replicate()
        me.recent_active = True  # check-quorum never counts the leader as silent
        # Entries after the applied index may hold a conf change that we cannot see as pending:
        # take no conf change until all of them are applied.
        self.pending_conf_index = self.raft_log.last_index()
        # §5.4.2: a leader commits entries of earlier terms only by committing one of its own.
        self._append_entry([Entry()])

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(self.election_timeout)
        self.lead_transferee = NONE
        self.tracker.reset_votes()
        self.tracker.reset(list(self.tracker.progress), self.raft_log.last_index(), self.id)
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_read_index_messages = []

    # Inputs.

    def tick(self) -> None:
        self._tick()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM))
            # A transfer should finish within an election timeout; give up and take proposals.
            if self.role is Role.LEADER:
                self.lead_transferee = NONE
        if self.role is Role.LEADER and self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT))

    def step(self, m: Message) -> None:
        """Handle one message: term bookkeeping common to all roles, then the role's step."""
        if m.term == 0:
            pass  # local message (or a forwarded READ_INDEX, which has no term)
        elif m.term > self.term:
            if m.type == MT.VOTE or m.type == MT.PRE_VOTE:
                heard_recently = self.lead != NONE and self.election_elapsed < self.election_timeout
                if self.check_quorum and heard_recently and m.context != CAMPAIGN_TRANSFER:
                    # Leader stickiness (§6, thesis §4.2.3): we heard from a leader within the
                    # minimum election timeout, so ignore this without raising our term.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted for our future term; we raise our term only when we win
            elif m.type == MT.APP or m.type == MT.HEARTBEAT or m.type == MT.SNAP:
                self.become_follower(m.term, m.frm)  # §5.1: a newer term, and its leader
            else:
                self.become_follower(m.term, NONE)  # §5.1: a newer term, leader unknown
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and (m.type == MT.HEARTBEAT or m.type == MT.APP):
                # A leader deposed while partitioned would otherwise never learn the new term:
                # with pre-vote or check-quorum we never raised our term just for its sake.
                self._send(Message(MT.APP_RESP, to=m.frm))
            elif m.type == MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return  # §5.1: stale term, ignore

        t = m.type
        if t == MT.HUP:
            self._hup(transfer=False)
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step(m)

    def _handle_vote_request(self, m: Message) -> None:
        # §5.2: one vote per term, first come first served; a pre-vote binds nothing.
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        # §5.4.1: only for a candidate whose log is at least as up to date as ours.
        if can_vote and self.raft_log.is_up_to_date(m.index, m.log_term):
            self._send(Message(_VOTE_RESPONSE[m.type], to=m.frm, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(_VOTE_RESPONSE[m.type], to=m.frm, term=self.term, reject=True))

    # Elections.

    def _promotable(self) -> bool:
        """Only a voter with its snapshot persisted may campaign."""
        return self.id in self.tracker.progress and self.raft_log.unstable.snapshot is None

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self._has_unapplied_conf_changes():
            return  # campaign under the membership that is about to apply, not the old one
        if self.pre_vote and not transfer:
            self._campaign(MT.PRE_VOTE)
        else:
            self._campaign(MT.VOTE, CAMPAIGN_TRANSFER if transfer else b"")

    def _has_unapplied_conf_changes(self) -> bool:
        log = self.raft_log
        lo = max(log.applied + 1, log.first_index())
        if log.committed < lo:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in log.slice(lo, log.committed + 1, None))

    def _campaign(self, vote_type: MessageType, context: bytes = b"") -> None:
        if vote_type == MT.PRE_VOTE:
            self.become_pre_candidate()
            term = self.term + 1  # the term we would campaign for
        else:
            self.become_candidate()
            term = self.term
        self.tracker.record_vote(self.id, True)
        if self.tracker.tally_votes() is quorum.VoteResult.WON:
            self._won_election(vote_type)  # we are the only voter
            return
        index, log_term = self.raft_log.last_index(), self.raft_log.last_term()
        for node in self.tracker.progress:
            if node != self.id:
                self._send(Message(vote_type, to=node, term=term, index=index, log_term=log_term, context=context))

    def _won_election(self, vote_type: MessageType) -> None:
        if vote_type == MT.PRE_VOTE:
            self._campaign(MT.VOTE)
        else:
            self.become_leader()
            self._bcast_append()

    # Role step functions.

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MT.PROP or t == MT.TRANSFER_LEADER:
            raise ProposalDropped("not the leader", self.lead)
        elif t == MT.READ_INDEX:
            if m.frm != NONE:
                return  # forwarded by a node that thinks we lead; it will time out and retry
            if self.lead == NONE:
                raise ProposalDropped("no leader to serve the read", NONE)
            self._send(Message(MT.READ_INDEX, to=self.lead, context=m.context))
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        elif t == MT.TIMEOUT_NOW:
            self._hup(transfer=True)  # thesis §3.10: the leader says our log is complete

    def _step_candidate(self, m: Message) -> None:
        """Pre-candidates and candidates; they differ only in which vote responses count."""
        t = m.type
        if t == MT.APP:
            self.become_follower(m.term, m.frm)  # §5.2: someone won this term
            self._handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == (MT.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MT.VOTE_RESP):
            self.tracker.record_vote(m.frm, not m.reject)
            result = self.tracker.tally_votes()
            if result is quorum.VoteResult.WON:
                self._won_election(MT.PRE_VOTE if self.role is Role.PRE_CANDIDATE else MT.VOTE)
            elif result is quorum.VoteResult.LOST:
                self.become_follower(self.term, NONE)
        elif t == MT.PROP or t == MT.TRANSFER_LEADER:
            raise ProposalDropped("not the leader", NONE)
        elif t == MT.READ_INDEX and m.frm == NONE:
            raise ProposalDropped("no leader to serve the read", NONE)
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))  # asked while a follower

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self._bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            active = self.tracker.quorum_active()
            for node, pr in self.tracker.progress.items():
                if node != self.id:
                    pr.recent_active = False  # each round starts from silence
            if not active:
                self.become_follower(self.term, NONE)
            return
        if t == MT.PROP:
            self._propose(m)
            return
        if t == MT.READ_INDEX:
            self._handle_read_index(m)
            return

        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return  # not a voter (any more)
        if t == MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                self._handle_append_reject(m, pr)
            else:
                self._handle_append_ack(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                # Acks may have been lost; free one slot per heartbeat so replication resumes
                # (a follower missing entries then rejects and we probe).
                pr.inflights.free_first_one()
            if pr.match < self.raft_log.last_index() or pr.state is ProgressState.PROBE:
                self._maybe_send_append(m.frm, True)
            if m.context:
                self._handle_read_ack(m)
        elif t == MT.SNAP_STATUS:
            if pr.state is not ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0  # failed: probe from match again
            pr.become_probe()
            # Sent: wait for the follower's answer. Failed: wait a heartbeat before retrying.
            pr.probe_sent = True
        elif t == MT.UNREACHABLE:
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()  # appends were probably lost; stop streaming blind
        elif t == MT.TRANSFER_LEADER:
            self._handle_transfer_leader(m.frm, pr)

    # Leader: proposals and replication.

    def _propose(self, m: Message) -> None:
        if self.id not in self.tracker.progress:
            raise ProposalDropped("this leader was removed from the cluster", NONE)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}", NONE)
        last = self.raft_log.last_index()
        for i, e in enumerate(m.entries):
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.raft_log.applied:
                    raise ProposalDropped("a conf change is pending", NONE)
                cc = ConfChange.decode(e.data)
                if cc.type == ConfChangeType.REMOVE_VOTER and set(self.tracker.progress) == {cc.node_id}:
                    raise ValueError(f"raft: cannot remove the last voter {cc.node_id}")
                self.pending_conf_index = last + i + 1
        self._append_entry(m.entries)
        self._bcast_append()

    def _append_entry(self, entries: Sequence[Entry]) -> None:
        index = self.raft_log.last_index()
        for e in entries:
            index += 1
            e.term = self.term
            e.index = index
        self.raft_log.append(entries)
        # Counting our own copy before the caller persists it is safe: the caller persists the
        # entries before it sends the appends that could make them committed elsewhere.
        me = self.tracker.progress.get(self.id)
        if me is not None:
            me.maybe_update(index)
        self._maybe_commit()

    def _maybe_commit(self) -> bool:
        return self.raft_log.maybe_commit(self.tracker.committed(), self.term)

    def _committed(self) -> None:
        """The commit index advanced: tell everyone (see Config.broadcast_commit), and serve
        reads that waited for it."""
        if self.pending_read_index_messages:
            waiting, self.pending_read_index_messages = self.pending_read_index_messages, []
            for req in waiting:
                self._handle_read_index(req)
        if self.broadcast_commit:
            self._bcast_append()
        else:
            for node in self.tracker.progress:
                if node != self.id:
                    self._maybe_send_append(node, False)  # what flow control held back

    def _bcast_append(self) -> None:
        for node in self.tracker.progress:
            if node != self.id:
                self._maybe_send_append(node, True)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send `to` the entries from its next index, or a snapshot if they were compacted.

        An empty append still carries the commit index. False if nothing was sent.
        """
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        log = self.raft_log
        prev = pr.next - 1
        try:
            prev_term = log.term(prev)
            entries = log.entries(pr.next, self.max_entries_per_msg, self.max_bytes_per_msg)
        except CompactedError:
            return self._maybe_send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        m = Message(MT.APP, to=to, index=prev, log_term=prev_term, entries=entries, commit=log.committed)
        self._send(m)
        if entries:
            pr.sent_entries(entries[-1].index)
        return True

    def _maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # it may be down; do not ship a snapshot into the void
        try:
            snapshot = self.raft_log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False
        pr.become_snapshot(snapshot.index)
        self._send(Message(MT.SNAP, to=to, snapshot=snapshot))
        return True

    def _handle_append_ack(self, m: Message, pr: Progress) -> None:
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match + 1 >= self.raft_log.first_index():
                # Caught up to where our log can serve it (the snapshot landed, or appends did).
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._committed()
        elif was_paused:
            self._maybe_send_append(m.frm, True)
        # Pipelining: fill the window while there is something to send.
        while self._maybe_send_append(m.frm, False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.raft_log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=m.frm))

    def _handle_append_reject(self, m: Message, pr: Progress) -> None:
        # Fast backtracking (the optimization at the end of §5.3): the follower's hint names its
        # last entry that can match; skip our entries whose term is too new for it to have.
        next_probe = m.reject_hint
        if m.log_term > 0:
            next_probe, _ = self.raft_log.find_conflict_by_term(m.reject_hint, m.log_term)
        if pr.maybe_decr_to(m.index, next_probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._maybe_send_append(m.frm, True)

    def _bcast_heartbeat(self) -> None:
        ctx = self.read_only.last_pending_context()
        committed = self.raft_log.committed
        for node, pr in self.tracker.progress.items():
            if node != self.id:
                # Never tell a follower to commit past what it is known to have.
                self._send(Message(MT.HEARTBEAT, to=node, commit=min(pr.match, committed), context=ctx))

    # Leader: ReadIndex (thesis §6.4) and leadership transfer (thesis §3.10).

    def _handle_read_index(self, m: Message) -> None:
        if set(self.tracker.progress) == {self.id}:
            self._respond_read_index(m, self.raft_log.committed)
        elif self.raft_log.term(self.raft_log.committed) != self.term:
            # Until this term commits an entry our commit index may be behind the cluster's.
            self.pending_read_index_messages.append(m)
        else:
            self.read_only.add_request(self.raft_log.committed, m)
            self.read_only.recv_ack(self.id, m.context)
            self._bcast_heartbeat()

    def _handle_read_ack(self, m: Message) -> None:
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is None:
            return
        if quorum.vote_result(self.tracker.progress, dict.fromkeys(acks, True)) is not quorum.VoteResult.WON:
            return
        for status in self.read_only.advance(m.context):
            self._respond_read_index(status.request, status.index)

    def _respond_read_index(self, req: Message, index: int) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.context))
        else:
            self._send(Message(MT.READ_INDEX_RESP, to=req.frm, index=index, context=req.context))

    def _handle_transfer_leader(self, transferee: int, pr: Progress) -> None:
        if self.lead_transferee == transferee or transferee == self.id:
            return
        self.lead_transferee = transferee
        self.election_elapsed = 0  # the transfer gets one election timeout
        if pr.match == self.raft_log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=transferee))
        else:
            self._maybe_send_append(transferee, True)  # TIMEOUT_NOW follows its catch-up ack

    # Followers.

    def _handle_append_entries(self, m: Message) -> None:
        log = self.raft_log
        if m.index < log.committed:
            self._send(Message(MT.APP_RESP, to=m.frm, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MT.APP_RESP, to=m.frm, index=last_new))
            return
        # §5.3: reject; hint at the last entry that could match so the leader skips ahead.
        hint, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        resp = Message(MT.APP_RESP, to=m.frm, index=m.index, reject=True, reject_hint=hint, log_term=hint_term)
        self._send(resp)

    def _handle_heartbeat(self, m: Message) -> None:
        self.raft_log.commit_to(m.commit)
        self._send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        if self._restore(m.snapshot):
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.raft_log.last_index()))
        else:
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.raft_log.committed))

    def _restore(self, snapshot: Snapshot) -> bool:
        """Install a snapshot unless it is old news; True if the log was replaced."""
        log = self.raft_log
        if snapshot.index <= log.committed:
            return False
        if log.match_term(snapshot.index, snapshot.term):
            log.commit_to(snapshot.index)  # we have its last entry, so the whole prefix
            return False
        log.restore(snapshot)
        self.tracker.reset(snapshot.conf_state.voters, log.last_index(), self.id)
        return True

    # Membership.

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Switch to the membership after a committed conf change entry (§6, one server at a
        time, in force once applied). Returns the new membership for the caller to store."""
        progress = self.tracker.progress
        node = cc.node_id
        if cc.type == ConfChangeType.ADD_VOTER:
            if node not in progress:
                self.tracker.add(node, self.raft_log.last_index())
        elif node in progress:
            del progress[node]
        if self.role is Role.LEADER:
            if self.id not in progress:
                # §6: a leader outside the new configuration steps down once it is committed.
                self.become_follower(self.term, NONE)
            else:
                if self._maybe_commit():  # a smaller quorum may already hold more
                    self._committed()
                else:
                    for peer in progress:
                        if peer != self.id:
                            # Probe a new voter at once; others only if they have news.
                            self._maybe_send_append(peer, peer == node)
                if self.lead_transferee not in progress:
                    self.lead_transferee = NONE
        return self.tracker.voters()

    # Output.

    def _send(self, m: Message) -> None:
        m.frm = self.id
        if m.term == 0 and m.type != MT.READ_INDEX:
            m.term = self.term
        self.msgs.append(m)
