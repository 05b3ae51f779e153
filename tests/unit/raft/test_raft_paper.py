"""Tests tied to sentences of the Raft paper (Ongaro & Ousterhout, "In Search of an
Understandable Consensus Algorithm", extended version), section by section.

As in the paper, pre-vote and check-quorum are off here (they are extensions from the thesis,
tested in test_raft_scenarios.py). Every log starts with the bootstrap snapshot at index 1, so
the paper's index i is our index i + 1 where it matters.
"""

import random

import pytest
from harness import Cluster, drain, new_node

from mooseng.raft import NONE, Config, MemoryStorage, Message, MessageType, RawNode, Role
from mooseng.raft.messages import Entry

MT = MessageType


def make_leader(node, term_votes=(2,)):
    node.raw.campaign()
    drain(node)
    for v in term_votes:
        node.raw.step(Message(MT.VOTE_RESP, to=node.id, frm=v, term=node.term))
    assert node.role is Role.LEADER
    return drain(node)


def ack_noop(node, followers=(2, 3)):
    """The followers accept the new leader's no-op: they leave probing for replication."""
    noop = node.raft.raft_log.last_index()
    for f in followers:
        node.raw.step(Message(MT.APP_RESP, to=node.id, frm=f, term=node.term, index=noop))
    drain(node)


def make_candidate(node):
    node.raw.campaign()
    assert node.role is Role.CANDIDATE
    return drain(node)


# §5.1 Raft basics


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_update_term_from_message(role):
    """"If one server's current term is smaller than the other's, then it updates its current
    term to the larger value. If a candidate or leader discovers that its term is out of date,
    it immediately reverts to follower state." """
    node = new_node(1)
    if role is Role.CANDIDATE:
        make_candidate(node)
    elif role is Role.LEADER:
        make_leader(node)
    node.raw.step(Message(MT.APP, to=1, frm=2, term=10, index=1, log_term=1))
    assert (node.term, node.role, node.raft.lead) == (10, Role.FOLLOWER, 2)


def test_reject_stale_term_message():
    """"If a server receives a request with a stale term number, it rejects the request." """
    node = new_node(1, log_terms=(2,), term=2)
    node.raw.step(Message(MT.APP, to=1, frm=2, term=1, index=2, log_term=2, entries=[Entry(1, 3)]))
    assert node.raft.raft_log.last_index() == 2
    assert drain(node) == []


# §5.2 Leader election


def test_start_as_follower():
    """"When servers start up, they begin as followers." """
    node = new_node(1)
    assert node.role is Role.FOLLOWER


def test_leader_bcast_beat():
    """"Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries) to all
    followers in order to maintain their authority." """
    node = new_node(1, heartbeat_tick=2)
    make_leader(node)
    node.raw.tick()
    assert drain(node) == []
    node.raw.tick()
    beats = drain(node)
    assert sorted((m.type, m.to, m.term) for m in beats) == [(MT.HEARTBEAT, 2, 2), (MT.HEARTBEAT, 3, 2)]
    assert all(m.commit == 0 for m in beats)  # nothing is known to match yet


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE])
def test_starts_election_on_timeout(role):
    """"If a follower receives no communication over a period of time called the election
    timeout, then it assumes there is no viable leader and begins an election ... a follower
    increments its current term and transitions to candidate state. It then votes for itself and
    issues RequestVote RPCs in parallel to each of the other servers." And: "each candidate will
    time out and start a new election by incrementing its term." """
    node = new_node(1, log_terms=(1, 1), election_tick=10)
    if role is Role.CANDIDATE:
        make_candidate(node)
    term = node.term
    for _ in range(20):
        node.raw.tick()
    assert (node.role, node.term, node.raft.vote) == (Role.CANDIDATE, term + 1, 1)
    rd_msgs = drain(node)
    assert sorted((m.type, m.to, m.term, m.index, m.log_term) for m in rd_msgs) == [
        (MT.VOTE, 2, term + 1, 3, 1),
        (MT.VOTE, 3, term + 1, 3, 1),
    ]


def test_vote_for_self_is_persisted_before_requests_leave():
    """Figure 2, "Persistent state on all servers: currentTerm, votedFor (updated on stable
    storage before responding to RPCs)": the Ready that carries the vote requests also carries
    the vote, marked must_sync."""
    node = new_node(1)
    node.raw.campaign()
    rd = node.raw.ready()
    assert rd.hard_state.vote == 1 and rd.must_sync
    assert {m.type for m in rd.messages} == {MT.VOTE}


@pytest.mark.parametrize(
    "size, votes, role",
    [
        (1, {}, Role.LEADER),
        (3, {2: True, 3: True}, Role.LEADER),
        (3, {2: True}, Role.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, Role.LEADER),
        (5, {2: True, 3: True}, Role.LEADER),
        (3, {2: False, 3: False}, Role.FOLLOWER),
        (5, {2: False, 3: False, 4: False}, Role.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, Role.FOLLOWER),
        (3, {}, Role.CANDIDATE),
        (5, {2: True}, Role.CANDIDATE),
        (5, {2: False, 3: False}, Role.CANDIDATE),
        (5, {2: True, 3: False, 4: False}, Role.CANDIDATE),
    ],
)
def test_election_outcome(size, votes, role):
    """"A candidate wins an election if it receives votes from a majority of the servers in the
    full cluster for the same term. ... A candidate continues in this state until ... (a) it wins
    the election, (b) another server establishes itself as leader, or (c) a period of time goes
    by with no winner." A majority of rejections ends the candidacy at once."""
    node = new_node(1, voters=range(1, size + 1))
    node.raw.campaign()
    for voter, granted in votes.items():
        node.raw.step(Message(MT.VOTE_RESP, to=1, frm=voter, term=node.term, reject=not granted))
    assert node.role is role
    assert node.term == 2


@pytest.mark.parametrize(
    "vote, candidate, granted",
    [(NONE, 2, True), (NONE, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False)],
)
def test_follower_vote(vote, candidate, granted):
    """"Each server will vote for at most one candidate in a given term, on a first-come-first-
    served basis." """
    node = new_node(1)
    node.raft.term = 2
    node.raft.vote = vote
    node.raw.step(Message(MT.VOTE, to=1, frm=candidate, term=2, index=1, log_term=1))
    [resp] = drain(node)
    assert (resp.type, resp.to, resp.reject) == (MT.VOTE_RESP, candidate, not granted)


@pytest.mark.parametrize("term_offset", [0, 1])
def test_candidate_fallback(term_offset):
    """"If the leader's term (included in its RPC) is at least as large as the candidate's
    current term, then the candidate recognizes the leader as legitimate and returns to follower
    state." """
    node = new_node(1)
    make_candidate(node)
    term = node.term + term_offset
    node.raw.step(Message(MT.APP, to=1, frm=2, term=term, index=1, log_term=1))
    assert (node.role, node.term, node.raft.lead) == (Role.FOLLOWER, term, 2)


def test_election_timeouts_are_randomized():
    """"Raft uses randomized election timeouts ... chosen randomly from a fixed interval." Ours
    lie in [election_tick, 2 * election_tick) and come from the seeded rng only."""
    seen = set()
    for seed in range(50):
        raw = RawNode(Config(1, MemoryStorage(), random.Random(seed), election_tick=10))
        timeout = raw.raft.randomized_election_timeout
        assert 10 <= timeout < 20
        seen.add(timeout)
        again = RawNode(Config(1, MemoryStorage(), random.Random(seed), election_tick=10))
        assert again.raft.randomized_election_timeout == timeout
    assert len(seen) > 5


# §5.3 Log replication


def test_leader_starts_replication():
    """"The leader appends the command to its log as a new entry, then issues AppendEntries RPCs
    in parallel to each of the other servers to replicate the entry." """
    node = new_node(1)
    make_leader(node)
    ack_noop(node)  # index 2
    node.raw.propose(b"cmd")
    msgs = drain(node)
    assert node.raft.raft_log.last_index() == 3
    apps = sorted((m for m in msgs if m.type == MT.APP), key=lambda m: m.to)
    assert [m.to for m in apps] == [2, 3]
    for m in apps:
        assert (m.index, m.log_term, m.commit) == (2, 2, 2)
        assert [(e.index, e.term, e.data) for e in m.entries] == [(3, 2, b"cmd")]


def test_leader_commits_on_majority_and_tells_followers():
    """"A log entry is committed once the leader that created the entry has replicated it on a
    majority of the servers ... it includes that index in future AppendEntries RPCs." """
    node = new_node(1, voters=(1, 2, 3, 4, 5))
    make_leader(node, term_votes=(2, 3))
    ack_noop(node, followers=(2, 3, 4, 5))
    node.raw.propose(b"cmd")
    drain(node)
    node.raw.step(Message(MT.APP_RESP, to=1, frm=2, term=2, index=3))
    assert node.raft.raft_log.committed == 2  # two of five
    node.raw.step(Message(MT.APP_RESP, to=1, frm=3, term=2, index=3))
    assert node.raft.raft_log.committed == 3  # three of five
    msgs = drain(node)
    assert node.applied == [b"cmd"]
    assert {m.to for m in msgs if m.type == MT.APP and m.commit == 3} == {2, 3, 4, 5}


def test_leader_without_broadcast_commit_tells_followers_in_the_next_messages():
    """broadcast_commit=False: no empty append per commit (it would cost each follower a round
    per batch); the index rides on the next heartbeat (to those known to hold the entry) and on
    the next append."""
    node = new_node(1, voters=(1, 2, 3, 4, 5), broadcast_commit=False)
    make_leader(node, term_votes=(2, 3))
    ack_noop(node, followers=(2, 3, 4, 5))
    node.raw.propose(b"cmd")
    drain(node)
    node.raw.step(Message(MT.APP_RESP, to=1, frm=2, term=2, index=3))
    node.raw.step(Message(MT.APP_RESP, to=1, frm=3, term=2, index=3))
    assert node.raft.raft_log.committed == 3
    msgs = drain(node)
    assert node.applied == [b"cmd"]
    assert [m for m in msgs if m.type == MT.APP] == []
    node.raw.tick()
    beats = drain(node)
    assert {m.to for m in beats if m.type == MT.HEARTBEAT and m.commit == 3} == {2, 3}
    node.raw.propose(b"next")
    msgs = drain(node)
    assert {m.to for m in msgs if m.type == MT.APP and m.commit == 3} == {2, 3, 4, 5}


def test_leader_commits_preceding_entries():
    """"This also commits all preceding entries in the leader's log, including entries created
    by previous leaders." """
    node = new_node(1, log_terms=(1, 2), term=2)
    make_leader(node)  # term 3, no-op at index 4
    node.raw.step(Message(MT.APP_RESP, to=1, frm=2, term=3, index=4))
    assert node.raft.raft_log.committed == 4
    drain(node)
    assert node.applied == [b"e2", b"e3"]


def test_follower_commits_and_applies():
    """"Once a follower learns that a log entry is committed, it applies the entry to its local
    state machine (in log order)." """
    node = new_node(2)
    ents = [Entry(2, 2, data=b"a"), Entry(2, 3, data=b"b"), Entry(2, 4, data=b"c")]
    node.raw.step(Message(MT.APP, to=2, frm=1, term=2, index=1, log_term=1, entries=ents, commit=3))
    drain(node)
    assert node.raft.raft_log.committed == 3
    assert node.applied == [b"a", b"b"]


@pytest.mark.parametrize(
    "log_term, index, reject, hint",
    [
        (1, 1, False, 0),  # the snapshot entry matches
        (2, 3, False, 0),  # the last entry matches
        (1, 3, True, 2),  # term mismatch at 3: everything after index 2 (term 1) has term > 1
        (3, 4, True, 3),  # past our log: hint at our last entry
        (2, 2, True, 2),  # term mismatch at 2 (ours is 1, <= 2): hint at 2 itself
    ],
)
def test_follower_checks_previous_entry(log_term, index, reject, hint):
    """"When sending an AppendEntries RPC, the leader includes the index and term of the entry
    in its log that immediately precedes the new entries. If the follower does not find an entry
    in its log with the same index and term, then it refuses the new entries." """
    node = new_node(2, log_terms=(1, 2), term=2)
    node.raw.step(Message(MT.APP, to=2, frm=1, term=2, index=index, log_term=log_term, commit=1))
    [resp] = drain(node)
    assert resp.type == MT.APP_RESP and resp.reject == reject
    if reject:
        assert (resp.index, resp.reject_hint) == (index, hint)


@pytest.mark.parametrize(
    "index, log_term, new, expected",
    [
        (3, 3, [(4, 4)], [1, 2, 3, 4]),  # append after the last
        (2, 2, [(3, 3)], [1, 2, 3]),  # already have it
        (1, 1, [(2, 4)], [1, 4]),  # conflict at 2: delete it and all that follow
        (1, 1, [(2, 2), (3, 4), (4, 4)], [1, 2, 4, 4]),  # conflict at 3
        (2, 2, [(3, 3), (4, 4)], [1, 2, 3, 4]),  # some new, some not
    ],
)
def test_follower_append_entries(index, log_term, new, expected):
    """"If an existing entry conflicts with a new one (same index but different terms), delete
    the existing entry and all that follow it (§5.3). Append any new entries not already in the
    log." Entries are (index, term); the log holds terms 1 (the snapshot), 2, 3."""
    node = new_node(2, log_terms=(2, 3), term=3)
    ents = [Entry(term=t, index=i) for i, t in new]
    node.raw.step(Message(MT.APP, to=2, frm=1, term=4, index=index, log_term=log_term, entries=ents))
    drain(node)
    log = node.raft.raft_log
    assert [log.term(i) for i in range(1, log.last_index() + 1)] == expected


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("name", sorted(FIGURE_7_FOLLOWERS))
def test_leader_forces_followers_to_duplicate_its_log(name):
    """Figure 7: "the leader handles inconsistencies by forcing the followers' logs to duplicate
    its own." Node 3 starts empty and votes for the leader."""
    cluster = Cluster(3)
    cluster.nodes[1] = new_node(1, log_terms=FIGURE_7_LEADER, term=8)
    cluster.nodes[2] = new_node(2, log_terms=FIGURE_7_FOLLOWERS[name], term=8)
    cluster.nodes[3] = new_node(3)
    cluster.elect(1)
    cluster.propose(1, b"new")
    leader_log, follower_log = cluster[1].raft.raft_log, cluster[2].raft.raft_log
    assert follower_log.last_index() == leader_log.last_index() == 13
    assert [follower_log.term(i) for i in range(2, 14)] == [leader_log.term(i) for i in range(2, 14)]
    assert follower_log.committed == 13


# §5.4 Safety


def test_candidate_sends_last_entry_in_vote_request():
    """"The RequestVote RPC ... includes information about the candidate's log." """
    node = new_node(1, log_terms=(1, 2, 2), term=2)
    msgs = make_candidate(node)
    assert {(m.index, m.log_term) for m in msgs} == {(4, 2)}


@pytest.mark.parametrize(
    "log_terms, cand_index, cand_term, granted",
    [
        ((1,), 2, 1, True),  # same last entry
        ((1,), 1, 1, False),  # same term, shorter
        ((1,), 3, 1, True),  # same term, longer
        ((1, 2), 2, 1, False),  # older last term
        ((1, 2), 9, 1, False),  # older last term, however long
        ((1, 2), 2, 3, True),  # newer last term, however short
    ],
)
def test_voter_denies_vote_to_less_up_to_date_log(log_terms, cand_index, cand_term, granted):
    """"The voter denies its vote if its own log is more up-to-date than that of the candidate
    ... If the logs have last entries with different terms, then the log with the later term is
    more up-to-date. If the logs end with the same term, then whichever log is longer is more
    up-to-date." """
    node = new_node(1, log_terms=log_terms, term=3)
    node.raw.step(Message(MT.VOTE, to=1, frm=2, term=4, index=cand_index, log_term=cand_term))
    [resp] = drain(node)
    assert resp.reject == (not granted)


def test_leader_commits_only_entries_of_its_own_term_by_counting_replicas():
    """Figure 8: "Raft never commits log entries from previous terms by counting replicas. Only
    log entries from the leader's current term are committed by counting replicas." """
    node = new_node(1, log_terms=(1, 2), term=2)
    make_leader(node)  # term 3; its no-op is index 4
    node.raw.step(Message(MT.APP_RESP, to=1, frm=2, term=3, index=3))
    assert node.raft.raft_log.committed == 1  # entry 3 (term 2) is on a majority, yet uncommitted
    node.raw.step(Message(MT.APP_RESP, to=1, frm=2, term=3, index=4))
    assert node.raft.raft_log.committed == 4
