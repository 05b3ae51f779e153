"""The leader's pending ReadIndex requests (Raft thesis §6.4).

A read may be served at the commit index the leader had when the request arrived, once a
heartbeat round sent after that proves a majority still follows this leader: then no other
leader can have committed anything the read would miss.
"""

from collections import deque
from dataclasses import dataclass, field

from .messages import Message


@dataclass(slots=True)
class ReadIndexStatus:
    request: Message  # frm is the follower that forwarded it, or NONE/the leader for a local one
    index: int  # the leader's commit index when the request arrived
    acks: set[int] = field(default_factory=set)  # nodes that answered a heartbeat carrying it


class ReadOnly:
    """Requests in arrival order, keyed by their context (the caller's unique request id).

    A heartbeat carries the newest context; an acknowledgement of it confirms every older
    request too, since their heartbeats were sent no later.
    """

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: deque[bytes] = deque()  # same keys as pending, oldest first

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.context
        if ctx not in self.pending:
            self.pending[ctx] = ReadIndexStatus(m, index)
            self.queue.append(ctx)

    def recv_ack(self, node: int, ctx: bytes) -> set[int] | None:
        """Record that node answered the heartbeat for ctx; the set of acks, None if unknown."""
        status = self.pending.get(ctx)
        if status is None:
            return None
        status.acks.add(node)
        return status.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Dequeue and return every request up to and including ctx (now confirmed)."""
        if ctx not in self.pending:
            return []
        done = []
        while True:
            key = self.queue.popleft()
            done.append(self.pending.pop(key))
            if key == ctx:
                return done

    def last_pending_context(self) -> bytes:
        return self.queue[-1] if self.queue else b""
