"""The randomized simulation (sim.py) over many seeds, and proof that it catches broken Raft.

RAFT_SIM_SEEDS=n runs seeds 0..n-1 (default 2000); RAFT_SIM_SEED=n runs only seed n, as a
failure message says. `-m slow` runs 20000 further seeds.
"""

import os
from collections import Counter

import pytest
from sim import Simulation, Violation

from mooseng.raft import quorum
from mooseng.raft.core import Raft
from mooseng.raft.log import RaftLog

DEFAULT_SEEDS = 2000
SLOW_SEEDS = 20000
SLOW_CHUNK = 1000


def _seeds():
    one = os.environ.get("RAFT_SIM_SEED")
    if one is not None:
        return [int(one)]
    return range(int(os.environ.get("RAFT_SIM_SEEDS", DEFAULT_SEEDS)))


def _run(seed: int) -> Simulation:
    sim = Simulation(seed)
    failure = None
    try:
        sim.run()
    except Violation as e:
        failure = str(e)  # fail outside the handler: the report is the whole story
    if failure:
        pytest.fail(failure, pytrace=False)
    return sim


@pytest.mark.parametrize("seed", _seeds())
def test_sim(seed):
    _run(seed)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SLOW_SEEDS // SLOW_CHUNK))
def test_sim_many_more_seeds(chunk):
    """Seeds after the default ones, in chunks that each finish well within the test timeout.
    Only with -m slow (see conftest.py)."""
    first = DEFAULT_SEEDS + chunk * SLOW_CHUNK
    for seed in range(first, first + SLOW_CHUNK):
        _run(seed)


def test_sim_exercises_every_feature():
    """A green run means something only if the runs reach the code under test."""
    stats = Counter()
    for seed in range(100):
        stats.update(_run(seed).stats)
    for what in (
        "leader elected",
        "proposal accepted",
        "PRE_VOTE",
        "VOTE",
        "SNAP",
        "snapshot installed",
        "read served",
        "TIMEOUT_NOW",
        "conf change applied",
        "crash",
        "power loss",
        "restart",
        "partition",
        "message lost",
    ):
        assert stats[what] > 0, what


def _first_violation(seeds) -> str | None:
    for seed in seeds:
        try:
            Simulation(seed).run()
        except Violation as e:
            return str(e)
    return None


# Each mutation breaks one rule; the simulator must notice within a few hundred seeds.


def test_sim_catches_commit_on_a_minority(monkeypatch):
    def minority(voters, acked):
        return max((acked.get(v, 0) for v in voters), default=0)

    monkeypatch.setattr(quorum, "committed_index", minority)
    assert _first_violation(range(300)) is not None


def test_sim_catches_votes_for_out_of_date_logs(monkeypatch):
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    assert _first_violation(range(300)) is not None


def test_sim_catches_appends_without_the_previous_entry_check(monkeypatch):
    def maybe_append(self, index, log_term, committed, entries):
        if index > self.last_index():
            return None
        conflict = self.find_conflict(entries)
        if conflict:
            self.unstable.truncate_and_append(entries[conflict - index - 1 :])
        self.commit_to(min(committed, index + len(entries)))
        return index + len(entries)

    monkeypatch.setattr(RaftLog, "maybe_append", maybe_append)
    assert _first_violation(range(300)) is not None


def test_sim_catches_reads_served_without_confirming_leadership(monkeypatch):
    def answer_at_once(self, m):
        self._respond_read_index(m, self.raft_log.committed)

    monkeypatch.setattr(Raft, "_handle_read_index", answer_at_once)
    assert "read" in (_first_violation(range(300)) or "")
