"""RawNode: the caller's handle on Raft, and the Ready it hands out (etcd-io/raft rawnode.go)."""

from dataclasses import dataclass, field

from .core import Config, Raft
from .messages import (
    LOCAL_MESSAGES,
    ConfChange,
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
from .progress import ProgressState


@dataclass(slots=True)
class Ready:
    """Everything the caller must do before the next ready(), in the order of the package
    docstring; then it calls advance(rd)."""

    soft_state: SoftState | None  # None: unchanged
    hard_state: HardState | None  # None: unchanged; else persist it
    entries: list[Entry]  # persist (append, replacing any stored entries from entries[0].index)
    snapshot: Snapshot | None  # persist, and load into the state machine
    committed_entries: list[Entry]  # apply, in order (they may include some of `entries`)
    messages: list[Message]  # send only after the above is persisted
    read_states: list[ReadState]
    must_sync: bool  # whether the writes must be made durable (fsync) before sending


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    conf_state: ConfState
    progress: dict[int, PeerStatus] = field(default_factory=dict)  # leader only


class RawNode:
    """A Raft node driven by the caller: no threads, no clock, no I/O."""

    def __init__(self, config: Config):
        self.raft = Raft(config)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()

    # Inputs.

    def tick(self) -> None:
        """Advance logical time by one tick (elections and heartbeats are counted in ticks)."""
        self.raft.tick()

    def step(self, m: Message) -> None:
        """Handle a message received from a peer."""
        if m.type in LOCAL_MESSAGES:
            raise ValueError(f"raft: {m.type.name} is local and cannot come from the network")
        self.raft.step(m)

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled), as if the election timer fired."""
        self.raft.step(Message(MessageType.HUP))

    def propose(self, *data: bytes) -> None:
        """Append each data, in order, to the log if this node leads. Raises ProposalDropped
        otherwise (then none is appended). Several at once go to each follower in one append.

        Acceptance is not commitment: the entry may still be lost if leadership changes before
        it commits, so the caller matches proposals to committed entries itself (e.g. by an id
        inside data) and retries on timeout.
        """
        self.raft.step(Message(MessageType.PROP, entries=[Entry(data=d) for d in data]))

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose adding or removing one voter. Raises ProposalDropped if not the leader or a
        conf change is still pending (proposed but not yet applied by this leader)."""
        entry = Entry(type=EntryType.CONF_CHANGE, data=cc.encode())
        self.raft.step(Message(MessageType.PROP, entries=[entry]))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Call when applying a committed CONF_CHANGE entry; store the returned membership with
        the state it belongs to (snapshots need it)."""
        return self.raft.apply_conf_change(cc)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; a ReadState with this context comes out in a later Ready.

        context must be unique among outstanding requests. A follower forwards the request to
        its leader; it raises ProposalDropped if it knows no leader. A request lost on the way
        (leader change, dropped message) never answers, so the caller needs a timeout.
        """
        self.raft.step(Message(MessageType.READ_INDEX, context=context))

    def transfer_leader(self, transferee: int) -> None:
        """Leader only: stop taking proposals, bring transferee up to date, then make it campaign
        at once. Given up after an election timeout; ignored if transferee is not a voter.
        Raises ProposalDropped on a non-leader."""
        self.raft.step(Message(MessageType.TRANSFER_LEADER, frm=transferee))

    def report_unreachable(self, node: int) -> None:
        """The transport failed to send to node: stop streaming appends to it, probe instead."""
        self.raft.step(Message(MessageType.UNREACHABLE, frm=node))

    def report_snapshot(self, node: int, ok: bool) -> None:
        """The transport finished sending a SNAP message to node (ok=False: it failed).

        Required for every SNAP message: until then the leader sends node nothing else.
        """
        self.raft.step(Message(MessageType.SNAP_STATUS, frm=node, reject=not ok))

    # Output.

    def has_ready(self) -> bool:
        # Called after every input by busy callers: compare fields, build nothing.
        r = self.raft
        log = r.raft_log
        hard = self._prev_hard
        soft = self._prev_soft
        return bool(
            r.msgs
            or r.read_states
            or log.unstable.entries
            or log.unstable.snapshot is not None
            or log.has_next_committed_entries()
            or r.term != hard.term
            or r.vote != hard.vote
            or log.committed != hard.commit
            or r.lead != soft.lead
            or r.role is not soft.role
        )

    def ready(self) -> Ready:
        """The work to do now. Call advance(rd) when done, before calling anything else."""
        r = self.raft
        log = r.raft_log
        soft = r.soft_state()
        hard = r.hard_state()
        prev_hard = self._prev_hard
        entries = log.unstable_entries()
        snapshot = log.unstable.snapshot
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=log.next_committed_entries(),
            messages=r.msgs,
            read_states=r.read_states,
            # Term and vote are promises to others, entries may be counted in a quorum; a lost
            # commit index is only found again.
            must_sync=bool(entries)
            or snapshot is not None
            or hard.term != prev_hard.term
            or hard.vote != prev_hard.vote,
        )
        r.msgs = []
        r.read_states = []
        self._prev_soft = soft
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller has persisted, sent and applied everything in rd."""
        log = self.raft.raft_log
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot.index)
            log.applied_to(max(log.applied, rd.snapshot.index))
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)

    def status(self) -> Status:
        r = self.raft
        progress = {}
        if r.role is Role.LEADER:
            progress = {n: PeerStatus(p.match, p.next, p.state) for n, p in r.tracker.progress.items()}
        return Status(r.id, r.hard_state(), r.soft_state(), r.raft_log.applied, r.tracker.voters(), progress)
