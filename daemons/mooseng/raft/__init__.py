"""Raft consensus for the metadata masters, as a pure state machine (after etcd-io/raft).

The package does no I/O, reads no clock, starts no thread and draws randomness only from the
seeded rng in its Config. The caller (the master's replication loop) owns the network, the disk
and the timer, and drives a RawNode:

1. Start. A founding member of a new cluster starts from storage holding
   bootstrap_snapshot(voters, empty_state); a node that will be added later starts from empty
   storage and is sent a snapshot once the leader has applied its ADD_VOTER. On restart, load
   storage from disk: Storage.initial_state() returns the HardState and the membership as of
   Config.applied (see Storage). Then RawNode(Config(id, storage, rng, ...)).
2. Feed it. Call tick() every tick interval (e.g. 100 ms; election_tick and heartbeat_tick count
   these). Call step(m) for every message received from a peer, after the transport has checked
   that it belongs to this cluster (cluster ids are the transport's business).
3. Whenever has_ready(), take rd = ready() and, in this order:
   a. If rd.snapshot: persist it; it replaces every stored entry up to its index.
   b. Append rd.entries to the stored log, replacing any stored entries from rd.entries[0].index
      on, and persist rd.hard_state if not None. If rd.must_sync, make both durable (fsync)
      now. Term, vote and entries are promises: no message may leave before they are durable.
   c. Send rd.messages, in any order, on a lossy network if need be (Raft retries). For every
      SNAP message call report_snapshot(to, ok) when its transfer ends or fails; call
      report_unreachable(to) when a peer cannot be reached.
   d. Load rd.snapshot into the state machine, then apply rd.committed_entries in order. For a
      CONF_CHANGE entry, call apply_conf_change(ConfChange.decode(entry.data)) and keep the
      ConfState it returns with the state (a snapshot must carry it). Empty NORMAL entries are
      new leaders' no-ops: skip them.
   e. For each rd.read_states item, serve the read waiting on its context once the applied
      index reaches its index.
   f. Call advance(rd). Nothing else may be called between ready() and advance().
4. Snapshots. When the log grows long, take a snapshot of the state machine at the applied
   index with its ConfState, store it, and compact the stored log up to (at most) that index.
   Followers that lag behind the compacted part are sent the snapshot.
5. Requests. propose(data), propose_conf_change(cc), read_index(ctx) and transfer_leader(id) on
   a node that cannot take them raise ProposalDropped: redirect the client to err.lead (or
   retry later if it is NONE). Acceptance is not commitment; wait for the entry to be applied.

Features: leader election with randomized timeouts, pre-vote, check-quorum with leader
stickiness, pipelined and batched replication with fast backtracking, snapshots, ReadIndex,
leadership transfer, and single-server membership changes (only one pending at a time, in force
when applied, as in etcd).
"""

from .core import Config, ProposalDropped
from .messages import (
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
from .rawnode import PeerStatus, RawNode, Ready, Status
from .storage import (
    CompactedError,
    MemoryStorage,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailableError,
    Storage,
    StorageError,
    UnavailableError,
    bootstrap_snapshot,
)

__all__ = [
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "PeerStatus",
    "ProposalDropped",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "Status",
    "Storage",
    "StorageError",
    "UnavailableError",
    "bootstrap_snapshot",
]
