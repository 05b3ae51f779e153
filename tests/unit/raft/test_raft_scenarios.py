"""Scenario tests: pre-vote and check-quorum, ReadIndex, leadership transfer, membership
changes, snapshots, flow control and the RawNode contract. Each reads as a script on a lossless
cluster (harness.Cluster) with the production settings: pre-vote and check-quorum on."""

import time

import pytest
from harness import Cluster, drain, new_node

from mooseng.raft import (
    ConfChange,
    ConfChangeType,
    Message,
    MessageType,
    ProposalDropped,
    ReadState,
    Role,
)

MT = MessageType
ADD, REMOVE = ConfChangeType.ADD_VOTER, ConfChangeType.REMOVE_VOTER


def log_terms(node):
    log = node.raft.raft_log
    return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]


# Pre-vote and check-quorum.


def test_partitioned_node_rejoins_without_raising_the_term():
    """Pre-vote: an isolated node keeps failing its pre-election, so its term stays put and it
    cannot force the cluster into a new term when it returns."""
    c = Cluster(3)
    c.elect(1)
    term = c[1].term
    c.isolate(3)
    c.run(100)
    assert c[3].term == term and c[3].role is Role.PRE_CANDIDATE
    assert c.leaders() == [1]
    c.heal()
    c.propose(1, b"after")
    c.run(30)
    assert c.leaders() == [1]
    assert {n.term for n in c.nodes.values()} == {term}
    assert c[3].applied == [b"after"]


def test_without_pre_vote_a_rejoining_node_deposes_the_leader():
    """The problem pre-vote solves: the isolated node's term grows, and when it returns the
    leader learns of the higher term and steps down."""
    c = Cluster(3, pre_vote=False)
    c.elect(1)
    term = c[1].term
    c.isolate(3)
    c.run(100)
    assert c[3].term > term + 3
    c.heal()
    c.run(1)
    assert c[1].role is Role.FOLLOWER and c[1].term == c[3].term


def test_followers_ignore_vote_requests_while_they_hear_from_a_leader():
    """Leader stickiness: a follower that heard from its leader within the election timeout
    ignores a higher-term vote request instead of adopting the term."""
    c = Cluster(3, pre_vote=False)
    c.elect(1)
    term = c[1].term
    c[3].raw.campaign()
    c.process_ready()
    c.deliver(types={MT.VOTE})
    assert (c[1].term, c[2].term, c[3].term) == (term, term, term + 1)
    assert c[1].role is Role.LEADER and c[2].raft.vote == 1


def test_leader_without_a_quorum_steps_down():
    """Check-quorum: at the end of each election timeout a leader that did not hear from a
    quorum during it steps down, so it stops taking proposals it could never commit. (The first
    check after the cut may still count answers from before it.)"""
    c = Cluster(3, election_tick=10)
    c.elect(1)
    c.run(5)
    c.isolate(1)
    c.run(5)
    assert c[1].role is Role.LEADER  # answers came during this timeout
    c.run(10)
    assert c[1].role is Role.FOLLOWER
    with pytest.raises(ProposalDropped):
        c[1].raw.propose(b"x")
    c.run(30)
    assert len(c.leaders()) == 1 and c.leaders()[0] != 1


# ReadIndex.


def test_read_index_on_the_leader_confirms_leadership_first():
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"x")
    commit = c[1].raft.raft_log.committed
    c[1].raw.read_index(b"req-1")
    c.process_ready()
    assert c[1].read_states == []  # not before a heartbeat round
    beats = [m for m in c.queue if m.type == MT.HEARTBEAT]
    assert {m.to for m in beats} == {2, 3} and {m.context for m in beats} == {b"req-1"}
    c.stabilize()
    assert c[1].read_states == [ReadState(commit, b"req-1")]


def test_read_index_on_a_follower_is_forwarded():
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"x")
    c[2].raw.read_index(b"req-2")
    c.stabilize()
    assert c[2].read_states == [ReadState(c[1].raft.raft_log.committed, b"req-2")]
    assert c[1].read_states == []


def test_read_index_waits_for_the_new_leader_to_commit_in_its_term():
    """Until its no-op commits, a new leader may not know the latest commit index."""
    c = Cluster(3)
    c[1].raw.campaign()
    for _ in range(4):
        c.process_ready()
        c.deliver(types={MT.PRE_VOTE, MT.PRE_VOTE_RESP, MT.VOTE, MT.VOTE_RESP})
    assert c[1].role is Role.LEADER and c[1].raft.raft_log.committed < c[1].raft.raft_log.last_index()
    c[1].raw.read_index(b"early")
    c.process_ready()
    assert not any(m.type == MT.HEARTBEAT for m in c.queue)
    c.stabilize()
    assert c[1].read_states == [ReadState(c[1].raft.raft_log.last_index(), b"early")]


def test_deposed_leader_never_answers_a_read():
    c = Cluster(3, check_quorum=False)  # so that the old leader believes in itself
    c.elect(1)
    c.isolate(1)
    c[1].raw.read_index(b"stale")
    c.stabilize()
    c.elect(2)
    c.propose(2, b"newer")
    c.heal()
    c.run(5)
    assert c[1].read_states == [] and c[1].role is Role.FOLLOWER


def test_read_index_without_a_leader_is_dropped():
    c = Cluster(3)
    with pytest.raises(ProposalDropped):
        c[2].raw.read_index(b"nobody")


def test_read_index_on_a_single_node_is_immediate():
    c = Cluster(1)
    c.elect(1)
    c[1].raw.read_index(b"solo")
    c.stabilize()
    assert c[1].read_states == [ReadState(c[1].raft.raft_log.committed, b"solo")]


# Leadership transfer.


def test_transfer_to_an_up_to_date_follower():
    c = Cluster(3)
    c.elect(1)
    term = c[1].term
    c[1].raw.transfer_leader(2)
    c.stabilize()
    assert c.leaders() == [2] and c[2].term == term + 1  # no pre-vote, despite stickiness
    c.propose(2, b"x")
    assert c[1].applied == [b"x"]


def test_transfer_catches_the_target_up_and_refuses_proposals_meanwhile():
    c = Cluster(3)
    c.elect(1)
    c.isolate(3)
    for i in range(5):
        c.propose(1, b"v%d" % i)
    c.heal()
    c[1].raw.transfer_leader(3)
    with pytest.raises(ProposalDropped):
        c[1].raw.propose(b"during")
    c.stabilize()
    assert c.leaders() == [3]
    assert c[3].applied == [b"v%d" % i for i in range(5)]


def test_transfer_to_an_unreachable_node_is_abandoned_after_an_election_timeout():
    c = Cluster(3, election_tick=10)
    c.elect(1)
    c.isolate(3)
    c[1].raw.transfer_leader(3)
    with pytest.raises(ProposalDropped):
        c[1].raw.propose(b"during")
    c.run(10)
    assert c.leaders() == [1]
    c.propose(1, b"after")
    assert c[2].applied == [b"after"]


def test_transfer_on_a_follower_is_dropped():
    c = Cluster(3)
    c.elect(1)
    with pytest.raises(ProposalDropped) as err:
        c[2].raw.transfer_leader(3)
    assert err.value.lead == 1


# Membership changes.


def test_added_node_gets_the_log_and_can_lead():
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"before")
    c.add_node(4)
    c[1].raw.propose_conf_change(ConfChange(ADD, 4, b"addr-of-4"))
    c.stabilize()
    assert all(n.conf_state.voters == (1, 2, 3, 4) for n in c.nodes.values())
    assert c[4].applied == [b"before"]
    c[1].raw.transfer_leader(4)
    c.stabilize()
    assert c.leaders() == [4]


def test_added_node_behind_a_compacted_log_gets_a_snapshot():
    c = Cluster(3)
    c.elect(1)
    for i in range(5):
        c.propose(1, b"v%d" % i)
    c[1].snapshot()
    c.add_node(4)
    c[1].raw.propose_conf_change(ConfChange(ADD, 4))
    c.stabilize()
    assert any(m.type == MT.SNAP and m.to == 4 for m in c.delivered)
    c.propose(1, b"after")
    assert c[4].applied == [b"v%d" % i for i in range(5)] + [b"after"]


def test_removed_follower_no_longer_counts():
    c = Cluster(3)
    c.elect(1)
    c[1].raw.propose_conf_change(ConfChange(REMOVE, 3))
    c.stabilize()
    c.isolate(3)
    c.isolate(2)  # 2 of 2 voters needed now: nothing commits without node 2
    c[1].raw.propose(b"x")
    c.stabilize()
    assert c[1].applied == []
    c.heal()
    c.isolate(3)
    c.run(2)
    assert c[1].applied == [b"x"]


def test_removed_leader_steps_down_and_the_rest_elect():
    c = Cluster(3)
    c.elect(1)
    c[1].raw.propose_conf_change(ConfChange(REMOVE, 1))
    c.stabilize()
    assert c[1].role is Role.FOLLOWER
    c.run(40)
    assert len(c.leaders()) == 1 and c.leaders()[0] in (2, 3)
    leader = c.leaders()[0]
    c.propose(leader, b"x")
    assert c[2].applied == c[3].applied == [b"x"]


def test_only_one_conf_change_may_be_pending():
    c = Cluster(3)
    c.elect(1)
    c.add_node(4)
    c.add_node(5)
    c[1].raw.propose_conf_change(ConfChange(ADD, 4))
    with pytest.raises(ProposalDropped):
        c[1].raw.propose_conf_change(ConfChange(ADD, 5))
    c.stabilize()
    c[1].raw.propose_conf_change(ConfChange(ADD, 5))
    c.stabilize()
    assert c[1].conf_state.voters == (1, 2, 3, 4, 5)


def test_new_leader_takes_conf_changes_only_after_applying_its_log():
    """Its unapplied tail might hold a conf change it cannot see as pending."""
    c = Cluster(3, check_quorum=False)
    c.elect(1)
    c[1].raw.propose(b"x")
    c.process_ready()
    c.deliver(types={MT.APP})
    c.queue.clear()  # the acks are lost: nobody else knows x is committed
    c[2].raw.campaign()
    for _ in range(4):
        c.process_ready()
        c.deliver(types={MT.PRE_VOTE, MT.PRE_VOTE_RESP, MT.VOTE, MT.VOTE_RESP})
    assert c[2].role is Role.LEADER
    c[2].raw.propose(b"normal proposals are fine")
    with pytest.raises(ProposalDropped):
        c[2].raw.propose_conf_change(ConfChange(REMOVE, 3))
    c.stabilize()
    c[2].raw.propose_conf_change(ConfChange(REMOVE, 3))
    c.stabilize()
    assert c[1].conf_state.voters == (1, 2)


def test_last_voter_cannot_be_removed():
    c = Cluster(1)
    c.elect(1)
    with pytest.raises(ValueError):
        c[1].raw.propose_conf_change(ConfChange(REMOVE, 1))


# Snapshots.


def test_lagging_follower_is_sent_a_snapshot():
    c = Cluster(3)
    c.elect(1)
    c.isolate(3)
    for i in range(10):
        c.propose(1, b"v%d" % i)
    c[1].snapshot(keep=2)
    c.heal()
    c.run(3)
    snaps = [m for m in c.delivered if m.type == MT.SNAP]
    assert [m.to for m in snaps] == [3]
    assert c[3].applied == c[1].applied == [b"v%d" % i for i in range(10)]
    assert c[3].storage.snapshot().index == snaps[0].snapshot.index


def test_failed_snapshot_is_retried():
    c = Cluster(3)
    c.elect(1)
    c.isolate(3)
    for i in range(3):
        c.propose(1, b"v%d" % i)
    c[1].snapshot()
    c.cut.discard((3, 1))  # 3 can answer heartbeats, but nothing reaches it
    c.run(3)
    assert not c[3].applied
    c.heal()
    c.run(3)
    assert c[3].applied == [b"v0", b"v1", b"v2"]


def test_restart_from_a_snapshot_replays_only_later_entries():
    c = Cluster(3)
    c.elect(1)
    for i in range(4):
        c.propose(1, b"v%d" % i)
    c[2].snapshot(keep=1)
    c.propose(1, b"v4")
    c[2].restart()
    c.run(2)
    assert c[2].applied == [b"v%d" % i for i in range(5)]


# Replication flow control.


def test_fast_backtracking_skips_a_whole_diverged_term_per_round_trip():
    """A follower with a long suffix from a deposed leader is found in a few probes, not one
    probe per entry (§5.3 "the follower can include the term of the conflicting entry")."""
    c = Cluster(3)
    c.nodes[1] = new_node(1, log_terms=[2] * 5 + [4] * 100, term=4, pre_vote=True, check_quorum=True)
    c.nodes[2] = new_node(2, log_terms=[2] * 5 + [3] * 100, term=3, pre_vote=True, check_quorum=True)
    c.nodes[3] = new_node(3, pre_vote=True, check_quorum=True)
    c.elect(1)
    rejects = [m for m in c.delivered if m.type == MT.APP_RESP and m.reject and m.frm == 2]
    assert 1 <= len(rejects) <= 2
    assert log_terms(c[2]) == log_terms(c[1])


def test_appends_are_batched_and_pipelined_within_the_window():
    c = Cluster(3, max_entries_per_msg=2, max_inflight_msgs=3)
    c.elect(1)
    for i in range(20):
        c[1].raw.propose(b"v%d" % i)
    out = drain(c[1])
    assert len([m for m in out if m.type == MT.APP and m.to == 2]) == 3  # the window
    c.queue.extend(out)
    c.stabilize()
    apps = [m for m in c.delivered if m.type == MT.APP and m.entries]
    assert max(len(m.entries) for m in apps) == 2
    assert c[2].applied == [b"v%d" % i for i in range(20)]


def test_proposals_made_together_go_to_each_follower_in_one_append():
    c = Cluster(3)
    c.elect(1)
    c[1].raw.propose(b"a", b"b", b"c")
    out = drain(c[1])
    apps = [m for m in out if m.type == MT.APP]
    assert sorted(m.to for m in apps) == [2, 3]
    assert all([e.data for e in m.entries] == [b"a", b"b", b"c"] for m in apps)
    c.queue.extend(out)
    c.stabilize()
    assert c[2].applied == [b"a", b"b", b"c"]


def test_appends_respect_max_bytes_but_carry_at_least_one_entry():
    c = Cluster(3, max_bytes_per_msg=10)
    c.elect(1)
    c.isolate(2)
    for data in (b"a" * 4, b"b" * 4, b"c" * 4, b"d" * 30):
        c.propose(1, data)
    c.heal()
    c.run(3)
    apps = [m for m in c.delivered if m.type == MT.APP and m.to == 2 and m.entries]
    sizes = [[len(e.data) for e in m.entries] for m in apps]
    assert all(sum(s) <= 10 or len(s) == 1 for s in sizes)
    assert [4, 30] in sizes or [30] in sizes
    assert len(c[2].applied) == 4


def test_proposals_go_only_through_the_leader():
    c = Cluster(3)
    c.elect(1)
    with pytest.raises(ProposalDropped) as err:
        c[2].raw.propose(b"x")
    assert err.value.lead == 1


def test_network_cannot_inject_local_messages():
    c = Cluster(3)
    with pytest.raises(ValueError):
        c[1].raw.step(Message(MT.HUP))


def test_restart_keeps_term_vote_and_log():
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"x")
    before = (c[2].term, c[2].raft.vote, log_terms(c[2]))
    c[2].restart()
    assert (c[2].term, c[2].raft.vote, log_terms(c[2])) == before
    c.propose(1, b"y")
    assert c[2].applied == [b"x", b"y"]


def test_thousands_of_proposals_per_second():
    c = Cluster(3)
    c.elect(1)
    start = time.perf_counter()
    for i in range(5000):
        c[1].raw.propose(b"%d" % i)
        if i % 100 == 99:
            c.stabilize()
    c.stabilize()
    assert len(c[3].applied) == 5000
    assert time.perf_counter() - start < 5  # about 0.5 s on the reference 2-core machine


def test_committed_entries_are_handed_out_in_bounded_batches():
    node = new_node(2, log_terms=[1] * 6, max_committed_bytes_per_ready=5)  # 2 bytes each
    node.raw.step(Message(MT.HEARTBEAT, to=2, frm=1, term=1, commit=7))
    batches = []
    while node.raw.has_ready():
        rd = node.raw.ready()
        batches.append([e.index for e in rd.committed_entries])
        node.raw.advance(rd)
    assert batches == [[2, 3], [4, 5], [6, 7]]


def test_status_names_the_leader_and_its_view_of_followers():
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"x")
    leader, follower = c[1].raw.status(), c[2].raw.status()
    assert (leader.soft_state.role, follower.soft_state.lead) == (Role.LEADER, 1)
    assert leader.conf_state.voters == (1, 2, 3) and follower.progress == {}
    assert {p.match for p in leader.progress.values()} == {leader.hard_state.commit}


def test_config_is_validated():
    with pytest.raises(ValueError):
        new_node(0)
    with pytest.raises(ValueError):
        new_node(1, election_tick=2, heartbeat_tick=2)
