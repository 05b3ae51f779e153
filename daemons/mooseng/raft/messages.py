"""The values that cross the boundary between Raft and its caller: messages, entries, snapshots
and the small records the caller persists or reads.

Messages and entries are plain slotted records, not frozen ones, because they are built on every
proposal and every RPC and frozen dataclasses cost a setattr hook per field. They are immutable by
convention: once handed to Raft or returned in a Ready, nobody changes them (the simulator
delivers one Message object several times to model duplication).
"""

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Sequence

NONE = 0
"""Node id meaning "nobody" (no vote, no known leader); real node ids are positive."""

CAMPAIGN_TRANSFER = b"raft:transfer"
"""Context of the vote requests of a leadership transfer: voters grant them even while they
still hear from the old leader (leader stickiness would otherwise refuse them)."""


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class MessageType(IntEnum):
    """What a Message means and which of its fields are used.

    Local types are made by RawNode methods and never cross the network; RawNode.step refuses
    them. For the rest, `index`/`log_term` are:
      APP           index/log_term of the entry before `entries`; `commit` = leader's commit index
      APP_RESP      index = last index known to match (or the rejected `index` when reject);
                    reject_hint/log_term = follower's guess of the last matching index and its term
      VOTE, PRE_VOTE  index/log_term of the candidate's last entry; `term` is the term it campaigns
                    for (for PRE_VOTE one more than its real term, which it does not raise yet)
      HEARTBEAT     commit = min(follower's match, leader's commit); context = pending ReadIndex
      READ_INDEX    context = the caller's request id; term 0 (a follower forwards it as is)
      READ_INDEX_RESP  index = the read index for `context`
      SNAP          snapshot
    """

    # Local.
    HUP = 0  # start an election
    BEAT = 1  # leader: broadcast heartbeats
    PROP = 2  # propose entries
    CHECK_QUORUM = 3  # leader: step down unless a quorum was recently active
    TRANSFER_LEADER = 4  # leader: hand over to `frm` (the transferee, as in etcd)
    UNREACHABLE = 5  # transport could not reach `frm`
    SNAP_STATUS = 6  # transport finished sending a snapshot to `frm`; reject = it failed
    # Network.
    APP = 10
    APP_RESP = 11
    VOTE = 12
    VOTE_RESP = 13
    PRE_VOTE = 14
    PRE_VOTE_RESP = 15
    SNAP = 16
    HEARTBEAT = 17
    HEARTBEAT_RESP = 18
    TIMEOUT_NOW = 19  # transferee: campaign now, bypassing pre-vote and leader stickiness
    READ_INDEX = 20  # local, or forwarded by a follower to its leader
    READ_INDEX_RESP = 21


LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.PROP,
        MessageType.CHECK_QUORUM,
        MessageType.TRANSFER_LEADER,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1  # data is ConfChange.encode()


@dataclass(slots=True)
class Entry:
    """One log entry; data is opaque to Raft (an empty NORMAL entry is a new leader's no-op)."""

    term: int = 0
    index: int = 0
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class ConfChangeType(IntEnum):
    ADD_VOTER = 0
    REMOVE_VOTER = 1


_CONF_CHANGE = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """Add or remove one voter; carried in a CONF_CHANGE entry, applied when committed."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""  # for the application, e.g. the new node's address

    def encode(self) -> bytes:
        return _CONF_CHANGE.pack(self.type, self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> "ConfChange":
        kind, node_id = _CONF_CHANGE.unpack_from(data)
        return cls(ConfChangeType(kind), node_id, bytes(data[_CONF_CHANGE.size :]))


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership in force at some log index."""

    voters: tuple[int, ...] = ()  # sorted, no duplicates


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The application's state after applying entries 1..index; replaces that part of the log.

    index 0 means "no snapshot" (a log that was never compacted).
    """

    index: int = 0
    term: int = 0  # term of entry `index`
    conf_state: ConfState = field(default_factory=ConfState)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must find again after a restart: it promised not to forget term and vote."""

    term: int = 0
    vote: int = NONE  # whom this node voted for in `term`
    commit: int = 0  # may be persisted lazily: losing it only delays applying


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state for the application's information (metrics, redirects); never persisted."""

    lead: int = NONE
    role: Role = Role.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """Answer to read_index(context): reads are linearizable once applied index >= index."""

    index: int
    context: bytes


@dataclass(slots=True)
class Message:
    """One Raft message. `frm`/`to` are node ids; a cluster id, if any, belongs to the transport."""

    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: Sequence[Entry] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
