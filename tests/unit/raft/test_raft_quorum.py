"""Majority math against naive definitions, over random inputs (etcd's quorum/quick_test.go)."""

import random

import pytest

from mooseng.raft.quorum import VoteResult, committed_index, vote_result


def naive_committed_index(voters, acked):
    """The largest index that more than half of the voters have acknowledged."""
    best = 0
    for candidate in {acked.get(v, 0) for v in voters}:
        holders = sum(1 for v in voters if acked.get(v, 0) >= candidate)
        if 2 * holders > len(voters):
            best = max(best, candidate)
    return best


def naive_vote_result(voters, votes):
    if not voters:
        return VoteResult.LOST
    yes = sum(1 for v in voters if votes.get(v) is True)
    no = sum(1 for v in voters if votes.get(v) is False)
    if 2 * yes > len(voters):
        return VoteResult.WON
    if 2 * (len(voters) - no) > len(voters):
        return VoteResult.PENDING
    return VoteResult.LOST


def random_voters(rng):
    return set(rng.sample(range(1, 12), rng.randint(0, 7)))


@pytest.mark.parametrize("seed", range(5))
def test_committed_index_matches_naive(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        voters = random_voters(rng)
        # Acks from some voters and from some non-voters (which must not count).
        acked = {n: rng.randint(0, 20) for n in range(1, 12) if rng.random() < 0.7}
        assert committed_index(voters, acked) == naive_committed_index(voters, acked), (voters, acked)


@pytest.mark.parametrize("seed", range(5))
def test_vote_result_matches_naive(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        voters = random_voters(rng)
        votes = {n: rng.random() < 0.5 for n in range(1, 12) if rng.random() < 0.6}
        assert vote_result(voters, votes) == naive_vote_result(voters, votes), (voters, votes)


def test_examples():
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3, 4}, {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert committed_index({1, 2, 3}, {1: 5}) == 0
    assert vote_result({1, 2, 3}, {1: True, 2: True}) is VoteResult.WON
    assert vote_result({1, 2, 3, 4}, {1: True, 2: True, 3: False}) is VoteResult.PENDING
    assert vote_result({1, 2, 3, 4}, {1: True, 3: False, 4: False}) is VoteResult.LOST
