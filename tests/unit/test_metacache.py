"""AttrCache and Listings: what a client answers without asking the master, and for how long."""

from pytest import approx

from mooseng.client.masterclient import Attr
from mooseng.client.metacache import AttrCache, Listings


def attr(ino=5, ctime=100, nlink=1, size=0) -> Attr:
    return Attr(ino, 0o100644, nlink, 0, 0, 0, size, ctime, ctime, ctime, "default")


def test_attrs_are_served_for_what_is_left_of_their_timeout():
    cache = AttrCache(ttl=1.0)
    cache.put(attr(size=7), now=10.0)
    assert cache.get(5, now=10.25) == (attr(size=7), 0.75)
    assert cache.get(5, now=11.0) is None  # expired
    assert cache.get(6, now=10.0) is None


def test_an_answer_older_than_what_we_know_does_not_replace_it():
    cache = AttrCache(ttl=1.0)
    cache.put(attr(ctime=200, size=2), now=10.0)
    cache.put(attr(ctime=100, size=1), now=10.5)  # left the master before the change we know
    assert cache.get(5, now=10.6)[0].size == 2
    cache.put(attr(ctime=300, size=3), now=10.7)
    assert cache.get(5, now=10.8) == (attr(ctime=300, size=3), approx(0.9))


def test_removed_inodes_dropped_ones_and_a_zero_timeout_are_not_served():
    cache = AttrCache(ttl=1.0)
    cache.put(attr(), now=0.0)
    cache.put(attr(nlink=0, ctime=101), now=0.1)  # its last link is gone
    assert cache.get(5, now=0.2) is None
    cache.put(attr(ino=7), now=0.0)
    cache.drop(7)  # e.g. its xattrs changed: ctime moved
    assert cache.get(7, now=0.1) is None
    off = AttrCache(ttl=0.0)
    off.put(attr(), now=0.0)
    assert off.get(5, now=0.0) is None


def test_a_full_cache_keeps_working():
    cache = AttrCache(ttl=1.0, max_entries=3)
    for ino in range(10):
        cache.put(attr(ino=ino), now=0.0)
    assert cache.get(9, now=0.5) is not None


def test_a_directory_this_client_made_answers_missing_names():
    listings = Listings(ttl=1.0)
    listings.made_dir(9, next_cookie=3, now=0.0)
    assert listings.absent(9, b"new", now=0.5) == approx(0.5)
    assert not listings.absent(9, b".", now=0.5) and not listings.absent(9, b"..", now=0.5)
    assert not listings.absent(8, b"new", now=0.5)  # not a directory of ours
    listings.added(9, b"new", next_cookie=4, now=0.6)  # our own create: the count moved by one
    assert not listings.absent(9, b"new", now=0.7)
    assert listings.absent(9, b"other", now=0.7) == approx(0.9)  # confirmed again at 0.6


def test_a_name_added_by_someone_else_drops_the_listing():
    listings = Listings(ttl=1.0)
    listings.made_dir(9, next_cookie=3, now=0.0)
    listings.added(9, b"mine", next_cookie=5, now=0.1)  # 4 went to another client's name
    assert not listings.absent(9, b"theirs", now=0.2)
    listings.made_dir(10, next_cookie=3, now=0.0)
    listings.confirm(10, next_cookie=4, now=0.1)  # a getattr shows a name we did not add
    assert not listings.absent(10, b"x", now=0.2)
    listings.made_dir(11, next_cookie=3, now=0.0)
    listings.unsure(11)  # our create met EEXIST
    assert not listings.absent(11, b"x", now=0.1)


def test_an_expired_listing_is_used_again_once_the_master_confirms_it():
    listings = Listings(ttl=1.0)
    listings.made_dir(9, next_cookie=3, now=0.0)
    assert not listings.absent(9, b"x", now=1.5)  # not confirmed for longer than the timeout
    listings.confirm(9, next_cookie=3, now=2.0)  # nobody added a name meanwhile
    assert listings.absent(9, b"x", now=2.5) == approx(0.5)
    listings.removed(9, b"gone", next_cookie=3, now=2.6)
    assert listings.absent(9, b"x", now=3.0) == approx(0.6)


def test_removals_and_renames_keep_the_listing_complete():
    listings = Listings(ttl=1.0)
    listings.made_dir(9, next_cookie=3, now=0.0)
    listings.added(9, b"a", next_cookie=4, now=0.0)
    listings.added(9, b"b", next_cookie=5, now=0.0)
    listings.removed(9, b"a", next_cookie=5, now=0.1)
    assert listings.absent(9, b"a", now=0.2)
    listings.moved(9, b"b", 6, 9, b"c", 6, now=0.3)  # within the directory: one name added
    assert listings.absent(9, b"b", now=0.4) and not listings.absent(9, b"c", now=0.4)
    listings.made_dir(10, next_cookie=3, now=0.3)
    listings.moved(9, b"c", 6, 10, b"d", 4, now=0.5)  # across directories
    assert listings.absent(9, b"c", now=0.6) and not listings.absent(10, b"d", now=0.6)
    listings.removed(9, b"zzz", next_cookie=7, now=0.7)  # a name added meanwhile by another
    assert not listings.absent(9, b"c", now=0.8)


def test_a_zero_timeout_keeps_no_listing():
    listings = Listings(ttl=0.0)
    listings.made_dir(9, next_cookie=3, now=0.0)
    assert not listings.absent(9, b"x", now=0.0)
