"""Majority math over one set of voters (single-server membership changes need no joint quorums).

These are plain functions over mappings so that tests can check them against a naive version,
and so that a test can swap one for a broken copy to prove the simulator notices.
"""

from enum import Enum
from typing import Collection, Mapping


class VoteResult(Enum):
    PENDING = 0  # neither a majority of yes nor of no yet
    LOST = 1
    WON = 2


def committed_index(voters: Collection[int], acked: Mapping[int, int]) -> int:
    """The largest index that a majority of voters have acknowledged (missing voters count 0).

    With n voters sorted by acknowledged index, highest first, the (n//2 + 1)-th one bounds the
    index that a majority holds. No voters: 0, nothing can be committed.
    """
    if not voters:
        return 0
    matched = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return matched[len(matched) // 2]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority of voters said yes, LOST once a majority can no longer say yes.

    Votes from non-voters are ignored. No voters: LOST (there is nobody to win over).
    """
    if not voters:
        return VoteResult.LOST
    granted = rejected = 0
    for v in voters:
        vote = votes.get(v)
        if vote is True:
            granted += 1
        elif vote is False:
            rejected += 1
    majority = len(voters) // 2 + 1
    if granted >= majority:
        return VoteResult.WON
    if len(voters) - rejected >= majority:
        return VoteResult.PENDING
    return VoteResult.LOST
