"""What the leader knows about each voter's log, and how it paces appends to it."""

from collections import deque
from enum import IntEnum

from . import quorum
from .messages import ConfState


class ProgressState(IntEnum):
    PROBE = 0  # `next` is a guess: send one append, wait for the answer (or a heartbeat reply)
    REPLICATE = 1  # `next` is optimistic: stream appends, at most `max_inflight` unacknowledged
    SNAPSHOT = 2  # a snapshot is on its way: send nothing until it is reported or acknowledged


class Inflights:
    """Last indexes of the appends sent in REPLICATE and not yet acknowledged, oldest first.

    Bounding them bounds the leader's memory and the follower's queue; acknowledging index i
    frees every append that ended at or before i (acknowledgements are cumulative).
    """

    __slots__ = ("_last_indexes", "capacity")

    def __init__(self, capacity: int):
        self._last_indexes: deque[int] = deque()  # strictly increasing
        self.capacity = capacity

    def add(self, last_index: int) -> None:
        self._last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        q = self._last_indexes
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def reset(self) -> None:
        self._last_indexes.clear()


class Progress:
    """The leader's view of one follower.

    Invariants: match < next; in PROBE at most one append is unanswered (probe_sent); in
    SNAPSHOT pending_snapshot > 0 and no append is sent; inflights is empty outside REPLICATE.
    """

    __slots__ = ("match", "next", "state", "pending_snapshot", "recent_active", "probe_sent", "inflights")

    def __init__(self, next_index: int, max_inflight: int, match: int = 0):
        self.match = match  # highest index known to be in the follower's log
        self.next = next_index  # index of the next entry to send
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0  # SNAPSHOT: index of the snapshot being sent
        # Heard from since the last check-quorum round; snapshots go only to active followers.
        self.recent_active = False
        self.probe_sent = False  # PROBE: an append is unanswered, wait before sending another
        self.inflights = Inflights(max_inflight)

    def __repr__(self) -> str:
        return f"Progress({self.state.name} match={self.match} next={self.next})"

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        """After a rejection, an unreachable report or a snapshot: find the match again."""
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """The follower has entries up to index; False if that is old news (a stale reply)."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        if self.next <= index:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected the append after `rejected`; it may match up to match_hint.

        False if the rejection is stale: it answers an append we already know the outcome of.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1  # a known-good point; the caller switches to PROBE
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int) -> None:
        """An append carrying entries up to last_index was sent."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        """Whether an append must wait (probe unanswered, window full, snapshot in flight)."""
        state = self.state
        if state is ProgressState.REPLICATE:
            return self.inflights.full()
        if state is ProgressState.PROBE:
            return self.probe_sent
        return True


class ProgressTracker:
    """The voters, the leader's progress for each, and the votes of the current election."""

    def __init__(self, max_inflight: int):
        self.max_inflight = max_inflight
        self.progress: dict[int, Progress] = {}  # keys are exactly the voters
        self.votes: dict[int, bool] = {}  # votes received in this (pre-)election

    def voters(self) -> ConfState:
        return ConfState(tuple(sorted(self.progress)))

    def reset(self, voters, last_index: int, self_id: int) -> None:
        """Fresh progress for every voter: nothing known to match, probe from the end."""
        self.progress = {
            v: Progress(last_index + 1, self.max_inflight, last_index if v == self_id else 0) for v in voters
        }

    def add(self, node: int, last_index: int) -> None:
        """A new voter: probe it from our end; count it active so that check-quorum gives it
        a round to answer."""
        pr = Progress(last_index + 1, self.max_inflight)
        pr.recent_active = True
        self.progress[node] = pr

    def committed(self) -> int:
        return quorum.committed_index(self.progress, {v: p.match for v, p in self.progress.items()})

    def quorum_active(self) -> bool:
        active = {v: p.recent_active for v, p in self.progress.items()}
        return quorum.vote_result(self.progress, active) is quorum.VoteResult.WON

    def record_vote(self, node: int, granted: bool) -> None:
        """Only the first answer of each node counts (a duplicate cannot change it)."""
        self.votes.setdefault(node, granted)

    def tally_votes(self) -> quorum.VoteResult:
        return quorum.vote_result(self.progress, self.votes)

    def reset_votes(self) -> None:
        self.votes = {}
