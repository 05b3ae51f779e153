"""WriteLeases: one writer per chunk, given back by its session or expired."""

from mooseng.master.writelease import WriteLeases

A, B = 11, 22  # client ids


def test_another_clients_live_lease_blocks_until_released():
    leases = WriteLeases(lease_s=20)
    leases.grant(7, ino=3, index=0, client_id=A, version=5, now=100.0)
    assert leases.blocker(7, B, 101.0).version == 5
    assert leases.blocker(8, B, 101.0) is None  # another chunk
    assert not leases.release(7, 4)  # an older session's release leaves the lease alone
    assert leases.blocker(7, B, 101.0) is not None
    assert leases.release(7, 5)
    assert leases.blocker(7, B, 101.0) is None


def test_the_holder_itself_is_not_blocked():
    """A client runs one session per chunk at a time: when it asks again, its old one is over."""
    leases = WriteLeases()
    leases.grant(7, 3, 0, A, 5, 100.0)
    assert leases.blocker(7, A, 100.5) is None


def test_a_caller_without_an_id_holds_no_lease():
    leases = WriteLeases()
    leases.grant(7, 3, 0, A, 5, 100.0)
    assert leases.blocker(7, 0, 100.5) is not None


def test_a_lease_expires_when_its_writer_never_gives_it_back():
    leases = WriteLeases(lease_s=20)
    leases.grant(7, 3, 0, A, 5, 100.0)
    assert leases.blocker(7, B, 119.9) is not None
    assert leases.blocker(7, B, 120.0) is None
    assert leases.expire(119.0) == 0 and len(leases) == 1
    assert leases.expire(120.0) == 1 and len(leases) == 0


def test_blockers_of_a_shrink_are_the_leased_chunks_from_the_cut_on():
    leases = WriteLeases()
    leases.grant(70, 3, 0, A, 1, 100.0)
    leases.grant(71, 3, 1, A, 1, 100.0)
    leases.grant(72, 3, 2, B, 1, 100.0)
    leases.grant(80, 4, 5, A, 1, 100.0)  # another file
    assert sorted(leases.blockers_from(3, 1, B, 100.5)) == [71]  # B's own lease does not block B
    assert sorted(leases.blockers_from(3, 0, 99, 100.5)) == [70, 71, 72]
    assert leases.blockers_from(3, 3, 99, 100.5) == []
